//! What a backup leaves out: every exclude option against one tree, each
//! compared with a listing this file computes on its own (a walk with
//! std::fs and the rule written out by hand), and what the snapshot holds.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::util::*;

const SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// The tree every test backs up: nested directories, `.tmp` files, names
/// in mixed case, a cache directory with a valid CACHEDIR.TAG and one with
/// a wrong one, a directory marked `.nobackup`, big and small files, and a
/// name with leading spaces.
fn tree(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    let files: &[(&str, usize)] = &[
        ("a.txt", 10),
        ("x.tmp", 10),
        ("keep.tmp", 10),
        ("Notes.TMP", 10),
        ("  spaced", 10),
        ("data/x.tmp", 10),
        ("data/y.txt", 10),
        ("data/nested/x.tmp", 10),
        ("other/data/x.tmp", 10),
        ("sub/f", 10),
        ("deep/sub", 10),
        ("deep/er/sub/g", 10),
        ("cache/blob", 10),
        ("cache/inner/blob2", 10),
        ("fakecache/blob", 10),
        ("marked/file", 10),
        ("marked/inner/f", 10),
        ("Logs/Error.LOG", 10),
        ("Logs/KEEP.Tmp", 10),
        ("big.bin", (2 << 20) + 1),
        ("edge.bin", 1 << 20),
        ("small.bin", 3),
        ("bigdir/small", 3),
    ];
    for (i, (rel, len)) in files.iter().enumerate() {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, random_bytes(i as u64, *len)).unwrap();
    }
    let mut tag = SIGNATURE.to_vec();
    tag.extend_from_slice(b"\n# This file is a cache directory tag.\n");
    fs::write(src.join("cache/CACHEDIR.TAG"), tag).unwrap();
    fs::write(
        src.join("fakecache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc5 (one digit short)\n",
    )
    .unwrap();
    fs::write(src.join("marked/.nobackup"), b"").unwrap();
    src
}

/// One entry as the hand-written rules see it.
struct Entry<'a> {
    /// Below the source, `/`-separated.
    rel: &'a str,
    name: &'a str,
    is_dir: bool,
    len: u64,
    /// Its directory.
    dir: &'a Path,
}

