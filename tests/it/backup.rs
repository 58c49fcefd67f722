//! Backing up: every kind of entry, streams, images, deduplication, the
//! files cache, concurrency.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::util::*;

/// Builds a tree with every kind of entry the format records.
pub fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("small.txt"), b"hello coffer\n").unwrap();
    fs::write(root.join("empty.txt"), b"").unwrap();
    fs::write(root.join("dir/text.log"), text_bytes(1, 3 << 20)).unwrap();
    fs::write(root.join("dir/sub/random.bin"), random_bytes(2, 1 << 20)).unwrap();
    fs::write(root.join("dir/sub/deeper/zeros"), vec![0u8; 300_000]).unwrap();
    fs::write(root.join("na\u{ef}ve name with spaces"), b"unicode").unwrap();
    let odd = std::os::unix::ffi::OsStrExt::from_bytes(&b"not-utf8-\xff\xfe"[..]);
    fs::write(root.join::<&std::ffi::OsStr>(odd), b"bytes name").unwrap();
    // permissions, including set-gid and a read-only file
    fs::write(root.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::write(root.join("readonly"), b"ro").unwrap();
    fs::set_permissions(root.join("readonly"), fs::Permissions::from_mode(0o444)).unwrap();
    // symlinks: relative, absolute, dangling
    symlink("small.txt", root.join("link-rel")).unwrap();
    symlink("/etc/hostname", root.join("link-abs")).unwrap();
    symlink("does/not/exist", root.join("link-dangling")).unwrap();
    // hard links
    fs::write(root.join("hard-a"), random_bytes(3, 100_000)).unwrap();
    fs::hard_link(root.join("hard-a"), root.join("dir/hard-b")).unwrap();
    // a sparse file: data, a 8 MiB hole, data
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(root.join("sparse.img")).unwrap();
        f.write_all(&random_bytes(4, 70_000)).unwrap();
        f.seek(SeekFrom::Start(8 << 20)).unwrap();
        f.write_all(b"tail").unwrap();
    }
    // fifo, and a device node when root
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    if is_root() {
        nix::sys::stat::mknod(
            &root.join("null-dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        std::os::unix::fs::lchown(root.join("small.txt"), Some(1234), Some(4321)).unwrap();
        std::os::unix::fs::lchown(root.join("link-rel"), Some(1235), Some(4322)).unwrap();
    }
    // xattrs (user namespace), if the file system supports them
    let _ = xattr::set(root.join("small.txt"), "user.coffer.test", b"value-1");
    let _ = xattr::set(root.join("dir"), "user.coffer.dir", b"dir value");
    // fixed, old times everywhere (files cache and mtime checks)
    for p in walk_tree(root) {
        age(&p);
    }
    age(root);
}

fn walk_tree(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).unwrap().flatten() {
        let p = e.path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk_tree(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn tree_round_trip_every_kind_of_entry() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_tree(&src);
    let snap = t.backup(&[src.to_str().unwrap()]);
    assert!(snap["files"].as_u64().unwrap() >= 10, "{snap}");
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&target, &src));
    // the sparse file came back sparse
    let m = fs::metadata(restored(&target, &src).join("sparse.img")).unwrap();
    assert_eq!(m.len(), (8 << 20) + 4);
    assert!(
        m.blocks() * 512 < 1 << 20,
        "sparse file restored dense: {} blocks",
        m.blocks()
    );
    t.run(&["check", "--read-data"]).ok();
}

#[test]
fn stdin_stream_round_trip() {
    let t = TestRepo::new();
    let data = text_bytes(7, 5 << 20);
    let r = t
        .run_stdin(
            &["--json", "backup", "--stdin", "--stdin-name", "db.sql"],
            &data,
        )
        .ok();
    assert_eq!(r.json()["bytes"].as_u64().unwrap(), data.len() as u64);
    let out = t.run(&["dump", "latest", "db.sql"]).ok();
    assert!(out.out.stdout == data, "dumped stream differs");
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read(target.join("db.sql")).unwrap(), data);
    let snaps = t.snapshots();
    assert_eq!(snaps[0]["source"], "stdin");
    assert_eq!(snaps[0]["paths"][0], "db.sql");
}

