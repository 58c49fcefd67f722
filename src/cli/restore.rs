//! The restore side of the command line: `snapshots`, `ls`, `restore`,
//! `dump`, `diff`, `stats` and `check`. Reads a repository, never changes
//! one (the client's own record of the snapshots it saw aside).

use super::ls::escape;
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

/// A snapshot argument, `SNAP[:SUBPATH]`, resolved under the command's
/// filter (`latest` is the newest snapshot that matches it).
pub(super) fn find(cli: &Cli, repo: &Repository, spec: &str) -> Result<(Snapshot, Option<String>)> {
    let (snap, sub) = coffer::repo::filter::split_spec(spec);
    let s = repo.find_snapshot_in(snap, &cli.filter)?;
    Ok((s, sub.map(|p| p.trim_matches('/').to_string())))
}

/// A subpath and a path below it, as one path from the snapshot's root.
pub(super) fn joined(sub: Option<&str>, path: Option<&str>) -> Option<String> {
    match (sub, path) {
        (None, None) => None,
        (Some(a), None) => Some(format!("/{a}")),
        (None, Some(b)) => Some(b.to_string()),
        (Some(a), Some(b)) => Some(format!("/{a}/{}", b.trim_start_matches('/'))),
    }
}

/// Names each snapshot that does not open, on standard error, with what
/// can be done about it.
pub(super) fn report_unopened(unopened: &[(coffer::id::SnapshotId, Error)]) {
    for (id, e) in unopened {
        errln!("coffer: warning: {e}; listed apart (`coffer forget --damaged {id}` removes it)");
    }
}

/// What `snapshots --group-by` groups by.
#[derive(Default)]
struct GroupBy {
    host: bool,
    paths: bool,
    tags: bool,
}

impl GroupBy {
    fn parse(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy::default();
        for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            match k {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                _ => {
                    return Err(Usage(format!(
                        "--group-by {k:?}: expected host, paths or tags (comma-separated)"
                    ))
                    .into())
                }
            }
        }
        Ok(g)
    }

    /// A snapshot's group key, as JSON (only the chosen fields).
    fn key(&self, s: &Snapshot) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if self.host {
            m.insert("host".into(), json!(s.record.host));
        }
        if self.paths {
            let mut p = s.record.paths.clone();
            p.sort();
            m.insert("paths".into(), json!(p));
        }
        if self.tags {
            let mut t = s.record.tags.clone();
            t.sort();
            m.insert("tags".into(), json!(t));
        }
        serde_json::Value::Object(m)
    }
}

/// `snaps` in groups of equal key, each in the order given, groups in the
/// order of their first snapshot.
fn grouped<'a>(g: &GroupBy, snaps: &[&'a Snapshot]) -> Vec<(serde_json::Value, Vec<&'a Snapshot>)> {
    let mut out: Vec<(serde_json::Value, Vec<&Snapshot>)> = Vec::new();
    for s in snaps {
        let k = g.key(s);
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some((_, v)) => v.push(s),
            None => out.push((k, vec![s])),
        }
    }
    out
}

