//! `coffer find` across 30 snapshots of a tree that changes a little
//! between each (files added, removed, renamed): the (snapshot, path) pairs
//! it prints are computed here independently from what the test wrote.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::*;

const DIRS: usize = 20;
const SNAPS: usize = 30;

struct History {
    t: TestRepo,
    src: PathBuf,
    /// Each snapshot's id, oldest first, with every entry it holds below
    /// `src` (relative paths, directories included).
    snaps: Vec<(String, BTreeSet<String>)>,
    /// A snapshot of another host, made after the third, holding `other.log`.
    other: String,
}

fn write(src: &Path, rel: &str, body: &str) {
    fs::write(src.join(rel), body).unwrap();
}

fn history() -> History {
    let t = TestRepo::new();
    let src = t.path("src");
    let mut files: BTreeSet<String> = BTreeSet::new();
    for d in 0..DIRS {
        fs::create_dir_all(src.join(format!("sub-{d:02}"))).unwrap();
        for f in 0..5 {
            let rel = format!("sub-{d:02}/f{f}.txt");
            write(&src, &rel, &rel);
            files.insert(rel);
        }
    }
    let mut snaps = Vec::new();
    let mut other = String::new();
    for i in 0..SNAPS {
        // Added: a log file in one of the first seven directories.
        let rel = format!("sub-{:02}/new{i:02}.log", i % 7);
        write(&src, &rel, &format!("{i}"));
        files.insert(rel);
        // Removed: the first log file, every third snapshot.
        if i % 3 == 1 {
            let gone = files.iter().find(|f| f.ends_with(".log")).unwrap().clone();
            fs::remove_file(src.join(&gone)).unwrap();
            files.remove(&gone);
        }
        // Renamed: the first text file becomes an upper-case log.
        if i % 4 == 2 {
            let from = files.iter().find(|f| f.ends_with(".txt")).unwrap().clone();
            let to = from.replace(".txt", &format!("-{i}.LOG"));
            fs::rename(src.join(&from), src.join(&to)).unwrap();
            files.remove(&from);
            files.insert(to);
        }
        let s = t.backup(&["--host", "main", src.to_str().unwrap()]);
        let mut entries = files.clone();
        entries.extend((0..DIRS).map(|d| format!("sub-{d:02}")));
        snaps.push((s["id"].as_str().unwrap().to_string(), entries));
        if i == 2 {
            let o = t.path("o");
            fs::create_dir_all(&o).unwrap();
            fs::write(o.join("other.log"), "o").unwrap();
            let s = t.backup(&["--host", "other", o.to_str().unwrap()]);
            other = s["id"].as_str().unwrap().to_string();
        }
    }
    History {
        t,
        src,
        snaps,
        other,
    }
}

type Pairs = BTreeSet<(String, String)>;

impl History {
    /// The pairs whose relative path `keep` takes, in the snapshots `which`
    /// (indexes) of the main host.
    fn expected(&self, which: &[usize], keep: impl Fn(&str) -> bool) -> Pairs {
        let base = self.src.to_str().unwrap();
        which
            .iter()
            .flat_map(|&i| {
                let (id, entries) = &self.snaps[i];
                entries
                    .iter()
                    .filter(|e| keep(e))
                    .map(move |e| (id.clone(), format!("{base}/{e}")))
            })
            .collect()
    }

    fn find(&self, args: &[&str]) -> (Pairs, Run) {
        let mut a = vec!["--json", "find"];
        a.extend_from_slice(args);
        let run = self.t.run(&a).ok();
        let v = run.json();
        let mut pairs = BTreeSet::new();
        for h in v.as_array().expect("one JSON array") {
            let id = h["snapshot"].as_str().unwrap().to_string();
            assert_eq!(&id[..8], h["short_id"].as_str().unwrap());
            for k in ["time", "type", "mtime", "host"] {
                assert!(h[k].is_string(), "{k} in {h}");
            }
            assert!(h["size"].is_u64(), "size in {h}");
            let fresh = pairs.insert((id, h["path"].as_str().unwrap().to_string()));
            assert!(fresh, "printed twice: {h}");
        }
        (pairs, run)
    }
}

fn name_of(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap()
}

/// The "N trees read" of the summary line.
fn trees_read(run: &Run) -> usize {
    let err = run.stderr();
    let line = err.lines().find(|l| l.contains("trees read")).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "trees").unwrap();
    words[i - 1].parse().unwrap()
}

