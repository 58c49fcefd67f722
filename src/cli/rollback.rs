//! What `snapshots`, `backup`, `check` and `forget` do with what this client
//! saw of the repository ([`coffer::repo::seen`]): a snapshot it saw that
//! is gone, neither forgotten by it nor expired, is named in one warning
//! line (and `check` counts it as a problem) until the operator runs
//! `coffer snapshots --accept-rollback`. The memory is a help, never a
//! condition: when it cannot be read or written the command goes on and
//! says so.

use std::collections::HashSet;

use anyhow::Result;

use super::{fmt_time, now_ns};
use coffer::id::SnapshotId;
use coffer::repo::seen::{Seen, SeenSnapshot};
use coffer::repo::{Repository, Snapshot};

/// What this client saw of `repo`, locked; `None` (with a warning) when it
/// cannot be opened.
pub(super) fn lock(repo: &Repository) -> Option<Seen> {
    match repo.seen() {
        Ok(s) => {
            if let Some(n) = s.notice() {
                errln!("coffer: warning: {n}");
            }
            Some(s)
        }
        Err(e) => {
            errln!("coffer: warning: cannot read what this client saw of the repository, rollback not checked: {e}");
            None
        }
    }
}

/// Saves `seen`, or says why it could not.
fn save(seen: &Seen) {
    if let Err(e) = seen.save() {
        errln!("coffer: warning: cannot record what this client saw of the repository: {e}");
    }
}

/// What a listing shows of these snapshots.
pub(super) fn sightings(good: &[Snapshot]) -> Vec<SeenSnapshot> {
    good.iter().map(SeenSnapshot::of).collect()
}

/// Compares the store's listing with what was seen, records `good`, and
/// names the vanished snapshots in one warning line; returns them.
pub(super) fn watch(
    seen: Option<Seen>,
    listed: &HashSet<SnapshotId>,
    good: Vec<SeenSnapshot>,
) -> Vec<SeenSnapshot> {
    let Some(mut seen) = seen else {
        return Vec::new();
    };
    let gone = seen.vanished(listed, now_ns() / 1_000_000_000);
    seen.record(good);
    save(&seen);
    if !gone.is_empty() {
        errln!("coffer: warning: {}", warning(&gone));
    }
    gone
}

/// Compares the store's listing (ids only) with what was seen.
pub(super) fn watch_listing(repo: &Repository) -> Result<Vec<SeenSnapshot>> {
    let seen = lock(repo);
    let listed = repo.store().list_snapshots()?.into_iter().collect();
    Ok(watch(seen, &listed, Vec::new()))
}

/// Remembers one snapshot (a backup's own).
pub(super) fn record(repo: &Repository, s: SeenSnapshot) {
    if let Some(mut seen) = lock(repo) {
        seen.record([s]);
        save(&seen);
    }
}

/// The warning: which snapshots, and what to do.
fn warning(gone: &[SeenSnapshot]) -> String {
    let named: Vec<String> = gone
        .iter()
        .map(|s| format!("{} ({})", s.id.short(), fmt_time(s.time_ns)))
        .collect();
    format!(
        "{} snapshots this client saw are gone from the repository, neither forgotten by this client nor expired: {}; \
         the repository may have been rolled back or replaced by an older copy of itself. If that is expected \
         (an older copy put back on purpose, or another client forgot them), `coffer snapshots --accept-rollback` \
         accepts the repository as it is now",
        gone.len(),
        named.join(", ")
    )
}

/// One problem line of `check` per vanished snapshot.
pub(super) fn problems(gone: &[SeenSnapshot]) -> Vec<String> {
    gone.iter()
        .map(|s| {
            format!(
                "snapshot {} ({}) is gone: this client saw it, did not forget it, and it had not expired (rolled back?)",
                s.id,
                fmt_time(s.time_ns)
            )
        })
        .collect()
}

/// `snapshots --accept-rollback`: the repository as it is now becomes what
/// this client saw.
pub(super) fn accept(
    repo: &Repository,
    listed: &HashSet<SnapshotId>,
    good: &[Snapshot],
) -> Result<()> {
    let mut seen = repo.seen()?;
    let dropped = seen.accept(listed, sightings(good));
    seen.save()?;
    let names: Vec<String> = dropped.iter().map(|s| s.id.short()).collect();
    match names.len() {
        0 => errln!("coffer: accepted the repository as it is ({} snapshots); none this client saw was missing", good.len()),
        n => errln!(
            "coffer: accepted the repository as it is ({} snapshots); no longer expecting the {n} gone: {}",
            good.len(),
            names.join(" ")
        ),
    }
    Ok(())
}

/// A forget by this client: noted before the store is asked, settled after.
pub(super) struct Forgets(Option<Seen>);

impl Forgets {
    pub(super) fn start(repo: &Repository) -> Forgets {
        Forgets(lock(repo))
    }

    /// Before `id` is forgotten.
    pub(super) fn before(&mut self, id: SnapshotId) {
        if let Some(s) = &mut self.0 {
            s.forgetting(id);
            save(s);
        }
    }

    /// After: `done` when the store removed it.
    pub(super) fn after(&mut self, id: SnapshotId, done: bool) {
        if let Some(s) = &mut self.0 {
            s.forgot(id, done);
            save(s);
        }
    }
}
