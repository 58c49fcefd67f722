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
