//! Keep rules: time alone never removes a backup job's newest snapshot, the
//! operator's daily/weekly/monthly rules keep exactly what they name (checked
//! against a model written here, apart from the library's), and a dry run
//! lists what the next sweep removes. The real binary under libfaketime.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::retention::{at, faked, faketime};
use crate::server::TestServer;
use crate::util::*;

const DAY: i64 = 86_400;

fn write_data(dir: &Path, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("f"), random_bytes(seed, 200_000)).unwrap();
}

/// The snapshot ids a prune report removed.
fn removed(r: &serde_json::Value) -> BTreeSet<String> {
    r[0]["report"]["snapshots_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Snapshot ids and their stamps, read straight from the repository
/// directory (no key, no binary).
fn stamps(repo: &Path) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(repo.join("snapshots")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(id) = name.strip_suffix(".stamp") {
            let v: serde_json::Value =
                serde_json::from_slice(&fs::read(repo.join("snapshots").join(&name)).unwrap())
                    .unwrap();
            out.insert(id.to_string(), v);
        }
    }
    out
}

fn backup_at(t: &TestRepo, offset: &str, args: &[&str]) -> String {
    let mut a = vec!["--json", "backup"];
    a.extend_from_slice(args);
    at(t, offset, &a).ok().json()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn backup_stdin_at(t: &TestRepo, offset: &str, name: &str, bytes: &[u8]) -> String {
    backup_stdin_with(t, offset, &[], name, bytes)
}

fn backup_stdin_with(
    t: &TestRepo,
    offset: &str,
    extra: &[&str],
    name: &str,
    bytes: &[u8],
) -> String {
    let mut c = faked(offset);
    c.env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", &t.cache)
        .arg("--repo")
        .arg(&t.repo)
        .args(["--json", "backup"])
        .args(extra)
        .args(["--stdin", "--stdin-name", name]);
    let mut child = c
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = Run {
        out: child.wait_with_output().unwrap(),
    };
    out.ok().json()["id"].as_str().unwrap().to_string()
}

#[test]
fn a_silent_machine_keeps_the_newest_backup_of_each_job() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::new();
    let tree = t.path("etc");
    let mut ids = Vec::new();
    let dump = random_bytes(99, 300_000);
    let mut old_dump = String::new();
    for (i, off) in ["+0d", "+1d", "+2d"].iter().enumerate() {
        write_data(&tree, 10 + i as u64);
        ids.push(backup_at(&t, off, &[tree.to_str().unwrap()]));
        if i == 1 {
            old_dump = backup_stdin_at(&t, off, "db.sql", &random_bytes(98, 300_000));
        }
    }
    let dump_id = backup_stdin_at(&t, "+2d", "db.sql", &dump);
    let newest_tree = fs::read(tree.join("f")).unwrap();
    // The machine dies: no backup after day 2. Sweeps at 31, 60 and 400 days.
    let r = at(&t, "+31d", &["--json", "prune"]).ok().json();
    let expected: BTreeSet<String> = [ids[0].clone(), ids[1].clone(), old_dump.clone()].into();
    assert_eq!(removed(&r), expected, "{r}");
    for off in ["+60d", "+400d"] {
        let r = at(&t, off, &["--json", "prune"]).ok().json();
        assert!(removed(&r).is_empty(), "{off}: {r}");
        let fates = r[0]["report"]["snapshots"].as_array().unwrap();
        assert_eq!(fates.len(), 2);
        for f in fates {
            assert_eq!(f["fate"], "keep");
            assert_eq!(f["kept_by"], serde_json::json!(["keep_last"]), "{f}");
        }
    }
    // Listed with the reason, and both restore byte for byte.
    let snaps = at(&t, "+400d", &["--json", "snapshots"]).ok().json();
    let listed: BTreeSet<String> = snaps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["kept_by"], serde_json::json!(["keep_last"]), "{s}");
            s["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(listed, [ids[2].clone(), dump_id.clone()].into());
    let out = t.path("out");
    at(
        &t,
        "+400d",
        &["restore", &ids[2], "--target", out.to_str().unwrap()],
    )
    .ok();
    assert!(fs::read(restored(&out, &tree).join("f")).unwrap() == newest_tree);
    let got = at(&t, "+400d", &["dump", &dump_id, "db.sql"])
        .ok()
        .out
        .stdout;
    assert!(got == dump, "the dump restores byte for byte");
    at(&t, "+400d", &["check", "--read-data"]).ok();
}

#[test]
fn a_job_that_keeps_committing_loses_only_what_is_past_its_retention() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::new();
    let tree = t.path("home");
    let mut ids = Vec::new();
    for (i, off) in ["+0d", "+10d", "+20d", "+39d"].iter().enumerate() {
        write_data(&tree, 20 + i as u64);
        ids.push(backup_at(&t, off, &[tree.to_str().unwrap()]));
    }
    let packs_before = t.packs().len();
    let r = at(&t, "+39d", &["--json", "prune"]).ok().json();
    assert_eq!(removed(&r), [ids[0].clone()].into(), "{r}");
    assert!(t.packs().len() < packs_before, "its packs are collected");
    let left: BTreeSet<String> = stamps(&t.repo).into_keys().collect();
    assert_eq!(left, ids[1..].iter().cloned().collect());
}

