//! Pull replication between two real `coffer serve`s on loopback: the
//! replica copies what it lacks, restores byte for byte, outlives its
//! primary, and its identity can only read there.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::net::client::{Remote, RemoteStore, RemoteUrl};
use coffer::net::{Fingerprint, Identity};
use coffer::store::Store;

use crate::server::{identity, init_args, run, TestServer};
use crate::util::*;

/// A primary with `n` namespaces of which the replica identity (made in
/// `dir`) may read the first `readable`.
pub(crate) fn primary(dir: &Path, n: usize, readable: usize) -> (TestServer, PathBuf) {
    primary_with(dir, n, readable, "")
}

/// A primary (see `primary`) in a new temporary directory, whose client 0
/// has created its repository: the directory, the primary, the replica's
/// identity and client 0's cache.
pub(crate) fn primary_with_repo(
    n: usize,
    readable: usize,
) -> (tempfile::TempDir, TestServer, PathBuf, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let (primary, rep_id) = primary(work.path(), n, readable);
    let cache = work.path().join("cache");
    run(primary.client(0, &cache), &init_args()).ok();
    (work, primary, rep_id, cache)
}

/// Like `primary`, with top-level config keys `keys`.
pub(crate) fn primary_with(
    dir: &Path,
    n: usize,
    readable: usize,
    keys: &str,
) -> (TestServer, PathBuf) {
    let id = dir.join("replica.id");
    let fp = identity(&id);
    let names: Vec<String> = (0..readable).map(|i| format!("\"ns-{i}\"")).collect();
    let top = format!(
        "{keys}\n[[replica]]\nfingerprint = \"{fp}\"\nnamespaces = [{}]\n",
        names.join(", ")
    );
    (TestServer::start_full(n, "", &top, &[]), id)
}

/// `[[replicate]]` entries for namespaces `ns` of `primary`, read with `id`.
pub(crate) fn replicate_entries(
    primary: &TestServer,
    id: &Path,
    ns: &[&str],
    extra: &str,
) -> String {
    ns.iter()
        .map(|n| {
            format!(
                "[[replicate]]\nnamespace = \"{n}\"\nprimary = \"127.0.0.1:{}\"\nprimary_fingerprint = \"{}\"\nidentity = \"{}\"\n{extra}\n",
                primary.port,
                primary.fingerprint,
                id.display()
            )
        })
        .collect()
}

/// A replica config with no server running: `coffer replicate` alone.
pub(crate) fn replica_config(dir: &Path, entries: &str) -> PathBuf {
    let path = dir.join("replica.toml");
    let server_id = dir.join("replica-server.id");
    if !server_id.exists() {
        identity(&server_id);
    }
    fs::write(
        &path,
        format!(
            "data = \"{}\"\nidentity = \"{}\"\n{entries}",
            dir.join("replica-data").display(),
            server_id.display()
        ),
    )
    .unwrap();
    path
}

pub(crate) fn replicate(config: &Path, extra: &[&str]) -> Run {
    Run {
        out: clean_command()
            .args(["--json", "replicate", "--allow-root", "--config"])
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    }
}

/// Snapshot file names in a namespace directory (stamps left out).
fn snapshot_names(ns_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(&ns_dir.join("snapshots"))
        .into_iter()
        .filter(|p| p.extension().is_none())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The report of namespace `ns` in a `replicate --json` answer.
fn report_of(v: &serde_json::Value, ns: &str) -> serde_json::Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|e| e["namespace"] == ns)
        .unwrap_or_else(|| panic!("{ns} in {v}"))["report"]
        .clone()
}

