//! The server's watcher: collects each namespace's figures in the
//! background, serves them to Prometheus from a cache, evaluates alerts and
//! delivers them (log, command, webhook). The decisions are in
//! [`crate::monitor`]; this is their I/O shell. It reads namespaces, never
//! writes them: its only file is `DATA/alerts.json` (the rate limit).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use super::config::{Alerting, ServerConfig};
use super::server::namespace_store;
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::monitor::alert::{self, Alert, AlertKind, RateLimit};
use crate::monitor::{metrics, NamespaceFigures, ScrubFigures, ServerFigures};
use crate::retention::Policy;
use crate::scrub::{scrub_state, ParityConfig};
use crate::store::{replace_file, system_clock, LocalStore, Store};

/// The alert state's file in the data directory.
const ALERT_STATE: &str = "alerts.json";

/// What alerting keeps across restarts (`DATA/alerts.json`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AlertState {
    /// Conditions delivered and not cleared since.
    #[serde(flatten)]
    limit: RateLimit,
    /// When the server first watched each namespace: a namespace that never
    /// had a snapshot is stale from then, across restarts.
    #[serde(default)]
    watched_since: BTreeMap<String, i64>,
}
/// A commit is reflected after this pause, so a burst costs one collection.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Alerts waiting for delivery; beyond this they are logged only.
const OUTBOX: usize = 256;

/// A namespace as the config defines it.
struct Namespace {
    name: String,
    policy: Policy,
    quota: Option<u64>,
}

/// Failed requests of one namespace since the server started.
#[derive(Default, Clone, Copy)]
struct Failures {
    commits: u64,
    uploads: u64,
}

/// Shared between the request handlers, the collector, the HTTP responder
/// and the alert delivery.
pub struct Watch {
    data: PathBuf,
    parity: ParityConfig,
    namespaces: Vec<Namespace>,
    started: i64,
    refresh: Option<Duration>,
    alerting: Option<Alerting>,
    figures: Mutex<BTreeMap<String, NamespaceFigures>>,
    failures: Mutex<HashMap<String, Failures>>,
    disk: Mutex<(Option<u64>, Option<u64>)>,
    collected: AtomicI64,
    text: RwLock<Option<Arc<String>>>,
    dirty: Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
    state: Mutex<AlertState>,
    delivered: Mutex<BTreeMap<AlertKind, u64>>,
    checks: AtomicU64,
    outbox: tokio::sync::mpsc::Sender<Alert>,
    inbox: Mutex<Option<tokio::sync::mpsc::Receiver<Alert>>>,
}

fn now() -> i64 {
    system_clock()()
}

/// Binds the metrics endpoint of a config, if it has one.
pub async fn bind_metrics(cfg: &ServerConfig) -> Result<Option<TcpListener>> {
    let Some(m) = &cfg.metrics else {
        return Ok(None);
    };
    let addr = m.listen_addr()?;
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| Error::Denied(format!("[metrics] cannot listen on {addr}: {e}")))
}

