//! Replication under attack and bad luck, between real servers on
//! loopback: what a replica identity can do on its primary over one
//! connection and across reloads, and packs put back from a replica.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use coffer::net::{Fingerprint, Identity};
use coffer::proto::{self, ErrorCode, Request, Response, HEAD_LEN};
use coffer::store::Store;

use crate::replication::{
    backup_stdin, primary, primary_with, primary_with_repo, replicate, replicate_entries,
};
use crate::server::{init_args, raw_config, raw_hello, run, TestServer};
use crate::util::*;

/// One request on a new stream of `conn`; the answer's first frame, or
/// why there is none (the connection closed).
async fn ask(conn: &quinn::Connection, req: &Request) -> Result<Response, String> {
    let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
    s.write_all(&req.encode())
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.finish();
    let got = r.read_to_end(1 << 24).await.map_err(|e| e.to_string())?;
    if got.len() < HEAD_LEN {
        return Err("no answer".into());
    }
    let (tag, len) = proto::decode_head(got[..HEAD_LEN].try_into().unwrap()).unwrap();
    Response::decode(tag, &got[HEAD_LEN..HEAD_LEN + len]).map_err(|e| e.to_string())
}

/// Reloads the server's config with `edit` applied, and waits for it.
fn reload(srv: &TestServer, edit: impl FnOnce(String) -> String) {
    let path = srv.dir.path().join("server.toml");
    let n = srv.log().matches("config reloaded").count();
    fs::write(&path, edit(fs::read_to_string(&path).unwrap())).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(srv.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let t0 = Instant::now();
    while srv.log().matches("config reloaded").count() <= n {
        assert!(t0.elapsed() < Duration::from_secs(30), "{}", srv.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_replica_connection_keeps_its_first_namespace_and_loses_it_on_reload() {
    let work = tempfile::tempdir().unwrap();
    let (primary, rep_id) = primary(work.path(), 2, 2);
    let mut snaps = Vec::new();
    for i in 0..2 {
        let cache = work.path().join(format!("cache{i}"));
        run(primary.client(i, &cache), &init_args()).ok();
        let (id, _) = backup_stdin(&primary, i, &cache, "a", 40 + i as u64);
        snaps.push(id.parse::<coffer::id::SnapshotId>().unwrap());
    }
    let pin = Fingerprint::parse(&primary.fingerprint).unwrap();
    let id = || Some(Identity::load(&rep_id).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_ep, conn, mut hello) = raw_hello(primary.port, raw_config(pin, id()))
            .await
            .unwrap();
        hello.read_to_end(1 << 16).await.unwrap();
        // A second Hello, into the other namespace it may read, on the
        // same connection: refused, and the connection stays in ns-0.
        let again = Request::Hello {
            version: 1,
            namespace: "ns-1".into(),
        };
        match ask(&conn, &again).await.unwrap() {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::Protocol),
            r => panic!("second Hello answered {r:?}"),
        }
        let read = |i: usize| Request::ReadSnapshot { id: snaps[i] };
        assert!(matches!(
            ask(&conn, &read(0)).await.unwrap(),
            Response::Bytes { .. }
        ));
        match ask(&conn, &read(1)).await.unwrap() {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::NotFound),
            r => panic!("ns-1's snapshot read through ns-0: {r:?}"),
        }
        // Each write refused on the raw connection too.
        for w in [
            Request::Forget { id: snaps[0] },
            Request::Lock {
                id: snaps[0],
                until: i64::MAX / 2,
                hold: true,
            },
            Request::WriteSnapshot {
                len: 0,
                group: None,
            },
        ] {
            match ask(&conn, &w).await.unwrap() {
                Response::Error { code, message } => {
                    assert_eq!(code, ErrorCode::Denied);
                    assert!(message.contains("read-only"), "{message}");
                }
                r => panic!("{w:?} answered {r:?}"),
            }
        }
        // The operator takes ns-0 from its list while it is connected:
        // its next request is not served.
        reload(&primary, |c| {
            c.replace(
                "namespaces = [\"ns-0\", \"ns-1\"]",
                "namespaces = [\"ns-1\"]",
            )
        });
        let after = ask(&conn, &read(0)).await;
        assert!(
            !matches!(after, Ok(Response::Bytes { .. })),
            "read after its namespace was taken away: {after:?}"
        );
        // Nor may a new connection of it read there.
        let (_ep2, conn2, mut hello2) = raw_hello(primary.port, raw_config(pin, id()))
            .await
            .unwrap();
        let h = hello2.read_to_end(1 << 16).await.unwrap_or_default();
        let (tag, len) = proto::decode_head(h[..HEAD_LEN].try_into().unwrap()).unwrap();
        match Response::decode(tag, &h[HEAD_LEN..HEAD_LEN + len]).unwrap() {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::Denied),
            r => panic!("Hello into ns-0 answered {r:?}"),
        }
        drop(conn2);
    });
    // Removed from the config: the handshake refuses its certificate.
    reload(&primary, |c| {
        let start = c.find("[[replica]]").unwrap();
        let end = start + c[start..].find("[[client]]").unwrap();
        format!("{}{}", &c[..start], &c[end..])
    });
    let url = coffer::net::client::RemoteUrl::parse(&primary.url("ns-1")).unwrap();
    let e = coffer::net::client::RemoteStore::connect(&url, Identity::load(&rep_id).unwrap(), pin)
        .err()
        .expect("a removed replica refused");
    assert!(!e.to_string().is_empty());
    // Nothing changed on the primary.
    let own = primary.store(0, "ns-0").unwrap();
    assert_eq!(own.list_snapshots().unwrap(), vec![snaps[0]]);
}

