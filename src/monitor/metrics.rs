//! The Prometheus text exposition format (version 0.0.4) of the server's
//! figures. Owns metric names, help texts and escaping; never reads a file
//! or a socket. Every metric is documented in `docs/operations.md`.

use std::fmt::Write;

use super::{NamespaceFigures, ServerFigures};

/// The media type of the text this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (reset when the server restarts).
    Counter,
}

/// Builds exposition text: one `# HELP` and `# TYPE` line per family, then
/// its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty text.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        // unwrap (here and below): writing to a String cannot fail
        writeln!(self.out, "# HELP {name} {}", escape_help(help)).expect("write to String");
        writeln!(self.out, "# TYPE {name} {kind}").expect("write to String");
        self
    }

    /// Adds a sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                write!(self.out, "{k}=\"{}\"", escape_label(v)).expect("write to String");
            }
            self.out.push('}');
        }
        writeln!(self.out, " {}", format_value(value)).expect("write to String");
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// Escapes a help text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Integers without a fraction; the special values as Prometheus spells them.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A per-namespace family: its name, type, help and how to read its value.
type NsMetric = (
    &'static str,
    Kind,
    &'static str,
    fn(&NamespaceFigures) -> Option<f64>,
);

const NAMESPACE_METRICS: &[NsMetric] = &[
    (
        "coffer_namespace_snapshots",
        Kind::Gauge,
        "Snapshots the namespace holds.",
        |n| Some(n.snapshots as f64),
    ),
    (
        "coffer_namespace_last_snapshot_timestamp_seconds",
        Kind::Gauge,
        "When the latest snapshot was received, by the server's clock (0: none).",
        |n| Some(n.last_snapshot.unwrap_or(0) as f64),
    ),
    (
        "coffer_namespace_last_snapshot_age_seconds",
        Kind::Gauge,
        "Seconds from the latest snapshot (or, with none, from when the server began watching the namespace) to the collection of these figures.",
        |n| n.staleness.map(|s| s.age as f64),
    ),
    (
        "coffer_namespace_stale_after_seconds",
        Kind::Gauge,
        "The age of the latest snapshot past which the namespace is stale (its own stale_after, else the server's).",
        |n| n.staleness.map(|s| s.after as f64),
    ),
    (
        "coffer_namespace_stale",
        Kind::Gauge,
        "1 when the namespace's latest snapshot is older than its stale threshold (the stale alert's condition), else 0.",
        |n| n.staleness.map(|s| f64::from(u8::from(s.stale()))),
    ),
    (
        "coffer_replication_lag_seconds",
        Kind::Gauge,
        "A replicated namespace: seconds since the oldest primary snapshot the copy lacks, or since its last finished run when it lacks none.",
        |n| n.replication.as_ref().map(|r| r.lag as f64),
    ),
    (
        "coffer_replication_lag_snapshots",
        Kind::Gauge,
        "A replicated namespace: primary snapshots the last finished run could not copy.",
        |n| n.replication.as_ref().map(|r| r.status.lag_snapshots as f64),
    ),
    (
        "coffer_replication_last_success_timestamp_seconds",
        Kind::Gauge,
        "A replicated namespace: when its last copy run finished (0: never).",
        |n| n.replication.as_ref().map(|r| r.status.last_success.unwrap_or(0) as f64),
    ),
    (
        "coffer_replication_failures",
        Kind::Gauge,
        "A replicated namespace: copy runs that failed since the last one that finished.",
        |n| n.replication.as_ref().map(|r| r.status.failures as f64),
    ),
    (
        "coffer_replication_copied_bytes_total",
        Kind::Counter,
        "A replicated namespace: bytes of packs copied from the primary (kept across restarts).",
        |n| n.replication.as_ref().map(|r| r.status.bytes_copied as f64),
    ),
    (
        "coffer_replication_copied_snapshots_total",
        Kind::Counter,
        "A replicated namespace: snapshots copied from the primary (kept across restarts).",
        |n| n.replication.as_ref().map(|r| r.status.snapshots_copied as f64),
    ),
    (
        "coffer_namespace_last_snapshot_new_bytes",
        Kind::Gauge,
        "Bytes of packs the latest snapshot references that were written since the commit before it and are not in the snapshot before it.",
        |n| n.last_usage.map(|u| u.new_bytes as f64),
    ),
    (
        "coffer_namespace_last_snapshot_referenced_bytes",
        Kind::Gauge,
        "Bytes of all packs the latest snapshot references.",
        |n| n.last_usage.map(|u| u.referenced_bytes as f64),
    ),
    (
        "coffer_namespace_stored_bytes",
        Kind::Gauge,
        "Bytes of packs the namespace holds (what its quota counts; parity not included).",
        |n| Some(n.stored_bytes as f64),
    ),
    (
        "coffer_namespace_packs",
        Kind::Gauge,
        "Packs the namespace holds.",
        |n| Some(n.packs as f64),
    ),
    (
        "coffer_namespace_quota_bytes",
        Kind::Gauge,
        "The namespace's quota (only namespaces that have one).",
        |n| n.quota_bytes.map(|q| q as f64),
    ),
    (
        "coffer_namespace_clock_frozen",
        Kind::Gauge,
        "1 while the namespace's deletion is frozen because the clock jumped (until `coffer clock --accept-now`), else 0.",
        |n| Some(f64::from(u8::from(n.clock_frozen.is_some()))),
    ),
    (
        "coffer_namespace_failed_commits_total",
        Kind::Counter,
        "Snapshot commits refused or failed since the server started.",
        |n| Some(n.failed_commits as f64),
    ),
    (
        "coffer_namespace_failed_uploads_total",
        Kind::Counter,
        "Pack uploads refused or failed (quota, size, bad name) since the server started.",
        |n| Some(n.failed_uploads as f64),
    ),
    (
        "coffer_namespace_collect_errors_total",
        Kind::Counter,
        "Collections of the namespace's figures that failed since the server started (its other figures are then those of the last success).",
        |n| Some(n.collect_errors as f64),
    ),
    (
        "coffer_scrub_last_complete_timestamp_seconds",
        Kind::Gauge,
        "When the namespace's last scrub pass completed (0: never).",
        |n| Some(n.scrub.last_complete as f64),
    ),
    (
        "coffer_scrub_progress_ratio",
        Kind::Gauge,
        "Share of the current scrub pass done, 0 to 1 (1 when none is under way).",
        |n| Some(n.scrub.progress),
    ),
    (
        "coffer_scrub_repaired_blocks",
        Kind::Gauge,
        "Blocks the last completed scrub pass rebuilt from parity.",
        |n| Some(n.scrub.repaired_blocks as f64),
    ),
    (
        "coffer_scrub_unrepairable_blocks",
        Kind::Gauge,
        "Blocks the last completed scrub pass could not rebuild.",
        |n| Some(n.scrub.unrepairable_blocks as f64),
    ),
    (
        "coffer_scrub_unrepairable_packs",
        Kind::Gauge,
        "Packs the last completed scrub pass could not repair.",
        |n| Some(n.scrub.unrepairable_packs as f64),
    ),
];

