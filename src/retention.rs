//! Retention, the lock window and garbage collection as pure decisions: what
//! the store stamps on a snapshot, whether a snapshot may be forgotten, and
//! which snapshots and packs a sweep removes. No files and no clock here:
//! the store passes in what it read and the time by its own clock.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

pub use crate::calendar::DAY_SECS;
use crate::id::{PackId, SnapshotGroup, SnapshotId};
pub use crate::keep::{KeepRules, KeptBy};

/// How far the clock may step back (NTP adjustments) before deletion stops.
pub const CLOCK_SLACK_SECS: i64 = 300;

/// A store's retention rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// A snapshot cannot be forgotten for this long after it was received.
    pub lock_secs: i64,
    /// A snapshot is removed this long after it was received.
    pub retention_secs: i64,
    /// A pack no snapshot references is kept this long after it was written,
    /// so a backup still running can commit the snapshot that needs it.
    pub grace_secs: i64,
    /// The rules that keep snapshots past their expiry (see [`crate::keep`]).
    #[serde(default)]
    pub keep: KeepRules,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            lock_secs: 30 * DAY_SECS,
            retention_secs: 30 * DAY_SECS,
            grace_secs: 2 * DAY_SECS,
            keep: KeepRules::default(),
        }
    }
}

impl Policy {
    /// No rules at all: what a store that never recorded any is compared
    /// with (never in force: it does not validate).
    pub fn unset() -> Policy {
        Policy {
            lock_secs: 0,
            retention_secs: 0,
            grace_secs: 0,
            keep: KeepRules {
                last: 0,
                daily: 0,
                weekly: 0,
                monthly: 0,
                yearly: 0,
            },
        }
    }

    /// Checks the rules: the lock never outlasts retention, nothing negative.
    pub fn validate(&self) -> Result<(), String> {
        if self.lock_secs < 0 || self.retention_secs <= 0 || self.grace_secs < 0 {
            return Err("lock, retention and grace must not be negative".into());
        }
        if self.keep.last == 0 {
            return Err("keep_last must be at least 1: time alone never removes a machine's newest backup (an operator removes it with `coffer forget --config`)".into());
        }
        if self.lock_secs > self.retention_secs {
            return Err(format!(
                "the lock window ({} days) must not be longer than retention ({} days)",
                self.lock_secs / DAY_SECS,
                self.retention_secs / DAY_SECS
            ));
        }
        Ok(())
    }
}

/// What the store records about a snapshot, by its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
// Unknown fields are ignored: a stamp written by a newer version (which may
// add figures) still reads.
pub struct Stamp {
    /// When the store received it (seconds since the epoch).
    pub received: i64,
    /// It cannot be forgotten before this time.
    pub locked_until: i64,
    /// It is removed at this time (unless on hold).
    pub expires: i64,
    /// On legal hold: never removed while set.
    #[serde(default)]
    pub hold: bool,
    /// What the snapshot occupied when it was committed; absent in stamps
    /// written before it was recorded. Server metadata for monitoring: it
    /// does not travel in the wire protocol (see [`Stamp::for_wire`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<SnapshotUsage>,
    /// The backup job it belongs to, as its client named it at commit;
    /// absent for clients that name none (they share one group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<SnapshotGroup>,
    /// The rules that kept it at the last sweep that found it past its
    /// expiry (or that extended its expiry): why it is still there.
    #[serde(default, skip_serializing_if = "KeptBy::is_empty")]
    pub kept_by: KeptBy,
}

/// What a snapshot occupies, as a store sees it without a key, recorded at
/// commit so that monitoring can compare each backup with the usual: a
/// client encrypting its own files shows up as a jump in `new_bytes` or in
/// the share of them (deduplication collapses). Like the stamp that holds
/// it, it tolerates fields it does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotUsage {
    /// Bytes of the packs it references that were written (by the store's
    /// clock) at or after the namespace's previous commit and that the
    /// previous snapshot does not list: what this backup had to upload. All
    /// of its packs for the first snapshot.
    pub new_bytes: u64,
    /// Bytes of all the packs it references.
    pub referenced_bytes: u64,
}

