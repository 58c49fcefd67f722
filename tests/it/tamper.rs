//! Damage and tampering: every change to stored bytes is detected, and no
//! command ever emits wrong bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer::crypto::Kind;
use coffer::format::pack::PackEntry;
use coffer::id::PackId;
use coffer::repo::Repository;
use coffer::store::LocalStore;

use crate::util::*;

fn open(t: &TestRepo) -> Repository {
    let store = LocalStore::open(&t.repo).unwrap();
    Repository::open_store(Arc::new(store), PASSWORD.as_bytes(), &t.cache).unwrap()
}

/// Every pack with its blob table.
fn tables(t: &TestRepo) -> Vec<(PathBuf, Vec<PackEntry>)> {
    let repo = open(t);
    t.packs()
        .into_iter()
        .map(|p| {
            let id: PackId = p.file_name().unwrap().to_str().unwrap().parse().unwrap();
            let size = fs::metadata(&p).unwrap().len();
            let entries = repo.read_pack_header(&id, size).unwrap();
            (p, entries)
        })
        .collect()
}

fn setup(files: &[(&str, Vec<u8>)]) -> (TestRepo, PathBuf) {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for (n, d) in files {
        fs::write(src.join(n), d).unwrap();
    }
    t.backup(&[src.to_str().unwrap()]);
    t.run(&["check", "--read-data"]).ok();
    // Without parity, so damage stays damage (repair has its own tests).
    fs::remove_dir_all(t.repo.join("parity")).unwrap();
    (t, src)
}

fn assert_never_wrong(target: &Path, src: &Path, files: &[(&str, Vec<u8>)]) {
    for (n, d) in files {
        let p = restored(target, src).join(n);
        if let Ok(got) = fs::read(&p) {
            assert!(got == *d, "{n} restored with wrong content");
        }
    }
}

#[test]
fn flipped_byte_in_a_pack_is_detected() {
    let files = [
        ("a", random_bytes(1, 300_000)),
        ("b", random_bytes(2, 50_000)),
    ];
    let (t, src) = setup(&files);
    let (pack, entries) = tables(&t)
        .into_iter()
        .find(|(_, e)| e.iter().any(|x| x.kind == Kind::Data))
        .unwrap();
    let data = entries.iter().find(|e| e.kind == Kind::Data).unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    bytes[(data.offset + 100) as usize] ^= 0x04;
    fs::write(&pack, bytes).unwrap();

    let r = t.run(&["check", "--read-data"]).fails();
    assert_eq!(r.code(), 5, "{}", r.stderr());
    assert!(
        r.stderr().contains("does not hash to its name"),
        "{}",
        r.stderr()
    );
    assert!(
        r.stderr().contains("authentication failed"),
        "{}",
        r.stderr()
    );

    let target = t.path("out");
    let r = t
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .fails();
    assert_ne!(r.code(), 0);
    assert_never_wrong(&target, &src, &files);
    for (n, d) in &files {
        let out = t.run(&["dump", "latest", &format!("{}/{n}", src.display())]);
        assert!(
            d.starts_with(&out.out.stdout),
            "dump of {n} emitted wrong bytes"
        );
    }
}

#[test]
fn a_damaged_hard_linked_file_leaves_none_of_its_names_behind() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let a = random_bytes(5, 300_000);
    let c = random_bytes(6, 100);
    fs::write(src.join("a"), &a).unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    fs::write(src.join("c"), &c).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    fs::remove_dir_all(t.repo.join("parity")).unwrap();
    // Damage a chunk of a (and b), nothing else: c is far smaller.
    let (pack, e) = tables(&t)
        .into_iter()
        .find_map(|(p, es)| {
            let e = es
                .into_iter()
                .find(|e| e.kind == Kind::Data && e.plain_len > 1000)?;
            Some((p, e))
        })
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    bytes[(e.offset + 1000) as usize] ^= 0x10;
    fs::write(&pack, bytes).unwrap();

    let target = t.path("out");
    let r = t
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .fails();
    assert_ne!(r.code(), 0);
    let out = restored(&target, &src);
    // Neither name of the damaged file is left, with any content.
    assert!(!out.join("a").exists(), "a left behind");
    assert!(!out.join("b").exists(), "b left behind");
    assert_eq!(fs::read(out.join("c")).unwrap(), c);
}

