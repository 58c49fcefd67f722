//! The operator's word on one store, each act appended to the store's
//! `operator.log` (one JSON line: when, by whom, what, the stamp before
//! and, where it changed, after): a forget without the snapshot's key, by
//! the same lock and hold rules as a client's; the release of a legal hold,
//! which nothing a client sends can do (its lock window stays); and the
//! extension of a lock. A server's operator holds no key, and a local
//! repository's passphrase holder is its operator. The removal of
//! snapshots that do not open is [`LocalStore::remove_damaged`].

use serde_json::json;

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::retention::{self, fmt_time, Refusal, Stamp};
use crate::store::{append_operator_log, LocalStore, Store};

/// Appends one act to `operator.log`.
fn log(
    store: &LocalStore,
    action: &str,
    id: &SnapshotId,
    by: &str,
    before: &Stamp,
    after: Option<&Stamp>,
) -> Result<()> {
    let mut entry = json!({
        "time": fmt_time(store.now()), "action": action,
        "snapshot": id.to_hex(), "by": by, "stamp": before,
    });
    if let Some(a) = after {
        entry["after"] = json!(a);
    }
    append_operator_log(store.root(), &entry)
}

/// Whether the operator may forget `id` now: the rules of a client's
/// forget (the lock window, a legal hold, a clock gone back). Its stamp
/// when allowed; nothing is written either way.
pub fn check_forget(store: &LocalStore, id: &SnapshotId) -> Result<Stamp> {
    let st = store.stamp(id)?;
    retention::may_forget(*id, &st, store.now(), store.seen()).map_err(|r| {
        Error::Denied(match r {
            Refusal::Held(_) => format!(
                "{r} (its lock runs until {}); `coffer lock --release-hold` releases the hold",
                fmt_time(st.locked_until)
            ),
            r => r.to_string(),
        })
    })?;
    Ok(st)
}

/// The operator's forget of `id`: checked as [`check_forget`], logged,
/// then removed (the store checks again; a refusal in between, such as a
/// hold a client put on meanwhile, is logged too). Its packs go with the
/// next prune. Returns the stamp it had.
pub fn forget(store: &LocalStore, id: &SnapshotId, by: &str) -> Result<Stamp> {
    let st = check_forget(store, id)?;
    log(store, "forget", id, by, &st, None)?;
    if let Err(e) = store.forget(id) {
        let entry = json!({
            "time": fmt_time(store.now()), "action": "forget-failed",
            "snapshot": id.to_hex(), "by": by, "error": e.to_string(),
        });
        // The error that stopped the forget is the one to report.
        let _ = append_operator_log(store.root(), &entry);
        return Err(e);
    }
    Ok(st)
}

/// Releases the legal hold of `id` (its lock window and expiry stay as
/// they are), logged first. `None` when it was not on hold: nothing
/// changed, nothing logged.
pub fn release_hold(store: &LocalStore, id: &SnapshotId, by: &str) -> Result<Option<Stamp>> {
    // A client's lock meanwhile is not lost (see `LocalStore::stamps_lock`).
    let _g = store.stamps_lock()?;
    let st = store.stamp(id)?;
    if !st.hold {
        return Ok(None);
    }
    let mut after = st;
    after.hold = false;
    log(store, "release-hold", id, by, &st, Some(&after))?;
    store.write_stamp(id, &after, true)?;
    store.release_bucket_hold(id)?;
    Ok(Some(after))
}

/// Extends the lock of `id` to `until` and/or puts it on hold, as a
/// client's `lock` does (never shortens, bounded the same way), and logs
/// the change (nothing when nothing changed). Returns the stamp after.
pub fn extend(
    store: &LocalStore,
    id: &SnapshotId,
    until: i64,
    hold: bool,
    by: &str,
) -> Result<Stamp> {
    let before = store.stamp(id)?;
    let after = store.lock(id, until, hold)?;
    if after != before {
        log(store, "lock", id, by, &before, Some(&after))?;
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::{Policy, DAY_SECS};
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Arc;

    const T0: i64 = 1_800_000_000;

    fn log_lines(store: &LocalStore) -> Vec<serde_json::Value> {
        std::fs::read_to_string(store.root().join("operator.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn the_operator_keeps_to_the_lock_and_the_hold_and_every_act_is_logged() {
        let d = tempfile::tempdir().unwrap();
        let t = Arc::new(AtomicI64::new(T0));
        let clock = t.clone();
        let store = LocalStore::create(d.path())
            .unwrap()
            .with_policy(Policy::default())
            .with_clock(Arc::new(move || clock.load(Ordering::SeqCst)));
        // A snapshot file listing no pack; the store never opens the rest.
        let mut file = crate::format::snapshot::MAGIC_SNAPSHOT.to_vec();
        file.extend(0u32.to_le_bytes());
        file.push(7);
        let id = store.write_snapshot(&file, None).unwrap();
        // inside the lock window: refused, nothing logged
        let e = forget(&store, &id, "op").unwrap_err().to_string();
        assert!(e.contains(&id.short()) && e.contains("locked until"), "{e}");
        assert!(log_lines(&store).is_empty());
        store.lock(&id, 0, true).unwrap();
        t.store(T0 + 31 * DAY_SECS, Ordering::SeqCst);
        let e = forget(&store, &id, "op").unwrap_err().to_string();
        assert!(e.contains("legal hold") && e.contains("2027-"), "{e}");
        // an extension by the operator is logged with both stamps
        let st = extend(&store, &id, T0 + 40 * DAY_SECS, false, "op").unwrap();
        assert_eq!(st.locked_until, T0 + 40 * DAY_SECS);
        let released = release_hold(&store, &id, "op").unwrap().unwrap();
        assert!(!released.hold);
        assert_eq!(released.locked_until, st.locked_until, "the lock stays");
        assert_eq!(release_hold(&store, &id, "op").unwrap(), None);
        assert!(forget(&store, &id, "op").is_err(), "still locked");
        t.store(T0 + 40 * DAY_SECS, Ordering::SeqCst);
        assert_eq!(forget(&store, &id, "op").unwrap(), released);
        assert!(store.list_snapshots().unwrap().is_empty());
        let lines = log_lines(&store);
        let actions: Vec<&str> = lines
            .iter()
            .map(|l| l["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["lock", "release-hold", "forget"]);
        assert_eq!(lines[1]["stamp"]["hold"], true);
        assert_eq!(lines[1]["after"]["hold"], false);
        assert_eq!(lines[2]["snapshot"], id.to_hex());
        assert_eq!(lines[2]["by"], "op");
    }
}
