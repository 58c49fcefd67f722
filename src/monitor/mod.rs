//! Monitoring as pure decisions: the figures a server knows about each
//! namespace, how they are shown to Prometheus ([`metrics`]) and which of
//! them call for an alert ([`alert`]). No files, sockets or clock here: the
//! server's watcher (`net::watch`) reads the figures and passes in the time.

pub mod alert;
pub mod metrics;

use crate::retention::SnapshotUsage;
use crate::scrub::ScrubState;

/// What the server knows about one namespace, without any key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceFigures {
    /// The namespace.
    pub namespace: String,
    /// Snapshots it holds.
    pub snapshots: u64,
    /// When its latest snapshot was received (server clock), if any.
    pub last_snapshot: Option<i64>,
    /// What the latest snapshot occupied, when its stamp records it.
    pub last_usage: Option<SnapshotUsage>,
    /// Packs it holds.
    pub packs: u64,
    /// Bytes of those packs (parity not included).
    pub stored_bytes: u64,
    /// Its quota, if it has one.
    pub quota_bytes: Option<u64>,
    /// Its own stale threshold in seconds, if it has one.
    pub stale_after: Option<i64>,
    /// Snapshot commits refused or failed since the server started.
    pub failed_commits: u64,
    /// Pack uploads refused or failed since the server started.
    pub failed_uploads: u64,
    /// Collections of its figures that failed since the server started
    /// (the figures shown are then those of the last success, if any).
    pub collect_errors: u64,
    /// Its scrub state.
    pub scrub: ScrubFigures,
    /// Why its deletion is frozen after a jump of the clock, if it is
    /// (see `clock_guard`).
    pub clock_frozen: Option<String>,
    /// Since when the server has watched it (its first start with the
    /// namespace configured): a namespace without snapshots is stale from then.
    pub watched_since: i64,
    /// How stale it is as of the collection (shown in the metrics).
    pub staleness: Option<alert::Staleness>,
    /// For a namespace this server copies from a primary: how its copy
    /// runs went, and the lag the alert allows.
    pub replication: Option<ReplicationFigures>,
    /// On a primary: the replicas listed for this namespace, and when each
    /// last read it.
    pub replicas: Vec<ReplicaPull>,
}

/// A replica of a namespace, as its primary sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaPull {
    /// The replica's certificate fingerprint (hex).
    pub replica: String,
    /// When it last listed the namespace's snapshots (what each copy run
    /// does first), by the primary's clock; `None`: never since listed.
    pub last_pull: Option<i64>,
    /// Seconds without a pull past which `replication_lag` fires here.
    pub lag_alert_after: i64,
}

/// What a replica records of its copy runs of one namespace
/// (`replication.json` in the namespace's directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ReplicationStatus {
    /// The last run that finished (seconds since the epoch).
    pub last_success: Option<i64>,
    /// The last run, finished or not.
    pub last_attempt: Option<i64>,
    /// Why the last run failed, if it did.
    pub last_error: Option<String>,
    /// Runs that failed since the last success.
    pub failures: u64,
    /// Snapshots of the primary the last finished run could not copy.
    pub lag_snapshots: u64,
    /// The oldest of those, by the primary's stamp.
    pub oldest_missing: Option<i64>,
    /// Bytes of packs copied, all runs together.
    pub bytes_copied: u64,
    /// Snapshots copied, all runs together.
    pub snapshots_copied: u64,
}

impl ReplicationStatus {
    /// Records a run that finished at `now`.
    pub fn succeeded(
        &mut self,
        now: i64,
        lag_snapshots: u64,
        oldest_missing: Option<i64>,
        bytes: u64,
        snapshots: u64,
    ) {
        self.last_success = Some(now);
        self.last_attempt = Some(now);
        self.last_error = None;
        self.failures = 0;
        self.lag_snapshots = lag_snapshots;
        self.oldest_missing = oldest_missing;
        self.bytes_copied += bytes;
        self.snapshots_copied += snapshots;
    }

    /// Records a run that failed at `now`.
    pub fn failed(&mut self, now: i64, why: String) {
        self.last_attempt = Some(now);
        self.last_error = Some(why);
        self.failures += 1;
    }

    /// Seconds the copy is behind at `now`: since the oldest primary
    /// snapshot it lacks; when it lacks none, since its last finished run
    /// (what the primary took since then is unknown here, so a replica
    /// that cannot copy falls behind as time passes); `since` (when the
    /// server began watching) before any run finished.
    pub fn lag(&self, since: i64, now: i64) -> i64 {
        let from = self.oldest_missing.or(self.last_success).unwrap_or(since);
        (now - from).max(0)
    }
}

/// A replicated namespace's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicationFigures {
    /// As the copy runs recorded it.
    pub status: ReplicationStatus,
    /// The lag, in seconds, past which `replication_lag` fires.
    pub lag_alert_after: i64,
    /// The lag in seconds as of the collection (see [`ReplicationStatus::lag`]).
    pub lag: i64,
}

/// A namespace's scrub, as its `scrub.json` records it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrubFigures {
    /// When the last pass completed (0: never).
    pub last_complete: i64,
    /// Share of the current pass done (1 when none is under way).
    pub progress: f64,
    /// Blocks the last completed pass rebuilt.
    pub repaired_blocks: u64,
    /// Blocks the last completed pass could not rebuild.
    pub unrepairable_blocks: u64,
    /// Packs the last completed pass could not repair.
    pub unrepairable_packs: u64,
    /// Some of those packs by name (hex), with the snapshots they touch.
    pub unrepairable: Vec<(String, Vec<String>)>,
}

impl ScrubFigures {
    /// The figures of a scrub state.
    pub fn of(st: &ScrubState) -> ScrubFigures {
        let last = st.last.clone().unwrap_or_default();
        ScrubFigures {
            last_complete: st.last_complete,
            progress: st.progress(),
            repaired_blocks: last.repaired_blocks,
            unrepairable_blocks: last.unrepairable_blocks,
            unrepairable_packs: last.unrepairable_packs,
            unrepairable: last
                .unrepairable
                .iter()
                .map(|u| {
                    (
                        u.pack.to_hex(),
                        u.snapshots.iter().map(|s| s.to_hex()).collect(),
                    )
                })
                .collect(),
        }
    }
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerFigures {
    /// Every configured namespace, sorted by name.
    pub namespaces: Vec<NamespaceFigures>,
    /// Bytes available to the server on the data directory's file system.
    pub disk_free_bytes: Option<u64>,
    /// Size of that file system.
    pub disk_size_bytes: Option<u64>,
    /// When the server started (seconds since the epoch).
    pub started: i64,
    /// When these figures were collected.
    pub collected: i64,
    /// Alerts delivered since the server started, per kind.
    pub alerts: Vec<(alert::AlertKind, u64)>,
    /// Failed attempts to deliver an alert since the server started, per kind.
    pub alert_delivery_failures: Vec<(alert::AlertKind, u64)>,
    /// Alert evaluations run since the server started.
    pub alert_checks: u64,
}
