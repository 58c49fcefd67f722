//! The local store on real directories.

use super::*;

#[test]
fn pack_upload_is_write_once_and_checked() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStore::create(&d.path().join("r")).unwrap();
    let bytes = b"pack bytes".to_vec();
    let id = PackId::of(&bytes);
    let mut u = s.upload_pack().unwrap();
    u.write_all(&bytes).unwrap();
    assert!(u.commit(id).unwrap());
    let mut u = s.upload_pack().unwrap();
    u.write_all(&bytes).unwrap();
    assert!(!u.commit(id).unwrap(), "second writer must not replace");
    let mut u = s.upload_pack().unwrap();
    u.write_all(b"other").unwrap();
    assert!(
        u.commit(id).is_err(),
        "a name must be the hash of the bytes"
    );
    assert_eq!(s.read_pack(&id, 0, bytes.len()).unwrap(), bytes);
    // nothing left in tmp
    assert_eq!(fs::read_dir(d.path().join("r/tmp")).unwrap().count(), 0);
}

#[test]
fn pack_spans_give_the_bytes_at_any_offset_and_length() {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStore::create(&d.path().join("r")).unwrap();
    let bytes: Vec<u8> = (0..3 * 4096 + 1234u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let id = PackId::of(&bytes);
    let mut u = s.upload_pack().unwrap();
    u.write_all(&bytes).unwrap();
    assert!(u.commit(id).unwrap());
    let n = bytes.len();
    let mut buf = Vec::new();
    for (off, len) in [
        (0, 1),
        (0, n),
        (4095, 2),
        (4096, 4096),
        (5000, n - 5000),
        (n - 1, 1),
        (100, 8000),
    ] {
        let r = s.read_pack_span(&id, off as u64, len, &mut buf).unwrap();
        assert_eq!(&buf[r], &bytes[off..off + len], "{off}+{len}");
        // and through the cache, as where the file system refuses O_DIRECT
        s.direct_io
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let r = s.read_pack_span(&id, off as u64, len, &mut buf).unwrap();
        assert_eq!(&buf[r], &bytes[off..off + len], "cached {off}+{len}");
        s.direct_io
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // and by the direct path itself, where the file system has one
        if let Some(r) = s.read_direct(&id, off as u64, len, &mut buf).unwrap() {
            assert_eq!(&buf[r], &bytes[off..off + len], "direct {off}+{len}");
        }
    }
    assert!(matches!(
        s.read_pack_span(&id, n as u64 - 10, 11, &mut buf),
        Err(Error::Corrupt(_))
    ));
    let missing = PackId::of(b"none");
    assert!(matches!(
        s.read_pack_span(&missing, 0, 1, &mut buf),
        Err(Error::NotFound(_))
    ));
}

/// A store whose clock the test sets.
fn store_at(root: &Path, t: &Arc<std::sync::atomic::AtomicI64>) -> LocalStore {
    let t = t.clone();
    LocalStore::create(root)
        .unwrap()
        .with_clock(Arc::new(move || {
            t.load(std::sync::atomic::Ordering::SeqCst)
        }))
}

fn pack(s: &LocalStore, bytes: &[u8]) -> PackId {
    let id = PackId::of(bytes);
    let mut u = s.upload_pack().unwrap();
    u.write_all(bytes).unwrap();
    u.commit(id).unwrap();
    id
}

/// A snapshot file listing `packs`; the store never opens the sealed part.
fn snapshot_file(packs: &[PackId], sealed: u8) -> Vec<u8> {
    let mut packs = packs.to_vec();
    packs.sort();
    let mut b = snapshot::MAGIC_SNAPSHOT.to_vec();
    b.extend((packs.len() as u32).to_le_bytes());
    for p in &packs {
        b.extend(p.as_bytes());
    }
    b.push(sealed);
    b
}

fn usage(new_bytes: u64, referenced_bytes: u64) -> Option<SnapshotUsage> {
    Some(SnapshotUsage {
        new_bytes,
        referenced_bytes,
    })
}

#[test]
fn usage_is_best_effort_and_never_fails_a_commit() {
    let d = tempfile::tempdir().unwrap();
    let t = Arc::new(std::sync::atomic::AtomicI64::new(1000));
    let set = |v| t.store(v, std::sync::atomic::Ordering::SeqCst);
    let s = store_at(&d.path().join("r"), &t);
    let a = pack(&s, b"aaaa");
    let s1 = s.write_snapshot(&snapshot_file(&[a], 1), None).unwrap();
    assert_eq!(s.stamp(&s1).unwrap().usage, usage(4, 4));
    set(1010);
    let b = pack(&s, b"bbbbbb");
    let s2 = s.write_snapshot(&snapshot_file(&[a, b], 2), None).unwrap();
    assert_eq!(s.stamp(&s2).unwrap().usage, usage(6, 10));
    // a corrupt stamp is skipped: the commit goes through, measured
    // against the latest readable one
    fs::write(s.stamp_path(&s2), b"{garbage").unwrap();
    set(1020);
    let s3 = s.write_snapshot(&snapshot_file(&[a, b], 3), None).unwrap();
    assert_eq!(s.stamp(&s3).unwrap().usage, usage(6, 10));
    let (listed, skipped) = s.stamps().unwrap();
    assert_eq!(
        listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![s1, s3]
    );
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].to_string().contains(&s2.short()),
        "{}",
        skipped[0]
    );
    // an unreadable previous snapshot: committed without usage
    fs::write(s.snapshot_path(&s3), b"garbage").unwrap();
    set(1030);
    let s4 = s.write_snapshot(&snapshot_file(&[a], 4), None).unwrap();
    assert_eq!(s.stamp(&s4).unwrap().usage, None);
}

