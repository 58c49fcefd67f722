//! Monitoring of a real `coffer serve`: `/metrics` scraped over HTTP on
//! loopback after real backups, every alert kind triggered on purpose and
//! observed through a real command and a real webhook, rate limiting, and
//! the journald log format.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::server::{init_args, run, serve_refuses, TestServer};
use crate::util::*;

/// Generous: a loaded 2-core machine runs the suite in parallel.
const DEADLINE: Duration = Duration::from_secs(60);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64
}

/// Polls `f` until it returns `Some`, or panics with `what` after the deadline.
pub(crate) fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// One raw HTTP exchange with the metrics port: (status line, headers, body).
fn http(port: u16, request: &[u8]) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// `GET /metrics`, once the first collection is done.
pub(crate) fn scrape(srv: &TestServer) -> String {
    let port = srv.metrics_port.expect("metrics configured");
    poll("the first collection", || {
        let (status, headers, body) = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        if status.contains(" 503 ") {
            return None;
        }
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains("Content-Type: text/plain; version=0.0.4"),
            "{headers}"
        );
        Some(body)
    })
}

/// The value of a sample: `name{namespace="ns"}`, or `name` when `ns` is empty.
pub(crate) fn metric(text: &str, name: &str, ns: &str) -> Option<f64> {
    let key = if ns.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{namespace=\"{ns}\"}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.parse().unwrap())
}

/// Scrapes until `name` for `ns` satisfies `ok`; returns that scrape.
pub(crate) fn wait_metric(
    srv: &TestServer,
    name: &str,
    ns: &str,
    ok: impl Fn(f64) -> bool,
) -> String {
    poll(&format!("{name}{{{ns}}}"), || {
        let t = scrape(srv);
        metric(&t, name, ns).filter(|v| ok(*v)).map(|_| t)
    })
}

/// Where alerts land: a command that appends its standard input to a file,
/// and a webhook receiver on 127.0.0.1.
struct Sinks {
    _dir: tempfile::TempDir,
    file: PathBuf,
    script: PathBuf,
    hook: Arc<Mutex<Vec<Value>>>,
    port: u16,
}

impl Sinks {
    fn new() -> Sinks {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("paged.jsonl");
        let script = dir.path().join("page.sh");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat >> '{}'\necho >> '{}'\n",
                file.display(),
                file.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hook = webhook(listener);
        Sinks {
            _dir: dir,
            file,
            script,
            hook,
            port,
        }
    }

    /// The `[metrics]` and `[alerts]` sections, checking every second.
    fn config(&self, alerts: &str) -> String {
        format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n\
             [alerts]\ncheck_interval = \"1s\"\ncommand = [\"{}\"]\nwebhook = \"http://127.0.0.1:{}/hook\"\ntimeout = \"20s\"\n{alerts}\n",
            self.script.display(),
            self.port
        )
    }

    /// Alerts the command received, in order.
    fn paged(&self) -> Vec<Value> {
        fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn hooked(&self) -> Vec<Value> {
        self.hook.lock().unwrap().clone()
    }

    /// Waits until both sinks hold `n` alerts of `kind`; returns the command's.
    fn wait(&self, kind: &str, n: usize) -> Vec<Value> {
        let of =
            |v: Vec<Value>| -> Vec<Value> { v.into_iter().filter(|a| a["kind"] == kind).collect() };
        poll(&format!("{n} {kind} alerts"), || {
            let (p, h) = (of(self.paged()), of(self.hooked()));
            (p.len() >= n && h.len() >= n).then_some(p)
        })
    }

    fn count(&self, kind: &str) -> (usize, usize) {
        let n = |v: Vec<Value>| v.iter().filter(|a| a["kind"] == kind).count();
        (n(self.paged()), n(self.hooked()))
    }
}

/// A webhook receiver on `listener`: the alerts it got, in order.
fn webhook(listener: TcpListener) -> Arc<Mutex<Vec<Value>>> {
    let hook = Arc::new(Mutex::new(Vec::new()));
    let got = hook.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            if let Some(v) = receive(s) {
                got.lock().unwrap().push(v);
            }
        }
    });
    hook
}