/// The keep rules as the issue states them, written apart from the
/// library: the newest snapshot of each of the last N days, ISO weeks and
/// months that have one (UTC), and the newest snapshot overall.
fn model_kept(
    snaps: &[(String, i64)],
    daily: usize,
    weekly: usize,
    monthly: usize,
) -> BTreeSet<String> {
    let day = |t: i64| t.div_euclid(DAY);
    // ISO weeks start on Monday; 1970-01-05 was one.
    let week = |t: i64| (t.div_euclid(DAY) - 4).div_euclid(7);
    let month = |t: i64| {
        let s = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t as u64),
        )
        .to_string();
        s[..7].to_string() // "YYYY-MM"
    };
    let mut newest_first: Vec<&(String, i64)> = snaps.iter().collect();
    newest_first.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    let mut kept = BTreeSet::new();
    if let Some((id, _)) = newest_first.first() {
        kept.insert(id.clone());
    }
    let mut rule = |n: usize, key: &dyn Fn(i64) -> String| {
        let mut seen: Vec<String> = Vec::new();
        for (id, t) in &newest_first {
            let k = key(*t);
            if seen.len() == n {
                break;
            }
            if seen.last() != Some(&k) {
                seen.push(k);
                kept.insert(id.clone());
            }
        }
    };
    rule(daily, &|t| day(t).to_string());
    rule(weekly, &|t| week(t).to_string());
    rule(monthly, &month);
    kept
}

#[test]
fn four_hundred_days_of_daily_backups_keep_exactly_what_the_rules_name() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::with_init(&[
        "--keep-daily",
        "7",
        "--keep-weekly",
        "5",
        "--keep-monthly",
        "12",
    ]);
    let tree = t.path("srv");
    fs::create_dir_all(&tree).unwrap();
    // id -> (received, the day's content)
    let mut alive: BTreeMap<String, (i64, u32)> = BTreeMap::new();
    for d in 0..400u32 {
        // A nightly job whose start wanders over the day.
        let hours = d as i64 * 24 + (d as i64 * 7) % 24;
        let off = format!("+{hours}h");
        fs::write(tree.join("f"), format!("day {d}\n")).unwrap();
        let id = backup_at(&t, &off, &[tree.to_str().unwrap()]);
        let received = stamps(&t.repo)[&id]["received"].as_i64().unwrap();
        alive.insert(id, (received, d));
        let r = at(&t, &off, &["--json", "prune"]).ok().json();
        // The sweep's clock is at least the newest commit's.
        let now = received;
        let snaps: Vec<(String, i64)> = alive.iter().map(|(id, (t, _))| (id.clone(), *t)).collect();
        let named = model_kept(&snaps, 7, 5, 12);
        let expect_removed: BTreeSet<String> = snaps
            .iter()
            .filter(|(id, t)| now >= t + 30 * DAY && !named.contains(id))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(removed(&r), expect_removed, "day {d}");
        for id in &expect_removed {
            alive.remove(id);
        }
        let on_disk: BTreeSet<String> = stamps(&t.repo).into_keys().collect();
        assert_eq!(on_disk, alive.keys().cloned().collect(), "day {d}");
    }
    // 30 days of dailies, plus what the weekly and monthly rules reach back to.
    assert!(
        alive.len() > 30 && alive.len() < 30 + 5 + 12,
        "{}",
        alive.len()
    );
    let oldest = alive.values().map(|(_, d)| *d).min().unwrap();
    assert!(
        oldest < 400 - 300,
        "monthly snapshots reach back: oldest day {oldest}"
    );
    // Every remaining snapshot restores its own day.
    for (id, (_, d)) in &alive {
        let got = at(
            &t,
            "+9700h",
            &["dump", id, &format!("{}/f", tree.display())],
        );
        let got = got.ok().out.stdout;
        assert_eq!(String::from_utf8_lossy(&got), format!("day {d}\n"), "{id}");
    }
}

