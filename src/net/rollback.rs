//! The server's memory of each namespace's commit counter
//! ([`crate::commits`]): the highest it saw, kept outside the namespace in
//! `DATA/state/<namespace>.commits`, raised at every commit the server
//! makes and whenever the server or an operator's `scrub`/`prune --config`
//! looks at the namespace. A namespace whose counter is below it was put
//! back from an older copy of itself (a disk restore, or someone with
//! access to the data directory): the snapshots committed since are gone,
//! and every snapshot left still opens, so nothing else would notice.
//! `coffer serve` serves every other namespace and refuses this one (its
//! clients' Hello is denied, saying why) until the operator accepts it with
//! `--accept-rollback NAMESPACE`, which takes the counter as it is and logs
//! it in the namespace's `operator.log`.
//!
//! A data directory replaced whole (this state with it) is beyond what the
//! server can see; clients notice that from their own memory of the
//! snapshots they saw ([`crate::repo::seen`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, IoContext, Result};

/// The directory under the data directory that holds the marks.
pub const DIR: &str = "state";

/// Orders this process's updates of a mark (other processes replace it
/// atomically too, so a race can only leave a lower mark).
static UPDATES: Mutex<()> = Mutex::new(());

/// A namespace whose commit counter is below the highest the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The namespace.
    pub namespace: String,
    /// The highest counter seen before.
    pub seen: u64,
    /// Its counter now.
    pub now: u64,
}

impl fmt::Display for RolledBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = &self.namespace;
        write!(
            f,
            "namespace {ns}: its commit counter went back from {} to {}: its directory was put back \
             from an older copy of itself, and the snapshots committed since are gone. If that is \
             intended, start the server once with `coffer serve --config FILE --accept-rollback {ns}`",
            self.seen, self.now
        )
    }
}

impl RolledBack {
    /// The answer to a Hello for the namespace: what happened, and what
    /// the server's operator can do.
    pub fn refusal(&self) -> String {
        format!(
            "namespace {ns} is not served: its commit counter went back from {} to {} (its \
             directory on the server was put back from an older copy of itself); the server's \
             operator accepts that with `coffer serve --config FILE --accept-rollback {ns}`",
            self.seen,
            self.now,
            ns = self.namespace
        )
    }
}

fn namespace_dir(data: &Path, ns: &str) -> PathBuf {
    data.join("namespaces").join(ns)
}

fn mark_path(data: &Path, ns: &str) -> PathBuf {
    data.join(DIR).join(format!("{ns}.commits"))
}

/// The highest counter seen of `ns` (0: none yet).
pub fn mark(data: &Path, ns: &str) -> Result<u64> {
    crate::commits::read_file(&mark_path(data, ns))
}

fn write_mark(data: &Path, ns: &str, n: u64) -> Result<()> {
    let dir = data.join(DIR);
    std::fs::create_dir_all(&dir).at(&dir)?;
    crate::store::replace_file(&dir, &mark_path(data, ns), n.to_string().as_bytes())
}

/// Compares the counter of `ns` with the mark and raises the mark to it;
/// `Some` (the mark unchanged) when the counter went back.
pub fn note(data: &Path, ns: &str) -> Result<Option<RolledBack>> {
    // unwrap: the lock is never held across a panic
    let _g = UPDATES.lock().unwrap();
    let now = crate::commits::read(&namespace_dir(data, ns))?;
    let seen = mark(data, ns)?;
    if now < seen {
        return Ok(Some(RolledBack {
            namespace: ns.to_string(),
            seen,
            now,
        }));
    }
    if now > seen {
        write_mark(data, ns, now)?;
    }
    Ok(None)
}

