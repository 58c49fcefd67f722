//! The server's background jobs, on its own schedules: scrub, the
//! retention sweep and collection, and the copies a replica pulls from its
//! primaries; and the operator's `prune --config`, the same sweep run by
//! hand. Each runs on a blocking thread and logs what it found.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tracing::{debug, error, info, warn};

use super::config::ServerConfig;
use super::server::State;
use crate::error::Result;

/// Starts the scheduled jobs of a serving `state`.
pub(super) fn start(state: &Arc<State>) {
    // Scrub on the server's own schedule, kept across restarts (see
    // `net::schedule`); the interval is the one in force at each look.
    let scrubber = state.clone();
    tokio::spawn(async move {
        use super::schedule;
        let data = scrubber.data.clone();
        let clock = crate::store::system_clock();
        let now = move || clock();
        if schedule::read_last(&data).is_none() {
            if let Err(e) = schedule::write_last(&data, now()) {
                warn!("the scrub schedule is not recorded, a restart starts it over: {e}");
            }
        }
        loop {
            let every = scrubber.live().scrub_every.as_secs() as i64;
            let due = schedule::next_due(schedule::read_last(&data), now(), every);
            if now() < due {
                tokio::time::sleep(schedule::nap(due, now())).await;
                continue;
            }
            if let Err(e) = schedule::write_last(&data, now()) {
                warn!("the scrub schedule is not recorded, a restart starts it over: {e}");
            }
            let s = scrubber.clone();
            let _ = tokio::task::spawn_blocking(move || s.scrub_all()).await;
        }
    });
    // The retention sweep and collection, on the server's own schedule:
    // at the start, then every interval (the one in force after a reload).
    let sweeper = state.clone();
    tokio::spawn(async move {
        loop {
            let s = sweeper.clone();
            let _ = tokio::task::spawn_blocking(move || s.prune_all()).await;
            tokio::time::sleep(sweeper.live().prune_every).await;
        }
    });
    // Copies from primaries, each namespace at its own interval (a
    // reload's entries are picked up within a minute), each on its own:
    // a long or stalled copy from one primary holds up no other.
    let replicator = state.clone();
    tokio::spawn(async move {
        let mut last: HashMap<String, std::time::Instant> = HashMap::new();
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        loop {
            let live = replicator.live();
            let mut nap = std::time::Duration::from_secs(60);
            for r in &live.replications {
                // unwrap: the lock is never held across a panic
                if running.lock().unwrap().contains(&r.namespace) {
                    continue;
                }
                let due = last.get(&r.namespace).map(|t| *t + r.every);
                let now = std::time::Instant::now();
                if let Some(due) = due.filter(|d| *d > now) {
                    nap = nap.min(due - now);
                    continue;
                }
                last.insert(r.namespace.clone(), now);
                nap = nap.min(r.every);
                running.lock().unwrap().insert(r.namespace.clone());
                let done = Running(running.clone(), r.namespace.clone());
                let (s, r) = (replicator.clone(), r.clone());
                tokio::task::spawn_blocking(move || {
                    let _done = done;
                    s.replicate(&r);
                });
            }
            tokio::time::sleep(nap).await;
        }
    });
}

/// One round of the leases of a server on an object store: takes or
/// renews each, logs the namespaces another server holds, and rebuilds
/// from the bucket those taken over before their clients are let in.
pub(super) fn renew_leases(state: &State, cfg: &ServerConfig) {
    let Some(leases) = &state.leases else { return };
    let clients = match cfg.namespaces() {
        Ok(c) => c,
        Err(e) => return error!("leases not renewed: {e}"),
    };
    let names: Vec<String> = clients.iter().map(|c| c.namespace.clone()).collect();
    let (refused, taken) = match leases.renew(&names) {
        Ok(x) => x,
        Err(e) => return error!("leases not renewed: {e}"),
    };
    for ns in refused {
        warn!(namespace = %ns, "not served: {}", leases.refusal(&ns).unwrap_or_default());
    }
    for ns in taken {
        let Some(c) = clients.iter().find(|c| c.namespace == ns) else {
            continue;
        };
        // unwrap: the lock is never held across a panic
        state.stores.lock().unwrap().remove(&ns);
        let rebuilt = cfg.namespace_store(c).and_then(|s| match s.bucket() {
            Some(b) => b.rebuild(s.root()),
            None => Ok(Default::default()),
        });
        match rebuilt {
            Ok(r) => {
                info!(namespace = %ns, objects = r.objects, bytes = r.bytes, present = r.present, "lease taken or held on from before this start, copy rebuilt from the bucket");
                leases.ready(&ns);
            }
            Err(e) => {
                error!(namespace = %ns, "lease taken but the copy was not rebuilt, not served: {e}")
            }
        }
    }
}

/// Renews the leases every quarter of their length, for good.
pub(super) fn hold_leases(state: Arc<State>, cfg: ServerConfig) {
    let Some(period) = state.leases.as_ref().map(|l| l.period()) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let (s, c) = (state.clone(), cfg.clone());
            let _ = tokio::task::spawn_blocking(move || renew_leases(&s, &c)).await;
        }
    });
}

