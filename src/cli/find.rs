//! `coffer find PATTERN…`: which snapshots hold an entry of that name or
//! path. The search itself is `coffer::repo::find`; this chooses the
//! snapshots (filters, `--snapshot`, `--newest`) and prints the hits.

use super::restore::{kind_name, report_unopened};
use super::*;
use args::FindArgs;
use coffer::repo::find::{FindOptions, Finder, Hit};

pub(super) fn cmd_find(cli: &Cli, a: &FindArgs) -> Result<()> {
    let opts = FindOptions {
        patterns: a.patterns.clone(),
        whole_path: a.whole_path,
        ignore_case: a.ignore_case,
    };
    // Patterns first: a bad one is refused before the key is derived.
    coffer::repo::find::Matcher::new(&opts).map_err(|e| Usage(e.to_string()))?;
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let snaps = chosen(cli, &repo, &a.snaps)?;
    let mut finder = Finder::new(&repo, &cache, &opts)?;
    // Newest first, so `--newest N` stops after N snapshots with a hit.
    let mut found: Vec<(&Snapshot, Vec<Hit>)> = Vec::new();
    for s in snaps.iter().rev() {
        if a.newest.is_some_and(|n| found.len() as u64 >= n) {
            break;
        }
        let hits = finder.find(s)?;
        if !hits.is_empty() {
            found.push((s, hits));
        }
    }
    found.reverse();
    let entries: usize = found.iter().map(|(_, h)| h.len()).sum();
    if cli.json {
        let rows: Vec<_> = found
            .iter()
            .flat_map(|(s, hits)| hits.iter().map(move |h| hit_json(s, h)))
            .collect();
        print_json(&serde_json::Value::Array(rows))?;
    } else {
        let stdout = io::stdout();
        let mut out = io::BufWriter::new(stdout.lock());
        for (s, hits) in &found {
            let (short, time) = (s.id.short(), fmt_time(s.record.time_ns));
            for h in hits {
                writeln!(
                    out,
                    "{short}  {time}  {:<7} {:>12}  {}  {}",
                    kind_name(h.kind),
                    h.size,
                    fmt_time(h.mtime_ns),
                    String::from_utf8_lossy(&h.path)
                )?;
            }
        }
        out.flush()?;
    }
    if !cli.quiet {
        let st = finder.stats();
        errln!(
            "coffer: {entries} entries in {} of {} snapshots searched; {} trees read, {} shared trees reused",
            found.len(),
            snaps.len(),
            st.trees_read,
            st.trees_reused
        );
    }
    Ok(())
}

/// The snapshots to search, oldest first: those named (`latest` under the
/// filter), else every one that opens and that the filter takes.
fn chosen(cli: &Cli, repo: &Repository, named: &[String]) -> Result<Vec<Snapshot>> {
    if named.is_empty() {
        let all = repo.snapshots()?;
        report_unopened(&all.unopened);
        let mut good = all.good;
        good.retain(|s| cli.filter.matches(&s.record));
        return Ok(good);
    }
    let mut out: Vec<Snapshot> = Vec::new();
    for spec in named {
        let s = repo.find_snapshot_in(spec, &cli.filter)?;
        if !out.iter().any(|o| o.id == s.id) {
            out.push(s);
        }
    }
    out.sort_by_key(|s| (s.record.time_ns, s.id));
    Ok(out)
}

fn hit_json(s: &Snapshot, h: &Hit) -> serde_json::Value {
    json!({
        "snapshot": s.id.to_hex(), "short_id": s.id.short(), "time": fmt_time(s.record.time_ns),
        "host": s.record.host, "path": String::from_utf8_lossy(&h.path), "type": kind_name(h.kind),
        "size": h.size, "mtime": fmt_time(h.mtime_ns),
    })
}
