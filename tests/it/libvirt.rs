//! docs/hooks/libvirt-incremental.sh against a running libvirt domain:
//! QEMU without KVM (TCG), a qcow2 disk and no operating system, backed up
//! night after night through libvirt's pull-mode backup (the disk and its
//! checkpoint's dirty bitmap over NBD). The guest's writes are made through
//! QEMU's monitor (`qemu-io` on the running disk). Needs a libvirt daemon
//! (`.ci/libvirt` sets one up); skipped without one, except under CI.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::nbd::{guest_bytes, hook, make_disk, qemu_tools, restore_file, MIB};
use crate::util::*;

fn virsh(args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap()
}

/// Whether a libvirt daemon answers; under CI it must.
fn libvirt() -> bool {
    let ok = qemu_tools()
        && Command::new("virsh")
            .args(["-c", "qemu:///system", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("no libvirt daemon (run .ci/libvirt)");
    }
    ok
}

/// A transient domain, destroyed on drop.
struct Domain(String);

impl Domain {
    fn start(name: &str, qcow: &Path, dir: &Path) -> Domain {
        let xml = format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>",
            qcow.display()
        );
        let file = dir.join("domain.xml");
        fs::write(&file, xml).unwrap();
        let out = virsh(&["create", file.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        Domain(name.to_string())
    }

    /// A write the guest makes: `qemu-io` on the running disk.
    fn write(&self, cmd: &str) {
        let hmp = format!("qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend \"{cmd}\"");
        let out = virsh(&["qemu-monitor-command", &self.0, "--hmp", &hmp]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.trim().is_empty(), "{out:?}");
    }

    fn checkpoints(&self) -> Vec<String> {
        let out = virsh(&["checkpoint-list", &self.0, "--name"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.0]);
    }
}

/// One night of the hook script; its `--json` summary when it worked.
fn night(t: &TestRepo, dom: &str, state: &Path, env: &[(&str, &str)]) -> Run {
    let mut c = hook(
        t,
        "libvirt-incremental.sh",
        &[OsStr::new(dom), OsStr::new("vda")],
    );
    c.env("STATE_DIR", state);
    for (k, v) in env {
        c.env(k, v);
    }
    Run {
        out: c.output().unwrap(),
    }
}

/// `want` with `len` bytes of `byte` at `at` (a guest write of `write -P`).
fn patch(want: &mut [u8], at: u64, len: u64, byte: u8) {
    want[at as usize..(at + len) as usize].fill(byte);
}

/// Night 1 reads the disk whole; later nights read only what the guest
/// wrote since the last saved night, restore byte for byte, and leave one
/// checkpoint. A night whose backup fails drops its checkpoint, so the
/// next night still covers the writes made before it.
#[test]
fn the_libvirt_hook_backs_up_a_running_domain_night_after_night() {
    if !libvirt() {
        eprintln!("no libvirt daemon; skipped");
        return;
    }
    let t = TestRepo::new();
    fs::set_permissions(t.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (qcow, want1, _) = make_disk(t.dir.path());
    let mut want = fs::read(&want1).unwrap();
    let state: PathBuf = t.path("state");
    let name = format!("coffer-it-{}", std::process::id());
    let dom = Domain::start(&name, &qcow, t.dir.path());

    let one = night(&t, &name, &state, &[]).ok().json();
    assert!(one["bytes_read"].as_u64().unwrap() > 8 * MIB, "{one}");
    assert!(restore_file(&t, "vda") == want, "night 1 restore differs");

    dom.write("write -P 0x61 5M 4k");
    dom.write("write -P 0x62 42M 8k");
    patch(&mut want, 5 * MIB, 4096, 0x61);
    patch(&mut want, 42 * MIB, 8192, 0x62);
    let two = night(&t, &name, &state, &[]).ok().json();
    let read = two["bytes_read"].as_u64().unwrap();
    assert!(read > 0 && read <= 4 * 65536, "{two}");
    assert_eq!(two["notices"].as_array().unwrap().len(), 0, "{two}");
    assert!(restore_file(&t, "vda") == want, "night 2 restore differs");
    let token = fs::read_to_string(state.join(format!("{name}-vda.token"))).unwrap();
    assert_eq!(dom.checkpoints(), vec![token.trim().to_string()]);

    // A night whose backup fails: its checkpoint goes, the token stays.
    dom.write("write -P 0x63 20M 4k");
    patch(&mut want, 20 * MIB, 4096, 0x63);
    let failed = night(&t, &name, &state, &[("COFFER", "false")]);
    assert!(!failed.out.status.success());
    assert_eq!(dom.checkpoints(), vec![token.trim().to_string()]);
    let kept = fs::read_to_string(state.join(format!("{name}-vda.token"))).unwrap();
    assert_eq!(kept, token);

    dom.write("write -P 0x64 30M 4k");
    patch(&mut want, 30 * MIB, 4096, 0x64);
    let four = night(&t, &name, &state, &[]).ok().json();
    let read = four["bytes_read"].as_u64().unwrap();
    assert!(read > 0 && read <= 4 * 65536, "{four}");
    assert!(
        restore_file(&t, "vda") == want,
        "the failed night's write is lost"
    );

    // COFFER_FULL=1: the whole disk again.
    let full = night(&t, &name, &state, &[("COFFER_FULL", "1")])
        .ok()
        .json();
    assert!(full["bytes_read"].as_u64().unwrap() > 8 * MIB, "{full}");
    assert_eq!(dom.checkpoints().len(), 1);
    drop(dom);
    assert!(restore_file(&t, "vda") == guest_bytes(&qcow, t.dir.path()));
    assert!(restore_file(&t, "vda") == want);
}
