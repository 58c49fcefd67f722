//! The harness: a temporary repository and cache, and a way to run the
//! binary with a clean environment (no `COFFER_*` from the caller).

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub cache: PathBuf,
}

/// The result of one run of the binary.
pub struct Run {
    pub out: Output,
}

impl Run {
    pub fn ok(self) -> Run {
        assert!(
            self.out.status.success(),
            "coffer failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.out.status,
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn fails(self) -> Run {
        assert!(
            !self.out.status.success(),
            "coffer should have failed\nstdout:\n{}",
            self.stdout()
        );
        self
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.out.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\nstderr: {}",
                self.stdout(),
                self.stderr()
            )
        })
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_coffer")
}

/// A command with the caller's `COFFER_*` variables removed.
pub fn clean_command() -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("COFFER_") {
            c.env_remove(k);
        }
    }
    c
}

impl TestRepo {
    /// A new, initialized repository with small chunks (so tests make many)
    /// and the cheapest allowed KDF.
    pub fn new() -> TestRepo {
        Self::with_init(&[])
    }

    pub fn with_init(extra: &[&str]) -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        Self::init_at(dir, repo, extra)
    }

    /// Initializes a repository at `repo` (which may lie outside `dir`,
    /// on a file system of its own), with its cache in `dir`.
    pub fn init_at(dir: tempfile::TempDir, repo: PathBuf, extra: &[&str]) -> TestRepo {
        let t = TestRepo {
            repo,
            cache: dir.path().join("cache"),
            dir,
        };
        let mut args = vec![
            "init",
            "--kdf-memory-kib",
            "19456",
            "--kdf-iterations",
            "2",
            "--chunk-min",
            "16384",
            "--chunk-avg",
            "65536",
            "--chunk-max",
            "262144",
            "--pack-size",
            "1048576",
        ];
        args.extend_from_slice(extra);
        t.run(&args).ok();
        t
    }

    /// A path inside the test's temporary directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn command(&self) -> Command {
        let mut c = clean_command();
        c.env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_CACHE_DIR", &self.cache)
            .arg("--repo")
            .arg(&self.repo);
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run {
            out: self
                .command()
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        }
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.command();
        for (k, v) in env {
            c.env(k, v);
        }
        Run {
            out: c.args(args).stdin(Stdio::null()).output().unwrap(),
        }
    }

    pub fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let (child, writer) = spawn_fed(self.command().args(args), input.to_vec().into());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Run { out }
    }

    /// Backs up and returns the new snapshot's JSON summary.
    pub fn backup(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json", "backup"];
        a.extend_from_slice(args);
        self.run(&a).ok().json()
    }

    pub fn snapshots(&self) -> Vec<serde_json::Value> {
        self.run(&["--json", "snapshots"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every file below the repository directory.
    pub fn repo_files(&self) -> Vec<PathBuf> {
        walk(&self.repo)
    }

    pub fn packs(&self) -> Vec<PathBuf> {
        walk(&self.repo.join("packs"))
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Deterministic text-like bytes (compressible, but not trivially).
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "alpha", "backup", "coffer", "delta", "epsilon", "restore", "chunk", "pack", "\n", "zeta",
        "42",
    ];
    let r = random_bytes(seed, len / 2 + 16);
    let mut v = Vec::with_capacity(len + 16);
    let mut i = 0;
    while v.len() < len {
        v.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        v.push(b' ');
        i += 1;
    }
    v.truncate(len);
    v
}

/// Where a source path ends up under a restore target.
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

/// Sets an entry's mtime into the past, so the files cache trusts it.
pub fn age(path: &Path) {
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Compares two trees entry by entry: type, content, mode, owner, mtime,
/// symlink target, xattrs, device numbers and hard-link structure.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ea = walk_all(a);
    let eb = walk_all(b);
    let names_a: Vec<_> = ea
        .iter()
        .map(|p| p.strip_prefix(a).unwrap().to_path_buf())
        .collect();
    let names_b: Vec<_> = eb
        .iter()
        .map(|p| p.strip_prefix(b).unwrap().to_path_buf())
        .collect();
    assert_eq!(names_a, names_b, "different entries");
    let mut links_a = std::collections::HashMap::new();
    let mut links_b = std::collections::HashMap::new();
    for (pa, pb) in ea.iter().zip(eb.iter()) {
        let (ma, mb) = (
            fs::symlink_metadata(pa).unwrap(),
            fs::symlink_metadata(pb).unwrap(),
        );
        let what = pa.display();
        assert_eq!(ma.file_type(), mb.file_type(), "type of {what}");
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(pa).unwrap(),
                fs::read_link(pb).unwrap(),
                "target of {what}"
            );
        } else {
            assert_eq!(ma.mode(), mb.mode(), "mode of {what}");
        }
        if ma.is_file() {
            assert_eq!(
                fs::read(pa).unwrap(),
                fs::read(pb).unwrap(),
                "content of {what}"
            );
            if ma.nlink() > 1 {
                links_a
                    .entry(ma.ino())
                    .or_insert_with(Vec::new)
                    .push(pa.strip_prefix(a).unwrap().to_path_buf());
                links_b
                    .entry(mb.ino())
                    .or_insert_with(Vec::new)
                    .push(pb.strip_prefix(b).unwrap().to_path_buf());
            }
        }
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {what}"
        );
        if is_root() {
            assert_eq!(
                (ma.uid(), ma.gid()),
                (mb.uid(), mb.gid()),
                "owner of {what}"
            );
        }
        if ma.file_type().is_char_device() || ma.file_type().is_block_device() {
            assert_eq!(ma.rdev(), mb.rdev(), "device of {what}");
        }
        let xa: Vec<_> = xattr::list(pa).map(|l| l.collect()).unwrap_or_default();
        let xb: Vec<_> = xattr::list(pb).map(|l| l.collect()).unwrap_or_default();
        assert_eq!(xa, xb, "xattrs of {what}");
        for n in &xa {
            assert_eq!(
                xattr::get(pa, n).unwrap(),
                xattr::get(pb, n).unwrap(),
                "xattr value of {what}"
            );
        }
    }
    let mut ga: Vec<_> = links_a.into_values().collect();
    let mut gb: Vec<_> = links_b.into_values().collect();
    ga.sort();
    gb.sort();
    assert_eq!(ga, gb, "hard-link groups");
}

use std::os::unix::fs::FileTypeExt;

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut rd: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    rd.sort();
    for p in rd {
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk_all(&p));
        }
    }
    out
}

/// Spawns `cmd` with its standard streams piped and `input` written to its
/// standard input by a thread, so the caller goes on meanwhile (a child
/// that exits or is killed first breaks the pipe: that write fails).
pub fn spawn_fed(
    cmd: &mut Command,
    input: std::sync::Arc<Vec<u8>>,
) -> (std::process::Child, std::thread::JoinHandle<()>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    (child, writer)
}
