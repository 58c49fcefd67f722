//! Snapshot filters (`--host`, `--tag`, `--path`), `latest` under them,
//! `snapshots --group-by`, and the `SNAP:SUBPATH` form, on the real binary:
//! two hosts and two jobs in one repository.

use std::fs;
use std::path::PathBuf;

use crate::util::*;

struct Fleet {
    t: TestRepo,
    etc: PathBuf,
    ids: Vec<(String, &'static str)>,
}

/// Host A backs up `etc` (tagged nightly) and a dump; host B backs up the
/// same path with other content, last, so `latest` alone is B's.
fn fleet() -> Fleet {
    let t = TestRepo::new();
    let etc = t.path("etc");
    let mut ids = Vec::new();
    let write = |who: &str| {
        fs::create_dir_all(etc.join("nginx")).unwrap();
        fs::write(etc.join("hostname"), format!("{who}\n")).unwrap();
        fs::write(etc.join("nginx/site.conf"), format!("server {who};\n")).unwrap();
    };
    write("a");
    let a = t.backup(&["--host", "a", "--tag", "nightly", etc.to_str().unwrap()]);
    ids.push((a["id"].as_str().unwrap().to_string(), "a-etc"));
    let d = t
        .run_stdin(
            &[
                "--json",
                "backup",
                "--host",
                "a",
                "--stdin",
                "--stdin-name",
                "db.sql",
            ],
            b"dump of a\n",
        )
        .ok()
        .json();
    ids.push((d["id"].as_str().unwrap().to_string(), "a-db"));
    write("b");
    fs::write(etc.join("only-b"), "b\n").unwrap();
    let b = t.backup(&["--host", "b", etc.to_str().unwrap()]);
    ids.push((b["id"].as_str().unwrap().to_string(), "b-etc"));
    Fleet { t, etc, ids }
}

impl Fleet {
    fn id(&self, name: &str) -> &str {
        &self.ids.iter().find(|(_, n)| *n == name).unwrap().0
    }
    /// The path of `etc` inside a snapshot, relative to its root.
    fn rel(&self) -> String {
        self.etc
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string()
    }
}

fn ids_of(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn latest_under_a_filter_picks_the_right_snapshot_for_every_command() {
    let f = fleet();
    let (t, etc) = (&f.t, f.etc.to_str().unwrap());
    // ls: latest of host a with that path is a's etc, not b's later one
    let ls = t
        .run(&["--json", "ls", "latest", "--host", "a", "--path", etc])
        .ok()
        .json();
    let paths: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.iter().any(|p| p.ends_with("/hostname")), "{paths:?}");
    assert!(!paths.iter().any(|p| p.ends_with("/only-b")), "{paths:?}");
    // the tag filter and the path filter (trailing slash ignored) agree
    let tagged = t
        .run(&[
            "--json",
            "snapshots",
            "--tag",
            "nightly",
            "--path",
            &format!("{etc}/"),
        ])
        .ok()
        .json();
    assert_eq!(ids_of(&tagged), vec![f.id("a-etc").to_string()]);
    // dump: a file of the filtered latest, by SNAP:SUBPATH
    let hostname = format!("latest:{}/hostname", f.rel());
    let out = t
        .run(&["dump", &hostname, "--host", "a", "--path", etc])
        .ok()
        .out
        .stdout;
    assert_eq!(out, b"a\n");
    // host a's newest is its dump, which has no such file
    let r = t.run(&["dump", &hostname, "--host", "a"]).fails();
    assert!(r.stderr().contains("not found"), "{}", r.stderr());
    let out = t.run(&["dump", &hostname]).ok().out.stdout;
    assert_eq!(out, b"b\n", "latest alone is the newest of all");
    let out = t
        .run(&[
            "dump", "latest", "db.sql", "--host", "a", "--path", "db.sql",
        ])
        .ok()
        .out
        .stdout;
    assert_eq!(out, b"dump of a\n");
    // restore: SNAP:SUBPATH puts the subtree's contents into the target
    let target = t.path("r1");
    let spec = format!("latest:{}/nginx", f.rel());
    t.run(&[
        "restore",
        &spec,
        "--host",
        "a",
        "--path",
        etc,
        "--target",
        target.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        fs::read_to_string(target.join("site.conf")).unwrap(),
        "server a;\n"
    );
    assert_eq!(fs::read_dir(&target).unwrap().count(), 1);
    // a file named as SNAP:SUBPATH is refused with a way out, nothing written
    let target2 = t.path("r2");
    let r = t
        .run(&["restore", &hostname, "--target", target2.to_str().unwrap()])
        .fails();
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("not a directory"), "{}", r.stderr());
    // diff of the two hosts' etc, each as SNAP:SUBPATH
    let d = t
        .run(&[
            "--json",
            "diff",
            &format!("{}:{}", &f.id("a-etc")[..12], f.rel()),
            &format!("{}:{}", &f.id("b-etc")[..12], f.rel()),
        ])
        .ok()
        .json();
    let changed: Vec<String> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["change"].as_str().unwrap(),
                c["path"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        changed
            .iter()
            .any(|c| c.ends_with("only-b") && c.starts_with('+')),
        "{changed:?}"
    );
    assert!(
        changed.iter().any(|c| c.ends_with("hostname")),
        "{changed:?}"
    );
    assert!(
        !changed.iter().any(|c| c.contains(&f.rel())),
        "paths are relative to the subtree: {changed:?}"
    );
    // a filter nothing matches names itself
    let r = t.run(&["ls", "latest", "--host", "c"]).fails();
    assert!(r.stderr().contains("--host c"), "{}", r.stderr());
}

#[test]
fn snapshots_list_in_groups_and_an_ambiguous_prefix_lists_its_candidates() {
    let f = fleet();
    let t = &f.t;
    let g = t
        .run(&["--json", "snapshots", "--group-by", "host"])
        .ok()
        .json();
    let groups = g.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{g}");
    assert_eq!(groups[0]["group"], serde_json::json!({"host": "a"}));
    assert_eq!(
        ids_of(&groups[0]["snapshots"]),
        vec![f.id("a-etc"), f.id("a-db")]
    );
    assert_eq!(ids_of(&groups[1]["snapshots"]), vec![f.id("b-etc")]);
    let g = t
        .run(&["--json", "snapshots", "--group-by", "host,paths"])
        .ok()
        .json();
    assert_eq!(g.as_array().unwrap().len(), 3, "{g}");
    let text = t
        .run(&["snapshots", "--group-by", "host,paths"])
        .ok()
        .stdout();
    assert!(text.contains("host a, paths db.sql:"), "{text}");
    let text = t.run(&["snapshots", "--host", "b"]).ok().stdout();
    assert!(
        text.contains("1 snapshots (2 more not matching --host b)"),
        "{text}"
    );
    let r = t.run(&["snapshots", "--group-by", "color"]).fails();
    assert_eq!(r.code(), 2);
    // the empty prefix names every snapshot: refused, with the candidates
    let r = t.run(&["ls", ""]).fails();
    for (id, _) in &f.ids {
        assert!(r.stderr().contains(&id[..16]), "{}", r.stderr());
    }
    // a prefix names its snapshot whatever the filter says
    let ls = t
        .run(&["--json", "ls", &f.id("b-etc")[..10], "--host", "a"])
        .ok()
        .json();
    assert!(ls
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["path"].as_str().unwrap().ends_with("only-b")));
}

#[test]
fn forget_latest_under_a_filter_takes_only_that_jobs_newest() {
    let f = fleet();
    let t = &f.t;
    // inside the lock window the store refuses; the refusal names a's etc,
    // the newest matching snapshot, not b's
    let r = t
        .run(&[
            "forget",
            "latest",
            "--host",
            "a",
            "--path",
            f.etc.to_str().unwrap(),
        ])
        .fails();
    let short = &f.id("a-etc")[..8];
    assert!(r.stderr().contains(short), "{}", r.stderr());
    assert_eq!(
        ids_of(&t.run(&["--json", "snapshots"]).ok().json()).len(),
        3
    );
}