/// Every entry below `src` that `leave_out` keeps (a directory left out
/// takes its subtree with it), by a walk of its own.
fn expected(src: &Path, leave_out: &dyn Fn(&Entry) -> bool) -> BTreeSet<String> {
    fn walk(
        dir: &Path,
        prefix: &str,
        leave_out: &dyn Fn(&Entry) -> bool,
        out: &mut BTreeSet<String>,
    ) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let rel = format!("{prefix}{name}");
            let m = fs::symlink_metadata(e.path()).unwrap();
            let entry = Entry {
                rel: &rel,
                name: &name,
                is_dir: m.is_dir(),
                len: m.len(),
                dir,
            };
            if leave_out(&entry) {
                continue;
            }
            out.insert(rel.clone());
            if m.is_dir() {
                walk(&e.path(), &format!("{rel}/"), leave_out, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(src, "", leave_out, &mut out);
    out
}

/// The latest snapshot's entries below `src`, relative to it.
fn listed(t: &TestRepo, src: &Path) -> BTreeSet<String> {
    let rows = t
        .run(&["--json", "ls", "latest", src.to_str().unwrap()])
        .ok()
        .json();
    let base = format!("{}/", src.display());
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .map(|p| p.strip_prefix(&base).unwrap_or(p).to_string())
        .collect()
}

/// Backs `src` up with `args` and checks the snapshot against the rule.
fn check(args: &[&str], leave_out: &dyn Fn(&Entry) -> bool) -> (TestRepo, PathBuf, Run) {
    let t = TestRepo::new();
    let src = tree(&t);
    let mut a = vec!["--json", "backup"];
    a.extend_from_slice(args);
    a.push(src.to_str().unwrap());
    let run = t.run(&a).ok();
    let want = expected(&src, leave_out);
    let got = listed(&t, &src);
    assert_eq!(got, want, "args {args:?}");
    (t, src, run)
}

fn has_valid_tag(dir: &Path) -> bool {
    fs::read(dir.join("CACHEDIR.TAG")).is_ok_and(|b| b.starts_with(SIGNATURE))
}

#[test]
fn relative_patterns_are_anchored_at_the_source() {
    // `data/x.tmp` is the one below the source, not other/data/x.tmp nor
    // data/nested/x.tmp; `sub/` takes directories named sub at any depth,
    // not the file deep/sub.
    let rule = |e: &Entry| e.rel == "data/x.tmp" || (e.is_dir && e.name == "sub");
    check(&["--exclude", "data/x.tmp", "--exclude", "sub/"], &rule);
    // The same written as absolute paths below the source, or anchored.
    let t = TestRepo::new();
    let src = tree(&t);
    let abs = format!("{}/data/x.tmp", src.display());
    let s = src.to_str().unwrap();
    t.backup(&["--exclude", &abs, "--exclude", "/sub", s]);
    let want = expected(&src, &|e| e.rel == "data/x.tmp" || e.rel == "sub");
    assert_eq!(listed(&t, &src), want);
}

#[test]
fn names_at_any_depth_and_double_star() {
    check(&["--exclude", "*.tmp"], &|e| e.name.ends_with(".tmp"));
    check(&["--exclude", "**/data/**/x.tmp"], &|e| {
        e.rel.contains("data/") && e.name == "x.tmp"
    });
}

#[test]
fn iexclude_ignores_case() {
    check(
        &["--iexclude", "*.TMP", "--iexclude", "logs/error.log"],
        &|e| e.name.to_lowercase().ends_with(".tmp") || e.rel == "Logs/Error.LOG",
    );
    // The case-sensitive option leaves the others.
    check(&["--exclude", "*.tmp"], &|e| e.name.ends_with(".tmp"));
}

#[test]
fn a_bang_pattern_includes_again() {
    check(&["--exclude", "*.tmp", "--exclude", "!keep.tmp"], &|e| {
        e.name.ends_with(".tmp") && e.name != "keep.tmp"
    });
}

#[test]
fn exclude_file_skips_comments_and_blank_lines() {
    let t = TestRepo::new();
    let list = t.path("excludes");
    fs::write(
        &list,
        "# caches and scratch\n\n*.tmp\n   \n  # indented comment\n  /data  \n!keep.tmp\n",
    )
    .unwrap();
    check(&["--exclude-file", list.to_str().unwrap()], &|e| {
        (e.name.ends_with(".tmp") && e.name != "keep.tmp") || e.rel == "data"
    });
    let ilist = t.path("iexcludes");
    fs::write(&ilist, "# either case\n*.TMP\n").unwrap();
    check(&["--iexclude-file", ilist.to_str().unwrap()], &|e| {
        e.name.to_lowercase().ends_with(".tmp")
    });
}

#[test]
fn exclude_caches_keeps_the_tag_and_needs_the_signature() {
    check(&["--exclude-caches"], &|e| {
        has_valid_tag(e.dir) && e.name != "CACHEDIR.TAG"
    });
}

#[test]
fn exclude_if_present_empties_a_marked_directory() {
    let present =
        |names: &[&str], e: &Entry| names.iter().any(|n| e.dir.join(n).exists() && e.name != *n);
    check(&["--exclude-if-present", ".nobackup"], &|e| {
        present(&[".nobackup"], e)
    });
    check(
        &[
            "--exclude-if-present",
            ".nobackup",
            "--exclude-if-present",
            "CACHEDIR.TAG",
        ],
        // By name only: the directory with the wrong tag goes too.
        &|e| present(&[".nobackup"], e) || present(&["CACHEDIR.TAG"], e),
    );
}

#[test]
fn exclude_larger_than_takes_files_only() {
    check(&["--exclude-larger-than", "1M"], &|e| {
        !e.is_dir && e.len > 1 << 20
    });
    check(&["--exclude-larger-than", "5"], &|e| !e.is_dir && e.len > 5);
    let t = TestRepo::new();
    let src = tree(&t);
    let r = t.run(&[
        "backup",
        "--exclude-larger-than",
        "ten",
        src.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
}

/// Runs `coffer backup ARGS` in `dir`.
fn backup_in(t: &TestRepo, dir: &Path, args: &[&str]) -> Run {
    let mut c = t.command();
    c.current_dir(dir)
        .arg("backup")
        .args(args)
        .stdin(Stdio::null());
    Run {
        out: c.output().unwrap(),
    }
}

/// The entries of the snapshot's source paths as the test expects them:
/// each listed path and everything below it.
fn under(src: &Path, tops: &[&str]) -> BTreeSet<String> {
    expected(src, &|e| {
        !tops
            .iter()
            .any(|t| e.rel == *t || e.rel.starts_with(&format!("{t}/")))
    })
}

#[test]
fn files_from_trims_and_skips_comments() {
    let t = TestRepo::new();
    let src = tree(&t);
    let list = t.path("list");
    fs::write(
        &list,
        "# what to save\n\n  data  \n\t# another comment\nmarked\n",
    )
    .unwrap();
    backup_in(&t, &src, &["--files-from", list.to_str().unwrap()]).ok();
    assert_eq!(listed(&t, &src), under(&src, &["data", "marked"]));
    // With positional paths as well, and the excludes applied.
    let t = TestRepo::new();
    let src = tree(&t);
    fs::write(&list, "data\n").unwrap();
    backup_in(
        &t,
        &src,
        &[
            "--files-from",
            list.to_str().unwrap(),
            "--exclude",
            "x.tmp",
            "sub",
        ],
    )
    .ok();
    let mut want = under(&src, &["data", "sub"]);
    want.retain(|p| !p.ends_with("x.tmp"));
    assert_eq!(listed(&t, &src), want);
}

#[test]
fn files_from_verbatim_and_raw_keep_every_byte() {
    let t = TestRepo::new();
    let src = tree(&t);
    let list = t.path("list");
    fs::write(&list, "  spaced\ndata\n").unwrap();
    // Trimmed, the name is another one, which does not exist.
    backup_in(&t, &src, &["--files-from", list.to_str().unwrap()]).fails();
    backup_in(&t, &src, &["--files-from-verbatim", list.to_str().unwrap()]).ok();
    assert_eq!(listed(&t, &src), under(&src, &["  spaced", "data"]));
    let raw = t.path("raw");
    fs::write(&raw, b"  spaced\0marked\0").unwrap();
    backup_in(&t, &src, &["--files-from-raw", raw.to_str().unwrap()]).ok();
    assert_eq!(listed(&t, &src), under(&src, &["  spaced", "marked"]));
}

#[test]
fn the_job_file_takes_the_same_keys() {
    let t = TestRepo::new();
    let src = tree(&t);
    let ex = t.path("excludes");
    fs::write(&ex, "# from the job\ndata/x.tmp\n").unwrap();
    let cfg = t.path("job.toml");
    fs::write(
        &cfg,
        format!(
            "exclude_file = [\"{ex}\"]\niexclude = [\"logs/\"]\nexclude_caches = true\n\
             exclude_if_present = [\".nobackup\"]\nexclude_larger_than = \"1K\"\n\
             [[source]]\npath = \"{src}\"\n",
            ex = ex.display(),
            src = src.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    // The command line adds a pattern and overrides the size.
    t.run(&[
        "backup",
        "--config",
        c,
        "--exclude",
        "sub/",
        "--exclude-larger-than",
        "2M",
    ])
    .ok();
    let want = expected(&src, &|e| {
        e.rel == "data/x.tmp"
            || (e.is_dir && e.name.eq_ignore_ascii_case("logs"))
            || (has_valid_tag(e.dir) && e.name != "CACHEDIR.TAG")
            || (e.dir.join(".nobackup").exists() && e.name != ".nobackup")
            || (!e.is_dir && e.len > 2 << 20)
            || (e.is_dir && e.name == "sub")
    });
    assert_eq!(listed(&t, &src), want);
    // files_from in the job file is a path source of its own.
    let list = t.path("list");
    fs::write(&list, format!("# listed\n{}/marked\n", src.display())).unwrap();
    let cfg2 = t.path("job2.toml");
    fs::write(&cfg2, format!("files_from = [\"{}\"]\n", list.display())).unwrap();
    t.run(&["backup", "--config", cfg2.to_str().unwrap()]).ok();
    assert_eq!(listed(&t, &src), under(&src, &["marked"]));
    // A bad size names the key.
    fs::write(
        &cfg2,
        format!(
            "exclude_larger_than = \"lots\"\n[[source]]\npath = \"{}\"\n",
            src.display()
        ),
    )
    .unwrap();
    let r = t
        .run(&["backup", "--config", cfg2.to_str().unwrap()])
        .fails();
    assert!(r.stderr().contains("exclude_larger_than"), "{}", r.stderr());
}

#[test]
fn a_pattern_that_matches_nothing_is_warned_about() {
    let (t, src, run) = check(
        &[
            "--exclude",
            "*.nomatch",
            "--exclude",
            "*.tmp",
            "--iexclude",
            "NOPE/",
        ],
        &|e| e.name.ends_with(".tmp"),
    );
    let err = run.stderr();
    for p in ["*.nomatch", "NOPE/"] {
        assert!(
            err.contains(&format!(
                "exclude pattern \"{p}\" matched nothing under the backed-up paths"
            )),
            "{err}"
        );
    }
    assert!(!err.contains("\"*.tmp\""), "{err}");
    let warned = run.json()["exclude_warnings"].as_array().unwrap().len();
    assert_eq!(warned, 2);
    // Exit 0: nothing was left out that should have been saved.
    assert_eq!(run.code(), 0);
    // Every pattern matching: no warning; an absolute path below another
    // directory than the source's is one that matches nothing.
    let r = t
        .run(&[
            "backup",
            "--exclude",
            "*.tmp",
            "--exclude",
            "/data",
            src.to_str().unwrap(),
        ])
        .ok();
    assert!(!r.stderr().contains("matched nothing"), "{}", r.stderr());
    let r = t
        .run(&[
            "backup",
            "--exclude",
            "/elsewhere/data",
            src.to_str().unwrap(),
        ])
        .ok();
    assert!(
        r.stderr().contains("\"/elsewhere/data\" matched nothing"),
        "{}",
        r.stderr()
    );
    // A dry run says it too, writing nothing.
    let r = t
        .run(&[
            "--json",
            "backup",
            "--dry-run",
            "--exclude",
            "*.nomatch",
            src.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(r.json()["exclude_warnings"].as_array().unwrap().len(), 1);
}
