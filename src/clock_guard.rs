//! The clock guard: whether the store's clock may be trusted to delete. It
//! owns `REPO/clock.sweep` (the clocks as the last sweep read them) and
//! `REPO/clock.frozen` (a jump found and not yet acknowledged); it never
//! deletes anything itself, and the decision ([`judge`]) is pure.
//!
//! Retention deletes by the wall clock, so one bad step of it (a wrong NTP
//! answer, a mistyped `date -s`) would expire and collect everything it now
//! judges old. A sweep therefore refuses to delete after a jump it cannot
//! explain:
//!
//! - **backwards**: the wall clock is more than [`CLOCK_SLACK_SECS`] behind
//!   the latest time the store has seen (`REPO/clock`);
//! - **forward**: since the last sweep, on the same boot (the kernel's boot
//!   id), the wall clock advanced more than [`allowance`] beyond
//!   `CLOCK_BOOTTIME`, which counts suspend and is never stepped. Across a
//!   reboot (another boot id) the two cannot be compared, and this check
//!   is skipped;
//! - **outside**: an outside clock (an object store's `Date`) is more than
//!   [`MIN_ALLOWANCE_SECS`] behind the wall clock. No caller has one yet.
//!
//! A jump found is persisted, so every later sweep and forget, in any
//! process, refuses until an operator acknowledges the clock
//! ([`accept_now`], `coffer clock --accept-now`).

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::retention::{fmt_time, CLOCK_SLACK_SECS};
use crate::store::{append_operator_log, fsync_dir, replace_file, LocalStore};

/// `REPO/clock.sweep`: the clocks as the last sweep read them (JSON [`Reading`]).
pub const SWEEP_FILE: &str = "clock.sweep";
/// `REPO/clock.frozen`: a jump found and not acknowledged (JSON [`Frozen`]).
pub const FROZEN_FILE: &str = "clock.frozen";
/// The least step of the wall clock beyond the boot clock that counts as a
/// jump: one hour (NTP steps at boot, leap seconds and slewing stay far below).
pub const MIN_ALLOWANCE_SECS: i64 = 3600;
/// Beyond [`MIN_ALLOWANCE_SECS`], the wall clock may run ahead of the boot
/// clock by this share of the boot clock's advance (per cent).
pub const ALLOWANCE_PERCENT: i64 = 10;
/// Where Linux tells the boot id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The clocks at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// The store's wall clock (seconds since the epoch).
    pub wall: i64,
    /// The kernel's boot id; `None` when unknown (another OS, a test clock).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// `CLOCK_BOOTTIME` in seconds: time since boot, suspend included,
    /// never stepped. `None` when unknown.
    #[serde(default)]
    pub boottime: Option<i64>,
}

impl Reading {
    /// The wall time `wall` (by the store's clock) with the kernel's boot
    /// clocks read now.
    pub fn now(wall: i64) -> Reading {
        let boot_id = fs::read_to_string(BOOT_ID)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let boottime = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .ok()
            .map(|t| t.tv_sec());
        Reading {
            wall,
            boot_id,
            boottime,
        }
    }

    /// A reading without boot clocks (a test's clock has none beside it).
    pub fn wall_only(wall: i64) -> Reading {
        Reading {
            wall,
            boot_id: None,
            boottime: None,
        }
    }
}

/// What kind of jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JumpKind {
    /// Behind the latest time the store has seen.
    Backwards,
    /// Ahead of the boot clock since the last sweep.
    Forward,
    /// Ahead of an outside clock.
    Outside,
}

/// A jump of the wall clock that nothing explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jump {
    /// What kind.
    pub kind: JumpKind,
    /// The time before: the latest seen (backwards), the last sweep's wall
    /// clock (forward), the outside clock (outside).
    pub wall_before: i64,
    /// The wall clock when the jump was found.
    pub wall_after: i64,
    /// How far the boot clock advanced meanwhile (forward only).
    #[serde(default)]
    pub monotonic_delta: Option<i64>,
}