/// After a commit by the server: raises the mark; a counter below it (the
/// directory replaced while the server ran) is logged, never fails the
/// commit.
pub fn committed(data: &Path, ns: &str) {
    match note(data, ns) {
        Ok(None) => {}
        Ok(Some(r)) => tracing::error!(namespace = %ns, "{r}"),
        Err(e) => tracing::error!(namespace = %ns, "commit counter not recorded: {e}"),
    }
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Namespaces whose counter went back: not to be served (the others are).
    pub refused: Vec<RolledBack>,
    /// Namespaces whose counter went back, accepted by the operator.
    pub accepted: Vec<RolledBack>,
    /// Namespaces whose counter or mark could not be read or written (a
    /// damaged counter file, a mark the server's user cannot replace):
    /// served, with a warning, since one bad file must not stop the others.
    pub unchecked: Vec<(String, Error)>,
}

/// Notes every namespace of `namespaces`; those in `accept` whose counter
/// went back get their mark set to it (logged in their `operator.log` by
/// `by`). A name in `accept` that is not a namespace is an error.
pub fn verify(data: &Path, namespaces: &[String], accept: &[String], by: &str) -> Result<Verdict> {
    if let Some(a) = accept.iter().find(|a| !namespaces.contains(a)) {
        return Err(Error::NotFound(format!(
            "namespace {a} (--accept-rollback names a namespace of the config)"
        )));
    }
    let mut v = Verdict::default();
    for ns in namespaces {
        let r = match note(data, ns) {
            Ok(None) => continue,
            Ok(Some(r)) => r,
            Err(e) => {
                v.unchecked.push((ns.clone(), e));
                continue;
            }
        };
        if !accept.contains(ns) {
            v.refused.push(r);
            continue;
        }
        log_accept(data, &r, by)?;
        write_mark(data, ns, r.now)?;
        v.accepted.push(r);
    }
    Ok(v)
}

/// Appends the acceptance to the namespace's `operator.log`, fsynced.
fn log_accept(data: &Path, r: &RolledBack, by: &str) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let entry = serde_json::json!({
        "time": crate::retention::fmt_time(now), "action": "accept-rollback",
        "namespace": r.namespace, "by": by, "commits_seen": r.seen, "commits_now": r.now,
    });
    crate::store::append_operator_log(&namespace_dir(data, &r.namespace), &entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(data: &Path, ns: &str, n: u64) {
        let d = namespace_dir(data, ns);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(crate::commits::FILE), n.to_string()).unwrap();
    }

    #[test]
    fn a_counter_going_back_is_refused_until_accepted() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path();
        let ns = vec!["a".to_string(), "b".to_string()];
        set(data, "a", 3);
        set(data, "b", 1);
        let v = verify(data, &ns, &[], "op").unwrap();
        assert!(v.refused.is_empty() && v.accepted.is_empty() && v.unchecked.is_empty());
        assert_eq!(mark(data, "a").unwrap(), 3);
        set(data, "a", 2);
        set(data, "b", 5);
        let refused = verify(data, &ns, &[], "op").unwrap().refused;
        let back = RolledBack {
            namespace: "a".into(),
            seen: 3,
            now: 2,
        };
        assert_eq!(refused, vec![back.clone()]);
        assert_eq!(mark(data, "b").unwrap(), 5, "the others are noted");
        assert!(verify(data, &ns, &["c".into()], "op").is_err());
        let v = verify(data, &ns, &["a".into()], "op").unwrap();
        assert_eq!((v.refused, v.accepted), (vec![], vec![back]));
        assert!(verify(data, &ns, &[], "op").unwrap().refused.is_empty());
        // A damaged counter is named, and stops nothing else.
        std::fs::write(namespace_dir(data, "b").join(crate::commits::FILE), "x").unwrap();
        set(data, "a", 1);
        let v = verify(data, &ns, &[], "op").unwrap();
        assert_eq!(v.unchecked.len(), 1);
        assert_eq!(v.unchecked[0].0, "b");
        assert_eq!(v.refused.len(), 1);
        let log = std::fs::read_to_string(namespace_dir(data, "a").join("operator.log")).unwrap();
        assert!(log.contains("accept-rollback"), "{log}");
    }
}
