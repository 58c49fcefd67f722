//! A clock that jumps (issue 19, item 6): the real binary whose wall clock
//! libfaketime steps while its monotonic and boot clocks run on, as after
//! one bad NTP answer. A running `coffer serve` is stepped through
//! `FAKETIME_TIMESTAMP_FILE` (read on every call with `FAKETIME_NO_CACHE`);
//! a local repository's separate `coffer prune` runs compare their boot
//! clock through the store (same boot id).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::monitor::{poll, wait_metric};
use crate::retention::{faked, faketime, libfaketime};
use crate::server::TestServer;
use crate::util::*;

/// The binary with its wall clock alone shifted by `offset`: a jump.
fn jumped(offset: &str) -> Command {
    let mut c = faked(offset);
    c.env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    c
}

/// Runs `c` (stdin closed).
fn run(mut c: Command) -> Run {
    Run {
        out: c.stdin(Stdio::null()).output().unwrap(),
    }
}

/// `coffer ARGS` on the local repository of `t` with the wall clock jumped.
fn local(t: &TestRepo, offset: &str, args: &[&str]) -> Run {
    let mut c = jumped(offset);
    c.env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", &t.cache)
        .arg("--repo")
        .arg(&t.repo)
        .args(args);
    run(c)
}

/// A source directory holding one file of 300 kB from `seed`.
fn source(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let d = dir.join(name);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("f"), random_bytes(seed, 300_000)).unwrap();
    d
}

