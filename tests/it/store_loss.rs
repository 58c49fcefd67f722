//! Losses the store must never forget or hide (issue 18): a pack lost with
//! its stripe's parity, a repair a running server must see, a crash loop's
//! leftovers, and kill -9 campaigns against scrub and prune.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use coffer::proto::{ErrorCode, Request, Response};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

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

/// The files in a repository's (or namespace's) `tmp/`.
fn tmp_files(dir: &Path) -> BTreeSet<PathBuf> {
    walk(&dir.join("tmp")).into_iter().collect()
}

/// `coffer backup --stdin` of a stream that stops after `first` bytes
/// (stdin left open, the process alive): returns it once the store's
/// `tmp/` holds the upload of the pack it is filling (new files there,
/// unchanged for 500 ms).
fn stalled_backup(t: &TestRepo, first: &[u8]) -> (std::process::Child, std::process::ChildStdin) {
    let before = tmp_files(&t.repo);
    let mut child = t
        .command()
        .args(["--json", "backup", "--stdin", "--stdin-name", "db.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(first).unwrap();
    let new = || -> BTreeSet<PathBuf> { tmp_files(&t.repo).difference(&before).cloned().collect() };
    let mut seen = (new(), Instant::now());
    wait_for("an upload in tmp/", || {
        let now = new();
        if now != seen.0 {
            seen = (now, Instant::now());
        }
        !seen.0.is_empty() && seen.1.elapsed() > Duration::from_millis(500)
    });
    (child, stdin)
}

// See: issue 18, item 12.
#[test]
fn r18_a_backup_sweeps_what_killed_backups_left_in_tmp_but_not_a_live_upload() {
    // 8 MiB packs and the default chunk sizes: 6 MB of a stream leave a
    // pack being written (with the test's 1 MiB packs, every gathered
    // batch of blobs fills one pack exactly).
    let dir = tempfile::tempdir().unwrap();
    let t = TestRepo {
        repo: dir.path().join("repo"),
        cache: dir.path().join("cache"),
        dir,
    };
    let mut init = init_args();
    assert_eq!(init.pop(), Some("1048576"));
    init.push("8388608");
    t.run(&init).ok();
    let small = t.path("small");
    fs::create_dir_all(&small).unwrap();
    fs::write(small.join("a"), b"a small backup").unwrap();
    t.backup(&[small.to_str().unwrap()]);
    // A crash loop: five backups killed mid-upload (each with a pack of
    // about 4 MB being written).
    for round in 0..5 {
        let (mut child, _stdin) = stalled_backup(&t, &random_bytes(round, 6_000_000));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        child.wait().unwrap();
    }
    // Each run swept what the one before it left: only the last one's
    // upload is there, not five.
    let left = tmp_files(&t.repo);
    assert!(!left.is_empty() && left.len() <= 2, "{left:?}");
    // A backup still uploading while another one starts.
    let data = random_bytes(77, 10_000_000);
    let (live, mut stdin) = stalled_backup(&t, &data[..6_000_000]);
    let live_files: BTreeSet<PathBuf> = tmp_files(&t.repo).difference(&left).cloned().collect();
    let other_cache = t.path("other-cache");
    let r = t.run_env(
        &["backup", small.to_str().unwrap()],
        &[("COFFER_CACHE_DIR", other_cache.to_str().unwrap())],
    );
    r.ok();
    let now = tmp_files(&t.repo);
    assert!(left.iter().all(|p| !now.contains(p)), "left over: {now:?}");
    assert!(
        live_files.iter().all(|p| now.contains(p)),
        "the live upload's file was taken: {live_files:?} {now:?}"
    );
    // The live backup completes and its data is whole.
    stdin.write_all(&data[6_000_000..]).unwrap();
    drop(stdin);
    let out = Run {
        out: live.wait_with_output().unwrap(),
    }
    .ok();
    let id = out.json()["id"].as_str().unwrap().to_string();
    t.run(&["check", "--read-data"]).ok();
    let dumped = t.run(&["dump", &id, "db.sql"]).ok().out.stdout;
    assert!(dumped == data, "the dump differs");
}

/// A client's `PutPack` of `len` bytes that stops after `sent` of them,
/// its stream held open until `stop` is sent (or dropped).
fn stalled_put(srv: &TestServer, len: u64, sent: usize) -> std::sync::mpsc::Sender<()> {
    let id = coffer::net::Identity::load(&srv.clients[0].0).unwrap();
    let pin = coffer::net::Fingerprint::parse(&srv.fingerprint).unwrap();
    let port = srv.port;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = crate::server::raw_config(pin, Some(id));
            let (_ep, conn, mut r) = crate::server::raw_hello(port, cfg).await.unwrap();
            r.read_to_end(1 << 16).await.unwrap();
            let (mut s, _r) = conn.open_bi().await.unwrap();
            let put = Request::PutPack {
                id: coffer::id::PackId::of(b"never finished"),
                len,
            };
            s.write_all(&put.encode()).await.unwrap();
            s.write_all(&random_bytes(9, sent)).await.unwrap();
            let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
        });
    });
    stop
}

