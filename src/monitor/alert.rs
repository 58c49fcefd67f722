//! Alerts as pure decisions: which conditions hold for a set of figures, whether
//! a snapshot looks like ransomware, and whether an alert is due or was sent
//! too recently. Owns the alert JSON; delivering it (log, command, webhook)
//! and the clock belong to the server's watcher.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::NamespaceFigures;
use crate::id::SnapshotId;
use crate::retention::{fmt_time, SnapshotUsage};

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A client's last good backup is older than the threshold.
    Stale,
    /// The latest scrub found damage it could not repair.
    ScrubUnrepairable,
    /// A namespace is close to its quota.
    Quota,
    /// A snapshot far above the client's usual (ransomware?).
    Anomaly,
    /// Deletion is frozen: the clock jumped (see `clock_guard`).
    Clock,
    /// A replicated namespace's copy fell behind its primary.
    ReplicationLag,
}

impl AlertKind {
    /// Every kind, in a stable order.
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Stale,
        AlertKind::ScrubUnrepairable,
        AlertKind::Quota,
        AlertKind::Anomaly,
        AlertKind::Clock,
        AlertKind::ReplicationLag,
    ];

    /// Its name in JSON and in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertKind::Stale => "stale",
            AlertKind::ScrubUnrepairable => "scrub_unrepairable",
            AlertKind::Quota => "quota",
            AlertKind::Anomaly => "anomaly",
            AlertKind::Clock => "clock",
            AlertKind::ReplicationLag => "replication_lag",
        }
    }

    /// Whether the condition is judged from figures on every check (as
    /// opposed to once per snapshot, like an anomaly).
    pub fn periodic(&self) -> bool {
        !matches!(self, AlertKind::Anomaly)
    }
}

/// One alert: `kind`, `namespace`, `message`, `time` and fields of its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What it is about.
    pub kind: AlertKind,
    /// The namespace concerned.
    pub namespace: String,
    /// One line for a human.
    pub message: String,
    /// When it was raised (seconds since the epoch).
    pub time: i64,
    /// Fields of its kind.
    #[serde(default)]
    pub details: Map<String, Value>,
}

