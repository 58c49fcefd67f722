//! `coffer clock`: shows whether deletion is frozen because the clock
//! jumped (see `coffer::clock_guard`), and with `--accept-now` records the
//! operator's word that the clock is right now, in each store's
//! `operator.log`. Needs no key: a local repository (`--repo`) or every
//! namespace of a server config (`--config`, `--namespace`).

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::json;

use super::args::Cli;
use super::{print_json, repo_arg, user, Incomplete, Usage};
use coffer::clock_guard::{self, ClockState};
use coffer::retention::fmt_time;
use coffer::store::LocalStore;

pub(super) fn cmd_clock(
    cli: &Cli,
    config: Option<&Path>,
    namespace: Option<&str>,
    accept: bool,
    allow_root: bool,
) -> Result<()> {
    if config.is_some() && nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to change a server's data as root: run as the server's user (or pass --allow-root)");
    }
    let targets: Vec<(String, LocalStore)> = match config {
        Some(c) => {
            let cfg = coffer::net::config::ServerConfig::load(c)?;
            let mut out = Vec::new();
            for n in cfg.namespaces()? {
                if namespace.is_none_or(|ns| ns == n.namespace) {
                    out.push((n.namespace.clone(), cfg.namespace_store(&n)?));
                }
            }
            if let (Some(ns), true) = (namespace, out.is_empty()) {
                return Err(Usage(format!("namespace {ns:?} is not in {}", c.display())).into());
            }
            out
        }
        None => {
            let r = repo_arg(cli)?;
            if r.starts_with("quic://") {
                bail!("a server's clock is its operator's: `coffer clock --config SERVER_CONFIG` on the server");
            }
            vec![(r.to_string(), LocalStore::open(Path::new(r))?)]
        }
    };
    let by = user();
    let mut out = Vec::new();
    let mut frozen = 0;
    for (name, store) in &targets {
        if accept {
            let before = clock_guard::accept_now(store, &by)?;
            let after = clock_guard::state(store)?;
            if !cli.json && !cli.quiet {
                outln!(
                    "{name}: the clock is taken as right at {} (latest time seen was {}){}; logged in operator.log",
                    fmt_time(after.now),
                    fmt_time(before.seen),
                    match &before.frozen_why {
                        Some(_) => ", deletion is no longer frozen",
                        None => "",
                    }
                );
            }
            out.push(
                json!({"repository": name, "accepted": true, "before": before, "state": after}),
            );
        } else {
            let st = clock_guard::state(store)?;
            frozen += usize::from(st.frozen_why.is_some());
            if !cli.json && !cli.quiet {
                show(name, &st);
            }
            out.push(json!({"repository": name, "state": st}));
        }
    }
    if cli.json {
        print_json(&serde_json::Value::Array(out))?;
    }
    if frozen > 0 {
        return Err(Incomplete(format!(
            "deletion is frozen in {frozen} of {} repositories: check the clock, then run `coffer clock --accept-now`",
            targets.len()
        ))
        .into());
    }
    Ok(())
}

/// The state of one store, in lines for a human.
fn show(name: &str, st: &ClockState) {
    let sweep = match &st.last_sweep {
        Some(r) if st.same_boot => format!("{} (this boot)", fmt_time(r.wall)),
        Some(r) => format!(
            "{} (another boot: a forward jump since then cannot be judged)",
            fmt_time(r.wall)
        ),
        None => "none recorded".into(),
    };
    outln!(
        "{name}: clock now {}, latest time seen {}, last sweep {sweep}",
        fmt_time(st.now),
        match st.seen {
            0 => "none".into(),
            s => fmt_time(s),
        }
    );
    match (&st.frozen_why, &st.pending) {
        (Some(why), _) => outln!("{name}: FROZEN: {why}"),
        (None, Some(j)) => outln!("{name}: the next sweep will freeze deletion: {j}"),
        (None, None) => outln!("{name}: deletion is not frozen"),
    }
}
