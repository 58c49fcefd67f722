//! Retention, the lock window and garbage collection, by the store's clock.
//! The real binary runs under Debian's `faketime` to move the clock.

use std::fs;
use std::process::{Command, Stdio};

use crate::server::TestServer;
use crate::util::*;

/// libfaketime, preloaded straight into the binary (the `faketime` wrapper
/// forks, so killing it would leave the real process running).
pub(crate) fn libfaketime() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

/// Whether libfaketime is installed (CI installs it).
pub(crate) fn faketime() -> bool {
    libfaketime().is_some()
}

/// The binary with its clock shifted by `offset` (e.g. "+31d"), as if that
/// much time had passed: the monotonic and boot clocks are shifted too
/// (libfaketime then reports them from the shifted wall clock), so the
/// store's clock guard sees time that passed, not a jump. Tests of a jump
/// shift the wall clock alone (`clock::jumped`).
pub fn faked(offset: &str) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("COFFER_") {
            c.env_remove(k);
        }
    }
    // unwrap: callers check faketime() first
    c.env("LD_PRELOAD", libfaketime().unwrap())
        .env("FAKETIME", offset);
    c
}

/// Runs the binary for `t` with the clock shifted by `offset`.
pub(crate) fn at(t: &TestRepo, offset: &str, args: &[&str]) -> Run {
    let mut c = faked(offset);
    c.env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", &t.cache)
        .arg("--repo")
        .arg(&t.repo)
        .args(args);
    Run {
        out: c.stdin(Stdio::null()).output().unwrap(),
    }
}

fn data(t: &TestRepo, name: &str, seed: u64) -> std::path::PathBuf {
    let d = t.path(name);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("f"), random_bytes(seed, 600_000)).unwrap();
    d
}

#[test]
fn forget_is_refused_inside_the_lock_window() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::new();
    let d = data(&t, "a", 1);
    let snap = t.backup(&[d.to_str().unwrap()]);
    let id = snap["id"].as_str().unwrap();
    let s = &t.snapshots()[0];
    for key in ["received", "locked_until", "expires"] {
        assert!(s[key].is_string(), "{key} missing: {s}");
    }
    for day in ["+0d", "+1d", "+29d"] {
        let r = at(&t, day, &["forget", &id[..8]]).fails();
        let until = s["locked_until"].as_str().unwrap();
        assert!(
            r.stderr().contains(&id[..8]) && r.stderr().contains(until),
            "{day}: {}",
            r.stderr()
        );
    }
    assert_eq!(t.snapshots().len(), 1);
    at(&t, "+31d", &["forget", &id[..8]]).ok();
    assert_eq!(t.snapshots().len(), 0);
}

#[test]
fn prune_expires_snapshots_and_collects_exactly_the_unreferenced_packs() {
    if !faketime() {
        return;
    }
    let t = TestRepo::new();
    let old = data(&t, "old", 1);
    t.backup(&[old.to_str().unwrap()]);
    let packs_old = t.packs();
    // the same job (host and path) backs up new content on day 20
    let new = data(&t, "old", 2);
    at(&t, "+20d", &["backup", new.to_str().unwrap()]).ok();
    let packs_new: Vec<_> = t
        .packs()
        .into_iter()
        .filter(|p| !packs_old.contains(p))
        .collect();
    // day 31: the first snapshot expired, the second not yet
    let r = at(&t, "+31d", &["--json", "prune"]).ok().json();
    assert_eq!(
        r[0]["report"]["snapshots_removed"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{r}"
    );
    let snaps = t.snapshots();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["paths"][0], new.to_str().unwrap());
    // exactly the packs only the expired snapshot referenced are gone
    assert_eq!(t.packs(), packs_new);
    at(&t, "+31d", &["check", "--read-data"]).ok();
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    assert!(fs::read(restored(&out, &new).join("f")).unwrap() == fs::read(new.join("f")).unwrap());
}