pub(super) fn cmd_snapshots(
    cli: &Cli,
    strict: bool,
    accept_rollback: bool,
    group_by: Option<&str>,
) -> Result<()> {
    let group_by = group_by.map(GroupBy::parse).transpose()?;
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
    // The filter chooses what is shown; the rollback watch above saw all.
    let shown: Vec<&Snapshot> = snaps
        .iter()
        .filter(|s| cli.filter.matches(&s.record))
        .collect();
    let groups = match &group_by {
        Some(g) => grouped(g, &shown),
        None => vec![(serde_json::Value::Null, shown.clone())],
    };
    if cli.json {
        let v = match group_by {
            None => serde_json::Value::Array(shown.iter().map(|s| snapshot_json(s)).collect()),
            Some(_) => serde_json::Value::Array(
                groups
                    .iter()
                    .map(|(k, v)| json!({"group": k, "snapshots": v.iter().map(|s| snapshot_json(s)).collect::<Vec<_>>()}))
                    .collect(),
            ),
        };
        print_json(&v)?;
        return strict_fail();
    }
    if cli.quiet {
        // Ids alone, one a line, for scripts.
        for s in &shown {
            outln!("{}", s.id);
        }
        return strict_fail();
    }
    for (i, (key, members)) in groups.iter().enumerate() {
        if group_by.is_some() {
            if i > 0 {
                outln!();
            }
            let mut head = Vec::new();
            if let Some(h) = key.get("host") {
                head.push(format!("host {}", h.as_str().unwrap_or("")));
            }
            for (name, k) in [("paths", "paths"), ("tags", "tags")] {
                if let Some(v) = key.get(k).and_then(|v| v.as_array()) {
                    let items: Vec<&str> = v.iter().filter_map(|x| x.as_str()).collect();
                    head.push(format!("{name} {}", items.join(" ")));
                }
            }
            outln!("{}:", head.join(", "));
        }
        print_table(members);
    }
    let filtered = match snaps.len() - shown.len() {
        0 => String::new(),
        n => format!(" ({n} more not matching {})", cli.filter.describe()),
    };
    match all.unopened.len() {
        0 => outln!("{} snapshots{filtered}", shown.len()),
        n => outln!("{} snapshots{filtered} ({n} more do not open)", shown.len()),
    }
    strict_fail()
}

