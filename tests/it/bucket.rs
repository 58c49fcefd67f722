//! A real `coffer serve` whose namespaces live in a bucket of a real S3
//! store (SeaweedFS, see `weed.rs`): backups and restores through it, the
//! bucket's own lock behind coffer's (tried with the server's credentials
//! used directly), and a server rebuilt from the bucket alone.

use std::fs;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use coffer::object::s3::S3Backend;
use coffer::object::{LockMode, ObjectBackend, ObjectKey};
use coffer::store::Store;
use coffer::ErrorKind;

use crate::object::keys;
use crate::server::{init_args, run, serve_refuses, TestServer};
use crate::util::*;
use crate::weed::Weed;

/// The `[storage]` table of a server on `bucket` of `weed`.
pub(crate) fn storage(weed: &Weed, bucket: &str) -> String {
    format!(
        "[storage]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\nprefix = \"site-a/\"\nregion = \"us-east-1\"\ncredentials_file = \"{}\"\nlease = \"2s\"\n",
        weed.endpoint,
        weed.credentials.display()
    )
}

/// A server with `n` namespaces on a new locked bucket; `top` are
/// top-level keys.
pub(crate) fn server_on(weed: &Weed, bucket: &str, n: usize, top: &str) -> (TestServer, S3Backend) {
    let b = weed.bucket(bucket, true);
    let srv = TestServer::start_full(n, "", &format!("{top}\n{}", storage(weed, bucket)), &[]);
    (srv, b)
}

