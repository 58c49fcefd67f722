//! The server's watcher: collects each namespace's figures in the
//! background, serves them to Prometheus from a cache, evaluates alerts and
//! delivers them (log, command, webhook). The decisions are in
//! [`crate::monitor`]; this is their I/O shell. It only reads namespaces (a
//! namespace no client has reached yet is empty, not created): its only
//! file is `DATA/alerts.json` (rate limit, alerts not delivered yet, the
//! last snapshot judged in each namespace).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use super::config::{Alerting, ServerConfig};
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::monitor::alert::{self, Alert, AlertKind, RateLimit};
use crate::monitor::{
    metrics, NamespaceFigures, ReplicaPull, ReplicationFigures, ScrubFigures, ServerFigures,
};
use crate::retention::{Policy, Stamp};
use crate::scrub::{scrub_state, ParityConfig};
use crate::store::{replace_file_via, system_clock, LocalStore, Store};

/// The alert state's file in the data directory.
const ALERT_STATE: &str = "alerts.json";
/// Its temporary name while it is replaced (one writer at a time).
const ALERT_STATE_TMP: &str = "alerts.json.tmp";

/// What alerting keeps across restarts (`DATA/alerts.json`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct AlertState {
    /// Conditions delivered and not cleared since; alerts not delivered yet.
    #[serde(flatten)]
    limit: RateLimit,
    /// When the server first watched each namespace: a namespace that never
    /// had a snapshot is stale from then, across restarts.
    watched_since: BTreeMap<String, i64>,
    /// The last snapshot of each namespace judged for an anomaly: newer
    /// ones (committed while the server was down, or whose judgement a
    /// crash interrupted) are judged at the next check.
    judged: BTreeMap<String, Judged>,
    /// On a primary: when each replica (by fingerprint) last listed each
    /// namespace's snapshots.
    replica_pulls: BTreeMap<String, BTreeMap<String, i64>>,
}

/// A snapshot judged for an anomaly.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Judged {
    snapshot: SnapshotId,
    received: i64,
}

/// A commit is reflected after this pause, so a burst costs one collection.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Alerts waiting for delivery; beyond this they wait for the next check.
const OUTBOX: usize = 256;
/// Alerts delivered at the same time, at most.
const DELIVERIES: usize = 4;
/// What an alert command may write to its standard error that is kept.
const MAX_COMMAND_STDERR: usize = 64 << 10;

/// A namespace as the config defines it.
#[derive(Clone)]
struct Namespace {
    name: String,
    policy: Policy,
    quota: Option<u64>,
    stale_after: Option<i64>,
    /// For a namespace copied from a primary: the lag its alert allows.
    replication_lag_after: Option<i64>,
    /// The replicas that may read it, with the time each may go without.
    replicas: Vec<(String, i64)>,
}

/// Failures about one namespace since the server started.
#[derive(Default, Clone, Copy)]
struct Failures {
    commits: u64,
    uploads: u64,
    collections: u64,
}

/// What a namespace's collection keeps from one run to the next.
#[derive(Default)]
struct Cache {
    /// When its packs were last walked: (then, packs, bytes).
    walk: Option<(Instant, u64, u64)>,
    /// `scrub.json`'s (time, size) and its figures.
    scrub: Option<((Option<SystemTime>, u64), ScrubFigures)>,
    /// Stamps skipped at the last collection (warned about on a change).
    skipped: usize,
}

/// Shared between the request handlers, the collector, the HTTP responder
/// and the alert delivery.
pub struct Watch {
    data: PathBuf,
    parity: ParityConfig,
    /// Replaced by a reload ([`Watch::set_namespaces`]).
    namespaces: RwLock<Arc<Vec<Namespace>>>,
    started: i64,
    refresh: Option<Duration>,
    /// `[alerts]`, or the stale check alone (see [`ServerConfig::alerting`]).
    alerting: Alerting,
    figures: Mutex<BTreeMap<String, NamespaceFigures>>,
    cache: Mutex<HashMap<String, Cache>>,
    /// Each namespace's newest snapshot and its `received`, as last collected.
    newest: Mutex<HashMap<String, (SnapshotId, i64)>>,
    failures: Mutex<HashMap<String, Failures>>,
    disk: Mutex<(Option<u64>, Option<u64>)>,
    collected: AtomicI64,
    text: RwLock<Option<Arc<String>>>,
    dirty: Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
    state: Mutex<AlertState>,
    /// One judgement of new snapshots at a time.
    judging: Mutex<()>,
    delivered: Mutex<BTreeMap<AlertKind, u64>>,
    delivery_failures: Mutex<BTreeMap<AlertKind, u64>>,
    checks: AtomicU64,
    outbox: tokio::sync::mpsc::Sender<Alert>,
    inbox: Mutex<Option<tokio::sync::mpsc::Receiver<Alert>>>,
}