impl SnapshotUsage {
    /// The share of referenced bytes that are new (0 when nothing is referenced).
    pub fn new_fraction(&self) -> f64 {
        if self.referenced_bytes == 0 {
            0.0
        } else {
            self.new_bytes as f64 / self.referenced_bytes as f64
        }
    }
}

impl Stamp {
    /// The stamp of a snapshot received at `now`.
    pub fn new(now: i64, p: &Policy) -> Stamp {
        Stamp {
            received: now,
            locked_until: now.saturating_add(p.lock_secs),
            expires: now.saturating_add(p.retention_secs),
            hold: false,
            usage: None,
            group: None,
            kept_by: KeptBy::default(),
        }
    }

    /// The stamp as protocol version 1 carries it: without the server's
    /// monitoring figures, so its bytes stay those that older peers accept.
    pub fn for_wire(self) -> Stamp {
        Stamp {
            usage: None,
            ..self
        }
    }

    /// Extends the lock (never shortens it; expiry follows a longer lock).
    pub fn extend(&mut self, until: i64, hold: bool) {
        self.locked_until = self.locked_until.max(until);
        self.expires = self.expires.max(self.locked_until);
        self.hold |= hold;
    }
}

/// Why a deletion is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Inside the lock window.
    Locked {
        /// The snapshot.
        id: SnapshotId,
        /// When it unlocks.
        until: i64,
    },
    /// On legal hold.
    Held(SnapshotId),
    /// The clock is behind a time the store has already seen.
    ClockBackwards {
        /// Now, by the clock.
        now: i64,
        /// The latest time seen before.
        seen: i64,
    },
}

/// Formats seconds since the epoch as RFC 3339.
pub fn fmt_time(secs: i64) -> String {
    // Through the civil date, so times before 1970 (a file's mtime can
    // be) print as they are, not as the epoch.
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::calendar::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Locked { id, until } => write!(
                f,
                "snapshot {} is locked until {}; it cannot be forgotten before then",
                id.short(),
                fmt_time(*until)
            ),
            Refusal::Held(id) => write!(f, "snapshot {} is on legal hold", id.short()),
            Refusal::ClockBackwards { now, seen } => write!(
                f,
                "the clock ({}) is behind a time this store has already seen ({}); deleting nothing until it catches up",
                fmt_time(*now),
                fmt_time(*seen)
            ),
        }
    }
}

/// Whether the clock can be trusted for deletion.
pub fn clock_ok(now: i64, seen: i64) -> Result<(), Refusal> {
    if now + CLOCK_SLACK_SECS < seen {
        Err(Refusal::ClockBackwards { now, seen })
    } else {
        Ok(())
    }
}

/// Whether `forget` of a snapshot is allowed now.
pub fn may_forget(id: SnapshotId, stamp: &Stamp, now: i64, seen: i64) -> Result<(), Refusal> {
    clock_ok(now, seen)?;
    if stamp.hold {
        return Err(Refusal::Held(id));
    }
    if now < stamp.locked_until {
        return Err(Refusal::Locked {
            id,
            until: stamp.locked_until,
        });
    }
    Ok(())
}

/// Whether the sweep removes a snapshot now.
pub fn expired(stamp: &Stamp, now: i64) -> bool {
    !stamp.hold && now >= stamp.expires && now >= stamp.locked_until
}

/// A pack and what the sweep knows of it.
#[derive(Debug, Clone, Copy)]
pub struct PackAge {
    /// The pack.
    pub id: PackId,
    /// When it was written (seconds).
    pub written: i64,
}