impl Watch {
    /// A watcher for a validated config.
    pub fn new(cfg: &ServerConfig) -> Result<Watch> {
        let mut namespaces: Vec<Namespace> = Vec::new();
        for c in cfg.validated_clients()? {
            if !namespaces.iter().any(|n| n.name == c.namespace) {
                namespaces.push(Namespace {
                    name: c.namespace,
                    policy: c.policy,
                    quota: c.quota,
                });
            }
        }
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        let alerting = cfg.alerts.as_ref().map(|a| a.validated()).transpose()?;
        let refresh = cfg.metrics.as_ref().map(|m| m.refresh()).transpose()?;
        let path = cfg.data.join(ALERT_STATE);
        let mut state: AlertState = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!(path = %path.display(), "alert state unreadable, starting afresh: {e}");
                AlertState::default()
            }),
            Err(_) => AlertState::default(),
        };
        let started = now();
        state
            .watched_since
            .retain(|ns, _| namespaces.iter().any(|n| n.name == *ns));
        for n in &namespaces {
            state.watched_since.entry(n.name.clone()).or_insert(started);
        }
        let (outbox, inbox) = tokio::sync::mpsc::channel(OUTBOX);
        let w = Watch {
            data: cfg.data.clone(),
            parity: cfg.parity_config(),
            namespaces,
            started,
            refresh,
            alerting,
            figures: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(HashMap::new()),
            disk: Mutex::new((None, None)),
            collected: AtomicI64::new(0),
            text: RwLock::new(None),
            dirty: Mutex::new(BTreeSet::new()),
            wake: tokio::sync::Notify::new(),
            state: Mutex::new(state),
            delivered: Mutex::new(BTreeMap::new()),
            checks: AtomicU64::new(0),
            outbox,
            inbox: Mutex::new(Some(inbox)),
        };
        if w.alerting.is_some() {
            // unwrap: the lock is never held across a panic
            w.save(&w.state.lock().unwrap());
        }
        Ok(w)
    }

    fn save(&self, state: &AlertState) {
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec_pretty(state).expect("alert state JSON");
        let path = self.data.join(ALERT_STATE);
        if let Err(e) = replace_file(&self.data, &path, &bytes) {
            error!("saving the alert state failed (a restart may alert again): {e}");
        }
    }

    /// Starts the collector, the alert delivery and the metrics endpoint,
    /// as far as the config asks for them.
    pub fn start(self: Arc<Self>, listener: Option<TcpListener>) {
        let periods: Vec<Duration> = self
            .refresh
            .iter()
            .copied()
            .chain(self.alerting.as_ref().map(|a| a.check_interval))
            .collect();
        let Some(period) = periods.iter().min().copied() else {
            return;
        };
        if let Some(l) = listener {
            let w = self.clone();
            let text = Arc::new(move || w.text.read().unwrap_or_else(|p| p.into_inner()).clone());
            tokio::spawn(super::http::serve_metrics(l, text));
        }
        // unwrap: the lock is never held across a panic
        if let (Some(a), Some(rx)) = (self.alerting.clone(), self.inbox.lock().unwrap().take()) {
            tokio::spawn(deliver_all(a, rx));
        }
        tokio::spawn(self.collect_loop(period));
    }

    async fn collect_loop(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_check: Option<tokio::time::Instant> = None;
        loop {
            let full = tokio::select! {
                _ = tick.tick() => true,
                _ = self.wake.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    false
                }
            };
            let w = self.clone();
            let _ = tokio::task::spawn_blocking(move || w.collect(full)).await;
            if let Some(a) = &self.alerting {
                let due = last_check.is_none_or(|t| t.elapsed() + period / 2 >= a.check_interval);
                if full && due {
                    last_check = Some(tokio::time::Instant::now());
                    let w = self.clone();
                    let _ = tokio::task::spawn_blocking(move || w.check()).await;
                }
            }
        }
    }

    /// Collects every namespace (`full`) or those marked dirty, then renders.
    fn collect(&self, full: bool) {
        // unwrap (locks here and below): never held across a panic
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap());
        for n in &self.namespaces {
            if !full && !dirty.contains(&n.name) {
                continue;
            }
            match self.collect_namespace(n) {
                Ok(f) => {
                    self.figures.lock().unwrap().insert(n.name.clone(), f);
                }
                Err(e) => warn!(namespace = %n.name, "collecting figures failed: {e}"),
            }
        }
        *self.disk.lock().unwrap() = disk(&self.data);
        self.collected.store(now(), Ordering::SeqCst);
        let text = metrics::render(&self.figures());
        *self.text.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(text));
    }

    fn store(&self, n: &Namespace) -> Result<LocalStore> {
        namespace_store(&self.data, &n.name, n.policy, self.parity)
    }

    fn collect_namespace(&self, n: &Namespace) -> Result<NamespaceFigures> {
        let s = self.store(n)?;
        let stamps = s.stamps()?;
        let last = stamps.last().map(|(_, st)| *st);
        let (mut packs, mut bytes) = (0, 0);
        s.for_each_pack(&mut |_, size| {
            packs += 1;
            bytes += size;
            Ok(())
        })?;
        Ok(NamespaceFigures {
            namespace: n.name.clone(),
            snapshots: stamps.len() as u64,
            last_snapshot: last.map(|st| st.received),
            last_usage: last.and_then(|st| st.usage),
            packs,
            stored_bytes: bytes,
            quota_bytes: n.quota,
            scrub: ScrubFigures::of(&scrub_state(&s)),
            watched_since: self.watched_since(&n.name),
            ..Default::default()
        })
    }

    fn watched_since(&self, ns: &str) -> i64 {
        let st = self.state.lock().unwrap();
        st.watched_since.get(ns).copied().unwrap_or(self.started)
    }

    /// The figures as of the last collection, with the live counters.
    fn figures(&self) -> ServerFigures {
        let failures = self.failures.lock().unwrap().clone();
        let namespaces = self
            .figures
            .lock()
            .unwrap()
            .values()
            .map(|f| {
                let x = failures.get(&f.namespace).copied().unwrap_or_default();
                NamespaceFigures {
                    failed_commits: x.commits,
                    failed_uploads: x.uploads,
                    ..f.clone()
                }
            })
            .collect();
        let delivered = self.delivered.lock().unwrap();
        let (disk_free_bytes, disk_size_bytes) = *self.disk.lock().unwrap();
        ServerFigures {
            namespaces,
            disk_free_bytes,
            disk_size_bytes,
            started: self.started,
            collected: self.collected.load(Ordering::SeqCst),
            alerts: AlertKind::ALL
                .iter()
                .map(|k| (*k, delivered.get(k).copied().unwrap_or(0)))
                .collect(),
            alert_checks: self.checks.load(Ordering::SeqCst),
        }
    }

    /// Marks a namespace for collection soon (after a commit or a failure).
    fn touch(&self, ns: &str) {
        self.dirty.lock().unwrap().insert(ns.to_string());
        self.wake.notify_one();
    }

    /// Counts a refused or failed snapshot commit (`commit`) or pack upload.
    pub fn failed(&self, ns: &str, commit: bool) {
        let mut m = self.failures.lock().unwrap();
        let f = m.entry(ns.to_string()).or_default();
        if commit {
            f.commits += 1;
        } else {
            f.uploads += 1;
        }
        drop(m);
        self.touch(ns);
    }

    /// After a commit: logs it, judges it against the namespace's usual and
    /// refreshes the namespace's figures. Blocking (reads the stamps).
    pub fn committed(&self, ns: &str, store: &LocalStore, id: SnapshotId, client: &str) {
        self.touch(ns);
        let stamps = match store.stamps() {
            Ok(s) => s,
            Err(e) => {
                warn!(namespace = %ns, snapshot = %id, "reading stamps after a commit failed: {e}");
                return;
            }
        };
        let Some(pos) = stamps.iter().position(|(s, _)| *s == id) else {
            return;
        };
        let usage = stamps[pos].1.usage;
        info!(
            namespace = %ns,
            fingerprint = %client,
            snapshot = %id,
            new_bytes = usage.map(|u| u.new_bytes),
            referenced_bytes = usage.map(|u| u.referenced_bytes),
            "snapshot committed"
        );
        let (Some(a), Some(usage)) = (&self.alerting, usage) else {
            return;
        };
        let previous: Vec<_> = stamps[..pos].iter().filter_map(|(_, s)| s.usage).collect();
        let t = now();
        let active = alert::judge(&previous, usage, &a.rules)
            .map(|x| alert::anomaly_alert(ns, &id, usage, &x, t))
            .into_iter()
            .collect();
        let scope = |k: AlertKind, n: &str| k == AlertKind::Anomaly && n == ns;
        self.raise(scope, active, t);
    }

    /// Evaluates the periodic conditions on the latest figures.
    fn check(&self) {
        let Some(a) = &self.alerting else { return };
        let figures: Vec<NamespaceFigures> =
            self.figures.lock().unwrap().values().cloned().collect();
        let t = now();
        let active = alert::conditions(&figures, &a.rules, t);
        self.raise(|k, _| k.periodic(), active, t);
        self.checks.fetch_add(1, Ordering::SeqCst);
    }

    /// Rate-limits, records and queues alerts for delivery.
    fn raise(&self, scope: impl Fn(AlertKind, &str) -> bool, active: Vec<Alert>, t: i64) {
        let Some(a) = &self.alerting else { return };
        let mut state = self.state.lock().unwrap();
        let n_active = active.len();
        let (due, changed) = state.limit.reconcile(scope, active, t, a.repeat_after);
        if changed {
            self.save(&state);
        }
        drop(state);
        if n_active > due.len() {
            debug!(
                suppressed = n_active - due.len(),
                "alerts already delivered within repeat_after"
            );
        }
        for al in due {
            warn!(
                alert = al.kind.as_str(),
                namespace = %al.namespace,
                "alert: {}",
                al.message
            );
            *self.delivered.lock().unwrap().entry(al.kind).or_default() += 1;
            if self.outbox.try_send(al).is_err() {
                error!("alert queue full: this alert was logged but not delivered");
            }
        }
    }
}