impl Alert {
    fn new(kind: AlertKind, ns: &str, time: i64, message: String, details: Value) -> Alert {
        Alert {
            kind,
            namespace: ns.to_string(),
            message,
            time,
            details: match details {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        }
    }

    /// The JSON object delivered to the command and the webhook.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!(self.kind.as_str()));
        m.insert("namespace".into(), json!(self.namespace));
        m.insert("message".into(), json!(self.message));
        m.insert("time".into(), json!(fmt_time(self.time)));
        for (k, v) in &self.details {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// Thresholds of the alerts (durations in seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRules {
    /// A namespace whose latest snapshot is older than this is stale.
    pub stale_after: i64,
    /// Warn when stored bytes reach this share of the quota.
    pub quota_warn: f64,
    /// A snapshot's new bytes above this many times the usual are an anomaly.
    pub anomaly_factor: f64,
    /// ... and only when they are at least this many bytes.
    pub anomaly_min_bytes: u64,
    /// How many earlier snapshots make "the usual" (at least [`MIN_HISTORY`]).
    pub anomaly_window: usize,
}

/// Fewer earlier snapshots than this say too little about a client's usual:
/// no anomaly is judged before.
pub const MIN_HISTORY: usize = 3;
/// A new fraction above this, where it is usually at most
/// [`USUAL_FRACTION_MAX`], means deduplication collapsed.
pub const COLLAPSE_FRACTION: f64 = 0.5;
/// See [`COLLAPSE_FRACTION`].
pub const USUAL_FRACTION_MAX: f64 = 0.1;

/// How long a namespace has gone without a snapshot, and the threshold it
/// is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// Seconds since its latest snapshot was received, or since the server
    /// began watching it when it has none.
    pub age: i64,
    /// Its own `stale_after`, else the server's, in seconds.
    pub after: i64,
}

impl Staleness {
    /// Whether it is stale.
    pub fn stale(&self) -> bool {
        self.age > self.after
    }
}

/// A namespace's [`Staleness`] at `now`, `default_after` unless it has its
/// own threshold. A namespace with no snapshot counts from when the server
/// began watching it, so a client that never backed up is noticed too.
pub fn staleness(n: &NamespaceFigures, default_after: i64, now: i64) -> Staleness {
    Staleness {
        age: now - n.last_snapshot.unwrap_or(n.watched_since),
        after: n.stale_after.unwrap_or(default_after),
    }
}

/// The periodic conditions that hold now, one alert each (staleness as
/// [`staleness`] judges it).
pub fn conditions(figures: &[NamespaceFigures], rules: &AlertRules, now: i64) -> Vec<Alert> {
    let mut out = Vec::new();
    for n in figures {
        let ns = n.namespace.as_str();
        let st = staleness(n, rules.stale_after, now);
        let (age, stale_after) = (st.age, st.after);
        if st.stale() {
            let message = match n.last_snapshot {
                Some(t) => format!(
                    "namespace {ns}: no snapshot since {} ({} ago; threshold {})",
                    fmt_time(t),
                    span(age),
                    span(stale_after)
                ),
                None => format!(
                    "namespace {ns}: no snapshot at all, {} after the server began watching it (threshold {})",
                    span(age),
                    span(stale_after)
                ),
            };
            out.push(Alert::new(
                AlertKind::Stale,
                ns,
                now,
                message,
                json!({
                    "last_snapshot": n.last_snapshot.map(fmt_time),
                    "age_seconds": age,
                    "stale_after_seconds": stale_after,
                }),
            ));
        }
        if let Some(r) = &n.replication {
            let lag = r.status.lag(n.watched_since, now);
            if lag > r.lag_alert_after {
                let st = &r.status;
                let last = st.last_success.map_or("never".to_string(), fmt_time);
                let why = st
                    .last_error
                    .as_deref()
                    .map_or(String::new(), |e| format!("; the last run failed: {e}"));
                out.push(Alert::new(
                    AlertKind::ReplicationLag,
                    ns,
                    now,
                    format!(
                        "namespace {ns}: the copy is {} behind its primary (threshold {}; last finished run {last}; {} snapshots not copied){why}",
                        span(lag),
                        span(r.lag_alert_after),
                        st.lag_snapshots
                    ),
                    json!({
                        "lag_seconds": lag,
                        "lag_alert_after_seconds": r.lag_alert_after,
                        "last_success": st.last_success.map(fmt_time),
                        "lag_snapshots": st.lag_snapshots,
                        "failures": st.failures,
                        "last_error": st.last_error,
                    }),
                ));
            }
        }
        let behind: Vec<(&super::ReplicaPull, i64)> = n
            .replicas
            .iter()
            .map(|r| (r, now - r.last_pull.unwrap_or(n.watched_since)))
            .filter(|(r, age)| *age > r.lag_alert_after)
            .collect();
        if !behind.is_empty() {
            let said: Vec<String> = behind
                .iter()
                .map(|(r, age)| {
                    let short: String = r.replica.chars().take(16).collect();
                    match r.last_pull {
                        Some(t) => format!(
                            "replica {short} last copied it {} ago, at {} (threshold {})",
                            span(*age),
                            fmt_time(t),
                            span(r.lag_alert_after)
                        ),
                        None => format!(
                            "replica {short} has not copied it in the {} the server has watched it (threshold {})",
                            span(*age),
                            span(r.lag_alert_after)
                        ),
                    }
                })
                .collect();
            out.push(Alert::new(
                AlertKind::ReplicationLag,
                ns,
                now,
                format!("namespace {ns}: {}", said.join("; ")),
                json!({
                    "replicas": behind
                        .iter()
                        .map(|(r, age)| json!({
                            "replica": r.replica,
                            "last_pull": r.last_pull.map(fmt_time),
                            "age_seconds": age,
                            "lag_alert_after_seconds": r.lag_alert_after,
                        }))
                        .collect::<Vec<_>>(),
                }),
            ));
        }
        if let Some(why) = &n.clock_frozen {
            out.push(Alert::new(
                AlertKind::Clock,
                ns,
                now,
                format!("namespace {ns}: {why}"),
                json!({ "frozen": why }),
            ));
        }
        if let Some(q) = n.quota_bytes {
            let share = if q == 0 {
                1.0
            } else {
                n.stored_bytes as f64 / q as f64
            };
            if share >= rules.quota_warn {
                out.push(Alert::new(
                    AlertKind::Quota,
                    ns,
                    now,
                    format!(
                        "namespace {ns}: {} of its quota of {} bytes used ({:.0}%); uploads past it are refused",
                        n.stored_bytes,
                        q,
                        share * 100.0
                    ),
                    json!({
                        "stored_bytes": n.stored_bytes,
                        "quota_bytes": q,
                        "used_fraction": share,
                    }),
                ));
            }
        }
        if n.scrub.unrepairable_packs > 0 {
            let packs: Vec<&str> = n
                .scrub
                .unrepairable
                .iter()
                .map(|(p, _)| p.as_str())
                .collect();
            let mut snaps: Vec<&str> = n
                .scrub
                .unrepairable
                .iter()
                .flat_map(|(_, s)| s.iter().map(|x| x.as_str()))
                .collect();
            snaps.sort_unstable();
            snaps.dedup();
            out.push(Alert::new(
                AlertKind::ScrubUnrepairable,
                ns,
                now,
                format!(
                    "namespace {ns}: the scrub completed at {} found {} packs ({} blocks) beyond repair, touching {} snapshots",
                    fmt_time(n.scrub.last_complete),
                    n.scrub.unrepairable_packs,
                    n.scrub.unrepairable_blocks,
                    snaps.len()
                ),
                json!({
                    "scrub_completed": fmt_time(n.scrub.last_complete),
                    "unrepairable_packs": n.scrub.unrepairable_packs,
                    "unrepairable_blocks": n.scrub.unrepairable_blocks,
                    "packs": packs,
                    "snapshots": snaps,
                }),
            ));
        }
    }
    out
}

/// Why a snapshot looks wrong.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnomalyReason {
    /// Far more new bytes than usual.
    NewBytes,
    /// Far more of it is new than usual: deduplication collapsed.
    DedupCollapse,
}