/// Relative paths of the files under `dir/sub`, sorted.
fn files(dir: &Path, sub: &str) -> Vec<String> {
    walk(&dir.join(sub))
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The bucket keys of what namespace `ns` of `srv` holds on its disk
/// (config, key files, packs, snapshots and stamps), sorted.
fn local_keys(srv: &TestServer, ns: &str) -> Vec<String> {
    let dir = srv.namespace_dir(ns);
    let mut v: Vec<String> = ["keys", "packs", "snapshots"]
        .iter()
        .flat_map(|d| files(&dir, d))
        .chain(dir.join("config").is_file().then(|| "config".to_string()))
        .map(|p| format!("namespaces/{ns}/{p}"))
        .collect();
    v.sort();
    v
}

/// The keys of namespace `ns` in the bucket, but its settings (`*.json`)
/// and the parity of sealed stripes (which the parity test compares).
fn bucket_keys(b: &S3Backend, ns: &str) -> Vec<String> {
    keys(b, &format!("namespaces/{ns}/"))
        .into_iter()
        .filter(|k| !k.ends_with(".json") && !k.contains("/parity/"))
        .collect()
}

/// The bucket holds every object of namespace `ns` that `srv` holds on
/// its disk, and nothing more.
pub(crate) fn assert_mirrored(srv: &TestServer, b: &S3Backend, ns: &str) {
    assert_eq!(bucket_keys(b, ns), local_keys(srv, ns), "namespace {ns}");
}

/// Waits (bounded) until client 0's namespace is served: a lease another
/// data directory held must lapse first.
fn wait_served(srv: &TestServer, cache: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = srv.client(0, cache).args(["snapshots"]).output().unwrap();
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("served by another server") || err.contains("being rebuilt"),
            "{err}"
        );
        assert!(std::time::Instant::now() < deadline, "never served: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Backs `src` up as client `i`; returns the snapshot id.
fn backup_as(srv: &TestServer, i: usize, cache: &Path, src: &Path) -> String {
    let v = run(
        srv.client(i, cache),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json();
    v["id"].as_str().unwrap().to_string()
}

fn stamp_of(ns_dir: &Path, snap: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(ns_dir.join(format!("snapshots/{snap}.stamp"))).unwrap())
        .unwrap()
}

#[test]
fn a_server_on_a_bucket_backs_up_restores_and_is_rebuilt_from_the_bucket_alone() {
    let Some(weed) = Weed::start() else { return };
    let (mut srv, b) = server_on(&weed, "coffer-a", 1, "lock_days = 30");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    let snap = backup_as(&srv, 0, &cache, &src);
    let target = work.path().join("restore-1");
    run(
        srv.client(0, &cache),
        &["restore", &snap, "--target", target.to_str().unwrap()],
    )
    .ok();
    assert_same_tree(&src, &restored(&target, &src));

    // Every object of the namespace is in the bucket under its own name.
    let ns = srv.namespace_dir("ns-0");
    assert_mirrored(&srv, &b, "ns-0");
    let local = local_keys(&srv, "ns-0");
    let packs = files(&ns, "packs");
    assert!(!packs.is_empty());

    // Each pack and the snapshot are locked in the bucket at least as long
    // as the snapshot's lock, and the server's own credentials cannot
    // purge them or shorten the lock (coffer's checks bypassed).
    let locked_until = stamp_of(&ns, &snap)["locked_until"].as_i64().unwrap();
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(locked_until as u64);
    for rel in packs.iter().chain([&format!("snapshots/{snap}")]) {
        let key = ObjectKey::new(format!("namespaces/ns-0/{rel}")).unwrap();
        let head = b.head(&key, None).unwrap().unwrap();
        let r = head.retention.expect("retention");
        assert!(r.until >= until, "{rel}: {:?} < {until:?}", r.until);
        let e = b.delete_version(&key, &head.version).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{rel}: {e}");
        let full = format!("site-a/namespaces/ns-0/{rel}");
        let shorten = b.raw(|c| async move {
            c.put_object_retention()
                .bucket("coffer-a")
                .key(full)
                .retention(
                    aws_sdk_s3::types::ObjectLockRetention::builder()
                        .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Compliance)
                        .retain_until_date(aws_sdk_s3::primitives::DateTime::from(
                            SystemTime::now() + Duration::from_secs(60),
                        ))
                        .build(),
                )
                .send()
                .await
        });
        assert!(shorten.is_err(), "{rel}: the lock was shortened");
        assert!(
            b.head(&key, None)
                .unwrap()
                .unwrap()
                .retention
                .unwrap()
                .until
                >= until
        );
    }

    // The server's disk dies: a new data directory, rebuilt from the
    // bucket, serves the same snapshot with its stamp.
    let stamp_before = stamp_of(&ns, &snap);
    srv.stop();
    fs::remove_dir_all(srv.dir.path().join("data")).unwrap();
    srv.args = vec!["--rebuild".into()];
    srv.start_again();
    assert!(
        srv.log().contains("rebuilt namespace ns-0"),
        "{}",
        srv.log()
    );
    // The dead server's lease lapses first (2 s here).
    wait_served(&srv, &work.path().join("cache-wait"));
    assert_eq!(local_keys(&srv, "ns-0"), local);
    assert_eq!(stamp_of(&ns, &snap), stamp_before);
    // A client with a fresh cache restores byte for byte.
    let cache2 = work.path().join("cache2");
    let target = work.path().join("restore-2");
    run(
        srv.client(0, &cache2),
        &["restore", &snap, "--target", target.to_str().unwrap()],
    )
    .ok();
    assert_same_tree(&src, &restored(&target, &src));
    // And backs up again into it.
    fs::write(src.join("new-after-rebuild"), random_bytes(99, 300_000)).unwrap();
    run(srv.client(0, &cache2), &["backup", src.to_str().unwrap()]).ok();
}

#[test]
fn a_lock_reaches_the_bucket_before_the_stamp_reports_it() {
    let Some(weed) = Weed::start() else { return };
    let (srv, b) = server_on(&weed, "coffer-lock", 1, "lock_days = 1");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    let snap = backup_as(&srv, 0, &cache, &src);
    run(srv.client(0, &cache), &["lock", &snap, "--days", "90"]).ok();
    let ns = srv.namespace_dir("ns-0");
    let locked_until = stamp_of(&ns, &snap)["locked_until"].as_i64().unwrap();
    assert!(locked_until > 80 * 86_400 + now_secs());
    let until = SystemTime::UNIX_EPOCH + Duration::from_secs(locked_until as u64);
    let stamp_rel = format!("snapshots/{snap}.stamp");
    for rel in files(&ns, "packs")
        .iter()
        .chain([&format!("snapshots/{snap}"), &stamp_rel])
    {
        let key = ObjectKey::new(format!("namespaces/ns-0/{rel}")).unwrap();
        let r = b.head(&key, None).unwrap().unwrap().retention.unwrap();
        assert!(r.until >= until, "{rel}: {:?} < {until:?}", r.until);
    }
    // A hold reaches the bucket too.
    run(srv.client(0, &cache), &["lock", &snap, "--hold"]).ok();
    for rel in files(&ns, "packs")
        .iter()
        .chain([&format!("snapshots/{snap}")])
    {
        let key = ObjectKey::new(format!("namespaces/ns-0/{rel}")).unwrap();
        assert!(b.head(&key, None).unwrap().unwrap().legal_hold, "{rel}");
    }
    // The operator's release takes the holds off in the bucket too (the
    // lock stays), or a forgotten snapshot's versions would never go.
    let out = srv.operator(&["lock", "--namespace", "ns-0", &snap[..12], "--release-hold"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for rel in files(&ns, "packs")
        .iter()
        .chain([&format!("snapshots/{snap}"), &stamp_rel])
    {
        let key = ObjectKey::new(format!("namespaces/ns-0/{rel}")).unwrap();
        for v in b.list_versions(&key).unwrap() {
            let h = b.head(&key, Some(&v.version)).unwrap().unwrap();
            assert!(!h.legal_hold, "{rel} {:?} still held", v.version);
        }
        let r = b.head(&key, None).unwrap().unwrap().retention.unwrap();
        assert!(r.until >= until, "{rel}: the lock went with the hold");
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn the_server_refuses_a_bucket_it_cannot_trust_by_name() {
    let Some(weed) = Weed::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("server.id");
    crate::server::identity(&id);
    let base = format!(
        "listen = \"127.0.0.1:0\"\ndata = \"{}\"\nidentity = \"{}\"\n",
        dir.path().join("data").display(),
        id.display()
    );
    let cfg = dir.path().join("server.toml");
    let err = serve_refuses(&cfg, &format!("{base}{}", storage(&weed, "missing")));
    assert!(err.contains("does not exist"), "{err}");
    weed.bucket("plain", false);
    let err = serve_refuses(&cfg, &format!("{base}{}", storage(&weed, "plain")));
    assert!(
        err.contains("versioning") || err.contains("Object Lock"),
        "{err}"
    );
    // Unknown keys are refused as everywhere in the config.
    let err = serve_refuses(
        &cfg,
        &format!("{base}{}colour = \"blue\"\n", storage(&weed, "plain")),
    );
    assert!(err.contains("colour"), "{err}");
    // Credentials others may read are refused before any request.
    let loose = dir.path().join("loose.credentials");
    fs::copy(&weed.credentials, &loose).unwrap();
    fs::set_permissions(
        &loose,
        <fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .unwrap();
    let text = format!("{base}{}", storage(&weed, "plain")).replace(
        &weed.credentials.display().to_string(),
        &loose.display().to_string(),
    );
    let err = serve_refuses(&cfg, &text);
    assert!(err.contains("loose.credentials"), "{err}");
}

/// A store over a bucket of `weed`, with a lock window of `lock_secs`, no
/// grace for unreferenced packs and the clock `clock`.
fn bucket_store(
    weed: &Weed,
    bucket: &str,
    root: &Path,
    lock_secs: i64,
    clock: coffer::store::Clock,
) -> (coffer::store::LocalStore, S3Backend) {
    let raw = weed.bucket(bucket, true);
    let backend: std::sync::Arc<dyn ObjectBackend> =
        std::sync::Arc::new(weed.backend(bucket, LockMode::Compliance));
    let policy = coffer::retention::Policy {
        lock_secs,
        retention_secs: lock_secs.max(1),
        grace_secs: 0,
        ..Default::default()
    };
    let store = coffer::store::LocalStore::create(root)
        .unwrap()
        .with_policy(policy)
        .with_clock(clock);
    let b = coffer::store::Bucket::open(backend, "ns", LockMode::Compliance, root).unwrap();
    (store.with_bucket(std::sync::Arc::new(b)), raw)
}

/// Uploads `bytes` as a pack; returns its key in the bucket.
fn put_pack(store: &coffer::store::LocalStore, bytes: &[u8]) -> (coffer::id::PackId, ObjectKey) {
    let mut h = coffer::id::PackHasher::default();
    h.update(bytes);
    let id = h.finalize();
    let mut up = store.upload_pack().unwrap();
    std::io::Write::write_all(&mut up, bytes).unwrap();
    assert!(up.commit(id).unwrap());
    let hex = id.to_hex();
    (
        id,
        ObjectKey::new(format!("namespaces/ns/packs/{}/{hex}", &hex[..2])).unwrap(),
    )
}

#[test]
fn a_collected_pack_gets_a_marker_keeps_its_locked_version_then_is_purged() {
    let Some(weed) = Weed::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A lock window of 3 s: a new pack is retained 6 s (the window, and as
    // much slack).
    let (store, b) = bucket_store(
        &weed,
        "coffer-gc",
        dir.path(),
        3,
        coffer::store::system_clock(),
    );
    let (_, key) = put_pack(&store, &random_bytes(1, 200_000));
    let head = b.head(&key, None).unwrap().unwrap();
    assert!(head.retention.is_some());

    // Referenced by nothing: prune collects it. It leaves the listing at
    // once (a marker), its version stays while retained.
    let rep = store.prune().unwrap();
    assert_eq!(rep.packs_removed, 1, "{rep:?}");
    let purge = rep.bucket.clone().unwrap();
    assert_eq!(purge.objects_waiting, 1, "{rep:?}");
    assert!(b.head(&key, None).unwrap().is_none());
    let versions = b.list_versions(&key).unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions[0].is_delete_marker);
    assert_eq!(
        b.delete_version(&key, &versions[1].version)
            .unwrap_err()
            .kind(),
        ErrorKind::Denied
    );

    // Past its retention, the next sweep purges the version and the marker.
    crate::object::wait_past(&b, head.retention.unwrap().until);
    let rep = store.prune().unwrap();
    let purge = rep.bucket.unwrap();
    assert_eq!(
        (purge.objects_done, purge.objects_waiting),
        (1, 0),
        "{purge:?}"
    );
    assert_eq!(purge.versions_purged, 2);
    assert!(b.list_versions(&key).unwrap().is_empty());
}

#[test]
fn a_pack_needed_again_after_its_marker_is_stored_again() {
    let Some(weed) = Weed::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (store, b) = bucket_store(
        &weed,
        "coffer-again",
        dir.path(),
        3,
        coffer::store::system_clock(),
    );
    let bytes = random_bytes(2, 150_000);
    let (id, key) = put_pack(&store, &bytes);
    store.prune().unwrap();
    assert!(b.head(&key, None).unwrap().is_none(), "collected");
    // A new backup brings the same pack: stored again, over the marker.
    put_pack(&store, &bytes);
    let head = b.head(&key, None).unwrap().expect("stored again");
    assert_eq!(head.size, bytes.len() as u64);
    assert_eq!(
        b.get_range(&key, None, 0..bytes.len() as u64).unwrap(),
        bytes
    );
    // Its old version is still there beneath, under its retention.
    assert_eq!(b.list_versions(&key).unwrap().len(), 3);
    assert!(store.pack_size(&id).unwrap().is_some());
}

#[test]
fn a_bucket_clock_an_hour_off_purges_nothing() {
    let Some(weed) = Weed::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Our clock an hour ahead of the bucket's: every retention looks lapsed
    // to us, none is to the bucket.
    let clock: coffer::store::Clock = std::sync::Arc::new(|| now_secs() + 3600);
    let (store, b) = bucket_store(&weed, "coffer-skew", dir.path(), 0, clock);
    let (_, key) = put_pack(&store, &random_bytes(3, 100_000));
    let rep = store.prune().unwrap();
    assert_eq!(rep.packs_removed, 1, "{rep:?}");
    let purge = rep.bucket.unwrap();
    let why = purge.refused.expect("refused");
    assert!(why.contains("clock"), "{why}");
    assert_eq!(purge.versions_purged, 0);
    // The marker is there, the version too.
    assert_eq!(b.list_versions(&key).unwrap().len(), 2);
}

#[test]
fn two_servers_share_a_bucket_with_disjoint_namespaces_and_never_the_same_one() {
    let Some(weed) = Weed::start() else { return };
    weed.bucket("shared", true);
    let table = storage(&weed, "shared");
    // Server A serves ns-0; server B is configured for ns-0 and ns-1.
    let mut a = TestServer::start_full(1, "", &table, &[]);
    let b = TestServer::start_full(2, "", &table, &[]);
    let work = tempfile::tempdir().unwrap();
    let (ca, cb0, cb1) = (
        work.path().join("ca"),
        work.path().join("cb0"),
        work.path().join("cb1"),
    );
    run(a.client(0, &ca), &init_args()).ok();
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    let snap = backup_as(&a, 0, &ca, &src);
    // B serves its own namespace beside A.
    run(b.client(1, &cb1), &init_args()).ok();
    backup_as(&b, 1, &cb1, &src);
    // ...but refuses A's, naming the reason, and writes nothing there.
    let out = b.client(0, &cb0).args(init_args()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("served by another server"), "{err}");
    assert!(!b.namespace_dir("ns-0").join("config").exists());

    // A stops: once its lease lapses, B takes ns-0 over, rebuilds its
    // copy from the bucket and serves A's snapshot, byte for byte.
    a.stop();
    wait_served(&b, &cb0);
    let target = work.path().join("restore-b");
    run(
        b.client(0, &cb0),
        &["restore", &snap, "--target", target.to_str().unwrap()],
    )
    .ok();
    assert_same_tree(&src, &restored(&target, &src));
    assert!(b.log().contains("lease taken"), "{}", b.log());
}

/// The bytes the kill tests back up from standard input: 1 MiB packs, so
/// some sixty of them, uploaded one after the other.
const STREAM_BYTES: usize = 64 << 20;

/// Starts `backup --stdin` of `data` as client 0, fed by a thread (the
/// caller goes on while it runs).
fn spawn_backup_stdin(
    srv: &TestServer,
    cache: &Path,
    data: &Arc<Vec<u8>>,
) -> (Child, std::thread::JoinHandle<()>) {
    let mut c = srv.client(0, cache);
    c.args(["--json", "backup", "--stdin", "--stdin-name", "stream"]);
    spawn_fed(&mut c, data.clone())
}

/// Whether the pack file at `path` is named by the hash of its bytes.
fn whole(name: &str, bytes: &[u8]) -> bool {
    coffer::id::PackId::of(bytes).to_hex() == name
}

/// Whether `key` is a name of the bucket's layout: a lease, or a
/// namespace's config, key file, pack, snapshot, stamp or setting.
fn in_layout(key: &str) -> bool {
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match key.split('/').collect::<Vec<_>>().as_slice() {
        ["leases", ns] => !ns.is_empty(),
        ["namespaces", _, "config" | "policy.json" | "parity.json"] => true,
        ["namespaces", _, "keys", name] => !name.is_empty(),
        ["namespaces", _, "packs", shard, name] => {
            shard.len() == 2 && name.starts_with(shard) && hex64(name)
        }
        ["namespaces", _, "snapshots", name] => {
            hex64(name) || name.strip_suffix(".stamp").is_some_and(hex64)
        }
        ["namespaces", _, "parity", name] => name
            .split_once('.')
            .is_some_and(|(stripe, i)| stripe.len() == 16 && i.parse::<u16>().is_ok()),
        _ => false,
    }
}

/// Nothing partial is visible in namespace ns-0 of `srv` on `b`: the
/// bucket holds only names of its layout and every object the disk holds;
/// what only the bucket holds is a whole pack (sent before a kill, never
/// linked here), the stamp of a snapshot that never came, or a whole
/// snapshot whose every pack is there (its commit was cut off between the
/// bucket and the disk); every pack on the disk is whole.
fn assert_nothing_partial(srv: &TestServer, b: &S3Backend) {
    let all = keys(b, "");
    let outside: Vec<&String> = all.iter().filter(|k| !in_layout(k)).collect();
    assert!(outside.is_empty(), "outside the layout: {outside:?}");
    let in_bucket = bucket_keys(b, "ns-0");
    let local = local_keys(srv, "ns-0");
    let missing: Vec<&String> = local.iter().filter(|k| !in_bucket.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "on the disk, not in the bucket: {missing:?}"
    );
    for k in in_bucket.iter().filter(|k| !local.contains(k)) {
        let rel = &k["namespaces/ns-0/".len()..];
        let key = ObjectKey::new(k.clone()).unwrap();
        match rel.split('/').collect::<Vec<_>>().as_slice() {
            ["packs", _, name] => {
                let size = b.head(&key, None).unwrap().unwrap().size;
                assert!(
                    whole(name, &b.get_range(&key, None, 0..size).unwrap()),
                    "{k}"
                );
            }
            ["snapshots", name] if name.ends_with(".stamp") => {}
            // killed between the bucket and the disk (the commit's last
            // step): whole there, every pack it lists is in the bucket,
            // and the restart brings it here (`assert_mirrored` after it)
            ["snapshots", _] => {
                let size = b.head(&key, None).unwrap().unwrap().size;
                let bytes = b.get_range(&key, None, 0..size).unwrap();
                let file = coffer::format::snapshot::decode(&bytes).expect("a whole snapshot");
                for p in file.packs {
                    let hex = p.to_hex();
                    let pk = ObjectKey::new(format!("namespaces/ns-0/packs/{}/{hex}", &hex[..2]))
                        .unwrap();
                    assert!(
                        b.head(&pk, None).unwrap().is_some(),
                        "{k} lists {hex}, absent"
                    );
                }
            }
            _ => panic!("only in the bucket: {k}"),
        }
    }
    for p in walk(&srv.namespace_dir("ns-0").join("packs")) {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(whole(name, &fs::read(&p).unwrap()), "{}", p.display());
    }
}

/// A server on a bucket is killed (SIGKILL) while client 0 backs up a
/// large stream, as soon as `when` holds of its namespace's directory.
/// Nothing partial is visible then; started again on the same data it
/// serves the client's rerun, which completes and restores byte for byte.
fn killed_while(bucket: &str, when: impl Fn(&Path) -> bool) {
    let Some(weed) = Weed::start() else { return };
    let (mut srv, b) = server_on(&weed, bucket, 1, "lock_days = 1");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let data = Arc::new(random_bytes(77, STREAM_BYTES));
    let (mut client, feed) = spawn_backup_stdin(&srv, &cache, &data);
    let ns = srv.namespace_dir("ns-0");
    let deadline = Instant::now() + Duration::from_secs(180);
    while !when(&ns) {
        if let Some(st) = client.try_wait().unwrap() {
            assert!(when(&ns), "the backup ended ({st}) before the kill point");
            break;
        }
        assert!(Instant::now() < deadline, "the kill point never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    let _ = client.kill();
    let _ = client.wait();
    feed.join().unwrap();
    assert_nothing_partial(&srv, &b);

    // Started again, it first brings its copy up to date with the bucket.
    srv.start_again();
    wait_served(&srv, &cache);
    assert_mirrored(&srv, &b, "ns-0");
    let before = files(&ns, "snapshots").len();
    let (rerun, feed) = spawn_backup_stdin(&srv, &cache, &data);
    let out = rerun.wait_with_output().unwrap();
    feed.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = snap["id"].as_str().unwrap();
    let dumped = run(srv.client(0, &cache), &["dump", snap, "stream"]).ok();
    assert!(dumped.out.stdout == *data, "the restore differs");
    run(srv.client(0, &cache), &["check", "--read-data"]).ok();
    assert_nothing_partial(&srv, &b);
    assert_mirrored(&srv, &b, "ns-0");
    // the rerun added its snapshot and stamp, and nothing else there
    assert_eq!(files(&ns, "snapshots").len(), before + 2);
}

#[test]
fn a_server_on_a_bucket_killed_mid_upload_shows_nothing_partial_and_the_rerun_completes() {
    // a dozen packs in: more are on their way
    killed_while("coffer-kill-upload", |ns| {
        walk(&ns.join("packs")).len() >= 12
    });
}

#[test]
fn a_server_on_a_bucket_killed_mid_commit_shows_nothing_partial_and_the_rerun_completes() {
    // the stamp is written first, in the bucket then here; the snapshot
    // file follows it in both
    killed_while("coffer-kill-commit", |ns| {
        fs::read_dir(ns.join("snapshots")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".stamp"))
        })
    });
}

#[test]
fn a_snapshot_the_bucket_got_before_a_kill_is_served_after_the_restart() {
    let Some(weed) = Weed::start() else { return };
    let (mut srv, b) = server_on(&weed, "coffer-gap", 1, "lock_days = 1");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let (snap, data) = crate::replication::backup_stdin(&srv, 0, &cache, "stream", 5);
    // The state of a kill between the snapshot's write to the bucket and
    // its write here (the commit's last step, a few microseconds wide).
    srv.stop();
    let ns = srv.namespace_dir("ns-0");
    fs::remove_file(ns.join(format!("snapshots/{snap}"))).unwrap();
    // Started again, the server serves what the bucket holds: the
    // snapshot is committed there (and a disk rebuilt from the bucket
    // would show it), so it is here too, and not left in the bucket alone
    // for a prune here to collect its packs from under it.
    srv.start_again();
    wait_served(&srv, &cache);
    assert_mirrored(&srv, &b, "ns-0");
    let dumped = run(srv.client(0, &cache), &["dump", &snap, "stream"]).ok();
    assert!(dumped.out.stdout == data);
    run(srv.client(0, &cache), &["check", "--read-data"]).ok();
}

/// The operator's `coffer --json scrub --config`; the report of `ns`.
fn scrub_report(srv: &TestServer, ns: &str) -> serde_json::Value {
    let out = srv.operator(&["--json", "scrub"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == ns)
        .unwrap()["report"]
        .clone()
}

/// Whether the latest version of `key` hashes to the pack name it ends in.
fn sound_in_bucket(b: &S3Backend, key: &ObjectKey) -> bool {
    let Some(h) = b.head(key, None).unwrap() else {
        return false;
    };
    let bytes = b.get_range(key, None, 0..h.size).unwrap();
    coffer::id::PackId::of(&bytes).to_hex() == key.as_str().rsplit('/').next().unwrap()
}

/// A server on a bucket in `mode` with one backup; its packs (relative
/// paths) and the snapshot.
fn scrub_setup(
    weed: &Weed,
    bucket: &str,
    mode: &str,
    work: &Path,
) -> (TestServer, S3Backend, Vec<String>, String) {
    let (srv, b) = server_on(weed, bucket, 1, "lock_days = 30");
    // the mode is the server's: rewrite its table
    let cfg = srv.dir.path().join("server.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replace("lease = ", &format!("lock_mode = \"{mode}\"\nlease = ")),
    )
    .unwrap();
    let mut srv = srv;
    srv.restart();
    let cache = work.join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.join("src");
    crate::backup::make_tree(&src);
    let snap = backup_as(&srv, 0, &cache, &src);
    let packs = files(&srv.namespace_dir("ns-0"), "packs");
    (srv, b, packs, snap)
}

fn restores(srv: &TestServer, work: &Path, snap: &str, name: &str) {
    let target = work.join(name);
    run(
        srv.client(0, &work.join(format!("cache-{name}"))),
        &["restore", snap, "--target", target.to_str().unwrap()],
    )
    .ok();
    let src = work.join("src");
    assert_same_tree(&src, &restored(&target, &src));
}

#[test]
fn scrub_rewrites_a_damaged_bucket_object_and_puts_back_a_lost_local_pack() {
    let Some(weed) = Weed::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let (srv, b, packs, snap) = scrub_setup(&weed, "coffer-scrub", "compliance", work.path());
    let ns = srv.namespace_dir("ns-0");
    let rel = &packs[0];
    let key = ObjectKey::new(format!("namespaces/ns-0/{rel}")).unwrap();
    // Bit rot in the bucket, as a tamperer with the server's credentials
    // or a failing disk under the store would leave it: a new version of
    // damaged bytes over the pack.
    let mut bad = fs::read(ns.join(rel)).unwrap();
    bad[100] ^= 0x40;
    b.put_version(&key, &bad, None).unwrap();
    assert!(!sound_in_bucket(&b, &key));
    let r = scrub_report(&srv, "ns-0");
    let rewritten = r["bucket"]["rewritten"].as_array().unwrap();
    assert_eq!(rewritten.len(), 1, "{r}");
    assert!(sound_in_bucket(&b, &key));
    // the damaged version is still there beneath (never deleted)
    assert!(b.list_versions(&key).unwrap().len() >= 3);
    // A second scrub finds nothing to do.
    let r = scrub_report(&srv, "ns-0");
    assert_eq!(r["bucket"]["rewritten"].as_array().unwrap().len(), 0, "{r}");

    // The local copy loses the pack and its parity: beyond repair here,
    // put back from the bucket.
    fs::remove_file(ns.join(rel)).unwrap();
    fs::remove_dir_all(ns.join("parity")).unwrap();
    let r = scrub_report(&srv, "ns-0");
    assert_eq!(
        r["bucket"]["fetched_back"].as_array().unwrap().len(),
        1,
        "{r}"
    );
    assert!(r["unrepairable"].as_array().unwrap().is_empty(), "{r}");
    assert!(ns.join(rel).exists());
    restores(&srv, work.path(), &snap, "restored");
}

#[test]
fn scrub_puts_back_a_pack_version_purged_with_a_governance_bypass() {
    let Some(weed) = Weed::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let (srv, b, packs, snap) = scrub_setup(&weed, "coffer-gov", "governance", work.path());
    let rel = &packs[0];
    let key = ObjectKey::new(format!("namespaces/ns-0/{rel}")).unwrap();
    let head = b.head(&key, None).unwrap().unwrap();
    assert_eq!(
        head.retention.unwrap().mode,
        LockMode::Governance,
        "the server asked for governance"
    );
    // Someone holding the bypass shortens the pack's lock: the scrub's
    // maintenance pass locks it again as long as it was given.
    let full = format!("site-a/namespaces/ns-0/{rel}");
    let (f2, v2) = (full.clone(), head.version.0.clone());
    b.raw(|c| async move {
        c.put_object_retention()
            .bucket("coffer-gov")
            .key(f2)
            .version_id(v2)
            .bypass_governance_retention(true)
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(aws_sdk_s3::types::ObjectLockRetentionMode::Governance)
                    .retain_until_date(aws_sdk_s3::primitives::DateTime::from(
                        SystemTime::now() + Duration::from_secs(3600),
                    ))
                    .build(),
            )
            .send()
            .await
    })
    .expect("the bypass shortens a governance lock");
    let short = b
        .head(&key, None)
        .unwrap()
        .unwrap()
        .retention
        .unwrap()
        .until;
    assert!(short < head.retention.unwrap().until);
    let r = scrub_report(&srv, "ns-0");
    assert_eq!(r["bucket"]["relocked"].as_array().unwrap().len(), 1, "{r}");
    assert!(r["bucket"]["locks_checked"].as_u64().unwrap() >= 1, "{r}");
    let again = b
        .head(&key, None)
        .unwrap()
        .unwrap()
        .retention
        .unwrap()
        .until;
    assert!(again >= head.retention.unwrap().until, "{again:?}");
    // coffer never sends the bypass; someone holding it purges the pack.
    let v = head.version.0.clone();
    b.raw(|c| async move {
        c.delete_object()
            .bucket("coffer-gov")
            .key(full)
            .version_id(v)
            .bypass_governance_retention(true)
            .send()
            .await
    })
    .expect("the bypass purges a governance version");
    assert!(b.head(&key, None).unwrap().is_none());
    let r = scrub_report(&srv, "ns-0");
    assert_eq!(r["bucket"]["rewritten"].as_array().unwrap().len(), 1, "{r}");
    assert!(sound_in_bucket(&b, &key));
    // Rebuilt from the bucket alone, every snapshot restores.
    let mut srv = srv;
    srv.stop();
    fs::remove_dir_all(srv.dir.path().join("data")).unwrap();
    srv.args = vec!["--rebuild".into()];
    srv.start_again();
    wait_served(&srv, &work.path().join("cache-wait"));
    restores(&srv, work.path(), &snap, "after-rebuild");
}

#[test]
fn sealed_stripes_parity_lives_in_the_bucket_is_scrubbed_and_rebuilt() {
    let Some(weed) = Weed::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let (mut srv, b) = server_on(
        &weed,
        "coffer-parity",
        1,
        "parity = \"2+1\"\nlock_days = 30",
    );
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let mut snaps = Vec::new();
    for seed in 0..4 {
        let name = format!("dump-{seed}.sql");
        snaps.push((
            crate::replication::backup_stdin(&srv, 0, &cache, &name, seed),
            name,
        ));
    }
    // The operator's scrub protects what the commits' own protect has not
    // yet, and sends the sealed stripes' parity.
    scrub_report(&srv, "ns-0");
    let ns = srv.namespace_dir("ns-0");
    let in_bucket = keys(&b, "namespaces/ns-0/parity/");
    assert!(!in_bucket.is_empty(), "no parity in the bucket");
    for k in &in_bucket {
        let rel = k.strip_prefix("namespaces/ns-0/").unwrap();
        let key = ObjectKey::new(k.clone()).unwrap();
        let h = b.head(&key, None).unwrap().unwrap();
        assert!(h.retention.is_some(), "{k} unlocked");
        let local = fs::read(ns.join(rel)).unwrap();
        assert_eq!(b.get_range(&key, None, 0..h.size).unwrap(), local, "{k}");
    }

    // A parity object damaged in the bucket is sent again by the scrub.
    let key = ObjectKey::new(in_bucket[0].clone()).unwrap();
    let h = b.head(&key, None).unwrap().unwrap();
    let mut bad = b.get_range(&key, None, 0..h.size).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    b.put_version(&key, &bad, None).unwrap();
    let r = scrub_report(&srv, "ns-0");
    let rewritten = r["bucket"]["parity"]["rewritten"].as_array().unwrap();
    assert_eq!(rewritten.len(), 1, "{r}");
    let rel = in_bucket[0].strip_prefix("namespaces/ns-0/").unwrap();
    assert_eq!(
        b.get_range(&key, None, 0..h.size).unwrap(),
        fs::read(ns.join(rel)).unwrap()
    );

    // Rebuilt from the bucket alone, the parity comes back with the packs:
    // a pack lost afterwards is repaired from it, not fetched.
    srv.stop();
    fs::remove_dir_all(srv.dir.path().join("data")).unwrap();
    srv.args = vec!["--rebuild".into()];
    srv.start_again();
    wait_served(&srv, &work.path().join("cache-wait"));
    let parity_files = files(&ns, "parity")
        .into_iter()
        .filter(|p| !p.contains("index"))
        .count();
    assert_eq!(parity_files, in_bucket.len());
    let packs = files(&ns, "packs");
    fs::remove_file(ns.join(&packs[0])).unwrap();
    let r = scrub_report(&srv, "ns-0");
    assert_eq!(r["repaired_packs"].as_array().unwrap().len(), 1, "{r}");
    assert!(
        r["bucket"]["fetched_back"].as_array().unwrap().is_empty(),
        "{r}"
    );
    for (snap, name) in &snaps {
        let out = srv
            .client(0, &cache)
            .args(["dump", &snap.0, name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, snap.1, "{name}");
    }
}

#[test]
fn a_reload_that_moves_the_store_is_refused_and_the_bucket_stays() {
    let Some(weed) = Weed::start() else { return };
    let (srv, b) = server_on(&weed, "coffer-reload", 1, "");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let cfg = srv.dir.path().join("server.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, text.replace("\"coffer-reload\"", "\"elsewhere\"")).unwrap();
    crate::reload::hup(&srv);
    crate::reload::wait_log(&srv, "`[storage]` changed", 1);
    // Still on the first bucket: a backup after the reload lands there.
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    backup_as(&srv, 0, &cache, &src);
    assert_mirrored(&srv, &b, "ns-0");
}
