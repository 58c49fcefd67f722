//! Rereading a running server's config (SIGHUP, `systemctl reload`): the
//! clients, their namespaces and rules, the limits and the schedules change
//! without a restart and without dropping the connections of clients the
//! change leaves alone. A config that does not load, or that moves the data
//! directory, is refused whole and the running one stays; the caller logs
//! why. The listener, `[metrics]` and `[alerts]` stay as they were started
//! (said in the log when the new config differs).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::admission::Admission;
use super::config::{Client, ServerConfig};
use super::server::State;
use super::Fingerprint;
use crate::error::Result;

/// The part of the config a reload replaces.
pub struct Live {
    /// Who may connect, by certificate, and to which namespace.
    pub clients: HashMap<Fingerprint, Client>,
    /// Replica servers, by certificate, and the namespaces each may read.
    pub replicas: HashMap<Fingerprint, Vec<String>>,
    /// One entry per namespace served or replicated (see
    /// [`ServerConfig::namespaces`]): what scrub, prune and replicas see.
    pub namespaces: Vec<Client>,
    /// The namespaces this server copies from primaries.
    pub replications: Vec<super::replica::Replication>,
    /// Connections and memory per certificate and overall. Kept across a
    /// reload that leaves `[limits]` as it was; otherwise new connections
    /// are admitted under the new one and open ones keep theirs.
    pub admission: Arc<Admission>,
    /// How often every namespace is scrubbed.
    pub scrub_every: Duration,
    /// How often the retention sweep runs.
    pub prune_every: Duration,
}

impl Live {
    /// From a checked config.
    pub fn new(cfg: &ServerConfig) -> Result<Live> {
        Ok(Live {
            clients: cfg
                .validated_clients()?
                .into_iter()
                .map(|c| (c.fingerprint, c))
                .collect(),
            replicas: cfg
                .validated_replicas()?
                .into_iter()
                .map(|r| (r.fingerprint, r.namespaces))
                .collect(),
            namespaces: cfg.namespaces()?,
            replications: cfg.validated_replications()?,
            admission: Admission::new(cfg.limits()?),
            scrub_every: Duration::from_secs(cfg.scrub_interval_hours as u64 * 3600),
            prune_every: cfg.prune_every()?,
        })
    }
}

impl Live {
    /// Whether a certificate may connect at all.
    pub fn knows(&self, fp: &Fingerprint) -> bool {
        self.clients.contains_key(fp) || self.replicas.contains_key(fp)
    }

    /// What `fp` may do in namespace `ns`, if anything: a client its own
    /// namespace; a replica, read-only, any namespace it is listed for,
    /// under that namespace's rules.
    pub fn grant(&self, fp: &Fingerprint, ns: &str) -> Option<Client> {
        if let Some(c) = self.clients.get(fp) {
            return (c.namespace == ns).then(|| c.clone());
        }
        if !self.replicas.get(fp)?.iter().any(|n| n == ns) {
            return None;
        }
        let owner = self.namespaces.iter().find(|c| c.namespace == ns)?;
        Some(Client {
            fingerprint: *fp,
            allow_remove_keys: false,
            read_only: true,
            ..owner.clone()
        })
    }
}

/// Whether a connection's certificate, and the namespace it was granted
/// (`None` before its Hello), are still in the config with the same
/// rights. A removed client's open connection is closed at its next request.
pub(super) fn still_served(state: &State, fp: &Fingerprint, client: Option<&Client>) -> bool {
    let live = state.live();
    match client {
        None => live.knows(fp),
        Some(c) => live
            .grant(fp, &c.namespace)
            .is_some_and(|now| now.read_only == c.read_only),
    }
}

/// Applies `new` in place of `old`; returns it when it is in force, `None`
/// (logged) when it was refused and `old` stays.
pub(super) fn apply(
    state: &Arc<State>,
    ep: &quinn::Endpoint,
    old: &ServerConfig,
    mut new: ServerConfig,
) -> Option<ServerConfig> {
    match try_apply(state, ep, old, &new) {
        Ok(()) => {
            // the same store: its opened backend goes on serving
            new.opened = old.opened.clone();
            Some(new)
        }
        Err(e) => {
            error!("config reload refused, the running config stays: {e}");
            None
        }
    }
}

fn try_apply(
    state: &Arc<State>,
    ep: &quinn::Endpoint,
    old: &ServerConfig,
    new: &ServerConfig,
) -> std::result::Result<(), String> {
    if new.data != old.data {
        return Err(format!(
            "`data` changed from {} to {}: a running server does not move its data, restart it",
            old.data.display(),
            new.data.display()
        ));
    }
    if format!("{:?}", new.storage) != format!("{:?}", old.storage) {
        return Err(
            "`[storage]` changed: a running server does not move its namespaces to another store, restart it"
                .into(),
        );
    }
    let mut live = Live::new(new).map_err(|e| e.to_string())?;
    let quic = super::server::quic_config(new).map_err(|e| e.to_string())?;
    // A namespace the old config did not serve is checked for a rollback
    // as at a start: one put back from an older copy is not served.
    let before = names(old);
    let added: Vec<String> = names(new)
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    let verdict = super::rollback::verify(&new.data, &added, &[], "").map_err(|e| e.to_string())?;
    let current = state.live();
    if live.admission.limits() == current.admission.limits() {
        live.admission = current.admission.clone();
    }
    let (gone, came) = diff(&current.clients, &live.clients);
    // New handshakes pin the new clients from here on.
    ep.set_server_config(Some(quic));
    {
        let mut refused = state.refused.write().unwrap_or_else(|p| p.into_inner());
        for r in &verdict.refused {
            error!(namespace = %r.namespace, "not served, its clients are refused: {r}");
            refused.insert(r.namespace.clone(), r.refusal());
        }
    }
    *state.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    // Stores are opened again with the new rules; requests in flight keep
    // the one they hold.
    state
        .stores
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    if let Err(e) = state.watch.set_namespaces(new) {
        warn!("metrics keep the old namespaces: {e}");
    }
    info!(
        clients = state.live().clients.len(),
        added = came,
        removed = gone,
        "config reloaded"
    );
    if new.listen != old.listen {
        warn!(
            "`listen` changed to {}: the server keeps listening on {} until it restarts",
            new.listen, old.listen
        );
    }
    if format!("{:?}{:?}", new.metrics, new.alerts) != format!("{:?}{:?}", old.metrics, old.alerts)
    {
        warn!("[metrics] and [alerts] changes take effect when the server restarts");
    }
    Ok(())
}

fn names(cfg: &ServerConfig) -> HashSet<String> {
    cfg.namespaces()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.namespace)
        .collect()
}

/// The certificates removed and added, as short fingerprints.
fn diff(
    old: &HashMap<Fingerprint, Client>,
    new: &HashMap<Fingerprint, Client>,
) -> (String, String) {
    let short = |m: &HashMap<Fingerprint, Client>, other: &HashMap<Fingerprint, Client>| {
        let mut v: Vec<String> = m
            .keys()
            .filter(|k| !other.contains_key(k))
            .map(|k| k.to_string().chars().take(16).collect())
            .collect();
        v.sort();
        v.join(",")
    };
    (short(old, new), short(new, old))
}