/// Packs to collect: referenced by no remaining snapshot and older than the
/// grace period (a younger one may belong to a backup still running).
pub fn collectable(
    packs: &[PackAge],
    referenced: &HashSet<PackId>,
    now: i64,
    p: &Policy,
) -> Vec<PackId> {
    packs
        .iter()
        .filter(|a| !referenced.contains(&a.id) && now.saturating_sub(a.written) >= p.grace_secs)
        .map(|a| a.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000;

    #[test]
    fn forget_is_refused_inside_the_lock_window() {
        let p = Policy::default();
        let s = Stamp::new(T0, &p);
        let id = SnapshotId([1; 32]);
        for day in [0, 1, 29] {
            let r = may_forget(id, &s, T0 + day * DAY_SECS, T0);
            assert!(matches!(r, Err(Refusal::Locked { .. })), "day {day}");
        }
        assert!(may_forget(id, &s, T0 + 30 * DAY_SECS, T0).is_ok());
        assert!(expired(&s, T0 + 30 * DAY_SECS));
        assert!(!expired(&s, T0 + 30 * DAY_SECS - 1));
        // the message names the snapshot and the moment it unlocks
        let msg = may_forget(id, &s, T0, T0).unwrap_err().to_string();
        assert!(msg.contains(&id.short()) && msg.contains("2027-"), "{msg}");
    }

    #[test]
    fn a_clock_gone_backwards_deletes_nothing() {
        let s = Stamp::new(T0, &Policy::default());
        let later = T0 + 40 * DAY_SECS;
        assert!(matches!(
            may_forget(SnapshotId([1; 32]), &s, later, later + 3600),
            Err(Refusal::ClockBackwards { .. })
        ));
        assert!(
            clock_ok(later, later + 60).is_ok(),
            "small NTP steps are tolerated"
        );
    }

    #[test]
    fn holds_and_extensions_never_shorten() {
        let p = Policy::default();
        let mut s = Stamp::new(T0, &p);
        s.extend(T0 + DAY_SECS, false);
        assert_eq!(
            s.locked_until,
            T0 + 30 * DAY_SECS,
            "a shorter lock changes nothing"
        );
        s.extend(T0 + 90 * DAY_SECS, false);
        assert_eq!(s.locked_until, T0 + 90 * DAY_SECS);
        assert!(s.expires >= s.locked_until);
        s.extend(0, true);
        assert!(!expired(&s, T0 + 1000 * DAY_SECS));
    }

    #[test]
    fn gc_keeps_referenced_and_young_packs() {
        let p = Policy::default();
        let a = PackAge {
            id: PackId([1; 32]),
            written: T0,
        };
        let b = PackAge {
            id: PackId([2; 32]),
            written: T0,
        };
        let young = PackAge {
            id: PackId([3; 32]),
            written: T0 + 10 * DAY_SECS,
        };
        let referenced: HashSet<PackId> = [a.id].into_iter().collect();
        let now = T0 + 11 * DAY_SECS;
        assert_eq!(
            collectable(&[a, b, young], &referenced, now, &p),
            vec![b.id]
        );
    }

    #[test]
    fn a_stamp_from_a_later_version_parses() {
        let st: Stamp = serde_json::from_str(
            r#"{"received":1,"locked_until":2,"expires":3,"hold":false,"later":1,
                "usage":{"new_bytes":4,"referenced_bytes":5,"new_packs":6}}"#,
        )
        .unwrap();
        assert_eq!(
            st.usage,
            Some(SnapshotUsage {
                new_bytes: 4,
                referenced_bytes: 5
            })
        );
    }

    #[test]
    fn policy_validation() {
        assert!(Policy::default().validate().is_ok());
        let bad = Policy {
            lock_secs: 40 * DAY_SECS,
            ..Policy::default()
        };
        assert!(bad.validate().unwrap_err().contains("lock window"));
    }

    proptest! {
        #[test]
        fn never_forget_a_locked_snapshot(received in 0i64..4_000_000_000, lock in 0i64..100, keep in 0i64..100, dt in -5_000_000i64..20_000_000) {
            let p = Policy { lock_secs: lock * DAY_SECS, retention_secs: (lock + keep).max(1) * DAY_SECS, grace_secs: 0, ..Policy::default() };
            let s = Stamp::new(received, &p);
            let now = received + dt;
            if may_forget(SnapshotId([0; 32]), &s, now, received).is_ok() || expired(&s, now) {
                prop_assert!(now >= s.locked_until);
            }
        }
    }

    #[test]
    fn times_print_as_rfc3339_before_and_after_the_epoch() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(fmt_time(-86_400 * 365), "1969-01-01T00:00:00Z");
        assert_eq!(fmt_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(fmt_time(-2_208_988_800), "1900-01-01T00:00:00Z");
        proptest::proptest!(|(s in 0i64..253_402_300_800)| {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64);
            proptest::prop_assert_eq!(fmt_time(s), humantime::format_rfc3339_seconds(t).to_string());
        });
    }
}
