//! `backup --dry-run`: reads the sources and says what would be new, and
//! writes nothing: the repository stays byte-identical, and no files-cache
//! record of content never stored lets the next real run skip a file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::server::TestServer;
use crate::util::*;

/// Every entry below `dir`: its kind, mode and (for files) bytes.
fn state(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let bytes = if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(p);
            }
            out.insert(rel, (m.permissions().mode(), bytes));
        }
    }
    out
}

fn write_tree(src: &Path, seed: u64, files: u64) {
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..files {
        fs::write(
            src.join(format!("d/f{i}")),
            random_bytes(seed * 1000 + i, 20_000 + 1000 * i as usize),
        )
        .unwrap();
    }
    // The same bytes twice: counted once as new.
    let dup = random_bytes(seed * 1000 + 999, 300_000);
    fs::write(src.join("dup1"), &dup).unwrap();
    fs::write(src.join("dup2"), &dup).unwrap();
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn dry_run_writes_nothing_and_predicts_the_real_backup() {
    let t = TestRepo::new();
    let src = t.path("src");
    write_tree(&src, 1, 30);
    let s = src.to_str().unwrap();
    t.backup(&[s]);
    // Changes: new files, one rewritten, one touched but equal.
    write_tree(&src, 2, 10);
    fs::write(src.join("d/new"), random_bytes(77, 500_000)).unwrap();
    age(&src.join("d/f20"));

    let before = state(&t.repo);
    let dry = t.run(&["--json", "backup", "--dry-run", s]).ok().json();
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(
        dry.get("id").is_none(),
        "a dry run names no snapshot: {dry}"
    );
    assert_eq!(state(&t.repo), before, "a dry run changed the repository");
    assert_eq!(t.snapshots().len(), 1);
    assert!(num(&dry, "new_bytes") > 500_000, "{dry}");
    // A second dry run sees the same: the first recorded nothing.
    let again = t.run(&["--json", "backup", "--dry-run", s]).ok().json();
    for k in ["new_bytes", "new_blobs", "files", "files_unchanged"] {
        assert_eq!(num(&again, k), num(&dry, k), "{k}: {dry} vs {again}");
    }

    let real = t.backup(&[s]);
    for k in [
        "new_bytes",
        "new_blobs",
        "files",
        "files_unchanged",
        "bytes",
    ] {
        assert_eq!(num(&real, k), num(&dry, k), "{k}: dry {dry} vs real {real}");
    }
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&out, &src));
    t.run(&["check", "--read-data"]).ok();

    // Nothing changed since: no file content is new.
    let idle = t.run(&["--json", "backup", "--dry-run", s]).ok().json();
    let next = t.backup(&[s]);
    for k in ["new_bytes", "new_blobs", "files_unchanged"] {
        assert_eq!(
            num(&idle, k),
            num(&next, k),
            "{k}: dry {idle} vs real {next}"
        );
    }
}

#[test]
fn dry_run_prints_a_summary_and_creates_no_repository() {
    let t = TestRepo::new();
    let src = t.path("src");
    write_tree(&src, 3, 5);
    let out = t
        .run(&["backup", "--dry-run", src.to_str().unwrap()])
        .ok()
        .stdout();
    assert!(
        out.starts_with("dry run:") && out.contains("nothing written"),
        "{out}"
    );
    assert!(t.snapshots().is_empty());

    let missing = t.path("no-repo");
    let r = clean_command()
        .env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", t.path("cache"))
        .args(["--repo", missing.to_str().unwrap()])
        .args(["backup", "-n", src.to_str().unwrap()])
        .output()
        .unwrap();
    let r = Run { out: r }.fails();
    assert!(r.stderr().contains("creates nothing"), "{}", r.stderr());
    assert!(!missing.exists(), "a dry run created a repository");
}

#[test]
fn dry_run_against_a_server_leaves_its_namespace_as_it_was() {
    let server = TestServer::start(1);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tmp.path().join("src");
    write_tree(&src, 4, 20);
    let s = src.to_str().unwrap();
    let run = |args: &[&str]| Run {
        out: server.client(0, &cache).args(args).output().unwrap(),
    };
    run(&["--json", "backup", s]).ok();
    fs::write(src.join("d/new"), random_bytes(5, 400_000)).unwrap();
    let ns = server.namespace_dir("ns-0");
    let before = state(&ns);
    let dry = run(&["--json", "backup", "--dry-run", s]).ok().json();
    assert!(num(&dry, "new_bytes") >= 400_000, "{dry}");
    assert_eq!(
        state(&ns),
        before,
        "a dry run changed the server's namespace"
    );
    let real = run(&["--json", "backup", s]).ok().json();
    assert_eq!(num(&real, "new_bytes"), num(&dry, "new_bytes"));
}
