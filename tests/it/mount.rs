//! `coffer mount`: a real FUSE mount of a local and a remote repository,
//! read through the kernel and compared with the source; random reads of a
//! large file; the host/tag layout and filters; a clean exit on SIGTERM
//! during reads; EIO on a damaged pack while the mount lives on.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer::crypto::Kind;
use coffer::id::PackId;

use crate::util::*;

/// Whether FUSE can be used here; says why not when it cannot.
fn fuse_here() -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: /dev/fuse is absent, no FUSE mount can be made here");
        return false;
    }
    true
}

/// Whether `dir` is a mount point now.
fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want))
}

/// A running `coffer mount`, unmounted and stopped when dropped (so a
/// failing test never leaves a mount behind).
struct Mounted {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
}

impl Mounted {
    /// Runs `cmd mount ARGS DIR` in the background and waits (bounded) for
    /// the mount to appear.
    fn start(mut cmd: Command, args: &[&str], dir: &Path) -> Mounted {
        fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let log = dir.with_extension("log");
        let child = cmd
            .arg("mount")
            .args(args)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = Mounted { child, dir, log };
        let start = Instant::now();
        while !is_mounted(&m.dir) {
            if let Some(st) = m.child.try_wait().unwrap() {
                panic!("coffer mount exited ({st}): {}", m.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no mount after 60 s: {}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Sends a signal and waits (bounded) for the process to end.
    fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "coffer mount still runs 20 s after {sig}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "-q"])
            .arg(&self.dir)
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The snapshot of `src` inside a mounted snapshot directory.
fn inside(snap_dir: &Path, src: &Path) -> PathBuf {
    snap_dir.join(src.strip_prefix("/").unwrap())
}

/// Reads `len` bytes at `off` of `f`, or to its end.
fn read_at(f: &mut fs::File, off: u64, len: usize) -> Vec<u8> {
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut buf = Vec::new();
    f.take(len as u64).read_to_end(&mut buf).unwrap();
    buf
}

/// Reads at odd offsets and lengths of `big` through the mount and compares
/// with `data`.
fn random_reads(through: &Path, data: &[u8]) {
    let mut f = fs::File::open(through).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % data.len() as u64) | 1;
        let len = [1usize, 7, 4095, 4097, 65_537, 300_001][i % 6];
        let end = (off as usize + len).min(data.len());
        assert!(
            read_at(&mut f, off, len) == data[off as usize..end],
            "read of {len} at {off}"
        );
    }
    // Past the end: nothing; across the end: the tail.
    assert!(read_at(&mut f, data.len() as u64 + 5, 10).is_empty());
    let tail = data.len() as u64 - 3;
    assert_eq!(read_at(&mut f, tail, 10), data[tail as usize..]);
}

/// A directory's entry names, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn short(id: &serde_json::Value) -> String {
    id.as_str().unwrap()[..8].to_string()
}

#[test]
fn a_local_snapshot_reads_through_the_mount_as_its_source() {
    if !fuse_here() {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    crate::backup::make_tree(&src);
    let big = random_bytes(9, 5 << 20);
    fs::write(src.join("big.bin"), &big).unwrap();
    // More entries than one listing reply holds.
    fs::create_dir(src.join("many")).unwrap();
    for i in 0..1500 {
        fs::write(
            src.join(format!("many/entry-with-a-longish-name-{i:05}")),
            i.to_string(),
        )
        .unwrap();
    }
    let a = t.backup(&["--host", "alpha", src.to_str().unwrap()]);
    fs::write(src.join("small.txt"), b"changed\n").unwrap();
    let b = t.backup(&["--host", "beta", "--tag", "web", src.to_str().unwrap()]);
    let m = Mounted::start(t.command(), &[], &t.path("mnt"));

    // The newest snapshot, whole, by id: content, modes, times, owners,
    // symlinks, xattrs, hard links.
    let snap = m.path("ids").join(short(&b["id"]));
    assert_same_tree(&src, &inside(&snap, &src));
    random_reads(&inside(&snap, &src).join("big.bin"), &big);

    // By host: each host's snapshots by time, with `latest` linking to the
    // newest; `latest/HOST` too; tags likewise.
    let hosts = names(&m.path("hosts"));
    assert_eq!(hosts, ["alpha", "beta"]);
    let alpha = m.path("hosts/alpha/latest");
    assert_eq!(
        fs::read(inside(&alpha, &src).join("small.txt")).unwrap(),
        b"hello coffer\n",
        "alpha's snapshot is the first one"
    );
    assert_eq!(
        fs::read(inside(&m.path("latest/beta"), &src).join("small.txt")).unwrap(),
        b"changed\n"
    );
    assert_eq!(names(&m.path("tags")), ["web"]);
    assert_eq!(
        names(&m.path("tags/web")).len(),
        2,
        "beta's snapshot and latest"
    );
    assert_eq!(names(&m.path("latest")), ["alpha", "beta"]);
    let ids = names(&m.path("ids"));
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&short(&a["id"])));
    // Read-only.
    let e = fs::write(inside(&snap, &src).join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
}

#[test]
fn a_filter_shows_only_the_snapshots_it_takes() {
    if !fuse_here() {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"one").unwrap();
    let a = t.backup(&["--host", "alpha", src.to_str().unwrap()]);
    t.backup(&["--host", "beta", src.to_str().unwrap()]);
    let m = Mounted::start(t.command(), &["--host", "alpha"], &t.path("mnt"));
    assert_eq!(names(&m.path("hosts")), ["alpha"]);
    assert_eq!(names(&m.path("ids")), [short(&a["id"])]);
    assert_eq!(names(&m.path("latest")), ["alpha"]);
}

#[test]
fn a_remote_snapshot_reads_through_the_mount_as_its_source() {
    if !fuse_here() {
        return;
    }
    let srv = crate::server::TestServer::start(1);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    crate::server::run(srv.client(0, &cache), &crate::server::init_args()).ok();
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    let big = random_bytes(11, 3 << 20);
    fs::write(src.join("big.bin"), &big).unwrap();
    let b = crate::server::run(
        srv.client(0, &cache),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json();
    let m = Mounted::start(srv.client(0, &cache), &[], &work.path().join("mnt"));
    let snap = m.path("ids").join(short(&b["id"]));
    assert_same_tree(&src, &inside(&snap, &src));
    random_reads(&inside(&snap, &src).join("big.bin"), &big);
}

#[test]
fn sigterm_during_reads_unmounts_and_exits_cleanly() {
    if !fuse_here() {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), random_bytes(5, 8 << 20)).unwrap();
    let b = t.backup(&[src.to_str().unwrap()]);
    let mut m = Mounted::start(t.command(), &[], &t.path("mnt"));
    let file = inside(&m.path("ids").join(short(&b["id"])), &src).join("big.bin");
    // Readers that go on until the mount goes away.
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let (file, tx) = (file.clone(), tx.clone());
        std::thread::spawn(move || {
            for _ in 0..1000 {
                if fs::read(&file).is_err() {
                    break;
                }
            }
            let _ = tx.send(());
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let st = m.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(st.success(), "{st}: {}", m.log());
    assert!(!is_mounted(&m.dir), "still mounted after SIGTERM");
    for _ in 0..2 {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a reader hangs after the unmount");
    }
    assert!(
        fs::read_dir(&m.dir).unwrap().next().is_none(),
        "the mount point is an empty directory again"
    );
}

#[test]
fn a_mount_that_died_is_named_with_its_remedy() {
    if !fuse_here() {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let mut m = Mounted::start(t.command(), &[], &t.path("mnt"));
    m.stop_with(nix::sys::signal::Signal::SIGKILL);
    assert!(is_mounted(&m.dir), "a killed mount stays until unmounted");
    let r = t.run(&["mount", m.dir.to_str().unwrap()]).fails();
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("fusermount3 -u -z"),
        "the remedy is named: {}",
        r.stderr()
    );
}

#[test]
fn a_damaged_pack_fails_its_reads_with_eio_and_the_mount_lives_on() {
    if !fuse_here() {
        return;
    }
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let good = random_bytes(21, 400_000);
    fs::write(src.join("good"), &good).unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let before = t.packs();
    // A second backup: only the new file's chunks go to new packs.
    fs::write(src.join("bad"), random_bytes(22, 400_000)).unwrap();
    let b = t.backup(&[src.to_str().unwrap()]);
    // Without parity, so damage stays damage.
    fs::remove_dir_all(t.repo.join("parity")).unwrap();
    let store = coffer::store::LocalStore::open(&t.repo).unwrap();
    let repo = coffer::repo::Repository::open_store(
        std::sync::Arc::new(store),
        PASSWORD.as_bytes(),
        &t.cache,
    )
    .unwrap();
    let mut flipped = 0;
    for p in t.packs().into_iter().filter(|p| !before.contains(p)) {
        let id: PackId = p.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let entries = repo
            .read_pack_header(&id, fs::metadata(&p).unwrap().len())
            .unwrap();
        let mut bytes = fs::read(&p).unwrap();
        for e in entries.iter().filter(|e| e.kind == Kind::Data) {
            bytes[(e.offset + 100) as usize] ^= 0x10;
            flipped += 1;
        }
        fs::write(&p, bytes).unwrap();
    }
    assert!(flipped > 0, "the new file's chunks are in new packs");
    drop(repo);

    let m = Mounted::start(t.command(), &[], &t.path("mnt"));
    let dir = inside(&m.path("ids").join(short(&b["id"])), &src);
    let e = fs::read(dir.join("bad")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        m.log().contains("\"bad\""),
        "the failure is named: {}",
        m.log()
    );
    // The mount lives on: the other file, and the damaged one again.
    assert_eq!(fs::read(dir.join("good")).unwrap(), good);
    let e = fs::read(dir.join("bad")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert_eq!(fs::read(dir.join("good")).unwrap(), good);
    assert!(is_mounted(&m.dir));
}