#[test]
fn new_bytes_survive_a_clock_stepped_back() {
    let d = tempfile::tempdir().unwrap();
    let t = Arc::new(std::sync::atomic::AtomicI64::new(2000));
    let s = store_at(&d.path().join("r"), &t);
    let a = pack(&s, b"aaaa");
    s.write_snapshot(&snapshot_file(&[a], 1), None).unwrap();
    t.store(1500, std::sync::atomic::Ordering::SeqCst);
    let b = pack(&s, b"bbbbbb");
    let s2 = s.write_snapshot(&snapshot_file(&[a, b], 2), None).unwrap();
    assert_eq!(s.stamp(&s2).unwrap().usage, usage(6, 10));
}

/// Packs in many shards: old and young, referenced and not.
fn shard_fixture(
    s: &LocalStore,
    t: &Arc<std::sync::atomic::AtomicI64>,
    t0: i64,
) -> (Vec<PackId>, Vec<PackId>, Vec<PackId>, Vec<PackId>) {
    let set = |v| t.store(v, std::sync::atomic::Ordering::SeqCst);
    let (mut old, mut young) = (Vec::new(), Vec::new());
    set(t0);
    for i in 0u32..40 {
        old.push(pack(s, format!("old pack {i}").as_bytes()));
    }
    set(t0 + 2 * retention::DAY_SECS);
    for i in 0u32..40 {
        young.push(pack(s, format!("young pack {i}").as_bytes()));
    }
    let (old_ref, old_free) = (old[..20].to_vec(), old[20..].to_vec());
    let (young_ref, young_free) = (young[..20].to_vec(), young[20..].to_vec());
    // two snapshots, overlapping
    let mut first = old_ref[..12].to_vec();
    first.extend(&young_ref[..5]);
    let mut second = old_ref[8..].to_vec();
    second.extend(&young_ref[5..]);
    s.write_snapshot(&snapshot_file(&first, 1), None).unwrap();
    s.write_snapshot(&snapshot_file(&second, 2), None).unwrap();
    (old_ref, old_free, young_ref, young_free)
}

