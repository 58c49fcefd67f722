//! `--image FILE.qcow2`: the guest's disk, not the container file. When
//! `qemu-nbd` is installed, coffer starts it read-only on a private socket
//! and reads the export through NBD; it ends with the backup.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long qemu-nbd may take to open the image and listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `path` is a regular file holding a qcow2 image (by its magic).
pub fn is_qcow2(path: &Path) -> bool {
    let mut m = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && m == *b"QFI\xfb"
}

/// Whether `qemu-nbd` can be run (asked once per process: a backup asks
/// when it names the image and again when it reads it).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new("qemu-nbd")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A `qemu-nbd` serving one image read-only on a socket in a directory of
/// its own; stopped, and the directory removed, on drop.
pub struct QemuNbd {
    child: Child,
    dir: PathBuf,
    /// The export's URI.
    pub url: String,
}

impl QemuNbd {
    /// Serves `image` as export `export`, with the dirty bitmap `bitmap`
    /// when given (qemu-nbd refuses to start when the image lacks it).
    pub fn start(image: &Path, export: &str, bitmap: Option<&str>) -> io::Result<QemuNbd> {
        let dir = std::env::temp_dir().join(format!(
            "coffer-qemu-nbd-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir(&dir)?;
        let sock = dir.join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(["-r", "--persistent", "-f", "qcow2", "-x", export, "-k"])
            .arg(&sock);
        if let Some(b) = bitmap {
            cmd.args(["-B", b]);
        }
        let child = cmd
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io::Error::new(e.kind(), format!("starting qemu-nbd: {e}")));
            }
        };
        let mut q = QemuNbd {
            child,
            url: format!("nbd+unix:///{export}?socket={}", sock.display()),
            dir,
        };
        let started = Instant::now();
        while !sock.exists() {
            if let Some(status) = q.child.try_wait()? {
                return Err(q.failed(image, status));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(io::Error::other(format!(
                    "qemu-nbd {} did not listen within {} s",
                    image.display(),
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // qemu-nbd listens before it opens the image and its bitmap, and
        // exits when it cannot (a bitmap left in use by a writer that
        // crashed is "inconsistent"): only a handshake says it serves.
        let url = super::NbdUrl::parse(&q.url).map_err(io::Error::other)?;
        loop {
            let e = match super::NbdClient::connect_with(&url, bitmap) {
                Ok(_) => return Ok(q),
                Err(e) => e,
            };
            if let Some(status) = q.child.try_wait()? {
                return Err(q.failed(image, status));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// qemu-nbd ended with `status`: what it said.
    fn failed(&mut self, image: &Path, status: std::process::ExitStatus) -> io::Error {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        io::Error::other(format!(
            "qemu-nbd {}: {status}: {}",
            image.display(),
            err.trim()
        ))
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
