//! Pull replication between servers, the server's side of it: the config of
//! both ends and the runs that copy.
//!
//! A *primary* lists replica identities under `[[replica]]`, each with the
//! namespaces it may read; such an identity is served read-only (listings
//! and reads; never an upload, commit, forget, lock, repair or key change).
//! A *replica* is an ordinary server that lists, under `[[replicate]]`, the
//! namespaces it copies, from which primary and with which identity; it
//! connects to the primary as a client and copies what it lacks (see
//! [`crate::replicate`]). The primary holds no credential for the replica:
//! nothing on the primary can reach the offsite copy.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::client::{Remote, RemoteStore, RemoteUrl};
use super::config::{duration, valid_namespace, ServerConfig};
use super::{Fingerprint, Identity};
use crate::error::{Error, Result};
use crate::id::PackId;
use crate::monitor::ReplicationStatus;
use crate::replicate::SyncReport;
use crate::store::LocalStore;

/// `[[replica]]` on a primary: an identity that may read namespaces to copy them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// SHA-256 fingerprint of the replica server's client certificate.
    pub fingerprint: String,
    /// The namespaces it may read.
    pub namespaces: Vec<String>,
    /// The primary's `replication_lag` alert fires when the replica has not
    /// read a namespace's snapshot list for this long (default "3h").
    pub lag_alert_after: Option<String>,
}

/// `[[replicate]]` on a replica: a namespace copied from a primary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateEntry {
    /// The namespace, the same name on both servers.
    pub namespace: String,
    /// The primary's `HOST:PORT`.
    pub primary: String,
    /// The primary's certificate fingerprint, pinned.
    pub primary_fingerprint: String,
    /// The identity this server presents to the primary.
    pub identity: PathBuf,
    /// Most KiB per second read from the primary (default: no limit).
    pub limit_kib: Option<u64>,
    /// How often `serve` copies (default "1h").
    pub interval: Option<String>,
    /// The `replication_lag` alert fires when the copy is this far behind
    /// (default: three intervals).
    pub lag_alert_after: Option<String>,
}

/// A checked `[[replica]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its certificate.
    pub fingerprint: Fingerprint,
    /// What it may read.
    pub namespaces: Vec<String>,
    /// How long it may go without copying before the primary alerts.
    pub lag_alert_after: Duration,
}

/// How long a replica may go without reading a namespace before the
/// primary's `replication_lag` alert, when its entry does not say.
pub const DEFAULT_REPLICA_LAG: Duration = Duration::from_secs(3 * 3600);

/// A checked `[[replicate]]`.
#[derive(Debug, Clone)]
pub struct Replication {
    /// The namespace.
    pub namespace: String,
    /// Where the primary serves it.
    pub url: RemoteUrl,
    /// The primary's certificate.
    pub pin: Fingerprint,
    /// This server's identity towards the primary.
    pub identity: PathBuf,
    /// Bytes per second, when limited.
    pub limit: Option<u64>,
    /// How often `serve` copies.
    pub every: Duration,
    /// How far behind the copy may fall before the `replication_lag` alert.
    pub lag_alert_after: Duration,
}

/// How often `serve` copies a namespace when its entry does not say.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a copy run waits for the primary's handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

