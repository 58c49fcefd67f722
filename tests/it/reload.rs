//! A server that does not need restarts: SIGHUP rereads the config (a
//! client added, one removed, a third's open connection untouched; a bad
//! config refused and the old one kept), and the scrub schedule survives
//! restarts. And a client's side of it: a connect timeout for a server that
//! is down, and a download limit.

use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::retention::{faketime, libfaketime};
use crate::server::{identity, TestServer};
use crate::util::*;

/// Waits (bounded) until the server's log holds `needle` `n` times.
pub(crate) fn wait_log(srv: &TestServer, needle: &str, n: usize) {
    let start = Instant::now();
    while srv.log().matches(needle).count() < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {needle:?} (x{n}) in the server's log:\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn hup(srv: &TestServer) {
    kill(Pid::from_raw(srv.child.id() as i32), Signal::SIGHUP).unwrap();
}

#[test]
fn sighup_adds_and_removes_clients_without_dropping_a_third() {
    let srv = TestServer::start(3);
    let tmp = tempfile::tempdir().unwrap();
    let cache = |n: &str| tmp.path().join(n);
    // Client 2 holds a connection open across the reload: a backup whose
    // standard input is not finished yet.
    let mut long = srv
        .client(2, &cache("c2"))
        .args(["--json", "backup", "--stdin", "--stdin-name", "dump.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let first = random_bytes(21, 3 << 20);
    let second = random_bytes(22, 3 << 20);
    let mut stdin = long.stdin.take().unwrap();
    stdin.write_all(&first).unwrap();
    std::thread::sleep(Duration::from_millis(800));

    // The new config: client 1 gone, a new client 3 in its own namespace.
    let cfg_path = srv.dir.path().join("server.toml");
    let before = fs::read_to_string(&cfg_path).unwrap();
    let new_id = srv.dir.path().join("client3.id");
    let new_fp = identity(&new_id);
    let entry1 = format!(
        "[[client]]\nfingerprint = \"{}\"\nnamespace = \"ns-1\"\n",
        srv.clients[1].1
    );
    assert!(before.contains(&entry1), "{before}");
    let after = before.replace(&entry1, "")
        + &format!("[[client]]\nfingerprint = \"{new_fp}\"\nnamespace = \"ns-3\"\n");
    fs::write(&cfg_path, &after).unwrap();
    hup(&srv);
    wait_log(&srv, "config reloaded", 1);

    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(5, 100_000)).unwrap();
    let out = srv
        .client_as(&new_id, "ns-3", &cache("c3"))
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "the added client: {out:?}");
    let out = srv
        .client(1, &cache("c1"))
        .args(["snapshots"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the removed client still connects");

    // The third client's backup finishes on the connection it opened.
    stdin.write_all(&second).unwrap();
    drop(stdin);
    let out = long.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the open connection was dropped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = srv
        .client(2, &cache("c2"))
        .args(["dump", "latest", "dump.sql"])
        .output()
        .unwrap();
    assert!(dumped.status.success(), "{dumped:?}");
    assert!(
        dumped.stdout == [first, second].concat(),
        "restored bytes differ"
    );

    // A config that does not parse is refused; the running one stays.
    fs::write(&cfg_path, after.replace("[[client]]", "[[clients]]")).unwrap();
    hup(&srv);
    wait_log(&srv, "config reload refused", 1);
    let out = srv
        .client_as(&new_id, "ns-3", &cache("c3"))
        .args(["snapshots"])
        .output()
        .unwrap();
    assert!(out.status.success(), "the old config was not kept: {out:?}");
}

#[test]
fn the_scrub_schedule_survives_a_restart() {
    if !faketime() {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing (apt-get install faketime)"
        );
        eprintln!("skipped: libfaketime is missing");
        return;
    }
    let mut srv = TestServer::start_full(1, "", "scrub_interval_hours = 1", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(9, 200_000)).unwrap();
    let out = srv
        .client(0, &tmp.path().join("cache"))
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    srv.stop();
    assert!(
        srv.dir.path().join("data/scrub.last").exists(),
        "the schedule's start is not recorded"
    );
    assert_eq!(srv.log().matches("scrub done").count(), 0);
    // Two hours later (restarted more often than hourly, it never scrubbed
    // before): the scrub that is due runs at once.
    srv.set_env("LD_PRELOAD", libfaketime().unwrap());
    srv.set_env("FAKETIME", "+2h");
    srv.start_again();
    wait_log(&srv, "scrub done", 1);
    // Half an hour after that scrub, a restart does not scrub again.
    srv.stop();
    srv.set_env("FAKETIME", "+2h30m");
    srv.start_again();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        srv.log().matches("scrub done").count(),
        1,
        "a restart scrubbed again before the interval passed"
    );
}

/// A server that is down is reported after the connect timeout, with a
/// message saying what to check, not after the transport's idle minute.
#[test]
fn a_server_that_does_not_answer_is_given_up_after_the_connect_timeout() {
    let srv = TestServer::start(1);
    // A UDP port nobody answers on: bound here and never read.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let out = srv
        .client(0, &tmp.path().join("cache"))
        .env("COFFER_REPO", format!("quic://127.0.0.1:{port}/ns-0"))
        .args(["--connect-timeout", "1s", "snapshots"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no answer within 1s"), "{err}");
}

/// `--limit-download` paces what a restore reads from the server: never
/// faster than the limit (a lower bound, which a slow machine cannot
/// break), and the restore is byte-identical.
#[test]
fn a_restore_under_limit_download_keeps_to_the_limit() {
    let srv = TestServer::start(1);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = random_bytes(77, 3 << 20);
    fs::write(src.join("big"), &data).unwrap();
    let cache = tmp.path().join("cache");
    let out = srv
        .client(0, &cache)
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let target = tmp.path().join("restored");
    let started = Instant::now();
    let out = srv
        .client(0, &cache)
        .args(["--limit-download", "512", "restore", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(fs::read(restored(&target, &src).join("big")).unwrap() == data);
    // 3 MiB at 512 KiB/s is 6 s; allow for what the cache already held.
    assert!(
        took >= Duration::from_secs(4),
        "3 MiB came in {took:?}, faster than 512 KiB/s"
    );
}