impl std::fmt::Display for Jump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (before, after) = (fmt_time(self.wall_before), fmt_time(self.wall_after));
        match self.kind {
            JumpKind::Backwards => write!(
                f,
                "the clock ({after}) is behind a time this store has already seen ({before})"
            ),
            JumpKind::Forward => write!(
                f,
                "the clock jumped forward: from {before} at the last sweep to {after}, {} of wall time while the kernel's boot clock advanced {}",
                span(self.wall_after.saturating_sub(self.wall_before)),
                span(self.monotonic_delta.unwrap_or(0))
            ),
            JumpKind::Outside => write!(
                f,
                "the clock ({after}) is ahead of an outside clock ({before})"
            ),
        }
    }
}

/// A duration for a human, in days, hours or seconds.
fn span(secs: i64) -> String {
    match secs {
        s if s >= 86_400 => format!("{:.1} days", s as f64 / 86_400.0),
        s if s >= 3600 => format!("{:.1} hours", s as f64 / 3600.0),
        s => format!("{s} s"),
    }
}

/// `REPO/clock.frozen`: a jump and when it was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    /// When it was found, by the (jumped) wall clock.
    pub detected: i64,
    /// The jump.
    #[serde(flatten)]
    pub jump: Jump,
    /// The jump in words (for a reader of the file; not read back).
    #[serde(default, skip_deserializing)]
    pub message: String,
}

impl std::fmt::Display for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "deletion is frozen since {}: {}; nothing is deleted until an operator checks the clock and runs `coffer clock --accept-now`",
            fmt_time(self.detected),
            self.jump
        )
    }
}

/// How far the wall clock may run ahead of a boot clock that advanced
/// `boot_secs`: [`MIN_ALLOWANCE_SECS`] or [`ALLOWANCE_PERCENT`] of it,
/// whichever is more.
pub fn allowance(boot_secs: i64) -> i64 {
    MIN_ALLOWANCE_SECS.max(boot_secs / 100 * ALLOWANCE_PERCENT)
}

/// How far the boot clock advanced from `last` to `now`, when both are of
/// the same boot and it did not go back (it cannot, so a reading that says
/// so is not evidence).
fn boot_delta(last: &Reading, now: &Reading) -> Option<i64> {
    match (&last.boot_id, &now.boot_id, last.boottime, now.boottime) {
        (Some(a), Some(b), Some(t0), Some(t1)) if a == b && t1 >= t0 => Some(t1.saturating_sub(t0)),
        _ => None,
    }
}

/// Whether the wall clock jumped in a way nothing explains: `now` against
/// `seen` (the latest time the store has seen), `last` (the last sweep's
/// reading) and `outside` (an outside clock's time, when there is one).
pub fn judge(
    now: &Reading,
    seen: i64,
    last: Option<&Reading>,
    outside: Option<i64>,
) -> Option<Jump> {
    // Backwards: stamps would go back in time and ages shrink; a clock
    // that was once ahead is not trusted to be right now either.
    if now.wall.saturating_add(CLOCK_SLACK_SECS) < seen {
        return Some(Jump {
            kind: JumpKind::Backwards,
            wall_before: seen,
            wall_after: now.wall,
            monotonic_delta: None,
        });
    }
    // Forward beyond the boot clock: everything would look older than it is.
    if let Some((last, d)) = last.and_then(|l| boot_delta(l, now).map(|d| (l, d))) {
        if now.wall.saturating_sub(last.wall).saturating_sub(d) > allowance(d) {
            return Some(Jump {
                kind: JumpKind::Forward,
                wall_before: last.wall,
                wall_after: now.wall,
                monotonic_delta: Some(d),
            });
        }
    }
    // Behind an outside clock is harmless (less is deleted); ahead is not.
    if let Some(t) = outside {
        if now.wall.saturating_sub(t) > MIN_ALLOWANCE_SECS {
            return Some(Jump {
                kind: JumpKind::Outside,
                wall_before: t,
                wall_after: now.wall,
                monotonic_delta: None,
            });
        }
    }
    None
}

