//! The restore side of the command line: `snapshots`, `ls`, `restore`,
//! `dump`, `diff`, `stats` and `check`. Reads a repository, never changes
//! one (the client's own record of the snapshots it saw aside).

use super::*;
use coffer::repo::restore::{self as engine, RestoreOptions};

pub(super) fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    let r = &s.record;
    let st = s.stamp.as_ref();
    json!({
        "received": st.map(|t| coffer::retention::fmt_time(t.received)),
        "locked_until": st.map(|t| coffer::retention::fmt_time(t.locked_until)),
        "expires": st.map(|t| coffer::retention::fmt_time(t.expires)),
        "hold": st.map(|t| t.hold),
        // The rules that kept it at the store's last sweep: why a snapshot
        // past `expires` is still there.
        "kept_by": st.map(|t| t.kept_by),
        "id": s.id.to_hex(), "short_id": s.id.short(), "time": fmt_time(r.time_ns),
        "host": r.host, "user": r.user, "source": r.source, "paths": r.paths, "tags": r.tags,
        "tree": r.tree.to_hex(), "packs": s.packs.len(), "stats": r.stats,
    })
}

/// Names each snapshot that does not open, on standard error, with what
/// can be done about it.
pub(super) fn report_unopened(unopened: &[(coffer::id::SnapshotId, Error)]) {
    for (id, e) in unopened {
        errln!("coffer: warning: {e}; listed apart (`coffer forget --damaged {id}` removes it)");
    }
}

pub(super) fn cmd_snapshots(cli: &Cli, strict: bool, accept_rollback: bool) -> Result<()> {
    let repo = open(cli)?;
    // Locked before the listing: a forget by this client cannot cross it.
    let seen = (!accept_rollback).then(|| rollback::lock(&repo)).flatten();
    let all = repo.snapshots()?;
    let snaps = &all.good;
    report_unopened(&all.unopened);
    let listed = all
        .good
        .iter()
        .map(|s| s.id)
        .chain(all.unopened.iter().map(|(id, _)| *id))
        .collect();
    let gone = match accept_rollback {
        true => {
            rollback::accept(&repo, &listed, snaps)?;
            Vec::new()
        }
        false => rollback::watch(seen, &listed, rollback::sightings(snaps)),
    };
    let strict_fail = || -> Result<()> {
        if strict && !all.unopened.is_empty() {
            return Err(Incomplete(format!("{} snapshots do not open", all.unopened.len())).into());
        }
        if strict && !gone.is_empty() {
            return Err(
                Incomplete(format!("{} snapshots seen before are gone", gone.len())).into(),
            );
        }
        Ok(())
    };
    if cli.json {
        print_json(&serde_json::Value::Array(
            snaps.iter().map(snapshot_json).collect(),
        ))?;
        return strict_fail();
    }
    if cli.quiet {
        // Ids alone, one a line, for scripts.
        for s in snaps {
            outln!("{}", s.id);
        }
        return strict_fail();
    }
    outln!(
        "{:<8}  {:<20}  {:<16}  {:>10}  paths",
        "id",
        "time",
        "host",
        "size"
    );
    for s in snaps {
        let r = &s.record;
        let tags = if r.tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.tags.join(","))
        };
        outln!(
            "{:<8}  {:<20}  {:<16}  {:>10}  {}{}",
            s.id.short(),
            fmt_time(r.time_ns),
            r.host,
            fmt_bytes(r.stats.bytes),
            r.paths.join(" "),
            tags
        );
    }
    match all.unopened.len() {
        0 => outln!("{} snapshots", snaps.len()),
        n => outln!("{} snapshots ({n} more do not open)", snaps.len()),
    }
    strict_fail()
}

pub(super) fn kind_name(k: Option<NodeKind>) -> &'static str {
    match k {
        Some(NodeKind::File) => "file",
        Some(NodeKind::Dir) => "dir",
        Some(NodeKind::Symlink) => "symlink",
        Some(NodeKind::Chardev) => "chardev",
        Some(NodeKind::Blockdev) => "blockdev",
        Some(NodeKind::Fifo) => "fifo",
        Some(NodeKind::Socket) => "socket",
        None => "unknown",
    }
}

pub(super) fn cmd_ls(cli: &Cli, snap: &str, path: Option<&str>) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let s = repo.find_snapshot(snap)?;
    let start = path.unwrap_or("/");
    let node = repo.find_node(&cache, &s, start)?;
    let mut rows = Vec::new();
    let base = format!("/{}", start.trim_matches('/'));
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut visit = |n: &Node, p: &str| -> Result<()> {
        if cli.json {
            rows.push(json!({"path": p, "type": kind_name(n.kind), "size": n.size, "mode": format!("{:o}", n.mode),
                             "uid": n.uid, "gid": n.gid, "mtime": fmt_time(n.mtime_ns)}));
        } else {
            writeln!(
                out,
                "{:<7} {:>5o} {:>12} {}  {}",
                kind_name(n.kind),
                n.mode,
                n.size,
                fmt_time(n.mtime_ns),
                p
            )?;
        }
        Ok(())
    };
    fn walk(
        repo: &Repository,
        cache: &coffer::cache::Cache,
        n: &Node,
        p: &str,
        visit: &mut dyn FnMut(&Node, &str) -> Result<()>,
    ) -> Result<()> {
        if let Some(sub) = &n.subtree {
            for c in repo.load_tree(cache, sub)?.nodes {
                let cp = format!(
                    "{}/{}",
                    p.trim_end_matches('/'),
                    String::from_utf8_lossy(&c.name)
                );
                visit(&c, &cp)?;
                walk(repo, cache, &c, &cp, visit)?;
            }
        }
        Ok(())
    }
    if node.kind != Some(NodeKind::Dir) {
        visit(&node, &base)?;
    } else {
        walk(&repo, &cache, &node, &base, &mut visit)?;
    }
    out.flush()?;
    drop(out);
    if cli.json {
        print_json(&serde_json::Value::Array(rows))?;
    }
    Ok(())
}

