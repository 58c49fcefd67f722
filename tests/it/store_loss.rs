//! Losses the store must never forget or hide (issue 18): a pack lost with
//! its stripe's parity, a repair a running server must see, a crash loop's
//! leftovers, and kill -9 campaigns against scrub and prune.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer::proto::{ErrorCode, Request, Response};

use crate::scrub::stripes;
use crate::server::{init_args, raw_request, run, TestServer};
use crate::util::*;

/// A repository holding `n` files of 330 KB (1 MiB packs: about n/3 packs).
fn setup(t: &TestRepo, dir: &str, n: u64, seed: u64) -> PathBuf {
    let src = t.path(dir);
    fs::create_dir_all(&src).unwrap();
    for i in 0..n {
        fs::write(
            src.join(format!("f{i:02}")),
            random_bytes(seed + i, 330_000),
        )
        .unwrap();
    }
    t.backup(&[src.to_str().unwrap()]);
    src
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_str().unwrap().to_string()
}

/// The snapshots whose plain pack list holds `pack` (hex).
fn snapshots_listing(t: &TestRepo, pack: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in walk(&t.repo.join("snapshots")) {
        if f.extension().is_some() {
            continue;
        }
        let bytes = fs::read(&f).unwrap();
        let file = coffer::format::snapshot::decode(&bytes).unwrap();
        if file.packs.iter().any(|p| p.to_hex() == pack) {
            out.push(file_name(&f));
        }
    }
    out.sort();
    out
}

/// Restores `snapshot` and compares every file of `src` byte for byte.
fn assert_restores(t: &TestRepo, snapshot: &str, src: &Path, out: &str) {
    let target = t.path(out);
    t.run(&["restore", snapshot, "--target", target.to_str().unwrap()])
        .ok();
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        assert!(
            fs::read(restored(&target, src).join(p.file_name().unwrap())).unwrap()
                == fs::read(&p).unwrap(),
            "{} differs",
            p.display()
        );
    }
}

// See: issue 18, item 1.
#[test]
fn r18_scrub_reports_a_pack_lost_with_its_stripes_parity_every_time() {
    let t = TestRepo::new();
    setup(&t, "src", 30, 0);
    let st = stripes(&t);
    let (members, parity) = st.values().find(|(m, _)| m.len() >= 3).unwrap();
    let lost = members[1].clone();
    let lost_id = file_name(&lost);
    let want = snapshots_listing(&t, &lost_id);
    assert_eq!(want.len(), 1);
    fs::remove_file(&lost).unwrap();
    for p in parity {
        fs::remove_file(p).unwrap();
    }
    // Every scrub names it, with the snapshot that lists it: the fresh
    // parity the first one gives the other members must not hide it.
    for round in 0..2 {
        let r = t.run(&["--json", "scrub"]);
        assert_eq!(r.code(), 5, "round {round}: {}", r.stderr());
        let v = r.json();
        let un = v[0]["report"]["unrepairable"].as_array().unwrap().clone();
        assert_eq!(un.len(), 1, "round {round}: {v}");
        assert_eq!(un[0]["pack"], lost_id.as_str(), "{v}");
        assert!(un[0]["reason"].as_str().unwrap().contains("missing"), "{v}");
        let named: Vec<String> = un[0]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert_eq!(named, want, "round {round}");
        assert!(r.stderr().contains(&lost_id), "{}", r.stderr());
    }
    // the other members are protected again: losing one more is repaired
    let others: Vec<&PathBuf> = members.iter().filter(|p| **p != lost).collect();
    fs::remove_file(others[0]).unwrap();
    let r = t.run(&["--json", "scrub"]);
    assert_eq!(r.code(), 5, "{}", r.stderr());
    let v = r.json();
    assert_eq!(v[0]["report"]["unrepairable"].as_array().unwrap().len(), 1);
    assert!(others[0].exists(), "not rebuilt: {v}");
}

