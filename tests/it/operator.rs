//! The server operator's word on a namespace (`--config`, `--namespace`, no
//! key): a forget refused inside the lock window and for a held snapshot,
//! allowed after; the release of a legal hold, which no client can do;
//! each act logged in the namespace's `operator.log`. And stale clients,
//! noticed by a server without an `[alerts]` section.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use coffer::id::SnapshotId;
use coffer::store::Store;
use serde_json::Value;

use crate::retention::{faked, faketime};
use crate::server::TestServer;
use crate::util::*;

/// The operator's `coffer ARGS --allow-root --config SERVER_CONFIG` with
/// the clock shifted by `offset`.
fn operator_at(srv: &TestServer, offset: &str, args: &[&str]) -> Run {
    // `$USER` says nothing of who runs the command: the log must not take it.
    let out = faked(offset)
        .env("USER", "mallory")
        .args(args)
        .args(["--allow-root", "--config"])
        .arg(srv.dir.path().join("server.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run { out }
}

/// The operator's command at the real time.
fn operator(srv: &TestServer, args: &[&str]) -> Run {
    Run {
        out: srv.operator(args),
    }
}

/// A server with one client, and a source directory for it.
struct Setup {
    srv: TestServer,
    tmp: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let srv = TestServer::start(1);
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("src")).unwrap();
        Setup { srv, tmp }
    }

    fn client(&self, args: &[&str]) -> Run {
        Run {
            out: self
                .srv
                .client(0, &self.tmp.path().join("cache"))
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        }
    }

    /// Backs up a new file; the snapshot's whole id.
    fn backup(&self, seed: u64) -> String {
        let src = self.tmp.path().join("src");
        fs::write(src.join(format!("f{seed}")), random_bytes(seed, 150 << 10)).unwrap();
        let v = self
            .client(&["--json", "backup", src.to_str().unwrap()])
            .ok()
            .json();
        v["id"].as_str().unwrap().to_string()
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.srv.namespace_dir("ns-0").join("snapshots")
    }

    fn stamp(&self, id: &str) -> Value {
        let p = self.snapshots_dir().join(format!("{id}.stamp"));
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    }

    fn exists(&self, id: &str) -> bool {
        self.snapshots_dir().join(id).exists()
    }

    /// When the snapshot's lock ends, as messages print it.
    fn until(&self, id: &str) -> String {
        coffer::retention::fmt_time(self.stamp(id)["locked_until"].as_i64().unwrap())
    }

    fn log(&self) -> Vec<Value> {
        operator_log(&self.srv.namespace_dir("ns-0"))
    }
}