/// A namespace's copy in progress, until dropped (its end, or a panic).
struct Running(Arc<Mutex<HashSet<String>>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl State {
    /// Scrubs every namespace and logs each finding.
    fn scrub_all(&self) {
        let live = self.live();
        for c in &live.namespaces {
            let opts = crate::scrub::ScrubOptions {
                rate: Some(100_000_000),
                restart: false,
            };
            match self
                .store(c)
                .and_then(|s| crate::scrub::scrub(&s, s.parity(), &opts))
            {
                Ok(r) => {
                    info!(
                        namespace = %c.namespace,
                        blocks_checked = r.blocks_checked,
                        damaged_blocks = r.damaged_blocks,
                        repaired_blocks = r.repaired_blocks,
                        unrepairable_packs = r.unrepairable.len(),
                        "scrub done"
                    );
                    for u in r.unrepairable {
                        let snapshots: Vec<String> =
                            u.snapshots.iter().map(|s| s.to_hex()).collect();
                        error!(
                            namespace = %c.namespace,
                            pack = %u.pack,
                            snapshots = %snapshots.join(","),
                            "scrub: pack unrepairable: {}",
                            u.reason
                        );
                    }
                }
                Err(e) => error!(namespace = %c.namespace, "scrub failed: {e}"),
            }
        }
    }

    /// Copies one replicated namespace from its primary, and logs how it went.
    fn replicate(&self, r: &super::replica::Replication) {
        let ns = &r.namespace;
        let live = self.live();
        let Some(c) = live.namespaces.iter().find(|c| c.namespace == *ns) else {
            return;
        };
        if self.refusal(ns).is_some() {
            return;
        }
        match self.store(c).and_then(|s| super::replica::run(&s, r)) {
            Ok(rep) => {
                info!(
                    namespace = %ns,
                    snapshots_copied = rep.snapshots_copied,
                    packs_copied = rep.packs_copied,
                    bytes = rep.bytes_copied,
                    keys_copied = rep.keys_copied,
                    locks_extended = rep.locks_extended,
                    "replication done"
                );
                for f in rep.keys_refused {
                    error!(namespace = %ns, key = %f.snapshot, "replication: key file not copied: {}", f.reason);
                }
                for f in rep.refused {
                    error!(namespace = %ns, snapshot = %f.snapshot, "replication: snapshot not copied: {}", f.reason);
                }
            }
            Err(e) => error!(namespace = %ns, "replication failed: {e}"),
        }
    }

    /// Runs the retention sweep and collection in every namespace.
    fn prune_all(&self) {
        let live = self.live();
        for c in &live.namespaces {
            // A namespace not served is left as it is, as `prune --config` does.
            if self.refusal(&c.namespace).is_some() {
                continue;
            }
            let res = self.store(c).and_then(|s| {
                s.prune()
                    .and_then(|r| crate::scrub::protect(&s, s.parity()).map(|_| r))
            });
            self.quotas.forget_stored(&c.namespace);
            match res {
                Ok(r) => match r.refused {
                    None => {
                        if let Some(c2) = &r.policy_changed {
                            info!(namespace = %c.namespace, "retention rules, applied from this sweep: {c2}");
                        }
                        for f in r
                            .snapshots
                            .iter()
                            .filter(|f| f.reason.starts_with("past its expiry"))
                        {
                            debug!(namespace = %c.namespace, snapshot = %f.id, "{}", f.reason);
                        }
                        info!(
                            namespace = %c.namespace,
                            snapshots_expired = r.snapshots_removed.len(),
                            packs_collected = r.packs_removed,
                            bytes = r.bytes_freed,
                            tmp_removed = r.tmp_removed,
                            "prune done"
                        )
                    }
                    // A jump of the clock is the operator's to judge: loud.
                    Some(why)
                        if crate::clock_guard::is_frozen(
                            &self.data.join("namespaces").join(&c.namespace),
                        ) =>
                    {
                        error!(namespace = %c.namespace, "prune deleted nothing, the clock cannot be trusted: {why}")
                    }
                    Some(why) if r.unreadable.is_empty() => {
                        warn!(namespace = %c.namespace, "prune deleted nothing: {why}")
                    }
                    Some(why) => error!(
                        namespace = %c.namespace,
                        snapshots_expired = r.snapshots_removed.len(),
                        "prune collected no pack: {why}"
                    ),
                },
                Err(e) => error!(namespace = %c.namespace, "prune failed: {e}"),
            }
        }
    }
}

/// `coffer prune --config`: the sweep and collection of every namespace, as
/// the server's operator, without any key.
/// The sweep of every namespace of a server config, as `coffer prune
/// --config` runs it (`dry`: deciding, deleting nothing).
pub fn prune_config(
    cfg: &ServerConfig,
    dry: bool,
) -> Result<Vec<(String, crate::store::PruneReport)>> {
    let namespaces = cfg.namespaces()?;
    // A namespace older than the server saw is left alone (see rollback).
    let names: Vec<String> = namespaces.iter().map(|c| c.namespace.clone()).collect();
    let verdict = super::rollback::verify(&cfg.data, &names, &[], "")?;
    for (ns, e) in &verdict.unchecked {
        warn!(namespace = %ns, "commit counter not checked: {e}");
    }
    let mut out = Vec::new();
    for c in namespaces {
        let rep = match verdict.refused.iter().find(|r| r.namespace == c.namespace) {
            Some(r) => crate::store::PruneReport {
                refused: Some(format!("nothing deleted: {r}")),
                ..Default::default()
            },
            None if dry => cfg.namespace_store(&c)?.prune_dry_run()?,
            None => cfg.namespace_store(&c)?.prune()?,
        };
        out.push((c.namespace, rep));
    }
    Ok(out)
}