/// The snapshot table of `snapshots`, for a person.
fn print_table(snaps: &[&Snapshot]) {
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

pub(super) fn cmd_restore(
    cli: &Cli,
    snap: &str,
    target: &Path,
    paths: &[String],
    args: &super::args::RestoreArgs,
) -> Result<()> {
    let repo = open(cli)?;
    let (mut s, sub) = find(cli, &repo, snap)?;
    if let Some(sub) = sub.filter(|p| !p.is_empty()) {
        // The subtree's contents go into the target, as its root.
        let mut cache = repo.cache()?;
        repo.sync_cache(&mut cache)?;
        let node = repo.find_node(&cache, &s, &sub)?;
        match (node.kind, node.subtree) {
            (Some(NodeKind::Dir), Some(tree)) => s.record.tree = tree,
            _ => {
                return Err(Usage(format!(
                    "{sub} in snapshot {} is not a directory: restore it by its path                      (`restore {} --target DIR /{sub}`) or write it out with `dump`",
                    s.id.short(),
                    s.id.short()
                ))
                .into())
            }
        }
    }
    let qcow2 = args.format == super::disk_format::DiskFormat::Qcow2 && !args.dry_run;
    let images = match qcow2 {
        true => {
            super::disk_format::check_tool()?;
            super::disk_format::images(&s, target)?
        }
        false => Vec::new(),
    };
    let patterns = coffer::repo::restore_plan::Patterns::new(&args.include, &args.exclude)
        .map_err(|e| Usage(e.to_string()))?;
    let progress =
        (!cli.quiet && !cli.json && !args.dry_run && io::stderr().is_terminal()).then(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {wide_bar}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            indicatif::ProgressBar::new(0).with_style(style)
        });
    let opts = RestoreOptions {
        include: paths.to_vec(),
        owners: nix::unistd::geteuid().is_root(),
        patterns,
        overwrite: args.overwrite,
        delete: args.delete,
        dry_run: args.dry_run,
        verify: args.verify,
        progress,
        ..RestoreOptions::new(target.to_path_buf())
    };
    let started = std::time::Instant::now();
    let attempts = std::cell::RefCell::new(Vec::new());
    let mut st = with_cache_rebuilt(
        &repo,
        || {
            let st = engine::restore(&repo, &s, &opts)?;
            attempts.borrow_mut().push(st.clone());
            Ok(st)
        },
        |st| !st.errors.is_empty(),
    )?;
    // Run again with a rebuilt cache, the restore leaves alone what the
    // first run wrote: that counts as written.
    for a in attempts
        .borrow()
        .iter()
        .rev()
        .skip(1)
        .filter(|_| !args.dry_run)
    {
        st.files += a.files;
        st.bytes += a.bytes;
        st.deleted += a.deleted;
        st.verified += a.verified;
        st.unchanged = st.unchanged.saturating_sub(a.files);
    }
    if qcow2 && st.errors.is_empty() {
        for q in super::disk_format::to_qcow2(&images)? {
            if !cli.quiet && !cli.json {
                errln!("coffer: wrote {}", q.display());
            }
        }
    }
    for w in &st.warnings {
        errln!("coffer: warning: {w}");
    }
    for p in &st.skipped {
        errln!("coffer: warning: {}: a socket, not restored", escape(p));
    }
    for p in &st.refused {
        errln!(
            "coffer: warning: {}: a non-empty directory stands where the snapshot has no directory; left as it is (`--overwrite always` or `--delete` replaces it)",
            escape(p)
        );
    }
    for e in &st.errors {
        errln!("coffer: error: {e}");
    }
    if cli.json {
        print_json(&json!({"snapshot": s.id.to_hex(), "dry_run": args.dry_run,
            "files": st.files, "dirs": st.dirs, "others": st.others, "bytes": st.bytes,
            "unchanged": st.unchanged, "deleted": st.deleted, "skipped": st.skipped,
            "refused": st.refused, "verified": st.verified, "changes": st.changes,
            "errors": st.errors, "warnings": st.warnings,
            "seconds": started.elapsed().as_secs_f64()}))?;
    } else {
        for c in &st.changes {
            outln!("{}", escape(c));
        }
        if !cli.quiet {
            let verb = if args.dry_run {
                "would restore"
            } else {
                "restored"
            };
            let mut tail = String::new();
            if !st.skipped.is_empty() {
                tail += &format!(", {} skipped", st.skipped.len());
            }
            if !st.refused.is_empty() {
                tail += &format!(", {} refused", st.refused.len());
            }
            if args.verify {
                tail += &format!(", verified {} files", st.verified);
            }
            outln!(
                "{verb} snapshot {} to {}: {} files written ({}), {} left alone, {} deleted{tail} in {:.1}s",
                s.id.short(),
                target.display(),
                st.files,
                fmt_bytes(st.bytes),
                st.unchanged,
                st.deleted,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if !st.errors.is_empty() {
        return Err(Damaged(format!("{} entries could not be restored", st.errors.len())).into());
    }
    if !st.refused.is_empty() {
        return Err(Incomplete(format!(
            "{} non-empty directories left where the snapshot has files",
            st.refused.len()
        ))
        .into());
    }
    Ok(())
}

pub(super) fn cmd_dump(cli: &Cli, snap: &str, path: Option<&str>, tar: bool) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let (s, sub) = find(cli, &repo, snap)?;
    let Some(path) = joined(sub.as_deref().filter(|p| !p.is_empty()), path) else {
        return Err(Usage("dump needs a path: `dump SNAP PATH` or `dump SNAP:PATH`".into()).into());
    };
    let node = repo.find_node(&cache, &s, &path)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let res = match tar || node.kind == Some(NodeKind::Dir) {
        true => coffer::repo::dump_tar::dump_tar(&repo, &cache, &node, &mut out),
        false => engine::dump(&repo, &cache, &node, &mut out).map(|_| ()),
    };
    match res {
        Err(Error::RawIo(e)) => Err(e.into()),
        r => r.map_err(Into::into),
    }
}

pub(super) fn cmd_diff(cli: &Cli, a: &str, b: &str) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    // Each side's tree: the root, or the subtree its `:SUBPATH` names.
    let tree = |spec: &str| -> Result<coffer::id::BlobId> {
        let (s, sub) = find(cli, &repo, spec)?;
        match sub.filter(|p| !p.is_empty()) {
            None => Ok(s.record.tree),
            Some(p) => repo.find_node(&cache, &s, &p)?.subtree.ok_or_else(|| {
                Usage(format!(
                    "{p} in snapshot {} is not a directory",
                    s.id.short()
                ))
                .into()
            }),
        }
    };
    let (ta, tb) = (tree(a)?, tree(b)?);
    let changes = diff::diff(&repo, &cache, &ta, &tb)?;
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
        let (s, _) = find(cli, &repo, sp)?;
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