/// Snapshot ids, oldest first.
fn ids(snaps: &[Value]) -> Vec<String> {
    snaps
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// A snapshot's `received` in seconds since the epoch.
fn received(s: &Value) -> i64 {
    let t = s["received"].as_str().unwrap();
    humantime::parse_rfc3339(t)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_local_prune_after_a_jump_deletes_nothing_until_acknowledged() {
    if !faketime() {
        return;
    }
    let t = TestRepo::new();
    let a = source(t.dir.path(), "a", 1);
    t.backup(&[a.to_str().unwrap()]);
    // the first sweep records the boot clock beside the wall clock
    t.run(&["prune"]).ok();
    // 20 days pass (both clocks): a second backup
    fs::write(a.join("f"), random_bytes(2, 300_000)).unwrap();
    crate::retention::at(&t, "+20d", &["backup", a.to_str().unwrap()]).ok();
    let before = ids(&t.snapshots());
    let packs = t.packs();
    assert_eq!(before.len(), 2);
    // then the wall clock alone jumps to day 45, in seconds of boot clock
    let r = local(&t, "+45d", &["prune"]).fails();
    assert!(r.stderr().contains("jumped forward"), "{}", r.stderr());
    assert!(
        r.stderr().contains("coffer clock --accept-now"),
        "{}",
        r.stderr()
    );
    assert_eq!(ids(&t.snapshots()), before);
    assert_eq!(t.packs(), packs);
    // frozen for every later prune, at any clock, in any process
    local(&t, "+45d", &["prune"]).fails();
    t.run(&["prune"]).fails();
    assert_eq!(ids(&t.snapshots()), before);
    // and a client's forget is refused too
    let r = local(&t, "+45d", &["forget", &before[0]]).fails();
    assert!(r.stderr().contains("frozen"), "{}", r.stderr());
    // `coffer clock` says so, exit 3, and in JSON
    let r = local(&t, "+45d", &["clock"]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(r.stdout().contains("FROZEN"), "{}", r.stdout());
    let r = local(&t, "+45d", &["--json", "clock"]);
    let v = r.json();
    assert_eq!(v[0]["state"]["frozen"]["kind"], "forward", "{v}");
    // the operator acknowledges the clock: logged, frozen no more
    local(&t, "+45d", &["clock", "--accept-now"]).ok();
    let log = fs::read_to_string(t.repo.join("operator.log")).unwrap();
    assert!(log.contains("\"accept-clock\""), "{log}");
    assert!(log.contains("\"forward\""), "{log}");
    local(&t, "+45d", &["clock"]).ok();
    // the next prune deletes what is expired by that clock, and only that
    local(&t, "+45d", &["prune"]).ok();
    let left = t.snapshots();
    assert_eq!(ids(&left), before[1..].to_vec());
    let target = t.path("restored");
    t.run(&["restore", &before[1], "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::read(restored(&target, &a).join("f")).unwrap(),
        random_bytes(2, 300_000)
    );
}

/// A server whose wall clock is read from a file the test rewrites; it
/// sweeps every two seconds, alerts to its log and serves metrics.
fn stepped_server(offset: &str) -> (TestServer, PathBuf, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let clock = work.path().join("faketime");
    fs::write(&clock, offset).unwrap();
    let top = "prune_interval = \"2s\"\n\
               [metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n\
               [alerts]\ncheck_interval = \"1s\"\n";
    let srv = TestServer::start_full(
        1,
        "",
        top,
        &[
            ("LD_PRELOAD", libfaketime().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", clock.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    (srv, clock, work)
}

/// Sweeps the server has logged so far (done or refused).
fn sweeps(srv: &TestServer) -> usize {
    let log = srv.log();
    log.matches("prune done").count() + log.matches("prune deleted nothing").count()
}

/// Waits for `n` more sweeps than `from`.
fn wait_sweeps(srv: &TestServer, from: usize, n: usize) {
    let start = std::time::Instant::now();
    while sweeps(srv) < from + n {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(200),
            "timed out waiting for {n} sweeps"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

struct Client<'a> {
    srv: &'a TestServer,
    cache: PathBuf,
    src: PathBuf,
}

impl<'a> Client<'a> {
    fn init(srv: &'a TestServer, work: &Path) -> Client<'a> {
        let c = Client {
            srv,
            cache: work.join("cache"),
            src: source(work, "src", 0),
        };
        c.cmd(&crate::server::init_args()).ok();
        c
    }

    fn cmd(&self, args: &[&str]) -> Run {
        let mut c = self.srv.client(0, &self.cache);
        c.args(args);
        run(c)
    }

    /// Backs up the source holding the bytes of `seed`.
    fn backup(&self, seed: u64) {
        fs::write(self.src.join("f"), random_bytes(seed, 300_000)).unwrap();
        self.cmd(&["backup", self.src.to_str().unwrap()]).ok();
    }

    fn snapshots(&self) -> Vec<Value> {
        self.cmd(&["--json", "snapshots"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Restores snapshot `id` and compares it with the bytes of `seed`.
    fn restores(&self, id: &str, seed: u64) {
        let target = self.cache.with_file_name(format!("restored-{id}"));
        self.cmd(&["restore", id, "--target", target.to_str().unwrap()])
            .ok();
        assert!(
            fs::read(restored(&target, &self.src).join("f")).unwrap()
                == random_bytes(seed, 300_000),
            "snapshot {id} restores other bytes"
        );
    }
}

/// The operator's `coffer clock ARGS --config` with the wall clock at `offset`.
fn operator_clock(srv: &TestServer, offset: &str, args: &[&str]) -> Run {
    let mut c = jumped(offset);
    c.arg("clock")
        .args(args)
        .args(["--allow-root", "--config"])
        .arg(srv.dir.path().join("server.toml"));
    run(c)
}

/// The operator acknowledges the clock at `offset`; then waits for a
/// sweep that runs to the end.
fn accept(srv: &TestServer, offset: &str) {
    let done = || srv.log().matches("prune done").count();
    let before = done();
    operator_clock(srv, offset, &["--accept-now"]).ok();
    poll("a sweep that runs", || (done() > before).then_some(()));
}

#[test]
fn a_running_server_whose_clock_jumps_forward_deletes_nothing_until_acknowledged() {
    if !faketime() {
        return;
    }
    let (srv, clock, work) = stepped_server("+0d");
    let c = Client::init(&srv, work.path());
    for seed in 1..=3 {
        c.backup(seed);
    }
    let snaps = ids(&c.snapshots());
    assert_eq!(snaps.len(), 3);
    let ns = srv.namespace_dir("ns-0");
    let packs = walk(&ns.join("packs"));
    wait_sweeps(&srv, sweeps(&srv), 1);
    // one bad NTP answer: 45 days ahead, between two sweeps
    fs::write(&clock, "+45d").unwrap();
    wait_sweeps(&srv, sweeps(&srv), 2);
    assert_eq!(ids(&c.snapshots()), snaps);
    assert_eq!(walk(&ns.join("packs")), packs);
    let log = srv.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("jumped forward")),
        "{log}"
    );
    for (id, seed) in snaps.iter().zip(1..) {
        c.restores(id, seed);
    }
    // alerted: the log, and the metric
    poll("the clock alert", || {
        srv.log()
            .lines()
            .any(|l| {
                l.contains("alert=clock") || l.contains("alert: namespace ns-0: deletion is frozen")
            })
            .then_some(())
    });
    wait_metric(&srv, "coffer_namespace_clock_frozen", "ns-0", |v| v == 1.0);
    // the operator sees it, and (judging this clock right) acknowledges it
    let r = operator_clock(&srv, "+45d", &[]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(r.stdout().contains("ns-0: FROZEN"), "{}", r.stdout());
    accept(&srv, "+45d");
    let oplog = fs::read_to_string(ns.join("operator.log")).unwrap();
    assert!(oplog.contains("accept-clock"), "{oplog}");
    // the next sweep ran and deleted what that clock says expired
    wait_metric(&srv, "coffer_namespace_clock_frozen", "ns-0", |v| v == 0.0);
    let left = ids(&c.snapshots());
    assert!(left.len() < 3, "{left:?}");
    for id in &left {
        let seed = snaps.iter().position(|s| s == id).unwrap() as u64 + 1;
        c.restores(id, seed);
    }
}

#[test]
fn a_clock_forward_then_back_freezes_until_acknowledged_then_stamps_real_time() {
    if !faketime() {
        return;
    }
    // the server's clock starts 40 days behind the real time
    let (srv, clock, work) = stepped_server("-40d");
    let c = Client::init(&srv, work.path());
    c.backup(1);
    let a = c.snapshots()[0].clone();
    wait_sweeps(&srv, sweeps(&srv), 1);
    // forward 45 days (5 days ahead of the real time): a commit, sweeps
    fs::write(&clock, "+5d").unwrap();
    c.backup(2);
    wait_sweeps(&srv, sweeps(&srv), 2);
    let snaps = c.snapshots();
    let f = snaps.last().unwrap().clone();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["id"], a["id"]);
    assert!(received(&f) > unix_now() + 4 * 86_400, "{f}");
    // and back to the real time: still frozen, nothing deleted
    fs::write(&clock, "+0d").unwrap();
    wait_sweeps(&srv, sweeps(&srv), 2);
    assert_eq!(ids(&c.snapshots()), ids(&snaps));
    let r = operator_clock(&srv, "+0d", &[]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    // acknowledged at the real time
    accept(&srv, "+0d");
    // it deleted what is expired by the real clock (A, received 40 days
    // ago), and kept the snapshot stamped in the future
    let left = c.snapshots();
    assert_eq!(ids(&left), ids(&snaps[1..]));
    // new commits are stamped with the real time again
    c.backup(3);
    let g = c.snapshots().last().unwrap().clone();
    let now = unix_now();
    assert!(
        (now - 600..=now + 600).contains(&received(&g)),
        "received {} at {}",
        g["received"],
        now
    );
    let fid = f["id"].as_str().unwrap();
    let gid = g["id"].as_str().unwrap();
    c.restores(fid, 2);
    c.restores(gid, 3);
}