/// Reads `REPO/clock.frozen`. A file that is there but unreadable still
/// freezes: the error says so.
pub fn read_frozen(root: &Path) -> Result<Option<Frozen>> {
    let path = root.join(FROZEN_FILE);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(|f: Frozen| {
                Some(Frozen {
                    message: f.jump.to_string(),
                    ..f
                })
            })
            .map_err(|e| {
                Error::Corrupt(format!(
                "{} is unreadable ({e}); deletion stays frozen until `coffer clock --accept-now`",
                path.display()
            ))
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Whether deletion is frozen in the store at `root` (`REPO/clock.frozen`
/// is there, readable or not).
pub fn is_frozen(root: &Path) -> bool {
    root.join(FROZEN_FILE).exists()
}

/// Why deletion is frozen, if it is (also for a frozen file that cannot
/// be read).
pub fn frozen_refusal(root: &Path) -> Result<Option<String>> {
    match read_frozen(root) {
        Ok(f) => Ok(f.map(|f| f.to_string())),
        Err(Error::Corrupt(m)) => Ok(Some(m)),
        Err(e) => Err(e),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_json<T: Serialize>(root: &Path, name: &str, v: &T) -> Result<()> {
    // unwrap: plain data always serializes
    let bytes = serde_json::to_vec_pretty(v).expect("clock JSON");
    replace_file(&root.join("tmp"), &root.join(name), &bytes)
}

/// The store's reading of its clocks now: the store's own wall clock, and
/// the kernel's boot clocks unless a test set the clock.
fn reading(store: &LocalStore) -> Reading {
    match store.kernel_clocks() {
        true => Reading::now(store.now()),
        false => Reading::wall_only(store.now()),
    }
}

/// What asks [`refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// A sweep: a jump is persisted, else its reading is recorded for the
    /// next sweep to compare with (with `prune.lock` held).
    Sweep,
    /// A forget: a jump is persisted; nothing else is written.
    Forget,
    /// A dry run of a sweep: judges, writes nothing.
    DryRun,
}

/// Before a deletion: why the clock cannot be trusted, if it cannot.
pub(crate) fn refusal(store: &LocalStore, seen: i64, check: Check) -> Result<Option<String>> {
    let root = store.root();
    if let Some(why) = frozen_refusal(root)? {
        return Ok(Some(why));
    }
    let now = reading(store);
    let last: Option<Reading> = read_json(&root.join(SWEEP_FILE));
    if let Some(jump) = judge(&now, seen, last.as_ref(), None) {
        let f = Frozen {
            detected: now.wall,
            message: jump.to_string(),
            jump,
        };
        if check != Check::DryRun {
            write_json(root, FROZEN_FILE, &f)?;
        }
        return Ok(Some(f.to_string()));
    }
    if check == Check::Sweep {
        write_json(root, SWEEP_FILE, &now)?;
    }
    Ok(None)
}

/// What `coffer clock` shows of a store.
#[derive(Debug, Clone, Serialize)]
pub struct ClockState {
    /// Now, by the store's clock.
    pub now: i64,
    /// The latest time the store has seen (0: none).
    pub seen: i64,
    /// The last sweep's reading, if any.
    pub last_sweep: Option<Reading>,
    /// Whether that reading is of this boot (the forward check applies).
    pub same_boot: bool,
    /// The jump that froze deletion, if any.
    pub frozen: Option<Frozen>,
    /// Why deletion is frozen: the jump, or a frozen file that cannot be read.
    pub frozen_why: Option<String>,
    /// A jump that the next sweep would find (not persisted yet).
    pub pending: Option<Jump>,
}

/// The clock state of a store, read only.
pub fn state(store: &LocalStore) -> Result<ClockState> {
    let root = store.root();
    let now = reading(store);
    let seen = crate::store::read_seen(root);
    let last: Option<Reading> = read_json(&root.join(SWEEP_FILE));
    let frozen_why = frozen_refusal(root)?;
    Ok(ClockState {
        same_boot: last.as_ref().is_some_and(|l| boot_delta(l, &now).is_some()),
        pending: judge(&now, seen, last.as_ref(), None),
        frozen: read_frozen(root).ok().flatten(),
        frozen_why,
        now: now.wall,
        seen,
        last_sweep: last,
    })
}

/// The operator acknowledges the store's clock as correct now: logged in
/// `REPO/operator.log` (who, and the state it replaced), then the latest
/// time seen becomes now (also backwards: commits are stamped with the
/// real time again), this moment is the last sweep's reading, and the
/// freeze is lifted. Holds the prune lock and the store's lock, so no
/// sweep or commit runs meanwhile. Returns the state before.
pub fn accept_now(store: &LocalStore, by: &str) -> Result<ClockState> {
    let _sweep = store.lock_named("prune.lock", true)?;
    let _commits = store.lock_file(true)?;
    let before = state(store)?;
    let root = store.root();
    let now = reading(store);
    let entry = serde_json::json!({
        "time": fmt_time(now.wall), "action": "accept-clock", "by": by,
        "now": now.wall, "seen_before": before.seen,
        "frozen": before.frozen, "frozen_why": before.frozen_why,
    });
    append_operator_log(root, &entry)?;
    replace_file(
        &root.join("tmp"),
        &root.join("clock"),
        now.wall.to_string().as_bytes(),
    )?;
    write_json(root, SWEEP_FILE, &now)?;
    match fs::remove_file(root.join(FROZEN_FILE)) {
        Ok(()) => fsync_dir(root)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(root.join(FROZEN_FILE), e)),
    }
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::DAY_SECS;
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000;

    fn at(wall: i64, boot: &str, boottime: i64) -> Reading {
        Reading {
            wall,
            boot_id: Some(boot.into()),
            boottime: Some(boottime),
        }
    }

    #[test]
    fn a_forward_step_on_the_same_boot_is_a_jump() {
        let last = at(T0, "b", 1000);
        // an hour later by both clocks: time passed
        assert_eq!(
            judge(&at(T0 + 3600, "b", 4600), T0, Some(&last), None),
            None
        );
        // 45 days by the wall clock in two seconds of boot clock
        let j = judge(&at(T0 + 45 * DAY_SECS, "b", 1002), T0, Some(&last), None).unwrap();
        assert_eq!(j.kind, JumpKind::Forward);
        assert_eq!(j.monotonic_delta, Some(2));
        let msg = j.to_string();
        assert!(
            msg.contains("jumped forward") && msg.contains("45.0 days"),
            "{msg}"
        );
        // the same step after a reboot cannot be judged
        assert_eq!(
            judge(&at(T0 + 45 * DAY_SECS, "c", 5), T0, Some(&last), None),
            None
        );
        // nor against a boot clock that went back (a reading not to trust)
        assert_eq!(
            judge(&at(T0 + 45 * DAY_SECS, "b", 10), T0, Some(&last), None),
            None
        );
        // nor without a last sweep
        assert_eq!(
            judge(&at(T0 + 45 * DAY_SECS, "b", 1002), T0, None, None),
            None
        );
    }

    #[test]
    fn the_allowance_is_an_hour_or_a_tenth() {
        assert_eq!(allowance(0), 3600);
        assert_eq!(allowance(3600), 3600);
        assert_eq!(allowance(30 * DAY_SECS), 3 * DAY_SECS);
        let last = at(T0, "b", 0);
        // a day of uptime: up to 2.4 hours ahead passes, more does not
        let day = DAY_SECS;
        assert_eq!(
            judge(&at(T0 + day + 8640, "b", day), T0, Some(&last), None),
            None
        );
        assert!(judge(&at(T0 + day + 8641, "b", day), T0, Some(&last), None).is_some());
    }

    #[test]
    fn backwards_past_the_latest_time_seen_is_a_jump() {
        let j = judge(&Reading::wall_only(T0), T0 + 301, None, None).unwrap();
        assert_eq!(j.kind, JumpKind::Backwards);
        assert!(j
            .to_string()
            .contains("behind a time this store has already seen"));
        assert_eq!(judge(&Reading::wall_only(T0), T0 + 300, None, None), None);
    }

    #[test]
    fn an_outside_clock_behind_ours_is_a_jump() {
        let now = Reading::wall_only(T0 + 2 * 3600);
        assert_eq!(
            judge(&now, 0, None, Some(T0)).unwrap().kind,
            JumpKind::Outside
        );
        assert_eq!(judge(&now, 0, None, Some(T0 + 3600)), None);
        assert_eq!(judge(&now, 0, None, Some(T0 + 10 * DAY_SECS)), None);
    }

    #[test]
    fn a_frozen_file_reads_back_and_a_bad_one_still_freezes() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(&d.path().join("r")).unwrap();
        assert_eq!(refusal(&s, 0, Check::Sweep).unwrap(), None);
        let mut last: Reading = read_json(&s.root().join(SWEEP_FILE)).unwrap();
        last.wall -= 40 * DAY_SECS;
        write_json(s.root(), SWEEP_FILE, &last).unwrap();
        if last.boot_id.is_some() && last.boottime.is_some() {
            // a dry run says so and writes nothing
            let dry = refusal(&s, 0, Check::DryRun).unwrap().unwrap();
            assert!(
                dry.contains("jumped forward") && !is_frozen(s.root()),
                "{dry}"
            );
            let why = refusal(&s, 0, Check::Sweep).unwrap().unwrap();
            assert!(why.contains("jumped forward"), "{why}");
            // persisted: a forget (which records nothing) refuses too
            assert_eq!(refusal(&s, 0, Check::Forget).unwrap(), Some(why));
            let st = state(&s).unwrap();
            assert_eq!(st.frozen.unwrap().jump.kind, JumpKind::Forward);
        }
        fs::write(s.root().join(FROZEN_FILE), b"{").unwrap();
        let why = refusal(&s, 0, Check::Sweep).unwrap().unwrap();
        assert!(why.contains("unreadable"), "{why}");
        let before = accept_now(&s, "tester").unwrap();
        assert!(before.frozen_why.is_some());
        assert_eq!(refusal(&s, 0, Check::Sweep).unwrap(), None);
        let log = fs::read_to_string(s.root().join("operator.log")).unwrap();
        assert!(
            log.contains("accept-clock") && log.contains("tester"),
            "{log}"
        );
    }

    #[test]
    fn acceptance_sets_the_latest_time_seen_back_to_now() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(&d.path().join("r")).unwrap();
        let now = s.now();
        fs::write(s.root().join("clock"), (now + 45 * DAY_SECS).to_string()).unwrap();
        let why = refusal(&s, crate::store::read_seen(s.root()), Check::Sweep)
            .unwrap()
            .unwrap();
        assert!(why.contains("behind"), "{why}");
        accept_now(&s, "op").unwrap();
        let seen = crate::store::read_seen(s.root());
        assert!((now..now + 60).contains(&seen), "{seen}");
        assert_eq!(refusal(&s, seen, Check::Sweep).unwrap(), None);
    }

    fn reading() -> impl Strategy<Value = Reading> {
        (
            -4_000_000_000i64..8_000_000_000,
            prop::option::of(prop_oneof![Just("a".to_string()), Just("b".to_string())]),
            prop::option::of(0i64..2_000_000_000),
        )
            .prop_map(|(wall, boot_id, boottime)| Reading {
                wall,
                boot_id,
                boottime,
            })
    }

    proptest! {
        #[test]
        fn time_that_passed_on_both_clocks_is_never_a_jump(
            wall in 0i64..4_000_000_000, boot in 0i64..1_000_000_000,
            passed in 0i64..2_000_000_000, drift in -3600i64..3600,
        ) {
            let last = at(wall, "b", boot);
            let now = at(wall + passed + drift.max(-passed), "b", boot + passed);
            prop_assert_eq!(judge(&now, wall, Some(&last), None), None);
        }

        #[test]
        fn a_step_beyond_the_allowance_on_one_boot_is_always_found(
            wall in 0i64..4_000_000_000, boot in 0i64..1_000_000_000,
            passed in 0i64..1_000_000_000, extra in 1i64..1_000_000_000,
        ) {
            let last = at(wall, "b", boot);
            let now = at(wall + passed + allowance(passed) + extra, "b", boot + passed);
            let j = judge(&now, wall, Some(&last), None);
            prop_assert_eq!(j.map(|j| j.kind), Some(JumpKind::Forward));
        }

        #[test]
        fn judging_never_panics_and_names_the_times(
            now in reading(), last in prop::option::of(reading()),
            seen in any::<i64>(), outside in prop::option::of(any::<i64>()),
        ) {
            if let Some(j) = judge(&now, seen, last.as_ref(), outside) {
                prop_assert_eq!(j.wall_after, now.wall);
                let _ = j.to_string();
            }
        }
    }
}