/// The whole scrape.
pub fn render(f: &ServerFigures) -> String {
    let mut e = Exposition::new();
    for (name, kind, help, value) in NAMESPACE_METRICS {
        let samples: Vec<(&str, f64)> = f
            .namespaces
            .iter()
            .filter_map(|n| value(n).map(|v| (n.namespace.as_str(), v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        e.family(name, *kind, help);
        for (ns, v) in samples {
            e.sample(name, &[("namespace", ns)], v);
        }
    }
    let pulls: Vec<(&str, &str, f64)> = f
        .namespaces
        .iter()
        .flat_map(|n| {
            n.replicas.iter().map(|r| {
                (
                    n.namespace.as_str(),
                    r.replica.as_str(),
                    r.last_pull.unwrap_or(0) as f64,
                )
            })
        })
        .collect();
    if !pulls.is_empty() {
        let name = "coffer_replica_last_pull_timestamp_seconds";
        e.family(
            name,
            Kind::Gauge,
            "On a primary: when a replica last listed the namespace's snapshots, which each of its copy runs does first (0: never).",
        );
        for (ns, replica, v) in pulls {
            e.sample(name, &[("namespace", ns), ("replica", replica)], v);
        }
    }
    let per_kind = [
        (
            "coffer_alerts_total",
            "Alerts delivered since the server started (rate-limited repeats not counted).",
            &f.alerts,
        ),
        (
            "coffer_alert_delivery_failures_total",
            "Attempts to deliver an alert that failed (no configured channel succeeded) since the server started; a failed alert is tried again.",
            &f.alert_delivery_failures,
        ),
    ];
    for (name, help, counts) in per_kind {
        e.family(name, Kind::Counter, help);
        for (kind, n) in counts {
            e.sample(name, &[("kind", kind.as_str())], *n as f64);
        }
    }
    let scalars = [
        (
            "coffer_disk_free_bytes",
            Kind::Gauge,
            "Bytes available to the server on the data directory's file system.",
            f.disk_free_bytes.map(|v| v as f64),
        ),
        (
            "coffer_disk_size_bytes",
            Kind::Gauge,
            "Size of the data directory's file system.",
            f.disk_size_bytes.map(|v| v as f64),
        ),
        (
            "coffer_alert_checks_total",
            Kind::Counter,
            "Alert evaluations run since the server started.",
            Some(f.alert_checks as f64),
        ),
        (
            "coffer_server_start_time_seconds",
            Kind::Gauge,
            "When the server started.",
            Some(f.started as f64),
        ),
        (
            "coffer_metrics_collected_timestamp_seconds",
            Kind::Gauge,
            "When the figures of this scrape were collected (they are refreshed in the background).",
            Some(f.collected as f64),
        ),
    ];
    for (name, kind, help, v) in scalars {
        if let Some(v) = v {
            e.family(name, kind, help).sample(name, &[], v);
        }
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::alert::AlertKind;
    use crate::retention::SnapshotUsage;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        let mut e = Exposition::new();
        e.family("m", Kind::Gauge, "help with \\ and\nnewline")
            .sample("m", &[("a", "q\""), ("b", "2")], 1.5);
        assert_eq!(
            e.finish(),
            "# HELP m help with \\\\ and\\nnewline\n# TYPE m gauge\nm{a=\"q\\\"\",b=\"2\"} 1.5\n"
        );
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(1_700_000_000.0), "1700000000");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
    }

    #[test]
    fn a_scrape_has_help_and_type_for_every_family() {
        let f = ServerFigures {
            namespaces: vec![NamespaceFigures {
                namespace: "vps-101".into(),
                snapshots: 2,
                last_snapshot: Some(1_800_000_000),
                last_usage: Some(SnapshotUsage {
                    new_bytes: 10,
                    referenced_bytes: 100,
                }),
                stored_bytes: 100,
                packs: 3,
                staleness: Some(crate::monitor::alert::Staleness {
                    age: 90_000,
                    after: 86_400,
                }),
                ..Default::default()
            }],
            disk_free_bytes: Some(5),
            alerts: vec![(AlertKind::Stale, 1)],
            ..Default::default()
        };
        let text = render(&f);
        assert!(text.contains(
            "coffer_namespace_last_snapshot_timestamp_seconds{namespace=\"vps-101\"} 1800000000\n"
        ));
        assert!(
            text.contains("coffer_namespace_last_snapshot_new_bytes{namespace=\"vps-101\"} 10\n")
        );
        assert!(text.contains("coffer_alerts_total{kind=\"stale\"} 1\n"));
        assert!(text.contains("coffer_namespace_stale{namespace=\"vps-101\"} 1\n"));
        assert!(text
            .contains("coffer_namespace_last_snapshot_age_seconds{namespace=\"vps-101\"} 90000\n"));
        assert!(text.contains("coffer_disk_free_bytes 5\n"));
        // no quota: no sample and no family
        assert!(!text.contains("coffer_namespace_quota_bytes"));
        // every sample's family was announced just before, once
        let mut announced = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(announced.insert(rest.split(' ').next().unwrap().to_string()));
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(announced.contains(name), "{line}");
            }
        }
    }
}