fn now() -> i64 {
    system_clock()()
}

/// The namespaces a config defines, sorted by name.
fn config_namespaces(cfg: &ServerConfig) -> Result<Vec<Namespace>> {
    let replications = cfg.validated_replications()?;
    let replicas = cfg.validated_replicas()?;
    let mut namespaces: Vec<Namespace> = cfg
        .namespaces()?
        .into_iter()
        .map(|c| Namespace {
            replication_lag_after: replications
                .iter()
                .find(|r| r.namespace == c.namespace)
                .map(|r| r.lag_alert_after.as_secs() as i64),
            replicas: replicas
                .iter()
                .filter(|r| r.namespaces.contains(&c.namespace))
                .map(|r| {
                    (
                        r.fingerprint.to_string(),
                        r.lag_alert_after.as_secs() as i64,
                    )
                })
                .collect(),
            name: c.namespace,
            policy: c.policy,
            quota: c.quota,
            stale_after: c.stale_after,
        })
        .collect();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(namespaces)
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

/// Reads `DATA/alerts.json`; a missing file is a fresh start, an unreadable
/// one is logged and replaced.
fn load_state(path: &std::path::Path) -> AlertState {
    let parsed = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AlertState::default(),
        Err(e) => Err(e.to_string()),
    };
    parsed.unwrap_or_else(|e| {
        warn!(path = %path.display(), "alert state unreadable, starting afresh (alerts may repeat): {e}");
        AlertState::default()
    })
}