#[test]
fn prune_collects_shard_by_shard() {
    let d = tempfile::tempdir().unwrap();
    let t0 = 1_800_000_000;
    let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
    let s =
        store_at(&d.path().join("r"), &t).with_parity(crate::parity::ParityConfig { k: 4, m: 1 });
    let (old_ref, old_free, young_ref, young_free) = shard_fixture(&s, &t, t0);
    let shards = |ids: &[PackId]| {
        ids.iter()
            .map(|p| p.as_bytes()[0])
            .collect::<HashSet<_>>()
            .len()
    };
    assert!(
        shards(&old_free) > 5 && shards(&old_ref) > 5,
        "spread over shards"
    );
    crate::scrub::protect(&s, s.parity()).unwrap();
    // past the grace period of the old packs only
    t.store(
        t0 + 3 * retention::DAY_SECS,
        std::sync::atomic::Ordering::SeqCst,
    );
    let rep = s.prune().unwrap();
    assert_eq!(rep.refused, None);
    assert_eq!(rep.snapshots_kept, 2);
    assert_eq!(rep.packs_removed, 20);
    assert_eq!(rep.packs_kept, 60);
    let mut expect = 0;
    for (i, p) in old_free.iter().enumerate() {
        assert_eq!(s.pack_size(p).unwrap(), None, "old unreferenced {i}");
        expect += format!("old pack {}", i + 20).len() as u64;
    }
    assert_eq!(rep.bytes_freed, expect);
    for p in old_ref.iter().chain(&young_ref).chain(&young_free) {
        assert!(s.pack_size(p).unwrap().is_some(), "kept {p}");
    }
    // the scratch databases are gone
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    // parity forgot the collected packs: a scrub does not bring them back
    crate::scrub::scrub(&s, s.parity(), &Default::default()).unwrap();
    for p in &old_free {
        assert_eq!(s.pack_size(p).unwrap(), None, "restored {p}");
    }
    // later, the young unreferenced ones go too
    t.store(
        t0 + 5 * retention::DAY_SECS,
        std::sync::atomic::Ordering::SeqCst,
    );
    let rep = s.prune().unwrap();
    assert_eq!((rep.packs_removed, rep.packs_kept), (20, 40));
    for p in &young_free {
        assert_eq!(s.pack_size(p).unwrap(), None);
    }
}

#[test]
fn prune_failing_midway_still_makes_parity_forget_what_it_deleted() {
    let d = tempfile::tempdir().unwrap();
    let t0 = 1_800_000_000;
    let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
    let s =
        store_at(&d.path().join("r"), &t).with_parity(crate::parity::ParityConfig { k: 4, m: 1 });
    let (_, old_free, _, _) = shard_fixture(&s, &t, t0);
    crate::scrub::protect(&s, s.parity()).unwrap();
    // A shard after every other one that cannot be listed (a symlink
    // loop fails for root too).
    let bad = s.root().join("packs").join("zz");
    std::os::unix::fs::symlink(&bad, &bad).unwrap();
    t.store(
        t0 + 3 * retention::DAY_SECS,
        std::sync::atomic::Ordering::SeqCst,
    );
    assert!(s.prune().is_err(), "the broken shard must fail the prune");
    fs::remove_file(&bad).unwrap();
    let deleted: Vec<_> = old_free
        .iter()
        .filter(|p| s.pack_size(p).unwrap().is_none())
        .collect();
    assert!(!deleted.is_empty(), "the shards before it were collected");
    // parity forgot them: a scrub does not bring them back
    crate::scrub::scrub(&s, s.parity(), &Default::default()).unwrap();
    for p in deleted {
        assert_eq!(s.pack_size(p).unwrap(), None, "restored {p}");
    }
}

