//! Scripting: every command that prints answers `--json` with JSON, and
//! every command exits cleanly (0, or its own code; never a panic's 101)
//! when the reader of its standard output has already gone.

use std::os::fd::OwnedFd;
use std::process::Stdio;

use crate::util::*;

/// A repository with two snapshots of a small tree; returns the two ids.
fn repo_with_two() -> (TestRepo, String, String) {
    // No lock window: `forget` may remove a snapshot at once.
    let t = TestRepo::with_init(&["--lock-days", "0"]);
    let src = t.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..40 {
        std::fs::write(src.join(format!("d/f{i}")), random_bytes(i, 3000)).unwrap();
    }
    std::fs::write(src.join("big"), random_bytes(99, 400_000)).unwrap();
    let a = t.backup(&[src.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(src.join("d/new"), b"new file").unwrap();
    let b = t.backup(&[src.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    (t, a, b)
}

/// Runs `args` with standard output a pipe whose reader is already
/// closed: the first write fails with EPIPE.
fn run_closed_stdout(t: &TestRepo, args: &[&str]) -> Run {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    drop(r);
    let out = t
        .command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    Run { out }
}

/// The listing commands, `--help` and the long-running ones keep their own
/// exit code when nobody reads their output, and none panics.
#[test]
fn every_command_survives_a_closed_output_pipe() {
    let (t, a, b) = repo_with_two();
    let src = t.path("src");
    let file = format!("{}/big", src.display());
    let target = t.path("restore-closed");
    let cases: Vec<Vec<&str>> = vec![
        vec!["snapshots"],
        vec!["--json", "snapshots"],
        vec!["ls", "latest"],
        vec!["--json", "ls", "latest"],
        vec!["diff", &a, &b],
        vec!["--json", "diff", &a, &b],
        vec!["stats"],
        vec!["check"],
        vec!["key", "list"],
        vec!["dump", "latest", &file],
        vec!["prune"],
        vec!["prune", "--dry-run"],
        vec!["--json", "prune", "--dry-run"],
        vec!["scrub"],
        vec!["policy"],
        vec!["restore", "latest", "--target", target.to_str().unwrap()],
        vec!["find", "f*"],
        vec!["--json", "find", "f*"],
        vec!["completions", "bash"],
        vec!["--help"],
        vec!["snapshots", "--help"],
        vec!["--version"],
    ];
    for args in &cases {
        let r = run_closed_stdout(&t, args);
        let code = r.code();
        assert!(
            code == 0 || code == 141,
            "{args:?} exited {code} with its output pipe closed:\n{}",
            r.stderr()
        );
        assert!(
            !r.stderr().contains("panicked"),
            "{args:?} panicked:\n{}",
            r.stderr()
        );
    }
    // The restore still did its work: nobody reading is no reason to stop.
    let restored = restored(&target, &src);
    assert_eq!(
        std::fs::read(restored.join("big")).unwrap(),
        std::fs::read(src.join("big")).unwrap()
    );
}

/// `key add/remove/passwd` and `forget` print text today; with `--json`
/// every one of them answers JSON a script can parse.
#[test]
fn every_printing_command_answers_json() {
    let (t, a, b) = repo_with_two();
    let pw = [("COFFER_NEW_PASSWORD", "another passphrase entirely")];
    let added = t.run_env(&["--json", "key", "add"], &pw).ok().json();
    let added_id = added["id"].as_str().unwrap().to_string();
    let removed = t.run(&["--json", "key", "remove", &added_id]).ok().json();
    assert_eq!(removed["id"], added_id.as_str(), "{removed}");
    let passwd = t.run_env(&["--json", "key", "passwd"], &pw).ok().json();
    assert!(passwd["id"].is_string(), "{passwd}");
    assert!(passwd["replaced"].is_string(), "{passwd}");
    let t_env = [("COFFER_PASSWORD", "another passphrase entirely")];
    // The old passphrase no longer opens the repository; the new one does.
    t.run(&["snapshots"]).fails();
    let forgot = t.run_env(&["--json", "forget", &a], &t_env).ok().json();
    assert_eq!(
        forgot["forgotten"].as_array().map(|v| v.len()),
        Some(1),
        "{forgot}"
    );
    for args in [
        vec!["--json", "snapshots"],
        vec!["--json", "ls", &b],
        vec!["--json", "stats"],
        vec!["--json", "check"],
        vec!["--json", "key", "list"],
        vec!["--json", "prune", "--dry-run"],
        vec!["--json", "policy"],
        vec!["--json", "scrub"],
        vec!["--json", "clock"],
        vec!["--json", "find", "f1*"],
    ] {
        let r = t.run_env(&args, &t_env);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&r.out.stdout).is_ok(),
            "{args:?} did not answer JSON: {}\n{}",
            r.stdout(),
            r.stderr()
        );
    }
}

/// The operator's `prune --config` and `scrub --config` go through every
/// namespace even when nobody reads what they print, and answer JSON.
#[test]
fn operator_sweeps_reach_every_namespace_with_output_closed() {
    let srv = crate::server::TestServer::start(3);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), random_bytes(7, 50_000)).unwrap();
    for i in 0..3 {
        let out = srv
            .client(i, &tmp.path().join(format!("cache{i}")))
            .args(["backup", src.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let cfg = srv.dir.path().join("server.toml");
    for args in [["prune"], ["scrub"]] {
        let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        drop(r);
        let out = clean_command()
            .args(args)
            .args(["--allow-root", "--config"])
            .arg(&cfg)
            .stdout(Stdio::from(w))
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 141,
            "{args:?}: {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..3 {
        let ns = srv.namespace_dir(&format!("ns-{i}"));
        assert!(
            ns.join("policy.applied").exists(),
            "prune with its output closed never reached ns-{i}"
        );
    }
    for args in [
        vec!["--json", "prune", "--dry-run"],
        vec!["--json", "scrub"],
    ] {
        let out = srv.operator(&args);
        assert!(
            serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// `backup -v` lists the files it saved, `-vv` every file with its status.
#[test]
fn backup_verbose_lists_files_with_their_status() {
    let t = TestRepo::new();
    let src = t.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), random_bytes(1, 20_000)).unwrap();
    std::fs::write(src.join("b"), random_bytes(2, 20_000)).unwrap();
    age(&src.join("a"));
    age(&src.join("b"));
    let s = src.to_str().unwrap();
    let first = t.run(&["backup", "-v", s]).ok().stdout();
    let line = |word: &str, name: &str| format!("{word:<9} {}", src.join(name).display());
    assert!(first.contains(&line("new", "a")), "{first}");
    assert!(first.contains(&line("new", "b")), "{first}");
    std::fs::write(src.join("a"), random_bytes(3, 20_000)).unwrap();
    age(&src.join("a"));
    std::fs::write(src.join("c"), b"c").unwrap();
    std::fs::hard_link(src.join("b"), src.join("d")).unwrap();
    let quiet = t.run(&["backup", "-v", s]).ok().stdout();
    assert!(quiet.contains(&line("modified", "a")), "{quiet}");
    assert!(quiet.contains(&line("new", "c")), "{quiet}");
    assert!(
        !quiet.contains("unchanged"),
        "-v lists only saved files: {quiet}"
    );
    std::fs::write(src.join("e"), b"e").unwrap();
    let all = t.run(&["backup", "-vv", s]).ok().stdout();
    assert!(all.contains(&line("unchanged", "a")), "{all}");
    assert!(all.contains(&line("new", "e")), "{all}");
    assert!(all.contains(&line("linked", "d")), "{all}");
    // --json stays one JSON document.
    let j = t.run(&["--json", "backup", "-vv", s]).ok();
    assert!(j.json()["id"].is_string());
}

/// `backup --json --json-progress` writes JSON lines: status lines while it
/// runs, then one summary line; without --json it is a usage error.
#[test]
fn backup_json_progress_is_json_lines_ending_in_the_summary() {
    let t = TestRepo::new();
    let slow = "head -c 300000 /dev/urandom; sleep 2.5; head -c 1000 /dev/urandom";
    let r = t
        .run(&[
            "--json",
            "backup",
            "--json-progress",
            "--stdin-name",
            "slow.bin",
            "--stdin-from-command",
            "sh",
            "-c",
            slow,
        ])
        .ok();
    let lines: Vec<serde_json::Value> = r
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let (last, before) = lines.split_last().expect("some output");
    assert_eq!(last["type"], "summary", "{last}");
    assert!(last["id"].is_string());
    assert!(!before.is_empty(), "no status line in 2.5 s");
    assert!(before
        .iter()
        .all(|l| l["type"] == "status" && l["bytes"].is_u64()));
    let r = t.run(&["backup", "--json-progress", "--stdin-name", "x", "--stdin"]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
}