impl Watch {
    /// The namespaces watched now.
    fn namespaces(&self) -> Arc<Vec<Namespace>> {
        // unwrap-free: a poisoned lock still holds a whole list.
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After a reload: watches the namespaces of `cfg` (a new one is
    /// watched from now, as at a start), forgets the figures of those gone,
    /// and collects at the next tick.
    pub fn set_namespaces(&self, cfg: &ServerConfig) -> Result<()> {
        let namespaces = config_namespaces(cfg)?;
        let started = now();
        {
            // unwrap (locks here): never held across a panic
            let mut state = self.state.lock().unwrap();
            for n in &namespaces {
                state.watched_since.entry(n.name.clone()).or_insert(started);
            }
        }
        let known = |ns: &str| namespaces.iter().any(|n| n.name == ns);
        self.figures.lock().unwrap().retain(|ns, _| known(ns));
        self.dirty
            .lock()
            .unwrap()
            .extend(namespaces.iter().map(|n| n.name.clone()));
        *self.namespaces.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(namespaces);
        self.wake.notify_one();
        Ok(())
    }

    /// A watcher for a validated config.
    pub fn new(cfg: &ServerConfig) -> Result<Watch> {
        let namespaces = config_namespaces(cfg)?;
        let alerting = cfg.alerting()?;
        let refresh = cfg.metrics.as_ref().map(|m| m.refresh()).transpose()?;
        let mut state = load_state(&cfg.data.join(ALERT_STATE));
        let started = now();
        let known = |ns: &String| namespaces.iter().any(|n| n.name == *ns);
        state.watched_since.retain(|ns, _| known(ns));
        state.judged.retain(|ns, _| known(ns));
        state.replica_pulls.retain(|ns, _| known(ns));
        for n in &namespaces {
            state.watched_since.entry(n.name.clone()).or_insert(started);
        }
        let (outbox, inbox) = tokio::sync::mpsc::channel(OUTBOX);
        let w = Watch {
            data: cfg.data.clone(),
            parity: cfg.parity_config(),
            namespaces: RwLock::new(Arc::new(namespaces)),
            started,
            refresh,
            alerting,
            figures: Mutex::new(BTreeMap::new()),
            cache: Mutex::new(HashMap::new()),
            newest: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            disk: Mutex::new((None, None)),
            collected: AtomicI64::new(0),
            text: RwLock::new(None),
            dirty: Mutex::new(BTreeSet::new()),
            wake: tokio::sync::Notify::new(),
            state: Mutex::new(state),
            judging: Mutex::new(()),
            delivered: Mutex::new(BTreeMap::new()),
            delivery_failures: Mutex::new(BTreeMap::new()),
            checks: AtomicU64::new(0),
            outbox,
            inbox: Mutex::new(Some(inbox)),
        };
        // unwrap: the lock is never held across a panic
        w.save(&w.state.lock().unwrap());
        Ok(w)
    }

    /// Writes the alert state; called with its lock held (one writer).
    fn save(&self, state: &AlertState) {
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec_pretty(state).expect("alert state JSON");
        let path = self.data.join(ALERT_STATE);
        if let Err(e) = replace_file_via(&self.data.join(ALERT_STATE_TMP), &path, &bytes) {
            error!("saving the alert state failed (a restart may alert again): {e}");
        }
    }

    /// Starts the collector, the alert delivery and, when the config asks
    /// for it, the metrics endpoint.
    pub fn start(self: Arc<Self>, listener: Option<TcpListener>) {
        let check = self.alerting.check_interval;
        let period = self.refresh.map_or(check, |r| r.min(check));
        if let Some(l) = listener {
            let w = self.clone();
            let text = Arc::new(move || w.text.read().unwrap_or_else(|p| p.into_inner()).clone());
            tokio::spawn(super::http::serve_metrics(l, text));
        }
        // unwrap: the lock is never held across a panic
        let inbox = self.inbox.lock().unwrap().take();
        if let Some(rx) = inbox {
            tokio::spawn(self.clone().deliver_loop(rx));
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
            let _ = tokio::task::spawn_blocking(move || w.collect(full, period)).await;
            let every = self.alerting.check_interval;
            let due = last_check.is_none_or(|t| t.elapsed() + period / 2 >= every);
            if full && due {
                last_check = Some(tokio::time::Instant::now());
                let w = self.clone();
                let _ = tokio::task::spawn_blocking(move || w.check()).await;
            }
        }
    }

    /// How often a namespace's packs are walked again, at most.
    fn walk_every(&self) -> Duration {
        self.refresh.unwrap_or(self.alerting.check_interval)
    }

    /// Collects every namespace (`full`) or those marked dirty, then renders
    /// (after a failed request, only renders: its counter is live).
    fn collect(&self, full: bool, period: Duration) {
        // unwrap (locks here and below): never held across a panic
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap());
        // On a tick, a walk a little early beats one a whole period late.
        let slack = if full { period / 2 } else { Duration::ZERO };
        let mut any = false;
        for n in self.namespaces().iter() {
            if !full && !dirty.contains(&n.name) {
                continue;
            }
            any = true;
            match self.collect_namespace(n, slack) {
                Ok(f) => {
                    self.figures.lock().unwrap().insert(n.name.clone(), f);
                }
                Err(e) => {
                    error!(namespace = %n.name, "collecting figures failed (they stay as last collected): {e}");
                    self.failures
                        .lock()
                        .unwrap()
                        .entry(n.name.clone())
                        .or_default()
                        .collections += 1;
                    // Never collected: still shown, and still stale in time.
                    self.figures
                        .lock()
                        .unwrap()
                        .entry(n.name.clone())
                        .or_insert_with(|| self.empty_figures(n));
                }
            }
        }
        if full {
            *self.disk.lock().unwrap() = disk(&self.data);
        }
        if any {
            self.collected.store(now(), Ordering::SeqCst);
        }
        let text = metrics::render(&self.figures());
        *self.text.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(text));
    }

