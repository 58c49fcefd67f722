//! The server operator's `forget` and `lock` of one namespace (`--config
//! FILE --namespace NS`): no key, a client's rules for the lock window and
//! legal holds, a hold released only here, each act logged in the
//! namespace's `operator.log` ([`coffer::operator`]). A namespace whose
//! commit counter went back is left alone, as prune leaves it.

use super::args::LockArgs;
use super::damaged::{finish, operator_store};
use super::forget::{lock_until, print_lock, release_hold};
use super::server::rollback_verdict;
use super::*;
use coffer::id::SnapshotId;

/// The namespace's store, unless the rollback check refuses the namespace.
fn served_store(config: &Path, namespace: &str, allow_root: bool) -> Result<LocalStore> {
    let (cfg, store) = operator_store(config, namespace, allow_root)?;
    let verdict = rollback_verdict(&cfg, &[], "")?;
    if let Some(r) = verdict.refused.iter().find(|r| r.namespace == namespace) {
        bail!("nothing changed: {r}");
    }
    Ok(store)
}

/// The snapshot of the namespace a hex id prefix names (without a key,
/// `latest` cannot be told).
fn resolve(store: &LocalStore, spec: &str) -> Result<SnapshotId> {
    if spec.is_empty() || spec.len() > 64 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Usage(format!(
            "{spec:?}: name a snapshot by its id, or a prefix of it, in hex as `coffer snapshots` shows it \
             (the server holds no key to tell which is the latest)"
        ))
        .into());
    }
    Ok(coffer::repo::resolve_prefix(store, spec)?)
}

pub(super) fn cmd_forget_on_server(
    cli: &Cli,
    config: &Path,
    namespace: &str,
    snaps: &[String],
    allow_root: bool,
) -> Result<()> {
    let store = served_store(config, namespace, allow_root)?;
    let mut ids: Vec<SnapshotId> = Vec::new();
    for spec in snaps {
        let id = resolve(&store, spec)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    // Each must be allowed before any is removed.
    let mut refused = 0;
    for id in &ids {
        if let Err(e) = coffer::operator::check_forget(&store, id) {
            errln!("coffer: {namespace}: {e}");
            refused += 1;
        }
    }
    if refused > 0 {
        bail!(
            "{refused} of {} snapshots may not be forgotten now; none was removed",
            ids.len()
        );
    }
    let by = who_runs();
    let mut done = Vec::new();
    for id in &ids {
        let st = coffer::operator::forget(&store, id, &by)?;
        if !cli.json && !cli.quiet {
            outln!(
                "{namespace}: forgot snapshot {id} (received {}); logged in operator.log, its packs go with the next prune",
                coffer::retention::fmt_time(st.received)
            );
        }
        done.push(json!({"repository": namespace, "snapshot": id.to_hex(), "stamp": st}));
    }
    finish(cli, done)
}

pub(super) fn cmd_lock_on_server(
    cli: &Cli,
    config: &Path,
    namespace: &str,
    a: &LockArgs,
) -> Result<()> {
    let store = served_store(config, namespace, a.operator.allow_root)?;
    let id = resolve(&store, &a.snap)?;
    let mut note = String::new();
    let mut st = if a.release_hold && a.days.is_none() {
        store.stamp(&id)?
    } else {
        coffer::operator::extend(&store, &id, lock_until(a), a.hold, &who_runs())?
    };
    if a.release_hold {
        (st, note) = release_hold(&store, &id, st)?;
    }
    print_lock(cli, &id, &st, &note)
}