/// Reads one POST (head, then Content-Length bytes) and answers 200.
fn receive(s: TcpStream) -> Option<Value> {
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut s = s;
    receive_post(&mut s)
}

/// Reads one POST to `/hook` from `s` (plain or TLS) and answers 200.
pub(crate) fn receive_post<S: Read + Write>(s: &mut S) -> Option<Value> {
    let mut r = BufReader::new(&mut *s);
    let mut len = 0;
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    assert!(first.starts_with("POST /hook HTTP/1.1"), "{first:?}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    drop(r);
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = s.flush();
    serde_json::from_slice(&body).ok()
}

/// A client of a test server with its own cache and source directory.
struct Client<'a> {
    srv: &'a TestServer,
    i: usize,
    work: tempfile::TempDir,
}

impl<'a> Client<'a> {
    fn init(srv: &'a TestServer, i: usize) -> Client<'a> {
        let c = Client {
            srv,
            i,
            work: tempfile::tempdir().unwrap(),
        };
        run(c.srv.client(i, &c.cache()), &init_args()).ok();
        fs::create_dir_all(c.src()).unwrap();
        c
    }
    fn cache(&self) -> PathBuf {
        self.work.path().join("cache")
    }
    fn src(&self) -> PathBuf {
        self.work.path().join("src")
    }
    fn write(&self, name: &str, seed: u64, len: usize) {
        fs::write(self.src().join(name), random_bytes(seed, len)).unwrap();
    }
    /// Backs the source up; returns the snapshot id.
    fn backup(&self) -> String {
        let v = run(
            self.srv.client(self.i, &self.cache()),
            &["--json", "backup", self.src().to_str().unwrap()],
        )
        .ok()
        .json();
        v["id"].as_str().unwrap().to_string()
    }
}

fn ns_file_sizes(dir: &Path) -> (u64, u64) {
    let files = walk(dir);
    (
        files.len() as u64,
        files.iter().map(|f| fs::metadata(f).unwrap().len()).sum(),
    )
}

#[test]
fn metrics_after_real_backups() {
    let mut srv = TestServer::start_full(
        3,
        "",
        "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n",
        &[],
    );
    let before = now();
    let c = Client::init(&srv, 0);
    for i in 0..4 {
        c.write(&format!("f{i}"), i, 400_000);
    }
    c.backup();
    c.write("f0", 100, 50_000);
    let id = c.backup();
    let after = now();
    wait_metric(&srv, "coffer_namespace_snapshots", "ns-0", |v| v == 2.0);
    let ns = srv.namespace_dir("ns-0");
    // packs are walked again at most every refresh_interval
    let (packs, bytes) = ns_file_sizes(&ns.join("packs"));
    let t = wait_metric(&srv, "coffer_namespace_stored_bytes", "ns-0", |v| {
        v == bytes as f64
    });
    // the latest snapshot's time, by the server's clock
    let last = metric(
        &t,
        "coffer_namespace_last_snapshot_timestamp_seconds",
        "ns-0",
    )
    .unwrap();
    assert!(
        last >= before - 1.0 && last <= after + 1.0,
        "{last} not in [{before}, {after}]"
    );
    // stored bytes are the packs on disk (parity not included)
    assert_eq!(
        metric(&t, "coffer_namespace_packs", "ns-0"),
        Some(packs as f64)
    );
    // new and referenced bytes of the latest snapshot: what its stamp records,
    // and referenced = the sizes of the packs its file lists
    let new = metric(&t, "coffer_namespace_last_snapshot_new_bytes", "ns-0").unwrap();
    let referenced = metric(
        &t,
        "coffer_namespace_last_snapshot_referenced_bytes",
        "ns-0",
    )
    .unwrap();
    assert!(
        new > 0.0 && new < referenced,
        "new {new}, referenced {referenced}"
    );
    let file = fs::read(ns.join("snapshots").join(&id)).unwrap();
    let listed: u64 = coffer::format::snapshot::decode(&file)
        .unwrap()
        .packs
        .iter()
        .map(|p| {
            let hex = p.to_hex();
            fs::metadata(ns.join("packs").join(&hex[..2]).join(&hex))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(referenced, listed as f64);
    let stamp: Value = serde_json::from_slice(
        &fs::read(ns.join("snapshots").join(format!("{id}.stamp"))).unwrap(),
    )
    .unwrap();
    assert_eq!(stamp["usage"]["new_bytes"].as_f64(), Some(new), "{stamp}");
    // the client still sees the stamp as protocol version 1 defines it
    let listed = run(srv.client(0, &c.cache()), &["--json", "snapshots"])
        .ok()
        .json();
    assert!(listed[0].get("usage").is_none(), "{listed}");
    assert_eq!(
        metric(&t, "coffer_namespace_collect_errors_total", "ns-0"),
        Some(0.0)
    );
    // a namespace without backups
    assert_eq!(metric(&t, "coffer_namespace_snapshots", "ns-1"), Some(0.0));
    assert_eq!(
        metric(
            &t,
            "coffer_namespace_last_snapshot_timestamp_seconds",
            "ns-1"
        ),
        Some(0.0)
    );
    assert!(metric(&t, "coffer_disk_free_bytes", "").unwrap() > 0.0);
    assert!(metric(&t, "coffer_disk_size_bytes", "").unwrap() > 0.0);
    assert_eq!(
        metric(&t, "coffer_namespace_failed_commits_total", "ns-0"),
        Some(0.0)
    );
    assert!(t.contains("# TYPE coffer_namespace_failed_commits_total counter\n"));
    assert!(t.contains("# HELP coffer_namespace_stored_bytes "));
    // a refused commit is counted
    let store = srv.store(0, "ns-0").unwrap();
    assert!(coffer::store::Store::write_snapshot(&store, b"not a snapshot", None).is_err());
    wait_metric(&srv, "coffer_namespace_failed_commits_total", "ns-0", |v| {
        v == 1.0
    });
    // scrub figures, whoever scrubs: here the operator's `coffer scrub --config`
    let t = scrape(&srv);
    assert_eq!(
        metric(&t, "coffer_scrub_last_complete_timestamp_seconds", "ns-0"),
        Some(0.0)
    );
    let start = now();
    let out = srv.operator(&["scrub"]);
    Run { out }.ok();
    let t = wait_metric(
        &srv,
        "coffer_scrub_last_complete_timestamp_seconds",
        "ns-0",
        |v| v >= start - 1.0 && v <= now() + 1.0,
    );
    assert_eq!(metric(&t, "coffer_scrub_progress_ratio", "ns-0"), Some(1.0));
    assert_eq!(
        metric(&t, "coffer_scrub_repaired_blocks", "ns-0"),
        Some(0.0)
    );
    assert_eq!(
        metric(&t, "coffer_scrub_unrepairable_blocks", "ns-0"),
        Some(0.0)
    );
    assert_eq!(
        metric(&t, "coffer_scrub_unrepairable_packs", "ns-0"),
        Some(0.0)
    );
    // a namespace that cannot be read from the start: shown all the same,
    // its errors counted
    drop(c);
    srv.stop();
    fs::write(srv.namespace_dir("ns-2").join("policy.json"), b"not json").unwrap();
    srv.start_again();
    let t = wait_metric(&srv, "coffer_namespace_collect_errors_total", "ns-2", |v| {
        v >= 1.0
    });
    assert_eq!(metric(&t, "coffer_namespace_snapshots", "ns-2"), Some(0.0));
    assert_eq!(metric(&t, "coffer_namespace_snapshots", "ns-0"), Some(2.0));
    assert!(srv.log().contains("collecting figures failed"));
}

#[test]
fn the_metrics_endpoint_is_strict() {
    let srv = TestServer::start_full(
        1,
        "",
        "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n",
        &[],
    );
    scrape(&srv);
    let port = srv.metrics_port.unwrap();
    let (status, _, _) = http(port, b"GET / HTTP/1.1\r\n\r\n");
    assert!(status.contains(" 404 "), "{status}");
    let (status, headers, _) = http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        status.contains(" 405 ") && headers.contains("Allow: GET"),
        "{status}"
    );
    let (status, _, _) = http(port, b"BREW\r\n\r\n");
    assert!(status.contains(" 400 "), "{status}");
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 9000));
    let (status, _, _) = http(port, &huge);
    assert!(status.contains(" 431 "), "{status}");
    // HEAD: the headers only
    let (status, headers, body) = http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        status.contains(" 200 ") && headers.contains("Content-Length:"),
        "{status}"
    );
    assert!(body.is_empty());
    // a non-loopback address is refused at start, naming the key
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "data = \"{}\"\nidentity = \"/nonexistent\"\n[metrics]\nlisten = \"0.0.0.0:9464\"\n",
        dir.path().display()
    );
    assert!(serve_refuses(&dir.path().join("s.toml"), &cfg).contains("allow_remote"));
}