/// A primary (parity `parity`) with three backups in ns-0 copied to a
/// replica whose client 0 may read it; the primary's pack files.
fn copied_primary(work: &Path, parity: &str) -> (TestServer, TestServer, Vec<std::path::PathBuf>) {
    let (primary, rep_id) = primary_with(work, 1, 1, &format!("parity = \"{parity}\""));
    let cache = work.join("cache");
    run(primary.client(0, &cache), &init_args()).ok();
    for i in 0..3 {
        backup_stdin(&primary, 0, &cache, &format!("f{i}"), 60 + i);
    }
    // Every pack in a stripe before anything is lost.
    let s = primary.operator(&["scrub"]);
    assert!(s.status.success(), "{s:?}");
    let top = replicate_entries(&primary, &rep_id, &["ns-0"], "");
    let replica = TestServer::start_full(1, "read_only = true", &top, &[]);
    replicate(&replica.dir.path().join("server.toml"), &[]).ok();
    let packs = walk(&primary.namespace_dir("ns-0").join("packs"));
    assert!(packs.len() >= 3, "{packs:?}");
    (primary, replica, packs)
}

/// `coffer scrub --config` of the primary, fetching from `replica`.
fn scrub_from(primary: &TestServer, replica: &TestServer) -> (Option<i32>, String) {
    let out = primary.operator(&[
        "scrub",
        "--from-replica",
        &format!("127.0.0.1:{}", replica.port),
        "--replica-fingerprint",
        &replica.fingerprint,
        "--identity",
        replica.clients[0].0.to_str().unwrap(),
    ]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The copy of `pack` (a primary path) in `replica`'s ns-0.
fn theirs(replica: &TestServer, pack: &Path) -> std::path::PathBuf {
    let name = pack.file_name().unwrap().to_str().unwrap();
    replica
        .namespace_dir("ns-0")
        .join("packs")
        .join(&name[..2])
        .join(name)
}

#[test]
fn a_pack_the_replica_cannot_read_does_not_keep_the_others_from_being_put_back() {
    let work = tempfile::tempdir().unwrap();
    let (primary, mut replica, packs) = copied_primary(work.path(), "10+2");
    for p in &packs {
        fs::remove_file(p).unwrap();
    }
    fs::remove_dir_all(primary.namespace_dir("ns-0").join("parity")).unwrap();
    // One copy unreadable on the replica (its disk fails under it: a
    // directory where the file was reads as an I/O error).
    let bad = theirs(&replica, &packs[0]);
    fs::remove_file(&bad).unwrap();
    fs::create_dir(&bad).unwrap();
    replica.restart();
    let (code, err) = scrub_from(&primary, &replica);
    assert_eq!(code, Some(5), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.ends_with(" put back from the replica"))
            .count(),
        packs.len() - 1,
        "{err}"
    );
    assert!(!packs[0].exists());
    for p in &packs[1..] {
        assert!(p.is_file(), "{} not back: {err}", p.display());
    }
}

#[test]
fn packs_put_back_from_the_replica_stay_repairable_by_their_stripe() {
    let work = tempfile::tempdir().unwrap();
    // One parity pack per stripe: two lost members are past its budget.
    let (primary, replica, packs) = copied_primary(work.path(), "4+1");
    let sound: Vec<Vec<u8>> = packs.iter().map(|p| fs::read(p).unwrap()).collect();
    for p in &packs {
        fs::remove_file(p).unwrap();
    }
    let plain = primary.operator(&["scrub"]);
    assert_eq!(plain.status.code(), Some(5), "{plain:?}");
    let (code, err) = scrub_from(&primary, &replica);
    assert_eq!(code, Some(0), "{err}");
    for (p, b) in packs.iter().zip(&sound) {
        assert!(fs::read(p).unwrap() == *b, "{}", p.display());
    }
    // The stripes' own parity, untouched, still repairs each of them.
    for (p, b) in packs.iter().zip(&sound) {
        let mut bad = b.clone();
        bad[b.len() / 3] ^= 0x40;
        fs::write(p, &bad).unwrap();
        let s = primary.operator(&["scrub"]);
        assert!(
            s.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&s.stderr)
        );
        assert!(fs::read(p).unwrap() == *b, "{} not repaired", p.display());
    }
}

