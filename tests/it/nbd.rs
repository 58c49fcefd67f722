//! NBD as an image source, against a real `qemu-nbd` exporting a qcow2:
//! the snapshot restores to the guest-visible disk (`qemu-img convert -O
//! raw`), and ranges the server reports as zeros are never read. And a
//! fake server that sends garbage: a clear error, never a panic.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

pub(crate) fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("{tool} is missing (apt-get install qemu-utils libnbd-bin)");
    }
    ok
}

/// Whether qemu-nbd, qemu-img and qemu-io are installed (under CI they
/// must be).
pub(crate) fn qemu_tools() -> bool {
    have("qemu-nbd") && have("qemu-img") && have("qemu-io")
}

/// A hook script of docs/hooks run as an operator runs it nightly: `args`,
/// then `-- --repo REPO --json`, with the binary, the passphrase and the
/// cache of `t`, no monthly full read, and temporary files in `t`.
pub(crate) fn hook(t: &TestRepo, script: &str, args: &[&OsStr]) -> Command {
    let mut c = Command::new("sh");
    c.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs/hooks")
            .join(script),
    )
    .args(args)
    .args(["--", "--repo"])
    .arg(&t.repo)
    .arg("--json")
    .env("COFFER", bin())
    .env("COFFER_PASSWORD", PASSWORD)
    .env("COFFER_CACHE_DIR", &t.cache)
    .env("COFFER_FULL_DAY", "")
    .env("TMPDIR", t.dir.path());
    c
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-nbd` serving `image` read-only; killed on drop.
struct QemuNbd(Child);

impl QemuNbd {
    fn start(args: &[&str], image: &Path, ready: impl Fn() -> bool) -> QemuNbd {
        let child = Command::new("qemu-nbd")
            .args(["-r", "-f", "qcow2", "--persistent"])
            .args(args)
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !ready() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "qemu-nbd did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        QemuNbd(child)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) const MIB: u64 = 1 << 20;

/// A 64 MiB qcow2 whose guest disk holds random data in a few places,
/// an allocated run of zeros and holes; and its raw form.
pub(crate) fn make_disk(dir: &Path) -> (PathBuf, PathBuf, u64) {
    let raw = dir.join("src.raw");
    let mut f = fs::File::create(&raw).unwrap();
    let mut data = 0;
    for (at, len, seed) in [
        (0, 3 * MIB, 1),
        (10 * MIB + 4096, MIB, 2),
        (40 * MIB, 5 * MIB, 3),
    ] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&random_bytes(seed, len as usize)).unwrap();
        data += len;
    }
    f.set_len(64 * MIB).unwrap();
    drop(f);
    let qcow = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow));
    // Allocated zeros (qemu-io write -z) read as zeros without being read.
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -z 50M 4M"])
        .arg(&qcow));
    let want = dir.join("want.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&qcow)
        .arg(&want));
    (qcow, want, data)
}

pub(crate) fn restore_file(t: &TestRepo, name: &str) -> Vec<u8> {
    let out = t.path("out");
    let _ = fs::remove_dir_all(&out);
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    fs::read(out.join(name)).unwrap()
}

/// `qemu-io -f qcow2 -c CMD…` on `qcow` (writes the guest sees).
fn qemu_io(qcow: &Path, cmds: &[&str]) {
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for c in cmds {
        io.args(["-c", c]);
    }
    run(io.arg(qcow));
}

/// `qemu-img bitmap OPS… qcow NAME`.
fn bitmap(qcow: &Path, ops: &[&str], name: &str) {
    run(Command::new("qemu-img")
        .arg("bitmap")
        .args(ops)
        .arg(qcow)
        .arg(name));
}

/// The guest's disk now, as `qemu-img convert -O raw` writes it.
pub(crate) fn guest_bytes(qcow: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join("guest-now.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(qcow)
        .arg(&raw));
    let b = fs::read(&raw).unwrap();
    fs::remove_file(&raw).unwrap();
    b
}

/// `qemu-nbd` exporting `qcow` as `d` with bitmap b0 on `sock`.
fn serve_with_b0(qcow: &Path, sock: &Path) -> QemuNbd {
    let _ = fs::remove_file(sock);
    let s = sock.to_path_buf();
    QemuNbd::start(
        &["-x", "d", "-B", "b0", "-k", sock.to_str().unwrap()],
        qcow,
        move || s.exists(),
    )
}

/// Day 1 of a bitmap chain: a disk with bitmap b0 added and enabled,
/// exported as `d` on a socket of `t`, backed up in full starting b0.
/// `None` when the QEMU tools are missing.
struct DayOne {
    qcow: PathBuf,
    want: PathBuf,
    sock: PathBuf,
    url: String,
    snap: serde_json::Value,
}

fn day_one(t: &TestRepo) -> Option<DayOne> {
    if !qemu_tools() {
        return None;
    }
    let (qcow, want, _) = make_disk(t.dir.path());
    bitmap(&qcow, &["--add", "--enable"], "b0");
    let sock = t.path("nbd.sock");
    let url = format!("nbd+unix:///d?socket={}", sock.display());
    let srv = serve_with_b0(&qcow, &sock);
    let snap = t.backup(&["--image", &url, "--start-bitmap", "b0"]);
    drop(srv);
    Some(DayOne {
        qcow,
        want,
        sock,
        url,
        snap,
    })
}

/// The bytes `nbdinfo --map` (libnbd, another NBD client) reports dirty in
/// bitmap b0 of the export at `url`; `None` without nbdinfo (outside CI).
fn dirty_bytes(url: &str) -> Option<u64> {
    if !have("nbdinfo") {
        return None;
    }
    let out = Command::new("nbdinfo")
        .args(["--map=qemu:dirty-bitmap:b0", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let map = String::from_utf8_lossy(&out.stdout).into_owned();
    let sum = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(2) == Some(&"1"))
        .map(|f| f[1].parse::<u64>().unwrap())
        .sum();
    Some(sum)
}

/// Whether an entry of `dir` starts with `prefix`.
pub(crate) fn left_in(dir: &Path, prefix: &str) -> bool {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
}

#[test]
fn a_qcow2_through_qemu_nbd_restores_as_its_guest_disk_without_reading_zeros() {
    if !have("qemu-nbd") || !have("qemu-img") {
        return;
    }
    let t = TestRepo::new();
    let (qcow, want, data) = make_disk(t.dir.path());
    let sock = t.path("nbd.sock");
    let s = sock.clone();
    let _srv = QemuNbd::start(
        &["-x", "vm101-disk0", "-k", sock.to_str().unwrap()],
        &qcow,
        move || s.exists(),
    );
    let url = format!("nbd+unix:///vm101-disk0?socket={}", sock.display());
    let out = t.backup(&["--image", &url]);
    assert_eq!(out["bytes"].as_u64().unwrap(), 64 * MIB, "{out}");
    let read = out["bytes_read"].as_u64().unwrap();
    // Data is read in whole image blocks: a little more than was written,
    // never the holes or the zeros.
    assert!(
        read >= data && read <= data + 2 * MIB,
        "read {read} of {data}: {out}"
    );
    let got = restore_file(&t, "vm101-disk0");
    assert!(got == fs::read(&want).unwrap(), "restored disk differs");

    // As a qcow2 disk: the same guest bytes (qemu-img compare), no raw left.
    let q = t.path("q");
    t.run(&[
        "restore",
        "latest",
        "--target",
        q.to_str().unwrap(),
        "--format",
        "qcow2",
    ])
    .ok();
    assert!(!q.join("vm101-disk0").exists());
    let made = q.join("vm101-disk0.qcow2");
    let head = fs::read(&made).unwrap();
    assert_eq!(&head[..4], b"QFI\xfb", "not a qcow2");
    run(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&made)
        .arg(&want));

    // Again: nothing new but the snapshot's own trees.
    let again = t.backup(&["--image", &url]);
    assert!(again["new_bytes"].as_u64().unwrap() < 64 << 10, "{again}");
    t.run(&["check", "--read-data"]).ok();
}

#[test]
fn an_nbd_export_over_tcp_on_loopback() {
    if !have("qemu-nbd") || !have("qemu-img") {
        return;
    }
    let t = TestRepo::new();
    let (qcow, want, _) = make_disk(t.dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _srv = QemuNbd::start(
        &["-x", "d", "-b", "127.0.0.1", "-p", &port.to_string()],
        &qcow,
        move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let url = format!("nbd://127.0.0.1:{port}/d");
    t.backup(&["--image", &url]);
    assert!(restore_file(&t, "d") == fs::read(&want).unwrap());
    // A tree snapshot is no disk: --format qcow2 is refused, nothing written.
    let src = t.path("tree");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    t.backup(&[src.to_str().unwrap()]);
    let out = t.path("tq");
    let r = t.run(&[
        "restore",
        "latest",
        "--target",
        out.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.stderr().contains("not of a disk image"), "{}", r.stderr());
    assert!(!out.exists());
}

/// A fake server on a Unix socket that answers each connection with
/// `reply(n)` for the n-th connection, after reading what the client sent.
fn fake_server(sock: &Path, replies: Vec<Vec<u8>>) -> std::thread::JoinHandle<()> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        for r in replies {
            let Ok((mut c, _)) = l.accept() else { return };
            let _ = c.set_read_timeout(Some(Duration::from_millis(300)));
            let _ = c.write_all(&r);
            // Drain what the client says, then hang up.
            let mut sink = [0u8; 4096];
            while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
        }
    })
}

fn greeting() -> Vec<u8> {
    let mut g = b"NBDMAGIC".to_vec();
    g.extend_from_slice(b"IHAVEOPT");
    g.extend_from_slice(&3u16.to_be_bytes());
    g
}

fn opt_reply(opt: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut r = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    r.extend_from_slice(&opt.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    r
}

#[test]
fn a_server_sending_garbage_gets_a_clear_error_and_no_snapshot() {
    let t = TestRepo::new();
    let sock = t.path("fake.sock");
    let mut huge = greeting();
    // An option reply claiming 4 GiB of data.
    let mut h = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    h.extend_from_slice(&8u32.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&h);
    // A reply to another option than the one sent.
    let mut wrong = greeting();
    wrong.extend_from_slice(&opt_reply(7, 1, &[]));
    // GO acknowledged without the export's size.
    let mut sizeless = greeting();
    sizeless.extend_from_slice(&opt_reply(8, 0x8000_0001, &[]));
    sizeless.extend_from_slice(&opt_reply(7, 1, &[]));
    // Cut off in the middle of the greeting.
    let cut = greeting()[..11].to_vec();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            "not an NBD server",
        ),
        (huge, "option reply of"),
        (wrong, "answered option 7"),
        (sizeless, "no export size"),
        (cut, "closed the connection"),
    ];
    let _srv = fake_server(&sock, cases.iter().map(|(r, _)| r.clone()).collect());
    let url = format!("nbd+unix:///x?socket={}", sock.display());
    for (_, want) in &cases {
        let r = t.run(&["backup", "--image", &url]);
        assert_eq!(r.code(), 1, "{}", r.stderr());
        let err = r.stderr();
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(want), "wanted {want:?} in: {err}");
    }
    assert!(t.snapshots().is_empty());
}

/// Day 1 reads the whole disk and starts bitmap b0; day 2, after
/// scattered writes the bitmap records, reads only the dirty extents and
/// restores byte-identical to day 2's disk.
#[test]
fn a_dirty_bitmap_backup_reads_only_what_changed() {
    let t = TestRepo::new();
    let Some(DayOne {
        qcow,
        want: want1,
        sock,
        url,
        snap: day1,
    }) = day_one(&t)
    else {
        return;
    };
    assert!(restore_file(&t, "d") == fs::read(&want1).unwrap());

    // Day 2: scattered 4 KiB writes, a 64 KiB run, into data and into holes.
    let mut writes = Vec::new();
    for (i, at) in [
        12_288u64,
        2 * MIB + 8192,
        10 * MIB + 65536,
        33 * MIB,
        41 * MIB + 4096,
    ]
    .iter()
    .enumerate()
    {
        writes.push(format!("write -P {} {at} 4k", 0x30 + i));
    }
    writes.push(format!("write -P 0x77 {} 64k", 60 * MIB));
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(&qcow, &writes);
    let want2 = guest_bytes(&qcow, t.dir.path());
    let srv = serve_with_b0(&qcow, &sock);
    let dirty = dirty_bytes(&url);
    let day2 = t.backup(&[
        "--image",
        &url,
        "--changed-bitmap",
        "b0",
        "--start-bitmap",
        "b0",
    ]);
    drop(srv);
    assert_eq!(day2["notices"].as_array().unwrap().len(), 0, "{day2}");
    let read = day2["bytes_read"].as_u64().unwrap();
    // libnbd's own view of the bitmap: exactly its dirty extents are read.
    assert_eq!(Some(read), dirty, "{day2}");
    // Six dirty ranges, each at most a bitmap granule (64 KiB) rounded to
    // blocks: a fraction of the 9 MiB day 1 read.
    assert!(
        read > 0 && read <= 6 * 128 * 1024,
        "day 2 read {read}: {day2}"
    );
    assert!(day1["bytes_read"].as_u64().unwrap() > 8 * MIB, "{day1}");
    assert!(restore_file(&t, "d") == want2, "day 2 restore differs");
    // Day 1 still restores as it was.
    let out = t.path("out1");
    let id1 = day1["id"].as_str().unwrap();
    t.run(&["restore", id1, "--target", out.to_str().unwrap()])
        .ok();
    assert!(fs::read(out.join("d")).unwrap() == fs::read(&want1).unwrap());
    t.run(&["check", "--read-data"]).ok();

    // Tokens: day 3 starts b0 with token t3; a run that names t3 reads
    // only what changed, one that names another token reads it all.
    let srv = serve_with_b0(&qcow, &sock);
    let day3 = [
        "--changed-bitmap",
        "b0",
        "--start-bitmap",
        "b0",
        "--start-token",
        "t3",
    ];
    let mut args = vec!["--image", url.as_str()];
    args.extend(day3);
    t.backup(&args);
    let same = t.backup(&[
        "--image",
        &url,
        "--changed-bitmap",
        "b0",
        "--changed-token",
        "t3",
    ]);
    assert!(
        same["bytes_read"].as_u64().unwrap() <= 6 * 128 * 1024,
        "{same}"
    );
    let other = t.backup(&[
        "--image",
        &url,
        "--changed-bitmap",
        "b0",
        "--changed-token",
        "t2",
    ]);
    assert!(other["bytes_read"].as_u64().unwrap() > 8 * MIB, "{other}");
    let n = other["notices"].to_string();
    assert!(n.contains("token") && n.contains("whole disk"), "{n}");
    drop(srv);

    // A bitmap no snapshot started: the whole disk, and a notice.
    let srv = serve_with_b0(&qcow, &sock);
    let full = t.backup(&["--image", &url, "--changed-bitmap", "other"]);
    drop(srv);
    assert!(full["bytes_read"].as_u64().unwrap() > 8 * MIB, "{full}");
    let n = full["notices"].to_string();
    assert!(
        n.contains("started bitmap") && n.contains("whole disk"),
        "{n}"
    );
    assert!(restore_file(&t, "d") == want2);

    // A server that exports no bitmap: the whole disk, and a notice.
    let s2 = sock.clone();
    let srv = QemuNbd::start(
        &["-x", "d", "-k", sock.to_str().unwrap()],
        &qcow,
        move || s2.exists(),
    );
    let plain = t.backup(&["--image", &url, "--changed-bitmap", "b0"]);
    drop(srv);
    assert!(plain["bytes_read"].as_u64().unwrap() > 8 * MIB, "{plain}");
    assert!(
        plain["notices"]
            .to_string()
            .contains("exports no dirty bitmap"),
        "{plain}"
    );

    // A disk that grew since its parent: the whole disk, and a notice.
    let _ = fs::remove_file(&sock);
    run(Command::new("qemu-img")
        .args(["resize", "-f", "qcow2"])
        .arg(&qcow)
        .arg("+1M"));
    let srv = serve_with_b0(&qcow, &sock);
    let grown = t.backup(&["--image", &url, "--changed-bitmap", "b0"]);
    drop(srv);
    assert!(
        grown["notices"].to_string().contains("changed size"),
        "{grown}"
    );
    assert_eq!(grown["bytes"].as_u64().unwrap(), 65 * MIB, "{grown}");
    assert!(restore_file(&t, "d") == guest_bytes(&qcow, t.dir.path()));
}

/// A bitmap that missed a write (made while it was disabled): trusted
/// blindly, the snapshot holds the old bytes; `--verify-clean 100` reads
/// the clean blocks, finds the difference, and reads the whole disk.
#[test]
fn a_lying_bitmap_is_caught_by_verify_clean() {
    let t = TestRepo::new();
    let Some(DayOne {
        qcow,
        sock,
        url,
        snap: day1,
        ..
    }) = day_one(&t)
    else {
        return;
    };
    // One write the bitmap sees, one it does not.
    qemu_io(&qcow, &["write -P 0x41 1M 4k"]);
    bitmap(&qcow, &["--disable"], "b0");
    qemu_io(&qcow, &["write -P 0x42 41M 4k"]);
    bitmap(&qcow, &["--enable"], "b0");
    let want2 = guest_bytes(&qcow, t.dir.path());

    let srv = serve_with_b0(&qcow, &sock);
    let blind = t.backup(&["--image", &url, "--changed-bitmap", "b0"]);
    assert!(blind["bytes_read"].as_u64().unwrap() < MIB, "{blind}");
    assert!(
        restore_file(&t, "d") != want2,
        "trusted blindly, the bitmap's miss should be in the snapshot"
    );
    let checked = t.backup(&[
        "--image",
        &url,
        "--changed-bitmap",
        "b0",
        "--verify-clean",
        "100",
    ]);
    drop(srv);
    let n = checked["notices"].to_string();
    assert!(
        n.contains("missed a change") && n.contains(&day1["short_id"].as_str().unwrap()[..8]),
        "{n}"
    );
    assert!(restore_file(&t, "d") == want2, "the checked backup differs");
    // A bad percentage is a usage error.
    assert_eq!(
        t.run(&[
            "backup",
            "--image",
            &url,
            "--changed-bitmap",
            "b0",
            "--verify-clean",
            "150"
        ])
        .code(),
        2
    );
}

/// docs/hooks/qcow2-incremental.sh, as an operator runs it nightly: the
/// first run reads the whole disk and starts the bitmap, the next reads
/// only what changed; both restore byte-identical.
#[test]
fn the_qcow2_incremental_hook_script_runs_two_nights() {
    if !qemu_tools() {
        return;
    }
    let t = TestRepo::new();
    let (qcow, want1, _) = make_disk(t.dir.path());
    let night = || {
        let out = hook(&t, "qcow2-incremental.sh", &[qcow.as_os_str()])
            .output()
            .unwrap();
        Run { out }.ok().json()
    };
    let one = night();
    assert!(one["bytes_read"].as_u64().unwrap() > 8 * MIB, "{one}");
    assert!(restore_file(&t, "disk") == fs::read(&want1).unwrap());
    qemu_io(&qcow, &["write -P 0x61 5M 4k", "write -P 0x62 42M 8k"]);
    let want2 = guest_bytes(&qcow, t.dir.path());
    let two = night();
    assert!(two["bytes_read"].as_u64().unwrap() < 2 * MIB, "{two}");
    assert_eq!(two["notices"].as_array().unwrap().len(), 0, "{two}");
    assert!(restore_file(&t, "disk") == want2);
    // Nothing of the private socket's directory is left behind.
    assert!(!left_in(t.dir.path(), "coffer-nbd."));
}

/// `--image FILE.qcow2`: the guest's disk through a private qemu-nbd (not
/// the container's bytes), dirty bitmaps included; nothing left behind.
#[test]
fn a_qcow2_file_is_backed_up_as_its_guest_disk() {
    if !qemu_tools() {
        return;
    }
    let t = TestRepo::new();
    let (qcow, want1, data) = make_disk(t.dir.path());
    bitmap(&qcow, &["--add", "--enable"], "b0");
    let tmp = t.dir.path().to_str().unwrap().to_string();
    let backup = |extra: &[&str]| {
        let mut a = vec!["--json", "backup", "--image", qcow.to_str().unwrap()];
        a.extend_from_slice(extra);
        t.run_env(&a, &[("TMPDIR", &tmp)]).ok().json()
    };
    let one = backup(&["--start-bitmap", "b0"]);
    let read = one["bytes_read"].as_u64().unwrap();
    assert!(read >= data && read <= data + 2 * MIB, "{one}");
    assert!(restore_file(&t, "disk") == fs::read(&want1).unwrap());
    qemu_io(&qcow, &["write -P 0x71 7M 4k"]);
    let want2 = guest_bytes(&qcow, t.dir.path());
    let two = backup(&["--changed-bitmap", "b0", "--start-bitmap", "b0"]);
    assert!(two["bytes_read"].as_u64().unwrap() < MIB, "{two}");
    assert!(restore_file(&t, "disk") == want2);
    // A writer killed with the image open leaves b0 marked in use
    // (inconsistent): qemu-nbd refuses it, and the whole disk is read.
    let mut w = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(&qcow)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    w.stdin
        .as_mut()
        .unwrap()
        .write_all(b"write -P 0x72 9M 4k\n")
        .unwrap();
    let mut said = [0u8; 64];
    let _ = w.stdout.as_mut().unwrap().read(&mut said);
    w.kill().unwrap();
    w.wait().unwrap();
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&qcow)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("in-use"));
    let want3 = guest_bytes(&qcow, t.dir.path());
    let three = backup(&["--changed-bitmap", "b0"]);
    assert!(three["bytes_read"].as_u64().unwrap() >= data, "{three}");
    let n = three["notices"].to_string();
    assert!(
        n.contains("inconsistent") && n.contains("whole disk"),
        "{n}"
    );
    assert!(restore_file(&t, "disk") == want3);
    assert!(
        !left_in(t.dir.path(), "coffer-qemu-nbd"),
        "qemu-nbd's socket directory was left behind"
    );
}

/// An incremental lists its parent's packs rather than looking up each
/// clean chunk: once the parent expires (day 31) and prune collects what
/// only it listed, the incremental must still check whole and restore
/// byte for byte. Without the inherited packs, prune deletes the packs
/// of the clean chunks.
#[test]
fn an_incremental_outlives_its_parent() {
    if !crate::retention::faketime() {
        eprintln!("faketime not installed; skipped");
        return;
    }
    let t = TestRepo::new();
    let Some(DayOne {
        qcow, sock, url, ..
    }) = day_one(&t)
    else {
        return;
    };
    qemu_io(
        &qcow,
        &["write -P 0x41 12288 4k", "write -P 0x42 5242880 64k"],
    );
    let want = guest_bytes(&qcow, t.dir.path());
    let srv = serve_with_b0(&qcow, &sock);
    let day20 = crate::retention::at(
        &t,
        "+20d",
        &[
            "--json",
            "backup",
            "--image",
            &url,
            "--changed-bitmap",
            "b0",
        ],
    )
    .json();
    drop(srv);
    let read = day20["bytes_read"].as_u64().unwrap();
    assert!(read > 0 && read <= 4 * 65536, "{day20}");
    crate::retention::at(&t, "+31d", &["prune"]).ok();
    let snaps = t.snapshots();
    assert_eq!(snaps.len(), 1, "the parent expired");
    assert_eq!(snaps[0]["id"], day20["id"]);
    crate::retention::at(&t, "+31d", &["check", "--read-data"]).ok();
    let out = t.path("out");
    crate::retention::at(
        &t,
        "+31d",
        &["restore", "latest", "--target", out.to_str().unwrap()],
    )
    .ok();
    assert!(fs::read(out.join("d")).unwrap() == want, "restore differs");
}