#[test]
fn swapped_blobs_are_detected() {
    // two single-chunk files of equal size: their sealed blobs are equally long
    let files = [
        ("x", random_bytes(3, 10_000)),
        ("y", random_bytes(4, 10_000)),
    ];
    let (t, src) = setup(&files);
    let (pack, entries) = tables(&t)
        .into_iter()
        .find(|(_, e)| e.iter().filter(|x| x.kind == Kind::Data).count() == 2)
        .unwrap();
    let d: Vec<&PackEntry> = entries.iter().filter(|e| e.kind == Kind::Data).collect();
    assert_eq!(d[0].sealed_len, d[1].sealed_len);
    let mut bytes = fs::read(&pack).unwrap();
    let (a, b, n) = (
        d[0].offset as usize,
        d[1].offset as usize,
        d[0].sealed_len as usize,
    );
    let first = bytes[a..a + n].to_vec();
    bytes.copy_within(b..b + n, a);
    bytes[b..b + n].copy_from_slice(&first);
    fs::write(&pack, bytes).unwrap();

    let r = t.run(&["check", "--read-data"]).fails();
    assert_eq!(r.code(), 5);
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .fails();
    assert_never_wrong(&target, &src, &files);
    for (n, _) in &files {
        assert!(
            !restored(&target, &src).join(n).exists(),
            "{n} should not be restored"
        );
    }
}

#[test]
fn data_blob_in_a_snapshots_place_is_detected() {
    let files = [("f", random_bytes(5, 20_000))];
    let (t, src) = setup(&files);
    let (pack, entries) = tables(&t).into_iter().next().unwrap();
    let e = entries.iter().find(|e| e.kind == Kind::Data).unwrap();
    let sealed = fs::read(&pack).unwrap()
        [e.offset as usize..(e.offset + e.sealed_len as u64) as usize]
        .to_vec();
    let snap = walk(&t.repo.join("snapshots"))
        .into_iter()
        .find(|p| p.extension().is_none())
        .unwrap();
    fs::write(&snap, &sealed).unwrap();
    // Listed apart, never opened as a snapshot.
    let r = t.run(&["snapshots"]).ok();
    assert!(r.stderr().contains("does not open"), "{}", r.stderr());
    assert!(r.stdout().contains("0 snapshots (1 more do not open)"));
    assert_eq!(t.run(&["snapshots", "--strict"]).code(), 3);
    let r = t.run(&["check"]).fails();
    assert_eq!(r.code(), 5, "{}", r.stderr());
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .fails();
    assert!(!restored(&target, &src).join("f").exists());
    // renamed to its own hash so the name checks out: the magic still refuses it
    let renamed = snap.with_file_name(PackId::of(&sealed).to_hex());
    fs::rename(&snap, &renamed).unwrap();
    let r = t.run(&["snapshots", "--strict"]).fails();
    assert!(r.stderr().contains("bad magic"), "{}", r.stderr());
}

#[test]
fn truncated_and_missing_packs_are_reported() {
    let files = [("a", random_bytes(6, 2_500_000))];
    let (t, src) = setup(&files);
    let packs = t.packs();
    assert!(packs.len() >= 2);
    let f = fs::OpenOptions::new().write(true).open(&packs[0]).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
    fs::remove_file(&packs[1]).unwrap();
    let r = t.run(&["check", "--read-data"]).fails();
    assert_eq!(r.code(), 5);
    assert!(r.stderr().contains("missing"), "{}", r.stderr());
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .fails();
    assert_never_wrong(&target, &src, &files);
}

/// A pack gone from the repository fails exactly the files with a chunk in
/// it, each named with the reason, and every other file restores whole
/// (small files' chunks are looked up ahead of the walk, many at a time).
#[test]
fn a_missing_pack_fails_only_the_files_it_held() {
    let names: Vec<String> = (0..12).map(|i| format!("f{i:02}")).collect();
    let files: Vec<(&str, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), random_bytes(100 + i as u64, 150_000)))
        .collect();
    let (t, src) = setup(&files);
    // A pack of file content only: the trees stay readable.
    let data_packs: Vec<PathBuf> = tables(&t)
        .into_iter()
        .filter(|(_, e)| e.iter().all(|x| x.kind == Kind::Data))
        .map(|(p, _)| p)
        .collect();
    assert!(!data_packs.is_empty(), "files spread over several packs");
    fs::remove_file(&data_packs[0]).unwrap();
    let target = t.path("out");
    let r = t
        .run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .fails();
    assert!(r.stderr().contains("in no pack"), "{}", r.stderr());
    assert_never_wrong(&target, &src, &files);
    let back = |n: &str| restored(&target, &src).join(n).exists();
    let missing = names.iter().filter(|n| !back(n)).count();
    assert!(missing >= 1, "the lost pack's files are not left behind");
    assert!(
        missing < names.len(),
        "the other files are restored: {}",
        r.stderr()
    );
    for n in names.iter().filter(|n| !back(n)) {
        assert!(
            r.stderr().contains(n.as_str()),
            "{n} is named: {}",
            r.stderr()
        );
    }
    // The summary counts what was restored, not what was attempted.
    let again = t.path("out2");
    let j = t
        .run(&[
            "--json",
            "restore",
            "latest",
            "--target",
            again.to_str().unwrap(),
        ])
        .fails()
        .json();
    let restored_files = (names.len() - missing) as u64;
    assert_eq!(j["files"].as_u64(), Some(restored_files), "{j}");
    assert_eq!(j["bytes"].as_u64(), Some(restored_files * 150_000), "{j}");
    assert_eq!(j["errors"].as_array().unwrap().len(), missing, "{j}");
}
