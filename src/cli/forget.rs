//! Removing and keeping snapshots by the client's word: `forget` (inside
//! the store's lock rules) and `lock`. The operator's removal of damaged
//! snapshots is in `damaged`.

use super::*;

pub(super) fn cmd_forget(cli: &Cli, snaps: &[String]) -> Result<()> {
    let repo = open(cli)?;
    let mut forgets = rollback::Forgets::start(&repo);
    let mut failed = 0;
    for spec in snaps {
        // Not opened: a snapshot that does not open can be forgotten too
        // (when its lock allows).
        let id = repo.resolve_snapshot(spec)?;
        forgets.before(id);
        let res = repo.store().forget(&id);
        forgets.after(id, res.is_ok());
        match res {
            Ok(()) => {
                if !cli.quiet {
                    outln!("forgot snapshot {}", id.short());
                }
            }
            Err(e) => {
                errln!("coffer: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} snapshots were not forgotten");
    }
    Ok(())
}

pub(super) fn cmd_lock(cli: &Cli, snap: &str, days: Option<u32>, hold: bool) -> Result<()> {
    let repo = open(cli)?;
    let s = repo.find_snapshot(snap)?;
    let until = now_ns() / 1_000_000_000 + days.unwrap_or(0) as i64 * coffer::retention::DAY_SECS;
    let st = repo.store().lock(&s.id, until, hold)?;
    if cli.json {
        return print_json(
            &json!({"id": s.id.to_hex(), "locked_until": coffer::retention::fmt_time(st.locked_until),
                                  "expires": coffer::retention::fmt_time(st.expires), "hold": st.hold}),
        );
    }
    if !cli.quiet {
        outln!(
            "snapshot {} locked until {}, expires {}{}",
            s.id.short(),
            coffer::retention::fmt_time(st.locked_until),
            coffer::retention::fmt_time(st.expires),
            if st.hold { ", on legal hold" } else { "" }
        );
    }
    Ok(())
}