/// `backup` of the output of `sh -c SCRIPT`, named `name`.
fn dump_backup<'a>(name: &'a str, script: &'a str) -> [&'a str; 7] {
    let cmd = "--stdin-from-command";
    ["backup", "--stdin-name", name, cmd, "sh", "-c", script]
}

#[test]
fn stdin_from_command_success_and_failure() {
    let t = TestRepo::new();
    t.backup(&dump_backup("dump.sql", "seq 1 200000")[1..]);
    let dumped = t.run(&["dump", "latest", "dump.sql"]).ok().out.stdout;
    let expect: String = (1..=200000).map(|i| format!("{i}\n")).collect();
    assert!(dumped == expect.as_bytes());
    // a failing command: non-zero exit, no snapshot
    let r = t.run(&dump_backup("bad.sql", "seq 1 1000; exit 3")).fails();
    assert!(
        r.stderr().contains("no snapshot committed"),
        "{}",
        r.stderr()
    );
    // a command killed by a signal
    t.run(&dump_backup("killed.sql", "seq 1 1000; kill -9 $$"))
        .fails();
    assert_eq!(t.snapshots().len(), 1, "a failed dump must commit nothing");
    t.run(&["check"]).ok();
}

#[test]
fn a_dump_failing_mid_pack_leaves_no_partial_file_and_its_packs_are_reused() {
    let t = TestRepo::new();
    t.backup(&dump_backup("first.sql", "seq 1 1000")[1..]);
    // Fails with a pack full and another half written (packs are 16 MiB).
    for _ in 0..3 {
        let script = "head -c 24000000 /dev/urandom; exit 3";
        t.run(&dump_backup("bad.sql", script)).fails();
        assert_eq!(walk(&t.repo.join("tmp")), Vec::<std::path::PathBuf>::new());
    }
    assert_eq!(t.snapshots().len(), 1, "a failed dump must commit nothing");
    t.run(&["check", "--read-data"]).ok();
    // What a failed run stored is reused by the next one.
    let big = t.path("big.sql");
    fs::write(&big, random_bytes(7, 24_000_000)).unwrap();
    let cat = format!("cat {}", big.display());
    let failing = format!("{cat}; exit 3");
    t.run(&dump_backup("big.sql", &failing)).fails();
    let out = t.backup(&dump_backup("big.sql", &cat)[1..]);
    // At least its first pack (16 MiB) was committed; the chunks it had
    // not yet handed over when the dump failed are new now.
    assert!(
        out["new_bytes"].as_u64().unwrap() <= 24_000_000 - (16 << 20),
        "the failed run's packs were not reused: {out}"
    );
    t.run(&["check", "--read-data"]).ok();
}

#[test]
fn image_with_holes_round_trip_sparse() {
    let t = TestRepo::new();
    let img = t.path("disk.img");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        // data at block-aligned and unaligned offsets, holes between
        for (i, off) in [
            0u64,
            5 << 20,
            (20 << 20) + 12345,
            33 << 20,
            (64 << 20) - 4096,
        ]
        .iter()
        .enumerate()
        {
            f.seek(SeekFrom::Start(*off)).unwrap();
            f.write_all(&random_bytes(
                i as u64 + 10,
                200_000.min((64 << 20) - *off as usize),
            ))
            .unwrap();
        }
        // a hole shorter than a block right at a read boundary
        f.seek(SeekFrom::Start(48 << 20)).unwrap();
        f.write_all(&random_bytes(20, 1 << 20)).unwrap();
        f.seek(SeekFrom::Start((49 << 20) + 8192)).unwrap();
        f.write_all(&random_bytes(21, (1 << 20) - 8192)).unwrap();
        // an all-zero region that is allocated (written), not a hole
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&vec![0u8; 2 << 20]).unwrap();
    }
    let snap = t.backup(&["--image", img.to_str().unwrap()]);
    // holes and zero blocks cost no pack space
    assert!(snap["new_pack_bytes"].as_u64().unwrap() < 4 << 20, "{snap}");
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    let out = target.join("disk.img");
    assert!(
        fs::read(&out).unwrap() == fs::read(&img).unwrap(),
        "image differs"
    );
    let m = fs::metadata(&out).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < 4 << 20,
        "restored image not sparse: {} bytes allocated",
        m.blocks() * 512
    );
    assert_eq!(t.snapshots()[0]["source"], "image");
}