#[test]
fn a_dry_run_deletes_nothing_and_lists_what_the_next_prune_removes() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::with_init(&["--keep-daily", "2"]);
    let tree = t.path("var");
    for (i, off) in ["+0d", "+1d", "+2d", "+3d", "+4d"].iter().enumerate() {
        write_data(&tree, 40 + i as u64);
        backup_at(&t, off, &[tree.to_str().unwrap()]);
    }
    // What a sweep may delete or change (a dry run may take the prune lock).
    let objects = || -> Vec<(PathBuf, Vec<u8>)> {
        t.repo_files()
            .into_iter()
            .filter(|p| {
                p.starts_with(t.repo.join("packs")) || p.starts_with(t.repo.join("snapshots"))
            })
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect()
    };
    let before = objects();
    let files_before = t.repo_files();
    let dry = at(&t, "+40d", &["--json", "prune", "--dry-run"])
        .ok()
        .json();
    assert_eq!(dry[0]["report"]["dry_run"], true);
    assert!(objects() == before, "a dry run deletes and changes nothing");
    let would = removed(&dry);
    assert_eq!(would.len(), 3, "{dry}");
    let fates = dry[0]["report"]["snapshots"].as_array().unwrap();
    for f in fates {
        let gone = would.contains(f["id"].as_str().unwrap());
        assert_eq!(f["fate"], if gone { "remove" } else { "keep" }, "{f}");
        if !gone {
            assert!(
                f["kept_by"]
                    .as_array()
                    .unwrap()
                    .contains(&"keep_daily".into()),
                "{f}"
            );
        }
    }
    let freed: BTreeSet<PathBuf> = dry[0]["report"]["packs_freed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let h = p.as_str().unwrap();
            t.repo.join("packs").join(&h[..2]).join(h)
        })
        .collect();
    assert!(!freed.is_empty());
    // The human form names each snapshot's fate.
    let text = at(&t, "+40d", &["prune", "--dry-run"]).ok().stdout();
    assert!(
        text.contains("remove") && text.contains("keep_daily"),
        "{text}"
    );
    // The real prune at the same time removes exactly that.
    let real = at(&t, "+40d", &["--json", "prune"]).ok().json();
    assert_eq!(removed(&real), would);
    assert_eq!(
        real[0]["report"]["packs_removed"],
        dry[0]["report"]["packs_removed"]
    );
    assert_eq!(
        real[0]["report"]["bytes_freed"],
        dry[0]["report"]["bytes_freed"]
    );
    let gone: BTreeSet<PathBuf> = files_before
        .iter()
        .filter(|p| p.starts_with(t.repo.join("packs")) && !p.exists())
        .cloned()
        .collect();
    assert_eq!(gone, freed);
}