#[test]
fn stale_alert_is_rate_limited_cleared_and_not_repeated_after_a_restart() {
    let sinks = Sinks::new();
    let mut srv = TestServer::start_full(1, "", &sinks.config("stale_after = \"4s\""), &[]);
    // no backup at all: stale 4 s after the server started
    let a = sinks.wait("stale", 1);
    assert_eq!(a[0]["namespace"], "ns-0");
    assert!(a[0]["last_snapshot"].is_null(), "{}", a[0]);
    assert!(a[0]["message"].as_str().unwrap().contains("ns-0"));
    humantime::parse_rfc3339(a[0]["time"].as_str().unwrap()).unwrap();
    assert_eq!(sinks.hooked()[0], a[0], "the webhook gets the same JSON");
    assert!(srv.log().contains("alert: namespace ns-0"), "{}", srv.log());
    // checks go on, the condition holds, and nothing is delivered again
    let checks = |srv: &TestServer| metric(&scrape(srv), "coffer_alert_checks_total", "").unwrap();
    let c0 = checks(&srv);
    poll("three more checks", || {
        (checks(&srv) >= c0 + 3.0).then_some(())
    });
    assert_eq!(sinks.count("stale"), (1, 1));
    assert_eq!(
        metric(&scrape(&srv), "coffer_alerts_total{kind=\"stale\"}", ""),
        Some(1.0)
    );
    // a restart does not page again: the rate limit is in the data directory
    srv.restart();
    let t0 = Instant::now();
    poll("the stale threshold after the restart", || {
        (t0.elapsed() > Duration::from_secs(5)).then_some(())
    });
    let c1 = checks(&srv);
    poll("two checks past it", || {
        (checks(&srv) >= c1 + 2.0).then_some(())
    });
    assert_eq!(sinks.count("stale"), (1, 1));
    // a backup clears the condition; when it returns, it alerts again
    let c = Client::init(&srv, 0);
    c.write("f", 1, 10_000);
    c.backup();
    let a = sinks.wait("stale", 2);
    assert!(a[1]["last_snapshot"].is_string(), "{}", a[1]);
}