/// A backup of random data as `name` through client `i`; returns the
/// snapshot's id and the bytes.
pub(crate) fn backup_stdin(
    srv: &TestServer,
    i: usize,
    cache: &Path,
    name: &str,
    seed: u64,
) -> (String, Vec<u8>) {
    let data = random_bytes(seed, 700_000);
    let mut c = srv.client(i, cache);
    let mut child = c
        .args(["--json", "backup", "--stdin", "--stdin-name", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["id"].as_str().unwrap().to_string(), data)
}

/// Restores snapshot `id` with `cmd` into `target` and compares it with `src`.
fn restores_as(cmd: std::process::Command, id: &str, target: &Path, src: &Path) {
    run(cmd, &["restore", id, "--target", target.to_str().unwrap()]).ok();
    assert_same_tree(src, &restored(target, src));
}

/// Replaces the `[[replicate]]` tables of the server config `cfg` with `entries`.
fn set_replicate(cfg: &Path, entries: &str) {
    let text = fs::read_to_string(cfg).unwrap();
    let head = text.split("[[replicate]]").next().unwrap().to_string();
    let clients = &text[text.find("[[client]]").unwrap()..];
    fs::write(cfg, format!("{head}{entries}{clients}")).unwrap();
}

/// `coffer dump SNAP NAME` from the copy at `repo`, opened as a local repository.
fn dump_local(repo: &Path, cache: &Path, snap: &str, name: &str) -> Vec<u8> {
    let out = clean_command()
        .env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", cache)
        .arg("--repo")
        .arg(repo)
        .args(["dump", snap, name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn a_replica_copies_what_it_lacks_restores_and_outlives_its_primary() {
    let work = tempfile::tempdir().unwrap();
    // No lock window on the primary: its operator may forget at once.
    let (mut primary, rep_id) = primary_with(work.path(), 3, 2, "lock_days = 0");
    let cache0 = work.path().join("cache0");
    let cache1 = work.path().join("cache1");
    run(primary.client(0, &cache0), &init_args()).ok();
    run(primary.client(1, &cache1), &init_args()).ok();
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    let tree = run(
        primary.client(0, &cache0),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json();
    let (_, db) = backup_stdin(&primary, 0, &cache0, "db.sql", 7);
    let (_, other) = backup_stdin(&primary, 1, &cache1, "other.bin", 8);

    // The replica: a server of its own whose clients may only read.
    let top = replicate_entries(&primary, &rep_id, &["ns-0", "ns-1"], "");
    let replica = TestServer::start_full(2, "read_only = true", &top, &[]);
    let cfg = replica.dir.path().join("server.toml");
    // On demand (the server's own first run may have copied already).
    let out = replicate(&cfg, &[]).ok().json();
    for ns in ["ns-0", "ns-1"] {
        assert!(report_of(&out, ns)["refused"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(
            snapshot_names(&replica.namespace_dir(ns)),
            snapshot_names(&primary.namespace_dir(ns)),
            "{ns}"
        );
    }
    assert_eq!(snapshot_names(&replica.namespace_dir("ns-0")).len(), 2);
    // A second run copies nothing.
    let again = replicate(&cfg, &[]).ok().json();
    for ns in ["ns-0", "ns-1"] {
        let r = report_of(&again, ns);
        assert_eq!(r["snapshots_copied"], 0, "{r}");
        assert_eq!(r["bytes_copied"], 0, "{r}");
    }
    // Each snapshot is stamped by the replica when it arrived, and keeps
    // at least the primary's lock.
    let p = primary.store(0, "ns-0").unwrap();
    let rid = Identity::load(&replica.clients[0].0).unwrap();
    let rurl = RemoteUrl::parse(&replica.url("ns-0")).unwrap();
    let rfp = Fingerprint::parse(&replica.fingerprint).unwrap();
    let r = Remote(Arc::new(RemoteStore::connect(&rurl, rid, rfp).unwrap()));
    for id in p.list_snapshots().unwrap() {
        let (ps, rs) = (p.stamp(&id).unwrap(), r.stamp(&id).unwrap());
        assert!(rs.received >= ps.received, "{ps:?} {rs:?}");
        assert!(rs.locked_until >= ps.locked_until, "{ps:?} {rs:?}");
    }

    // A client of the replica restores byte for byte, with no cache.
    let fresh = work.path().join("fresh");
    let tree_id = tree["id"].as_str().unwrap();
    restores_as(
        replica.client(0, &fresh),
        tree_id,
        &work.path().join("out"),
        &src,
    );
    let dumped = run(replica.client(0, &fresh), &["dump", "latest", "db.sql"]).ok();
    assert!(dumped.out.stdout == db);
    let dumped = run(
        replica.client(1, &work.path().join("fresh1")),
        &["dump", "latest", "other.bin"],
    )
    .ok();
    assert!(dumped.out.stdout == other);
    run(replica.client(0, &fresh), &["check", "--read-data"]).ok();
    // ... and, read-only, cannot back up there.
    let e = run(
        replica.client(0, &fresh),
        &["backup", src.to_str().unwrap()],
    )
    .fails();
    assert!(e.stderr().contains("read-only"), "{}", e.stderr());

    // A client of the replica sees no other namespace there.
    let e = run(
        replica.client_as(&replica.clients[0].0, "ns-1", &fresh),
        &["snapshots"],
    )
    .fails();
    assert!(e.stderr().contains("not available"), "{}", e.stderr());

    // Forgotten on the primary by its operator: kept on the replica.
    let f = primary.operator(&["forget", "--namespace", "ns-0", tree_id]);
    assert!(f.status.success(), "{f:?}");
    assert_eq!(snapshot_names(&primary.namespace_dir("ns-0")).len(), 1);
    replicate(&cfg, &[]).ok();
    assert_eq!(snapshot_names(&replica.namespace_dir("ns-0")).len(), 2);

    // The primary's data wiped: a run copies nothing and removes nothing,
    // and every snapshot still restores from the replica.
    primary.stop();
    fs::remove_dir_all(primary.dir.path().join("data")).unwrap();
    primary.start_again();
    set_replicate(
        &cfg,
        &replicate_entries(&primary, &rep_id, &["ns-0", "ns-1"], ""),
    );
    let after = replicate(&cfg, &[]).ok().json();
    assert_eq!(report_of(&after, "ns-0")["snapshots_copied"], 0);
    assert_eq!(snapshot_names(&replica.namespace_dir("ns-0")).len(), 2);
    let fresh2 = work.path().join("fresh2");
    restores_as(
        replica.client(0, &fresh2),
        tree_id,
        &work.path().join("out2"),
        &src,
    );
}

#[test]
fn the_replica_identity_can_only_read_and_only_its_namespaces() {
    let (_work, primary, rep_id, cache) = primary_with_repo(2, 1);
    backup_stdin(&primary, 0, &cache, "a", 1);
    let fp = Fingerprint::parse(&primary.fingerprint).unwrap();
    let connect = |ns: &str| {
        let url = RemoteUrl::parse(&primary.url(ns)).unwrap();
        RemoteStore::connect(&url, Identity::load(&rep_id).unwrap(), fp)
            .map(|s| Remote(Arc::new(s)))
    };
    // Another namespace does not exist for it.
    let e = connect("ns-1").err().expect("ns-1 refused").to_string();
    assert!(e.contains("not available"), "{e}");
    let s = connect("ns-0").unwrap();
    // It reads everything a copy needs ...
    let snaps = s.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    let stamp = s.stamp(&snaps[0]).unwrap();
    s.read_snapshot(&snaps[0]).unwrap();
    s.read_config().unwrap();
    let keys = s.list_keys().unwrap();
    s.read_key(&keys[0]).unwrap();
    let mut packs = Vec::new();
    s.for_each_pack(&mut |id, size| {
        packs.push((id, size));
        Ok(())
    })
    .unwrap();
    let (pack, size) = packs[0];
    let bytes = s.read_pack(&pack, 0, size as usize).unwrap();
    // ... and changes nothing: each write is refused, naming read-only.
    let refused = |what: &str, r: coffer::Result<()>| {
        let e = r.expect_err(what).to_string();
        assert!(e.contains("read-only"), "{what}: {e}");
    };
    let mut up = s.upload_pack().unwrap();
    std::io::Write::write_all(&mut up, &bytes).unwrap();
    refused("upload", up.commit(pack).map(|_| ()));
    let snap = s.read_snapshot(&snaps[0]).unwrap();
    refused("commit", s.write_snapshot(&snap, None).map(|_| ()));
    refused("forget", s.forget(&snaps[0]));
    refused(
        "lock",
        s.lock(&snaps[0], stamp.locked_until + 86_400, true)
            .map(|_| ()),
    );
    refused("write key", s.write_key("new-key", b"{}"));
    refused("remove key", s.remove_key(&keys[0]));
    refused("repair", s.repair(&pack).map(|_| ()));
    refused("write config", s.write_config(b"{}"));
    // Nothing changed on the primary.
    let own = primary.store(0, "ns-0").unwrap();
    assert_eq!(own.list_snapshots().unwrap(), snaps);
    assert_eq!(own.stamp(&snaps[0]).unwrap(), stamp);
    assert_eq!(own.list_keys().unwrap(), keys);
    assert!(primary.log().contains("read-only"), "{}", primary.log());
}

#[test]
fn a_pack_damaged_on_the_primary_is_refused_and_copied_once_sound() {
    let (work, primary, rep_id, cache) = primary_with_repo(1, 1);
    let (_, data) = backup_stdin(&primary, 0, &cache, "a", 3);
    let cfg = replica_config(
        work.path(),
        &replicate_entries(&primary, &rep_id, &["ns-0"], ""),
    );
    let ns = primary.namespace_dir("ns-0");
    let pack = walk(&ns.join("packs"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let sound = fs::read(&pack).unwrap();
    let mut bad = sound.clone();
    bad[sound.len() / 2] ^= 0x10;
    fs::write(&pack, &bad).unwrap();
    let r = replicate(&cfg, &[]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(r.stderr().contains("damaged there"), "{}", r.stderr());
    let rep = report_of(&r.json(), "ns-0");
    assert_eq!(rep["snapshots_copied"], 0, "{rep}");
    let copy = work.path().join("replica-data/namespaces/ns-0");
    assert!(snapshot_names(&copy).is_empty());
    let name = pack.file_name().unwrap();
    assert!(
        !walk(&copy.join("packs"))
            .iter()
            .any(|p| p.file_name() == Some(name)),
        "the damaged pack was kept"
    );
    // Gone on the primary: refused the same way, naming the loss.
    fs::remove_file(&pack).unwrap();
    let r = replicate(&cfg, &[]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(
        r.stderr().contains("which the source does not hold"),
        "{}",
        r.stderr()
    );
    assert!(snapshot_names(&copy).is_empty());
    // Sound again (as a scrub on the primary would leave it): copied, and
    // the copy is a repository of its own that restores byte for byte.
    fs::write(&pack, &sound).unwrap();
    let rep = report_of(&replicate(&cfg, &[]).ok().json(), "ns-0");
    assert_eq!(rep["snapshots_copied"], 1, "{rep}");
    let cache2 = work.path().join("local-cache");
    assert!(dump_local(&copy, &cache2, "latest", "a") == data);
    // The copy has parity of its own from the run, and repairs from it.
    let copied = walk(&copy.join("packs"));
    let victim = copied
        .iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(victim).unwrap();
    bytes[1000] ^= 0x40;
    fs::write(victim, bytes).unwrap();
    let out = clean_command()
        .arg("--repo")
        .arg(&copy)
        .args(["--json", "scrub"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v[0]["report"]["repaired_packs"].as_array().unwrap().len(),
        1,
        "{v}"
    );
    let cache3 = work.path().join("local-cache3");
    assert!(dump_local(&copy, &cache3, "latest", "a") == data);
}

#[test]
fn a_copy_killed_midway_leaves_nothing_partial_and_the_rerun_completes() {
    let (work, mut primary, rep_id, cache) = primary_with_repo(1, 1);
    let mut datas = Vec::new();
    for i in 0..4 {
        datas.push(backup_stdin(&primary, 0, &cache, &format!("f{i}"), 20 + i));
    }
    let copy = work.path().join("replica-data/namespaces/ns-0");
    let packs_held = || walk(&copy.join("packs")).len();
    // A slow copy (256 KiB/s over ~2.8 MB of packs), so a kill lands
    // mid-copy: started, and waited for until it holds more than `n` packs.
    let slow_copy = |primary: &TestServer, n: usize| {
        let cfg = replica_config(
            work.path(),
            &replicate_entries(primary, &rep_id, &["ns-0"], "limit_kib = 256"),
        );
        let child = clean_command()
            .args(["replicate", "--allow-root", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while packs_held() <= n && t0.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        child
    };
    // Every snapshot visible in the copy has every pack it references.
    let only_whole_snapshots = || {
        let visible = snapshot_names(&copy);
        assert!(visible.len() < 4, "{visible:?}");
        for name in &visible {
            let bytes = fs::read(copy.join("snapshots").join(name)).unwrap();
            for p in coffer::format::snapshot::decode(&bytes).unwrap().packs {
                let hex = p.to_hex();
                assert!(copy.join("packs").join(&hex[..2]).join(&hex).is_file());
            }
        }
    };
    // The replica's run killed.
    let mut child = slow_copy(&primary, 0);
    child.kill().unwrap();
    assert!(
        !child.wait().unwrap().success(),
        "the copy finished before the kill"
    );
    only_whole_snapshots();
    // The primary killed under a run (which would end at the transport's
    // idle timeout; stopped here).
    let held = packs_held();
    let mut child = slow_copy(&primary, held);
    assert!(packs_held() > held);
    primary.stop();
    std::thread::sleep(Duration::from_millis(500));
    only_whole_snapshots();
    child.kill().unwrap();
    assert!(
        !child.wait().unwrap().success(),
        "the copy finished before the kill"
    );
    // The rerun (unlimited, primary back) completes; the copy restores
    // every file.
    primary.start_again();
    let cfg = replica_config(
        work.path(),
        &replicate_entries(&primary, &rep_id, &["ns-0"], ""),
    );
    replicate(&cfg, &[]).ok();
    assert_eq!(
        snapshot_names(&copy),
        snapshot_names(&primary.namespace_dir("ns-0"))
    );
    for (i, (id, d)) in datas.iter().enumerate() {
        let got = dump_local(
            &copy,
            &work.path().join("local-cache"),
            id,
            &format!("f{i}"),
        );
        assert!(got == *d, "f{i}");
    }
}

/// A sample's value in a scrape, if present.
pub(crate) fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn lag_is_measured_and_alerted_while_the_primary_is_unreachable() {
    let (_work, mut primary, rep_id, cache) = primary_with_repo(1, 1);
    backup_stdin(&primary, 0, &cache, "a", 5);
    let top = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n\
         [alerts]\ncheck_interval = \"1s\"\n{}",
        replicate_entries(
            &primary,
            &rep_id,
            &["ns-0"],
            "interval = \"1s\"\nlag_alert_after = \"4s\""
        )
    );
    let replica = TestServer::start_full(0, "", &top, &[]);
    let ns = "{namespace=\"ns-0\"}";
    // The server's own schedule copies, and the metrics say so.
    crate::monitor::poll("the first copy in the metrics", || {
        let t = crate::monitor::scrape(&replica);
        (sample(
            &t,
            &format!("coffer_replication_copied_snapshots_total{ns}"),
        ) == Some(1.0))
        .then_some(())
    });
    let t = crate::monitor::scrape(&replica);
    assert!(
        sample(&t, &format!("coffer_replication_lag_seconds{ns}")).unwrap() < 4.0,
        "{t}"
    );
    assert_eq!(
        sample(&t, &format!("coffer_replication_lag_snapshots{ns}")),
        Some(0.0)
    );
    assert!(sample(&t, &format!("coffer_replication_copied_bytes_total{ns}")).unwrap() > 0.0);
    assert!(
        !replica.log().contains("replication_lag"),
        "{}",
        replica.log()
    );
    // The primary goes away: the lag grows past its threshold and alerts.
    primary.stop();
    let log = crate::monitor::poll("the replication_lag alert", || {
        let l = replica.log();
        l.contains("alert=\"replication_lag\"").then_some(l)
    });
    assert!(log.contains("behind its primary"), "{log}");
    crate::monitor::poll("the alert and the lag in the metrics", || {
        let t = crate::monitor::scrape(&replica);
        (t.contains("coffer_alerts_total{kind=\"replication_lag\"} 1")
            && sample(&t, &format!("coffer_replication_lag_seconds{ns}")).unwrap() > 4.0)
            .then_some(())
    });
}

#[test]
fn a_client_fails_over_to_the_replica_with_its_cache_and_backs_up_there() {
    let (work, primary, rep_id, cache) = primary_with_repo(1, 1);
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(1, 600_000)).unwrap();
    fs::write(src.join("b"), random_bytes(2, 600_000)).unwrap();
    run(
        primary.client(0, &cache),
        &["backup", src.to_str().unwrap()],
    )
    .ok();
    let top = replicate_entries(&primary, &rep_id, &["ns-0"], "");
    let mut replica = TestServer::start_full(1, "", &top, &[]);
    let cfg = replica.dir.path().join("server.toml");
    replicate(&cfg, &[]).ok();
    // A backup on the primary that never reaches the replica: the client's
    // cache now knows packs the replica lacks.
    fs::write(src.join("c"), random_bytes(3, 600_000)).unwrap();
    run(
        primary.client(0, &cache),
        &["backup", src.to_str().unwrap()],
    )
    .ok();
    // Failover: the replica stops copying and serves the client, which
    // keeps its certificate (listed there now, read-write) and its cache.
    set_replicate(&cfg, "");
    let (id, fp) = (primary.clients[0].0.clone(), primary.clients[0].1.clone());
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        format!("{text}\n[[client]]\nfingerprint = \"{fp}\"\nnamespace = \"ns-0\"\n"),
    )
    .unwrap();
    replica.restart();
    fs::write(src.join("d"), random_bytes(4, 600_000)).unwrap();
    let failed_over = |args: &[&str]| run(replica.client_as(&id, "ns-0", &cache), args);
    let b = failed_over(&["--json", "backup", src.to_str().unwrap()]).ok();
    let snap = b.json();
    // The backup that never reached the replica is missed, and said so;
    // once accepted, the repository checks clean.
    assert!(
        b.stderr().contains("gone from the repository"),
        "{}",
        b.stderr()
    );
    let e = failed_over(&["check"]).fails();
    assert!(e.stderr().contains("rolled back?"), "{}", e.stderr());
    failed_over(&["snapshots", "--accept-rollback"]).ok();
    failed_over(&["check", "--read-data"]).ok();
    let target = work.path().join("out");
    restores_as(
        replica.client_as(&id, "ns-0", &cache),
        snap["id"].as_str().unwrap(),
        &target,
        &src,
    );
}

#[test]
fn packs_lost_on_the_primary_beyond_parity_are_put_back_from_the_replica() {
    let (work, primary, rep_id, cache) = primary_with_repo(1, 1);
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    let snap = run(
        primary.client(0, &cache),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json();
    let top = replicate_entries(&primary, &rep_id, &["ns-0"], "");
    let replica = TestServer::start_full(1, "read_only = true", &top, &[]);
    replicate(&replica.dir.path().join("server.toml"), &[]).ok();
    // Every pack of the primary's namespace gone, and its parity with
    // them: past any parity budget.
    let packs = walk(&primary.namespace_dir("ns-0").join("packs"));
    assert!(packs.len() >= 2, "{packs:?}");
    for p in &packs {
        fs::remove_file(p).unwrap();
    }
    fs::remove_dir_all(primary.namespace_dir("ns-0").join("parity")).unwrap();
    let scrub = primary.operator(&["scrub"]);
    assert_eq!(scrub.status.code(), Some(5), "{scrub:?}");
    let from = [
        "scrub",
        "--from-replica",
        &format!("127.0.0.1:{}", replica.port),
        "--replica-fingerprint",
        &replica.fingerprint,
        "--identity",
        replica.clients[0].0.to_str().unwrap(),
    ];
    let out = primary.operator(&from);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        err.matches("put back from the replica").count(),
        packs.len(),
        "{err}"
    );
    for p in &packs {
        assert!(p.is_file(), "{} not back", p.display());
    }
    // The primary restores byte for byte and checks clean again.
    let id = snap["id"].as_str().unwrap();
    let fresh = work.path().join("fresh");
    restores_as(
        primary.client(0, &fresh),
        id,
        &work.path().join("out"),
        &src,
    );
    run(primary.client(0, &fresh), &["check", "--read-data"]).ok();
    // A pack the replica holds damaged too is not put back.
    let victim = &packs[0];
    fs::remove_file(victim).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap();
    let theirs = replica
        .namespace_dir("ns-0")
        .join("packs")
        .join(&name[..2])
        .join(name);
    let mut bytes = fs::read(&theirs).unwrap();
    bytes[100] ^= 1;
    fs::write(&theirs, bytes).unwrap();
    let out = primary.operator(&from);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("does not hash to its name either"), "{err}");
    assert!(!victim.exists());
}

#[test]
fn the_primary_alerts_when_its_replica_stops_copying() {
    let work = tempfile::tempdir().unwrap();
    let rep_id = work.path().join("replica.id");
    let fp = identity(&rep_id);
    let top = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n\
         [alerts]\ncheck_interval = \"1s\"\n\
         [[replica]]\nfingerprint = \"{fp}\"\nnamespaces = [\"ns-0\"]\nlag_alert_after = \"4s\"\n"
    );
    let primary = TestServer::start_full(1, "", &top, &[]);
    let cache = work.path().join("cache");
    run(primary.client(0, &cache), &init_args()).ok();
    backup_stdin(&primary, 0, &cache, "a", 9);
    let cfg = replica_config(
        work.path(),
        &replicate_entries(&primary, &rep_id, &["ns-0"], ""),
    );
    let series = format!(
        "coffer_replica_last_pull_timestamp_seconds{{namespace=\"ns-0\",replica=\"{fp}\"}}"
    );
    let before = sample(&crate::monitor::scrape(&primary), &series).unwrap();
    replicate(&cfg, &[]).ok();
    // The pull is seen on the primary.
    let pulled = crate::monitor::poll("the pull in the primary's metrics", || {
        sample(&crate::monitor::scrape(&primary), &series).filter(|t| *t > before)
    });
    assert!(pulled > 1.7e9, "{pulled}");
    // The replica stops copying: past lag_alert_after, the primary alerts.
    let log = crate::monitor::poll("the primary's replication_lag alert", || {
        let l = primary.log();
        l.contains("last copied it").then_some(l)
    });
    let line = log.lines().find(|l| l.contains("last copied it")).unwrap();
    assert!(line.contains("alert=\"replication_lag\""), "{line}");
    assert!(line.contains(&fp[..16]), "{line}");
}

/// `coffer ARGS --allow-root --config CFG` with the clock `offset` ahead.
fn replica_at(cfg: &Path, offset: &str, args: &[&str]) -> Run {
    Run {
        out: crate::retention::faked(offset)
            .args(args)
            .args(["--allow-root", "--config"])
            .arg(cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    }
}

#[test]
fn the_replica_keeps_and_expires_copies_by_its_own_rules() {
    if !crate::retention::faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    // The primary keeps for 60 days, the replica for 10 (both lock 5).
    let (primary, rep_id) = primary_with(work.path(), 1, 1, "lock_days = 5\nretention_days = 60");
    let cache = work.path().join("cache");
    run(primary.client(0, &cache), &init_args()).ok();
    // Two snapshots of one job: keep_last 1 keeps only the newer past expiry.
    let (older, _) = backup_stdin(&primary, 0, &cache, "a", 1);
    // In a later second: within one, the replica cannot tell which of two
    // copies of a job is the newer (its stamps have seconds, and the
    // primary's order within a second does not travel).
    let second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let s0 = second();
    while second() == s0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (newer, data) = backup_stdin(&primary, 0, &cache, "a", 2);
    let cfg = replica_config(
        work.path(),
        &format!(
            "lock_days = 5\nretention_days = 10\n{}",
            replicate_entries(&primary, &rep_id, &["ns-0"], "")
        ),
    );
    let copy = work.path().join("replica-data/namespaces/ns-0");
    replicate(&cfg, &[]).ok();
    assert_eq!(snapshot_names(&copy).len(), 2);
    // Day 9: within the replica's retention, its sweep keeps both.
    replica_at(&cfg, "+9d", &["prune"]).ok();
    assert_eq!(snapshot_names(&copy).len(), 2);
    // Day 11: the replica's own rules expire the older copy, while the
    // primary (60 days) still holds it ...
    replica_at(&cfg, "+11d", &["prune"]).ok();
    assert_eq!(snapshot_names(&copy), vec![newer.clone()]);
    assert!(snapshot_names(&primary.namespace_dir("ns-0")).contains(&older));
    // ... and a later copy does not bring it back.
    let out = replica_at(&cfg, "+11d", &["--json", "replicate"])
        .ok()
        .json();
    assert_eq!(report_of(&out, "ns-0")["snapshots_copied"], 0, "{out}");
    assert_eq!(snapshot_names(&copy), vec![newer.clone()]);
    assert!(dump_local(&copy, &work.path().join("c2"), &newer, "a") == data);
}