/// A snapshot that stands out, and what the usual was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Anomaly {
    /// Why.
    pub reason: AnomalyReason,
    /// The median new bytes of the earlier snapshots.
    pub usual_new_bytes: u64,
    /// The median new fraction of the earlier snapshots.
    pub usual_new_fraction: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    // The upper median: for an alarm, erring high pages less.
    v[v.len() / 2]
}

/// Judges `latest` against the last `rules.anomaly_window` of `previous`
/// (oldest first). Nothing is judged below [`MIN_HISTORY`] earlier
/// snapshots or below `anomaly_min_bytes` new bytes, so small or young
/// namespaces do not page.
pub fn judge(
    previous: &[SnapshotUsage],
    latest: SnapshotUsage,
    rules: &AlertRules,
) -> Option<Anomaly> {
    let window = rules.anomaly_window.max(MIN_HISTORY);
    let recent = &previous[previous.len().saturating_sub(window)..];
    if recent.len() < MIN_HISTORY || latest.new_bytes < rules.anomaly_min_bytes {
        return None;
    }
    let usual_new_bytes = median(recent.iter().map(|u| u.new_bytes as f64).collect());
    let usual_new_fraction = median(recent.iter().map(|u| u.new_fraction()).collect());
    let reason = if latest.new_bytes as f64 > rules.anomaly_factor * usual_new_bytes {
        AnomalyReason::NewBytes
    } else if latest.new_fraction() > COLLAPSE_FRACTION && usual_new_fraction <= USUAL_FRACTION_MAX
    {
        AnomalyReason::DedupCollapse
    } else {
        return None;
    };
    Some(Anomaly {
        reason,
        usual_new_bytes: usual_new_bytes as u64,
        usual_new_fraction,
    })
}