#[test]
fn the_servers_namespaces_keep_each_jobs_newest_and_log_rule_changes() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let srv = TestServer::start(1);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let mut c = srv.client(0, &cache);
    c.args(["init", "--kdf-memory-kib", "19456", "--kdf-iterations", "2"]);
    Run {
        out: c.output().unwrap(),
    }
    .ok();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let mut newest = BTreeMap::new();
    for (seed, dir) in [(1, &a), (2, &b), (3, &a), (4, &b)] {
        write_data(dir, seed);
        let out = srv
            .client(0, &cache)
            .args(["--json", "backup", dir.to_str().unwrap()])
            .output()
            .unwrap();
        let id = Run { out }.ok().json()["id"].as_str().unwrap().to_string();
        newest.insert(dir.clone(), id);
    }
    let prune = |off: &str, extra: &[&str]| {
        let out = faked(off)
            .args(["--json", "prune", "--allow-root", "--config"])
            .arg(srv.dir.path().join("server.toml"))
            .args(extra)
            .output()
            .unwrap();
        Run { out }.ok().json()
    };
    let dry = prune("+400d", &["--dry-run"]);
    let r = prune("+400d", &[]);
    assert_eq!(removed(&r).len(), 2, "{r}");
    assert_eq!(removed(&dry), removed(&r));
    let left: BTreeSet<String> = stamps(&srv.namespace_dir("ns-0")).into_keys().collect();
    assert_eq!(left, newest.values().cloned().collect());
    // The operator keeps more: the change applies from the next sweep and
    // is logged in the namespace's operator log.
    let cfg = srv.dir.path().join("server.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replacen("[[client]]", "keep_monthly = 6\n[[client]]", 1),
    )
    .unwrap();
    let r = prune("+401d", &[]);
    assert!(
        r[0]["report"]["policy_changed"]
            .as_str()
            .unwrap()
            .contains("keep_monthly 0 -> 6"),
        "{r}"
    );
    let log = fs::read_to_string(srv.namespace_dir("ns-0").join("operator.log")).unwrap();
    assert!(log.contains("\"policy-changed\""), "{log}");
    // A client cannot change the rules: nothing it sends names them, and
    // keep_last cannot be set below 1 by anyone.
    fs::write(
        &cfg,
        text.replacen("[[client]]", "keep_last = 0\n[[client]]", 1),
    )
    .unwrap();
    let out = faked("+402d")
        .args(["prune", "--allow-root", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keep_last"));
    assert_eq!(stamps(&srv.namespace_dir("ns-0")).len(), 2);
}

#[test]
fn a_job_named_with_job_keeps_one_newest_whatever_its_dump_is_called() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::new();
    // A nightly dump named by its date: without --job each night is a job
    // of its own (and kept as its newest); with --job they are one job.
    let mut named = Vec::new();
    let mut dated = Vec::new();
    for d in 0..3 {
        let off = format!("+{d}d");
        let name = format!("db-2026-12-0{d}.sql");
        dated.push(backup_stdin_at(
            &t,
            &off,
            &name,
            format!("plain {d}\n").as_bytes(),
        ));
        let job = format!("job {d}\n");
        named.push(backup_stdin_with(
            &t,
            &off,
            &["--job", "db"],
            &name,
            job.as_bytes(),
        ));
    }
    let r = at(&t, "+400d", &["--json", "prune"]).ok().json();
    let expected: BTreeSet<String> = named[..2].iter().cloned().collect();
    assert_eq!(removed(&r), expected, "{r}");
    let left: BTreeSet<String> = stamps(&t.repo).into_keys().collect();
    let mut want: BTreeSet<String> = dated.into_iter().collect();
    want.insert(named[2].clone());
    assert_eq!(left, want, "each dated name is a job of its own");
}

#[test]
fn a_local_repositorys_rules_change_later_logged_and_checked() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::new();
    let tree = t.path("opt");
    for (i, off) in ["+0d", "+1d", "+2d", "+3d"].iter().enumerate() {
        write_data(&tree, 60 + i as u64);
        backup_at(&t, off, &[tree.to_str().unwrap()]);
    }
    let shown = t.run(&["--json", "policy"]).ok().json();
    assert_eq!(shown["keep_last"], 1);
    assert_eq!(shown["keep_daily"], 0);
    // refused: nothing changes
    let r = t.run(&["policy", "--keep-last", "0"]).fails();
    assert_eq!(r.code(), 2, "{}", r.stderr());
    let r = t.run(&["policy", "--lock-days", "40"]).fails();
    assert!(r.stderr().contains("lock window"), "{}", r.stderr());
    assert!(!t.repo.join("operator.log").exists());
    // set, logged with who and both rule sets
    let shown = t
        .run(&["--json", "policy", "--keep-daily", "2"])
        .ok()
        .json();
    assert_eq!(shown["keep_daily"], 2);
    assert_eq!(t.run(&["--json", "policy"]).ok().json()["keep_daily"], 2);
    let log = fs::read_to_string(t.repo.join("operator.log")).unwrap();
    let line: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(line["action"], "policy-set");
    assert_eq!(line["from"]["keep"]["daily"], 0);
    assert_eq!(line["to"]["keep"]["daily"], 2);
    assert!(line["by"].as_str().unwrap().contains("(uid "), "{line}");
    // the next sweep applies it: the newest of the last two days stay
    let r = at(&t, "+40d", &["--json", "prune"]).ok().json();
    assert_eq!(removed(&r).len(), 2, "{r}");
    assert_eq!(stamps(&t.repo).len(), 2);
}
