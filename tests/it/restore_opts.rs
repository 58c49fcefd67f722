//! Restore you can aim and trust (issue 22, items 4 to 6): include and
//! exclude patterns, the overwrite modes, `--delete`, `--dry-run`,
//! `--verify`, a non-empty directory in the way, sockets; `dump` of a
//! directory as a tar stream; `ls --long` and `--json`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::*;

/// Every entry below `dir`: kind, mode, size, mtime, inode, link target and
/// content, by relative path; what "byte-identical" is compared by.
fn listing(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut rd: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        rd.sort_by_key(|e| e.path());
        for e in rd {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                format!("{:?}", fs::read(&p).unwrap())
            } else {
                String::new()
            };
            let line = format!(
                "{:o} {} {}.{} ino {} {what}",
                m.mode(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            );
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), line);
            if m.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(dir, dir, &mut out);
    out
}

/// A small source tree, backed up; returns the repository, the source and
/// the `SNAP:SUBPATH` that names it.
fn tree() -> (TestRepo, PathBuf, String) {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("sub/deep")).unwrap();
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::write(src.join("a"), text_bytes(1, 5000)).unwrap();
    fs::write(src.join("b"), text_bytes(2, 3000)).unwrap();
    fs::write(src.join("c"), random_bytes(3, 200_000)).unwrap();
    fs::write(src.join("sub/d"), b"dee").unwrap();
    fs::write(src.join("sub/deep/e"), b"eee").unwrap();
    fs::write(src.join("keep/k"), b"kept").unwrap();
    fs::write(src.join("x.tmp"), b"temporary").unwrap();
    symlink("a", src.join("link")).unwrap();
    fs::set_permissions(src.join("b"), fs::Permissions::from_mode(0o640)).unwrap();
    for p in walk(&src) {
        age(&p);
    }
    t.backup(&[src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.to_str().unwrap().trim_start_matches('/'));
    (t, src, spec)
}

fn restore(t: &TestRepo, spec: &str, out: &Path, extra: &[&str]) -> Run {
    restore_as(t, &["--json"], spec, out, extra)
}