/// Free and total bytes of the file system holding `dir`.
// statvfs's counts are u64 here, narrower elsewhere.
#[allow(clippy::unnecessary_cast)]
fn disk(dir: &std::path::Path) -> (Option<u64>, Option<u64>) {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(v) => {
            let unit = v.fragment_size() as u64;
            (
                Some((v.blocks_available() as u64).saturating_mul(unit)),
                Some((v.blocks() as u64).saturating_mul(unit)),
            )
        }
        Err(e) => {
            warn!(path = %dir.display(), "statvfs failed: {e}");
            (None, None)
        }
    }
}

/// Delivers queued alerts one after another: the command and the webhook
/// of each at the same time. A failure is logged, never fatal.
async fn deliver_all(a: Alerting, mut rx: tokio::sync::mpsc::Receiver<Alert>) {
    while let Some(al) = rx.recv().await {
        // unwrap: a JSON value always serializes
        let body = serde_json::to_vec(&al.to_json()).expect("alert JSON");
        let cmd = async {
            if let Some(argv) = &a.command {
                if let Err(e) = run_command(argv, &body, a.timeout).await {
                    error!(alert = al.kind.as_str(), namespace = %al.namespace, command = %argv[0], "alert command failed: {e}");
                }
            }
        };
        let hook = async {
            if let Some(url) = &a.webhook {
                if let Err(e) = super::http::post_json(url, &body, a.timeout).await {
                    error!(alert = al.kind.as_str(), namespace = %al.namespace, webhook = %url, "alert webhook failed: {e}");
                }
            }
        };
        tokio::join!(cmd, hook);
    }
}

/// Runs `argv` with `input` on its standard input; killed after `timeout`.
async fn run_command(
    argv: &[String],
    input: &[u8],
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let mut stdin = child.stdin.take();
    let work = async {
        if let Some(s) = stdin.as_mut() {
            // A command that does not read its input is its own business.
            let _ = s.write_all(input).await;
        }
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("killed after {}", humantime::format_duration(timeout)))?
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("{}: {}", out.status, err.trim()))
    }
}