    fn empty_figures(&self, n: &Namespace) -> NamespaceFigures {
        let dir = self.data.join("namespaces").join(&n.name);
        NamespaceFigures {
            namespace: n.name.clone(),
            quota_bytes: n.quota,
            stale_after: n.stale_after,
            watched_since: self.watched_since(&n.name),
            replication: n.replication_lag_after.map(|after| ReplicationFigures {
                status: super::replica::read_status(&dir),
                lag_alert_after: after,
                lag: 0,
            }),
            replicas: self.pulls(n),
            ..Default::default()
        }
    }

    /// A namespace's store for reading, or `None` while it has no layout
    /// (no client reached it yet; `tmp` is the last directory made).
    fn observe(&self, n: &Namespace) -> Result<Option<LocalStore>> {
        let dir = self.data.join("namespaces").join(&n.name);
        if !dir.join("tmp").is_dir() {
            return Ok(None);
        }
        Ok(Some(
            LocalStore::observe(&dir)?
                .with_policy(n.policy)
                .with_parity(self.parity),
        ))
    }

    /// A namespace's figures: its stamps each time, its packs at most every
    /// [`Watch::walk_every`] (less `slack`), `scrub.json` when it changed.
    fn collect_namespace(&self, n: &Namespace, slack: Duration) -> Result<NamespaceFigures> {
        let mut f = self.empty_figures(n);
        let Some(s) = self.observe(n)? else {
            return Ok(f);
        };
        let (stamps, skipped) = s.stamps()?;
        let mut caches = self.cache.lock().unwrap();
        let c = caches.entry(n.name.clone()).or_default();
        if skipped.len() != c.skipped {
            for e in &skipped {
                warn!(namespace = %n.name, "a stamp was skipped in the figures: {e}");
            }
            c.skipped = skipped.len();
        }
        let mut newest = self.newest.lock().unwrap();
        match stamps.last() {
            Some((id, st)) => newest.insert(n.name.clone(), (*id, st.received)),
            None => newest.remove(&n.name),
        };
        drop(newest);
        // Only the metrics and the quota alert need the packs.
        let walk = self.refresh.is_some() || !self.alerting.stale_only;
        let every = self.walk_every();
        if walk && c.walk.is_none_or(|(t, _, _)| t.elapsed() + slack >= every) {
            let (mut packs, mut bytes) = (0, 0);
            s.for_each_pack(&mut |_, size| {
                packs += 1;
                bytes += size;
                Ok(())
            })?;
            c.walk = Some((Instant::now(), packs, bytes));
        }
        if let Some((_, packs, bytes)) = c.walk {
            (f.packs, f.stored_bytes) = (packs, bytes);
        }
        let path = s.root().join("scrub.json");
        let key = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        f.scrub = match &c.scrub {
            Some((k, figures)) if Some(*k) == key => figures.clone(),
            _ => {
                let figures = ScrubFigures::of(&scrub_state(&s));
                c.scrub = key.map(|k| (k, figures.clone()));
                figures
            }
        };
        f.clock_frozen = crate::clock_guard::frozen_refusal(s.root())?;
        let last = stamps.last().map(|(_, st)| *st);
        f.snapshots = stamps.len() as u64;
        f.last_snapshot = last.map(|st| st.received);
        f.last_usage = last.and_then(|st| st.usage);
        Ok(f)
    }

    /// The replicas of `n` and when each last read it.
    fn pulls(&self, n: &Namespace) -> Vec<ReplicaPull> {
        let st = self.state.lock().unwrap();
        let seen = st.replica_pulls.get(&n.name);
        n.replicas
            .iter()
            .map(|(fp, after)| ReplicaPull {
                replica: fp.clone(),
                last_pull: seen.and_then(|m| m.get(fp)).copied(),
                lag_alert_after: *after,
            })
            .collect()
    }

    fn watched_since(&self, ns: &str) -> i64 {
        let st = self.state.lock().unwrap();
        st.watched_since.get(ns).copied().unwrap_or(self.started)
    }

