//! Removing and keeping snapshots by the client's word: `forget` (inside
//! the store's lock rules) and `lock`. The operator's removal of damaged
//! snapshots is in `damaged`.

use super::*;

pub(super) fn cmd_forget(cli: &Cli, snaps: &[String]) -> Result<()> {
    let repo = open(cli)?;
    let mut forgets = rollback::Forgets::start(&repo);
    let mut forgotten = Vec::new();
    let mut failed = Vec::new();
    for spec in snaps {
        // Not opened: a snapshot that does not open can be forgotten too
        // (when its lock allows).
        let id = match spec.as_str() {
            "latest" => repo.find_snapshot_in(spec, &cli.filter)?.id,
            _ => repo.resolve_snapshot(spec)?,
        };
        forgets.before(id);
        let res = repo.store().forget(&id);
        forgets.after(id, res.is_ok());
        match res {
            Ok(()) => {
                if !cli.quiet && !cli.json {
                    outln!("forgot snapshot {}", id.short());
                }
                forgotten.push(id.to_hex());
            }
            Err(e) => {
                errln!("coffer: {e}");
                failed.push(json!({"id": id.to_hex(), "error": e.to_string()}));
            }
        }
    }
    if cli.json {
        print_json(&json!({"forgotten": forgotten, "failed": failed}))?;
    }
    if !failed.is_empty() {
        bail!("{} snapshots were not forgotten", failed.len());
    }
    Ok(())
}

pub(super) fn cmd_lock(cli: &Cli, a: &args::LockArgs) -> Result<()> {
    let r = repo_arg(cli)?;
    if a.release_hold && r.starts_with("quic://") {
        return Err(Usage(
            "a client cannot release a legal hold; the server's operator can: \
             `coffer lock --config SERVER_CONFIG --namespace NAME ID --release-hold`"
                .into(),
        )
        .into());
    }
    let repo = open(cli)?;
    let s = repo.find_snapshot_in(&a.snap, &cli.filter)?;
    let mut note = String::new();
    let mut st = if a.release_hold && a.days.is_none() {
        repo.store().stamp(&s.id)?
    } else {
        repo.store().lock(&s.id, lock_until(a), a.hold)?
    };
    if a.release_hold {
        // The passphrase holder of a local repository is its operator.
        let store = LocalStore::open(Path::new(r))?;
        (st, note) = release_hold(&store, &s.id, st)?;
    }
    print_lock(cli, &s.id, &st, &note)
}

/// The end of the lock `--days` asks for (now without it).
pub(super) fn lock_until(a: &args::LockArgs) -> i64 {
    now_ns() / 1_000_000_000 + a.days.unwrap_or(0) as i64 * coffer::retention::DAY_SECS
}

/// `--release-hold` by the operator (logged): the stamp after, and what
/// to say of it.
pub(super) fn release_hold(
    store: &LocalStore,
    id: &coffer::id::SnapshotId,
    st: coffer::retention::Stamp,
) -> Result<(coffer::retention::Stamp, String)> {
    Ok(
        match coffer::operator::release_hold(store, id, &who_runs())? {
            Some(after) => (after, "; hold released (logged in operator.log)".into()),
            None => (st, "; it was not on legal hold: nothing changed".into()),
        },
    )
}

/// Prints a snapshot's lock as `lock` leaves it; `note` ends the line.
pub(super) fn print_lock(
    cli: &Cli,
    id: &coffer::id::SnapshotId,
    st: &coffer::retention::Stamp,
    note: &str,
) -> Result<()> {
    use coffer::retention::fmt_time;
    if cli.json {
        return print_json(
            &json!({"id": id.to_hex(), "locked_until": fmt_time(st.locked_until),
                                  "expires": fmt_time(st.expires), "hold": st.hold}),
        );
    }
    if !cli.quiet {
        outln!(
            "snapshot {} locked until {}, expires {}{}{note}",
            id.short(),
            fmt_time(st.locked_until),
            fmt_time(st.expires),
            if st.hold { ", on legal hold" } else { "" }
        );
    }
    Ok(())
}