#[test]
fn an_alert_is_delivered_once_the_webhook_is_up() {
    // a port nobody listens on yet: the webhook refuses connections
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let srv = TestServer::start_full(
        1,
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n\
             [alerts]\ncheck_interval = \"1s\"\nstale_after = \"2s\"\n\
             webhook = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"20s\"\n"
        ),
        &[],
    );
    let count = |name: &str| metric(&scrape(&srv), name, "").unwrap();
    let failed = "coffer_alert_delivery_failures_total{kind=\"stale\"}";
    let sent = "coffer_alerts_total{kind=\"stale\"}";
    poll("two failed deliveries", || {
        (count(failed) >= 2.0).then_some(())
    });
    assert_eq!(count(sent), 0.0, "not delivered, so not sent");
    assert!(srv.log().contains("alert webhook failed"), "{}", srv.log());
    // the webhook comes up: the alert arrives, once
    let hook = webhook(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let got = poll("the stale alert", || {
        let v = hook.lock().unwrap().clone();
        (!v.is_empty()).then_some(v)
    });
    assert_eq!(got[0]["kind"], "stale");
    assert_eq!(got[0]["namespace"], "ns-0");
    poll("the alert counted as sent", || {
        (count(sent) == 1.0).then_some(())
    });
    let checks = count("coffer_alert_checks_total");
    poll("two more checks", || {
        (count("coffer_alert_checks_total") >= checks + 2.0).then_some(())
    });
    assert_eq!(hook.lock().unwrap().len(), 1);
}