// See: issue 18, item 1 ("never drop a member from a stripe because its
// file is gone").
#[test]
fn r18_a_backup_growing_a_stripe_keeps_a_lost_member_repairable() {
    let t = TestRepo::new();
    // a few packs: the stripe (10+2) stays open
    let first = setup(&t, "first", 6, 100);
    let snap = t.snapshots()[0]["id"].as_str().unwrap().to_string();
    let st = stripes(&t);
    assert_eq!(st.len(), 1, "one open stripe");
    let (members, _) = st.values().next().unwrap();
    assert!(members.len() >= 2 && members.len() < 10, "{members:?}");
    let lost = members[0].clone();
    fs::remove_file(&lost).unwrap();
    // The next backup's packs join the open stripe; its parity must not be
    // recomputed without the lost member.
    setup(&t, "second", 6, 200);
    let r = t.run(&["--json", "scrub"]);
    let v = r.json();
    assert_eq!(r.code(), 0, "{v}\n{}", r.stderr());
    let repaired: Vec<String> = v[0]["report"]["repaired_packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(repaired, vec![file_name(&lost)], "{v}");
    t.run(&["check", "--read-data"]).ok();
    assert_restores(&t, &snap, &first, "out-first");
}

/// Flips bytes in the middle of a file in place (same inode, as bit rot).
fn rot_in_place(p: &Path) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let len = f.metadata().unwrap().len();
    let mut b = [0u8; 64];
    f.read_exact_at(&mut b, len / 2).unwrap();
    for x in &mut b {
        *x ^= 0x5a;
    }
    f.write_all_at(&b, len / 2).unwrap();
}

/// Waits (at most 20 s) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parity_written(dir: &Path) -> bool {
    walk(&dir.join("parity"))
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "0"))
}

/// A server (client entries with `extra`) whose client 0 has initialized
/// its namespace, its cache, and a source tree of `n` random files of
/// `len` bytes.
fn served(extra: &str, n: u64, len: usize) -> (TestServer, tempfile::TempDir, PathBuf, PathBuf) {
    let srv = TestServer::start_with(1, extra);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..n {
        fs::write(src.join(format!("f{i}")), random_bytes(50 + i, len)).unwrap();
    }
    (srv, work, cache, src)
}

// See: issue 18, item 11.
#[test]
fn r18_a_running_server_serves_what_the_operators_scrub_repaired() {
    let (srv, work, cache, src) = served("", 8, 330_000);
    let snap = run(
        srv.client(0, &cache),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ns = srv.namespace_dir("ns-0");
    wait_for("the server's parity", || parity_written(&ns));
    let victim = walk(&ns.join("packs"))
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    rot_in_place(&victim);
    // The client sees the damage (the server now has the pack open).
    let r = run(srv.client(0, &cache), &["check", "--read-data"]);
    assert_eq!(r.code(), 5, "{}", r.stderr());
    // The operator's scrub, another process, repairs it.
    let out = srv.operator(&["--json", "scrub"]);
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{rep}");
    assert!(
        rep[0]["report"]["repaired_packs"]
            .to_string()
            .contains(&file_name(&victim)),
        "{rep}"
    );
    // The running server serves the repaired file.
    run(srv.client(0, &cache), &["check", "--read-data"]).ok();
    let target = work.path().join("out");
    run(
        srv.client(0, &cache),
        &["restore", &snap, "--target", target.to_str().unwrap()],
    )
    .ok();
    assert_same_tree(&src, &restored(&target, &src));
}

/// The response frame in `got`, decoded.
fn response(got: &[u8]) -> Response {
    let head: &[u8; coffer::proto::HEAD_LEN] = got[..coffer::proto::HEAD_LEN].try_into().unwrap();
    let (tag, len) = coffer::proto::decode_head(head).unwrap();
    let payload = &got[coffer::proto::HEAD_LEN..coffer::proto::HEAD_LEN + len];
    Response::decode(tag, payload).unwrap()
}

// See: issue 18 ("ReadPack at an offset past any pack answers internal").
#[test]
fn r18_a_read_past_the_end_of_a_pack_is_the_clients_error() {
    let (srv, _work, cache, src) = served("", 1, 100_000);
    run(srv.client(0, &cache), &["backup", src.to_str().unwrap()]).ok();
    let pack = walk(&srv.namespace_dir("ns-0").join("packs"))[0].clone();
    let size = fs::metadata(&pack).unwrap().len();
    let id: coffer::id::PackId = file_name(&pack).parse().unwrap();
    for (offset, len) in [
        (u64::MAX - 8, 16),
        (1 << 62, 1),
        (size + 10, 16),
        (size - 4, 16),
    ] {
        let frame = Request::ReadPack { id, offset, len }.encode();
        let got = raw_request(&srv, &frame).unwrap();
        match response(&got) {
            Response::Error { code, message } => {
                assert_eq!(code, ErrorCode::Invalid, "{offset}+{len}: {message}");
                assert!(!message.contains("storage error"), "{message}");
            }
            r => panic!("{offset}+{len}: {r:?}"),
        }
    }
    // and a range inside still reads
    let frame = Request::ReadPack {
        id,
        offset: 0,
        len: 8,
    }
    .encode();
    let got = raw_request(&srv, &frame).unwrap();
    assert!(matches!(response(&got), Response::Bytes { len: 8 }));
}
