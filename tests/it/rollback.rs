//! Rollback: a repository or a server namespace put back from an older copy
//! of itself. The client remembers the snapshots it saw (in its cache
//! directory) and the server the highest commit counter of each namespace
//! (outside the namespace), so neither takes the older copy for the truth.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use crate::retention::{at, faketime};
use crate::server::{init_args, run, TestServer};
use crate::util::*;

/// `cp -a from to`.
fn copy(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Replaces directory `dir` by `old` (a copy made earlier).
fn put_back(old: &Path, dir: &Path) {
    fs::remove_dir_all(dir).unwrap();
    copy(old, dir);
}

/// Writes new content into `d/f` and backs `d` up; returns the snapshot id.
fn backup_new(t: &TestRepo, d: &Path, seed: u64) -> String {
    fs::create_dir_all(d).unwrap();
    fs::write(d.join("f"), random_bytes(seed, 300_000)).unwrap();
    t.backup(&[d.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Whether a warning line names each of `ids` (short form) and a rollback.
fn warns_of(stderr: &str, ids: &[&str]) -> bool {
    stderr.lines().any(|l| {
        l.contains("rolled back")
            && l.contains("--accept-rollback")
            && ids.iter().all(|id| l.contains(&id[..8]))
    })
}

#[test]
fn a_repository_put_back_from_an_older_copy_is_noticed_until_accepted() {
    let t = TestRepo::new();
    let d = t.path("src");
    let first = backup_new(&t, &d, 1);
    let old = t.path("repo.old");
    copy(&t.repo, &old);
    let second = backup_new(&t, &d, 2);
    let third = backup_new(&t, &d, 3);
    assert_eq!(t.snapshots().len(), 3);
    put_back(&old, &t.repo);

    let r = t.run(&["snapshots"]).ok();
    assert!(warns_of(&r.stderr(), &[&second, &third]), "{}", r.stderr());
    assert!(!r.stderr().contains(&first[..8]), "{}", r.stderr());
    let r = t.run(&["check"]);
    assert_eq!(r.code(), 5, "{}\n{}", r.stdout(), r.stderr());
    assert!(warns_of(&r.stderr(), &[&second, &third]), "{}", r.stderr());
    // A backup is saved and says so loudly, but succeeds: a nightly job
    // must not fail every night until someone accepts the repository.
    fs::write(d.join("g"), random_bytes(4, 1000)).unwrap();
    let r = t.run(&["--json", "backup", d.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(warns_of(&r.stderr(), &[&second, &third]), "{}", r.stderr());
    assert_eq!(r.json()["snapshots_gone"], 2, "{}", r.stdout());
    // `snapshots --strict` still fails on them.
    assert_eq!(t.run(&["snapshots", "--strict"]).code(), 3);
    let fourth = r.json()["id"].as_str().unwrap().to_string();
    // Still, until the operator accepts the repository as it is.
    let r = t.run(&["snapshots"]).ok();
    assert!(warns_of(&r.stderr(), &[&second, &third]), "{}", r.stderr());

    let r = t.run(&["snapshots", "--accept-rollback"]).ok();
    assert!(r.stderr().contains(&second[..8]), "{}", r.stderr());
    for args in [&["snapshots"][..], &["check"]] {
        let r = t.run(args).ok();
        assert!(
            !r.stderr().contains("rolled back"),
            "{args:?}: {}",
            r.stderr()
        );
    }
    let r = t.run(&["-q", "snapshots"]).ok();
    assert_eq!(r.stdout(), format!("{first}\n{fourth}\n"));
    fs::write(d.join("h"), random_bytes(5, 1000)).unwrap();
    let r = t.run(&["backup", d.to_str().unwrap()]).ok();
    assert!(!r.stderr().contains("rolled back"), "{}", r.stderr());
}

#[test]
fn a_lost_cache_database_keeps_what_the_client_saw() {
    let t = TestRepo::new();
    let d = t.path("src");
    backup_new(&t, &d, 1);
    let old = t.path("repo.old");
    copy(&t.repo, &old);
    let second = backup_new(&t, &d, 2);
    put_back(&old, &t.repo);
    // The SQLite cache is rebuilt from the repository; the memory of what
    // was seen is a file of its own beside it.
    for f in walk(&t.cache) {
        if f.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("cache.db")
        {
            fs::remove_file(f).unwrap();
        }
    }
    let r = t.run(&["check"]);
    assert_eq!(r.code(), 5, "{}", r.stderr());
    assert!(warns_of(&r.stderr(), &[&second]), "{}", r.stderr());
}

#[test]
fn forgets_by_this_client_and_expiry_explain_a_snapshot_gone() {
    if !faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::with_init(&["--lock-days", "1", "--retention-days", "10"]);
    let d = t.path("src");
    let a = backup_new(&t, &d, 1);
    let b = backup_new(&t, &d, 2);
    // Another client of the same repository: a cache of its own.
    let other = t.path("other-cache");
    let as_other = |offset: &str, args: &[&str]| {
        let mut c = crate::retention::faked(offset);
        c.env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_CACHE_DIR", &other)
            .arg("--repo")
            .arg(&t.repo)
            .args(args);
        Run {
            out: c.stdin(Stdio::null()).output().unwrap(),
        }
    };
    as_other("+0d", &["snapshots"]).ok();
    t.run(&["snapshots"]).ok();
    // Day 2: past the lock, this client forgets b and backs up again.
    at(&t, "+2d", &["forget", &b[..8]]).ok();
    fs::write(d.join("f"), random_bytes(3, 300_000)).unwrap();
    let c = at(&t, "+2d", &["--json", "backup", d.to_str().unwrap()])
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = at(&t, "+2d", &["check"]).ok();
    assert!(!r.stderr().contains("rolled back"), "{}", r.stderr());
    // The other client saw b, did not forget it, and b had days to live.
    let r = as_other("+2d", &["snapshots"]).ok();
    assert!(warns_of(&r.stderr(), &[&b]), "{}", r.stderr());
    assert!(!r.stderr().contains(&a[..8]), "{}", r.stderr());
    // Day 11: a expired (the newer c keeps the job alive) and is swept.
    at(&t, "+11d", &["prune"]).ok();
    let left = t.snapshots();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], c.as_str());
    for args in [&["snapshots"][..], &["check"]] {
        let r = at(&t, "+11d", args).ok();
        assert!(
            !r.stderr().contains("rolled back"),
            "{args:?}: {}",
            r.stderr()
        );
    }
    // By now the expiry of b explains it to the other client as well.
    let r = as_other("+11d", &["snapshots"]).ok();
    assert!(!r.stderr().contains("rolled back"), "{}", r.stderr());
}

/// Runs `coffer serve` on `srv`'s config with `extra` arguments: `Ok` with
/// the child and its port once it listens, `Err` with its standard error
/// when it exits instead.
fn serve(srv: &TestServer, extra: &[&str]) -> Result<(Child, u16), String> {
    let err = srv.dir.path().join("serve.err");
    let mut child = clean_command()
        .args(["serve", "--allow-root", "--config"])
        .arg(srv.dir.path().join("server.toml"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if let Some(port) = line.trim().strip_prefix("coffer serve: listening on ") {
        let port = port.rsplit(':').next().unwrap().parse().unwrap();
        return Ok((child, port));
    }
    let st = child.wait().unwrap();
    assert!(!st.success(), "{line}");
    Err(fs::read_to_string(&err).unwrap())
}

#[test]
fn a_namespace_put_back_from_an_older_copy_is_refused_alone_until_accepted() {
    let mut srv = TestServer::start(2);
    let work = tempfile::tempdir().unwrap();
    let cache = |i: usize| work.path().join(format!("cache{i}"));
    let src = work.path().join("src");
    let backup = |srv: &TestServer, i: usize, seed| {
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), random_bytes(seed, 200_000)).unwrap();
        let r = run(
            srv.client(i, &cache(i)),
            &["--json", "backup", src.to_str().unwrap()],
        );
        r.ok().json()["id"].as_str().unwrap().to_string()
    };
    for i in 0..2 {
        run(srv.client(i, &cache(i)), &init_args()).ok();
    }
    backup(&srv, 0, 1);
    let ns = srv.namespace_dir("ns-0");
    let old = work.path().join("ns-0.old");
    copy(&ns, &old);
    let second = backup(&srv, 0, 2);
    backup(&srv, 1, 3);
    srv.stop();
    put_back(&old, &ns);

    // The server starts and serves ns-1; ns-0 alone is refused, with what
    // the operator can do about it, and logged once with both counts.
    let (child, port) = serve(&srv, &[]).expect("the server serves the other namespaces");
    srv.child = child;
    srv.port = port;
    backup(&srv, 1, 4);
    assert_eq!(
        run(srv.client(1, &cache(1)), &["-q", "snapshots"])
            .ok()
            .stdout()
            .lines()
            .count(),
        2
    );
    let r = run(srv.client(0, &cache(0)), &["snapshots"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("namespace ns-0")
            && err.contains("from 2 to 1")
            && err.contains("--accept-rollback ns-0"),
        "{err}"
    );
    let log = fs::read_to_string(srv.dir.path().join("serve.err")).unwrap();
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("from 2 to 1"))
        .collect();
    assert_eq!(logged.len(), 1, "{log}");
    assert!(logged[0].contains("ns-0"), "{log}");
    // The operator's commands see it too.
    let out = srv.operator(&["scrub"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ns-0"));
    let out = srv.operator(&["prune"]);
    assert!(!out.status.success(), "{out:?}");

    srv.stop();
    let (child, port) = serve(&srv, &["--accept-rollback", "ns-0"]).unwrap();
    srv.child = child;
    srv.port = port;
    // The client remembers what it saw, whatever the server accepted.
    let r = run(srv.client(0, &cache(0)), &["snapshots"]).ok();
    assert!(warns_of(&r.stderr(), &[&second]), "{}", r.stderr());
    // Accepted once: later starts need nothing.
    srv.restart();
    run(
        srv.client(0, &cache(0)),
        &["snapshots", "--accept-rollback"],
    )
    .ok();
    let r = run(srv.client(0, &cache(0)), &["check"]).ok();
    assert!(!r.stderr().contains("rolled back"), "{}", r.stderr());
    let out = srv.operator(&["scrub"]);
    assert!(out.status.success(), "{out:?}");
}
