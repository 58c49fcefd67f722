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
            admission: Admission::new(cfg.limits()?),
            scrub_every: Duration::from_secs(cfg.scrub_interval_hours as u64 * 3600),
            prune_every: cfg.prune_every()?,
        })
    }
}

/// Whether `client`, as it was when its connection was admitted, is still
/// in the config with the same namespace. A removed client's open
/// connection is closed at its next request.
pub(super) fn still_served(state: &State, client: &Client) -> bool {
    state
        .live()
        .clients
        .get(&client.fingerprint)
        .is_some_and(|c| c.namespace == client.namespace)
}

/// Applies `new` in place of `old`; returns it when it is in force, `None`
/// (logged) when it was refused and `old` stays.
pub(super) fn apply(
    state: &Arc<State>,
    ep: &quinn::Endpoint,
    old: &ServerConfig,
    new: ServerConfig,
) -> Option<ServerConfig> {
    match try_apply(state, ep, old, &new) {
        Ok(()) => Some(new),
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
    cfg.clients.iter().map(|c| c.namespace.clone()).collect()
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