#[test]
fn image_blocks_repeated_within_one_read_are_stored_once() {
    let t = TestRepo::new();
    let img = t.path("vm.img");
    // 96 copies of one 32 KiB block with two other blocks among them, all
    // within the first read of the image.
    let same = random_bytes(30, 32 << 10);
    let mut bytes = Vec::new();
    for i in 0..96 {
        match i {
            7 => bytes.extend(random_bytes(31, 32 << 10)),
            50 => bytes.extend(random_bytes(32, 32 << 10)),
            _ => bytes.extend(&same),
        }
    }
    fs::write(&img, &bytes).unwrap();
    let snap = t.backup(&["--image", img.to_str().unwrap()]);
    // three data blocks, plus the image's chunk list and the root tree
    let new = snap["new_bytes"].as_u64().unwrap();
    assert!((3 * (32 << 10)..4 * (32 << 10)).contains(&new), "{snap}");
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    assert!(fs::read(target.join("vm.img")).unwrap() == bytes);
    t.run(&["check", "--read-data"]).ok();
}

#[test]
fn second_backup_adds_almost_nothing() {
    let t = TestRepo::new();
    let src = t.path("src");
    make_tree(&src);
    let first = t.backup(&[src.to_str().unwrap()]);
    let second = t.backup(&[src.to_str().unwrap()]);
    assert!(first["new_bytes"].as_u64().unwrap() > 4 << 20);
    // only the root trees can differ (none here: nothing changed)
    assert!(second["new_bytes"].as_u64().unwrap() < 4096, "{second}");
    // the files cache skipped every regular file (but the second name of
    // the hard link, whose content is the first name's)
    assert_eq!(
        second["files_unchanged"].as_u64().unwrap() + 1,
        second["files"].as_u64().unwrap(),
        "{second}"
    );
    // without the files cache the result is the same, read again
    let third = t.backup(&["--no-files-cache", src.to_str().unwrap()]);
    assert_eq!(third["files_unchanged"], 0);
    assert!(third["new_bytes"].as_u64().unwrap() < 4096, "{third}");
}

#[test]
fn insert_near_start_of_a_dump_adds_few_chunks() {
    let t = TestRepo::new();
    let data = text_bytes(11, 24 << 20);
    t.run_stdin(&["backup", "--stdin", "--stdin-name", "dump.sql"], &data)
        .ok();
    let mut shifted = data[..1000].to_vec();
    shifted.extend_from_slice(b"INSERT INTO t VALUES (1, 'a new row near the start');\n");
    shifted.extend_from_slice(&data[1000..]);
    let r = t
        .run_stdin(
            &["--json", "backup", "--stdin", "--stdin-name", "dump.sql"],
            &shifted,
        )
        .ok();
    let new = r.json()["new_bytes"].as_u64().unwrap();
    // chunks average 64 KiB here: a few chunks, far below the 24 MiB
    assert!(new < 1 << 20, "inserting 53 bytes added {new} bytes");
    assert!(t.run(&["dump", "latest", "dump.sql"]).ok().out.stdout == shifted);
}

#[test]
fn no_plaintext_in_the_repository() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let marker = b"UNIQUE-MARKER-7c1e3b9a-not-in-any-repo-file";
    // incompressible file (stored raw before sealing) and a text file
    let mut raw = random_bytes(5, 200_000);
    raw[1000..1000 + marker.len()].copy_from_slice(marker);
    fs::write(src.join("raw.bin"), &raw).unwrap();
    let mut text = marker.to_vec();
    text.extend_from_slice(&text_bytes(6, 10_000));
    fs::write(src.join("notes.txt"), &text).unwrap();
    fs::write(
        src.join(std::str::from_utf8(marker).unwrap()),
        b"named after the marker",
    )
    .unwrap();
    t.backup(&[src.to_str().unwrap()]);
    t.run_stdin(&["backup", "--stdin", "--stdin-name", "marker.sql"], &text)
        .ok();
    for f in t.repo_files() {
        let bytes = fs::read(&f).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "plaintext marker found in {}",
            f.display()
        );
        assert!(!bytes
            .windows(11)
            .any(|w| w == b"notes.txt\0\0" || w == b"notes.txt.."));
    }
}

