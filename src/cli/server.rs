//! The server's side of the command line: `serve`, and the operator's
//! `prune` and `scrub` of a local repository or of every namespace of a
//! server config. Needs no key.

use super::*;

pub(super) fn cmd_serve(
    config: &Path,
    allow_root: bool,
    accept_rollback: &[String],
    rebuild: bool,
) -> Result<()> {
    if nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to run as root: run the server as a dedicated user (or pass --allow-root)");
    }
    let cfg = coffer::net::config::ServerConfig::load(config)?;
    // The object store first, outside any runtime: a bucket that is
    // missing, unlocked or not writable stops the server here, by name.
    let backend = cfg.object_backend()?;
    let mut accept = accept_rollback.to_vec();
    if rebuild {
        if backend.is_none() {
            bail!("--rebuild copies namespaces back from an object store: the config has no [storage] with kind = \"s3\"");
        }
        for c in cfg.namespaces()? {
            let store = cfg.namespace_store(&c)?;
            // unwrap-free: a store opened with a backend has its bucket
            let Some(b) = store.bucket() else { continue };
            let rep = b.rebuild(store.root())?;
            errln!(
                "coffer serve: rebuilt namespace {}: {} objects ({} bytes) copied, {} present{}",
                c.namespace,
                rep.objects,
                rep.bytes,
                rep.present,
                match rep.skipped.len() {
                    0 => String::new(),
                    n => format!(", {n} left out: {}", rep.skipped.join(", ")),
                }
            );
            // Its commit counter is the bucket's now, not the lost disk's.
            if !accept.contains(&c.namespace) {
                accept.push(c.namespace.clone());
            }
        }
    }
    // Before listening: a namespace put back from an older copy is not
    // served; the others are (one such namespace must not stop them all).
    let verdict = rollback_verdict(&cfg, &accept, &who_runs())?;
    for a in &verdict.accepted {
        errln!("coffer serve: accepted (logged in its operator.log): {a}");
    }
    coffer::net::log::init();
    for r in &verdict.refused {
        tracing::error!(
            namespace = %r.namespace,
            commits_seen = r.seen,
            commits_now = r.now,
            "not served, its clients are refused (the other namespaces are served): {r}"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (ep, addr) = coffer::net::server::endpoint(&cfg)?;
        let metrics = coffer::net::watch::bind_metrics(&cfg).await?;
        outln!("coffer serve: listening on {addr}");
        if let Some(m) = &metrics {
            outln!("coffer serve: metrics on http://{}/metrics", m.local_addr()?);
        }
        io::stdout().flush()?;
        // SIGHUP rereads the config; one that does not load is refused
        // and logged, and the running one stays.
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        let path = config.to_path_buf();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: rereading {}", path.display());
                match coffer::net::config::ServerConfig::load(&path) {
                    Ok(c) => {
                        if reload_tx.send(c).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => tracing::error!("config reload refused, the running config stays: {e}"),
                }
            }
        });
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        coffer::net::server::serve(cfg, ep, metrics, &verdict.refused, reloads, shutdown).await?;
        Ok(())
    })
}