// See: issue 18, item 12 (a server's namespace).
#[test]
fn r18_a_server_counts_tmp_against_the_quota_and_sweeps_what_it_left_when_killed() {
    let (mut srv, _work, cache, src) = served("quota_bytes = 8000000", 1, 4_000_000);
    let ns = srv.namespace_dir("ns-0");
    // A client's upload in progress holds 5 to 6 MB in the namespace's tmp/.
    let stop = stalled_put(&srv, 8_000_000, 6_000_000);
    let tmp_bytes = || -> u64 {
        tmp_files(&ns)
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    wait_for("the stalled upload in tmp/", || tmp_bytes() >= 4_900_000);
    let live = tmp_files(&ns);
    // Those bytes count against the quota: 4 MB more do not fit in 8.
    let r = run(srv.client(0, &cache), &["backup", src.to_str().unwrap()]).fails();
    assert!(r.stderr().contains("quota"), "{}", r.stderr());
    assert_eq!(
        tmp_files(&ns),
        live,
        "a client's session took a live upload"
    );
    // The server is killed mid-upload; the next session sweeps what it left.
    srv.restart();
    drop(stop);
    run(srv.client(0, &cache), &["backup", src.to_str().unwrap()]).ok();
    assert!(
        tmp_files(&ns).is_disjoint(&live),
        "left over: {:?}",
        tmp_files(&ns)
    );
    run(srv.client(0, &cache), &["check", "--read-data"]).ok();
}

// See: issue 18 ("prune … blames the clock when the real cause was an
// unreadable snapshot").
#[test]
fn r18_prune_names_an_unreadable_snapshot_as_the_cause_not_the_clock() {
    let t = TestRepo::new();
    setup(&t, "a", 2, 300);
    setup(&t, "b", 2, 400);
    let files: Vec<PathBuf> = walk(&t.repo.join("snapshots"))
        .into_iter()
        .filter(|p| p.extension().is_none())
        .collect();
    assert_eq!(files.len(), 2);
    let bad = files[0].clone();
    fs::write(&bad, b"not a snapshot").unwrap();
    let r = t.run(&["prune"]);
    assert_eq!(r.code(), 5, "{}", r.stderr());
    let (out, err) = (r.stdout(), r.stderr());
    assert!(err.contains(&file_name(&bad)[..8]), "{err}");
    assert!(err.contains("unreadable"), "{err}");
    assert!(!err.contains("clock"), "{err}");
    assert!(out.contains("2 kept"), "{out}");
    assert!(out.contains("no pack collected"), "{out}");
}

/// The campaign's seed: `COFFER_TEST_SEED` to repeat a run, else the clock.
/// Printed, so a failing run shows it.
fn campaign_seed() -> u64 {
    let seed = std::env::var("COFFER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("campaign seed {seed} (repeat with COFFER_TEST_SEED={seed})");
    seed
}

/// The next number of a seeded sequence (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Starts `cmd`, kills it with SIGKILL after `ms` milliseconds (if it is
/// still running), and reaps it.
fn kill_after(mut cmd: std::process::Command, ms: u64) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    child.wait().unwrap();
}

/// Packs that do not hash to their name.
fn unsound_packs(t: &TestRepo) -> BTreeSet<PathBuf> {
    t.packs()
        .into_iter()
        .filter(|p| coffer::id::PackId::of(&fs::read(p).unwrap()).to_hex() != file_name(p))
        .collect()
}

// See: issue 18 (campaigns: kill -9 of scrub at random points).
#[test]
fn r18_campaign_scrub_killed_at_random_points_loses_nothing() {
    let seed = campaign_seed();
    let mut rng = seed | 1;
    let t = TestRepo::new();
    let src = setup(&t, "src", 30, 500);
    let snap = t.snapshots()[0]["id"].as_str().unwrap().to_string();
    // Damage within the budget for the scrubs to repair: per stripe, one
    // member and one parity file.
    for (members, parity) in stripes(&t).values() {
        rot_in_place(&members[(next(&mut rng) % members.len() as u64) as usize]);
        rot_in_place(&parity[0]);
    }
    let damaged = unsound_packs(&t);
    assert!(!damaged.is_empty());
    for round in 0..5 {
        // A pass at 8 MB/s takes about 1.5 s: killed anywhere in it.
        let ms = next(&mut rng) % 1500;
        let mut c = t.command();
        c.args(["scrub", "--rate-mb", "8"]);
        kill_after(c, ms);
        // A kill damages nothing more: every pack is whole, or one of the
        // damaged ones not repaired yet.
        let bad = unsound_packs(&t);
        assert!(
            bad.is_subset(&damaged),
            "seed {seed}, round {round}, killed after {ms} ms: {bad:?}"
        );
    }
    // A rerun completes and repairs what is left; the next pass is clean.
    let r = t.run(&["--json", "scrub"]);
    let v = r.json();
    assert_eq!(r.code(), 0, "seed {seed}: {v}");
    let again = t.run(&["--json", "scrub"]).json();
    assert_eq!(
        again[0]["report"]["damaged_blocks"], 0,
        "seed {seed}: {again}"
    );
    assert!(unsound_packs(&t).is_empty(), "seed {seed}");
    let parts: Vec<PathBuf> = tmp_files(&t.repo).into_iter().collect();
    assert!(parts.is_empty(), "seed {seed}: left in tmp/: {parts:?}");
    t.run(&["check", "--read-data"]).ok();
    assert_restores(&t, &snap, &src, "out");
}

/// The binary for `t` with the clock shifted by `offset` (libfaketime).
fn at(t: &TestRepo, offset: &str) -> std::process::Command {
    let mut c = crate::retention::faked(offset);
    c.env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", &t.cache)
        .arg("--repo")
        .arg(&t.repo);
    c
}

// See: issue 18 (campaigns: kill -9 of prune at random points).
#[test]
fn r18_campaign_prune_killed_at_random_points_loses_nothing() {
    if !crate::retention::faketime() {
        return;
    }
    let seed = campaign_seed();
    let mut rng = seed | 1;
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut last = String::new();
    for round in 0..5u64 {
        // One job backed up twice, 20 days apart; on day 31 the first
        // expires and the packs only it used are collected.
        let day = |d: u64| format!("+{}d", 40 * round + d);
        for (d, s) in [(0, 2 * round), (20, 2 * round + 1)] {
            fs::write(src.join("f"), random_bytes(700 + s, 1_500_000)).unwrap();
            run(at(&t, &day(d)), &["backup", src.to_str().unwrap()]).ok();
        }
        last = day(31);
        let ms = next(&mut rng) % 150;
        let mut c = at(&t, &last);
        c.arg("prune");
        kill_after(c, ms);
        // What the newest snapshot needs is all there.
        let r = run(at(&t, &last), &["check", "--read-data"]);
        assert_eq!(
            r.code(),
            0,
            "seed {seed}, round {round}, {ms} ms: {}",
            r.stderr()
        );
        let out = t.path(&format!("out{round}"));
        run(
            at(&t, &last),
            &["restore", "latest", "--target", out.to_str().unwrap()],
        )
        .ok();
        assert!(
            fs::read(restored(&out, &src).join("f")).unwrap()
                == random_bytes(700 + 2 * round + 1, 1_500_000),
            "seed {seed}, round {round}"
        );
    }
    // A rerun completes, and the scrub after it finds nothing lost.
    run(at(&t, &last), &["prune"]).ok();
    let r = run(at(&t, &last), &["--json", "scrub"]);
    assert_eq!(r.code(), 0, "seed {seed}: {}", r.stdout());
    run(at(&t, &last), &["check", "--read-data"]).ok();
}

/// Holds an exclusive flock on `path` until dropped, as a live coffer
/// process holds its lock files.
fn hold_lock(path: &std::path::Path) -> nix::fcntl::Flock<fs::File> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap()
}

// See: issue 18, item 12 (found in review)
#[test]
fn r18_prune_never_removes_a_partial_file_its_writer_holds_however_old() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(50, 10_000)).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    // A repair's partial file carries its pack's old time; its writer lives.
    let part = t.repo.join("tmp").join("0123456789abcdef.part");
    fs::write(&part, b"being written").unwrap();
    let held = hold_lock(&part);
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(&part, old).unwrap();
    t.run(&["prune"]).ok();
    assert!(part.exists(), "a held partial file was removed");
    // Once nobody holds it, the next prune removes it whatever its age.
    drop(held);
    filetime::set_file_mtime(&part, filetime::FileTime::now()).unwrap();
    t.run(&["prune"]).ok();
    assert!(!part.exists());
}

// See: issue 18, item 12 (found in review)
#[test]
fn r18_two_prunes_of_one_repository_run_one_after_the_other() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(51, 10_000)).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    // Another prune is running: this one waits for it.
    let held = hold_lock(&t.repo.join("prune.lock"));
    let mut child = t
        .command()
        .arg("prune")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        child.try_wait().unwrap().is_none(),
        "prune ran beside another"
    );
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "prune never finished");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success());
}