#[test]
fn a_long_copy_from_one_primary_holds_up_no_other_namespace() {
    let work = tempfile::tempdir().unwrap();
    let (primary, rep_id) = primary(work.path(), 2, 2);
    for i in 0..2 {
        let cache = work.path().join(format!("cache{i}"));
        run(primary.client(i, &cache), &init_args()).ok();
    }
    // ns-0: ~2 MB at 64 KiB/s, half a minute; ns-1: one small backup.
    let c0 = work.path().join("cache0");
    for i in 0..3 {
        backup_stdin(&primary, 0, &c0, &format!("f{i}"), 70 + i);
    }
    backup_stdin(&primary, 1, &work.path().join("cache1"), "g", 80);
    let top = format!(
        "{}{}",
        replicate_entries(&primary, &rep_id, &["ns-0"], "limit_kib = 64"),
        replicate_entries(&primary, &rep_id, &["ns-1"], "")
    );
    let replica = TestServer::start_full(0, "", &top, &[]);
    let held = |ns: &str| {
        fs::read_dir(replica.namespace_dir(ns).join("snapshots"))
            .map(|d| {
                d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_none()))
                    .count()
            })
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while held("ns-1") == 0 {
        assert!(t0.elapsed() < Duration::from_secs(90), "{}", replica.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // ns-1 was copied while ns-0's copy was still going.
    assert!(held("ns-0") < 3, "ns-1 waited for ns-0: {}", replica.log());
}

#[test]
fn packs_put_back_from_the_replica_leave_the_scrub_state_and_its_alert() {
    let work = tempfile::tempdir().unwrap();
    let (primary, replica, packs) = copied_primary(work.path(), "10+2");
    for p in &packs {
        fs::remove_file(p).unwrap();
    }
    fs::remove_dir_all(primary.namespace_dir("ns-0").join("parity")).unwrap();
    let (code, err) = scrub_from(&primary, &replica);
    assert_eq!(code, Some(0), "{err}");
    // What monitoring reads (the scrub_unrepairable alert fires on it
    // until the next pass): nothing beyond repair any more.
    let state: serde_json::Value = serde_json::from_slice(
        &fs::read(primary.namespace_dir("ns-0").join("scrub.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["last"]["unrepairable_packs"], 0, "{state}");
    assert_eq!(
        state["last"]["unrepairable"],
        serde_json::json!([]),
        "{state}"
    );
}

#[test]
fn a_reload_that_drops_and_brings_back_a_replicate_entry_keeps_the_figures_right() {
    use crate::monitor::{poll, scrape};
    use crate::replication::sample;
    let (_work, primary, rep_id, cache) = primary_with_repo(1, 1);
    backup_stdin(&primary, 0, &cache, "a", 90);
    let entry = replicate_entries(
        &primary,
        &rep_id,
        &["ns-0"],
        "interval = \"1s\"\nlag_alert_after = \"1h\"",
    );
    let top = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n\
         [alerts]\ncheck_interval = \"1s\"\n{entry}"
    );
    let replica = TestServer::start_full(0, "", &top, &[]);
    let copied = "coffer_replication_copied_snapshots_total{namespace=\"ns-0\"}";
    poll("the first copy in the metrics", || {
        (sample(&scrape(&replica), copied) == Some(1.0)).then_some(())
    });
    // Dropped: no figures of a copy that no longer runs, and no alert.
    reload(&replica, |c| c.replace(&entry, ""));
    poll("the replication figures gone", || {
        (!scrape(&replica).contains("coffer_replication_")).then_some(())
    });
    // Back: served again (not taken for a rollback), its totals kept, a
    // new backup copied.
    backup_stdin(&primary, 0, &cache, "b", 91);
    reload(&replica, |c| format!("{c}\n{entry}"));
    poll("the second copy in the metrics", || {
        (sample(&scrape(&replica), copied) == Some(2.0)).then_some(())
    });
    let t = scrape(&replica);
    let lag = sample(&t, "coffer_replication_lag_seconds{namespace=\"ns-0\"}").unwrap();
    assert!(lag < 60.0, "{t}");
    assert!(
        !replica.log().contains("replication_lag"),
        "{}",
        replica.log()
    );
    assert!(!replica.log().contains("not served"), "{}", replica.log());
}