#[test]
fn prune_sweeps_files_killed_writers_left_in_tmp_after_the_grace_period() {
    if !faketime() {
        return;
    }
    let t = TestRepo::new();
    let d = data(&t, "a", 3);
    t.backup(&[d.to_str().unwrap()]);
    // What a backup killed in the middle of a pack leaves behind.
    let left = t.repo.join("tmp").join("0123456789abcdef01234567.tmp");
    fs::write(&left, random_bytes(9, 100_000)).unwrap();
    for day in ["+0d", "+1d"] {
        let r = at(&t, day, &["--json", "prune"]).ok().json();
        assert_eq!(r[0]["report"]["tmp_removed"], 0, "{day}: {r}");
        assert!(left.exists(), "{day}: removed inside the grace period");
    }
    let r = at(&t, "+3d", &["--json", "prune"]).ok().json();
    assert_eq!(r[0]["report"]["tmp_removed"], 1, "{r}");
    assert!(!left.exists());
    assert_eq!(fs::read_dir(t.repo.join("tmp")).unwrap().count(), 0);
    at(&t, "+3d", &["check", "--read-data"]).ok();
}

#[test]
fn a_backup_running_during_collection_stays_restorable() {
    if !faketime() {
        return;
    }
    let t = TestRepo::new();
    // an old snapshot whose packs become collectable on day 31
    let old = data(&t, "old", 1);
    t.backup(&[old.to_str().unwrap()]);
    // the job moves on the next day, so the first snapshot is not its newest
    data(&t, "old", 7);
    at(&t, "+1d", &["backup", old.to_str().unwrap()]).ok();
    let d = t.path("big");
    fs::create_dir_all(&d).unwrap();
    for i in 0..8 {
        fs::write(d.join(format!("f{i}")), random_bytes(100 + i, 4 << 20)).unwrap();
    }
    // day 31: a backup runs while collections run again and again
    let mut c = faked("+31d");
    c.arg("--repo")
        .arg(&t.repo)
        .args(["--json", "backup", d.to_str().unwrap()])
        .env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", &t.cache)
        .stdout(Stdio::piped());
    let child = c.spawn().unwrap();
    let mut collected = 0;
    for _ in 0..3 {
        let r = at(&t, "+31d", &["--json", "prune"]).ok().json();
        collected += r[0]["report"]["packs_removed"].as_u64().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Run { out }.ok();
    assert!(collected > 0, "the old snapshot's packs were not collected");
    at(&t, "+31d", &["prune"]).ok();
    at(&t, "+31d", &["check", "--read-data"]).ok();
    let target = t.path("out");
    at(
        &t,
        "+31d",
        &["restore", "latest", "--target", target.to_str().unwrap()],
    )
    .ok();
    for i in 0..8 {
        assert!(
            fs::read(restored(&target, &d).join(format!("f{i}"))).unwrap()
                == random_bytes(100 + i, 4 << 20)
        );
    }
}

#[test]
fn young_unreferenced_packs_survive_and_get_reused() {
    if !faketime() {
        return;
    }
    let t = TestRepo::new();
    let d = t.path("big");
    fs::create_dir_all(&d).unwrap();
    for i in 0..6 {
        fs::write(d.join(format!("f{i}")), random_bytes(i, 4 << 20)).unwrap();
    }
    // packs uploaded on day 31 that no snapshot references yet (a backup
    // killed before its commit, or one still running)
    let mut c = faked("+31d");
    c.arg("--repo")
        .arg(&t.repo)
        .args(["backup", d.to_str().unwrap()])
        .env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", &t.cache)
        .stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let _ = child.kill();
    let _ = child.wait();
    for s in walk(&t.repo.join("snapshots")) {
        fs::remove_file(s).unwrap();
    }
    // (the backup may have finished before the kill: the client must not
    // remember a snapshot the test removed, or it reports a rollback)
    for f in walk(&t.cache).iter().filter(|f| f.ends_with("seen.json")) {
        fs::remove_file(f).unwrap();
    }
    let before = t.packs();
    // a collection on the same day keeps them (inside the grace period)
    at(&t, "+31d", &["prune"]).ok();
    assert_eq!(t.packs(), before);
    // three days later they are collected: nothing references them
    at(&t, "+34d", &["prune"]).ok();
    assert!(
        t.packs().is_empty(),
        "unreferenced packs outlived the grace period"
    );
    // and a backup then uploads again what its cache thought was stored
    at(&t, "+34d", &["backup", d.to_str().unwrap()]).ok();
    at(&t, "+34d", &["check", "--read-data"]).ok();
}

#[test]
fn a_clock_gone_backwards_stops_all_deletion() {
    if !faketime() {
        return;
    }
    let t = TestRepo::new();
    let d = data(&t, "a", 1);
    t.backup(&[d.to_str().unwrap()]);
    at(&t, "+10d", &["prune"]).ok();
    // now the clock is back at day 0: no deletion, and it says so
    let r = t.run(&["prune"]).fails();
    assert!(
        r.stderr()
            .contains("behind a time this store has already seen"),
        "{}",
        r.stderr()
    );
    // even at day 35 by a clock that once showed day 60
    at(&t, "+60d", &["backup", d.to_str().unwrap()]).ok();
    let before = t.snapshots().len();
    let r = at(&t, "+35d", &["forget", "latest"]).fails();
    assert!(r.stderr().contains("behind"), "{}", r.stderr());
    at(&t, "+35d", &["prune"]).fails();
    assert_eq!(t.snapshots().len(), before);
}

#[test]
fn the_servers_clock_decides_and_quotas_hold() {
    if !faketime() {
        return;
    }
    let srv = TestServer::start_with(1, "[[client]] quota_bytes = 3000000");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let mut c = srv.client(0, &cache);
    c.args([
        "init",
        "--kdf-memory-kib",
        "19456",
        "--kdf-iterations",
        "2",
        "--pack-size",
        "1048576",
    ]);
    assert!(c.output().unwrap().status.success());
    // a client whose clock is 1000 days behind: the stamps follow the server's clock
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(3, 1_000_000)).unwrap();
    let mut c = faked("-1000d");
    c.args(["backup", src.to_str().unwrap()]);
    for (k, v) in srv.client(0, &cache).get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    let out = c.output().unwrap();
    Run { out }.ok();
    let snaps: serde_json::Value = serde_json::from_slice(
        &srv.client(0, &cache)
            .args(["--json", "snapshots"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let received = snaps[0]["received"].as_str().unwrap();
    let client_time = snaps[0]["time"].as_str().unwrap();
    assert!(
        received.starts_with("2026") || received > "2026",
        "received {received}"
    );
    assert!(client_time < "2025", "client time {client_time}");
    // forget through the server: refused inside the lock window
    let r = srv
        .client(0, &cache)
        .args(["forget", "latest"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("locked until"));
    // over quota: a clear error, nothing stored is lost
    fs::write(src.join("g"), random_bytes(4, 3_000_000)).unwrap();
    let r = srv
        .client(0, &cache)
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("quota"),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = srv
        .client(0, &cache)
        .args(["check", "--read-data"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    // the operator's prune, under a clock 31 days ahead: the snapshot is
    // past its expiry, and kept as its job's newest
    let out = faked("+31d")
        .args(["--json", "prune", "--allow-root", "--config"])
        .arg(srv.dir.path().join("server.toml"))
        .output()
        .unwrap();
    let out = Run { out }.ok().out;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &v[0]["report"];
    assert_eq!(
        report["snapshots_removed"].as_array().unwrap().len(),
        0,
        "{v}"
    );
    assert_eq!(
        report["snapshots"][0]["kept_by"],
        serde_json::json!(["keep_last"]),
        "{v}"
    );
    assert!(
        report["snapshots"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("past its expiry"),
        "{v}"
    );
}
