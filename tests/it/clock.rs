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

use crate::retention::{faked, faketime};
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