pub(super) fn cmd_restore(cli: &Cli, snap: &str, target: &Path, paths: &[String]) -> Result<()> {
    let repo = open(cli)?;
    let s = repo.find_snapshot(snap)?;
    let opts = RestoreOptions {
        target: target.to_path_buf(),
        include: paths.to_vec(),
        owners: nix::unistd::geteuid().is_root(),
    };
    let started = std::time::Instant::now();
    let st = with_cache_rebuilt(
        &repo,
        || engine::restore(&repo, &s, &opts),
        |st| !st.errors.is_empty(),
    )?;
    for w in &st.warnings {
        errln!("coffer: warning: {w}");
    }
    for e in &st.errors {
        errln!("coffer: error: {e}");
    }
    if cli.json {
        print_json(
            &json!({"snapshot": s.id.to_hex(), "files": st.files, "dirs": st.dirs, "others": st.others,
                           "bytes": st.bytes, "errors": st.errors, "warnings": st.warnings,
                           "seconds": started.elapsed().as_secs_f64()}),
        )?;
    } else if !cli.quiet {
        outln!(
            "restored snapshot {} to {}: {} files, {} dirs, {} in {:.1}s",
            s.id.short(),
            target.display(),
            st.files,
            st.dirs,
            fmt_bytes(st.bytes),
            started.elapsed().as_secs_f64()
        );
    }
    if !st.errors.is_empty() {
        return Err(Damaged(format!("{} entries could not be restored", st.errors.len())).into());
    }
    Ok(())
}

pub(super) fn cmd_dump(cli: &Cli, snap: &str, path: &str) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let s = repo.find_snapshot(snap)?;
    let node = repo.find_node(&cache, &s, path)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    match engine::dump(&repo, &cache, &node, &mut out) {
        Err(Error::RawIo(e)) => Err(e.into()),
        r => r.map(|_| ()).map_err(Into::into),
    }
}

pub(super) fn cmd_diff(cli: &Cli, a: &str, b: &str) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let (sa, sb) = (repo.find_snapshot(a)?, repo.find_snapshot(b)?);
    let changes = diff::diff(&repo, &cache, &sa.record.tree, &sb.record.tree)?;
    if cli.json {
        return print_json(&serde_json::to_value(&changes)?);
    }
    for c in &changes {
        outln!("{}  {}", c.change, c.path);
    }
    Ok(())
}

pub(super) fn cmd_stats(cli: &Cli, snap: Option<&str>) -> Result<()> {
    let repo = open(cli)?;
    if let Some(sp) = snap {
        let s = repo.find_snapshot(sp)?;
        if cli.json {
            return print_json(&snapshot_json(&s));
        }
        let st = &s.record.stats;
        outln!("snapshot {} ({})", s.id.short(), fmt_time(s.record.time_ns));
        outln!(
            "  files {}  dirs {}  others {}",
            st.files,
            st.dirs,
            st.others
        );
        outln!(
            "  processed {}  new {}  stored {}",
            fmt_bytes(st.bytes),
            fmt_bytes(st.new_bytes),
            fmt_bytes(st.new_pack_bytes)
        );
        outln!("  references {} packs", s.packs.len());
        return Ok(());
    }
    let snaps = repo.store().list_snapshots()?.len();
    let (mut packs, mut bytes) = (0u64, 0u64);
    repo.store().for_each_pack(&mut |_, size| {
        packs += 1;
        bytes += size;
        Ok(())
    })?;
    if cli.json {
        return print_json(
            &json!({"snapshots": snaps, "packs": packs, "pack_bytes": bytes, "repository": repo.id().to_hex()}),
        );
    }
    outln!("repository {}", repo.id().short());
    outln!("  snapshots {snaps}");
    outln!("  packs {packs} ({})", fmt_bytes(bytes));
    Ok(())
}

pub(super) fn cmd_check(cli: &Cli, read_data: bool) -> Result<()> {
    let repo = open(cli)?;
    let gone = rollback::watch_listing(&repo)?;
    let mut rep = with_cache_rebuilt(
        &repo,
        || check::check(&repo, read_data),
        |rep| !rep.errors.is_empty(),
    )?;
    rep.errors.extend(rollback::problems(&gone));
    if cli.json {
        print_json(&serde_json::to_value(&rep)?)?;
    } else {
        for e in &rep.errors {
            errln!("coffer: damaged: {e}");
        }
        for w in &rep.foreign_packs {
            errln!("coffer: warning: {w}");
        }
        if !cli.quiet {
            outln!(
                "checked {} snapshots, {} trees, {} chunk references{}: {}",
                rep.snapshots,
                rep.trees,
                rep.chunks,
                if read_data {
                    format!(
                        ", read {} packs and {} blobs",
                        rep.packs_read, rep.blobs_read
                    )
                } else {
                    String::new()
                },
                if rep.errors.is_empty() {
                    "no problems".to_string()
                } else {
                    format!("{} problems", rep.errors.len())
                }
            );
        }
    }
    if !rep.errors.is_empty() {
        return Err(Damaged(format!("check found {} problems", rep.errors.len())).into());
    }
    Ok(())
}