/// The alert for an anomalous snapshot.
pub fn anomaly_alert(
    ns: &str,
    snapshot: &SnapshotId,
    usage: SnapshotUsage,
    a: &Anomaly,
    now: i64,
) -> Alert {
    let (reason, why) = match a.reason {
        AnomalyReason::NewBytes => (
            "new_bytes",
            format!(
                "{} new bytes where {} is usual",
                usage.new_bytes, a.usual_new_bytes
            ),
        ),
        AnomalyReason::DedupCollapse => (
            "dedup_collapse",
            format!(
                "{:.0}% of it is new where {:.0}% is usual",
                usage.new_fraction() * 100.0,
                a.usual_new_fraction * 100.0
            ),
        ),
    };
    Alert::new(
        AlertKind::Anomaly,
        ns,
        now,
        format!(
            "namespace {ns}: snapshot {} stands out ({why}); files encrypted by ransomware look like this",
            snapshot.short()
        ),
        json!({
            "snapshot": snapshot.to_hex(),
            "reason": reason,
            "new_bytes": usage.new_bytes,
            "referenced_bytes": usage.referenced_bytes,
            "new_fraction": usage.new_fraction(),
            "usual_new_bytes": a.usual_new_bytes,
            "usual_new_fraction": a.usual_new_fraction,
        }),
    )
}

/// A duration for a message: humantime's spelling, to the second.
fn span(secs: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs.max(0) as u64)).to_string()
}

/// When each (kind, namespace) condition was last delivered, and the alerts
/// raised and not delivered yet. Kept in the data directory, so a restart
/// neither pages again nor loses an alert; an entry is dropped when its
/// condition clears, so a condition that returns alerts again. An alert
/// counts as sent only once delivered: a failed delivery is retried, with
/// a growing delay, until it succeeds or its condition clears.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    /// Conditions delivered and not cleared since.
    pub sent: Vec<Sent>,
    /// Alerts raised and not delivered yet.
    pub undelivered: Vec<Undelivered>,
}

/// One delivered condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    /// Its kind.
    pub kind: AlertKind,
    /// Its namespace.
    pub namespace: String,
    /// When it was last delivered.
    pub at: i64,
}

/// An alert waiting for delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undelivered {
    /// The alert.
    pub alert: Alert,
    /// Failed deliveries so far.
    #[serde(default)]
    pub attempts: u32,
    /// Not tried again before this time (after a restart: at once).
    #[serde(skip)]
    pub next_try: i64,
    /// Handed to the delivery and not settled yet (not kept: after a
    /// restart nothing is in flight).
    #[serde(skip)]
    pub in_flight: bool,
}

/// The longest wait between two attempts to deliver an alert, in seconds.
pub const MAX_RETRY_SECS: i64 = 1800;

fn same(a: &Alert, kind: AlertKind, ns: &str) -> bool {
    a.kind == kind && a.namespace == ns
}

impl RateLimit {
    /// Reconciles the conditions in `scope` with those that hold now
    /// (`active`, all in scope): entries in scope that no longer hold are
    /// cleared (an undelivered periodic alert with them; an anomaly is an
    /// event and is delivered all the same); the active alerts neither
    /// delivered within `repeat_after` seconds nor already waiting are
    /// queued for delivery. Returns whether the state changed.
    pub fn reconcile(
        &mut self,
        scope: impl Fn(AlertKind, &str) -> bool,
        active: Vec<Alert>,
        now: i64,
        repeat_after: i64,
    ) -> bool {
        let holds = |kind: AlertKind, ns: &str| active.iter().any(|a| same(a, kind, ns));
        let before = (self.sent.len(), self.undelivered.len());
        self.sent
            .retain(|s| !scope(s.kind, &s.namespace) || holds(s.kind, &s.namespace));
        self.undelivered.retain(|u| {
            let (k, ns) = (u.alert.kind, u.alert.namespace.as_str());
            !k.periodic() || !scope(k, ns) || holds(k, ns)
        });
        let mut changed = (self.sent.len(), self.undelivered.len()) != before;
        for a in active {
            let recent = self.sent.iter().any(|s| {
                s.kind == a.kind && s.namespace == a.namespace && now - s.at < repeat_after
            });
            let waiting = self
                .undelivered
                .iter()
                .any(|u| same(&u.alert, a.kind, &a.namespace));
            if !recent && !waiting {
                self.undelivered.push(Undelivered {
                    alert: a,
                    attempts: 0,
                    next_try: now,
                    in_flight: false,
                });
                changed = true;
            }
        }
        changed
    }