#[test]
fn prune_collects_nothing_when_a_snapshot_is_unreadable() {
    let d = tempfile::tempdir().unwrap();
    let t0 = 1_800_000_000;
    let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
    let s = store_at(&d.path().join("r"), &t);
    let (old_ref, old_free, _, _) = shard_fixture(&s, &t, t0);
    let bad = s
        .write_snapshot(&snapshot_file(&old_ref[..1], 3), None)
        .unwrap();
    fs::write(s.snapshot_path(&bad), b"garbage").unwrap();
    t.store(
        t0 + 10 * retention::DAY_SECS,
        std::sync::atomic::Ordering::SeqCst,
    );
    let rep = s.prune().unwrap();
    let why = rep.refused.unwrap();
    assert!(
        why.contains("unreadable") && why.contains(&bad.to_hex()),
        "{why}"
    );
    assert_eq!(rep.packs_removed, 0);
    for p in &old_free {
        assert!(s.pack_size(p).unwrap().is_some(), "kept {p}");
    }
    assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn bad_settings_files_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("r");
    LocalStore::create(&root).unwrap();
    fs::write(root.join("parity.json"), b"{\"k\": 0, \"m\": 1}").unwrap();
    let e = LocalStore::open_dir(&root).err().unwrap().to_string();
    assert!(e.contains("parity 0+1"), "{e}");
    fs::remove_file(root.join("parity.json")).unwrap();
    fs::write(root.join("policy.json"), b"not json").unwrap();
    let e = LocalStore::open_dir(&root).err().unwrap().to_string();
    assert!(e.contains("policy.json"), "{e}");
    fs::write(
        root.join("policy.json"),
        b"{\"lock_secs\": 100, \"retention_secs\": 10, \"grace_secs\": 0}",
    )
    .unwrap();
    let e = LocalStore::open_dir(&root).err().unwrap().to_string();
    assert!(e.contains("lock window"), "{e}");
}

#[test]
fn prune_sweeps_what_killed_writers_left_in_tmp() {
    let d = tempfile::tempdir().unwrap();
    // The real clock: the running upload's file is written now.
    let t0 = system_clock()();
    let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
    let s = store_at(&d.path().join("r"), &t);
    let tmp = d.path().join("r").join("tmp");
    let at = |secs: i64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    // A partial upload of a killed backup, idle for three days, and one
    // written to an hour ago (a backup still running).
    let (stale, live) = (tmp.join("stale.tmp"), tmp.join("live.tmp"));
    for (p, when) in [(&stale, t0 - 3 * retention::DAY_SECS), (&live, t0 - 3600)] {
        let f = File::create(p).unwrap();
        f.set_modified(at(when)).unwrap();
    }
    // An upload in progress through the store keeps its file too.
    let mut u = s.upload_pack().unwrap();
    u.write_all(b"half a pack").unwrap();
    let rep = s.prune().unwrap();
    assert_eq!(rep.tmp_removed, 1);
    assert!(!stale.exists() && live.exists());
    let id = PackId::of(b"half a pack");
    assert!(u.commit(id).unwrap(), "the running upload still commits");
    assert_eq!(s.pack_size(&id).unwrap(), Some(11));
}

/// A partial file between its creation and its rename (`.new`, locked) is
/// its writer's, whatever its age says: a sweep whose clock is far ahead of
/// the file's time (a test's faked clock, a store clock ahead of the file
/// system's) removed it, and the writer's rename failed with "No such
/// file". No sweep touches one: its writer may not hold its lock yet.
#[test]
fn a_sweep_leaves_a_partial_file_its_writer_is_still_naming() {
    let d = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = Arc::new(std::sync::atomic::AtomicI64::new(
        now + 31 * retention::DAY_SECS,
    ));
    let s = store_at(&d.path().join("r"), &t);
    let new = d.path().join("r/tmp/0123456789abcdef01234567.new");
    let f = File::create(&new).unwrap();
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let r = s.prune().unwrap();
    assert!(r.refused.is_none(), "{r:?}");
    assert!(new.exists(), "a locked .new file was swept");
    drop(held);
    s.prune().unwrap();
    assert!(
        new.exists(),
        "a .new file whose writer has not locked it yet was swept"
    );
}
