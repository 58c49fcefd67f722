//! The restore side: snapshots, ls, restore of a subset, dump, diff, and a
//! target that already holds hostile entries.

use std::fs;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};

use crate::util::*;

#[test]
fn snapshots_json_and_selectors() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"one").unwrap();
    let first = t.backup(&[
        "--tag",
        "nightly",
        "--host",
        "vps-101",
        src.to_str().unwrap(),
    ]);
    fs::write(src.join("a"), b"two").unwrap();
    let second = t.backup(&[src.to_str().unwrap()]);
    let snaps = t.snapshots();
    assert_eq!(snaps.len(), 2);
    for key in ["id", "time", "host", "paths", "tags"] {
        assert!(snaps[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(snaps[0]["id"], first["id"]);
    assert_eq!(snaps[0]["tags"][0], "nightly");
    assert_eq!(snaps[0]["host"], "vps-101");
    assert_eq!(snaps[0]["paths"][0], src.to_str().unwrap());
    // `latest` and an id prefix
    let file = format!("{}/a", src.display());
    assert_eq!(t.run(&["dump", "latest", &file]).ok().out.stdout, b"two");
    let prefix = &first["id"].as_str().unwrap()[..8];
    assert_eq!(t.run(&["dump", prefix, &file]).ok().out.stdout, b"one");
    let r = t.run(&["dump", "ffffffffffff", &file]).fails();
    assert!(r.stderr().contains("not found"), "{}", r.stderr());
    // diff names the changed file
    let d = t
        .run(&["diff", prefix, second["id"].as_str().unwrap()])
        .ok()
        .stdout();
    assert!(d.contains(&format!("M  {file}")), "{d}");
}

#[test]
fn restore_a_subset_and_ls() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("keep/inner")).unwrap();
    fs::create_dir_all(src.join("skip")).unwrap();
    fs::write(src.join("keep/inner/f"), b"kept").unwrap();
    fs::write(src.join("skip/g"), b"skipped").unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let ls = t
        .run(&["ls", "latest", &format!("{}/keep", src.display())])
        .ok()
        .stdout();
    assert!(ls.contains("keep/inner/f") && !ls.contains("skip"), "{ls}");
    let target = t.path("out");
    let want = format!("{}/keep", src.display());
    t.run(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        &want,
    ])
    .ok();
    let base = restored(&target, &src);
    assert_eq!(fs::read(base.join("keep/inner/f")).unwrap(), b"kept");
    assert!(!base.join("skip").exists());
    let r = t
        .run(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "/no/such/path",
        ])
        .fails();
    assert!(r.stderr().contains("not found"), "{}", r.stderr());
}

#[test]
fn restore_never_follows_entries_planted_in_the_target() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"restored content").unwrap();
    fs::write(src.join("g"), b"g content").unwrap();
    t.backup(&[src.to_str().unwrap()]);
    // an attacker pre-creates the target with symlinks pointing elsewhere
    let outside = t.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"untouched").unwrap();
    let target = t.path("out");
    let base = restored(&target, &src);
    fs::create_dir_all(&base).unwrap();
    symlink(&outside, base.join("d")).unwrap();
    symlink(outside.join("victim"), base.join("g")).unwrap();
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"untouched");
    assert!(!outside.join("f").exists());
    assert!(fs::symlink_metadata(base.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(base.join("d/f")).unwrap(), b"restored content");
    assert_eq!(fs::read(base.join("g")).unwrap(), b"g content");
}

#[test]
fn stats_and_check_on_a_clean_repository() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(1, 2 << 20)).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let s = t.run(&["--json", "stats"]).ok().json();
    assert_eq!(s["snapshots"], 1);
    assert!(s["pack_bytes"].as_u64().unwrap() >= 2 << 20);
    let c = t.run(&["--json", "check", "--read-data"]).ok().json();
    assert_eq!(c["errors"].as_array().unwrap().len(), 0);
    assert!(c["blobs_read"].as_u64().unwrap() > 10);
    // losing the cache costs only time
    fs::remove_dir_all(&t.cache).unwrap();
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::read(restored(&out, &src).join("f")).unwrap(),
        random_bytes(1, 2 << 20)
    );
}

/// The cases the restore's shortcuts must not get wrong: a set-id file of
/// another owner (chown clears set-id bits, so the mode comes after), a
/// file ending in a hole (sized, not written), read-only and unsearchable
/// directories holding entries (their modes are set last, deepest first),
/// and more small files than one batch of cache lookups holds.
#[test]
fn metadata_survives_a_restore_of_many_small_files() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("ro/inner")).unwrap();
    fs::create_dir_all(src.join("many")).unwrap();
    fs::write(src.join("ro/inner/f"), b"inside a read-only dir").unwrap();
    for i in 0..700 {
        fs::write(src.join(format!("many/{i:04}")), format!("file {i}\n")).unwrap();
    }
    fs::write(src.join("suid"), b"#!/bin/sh\n").unwrap();
    if is_root() {
        std::os::unix::fs::lchown(src.join("suid"), Some(2345), Some(2346)).unwrap();
        std::os::unix::fs::lchown(src.join("ro"), Some(2347), Some(2348)).unwrap();
    }
    // after the chown, which clears set-id bits
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    {
        let f = fs::File::create(src.join("tail-hole")).unwrap();
        f.write_all_at(&random_bytes(9, 5000), 0).unwrap();
        f.set_len(3 << 20).unwrap();
    }
    fs::set_permissions(src.join("ro/inner"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::set_permissions(src.join("many"), fs::Permissions::from_mode(0o700)).unwrap();
    for p in walk(&src) {
        age(&p);
    }
    age(&src);
    t.backup(&[src.to_str().unwrap()]);
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    let got = restored(&target, &src);
    assert_same_tree(&src, &got);
    let m = fs::metadata(got.join("suid")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755, "set-uid bit kept");
    let hole = fs::metadata(got.join("tail-hole")).unwrap();
    assert_eq!(hole.len(), 3 << 20);
    assert!(
        hole.blocks() * 512 < 1 << 20,
        "the trailing hole stays sparse"
    );
    // let the test directory be removed
    fs::set_permissions(got.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(got.join("ro/inner"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("ro/inner"), fs::Permissions::from_mode(0o755)).unwrap();
}