/// The operator's acts in a namespace's operator.log (the sweeps' records
/// of the retention rules in force left out).
fn operator_log(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join("operator.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| !v["action"].as_str().unwrap_or("").starts_with("policy-"))
        .collect()
}

#[test]
fn the_operator_forgets_after_the_lock_and_releases_a_hold_each_logged() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let s = Setup::new();
    let a = s.backup(1);
    let b = s.backup(2);
    s.client(&["lock", &b[..12], "--hold"]).ok();
    let forget = |offset: &str, ids: &[&str]| {
        let mut args = vec!["forget", "--namespace", "ns-0"];
        args.extend(ids);
        operator_at(&s.srv, offset, &args)
    };

    // Inside the lock window: refused, naming the snapshot and its unlock date.
    let r = forget("+0d", &[&a[..10]]).fails();
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains(&a[..8]) && r.stderr().contains(&s.until(&a)),
        "{}",
        r.stderr()
    );
    // On legal hold: refused after the window too.
    let r = forget("+31d", &[&b]).fails();
    assert!(
        r.stderr().contains(&b[..8]) && r.stderr().contains("legal hold"),
        "{}",
        r.stderr()
    );
    // One of them refused: none is removed.
    forget("+31d", &[&a, &b]).fails();
    assert!(s.exists(&a) && s.exists(&b));
    assert!(s.log().is_empty());

    // A client cannot release a hold: the command refuses it, and a Lock
    // request without the hold (all the protocol can say) leaves it on.
    let r = s.client(&["lock", &b[..12], "--release-hold"]).fails();
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("operator"), "{}", r.stderr());
    let remote = s.srv.store(0, "ns-0").unwrap();
    let id: SnapshotId = b.parse().unwrap();
    assert!(remote.lock(&id, 0, false).unwrap().hold);
    drop(remote);
    s.client(&["lock", &b[..12], "--days", "1"]).ok();
    assert_eq!(s.stamp(&b)["hold"], true);

    // The operator extends a's lock to 45 days and releases b's hold; b's
    // lock window stays as it was.
    let r = operator(
        &s.srv,
        &[
            "--json",
            "lock",
            "--namespace",
            "ns-0",
            &a[..10],
            "--days",
            "45",
        ],
    )
    .ok();
    let a_until = s.until(&a);
    assert_eq!(r.json()["locked_until"], a_until.as_str());
    let b_lock = s.stamp(&b)["locked_until"].clone();
    let r = operator(
        &s.srv,
        &["lock", "--namespace", "ns-0", &b[..10], "--release-hold"],
    )
    .ok();
    assert!(r.stdout().contains("hold released"), "{}", r.stdout());
    assert_eq!(s.stamp(&b)["hold"], false);
    assert_eq!(s.stamp(&b)["locked_until"], b_lock);

    // 31 days on, a is still locked (refused, nothing removed), b goes.
    let r = forget("+31d", &[&a, &b]).fails();
    assert!(r.stderr().contains(&a_until), "{}", r.stderr());
    assert!(s.exists(&a) && s.exists(&b));
    let r = forget("+31d", &[&b[..10]]).ok();
    assert!(r.stdout().contains(&b), "{}", r.stdout());
    assert!(!s.exists(&b) && s.exists(&a));
    forget("+46d", &[&a]).ok();
    assert!(!s.exists(&a));

    // Every act, in order, with who, when, what and the stamp.
    let log = s.log();
    let acts: Vec<(&str, &str)> = log
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap(),
                l["snapshot"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        acts,
        [
            ("lock", a.as_str()),
            ("release-hold", b.as_str()),
            ("forget", b.as_str()),
            ("forget", a.as_str())
        ]
    );
    for l in &log {
        let by = l["by"].as_str().unwrap();
        let uid = nix::unistd::getuid().as_raw();
        assert!(by.contains(&format!("(uid {uid})")), "{l}");
        assert!(!by.contains("mallory"), "{l}");
        assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
        assert!(l["stamp"]["received"].is_i64(), "{l}");
    }
    assert_eq!(log[1]["stamp"]["hold"], true);
    assert_eq!(log[1]["after"]["hold"], false);
    assert_eq!(
        log[0]["after"]["locked_until"]
            .as_i64()
            .map(coffer::retention::fmt_time),
        Some(a_until)
    );
    assert_eq!(log[2]["stamp"]["hold"], false);
    // 46 days on (the log's time is the operator's clock)
    assert!(log[3]["time"].as_str().unwrap() > log[1]["time"].as_str().unwrap());

    // Their packs go with the next prune.
    let r = operator_at(&s.srv, "+47d", &["--json", "prune"]).ok();
    let v = r.json();
    assert!(
        v[0]["report"]["packs_removed"].as_u64().unwrap() >= 2,
        "{v}"
    );
}

