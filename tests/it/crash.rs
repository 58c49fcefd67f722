//! Interruptions: a backup killed with SIGKILL at several points leaves a
//! consistent repository, and the next run completes and reuses what the
//! killed runs stored.

use std::fs;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::*;

#[test]
fn kill_9_during_backup_leaves_a_consistent_repository() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    let mut total = 0u64;
    for i in 0..12 {
        let d = if i % 3 == 0 {
            text_bytes(i, 4 << 20)
        } else {
            random_bytes(i, 4 << 20)
        };
        total += d.len() as u64;
        fs::write(src.join(format!("f{i:02}")), d).unwrap();
    }
    // a first snapshot that must survive everything below
    let keep = t.path("keep");
    fs::create_dir_all(&keep).unwrap();
    fs::write(keep.join("k"), b"earlier backup").unwrap();
    t.backup(&[keep.to_str().unwrap()]);

    for delay_ms in [30u64, 120, 300, 700] {
        let mut child = t
            .command()
            .args(["backup", src.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let status = child.wait().unwrap();
        // whether it was killed or had finished, the repository is consistent
        t.run(&["check", "--read-data"]).ok();
        let n = t.snapshots().len();
        // either nothing was committed, or the whole snapshot was (a kill
        // after the commit, during parity, still leaves it complete: the
        // check above read every byte)
        assert!(
            n == 1 || n == 2,
            "{n} snapshots after kill at {delay_ms} ms ({status})"
        );
        if n == 2 {
            break;
        }
    }
    let last = t.backup(&[src.to_str().unwrap()]);
    t.run(&["check", "--read-data"]).ok();
    let target = t.path("out");
    t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    for i in 0..12 {
        let name = format!("f{i:02}");
        assert!(
            fs::read(restored(&target, &src).join(&name)).unwrap()
                == fs::read(src.join(&name)).unwrap()
        );
    }
    let out = t.path("out-keep");
    let first = t.snapshots()[0]["id"].as_str().unwrap().to_string();
    t.run(&["restore", &first, "--target", out.to_str().unwrap()])
        .ok();
    assert_eq!(
        fs::read(restored(&out, &keep).join("k")).unwrap(),
        b"earlier backup"
    );
    // the killed runs' packs were reused: the repository holds the data about once
    let stored: u64 = t
        .packs()
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored < total + total / 5 + (8 << 20),
        "stored {stored} for {total} of data"
    );
    assert!(last["new_bytes"].as_u64().unwrap() <= total);
}

/// A tmpfs of a set size, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// None where this test may not mount (not root, no mount command).
    fn mount(at: &std::path::Path, size: &str) -> Option<SmallDisk> {
        fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let s = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_fails_the_backup_clearly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk_dir = dir.path().join("disk");
    let Some(disk) = SmallDisk::mount(&disk_dir, "6m") else {
        eprintln!("skipped: could not mount a small tmpfs (needs root and CAP_SYS_ADMIN)");
        return;
    };
    let t = TestRepo::init_at(dir, disk_dir.join("repo"), &[]);
    let keep = t.path("keep");
    fs::create_dir_all(&keep).unwrap();
    fs::write(keep.join("k"), random_bytes(1, 300 << 10)).unwrap();
    t.backup(&[keep.to_str().unwrap()]);

    // Far more than the disk holds, and incompressible.
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("f{i}")), random_bytes(10 + i, 4 << 20)).unwrap();
    }
    let r = t.run(&["backup", src.to_str().unwrap()]).fails();
    assert!(
        r.stderr().contains("No space left") && r.stderr().contains(t.repo.to_str().unwrap()),
        "the message says why: {}",
        r.stderr()
    );
    assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
    // No partial file is left behind, and nothing stored before is lost.
    assert!(t.repo.join("tmp").is_dir());
    assert_eq!(walk(&t.repo.join("tmp")), Vec::<std::path::PathBuf>::new());
    assert_eq!(t.snapshots().len(), 1);
    t.run(&["check", "--read-data"]).ok();
    let out = t.path("out1");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    assert_same_tree(&keep, &restored(&out, &keep));

    // Once there is room, the same backup completes and restores whole.
    disk.resize("64m");
    t.backup(&[src.to_str().unwrap()]);
    t.run(&["check", "--read-data"]).ok();
    let out = t.path("out2");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&out, &src));
}