#[test]
fn find_across_thirty_snapshots_returns_exactly_the_expected_pairs() {
    let h = history();
    let main: Vec<usize> = (0..SNAPS).collect();

    // By name, case-sensitive: the added logs, not the renamed .LOG files.
    let (got, run) = h.find(&["--host", "main", "*.log"]);
    let want = h.expected(&main, |e| name_of(e).ends_with(".log"));
    assert!(want.len() > 100, "a test that finds little proves little");
    assert_eq!(got, want);
    // Shared trees are read once: 30 snapshots of 25 trees would be 750
    // reads; each snapshot changes the root's chain and at most three
    // directories.
    let read = trees_read(&run);
    assert!(
        read < 30 * 9 + 25,
        "{read} trees read: shared trees read again"
    );

    // Without a filter, the other host's snapshot is searched too.
    let (all, _) = h.find(&["*.log"]);
    let extra: Vec<_> = all.difference(&want).collect();
    assert_eq!(extra.len(), 1, "{extra:?}");
    assert_eq!(extra[0].0, h.other);
    assert!(extra[0].1.ends_with("/o/other.log"));

    // --ignore-case: the renamed .LOG files too.
    let (got, _) = h.find(&["--host", "main", "-i", "*.LoG"]);
    let want_i = h.expected(&main, |e| name_of(e).to_lowercase().ends_with(".log"));
    assert!(want_i.len() > want.len());
    assert_eq!(got, want_i);

    // A pattern with a slash reads the path: `*` stays in one component.
    let (got, _) = h.find(&["sub-03/*"]);
    let want_p = h.expected(&main, |e| e.starts_with("sub-03/"));
    assert_eq!(got, want_p);
    // --path: the whole path, `*` across components: the directory and all
    // beneath it.
    let (got, run) = h.find(&["--path", "*sub-05*"]);
    let want_p = h.expected(&main, |e| e.starts_with("sub-05"));
    assert_eq!(got, want_p);
    assert!(trees_read(&run) < 30 * 9 + 25);

    // --newest: the three newest snapshots with a match.
    let (got, _) = h.find(&["--newest", "3", "--host", "main", "*.log"]);
    let want_n = h.expected(&[SNAPS - 3, SNAPS - 2, SNAPS - 1], |e| {
        name_of(e).ends_with(".log")
    });
    assert_eq!(got, want_n);
    // Of those with a match: the other host's only snapshot, although old.
    let (got, _) = h.find(&["--newest", "1", "other.*"]);
    assert_eq!(got.iter().map(|p| &p.0).collect::<Vec<_>>(), [&h.other]);

    // Named snapshots only.
    let (got, _) = h.find(&["--snapshot", &h.snaps[4].0[..8], "f0.txt"]);
    assert_eq!(got, h.expected(&[4], |e| name_of(e) == "f0.txt"));

    // Text output: one line a hit, with the short id and the path.
    let text = h.t.run(&["find", "--host", "main", "*.log"]).ok().stdout();
    assert_eq!(text.lines().count(), want.len());
    for (id, path) in &want {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&id[..8]) && l.ends_with(path.as_str())),
            "{id} {path} not in the text output"
        );
    }

    // A bad pattern is a usage error.
    assert_eq!(h.t.run(&["find", "a["]).code(), 2);
}

#[test]
fn find_works_on_a_quic_repository() {
    use crate::server::{init_args, run, TestServer};
    let srv = TestServer::start(1);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        fs::write(src.join(format!("d/r{i}.log")), format!("{i}")).unwrap();
        let s = run(
            srv.client(0, &cache),
            &["--json", "backup", src.to_str().unwrap()],
        )
        .ok()
        .json();
        ids.push(s["id"].as_str().unwrap().to_string());
    }
    let v = run(srv.client(0, &cache), &["--json", "find", "*.log"])
        .ok()
        .json();
    let got: BTreeSet<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["snapshot"].as_str().unwrap().to_string(),
                h["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = (0..3)
        .flat_map(|s| {
            let ids = &ids;
            let src = &src;
            (0..=s).map(move |i| {
                (
                    ids[s].clone(),
                    format!("{}/d/r{i}.log", src.to_str().unwrap()),
                )
            })
        })
        .collect();
    assert_eq!(got, want);
}
