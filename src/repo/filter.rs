//! Which snapshots a command considers: `--host`, `--tag` and `--path`, as
//! restic's filters read, and the `SNAP:subpath` form of a snapshot
//! argument. Pure: it sees decoded records, never a store.

use crate::format::snapshot::SnapshotRecord;

/// A filter over snapshot records; the empty filter takes every snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotFilter {
    /// Any of these hosts (none: any host).
    pub hosts: Vec<String>,
    /// Any of these tag sets; a set is comma-separated and the snapshot
    /// must carry every tag of it (none: any tags).
    pub tags: Vec<String>,
    /// The snapshot's sources must include every one of these paths
    /// (a trailing `/` is ignored).
    pub paths: Vec<String>,
}

impl SnapshotFilter {
    /// Whether it takes every snapshot.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.paths.is_empty()
    }

    /// Whether `r` passes.
    pub fn matches(&self, r: &SnapshotRecord) -> bool {
        let host = self.hosts.is_empty() || self.hosts.contains(&r.host);
        let tags = self.tags.is_empty()
            || self.tags.iter().any(|set| {
                set.split(',')
                    .filter(|t| !t.is_empty())
                    .all(|t| r.tags.iter().any(|x| x == t))
            });
        let paths = self
            .paths
            .iter()
            .all(|p| r.paths.iter().any(|x| trim(x) == trim(p)));
        host && tags && paths
    }

    /// The filter as the command line gave it, for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (flag, vals) in [
            ("--host", &self.hosts),
            ("--tag", &self.tags),
            ("--path", &self.paths),
        ] {
            for v in vals {
                parts.push(format!("{flag} {v}"));
            }
        }
        parts.join(" ")
    }
}

fn trim(p: &str) -> &str {
    match p.trim_end_matches('/') {
        "" if p.starts_with('/') => "/",
        t => t,
    }
}

/// Splits a snapshot argument `SNAP[:SUBPATH]` (ids are hex and `latest`
/// has no colon, so the first colon separates). The subpath is relative to
/// the snapshot's root; an empty one means the root.
pub fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((snap, sub)) => (snap, Some(sub)),
        None => (spec, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::{SnapshotStats, SourceKind};
    use crate::id::BlobId;

    fn rec(host: &str, paths: &[&str], tags: &[&str]) -> SnapshotRecord {
        SnapshotRecord {
            version: 2,
            time_ns: 0,
            host: host.into(),
            user: "u".into(),
            source: SourceKind::Tree,
            paths: paths.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            tree: BlobId([0; 32]),
            stats: SnapshotStats::default(),
            image: None,
        }
    }

    #[test]
    fn filters_read_as_restics() {
        let r = rec("a", &["/etc", "/home"], &["nightly", "web"]);
        assert!(SnapshotFilter::default().matches(&r));
        let f = |h: &[&str], t: &[&str], p: &[&str]| SnapshotFilter {
            hosts: h.iter().map(|s| s.to_string()).collect(),
            tags: t.iter().map(|s| s.to_string()).collect(),
            paths: p.iter().map(|s| s.to_string()).collect(),
        };
        assert!(f(&["b", "a"], &[], &[]).matches(&r));
        assert!(!f(&["b"], &[], &[]).matches(&r));
        assert!(f(&[], &["web,nightly"], &[]).matches(&r));
        assert!(!f(&[], &["web,weekly"], &[]).matches(&r));
        assert!(f(&[], &["weekly", "web"], &[]).matches(&r), "any one set");
        assert!(f(&[], &[], &["/etc/"]).matches(&r));
        assert!(!f(&[], &[], &["/etc", "/var"]).matches(&r));
        assert!(!f(&[], &[], &["/et"]).matches(&r));
        assert_eq!(f(&["a"], &[], &["/etc"]).describe(), "--host a --path /etc");
    }

    #[test]
    fn a_spec_splits_at_its_first_colon() {
        assert_eq!(split_spec("latest"), ("latest", None));
        assert_eq!(split_spec("1a2b:etc/x:y"), ("1a2b", Some("etc/x:y")));
        assert_eq!(split_spec("latest:"), ("latest", Some("")));
    }
}