impl ServerConfig {
    /// The `[[replica]]` entries, checked: each fingerprint parses, is not
    /// also a client's, and names namespaces this server serves.
    pub fn validated_replicas(&self) -> Result<Vec<Replica>> {
        let clients = self.validated_clients()?;
        let served: HashSet<&str> = clients.iter().map(|c| c.namespace.as_str()).collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in self.replicas.iter().enumerate() {
            let at = |m: String| Error::Denied(format!("replica #{}: {m}", i + 1));
            let fp =
                Fingerprint::parse(&r.fingerprint).map_err(|e| at(format!("fingerprint: {e}")))?;
            if clients.iter().any(|c| c.fingerprint == fp) {
                return Err(at(format!(
                    "fingerprint {fp} is also a client's: a replica identity only reads, give it its own certificate"
                )));
            }
            if !seen.insert(fp) {
                return Err(at(format!("fingerprint {fp} is listed twice")));
            }
            if r.namespaces.is_empty() {
                return Err(at("namespaces is empty".into()));
            }
            for ns in &r.namespaces {
                if !served.contains(ns.as_str()) {
                    return Err(at(format!(
                        "namespace {ns:?} is not a namespace of any [[client]] of this server"
                    )));
                }
            }
            let section = format!("replica #{}", i + 1);
            let lag_alert_after = match &r.lag_alert_after {
                None => DEFAULT_REPLICA_LAG,
                Some(v) => duration(&section, "lag_alert_after", v)?,
            };
            out.push(Replica {
                fingerprint: fp,
                namespaces: r.namespaces.clone(),
                lag_alert_after,
            });
        }
        Ok(out)
    }

    /// The `[[replicate]]` entries, checked.
    pub fn validated_replications(&self) -> Result<Vec<Replication>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in self.replicate.iter().enumerate() {
            let at = |m: String| Error::Denied(format!("replicate #{}: {m}", i + 1));
            if !valid_namespace(&r.namespace) {
                return Err(at(format!(
                    "namespace {:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'",
                    r.namespace
                )));
            }
            if !seen.insert(r.namespace.clone()) {
                return Err(at(format!("namespace {} is replicated twice", r.namespace)));
            }
            let url = RemoteUrl::parse(&format!("quic://{}/{}", r.primary, r.namespace))
                .map_err(|_| at(format!("primary = {:?} is not HOST:PORT", r.primary)))?;
            let pin = Fingerprint::parse(&r.primary_fingerprint)
                .map_err(|e| at(format!("primary_fingerprint: {e}")))?;
            let limit = match r.limit_kib {
                Some(0) => return Err(at("limit_kib must be at least 1".into())),
                Some(k) => Some(k.saturating_mul(1024)),
                None => None,
            };
            // Bounded (1 s to 10 years, `config::duration`): the alert's
            // default is three intervals.
            let section = format!("replicate #{}", i + 1);
            let span = |key: &str, v: &Option<String>| {
                v.as_deref().map(|v| duration(&section, key, v)).transpose()
            };
            let every = span("interval", &r.interval)?.unwrap_or(DEFAULT_INTERVAL);
            let lag_alert_after =
                span("lag_alert_after", &r.lag_alert_after)?.unwrap_or(every.saturating_mul(3));
            out.push(Replication {
                namespace: r.namespace.clone(),
                url,
                pin,
                identity: r.identity.clone(),
                limit,
                every,
                lag_alert_after,
            });
        }
        Ok(out)
    }
}

/// Copies one namespace from its primary into this server's store of it,
/// opened with the namespace's own rules (those of its `[[client]]` here,
/// or the server's): `coffer replicate --config`.
pub fn run_config(cfg: &ServerConfig, r: &Replication) -> Result<SyncReport> {
    let client = cfg
        .namespaces()?
        .into_iter()
        .find(|c| c.namespace == r.namespace)
        .ok_or_else(|| Error::Denied(format!("namespace {} is not configured", r.namespace)))?;
    run(&cfg.namespace_store(&client)?, r)
}

/// Copies one namespace from its primary into `dst`, and records the
/// outcome in `dst`'s `replication.json` for monitoring.
pub fn run(dst: &LocalStore, r: &Replication) -> Result<SyncReport> {
    let res = copy(dst, r);
    let mut status = read_status(dst.root());
    let now = crate::store::system_clock()();
    match &res {
        Ok(rep) => status.succeeded(
            now,
            rep.refused.len() as u64,
            rep.oldest_missing,
            rep.bytes_copied,
            rep.snapshots_copied as u64,
        ),
        Err(e) => status.failed(now, e.to_string()),
    }
    if let Err(e) = write_status(dst.root(), &status) {
        tracing::warn!(namespace = %r.namespace, "replication status not recorded: {e}");
    }
    res
}