    /// The alerts due for a delivery attempt at `now`, marked in flight:
    /// each must be settled ([`RateLimit::settle`]) or put back
    /// ([`RateLimit::put_back`]).
    pub fn take_due(&mut self, now: i64) -> Vec<Undelivered> {
        let mut out = Vec::new();
        for u in &mut self.undelivered {
            if !u.in_flight && u.next_try <= now {
                u.in_flight = true;
                out.push(u.clone());
            }
        }
        out
    }

    /// An alert taken and not handed to the delivery (its queue was full):
    /// tried again at the next occasion, nothing recorded.
    pub fn put_back(&mut self, a: &Alert) {
        for u in &mut self.undelivered {
            if same(&u.alert, a.kind, &a.namespace) {
                u.in_flight = false;
            }
        }
    }

    /// Records the outcome of a delivery attempt at `now`: delivered, the
    /// condition counts as sent; failed, it is tried again after
    /// `retry` × 2^(failures − 1) seconds, at most [`MAX_RETRY_SECS`].
    pub fn settle(&mut self, a: &Alert, delivered: bool, now: i64, retry: i64) {
        let Some(i) = self
            .undelivered
            .iter()
            .position(|u| same(&u.alert, a.kind, &a.namespace))
        else {
            return;
        };
        if delivered {
            self.undelivered.remove(i);
            match self
                .sent
                .iter_mut()
                .find(|s| s.kind == a.kind && s.namespace == a.namespace)
            {
                Some(s) => s.at = now,
                None => self.sent.push(Sent {
                    kind: a.kind,
                    namespace: a.namespace.clone(),
                    at: now,
                }),
            }
        } else {
            let u = &mut self.undelivered[i];
            u.attempts = u.attempts.saturating_add(1);
            let wait = retry
                .max(1)
                .saturating_mul(1 << (u.attempts - 1).min(20))
                .min(MAX_RETRY_SECS.max(retry));
            u.next_try = now.saturating_add(wait);
            u.in_flight = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::ScrubFigures;

    const T0: i64 = 1_800_000_000;

    fn rules() -> AlertRules {
        AlertRules {
            stale_after: 26 * 3600,
            quota_warn: 0.9,
            anomaly_factor: 10.0,
            anomaly_min_bytes: 1000,
            anomaly_window: 10,
        }
    }

    fn usage(new: u64, referenced: u64) -> SnapshotUsage {
        SnapshotUsage {
            new_bytes: new,
            referenced_bytes: referenced,
        }
    }

    fn ns(name: &str) -> NamespaceFigures {
        NamespaceFigures {
            namespace: name.into(),
            ..Default::default()
        }
    }

    fn kinds(v: &[Alert]) -> Vec<(AlertKind, &str)> {
        v.iter().map(|a| (a.kind, a.namespace.as_str())).collect()
    }

    #[test]
    fn stale_counts_from_the_last_snapshot_or_the_server_start() {
        let fresh = NamespaceFigures {
            last_snapshot: Some(T0 - 3600),
            ..ns("fresh")
        };
        let old = NamespaceFigures {
            last_snapshot: Some(T0 - 27 * 3600),
            ..ns("old")
        };
        let never = NamespaceFigures {
            watched_since: T0 - 3600,
            ..ns("never")
        };
        let a = conditions(&[fresh.clone(), old.clone(), never.clone()], &rules(), T0);
        assert_eq!(kinds(&a), vec![(AlertKind::Stale, "old")]);
        let never = NamespaceFigures {
            watched_since: T0 - 30 * 3600,
            ..never
        };
        let a = conditions(&[fresh, old, never], &rules(), T0);
        assert_eq!(
            kinds(&a),
            vec![(AlertKind::Stale, "old"), (AlertKind::Stale, "never")]
        );
        assert!(
            a[1].message.contains("no snapshot at all"),
            "{}",
            a[1].message
        );
        let j = a[0].to_json();
        assert_eq!(j["kind"], "stale");
        assert_eq!(j["namespace"], "old");
        assert_eq!(j["age_seconds"], 27 * 3600);
        assert!(j["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_namespace_may_have_its_own_stale_threshold() {
        let weekly = NamespaceFigures {
            last_snapshot: Some(T0 - 3 * 86400),
            stale_after: Some(8 * 86400),
            ..ns("weekly")
        };
        let nightly = NamespaceFigures {
            last_snapshot: Some(T0 - 3 * 86400),
            ..ns("nightly")
        };
        let a = conditions(&[weekly.clone(), nightly], &rules(), T0);
        assert_eq!(kinds(&a), vec![(AlertKind::Stale, "nightly")]);
        let late = NamespaceFigures {
            last_snapshot: Some(T0 - 9 * 86400),
            ..weekly
        };
        let a = conditions(&[late], &rules(), T0);
        assert_eq!(a[0].to_json()["stale_after_seconds"], 8 * 86400);
    }

    #[test]
    fn quota_and_scrub_conditions() {
        let full = NamespaceFigures {
            last_snapshot: Some(T0),
            stored_bytes: 95,
            quota_bytes: Some(100),
            ..ns("full")
        };
        let roomy = NamespaceFigures {
            last_snapshot: Some(T0),
            stored_bytes: 50,
            quota_bytes: Some(100),
            ..ns("roomy")
        };
        let damaged = NamespaceFigures {
            last_snapshot: Some(T0),
            scrub: ScrubFigures {
                last_complete: T0,
                unrepairable_packs: 2,
                unrepairable: vec![
                    ("aa".into(), vec!["s1".into()]),
                    ("bb".into(), vec!["s1".into(), "s2".into()]),
                ],
                ..Default::default()
            },
            ..ns("damaged")
        };
        let a = conditions(&[full, roomy, damaged], &rules(), T0);
        assert_eq!(
            kinds(&a),
            vec![
                (AlertKind::Quota, "full"),
                (AlertKind::ScrubUnrepairable, "damaged")
            ]
        );
        assert_eq!(a[1].to_json()["snapshots"], json!(["s1", "s2"]));
    }

    #[test]
    fn anomaly_needs_history_and_a_floor() {
        let r = rules();
        let usual = vec![usage(100, 10_000); 5];
        assert_eq!(
            judge(&usual[..2], usage(50_000, 60_000), &r),
            None,
            "too little history"
        );
        assert_eq!(
            judge(&usual, usage(900, 10_900), &r),
            None,
            "below the floor"
        );
        let a = judge(&usual, usage(50_000, 60_000), &r).unwrap();
        assert_eq!(a.reason, AnomalyReason::NewBytes);
        assert_eq!(a.usual_new_bytes, 100);
        assert_eq!(
            judge(
                &usual,
                usage(900, 10_900),
                &AlertRules {
                    anomaly_min_bytes: 0,
                    ..r.clone()
                }
            ),
            None
        );
        // the first snapshot (all new) does not make the usual look high
        let mut h = vec![usage(10_000, 10_000)];
        h.extend(vec![usage(100, 10_000); 3]);
        assert!(judge(&h, usage(5_000, 15_000), &r).is_some());
    }

    #[test]
    fn a_collapse_of_deduplication_is_an_anomaly() {
        let r = rules();
        // large daily changes (new bytes vary) but usually 5% of the data
        let usual = vec![
            usage(5_000, 100_000),
            usage(6_000, 100_000),
            usage(4_000, 100_000),
        ];
        let a = judge(&usual, usage(40_000, 60_000), &r).unwrap();
        assert_eq!(a.reason, AnomalyReason::DedupCollapse);
        // a client that always writes mostly new data is its own usual
        let churny = vec![usage(60_000, 100_000); 4];
        assert_eq!(judge(&churny, usage(70_000, 100_000), &r), None);
    }

    /// Reconciles, then delivers whatever is due, successfully.
    fn deliver_due(
        rl: &mut RateLimit,
        scope: impl Fn(AlertKind, &str) -> bool,
        active: Vec<Alert>,
        now: i64,
    ) -> (usize, bool) {
        let changed = rl.reconcile(scope, active, now, 3600);
        let due = rl.take_due(now);
        for u in &due {
            rl.settle(&u.alert, true, now, 60);
        }
        (due.len(), changed)
    }

    #[test]
    fn rate_limit_repeats_only_after_the_window_and_after_a_clear() {
        let mut rl = RateLimit::default();
        let stale = |ns: &str| Alert::new(AlertKind::Stale, ns, T0, "m".into(), json!({}));
        let periodic = |k: AlertKind, _: &str| k.periodic();
        assert_eq!(
            deliver_due(&mut rl, periodic, vec![stale("a")], T0),
            (1, true)
        );
        assert_eq!(
            deliver_due(&mut rl, periodic, vec![stale("a")], T0 + 60),
            (0, false),
            "within repeat_after"
        );
        let (due, _) = deliver_due(&mut rl, periodic, vec![stale("a")], T0 + 3600);
        assert_eq!(due, 1, "repeat_after has passed");
        // cleared, then back: alerts at once
        assert_eq!(deliver_due(&mut rl, periodic, vec![], T0 + 3700), (0, true));
        let (due, _) = deliver_due(&mut rl, periodic, vec![stale("a")], T0 + 3800);
        assert_eq!(due, 1);
        // an anomaly scope leaves periodic entries alone
        let only_anomaly_b = |k: AlertKind, n: &str| k == AlertKind::Anomaly && n == "b";
        assert!(!rl.reconcile(only_anomaly_b, vec![], T0 + 3900, 3600));
        assert_eq!(rl.sent.len(), 1);
        // survives a round trip through its file
        let back: RateLimit = serde_json::from_slice(&serde_json::to_vec(&rl).unwrap()).unwrap();
        assert_eq!(back, rl);
    }

    #[test]
    fn an_alert_counts_as_sent_only_once_delivered() {
        let mut rl = RateLimit::default();
        let stale = |ns: &str| Alert::new(AlertKind::Stale, ns, T0, "m".into(), json!({}));
        let periodic = |k: AlertKind, _: &str| k.periodic();
        assert!(rl.reconcile(periodic, vec![stale("a")], T0, 3600));
        let due = rl.take_due(T0);
        assert_eq!(due.len(), 1);
        // in flight: neither due again nor queued twice
        assert!(!rl.reconcile(periodic, vec![stale("a")], T0 + 1, 3600));
        assert!(rl.take_due(T0 + 1).is_empty());
        // the delivery failed: nothing sent, tried again after 60 s, then 120 s
        rl.settle(&due[0].alert, false, T0 + 2, 60);
        assert!(rl.sent.is_empty());
        assert!(rl.take_due(T0 + 61).is_empty());
        let due = rl.take_due(T0 + 62);
        assert_eq!(due.len(), 1);
        rl.settle(&due[0].alert, false, T0 + 62, 60);
        assert!(rl.take_due(T0 + 181).is_empty());
        // a full queue: put back, due at the next occasion, still not sent
        let due = rl.take_due(T0 + 182);
        rl.put_back(&due[0].alert);
        assert!(rl.sent.is_empty());
        // kept across a restart, due at once
        let mut back: RateLimit =
            serde_json::from_slice(&serde_json::to_vec(&rl).unwrap()).unwrap();
        assert_eq!(back.undelivered[0].attempts, 2);
        let due = back.take_due(T0 + 183);
        assert_eq!(due.len(), 1);
        back.settle(&due[0].alert, true, T0 + 183, 60);
        assert_eq!((back.sent.len(), back.undelivered.len()), (1, 0));
        // a periodic alert whose condition cleared is not delivered late;
        // an anomaly is
        let anomaly = Alert::new(AlertKind::Anomaly, "a", T0, "m".into(), json!({}));
        let mut rl = RateLimit::default();
        rl.reconcile(periodic, vec![stale("a")], T0, 3600);
        rl.reconcile(|k, _| k == AlertKind::Anomaly, vec![anomaly], T0, 3600);
        rl.reconcile(periodic, vec![], T0 + 1, 3600);
        rl.reconcile(|k, _| k == AlertKind::Anomaly, vec![], T0 + 1, 3600);
        let kinds: Vec<AlertKind> = rl.take_due(T0 + 1).iter().map(|u| u.alert.kind).collect();
        assert_eq!(kinds, vec![AlertKind::Anomaly]);
    }
}