    /// The figures as of the last collection, with the live counters.
    fn figures(&self) -> ServerFigures {
        let failures = self.failures.lock().unwrap().clone();
        let collected = self.collected.load(Ordering::SeqCst);
        let stale_after = self.alerting.rules.stale_after;
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
                    collect_errors: x.collections,
                    staleness: (collected > 0).then(|| alert::staleness(f, stale_after, collected)),
                    replication: f.replication.clone().map(|r| ReplicationFigures {
                        lag: r
                            .status
                            .lag(f.watched_since, collected.max(f.watched_since)),
                        ..r
                    }),
                    ..f.clone()
                }
            })
            .collect();
        let per_kind = |m: &Mutex<BTreeMap<AlertKind, u64>>| {
            let m = m.lock().unwrap();
            AlertKind::ALL
                .iter()
                .map(|k| (*k, m.get(k).copied().unwrap_or(0)))
                .collect()
        };
        let (disk_free_bytes, disk_size_bytes) = *self.disk.lock().unwrap();
        ServerFigures {
            namespaces,
            disk_free_bytes,
            disk_size_bytes,
            started: self.started,
            collected,
            alerts: per_kind(&self.delivered),
            alert_delivery_failures: per_kind(&self.delivery_failures),
            alert_checks: self.checks.load(Ordering::SeqCst),
        }
    }

    /// Marks a namespace for collection soon (after a commit).
    fn touch(&self, ns: &str) {
        self.dirty.lock().unwrap().insert(ns.to_string());
        self.wake.notify_one();
    }

    /// Records that replica `fp` listed namespace `ns`'s snapshots now (a
    /// copy run began), kept across restarts.
    pub fn pulled(&self, ns: &str, fp: &str) {
        let mut st = self.state.lock().unwrap();
        st.replica_pulls
            .entry(ns.to_string())
            .or_default()
            .insert(fp.to_string(), now());
        self.save(&st);
        drop(st);
        self.touch(ns);
    }

    /// Counts a refused or failed snapshot commit (`commit`) or pack upload;
    /// the scrape shows it soon, without collecting anything again.
    pub fn failed(&self, ns: &str, commit: bool) {
        let mut m = self.failures.lock().unwrap();
        let f = m.entry(ns.to_string()).or_default();
        if commit {
            f.commits += 1;
        } else {
            f.uploads += 1;
        }
        drop(m);
        self.wake.notify_one();
    }

    /// After a commit: logs it, refreshes the namespace's figures and
    /// judges the snapshots not judged yet. Blocking (reads the stamps).
    pub fn committed(&self, ns: &str, store: &LocalStore, id: SnapshotId, client: &str) {
        self.touch(ns);
        let usage = store.stamp(&id).ok().and_then(|st| st.usage);
        info!(
            namespace = %ns,
            fingerprint = %client,
            snapshot = %id,
            new_bytes = usage.map(|u| u.new_bytes),
            referenced_bytes = usage.map(|u| u.referenced_bytes),
            "snapshot committed"
        );
        if self.alerting.stale_only {
            return;
        }
        match store.stamps() {
            Ok((stamps, _)) => self.judge(ns, &stamps),
            Err(e) => {
                warn!(namespace = %ns, snapshot = %id, "reading stamps after a commit failed (judged at a later check): {e}")
            }
        }
    }

    /// Judges the snapshots of `stamps` (a namespace's, in commit order)
    /// newer than the last one judged; those received before the server
    /// first watched the namespace are history, never judged.
    fn judge(&self, ns: &str, stamps: &[(SnapshotId, Stamp)]) {
        let a = &self.alerting;
        if a.stale_only {
            return;
        }
        let Some((last_id, last)) = stamps.last() else {
            return;
        };
        let _one = self.judging.lock().unwrap();
        let mut st = self.state.lock().unwrap();
        let mark = st.judged.get(ns).copied();
        let from = match mark {
            Some(m) => match stamps.iter().position(|(id, _)| *id == m.snapshot) {
                Some(i) => i + 1,
                None => stamps
                    .iter()
                    .position(|(_, s)| s.received > m.received)
                    .unwrap_or(stamps.len()),
            },
            None => {
                let since = st.watched_since.get(ns).copied().unwrap_or(self.started);
                stamps
                    .iter()
                    .position(|(_, s)| s.received >= since)
                    .unwrap_or(stamps.len())
            }
        };
        if from == stamps.len() && mark.is_some() {
            return;
        }
        let t = now();
        let scope = |k: AlertKind, n: &str| k == AlertKind::Anomaly && n == ns;
        for (i, (id, s)) in stamps.iter().enumerate().skip(from) {
            let Some(usage) = s.usage else { continue };
            let previous: Vec<_> = stamps[..i].iter().filter_map(|(_, s)| s.usage).collect();
            let active = alert::judge(&previous, usage, &a.rules)
                .map(|x| alert::anomaly_alert(ns, id, usage, &x, t))
                .into_iter()
                .collect();
            st.limit.reconcile(scope, active, t, a.repeat_after);
        }
        // Never backwards: a stale list must not make judged ones new again.
        if mark.is_none_or(|m| last.received >= m.received) {
            st.judged.insert(
                ns.to_string(),
                Judged {
                    snapshot: *last_id,
                    received: last.received,
                },
            );
        }
        self.save(&st);
        drop(st);
        self.dispatch(t);
    }

    /// Evaluates the periodic conditions on the latest figures, judges
    /// snapshots nobody judged (committed while the server was down), and
    /// retries the deliveries that are due.
    fn check(&self) {
        let a = &self.alerting;
        // Without [alerts], snapshots are not judged, and of the periodic
        // conditions only staleness is.
        for n in self.namespaces().iter().filter(|_| !a.stale_only) {
            let newest = self.newest.lock().unwrap().get(&n.name).copied();
            let mark = self.state.lock().unwrap().judged.get(&n.name).copied();
            let unjudged = newest.is_some_and(|(id, received)| {
                mark.is_none_or(|m| {
                    received > m.received || (received == m.received && id != m.snapshot)
                })
            });
            if !unjudged {
                continue;
            }
            match self
                .observe(n)
                .and_then(|s| s.map(|s| s.stamps()).transpose())
            {
                Ok(Some((stamps, _))) => self.judge(&n.name, &stamps),
                Ok(None) => {}
                Err(e) => {
                    warn!(namespace = %n.name, "reading stamps to judge new snapshots failed: {e}")
                }
            }
        }
        let figures: Vec<NamespaceFigures> =
            self.figures.lock().unwrap().values().cloned().collect();
        let t = now();
        let active = alert::conditions(&figures, &a.rules, t)
            .into_iter()
            .filter(|x| {
                !a.stale_only
                    || matches!(
                        x.kind,
                        AlertKind::Stale | AlertKind::Clock | AlertKind::ReplicationLag
                    )
            })
            .collect();
        let mut st = self.state.lock().unwrap();
        if st
            .limit
            .reconcile(|k, _| k.periodic(), active, t, a.repeat_after)
        {
            self.save(&st);
        }
        drop(st);
        self.dispatch(t);
        self.checks.fetch_add(1, Ordering::SeqCst);
    }

    /// Hands the alerts due for delivery to the delivery task. With no
    /// command and no webhook, the log is the delivery.
    fn dispatch(&self, t: i64) {
        let a = &self.alerting;
        let mut st = self.state.lock().unwrap();
        let due = st.limit.take_due(t);
        if due.is_empty() {
            return;
        }
        let log_only = a.command.is_none() && a.webhook.is_none();
        for u in due {
            let al = u.alert;
            if u.attempts == 0 {
                warn!(alert = al.kind.as_str(), namespace = %al.namespace, "alert: {}", al.message);
            } else {
                info!(alert = al.kind.as_str(), namespace = %al.namespace, attempt = u.attempts + 1, "delivering an alert again");
            }
            if log_only {
                st.limit.settle(&al, true, t, 0);
                *self.delivered.lock().unwrap().entry(al.kind).or_default() += 1;
            } else if self.outbox.try_send(al.clone()).is_err() {
                error!(alert = al.kind.as_str(), namespace = %al.namespace, "alert queue full: delivery tried again at the next check");
                st.limit.put_back(&al);
            }
        }
        if log_only {
            self.save(&st);
        }
    }

    /// Delivers queued alerts, a few at a time, each to the command and
    /// the webhook at once, and records the outcomes.
    async fn deliver_loop(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<Alert>) {
        let limit = Arc::new(tokio::sync::Semaphore::new(DELIVERIES));
        while let Some(al) = rx.recv().await {
            // unwrap: the semaphore is never closed
            let permit = limit.clone().acquire_owned().await.expect("semaphore open");
            let w = self.clone();
            tokio::spawn(async move {
                let ok = deliver(&w.alerting, &al).await;
                let w2 = w.clone();
                let _ = tokio::task::spawn_blocking(move || w2.settle(&al, ok)).await;
                drop(permit);
                // the counters show at once
                w.wake.notify_one();
            });
        }
    }

    /// Records a delivery's outcome: sent, or tried again later.
    fn settle(&self, al: &Alert, delivered: bool) {
        let retry = self.alerting.check_interval.as_secs() as i64;
        let mut st = self.state.lock().unwrap();
        st.limit.settle(al, delivered, now(), retry);
        let counter = if delivered {
            &self.delivered
        } else {
            &self.delivery_failures
        };
        *counter.lock().unwrap().entry(al.kind).or_default() += 1;
        self.save(&st);
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

/// Delivers one alert to the command and the webhook at the same time;
/// whether at least one of them took it. A failure is logged.
async fn deliver(a: &Alerting, al: &Alert) -> bool {
    // unwrap: a JSON value always serializes
    let body = serde_json::to_vec(&al.to_json()).expect("alert JSON");
    let cmd = async {
        let argv = a.command.as_ref()?;
        let r = run_command(argv, &body, a.timeout).await;
        if let Err(e) = &r {
            error!(alert = al.kind.as_str(), namespace = %al.namespace, command = %argv[0], "alert command failed: {e}");
        }
        Some(r.is_ok())
    };
    let hook = async {
        let url = a.webhook.clone()?;
        let b = body.clone();
        let r = tokio::task::spawn_blocking(move || url.post(&b))
            .await
            .unwrap_or_else(|e| Err(format!("the delivery task failed: {e}")));
        let url = a.webhook.as_ref()?;
        if let Err(e) = &r {
            error!(alert = al.kind.as_str(), namespace = %al.namespace, webhook = %url, "alert webhook failed: {e}");
        }
        Some(r.is_ok())
    };
    let (c, h) = tokio::join!(cmd, hook);
    c == Some(true) || h == Some(true)
}

/// Runs `argv` in a process group of its own with `input` on its standard
/// input; the whole group is killed after `timeout`. Keeps the first
/// [`MAX_COMMAND_STDERR`] bytes of its standard error for the message.
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
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let group = child
        .id()
        .map(|p| nix::unistd::Pid::from_raw(p as libc::pid_t));
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    let feed = async {
        if let Some(mut s) = stdin {
            // A command that does not read its input is its own business.
            let _ = s.write_all(input).await;
        }
    };
    let collect = async {
        let mut kept = Vec::new();
        if let Some(mut s) = stderr {
            let mut buf = [0u8; 8192];
            // Read to the end, keeping the start: a full pipe must not
            // block the command.
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = MAX_COMMAND_STDERR.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        kept
    };
    let work = async {
        let (_, err, status) = tokio::join!(feed, collect, child.wait());
        (status, err)
    };
    let out = tokio::time::timeout(timeout, work).await;
    let Ok((status, err)) = out else {
        if let Some(g) = group {
            let _ = nix::sys::signal::killpg(g, nix::sys::signal::Signal::SIGKILL);
        }
        return Err(format!(
            "killed after {}",
            humantime::format_duration(timeout)
        ));
    };
    let status = status.map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&err);
        Err(format!("{status}: {}", err.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_command_is_bounded_in_output_and_killed_with_its_children() {
        // much stderr: kept only in part
        let e = run_command(
            &sh("head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 3"),
            b"",
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert!(e.len() < MAX_COMMAND_STDERR + 100, "{}", e.len());
        assert!(e.contains("exit status: 3"), "{}", &e[..40]);
        // a hung command: killed with the child it started
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let e = run_command(
            &sh(&format!(
                "sleep 120 & echo $! > {}; wait",
                pidfile.display()
            )),
            b"",
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(e.contains("killed"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        // gone (or a zombie waiting for init)
        while nix::sys::signal::kill(pid, None).is_ok() && !zombie(pid) {
            assert!(Instant::now() < deadline, "the grandchild survived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn zombie(pid: nix::unistd::Pid) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }
}