pub(super) fn cmd_prune(
    cli: &Cli,
    config: Option<&Path>,
    dry: bool,
    allow_root: bool,
) -> Result<()> {
    if config.is_some() && nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to prune a server's data as root: run as the server's user (or pass --allow-root)");
    }
    let reports = match config {
        Some(c) => {
            coffer::net::jobs::prune_config(&coffer::net::config::ServerConfig::load(c)?, dry)?
        }
        None => {
            let r = repo_arg(cli)?;
            if r.starts_with("quic://") {
                bail!("a server prunes on its own schedule; its operator can run `coffer prune --config SERVER_CONFIG`");
            }
            let store = LocalStore::open(Path::new(r))?;
            let rep = match dry {
                true => store.prune_dry_run()?,
                false => store.prune()?,
            };
            vec![(r.to_string(), rep)]
        }
    };
    if cli.json {
        let v: Vec<_> = reports
            .iter()
            .map(|(n, r)| json!({"repository": n, "report": r}))
            .collect();
        print_json(&serde_json::Value::Array(v))?;
    }
    let (mut clock, mut unreadable) = (false, 0);
    for (name, r) in &reports {
        if let Some(why) = &r.refused {
            errln!("coffer: {name}: {why}");
            // A refusal names its cause: unreadable snapshots, or the clock
            // (or a namespace whose commits went back).
            if r.unreadable.is_empty() {
                clock = true;
            }
            unreadable += r.unreadable.len();
        }
        if cli.json || cli.quiet {
            continue;
        }
        if let Some(c) = &r.policy_changed {
            outln!("{name}: retention rules, applied from this sweep: {c}");
        }
        if r.dry_run {
            print_dry_run(name, r);
            continue;
        }
        for f in r
            .snapshots
            .iter()
            .filter(|f| f.reason.starts_with("past its expiry"))
        {
            outln!("{name}: snapshot {} {}", f.id.short(), f.reason);
        }
        if !r.unreadable.is_empty() {
            outln!(
                "{name}: {} snapshots expired, {} kept; no pack collected ({} snapshots unreadable)",
                r.snapshots_removed.len(),
                r.snapshots_kept,
                r.unreadable.len()
            );
            continue;
        }
        outln!(
            "{name}: {} snapshots expired, {} kept; {} packs ({}) collected, {} kept{}",
            r.snapshots_removed.len(),
            r.snapshots_kept,
            r.packs_removed,
            fmt_bytes(r.bytes_freed),
            r.packs_kept,
            match r.tmp_removed {
                0 => String::new(),
                n => format!("; {n} stale temporary files removed"),
            }
        );
    }
    if clock {
        bail!(
            "nothing was deleted where the clock could not be trusted or the namespace went back"
        );
    }
    if unreadable > 0 {
        return Err(Damaged(format!(
            "{unreadable} snapshots could not be read, so no pack was collected in their repository"
        ))
        .into());
    }
    Ok(())
}

pub(super) fn cmd_policy(cli: &Cli, a: &args::PolicyArgs) -> Result<()> {
    use coffer::retention::DAY_SECS;
    let r = repo_arg(cli)?;
    if r.starts_with("quic://") {
        bail!("a server's retention rules are in its config (retention_days, keep_daily, …), set by its operator");
    }
    let store = LocalStore::open(Path::new(r))?;
    let mut p = store.policy();
    let days = |d: u32| d as i64 * DAY_SECS;
    let given = [
        a.lock_days.map(|d| p.lock_secs = days(d)),
        a.retention_days.map(|d| p.retention_secs = days(d)),
        a.keep_last.map(|n| p.keep.last = n),
        a.keep_daily.map(|n| p.keep.daily = n),
        a.keep_weekly.map(|n| p.keep.weekly = n),
        a.keep_monthly.map(|n| p.keep.monthly = n),
        a.keep_yearly.map(|n| p.keep.yearly = n),
    ];
    if given.iter().any(Option::is_some) {
        p.validate().map_err(Usage)?;
        if p != store.policy() {
            store.replace_policy(&p, &who_runs())?;
        }
    }
    let k = &p.keep;
    if cli.json {
        return print_json(&json!({
            "lock_days": p.lock_secs / DAY_SECS, "retention_days": p.retention_secs / DAY_SECS,
            "gc_grace_hours": p.grace_secs / 3600, "keep_last": k.last, "keep_daily": k.daily,
            "keep_weekly": k.weekly, "keep_monthly": k.monthly, "keep_yearly": k.yearly,
        }));
    }
    if !cli.quiet {
        outln!(
            "lock_days {}, retention_days {}, keep_last {}, keep_daily {}, keep_weekly {}, keep_monthly {}, keep_yearly {}",
            p.lock_secs / DAY_SECS,
            p.retention_secs / DAY_SECS,
            k.last,
            k.daily,
            k.weekly,
            k.monthly,
            k.yearly
        );
    }
    Ok(())
}

/// A dry run, for a person: every snapshot's fate, then what would be freed.
fn print_dry_run(name: &str, r: &coffer::store::PruneReport) {
    outln!("{name}: dry run, nothing deleted");
    for f in &r.snapshots {
        outln!(
            "  {:<6}  {}  received {}  {}",
            f.fate,
            f.id.short(),
            f.received,
            f.reason
        );
    }
    if r.refused.is_none() {
        outln!(
            "{name}: would remove {} snapshots and keep {}; would collect {} packs ({}), keep {}",
            r.snapshots_removed.len(),
            r.snapshots_kept,
            r.packs_removed,
            fmt_bytes(r.bytes_freed),
            r.packs_kept
        );
    }
}