/// Connects to the other server (`who`, for the message) as `identity`,
/// pinning `pin`, within [`CONNECT_TIMEOUT`].
fn connect(who: &str, url: &RemoteUrl, identity: &Path, pin: Fingerprint) -> Result<RemoteStore> {
    RemoteStore::connect_within(url, Identity::load(identity)?, pin, CONNECT_TIMEOUT)
        .map_err(|e| Error::Denied(format!("{who} {}:{}: {e}", url.host, url.port)))
}

fn copy(dst: &LocalStore, r: &Replication) -> Result<SyncReport> {
    let mut src = connect("primary", &r.url, &r.identity, r.pin)?;
    if let Some(l) = r.limit {
        src = src.with_download_limit(l);
    }
    let rep = crate::replicate::sync(&Remote(std::sync::Arc::new(src)), dst)?;
    // The copied packs get the replica's own parity now, not at the next
    // sweep: a copy is only as safe as its parity.
    if rep.packs_copied > 0 {
        if let Err(e) = crate::scrub::protect(dst, dst.parity()) {
            tracing::warn!(namespace = %r.namespace, "parity of the copied packs not written yet (the next sweep does it): {e}");
        }
    }
    Ok(rep)
}

/// A namespace's `replication.json`, or an empty status.
pub fn read_status(root: &Path) -> ReplicationStatus {
    std::fs::read(root.join(STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_status(root: &Path, st: &ReplicationStatus) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(st).map_err(|e| Error::Denied(e.to_string()))?;
    crate::store::replace_file(&root.join("tmp"), &root.join(STATUS_FILE), &bytes)
}

/// The status file in a namespace's directory.
pub const STATUS_FILE: &str = "replication.json";

/// Where a primary's operator fetches packs back from: a replica's
/// address, its pinned certificate, and an identity the replica lists as a
/// (read-only) client of the namespace.
#[derive(Debug, Clone)]
pub struct FetchFrom {
    /// The replica's `HOST:PORT`.
    pub replica: String,
    /// The replica's server fingerprint.
    pub pin: Fingerprint,
    /// The identity presented there.
    pub identity: PathBuf,
}

/// Puts packs that a scrub of `dst` found beyond repair (damaged past the
/// parity budget, or lost) back from the replica's copy of namespace `ns`,
/// each checked against its name before it replaces anything. Key-free.
/// Returns, per pack, `Ok` when it is sound again, or why not.
pub fn fetch_back(
    dst: &LocalStore,
    ns: &str,
    from: &FetchFrom,
    packs: &[PackId],
) -> Result<Vec<(PackId, std::result::Result<(), String>)>> {
    if packs.is_empty() {
        return Ok(Vec::new());
    }
    let url = RemoteUrl::parse(&format!("quic://{}/{ns}", from.replica))
        .map_err(|_| Error::Denied(format!("{:?} is not HOST:PORT", from.replica)))?;
    let src = Remote(std::sync::Arc::new(connect(
        "replica",
        &url,
        &from.identity,
        from.pin,
    )?));
    let mut out = Vec::with_capacity(packs.len());
    for id in packs {
        // One copy the replica fails to read (its disk) is this pack's
        // refusal; a replica gone stops here.
        let res = match read_whole(&src, id) {
            Ok(Err(why)) => Err(why),
            Err(e) => Err(format!(
                "the replica could not read it: {}",
                crate::replicate::about_one(&src, e)?
            )),
            Ok(Ok(bytes)) => {
                if PackId::of(&bytes) != *id {
                    Err("the replica's copy does not hash to its name either".to_string())
                } else if crate::scrub::put_back_pack(dst, id, &bytes)? {
                    Ok(())
                } else {
                    Err("written back, but it did not read back intact".to_string())
                }
            }
        };
        out.push((*id, res));
    }
    let back: Vec<PackId> = out
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(p, _)| *p)
        .collect();
    if !back.is_empty() {
        if let Err(e) = crate::scrub::mark_put_back(dst, &back) {
            tracing::warn!(namespace = %ns, "the scrub state still lists the packs put back: {e}");
        }
    }
    Ok(out)
}

/// A pack's bytes as `src` holds them, or why it cannot give them.
fn read_whole(src: &Remote, id: &PackId) -> Result<std::result::Result<Vec<u8>, String>> {
    use crate::store::Store;
    let size = match src.pack_size(id)? {
        None => return Ok(Err("the replica does not hold it either".to_string())),
        Some(size) if size > crate::limits::MAX_PACK_BYTES => {
            return Ok(Err(format!(
                "the replica's copy is {size} bytes, over the limit"
            )))
        }
        Some(size) => size,
    };
    let mut bytes = Vec::with_capacity(size as usize);
    while (bytes.len() as u64) < size {
        let len = (size - bytes.len() as u64).min(4 << 20) as usize;
        bytes.extend_from_slice(&src.read_pack(id, bytes.len() as u64, len)?);
    }
    Ok(Ok(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP1: &str = "0000000000000000000000000000000000000000000000000000000000000001";
    const FP2: &str = "0000000000000000000000000000000000000000000000000000000000000002";

    fn parse(rest: &str) -> Result<ServerConfig> {
        ServerConfig::parse(&format!(
            "data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"{FP1}\"\nnamespace = \"w\"\n{rest}"
        ))
    }

    #[test]
    fn replica_entries_are_checked() {
        let c = parse(&format!(
            "[[replica]]\nfingerprint = \"{FP2}\"\nnamespaces = [\"w\"]\n"
        ))
        .unwrap();
        assert_eq!(c.validated_replicas().unwrap()[0].namespaces, vec!["w"]);
        for (bad, says) in [
            (
                format!("fingerprint = \"{FP1}\"\nnamespaces = [\"w\"]"),
                "also a client's",
            ),
            (
                format!("fingerprint = \"{FP2}\"\nnamespaces = [\"x\"]"),
                "not a namespace",
            ),
            (format!("fingerprint = \"{FP2}\"\nnamespaces = []"), "empty"),
            (
                format!("fingerprint = \"{FP2}\"\nnamespaces = [\"w\"]\nwrite = true"),
                "unknown field",
            ),
        ] {
            let e = parse(&format!("[[replica]]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn replicate_entries_are_checked_and_their_namespaces_kept() {
        let entry = |ns: &str, primary: &str, extra: &str| {
            format!("[[replicate]]\nnamespace = \"{ns}\"\nprimary = \"{primary}\"\nprimary_fingerprint = \"{FP2}\"\nidentity = \"/r\"\n{extra}\n")
        };
        let c = parse(&entry(
            "v",
            "10.0.0.1:7443",
            "limit_kib = 4\ninterval = \"10m\"",
        ))
        .unwrap();
        let r = &c.validated_replications().unwrap()[0];
        assert_eq!((r.limit, r.every.as_secs()), (Some(4096), 600));
        // A replicated namespace no client names is scrubbed and swept too,
        // under the server's rules, and nobody may write it.
        let ns = c.namespaces().unwrap();
        let v = ns.iter().find(|c| c.namespace == "v").unwrap();
        assert!(v.read_only);
        assert_eq!(
            c.validated_replications().unwrap()[0].every,
            Duration::from_secs(600)
        );
        for (bad, says) in [
            (entry("v", "nohost", ""), "HOST:PORT"),
            (entry("../x", "h:1", ""), "namespace"),
            (entry("v", "h:1", "limit_kib = 0"), "limit_kib"),
            (entry("v", "h:1", "interval = \"often\""), "interval"),
            // Bounded: three of these as the alert's default used to overflow.
            (
                entry("v", "h:1", "interval = \"300000000000years\""),
                "at most",
            ),
            (
                format!("{}{}", entry("v", "h:1", ""), entry("v", "h:2", "")),
                "twice",
            ),
        ] {
            let e = parse(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