#[test]
fn quota_alert() {
    let sinks = Sinks::new();
    let srv = TestServer::start_full(
        1,
        "quota_bytes = 4000000",
        &sinks.config("stale_after = \"1h\"\nquota_warn = 0.5"),
        &[],
    );
    let c = Client::init(&srv, 0);
    c.write("big", 7, 2_500_000);
    c.backup();
    let a = sinks.wait("quota", 1);
    assert_eq!(a[0]["namespace"], "ns-0");
    assert_eq!(a[0]["quota_bytes"], 4_000_000);
    let (_, bytes) = ns_file_sizes(&srv.namespace_dir("ns-0").join("packs"));
    assert!(
        a[0]["stored_bytes"].as_u64().unwrap() >= 2_000_000,
        "{}",
        a[0]
    );
    assert!(a[0]["stored_bytes"].as_u64().unwrap() <= bytes);
    let t = scrape(&srv);
    assert_eq!(
        metric(&t, "coffer_namespace_quota_bytes", "ns-0"),
        Some(4_000_000.0)
    );
    assert_eq!(sinks.count("stale"), (0, 0));
}

/// Stripe members (pack paths) from the parity files of a namespace.
fn stripe_members(ns: &Path) -> Vec<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in walk(&ns.join("parity"))
        .into_iter()
        .filter(|p| p.to_str().unwrap().ends_with(".0"))
    {
        let bytes = fs::read(&p).unwrap();
        let n = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
        let h = coffer::parity::decode_header(
            &bytes[bytes.len() - 4 - n..bytes.len() - 4],
            bytes.len() as u64,
        )
        .unwrap();
        out.push(
            h.members
                .iter()
                .map(|m| {
                    let hex = m.pack.to_hex();
                    ns.join("packs").join(&hex[..2]).join(hex)
                })
                .collect(),
        );
    }
    out
}