pub(super) fn cmd_scrub(
    cli: &Cli,
    config: Option<&Path>,
    rate_mb: Option<u64>,
    allow_root: bool,
    from: Option<&coffer::net::replica::FetchFrom>,
) -> Result<()> {
    use coffer::scrub::{scrub, ScrubOptions};
    if config.is_some() && nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to scrub a server's data as root: run as the server's user (or pass --allow-root)");
    }
    let opts = ScrubOptions {
        rate: rate_mb.map(|r| r * 1_000_000),
        restart: false,
    };
    // Namespaces whose commit counter went back (with --config).
    let mut back = Vec::new();
    let targets: Vec<(String, LocalStore)> = match config {
        Some(c) => {
            let cfg = coffer::net::config::ServerConfig::load(c)?;
            back = rollback_verdict(&cfg, &[], "")?.refused;
            cfg.namespaces()?
                .into_iter()
                .map(|c| Ok((c.namespace.clone(), cfg.namespace_store(&c)?)))
                .collect::<Result<_>>()?
        }
        None => {
            let r = repo_arg(cli)?;
            if r.starts_with("quic://") {
                bail!("a server scrubs its own data; its operator can run `coffer scrub --config SERVER_CONFIG`");
            }
            vec![(r.to_string(), LocalStore::open(Path::new(r))?)]
        }
    };
    let mut reports = Vec::new();
    let mut unrepairable = 0;
    for (name, store) in &targets {
        let mut r = scrub(store, store.parity(), &opts)?;
        if let Some(from) = from {
            let packs: Vec<_> = r.unrepairable.iter().map(|u| u.pack).collect();
            match coffer::net::replica::fetch_back(store, name, from, &packs) {
                Ok(done) => {
                    for (pack, res) in done {
                        match res {
                            Ok(()) => {
                                errln!("coffer: {name}: pack {pack} put back from the replica");
                                r.unrepairable.retain(|u| u.pack != pack);
                                r.repaired_packs.push(pack);
                            }
                            Err(why) => errln!(
                                "coffer: {name}: pack {pack} not put back from the replica: {why}"
                            ),
                        }
                    }
                }
                Err(e) => errln!("coffer: {name}: the replica could not be asked: {e}"),
            }
        }
        unrepairable += r.unrepairable.len();
        if !cli.json && !cli.quiet {
            outln!(
                "{name}: checked {} packs and {} parity files ({} blocks, {}): {} damaged blocks, {} repaired in {} packs, {} unrepairable",
                r.packs_checked,
                r.parity_checked,
                r.blocks_checked,
                fmt_bytes(r.bytes_read),
                r.damaged_blocks,
                r.repaired_blocks,
                r.repaired_packs.len(),
                r.unrepairable.len()
            );
            if let Some(b) = &r.bucket {
                outln!(
                    "{name}: bucket: checked {} pack objects ({}): {} written again from here, {} put back from the bucket",
                    b.objects_checked,
                    fmt_bytes(b.bytes_read),
                    b.rewritten.len(),
                    b.fetched_back.len()
                );
            }
        }
        for u in &r.unrepairable {
            let snaps: Vec<String> = u.snapshots.iter().map(|s| s.short()).collect();
            errln!(
                "coffer: {name}: pack {} is damaged beyond repair ({}); snapshots affected: {}",
                u.pack,
                u.reason,
                if snaps.is_empty() {
                    "none".into()
                } else {
                    snaps.join(" ")
                }
            );
        }
        reports.push(json!({"repository": name, "report": r}));
    }
    if cli.json {
        print_json(&serde_json::Value::Array(reports))?;
    }
    for r in &back {
        errln!("coffer: {r}");
    }
    if unrepairable > 0 || !back.is_empty() {
        return Err(Damaged(format!(
            "{unrepairable} packs could not be repaired, {} namespaces went back to an older copy",
            back.len()
        ))
        .into());
    }
    Ok(())
}

/// Compares the commit counter of every namespace of a server config with
/// the highest seen (see `coffer::net::rollback`); a counter that could not
/// be checked is named in a warning.
pub(super) fn rollback_verdict(
    cfg: &coffer::net::config::ServerConfig,
    accept: &[String],
    by: &str,
) -> Result<coffer::net::rollback::Verdict> {
    let mut names: Vec<String> = cfg.namespaces()?.into_iter().map(|c| c.namespace).collect();
    names.sort();
    let v = coffer::net::rollback::verify(&cfg.data, &names, accept, by)?;
    for (ns, e) in &v.unchecked {
        errln!("coffer: warning: namespace {ns}: commit counter not checked: {e}");
    }
    Ok(v)
}