#[test]
fn two_backups_at_once_corrupt_nothing() {
    let t = TestRepo::new();
    let (a, b) = (t.path("a"), t.path("b"));
    for (i, d) in [&a, &b].iter().enumerate() {
        fs::create_dir_all(d).unwrap();
        fs::write(d.join("shared"), random_bytes(99, 3 << 20)).unwrap();
        fs::write(d.join("own"), random_bytes(i as u64, 3 << 20)).unwrap();
    }
    let ca = t.command().args(["backup", a.to_str().unwrap()]).output();
    let handle = std::thread::spawn({
        let mut cb = t.command();
        cb.args(["backup", b.to_str().unwrap()]);
        move || cb.output().unwrap()
    });
    let (ra, rb) = (ca.unwrap(), handle.join().unwrap());
    assert!(
        ra.status.success(),
        "{}",
        String::from_utf8_lossy(&ra.stderr)
    );
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    assert_eq!(t.snapshots().len(), 2);
    t.run(&["check", "--read-data"]).ok();
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    for s in t.snapshots() {
        let out = t.path(&format!("out-{}", s["short_id"].as_str().unwrap()));
        t.run(&[
            "restore",
            s["id"].as_str().unwrap(),
            "--target",
            out.to_str().unwrap(),
        ])
        .ok();
        let p = Path::new(s["paths"][0].as_str().unwrap());
        assert_eq!(
            fs::read(restored(&out, p).join("own")).unwrap(),
            fs::read(p.join("own")).unwrap()
        );
    }
}

#[test]
fn excludes_and_one_file_system() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(src.join("cache/big"), b"x").unwrap();
    fs::write(src.join("keep/a.tmp"), b"x").unwrap();
    fs::write(src.join("keep/a.txt"), b"x").unwrap();
    let cache_pat = format!("{}/cache", src.display());
    t.backup(&[
        "--exclude",
        "*.tmp",
        "--exclude",
        &cache_pat,
        "--one-file-system",
        src.to_str().unwrap(),
    ]);
    let ls = t.run(&["ls", "latest"]).ok().stdout();
    assert!(ls.contains("keep/a.txt"));
    assert!(!ls.contains("a.tmp") && !ls.contains("cache/big"), "{ls}");
}

#[test]
fn backup_creates_a_missing_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("new-repo");
    let src = dir.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"first run").unwrap();
    let out = clean_command()
        .env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", dir.path().join("cache"))
        .env("COFFER_REPO", &repo)
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    let out = Run { out }.ok().out;
    assert!(String::from_utf8_lossy(&out.stdout).contains("snapshot "));
    assert!(repo.join("config").is_file());
}

#[test]
fn chunks_move_out_of_mostly_dead_packs_and_old_snapshots_still_restore() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let write = |seed: u64, i: usize| {
        fs::write(src.join(format!("f{i:02}")), random_bytes(seed, 120_000)).unwrap()
    };
    for i in 0..40 {
        write(i as u64, i);
    }
    for p in walk_tree(&src) {
        age(&p);
    }
    let first = t.backup(&[src.to_str().unwrap()]);
    // replace three files in four: every pack of the first snapshot becomes mostly dead
    for i in (0..40).filter(|i| i % 4 != 0) {
        write(1000 + i as u64, i);
    }
    t.backup(&[src.to_str().unwrap()]);
    // the next backup writes the survivors anew instead of keeping those packs alive
    let third = t.backup(&[src.to_str().unwrap()]);
    assert!(
        third["new_bytes"].as_u64().unwrap() >= 5 * 120_000,
        "live chunks of sparse packs were not written anew: {third}"
    );
    t.run(&["check", "--read-data"]).ok();
    for s in t.snapshots() {
        let out = t.path(&format!("out-{}", s["short_id"].as_str().unwrap()));
        t.run(&[
            "restore",
            s["id"].as_str().unwrap(),
            "--target",
            out.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(fs::read_dir(restored(&out, &src)).unwrap().count(), 40);
    }
    let out = t.path("out-first");
    t.run(&[
        "restore",
        first["id"].as_str().unwrap(),
        "--target",
        out.to_str().unwrap(),
    ])
    .ok();
    assert!(fs::read(restored(&out, &src).join("f00")).unwrap() == random_bytes(0, 120_000));
}