#[test]
fn the_operator_names_namespaces_and_snapshots_clearly() {
    let s = Setup::new();
    let a = s.backup(1);
    let forget = |args: &[&str]| {
        let mut v = vec!["forget"];
        v.extend(args);
        operator(&s.srv, &v)
    };
    // An unknown namespace.
    let r = forget(&["--namespace", "nope", &a]).fails();
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("\"nope\" is not in"), "{}", r.stderr());
    // An unknown snapshot.
    let other = if a.starts_with('f') { "0000" } else { "ffff" };
    let r = forget(&["--namespace", "ns-0", other]).fails();
    assert_eq!(r.code(), 1);
    assert!(
        r.stderr().contains(&format!("snapshot {other} not found")),
        "{}",
        r.stderr()
    );
    // An ambiguous prefix: two snapshot files whose names share it.
    let real = fs::read(s.snapshots_dir().join(&a)).unwrap();
    let pre = if a.starts_with("abcd") {
        "dcba"
    } else {
        "abcd"
    };
    for tail in ["0", "1"] {
        let name = format!("{pre}{}{tail}", "0".repeat(59));
        fs::write(s.snapshots_dir().join(name), &real).unwrap();
    }
    let r = forget(&["--namespace", "ns-0", pre]).fails();
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("ambiguous"), "{}", r.stderr());
    let r = operator(
        &s.srv,
        &["lock", "--namespace", "ns-0", pre, "--release-hold"],
    )
    .fails();
    assert!(r.stderr().contains("ambiguous"), "{}", r.stderr());
    // What needs a key (`latest`) or is not an id: a usage error.
    for spec in ["latest", "zz"] {
        let r = forget(&["--namespace", "ns-0", spec]).fails();
        assert_eq!(r.code(), 2, "{}", r.stderr());
        assert!(r.stderr().contains("hex"), "{}", r.stderr());
    }
    // --config without --namespace, and the other way round: usage.
    assert_eq!(forget(&[&a]).fails().code(), 2);
    let r = s.client(&["forget", "--namespace", "ns-0", &a]).fails();
    assert_eq!(r.code(), 2, "{}", r.stderr());
    // Releasing a hold that is not there changes and logs nothing.
    let r = operator(
        &s.srv,
        &["lock", "--namespace", "ns-0", &a[..10], "--release-hold"],
    )
    .ok();
    assert!(r.stdout().contains("not on legal hold"), "{}", r.stdout());
    assert!(s.log().is_empty());
    assert!(s.exists(&a));
}

#[test]
fn the_operator_leaves_a_rolled_back_namespace_alone() {
    let s = Setup::new();
    let a = s.backup(1);
    s.backup(2);
    s.client(&["lock", &a[..12], "--hold"]).ok();
    // The namespace's directory put back from an older copy of itself.
    let ns = s.srv.namespace_dir("ns-0");
    fs::write(ns.join("commits"), "1").unwrap();
    for args in [
        vec!["forget", "--namespace", "ns-0", &a],
        vec!["lock", "--namespace", "ns-0", &a, "--release-hold"],
    ] {
        let r = operator(&s.srv, &args).fails();
        assert_eq!(r.code(), 1);
        assert!(
            r.stderr().contains("went back from 2 to 1")
                && r.stderr().contains("--accept-rollback ns-0"),
            "{}",
            r.stderr()
        );
    }
    assert!(s.exists(&a));
    assert_eq!(s.stamp(&a)["hold"], true);
    assert!(s.log().is_empty());
}

#[test]
fn a_local_repositorys_passphrase_holder_releases_a_hold_logged() {
    let t = TestRepo::new();
    let d = t.path("d");
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join("f"), random_bytes(1, 100_000)).unwrap();
    let id = t.backup(&[d.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    t.run(&["lock", &id[..8], "--hold"]).ok();
    assert_eq!(t.snapshots()[0]["hold"], true);
    let until = t.snapshots()[0]["locked_until"].clone();
    let r = t.run(&["lock", &id[..8], "--release-hold"]).ok();
    assert!(r.stdout().contains("hold released"), "{}", r.stdout());
    let s = &t.snapshots()[0];
    assert_eq!(s["hold"], false);
    assert_eq!(s["locked_until"], until, "the lock window stays");
    let log = operator_log(&t.repo);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["action"], "release-hold");
    assert_eq!(log[0]["snapshot"], id.as_str());
    // --hold and --release-hold at once: a usage error.
    assert_eq!(
        t.run(&["lock", &id[..8], "--hold", "--release-hold"])
            .fails()
            .code(),
        2
    );
}