#[test]
fn scrub_unrepairable_alert() {
    let sinks = Sinks::new();
    let srv = TestServer::start_full(
        1,
        "",
        &format!("parity = \"4+1\"\n{}", sinks.config("stale_after = \"1h\"")),
        &[],
    );
    let c = Client::init(&srv, 0);
    for i in 0..10 {
        c.write(&format!("f{i}"), i, 330_000);
    }
    let id = c.backup();
    let scrub = || srv.operator(&["scrub"]);
    // a clean pass puts every pack in a stripe
    assert!(scrub().status.success());
    let ns = srv.namespace_dir("ns-0");
    let members = stripe_members(&ns)
        .into_iter()
        .find(|m| m.len() >= 2)
        .expect("a stripe of two packs or more");
    // two lost packs in a stripe with one parity file: beyond repair
    for p in &members[..2] {
        fs::remove_file(p).unwrap();
    }
    assert_eq!(scrub().status.code(), Some(5));
    let a = sinks.wait("scrub_unrepairable", 1);
    assert_eq!(a[0]["namespace"], "ns-0");
    assert_eq!(a[0]["unrepairable_packs"], 2, "{}", a[0]);
    let mut lost: Vec<String> = members[..2]
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    lost.sort();
    let mut named: Vec<String> = a[0]["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    named.sort();
    assert_eq!(named, lost);
    assert_eq!(a[0]["snapshots"], serde_json::json!([id]));
    let t = wait_metric(&srv, "coffer_scrub_unrepairable_packs", "ns-0", |v| {
        v == 2.0
    });
    assert!(metric(&t, "coffer_scrub_unrepairable_blocks", "ns-0").unwrap() > 0.0);
}

#[test]
fn anomaly_alert() {
    let sinks = Sinks::new();
    let mut srv = TestServer::start_full(
        1,
        "",
        &sinks.config("stale_after = \"1h\"\nanomaly_min_bytes = 1000000"),
        &[],
    );
    let c = Client::init(&srv, 0);
    for i in 0..3 {
        c.write(&format!("f{i}"), i, 100_000);
    }
    c.backup();
    // a few ordinary nights: one small file changes
    for night in 0..3 {
        c.write("f0", 100 + night, 20_000);
        c.backup();
    }
    // then everything looks new and large
    c.write("encrypted", 999, 6_000_000);
    let id = c.backup();
    let a = sinks.wait("anomaly", 1);
    assert_eq!(a[0]["namespace"], "ns-0");
    assert_eq!(a[0]["snapshot"], id.as_str());
    assert_eq!(a[0]["reason"], "new_bytes");
    assert!(a[0]["new_bytes"].as_u64().unwrap() >= 6_000_000, "{}", a[0]);
    assert!(
        a[0]["usual_new_bytes"].as_u64().unwrap() < 600_000,
        "{}",
        a[0]
    );
    // only that snapshot stood out
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sinks.count("anomaly"), (1, 1));
    // an ordinary night clears it
    c.write("f0", 200, 20_000);
    c.backup();
    // a snapshot committed while the server is down is judged when it is back
    c.write("encrypted-too", 998, 6_000_000);
    let (src, Client { work, .. }) = (c.src(), c);
    srv.stop();
    let mut local = clean_command();
    local
        .env("COFFER_PASSWORD", PASSWORD)
        .env("COFFER_CACHE_DIR", work.path().join("local-cache"))
        .env("COFFER_REPO", srv.namespace_dir("ns-0"));
    let v = run(local, &["--json", "backup", src.to_str().unwrap()])
        .ok()
        .json();
    srv.start_again();
    let a = sinks.wait("anomaly", 2);
    assert_eq!(a[1]["snapshot"], v["id"], "{}", a[1]);
}

#[test]
fn logs_for_journald_carry_a_priority_and_no_timestamp() {
    let srv = TestServer::start_full(1, "", "", &[("JOURNAL_STREAM", "@stderr")]);
    // a refusal is a warning
    assert!(srv.store(0, "ns-other").is_err());
    let log = poll("the refusal in the log", || {
        let l = srv.log();
        l.contains("refused Hello").then_some(l)
    });
    for line in log.lines() {
        assert!(
            line.starts_with('<') && line.as_bytes()[2] == b'>',
            "{line:?}"
        );
        assert!(!line.contains('\x1b'), "no colours: {line:?}");
    }
    let refusal = log.lines().find(|l| l.contains("refused Hello")).unwrap();
    assert!(refusal.starts_with("<4>"), "{refusal}");
    assert!(refusal.contains("namespace=ns-0"), "{refusal}");
    assert!(refusal.contains("fingerprint="), "{refusal}");
    // without the journal: timestamps, still no colours in a file
    let plain = TestServer::start(1);
    assert!(plain.store(0, "ns-other").is_err());
    let log = poll("the refusal in the log", || {
        let l = plain.log();
        l.contains("refused Hello").then_some(l)
    });
    let line = log.lines().find(|l| l.contains("refused Hello")).unwrap();
    assert!(
        line.as_bytes()[0].is_ascii_digit() && line.contains(" WARN "),
        "{line}"
    );
    assert!(!log.contains('\x1b'));
}

/// `JOURNAL_STREAM=@stderr` in a test server's environment stands for the
/// device and inode of its log file.
pub fn journal_stream(log: &Path) -> String {
    let m = fs::metadata(log).unwrap();
    format!("{}:{}", m.dev(), m.ino())
}