/// `coffer [PRE] restore SPEC --target OUT [EXTRA]`.
fn restore_as(t: &TestRepo, pre: &[&str], spec: &str, out: &Path, extra: &[&str]) -> Run {
    let mut a = pre.to_vec();
    a.extend(["restore", spec, "--target", out.to_str().unwrap()]);
    a.extend_from_slice(extra);
    t.run(&a)
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

/// Changes `a` in place (same size, same mtime: only its content tells),
/// makes `b` newer than the snapshot's and `c` older, removes `sub/d`.
fn change(out: &Path) {
    let mut a = fs::read(out.join("a")).unwrap();
    a[10] ^= 0x55;
    fs::write(out.join("a"), &a).unwrap();
    age(&out.join("a"));
    fs::write(out.join("b"), b"newer on disk").unwrap();
    fs::write(out.join("c"), b"older on disk").unwrap();
    let old = filetime::FileTime::from_unix_time(1_500_000_000, 0);
    filetime::set_file_mtime(out.join("c"), old).unwrap();
    fs::remove_file(out.join("sub/d")).unwrap();
}

#[test]
fn each_overwrite_mode_over_a_changed_tree() {
    let (t, src, spec) = tree();
    let a_src = fs::read(src.join("a")).unwrap();
    let c_src = fs::read(src.join("c")).unwrap();

    // never: only what is missing is written.
    let out = t.path("never");
    restore(&t, &spec, &out, &[]).ok();
    change(&out);
    let before = listing(&out);
    let j = restore(&t, &spec, &out, &["--overwrite", "never"])
        .ok()
        .json();
    assert_eq!(j["files"], 1, "{j}");
    assert_eq!(fs::read(out.join("sub/d")).unwrap(), b"dee");
    for f in ["a", "b", "c"] {
        assert_eq!(before[Path::new(f)], listing(&out)[Path::new(f)], "{f}");
    }

    // if-newer: c (older on disk) and the missing d are written; b, newer
    // on disk, and a, as old as the snapshot's, are not.
    let out = t.path("newer");
    restore(&t, &spec, &out, &[]).ok();
    change(&out);
    let j = restore(&t, &spec, &out, &["--overwrite", "if-newer"])
        .ok()
        .json();
    assert_eq!(j["files"], 2, "{j}");
    assert_eq!(fs::read(out.join("c")).unwrap(), c_src);
    assert_eq!(fs::read(out.join("b")).unwrap(), b"newer on disk");
    assert_ne!(fs::read(out.join("a")).unwrap(), a_src);

    // if-changed (the default): a, whose size, mtime and mode match but not
    // its content, is rewritten too; what matches keeps its inode.
    let out = t.path("changed");
    restore(&t, &spec, &out, &[]).ok();
    change(&out);
    let (k, e) = (ino(&out.join("keep/k")), ino(&out.join("sub/deep/e")));
    let j = restore(&t, &spec, &out, &[]).ok().json();
    assert_eq!(j["files"], 4, "a, b, c, d: {j}");
    assert_eq!(j["bytes"], 5000 + 3000 + 200_000 + 3, "{j}");
    assert_eq!(j["unchanged"], 4, "e, k, x.tmp, link: {j}");
    assert_eq!(
        (ino(&out.join("keep/k")), ino(&out.join("sub/deep/e"))),
        (k, e)
    );
    assert_same_tree(&src, &out);

    // always: every file is written again (a second name outside holds
    // the old inode, so its number cannot be reused).
    let witness = t.path("witness");
    fs::hard_link(out.join("keep/k"), &witness).unwrap();
    let k = ino(&witness);
    let j = restore(&t, &spec, &out, &["--overwrite", "always"])
        .ok()
        .json();
    assert_eq!(j["files"], 7, "{j}");
    assert_eq!(j["unchanged"], 0, "{j}");
    assert_ne!(ino(&out.join("keep/k")), k);
    assert_same_tree(&src, &out);
}

#[test]
fn include_exclude_and_delete_stay_inside_the_restored_paths() {
    let (t, src, spec) = tree();
    let out = t.path("out");
    // Patterns match the path below the restored root; `sub/` takes its
    // subtree, `*.tmp` any name.
    let j = restore(
        &t,
        &spec,
        &out,
        &["--include", "sub/", "--include", "a", "--exclude", "deep"],
    )
    .ok()
    .json();
    assert_eq!(j["files"], 2, "{j}");
    let names: Vec<_> = listing(&out).into_keys().collect();
    let want: Vec<PathBuf> = ["a", "sub", "sub/d"].iter().map(PathBuf::from).collect();
    assert_eq!(names, want);

    // --delete removes what the snapshot lacks inside the restored paths
    // (sub/), never outside them (stray) nor what an exclude keeps (x.tmp).
    fs::write(out.join("sub/extra"), b"x").unwrap();
    fs::create_dir_all(out.join("sub/gone/inner")).unwrap();
    fs::write(out.join("sub/gone/inner/f"), b"x").unwrap();
    fs::write(out.join("stray"), b"outside").unwrap();
    fs::write(out.join("sub/y.tmp"), b"excluded").unwrap();
    let j = restore(
        &t,
        &spec,
        &out,
        &["--include", "sub", "--exclude", "*.tmp", "--delete"],
    )
    .ok()
    .json();
    assert_eq!(j["deleted"], 2, "sub/extra and sub/gone: {j}");
    assert!(!out.join("sub/extra").exists() && !out.join("sub/gone").exists());
    assert_eq!(fs::read(out.join("stray")).unwrap(), b"outside");
    assert_eq!(fs::read(out.join("sub/y.tmp")).unwrap(), b"excluded");
    assert_eq!(fs::read(out.join("sub/deep/e")).unwrap(), b"eee");

    // The whole snapshot with --delete: the target becomes the snapshot.
    fs::write(out.join("sub/extra"), b"x").unwrap();
    restore(&t, &spec, &out, &["--delete"]).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn dry_run_lists_the_changes_and_touches_nothing() {
    let (t, _src, spec) = tree();
    let out = t.path("out");
    restore(&t, &spec, &out, &[]).ok();
    change(&out);
    fs::write(out.join("extra"), b"x").unwrap();
    let before = listing(&out);
    let r = restore_as(&t, &[], &spec, &out, &["--dry-run", "--delete"]).ok();
    assert_eq!(listing(&out), before, "the target changed");
    let s = r.stdout();
    for line in ["M a", "M b", "M c", "+ sub/d", "- extra"] {
        assert!(s.lines().any(|l| l == line), "{line:?} in {s}");
    }
    assert!(!s.contains("keep/k"), "{s}");
    // A target that does not exist is not created.
    let none = t.path("none");
    let j = restore(&t, &spec, &none, &["--dry-run"]).ok().json();
    assert!(!none.exists());
    assert_eq!(j["files"], 7, "{j}");
}

#[test]
fn verify_reads_every_written_file_back() {
    let (t, src, spec) = tree();
    let out = t.path("out");
    let j = restore(&t, &spec, &out, &["--verify"]).ok().json();
    assert_eq!(j["verified"], 7, "{j}");
    assert_same_tree(&src, &out);
    let r = restore_as(&t, &[], &spec, &out, &["--verify"]).ok();
    assert!(r.stdout().contains("verified 0 files"), "{}", r.stdout());
}

#[test]
fn an_interrupted_restore_rerun_writes_only_what_is_missing() {
    let (t, src, spec) = tree();
    let out = t.path("out");
    restore(&t, &spec, &out, &[]).ok();
    // What an interrupted restore leaves: some files missing, one cut short
    // (its metadata never applied), the rest complete.
    fs::remove_file(out.join("sub/deep/e")).unwrap();
    fs::remove_file(out.join("keep/k")).unwrap();
    let c = fs::OpenOptions::new()
        .write(true)
        .open(out.join("c"))
        .unwrap();
    c.set_len(70_000).unwrap();
    drop(c);
    let kept: Vec<_> = ["a", "b", "sub/d", "x.tmp"]
        .iter()
        .map(|f| {
            let m = fs::metadata(out.join(f)).unwrap();
            (f, m.ino(), m.mtime(), m.mtime_nsec())
        })
        .collect();
    let j = restore(&t, &spec, &out, &[]).ok().json();
    assert_eq!(j["files"], 3, "{j}");
    assert_eq!(j["bytes"], 200_000 + 3 + 4, "{j}");
    assert_eq!(j["unchanged"], 5, "{j}");
    for (f, i, s, ns) in kept {
        let m = fs::metadata(out.join(f)).unwrap();
        assert_eq!((m.ino(), m.mtime(), m.mtime_nsec()), (i, s, ns), "{f}");
    }
    assert_same_tree(&src, &out);
}

#[test]
fn a_non_empty_directory_in_the_way_is_kept_unless_told() {
    let (t, src, spec) = tree();
    let out = t.path("out");
    fs::create_dir_all(out.join("a/mine")).unwrap();
    fs::write(out.join("a/mine/precious"), b"precious").unwrap();
    let r = restore(&t, &spec, &out, &[]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(
        r.stderr().contains("a: a non-empty directory"),
        "{}",
        r.stderr()
    );
    assert_eq!(fs::read(out.join("a/mine/precious")).unwrap(), b"precious");
    assert_eq!(
        fs::read(out.join("c")).unwrap(),
        fs::read(src.join("c")).unwrap()
    );
    let r = restore(&t, &spec, &out, &["--overwrite", "never"]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(out.join("a/mine/precious").exists());
    restore(&t, &spec, &out, &["--overwrite", "always"]).ok();
    assert_same_tree(&src, &out);
}

#[test]
fn a_recorded_socket_is_reported_as_skipped() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"file").unwrap();
    let _l = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.to_str().unwrap().trim_start_matches('/'));
    let out = t.path("out");
    let r = restore(&t, &spec, &out, &[]).ok();
    let j = r.json();
    assert_eq!(j["skipped"][0], "sock", "{j}");
    assert!(
        r.stderr().contains("sock: a socket, not restored"),
        "{}",
        r.stderr()
    );
    let r = restore_as(&t, &[], &spec, &out, &[]).ok();
    assert!(r.stdout().contains("1 skipped"), "{}", r.stdout());
}

/// `coffer ARGS | tar ...`, both exit statuses and coffer's stderr.
fn piped(t: &TestRepo, args: &[&str], tar: &[&str]) -> (i32, bool, String) {
    let mut c = t
        .command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let tar_ok = std::process::Command::new(tar[0])
        .args(&tar[1..])
        .stdin(out)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    let o = c.wait_with_output().unwrap();
    let code = o.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + o.status.signal().unwrap()
    });
    (
        code,
        tar_ok,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn dump_of_a_directory_is_a_tar_stream_of_the_subtree() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::write(src.join("f"), random_bytes(9, 300_000)).unwrap();
    fs::write(src.join("d/e/g"), b"g").unwrap();
    fs::set_permissions(src.join("d/e/g"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::write(src.join("d/empty"), b"").unwrap();
    fs::hard_link(src.join("f"), src.join("d/hard")).unwrap();
    symlink("../f", src.join("d/link")).unwrap();
    let long = "n".repeat(120);
    fs::write(src.join("d/e").join(&long), b"long name").unwrap();
    fs::set_permissions(src.join("d/e"), fs::Permissions::from_mode(0o700)).unwrap();
    for p in walk_dirs(&src) {
        age(&p);
    }
    // One time before 1970, with nanoseconds.
    let old = filetime::FileTime::from_unix_time(-86_400 * 400, 250);
    filetime::set_file_mtime(src.join("d/empty"), old).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.to_str().unwrap().trim_start_matches('/'));
    let out = t.path("out");
    fs::create_dir_all(&out).unwrap();
    let (code, tar_ok, err) = piped(
        &t,
        &["dump", &spec],
        &["tar", "-x", "-p", "-C", out.to_str().unwrap()],
    );
    assert_eq!((code, tar_ok), (0, true), "{err}");
    assert_same_tree(&src, &out);
    // The same through SNAP PATH, and tar -t lists it.
    let listed = t
        .command()
        .args(["dump", "latest", src.join("d").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let mut tar = std::process::Command::new("tar")
        .arg("-t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tar.stdin.take().unwrap().write_all(&listed.stdout).unwrap();
    let names = String::from_utf8(tar.wait_with_output().unwrap().stdout).unwrap();
    assert!(names.lines().any(|l| l == "e/g"), "{names}");
    assert!(names.lines().any(|l| l == format!("e/{long}")), "{names}");
    // A file still goes out raw.
    let raw = t.run(&["dump", &format!("{spec}/d/e/g")]).ok();
    assert_eq!(raw.out.stdout, b"g");
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk_dirs(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn dump_into_a_closed_pipe_exits_quietly() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("f{i}")), random_bytes(i, 500_000)).unwrap();
    }
    t.backup(&[src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.to_str().unwrap().trim_start_matches('/'));
    let (code, _, err) = piped(&t, &["dump", &spec], &["head", "-c", "10"]);
    assert!(code == 0 || code == 141, "exit {code}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn ls_long_shows_owner_old_times_link_targets_and_escapes_names() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let odd = "new\nline\x1b[31m";
    fs::write(src.join(odd), b"odd").unwrap();
    fs::write(src.join("old"), b"12345").unwrap();
    let old = filetime::FileTime::from_unix_time(-86_400 * 365 - 1, 0);
    filetime::set_file_mtime(src.join("old"), old).unwrap();
    symlink("old", src.join("link")).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.to_str().unwrap().trim_start_matches('/'));
    let out = t.run(&["ls", "--long", &spec]).ok().stdout();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .map_or(nix::unistd::getuid().to_string(), |u| u.name);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.ends_with(name) || l.contains(&format!("{name} -> ")))
            .unwrap_or_else(|| panic!("{name} in {out}"))
            .to_string()
    };
    let o = line("/old");
    assert!(o.starts_with("-rw"), "{o}");
    assert!(o.contains(&user), "{o}");
    assert!(o.contains(" 5 "), "{o}");
    assert!(o.contains("1968-12-31T23:59:59Z"), "{o}");
    assert!(line("/link").ends_with("/link -> old"), "{out}");
    assert!(line("/new\\nline\\x1b[31m").starts_with("-rw"), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(!out.contains('\x1b'), "{out}");
    let j = t.run(&["--json", "ls", &spec]).ok().json();
    let rows = j.as_array().unwrap();
    let odd_row = rows
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with(odd))
        .expect("the raw name in --json");
    assert_eq!(odd_row["size"], 3);
    let link = rows
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("/link"))
        .unwrap();
    assert_eq!(link["target"], "old");
    let old_row = rows
        .iter()
        .find(|r| r["path"].as_str().unwrap().ends_with("/old"))
        .unwrap();
    assert_eq!(old_row["mtime"], "1968-12-31T23:59:59Z");
    assert_eq!(old_row["user"], user);
}

#[test]
fn if_changed_links_a_hard_link_broken_in_the_target_again() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"shared").unwrap();
    fs::hard_link(src.join("a"), src.join("b")).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let spec = format!("latest:{}", src.to_str().unwrap().trim_start_matches('/'));
    let out = t.path("out");
    restore(&t, &spec, &out, &[]).ok();
    assert_eq!(ino(&out.join("a")), ino(&out.join("b")));
    // b becomes a copy: same content, mode and mtime, another inode.
    fs::remove_file(out.join("b")).unwrap();
    fs::copy(out.join("a"), out.join("b")).unwrap();
    let m = fs::metadata(out.join("a")).unwrap();
    filetime::set_file_mtime(
        out.join("b"),
        filetime::FileTime::from_last_modification_time(&m),
    )
    .unwrap();
    let j = restore(&t, &spec, &out, &[]).ok().json();
    assert_eq!(
        (j["files"].clone(), j["unchanged"].clone()),
        (1.into(), 1.into()),
        "{j}"
    );
    assert_eq!(ino(&out.join("a")), ino(&out.join("b")));
}
