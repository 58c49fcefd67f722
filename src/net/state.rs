//! The server's shared state: the config in force, each namespace's open
//! store (over its bucket on an object store), quotas, the watcher, and
//! the namespaces not served (a commit counter gone back, another
//! server's lease).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::config::Client;
use crate::error::{Error, Result};
use crate::retention::Policy;
use crate::store::LocalStore;

pub(super) struct State {
    pub(super) data: PathBuf,
    /// What a reload (SIGHUP) may change: who may connect, to which
    /// namespace, under which rules and limits. See `net::reload`.
    pub(super) live: std::sync::RwLock<Arc<super::reload::Live>>,
    pub(super) stores: Mutex<HashMap<String, Arc<LocalStore>>>,
    /// Bytes of packs and of uploads in progress per namespace.
    pub(super) quotas: Arc<super::quota::Quotas>,
    /// Parity shape of every namespace.
    pub(super) parity: crate::parity::ParityConfig,
    /// The object store under every namespace, on `[storage] kind = "s3"`.
    pub(super) backend: Option<Backend>,
    /// This server's leases on its namespaces in that bucket.
    pub(super) leases: Option<Arc<super::lease::Leases>>,
    /// Metrics and alerts.
    pub(super) watch: Arc<super::watch::Watch>,
    /// Namespaces whose commit counter went back, not served (see
    /// `rollback`): the answer to their clients' Hello.
    pub(super) refused: std::sync::RwLock<HashMap<String, String>>,
}

/// An opened object store and the lock mode asked of it.
pub type Backend = (
    Arc<dyn crate::object::ObjectBackend>,
    crate::object::LockMode,
);

/// Opens a namespace's store with its retention rules, over its bucket
/// when the server keeps its namespaces on an object store.
pub fn namespace_store(
    data: &std::path::Path,
    ns: &str,
    policy: Policy,
    parity: crate::parity::ParityConfig,
    backend: Option<Backend>,
) -> Result<LocalStore> {
    let root = data.join("namespaces").join(ns);
    let store = LocalStore::open_dir(&root)?
        .with_policy(policy)
        .with_parity(parity);
    Ok(match backend {
        Some((b, mode)) => {
            store.with_bucket(Arc::new(crate::store::Bucket::open(b, ns, mode, &root)?))
        }
        None => store,
    })
}

impl State {
    /// The clients and limits in force now.
    pub(super) fn live(&self) -> Arc<super::reload::Live> {
        // unwrap-free: a poisoned lock still holds a whole config.
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why `ns` is not served, if it is not.
    pub(super) fn refusal(&self, ns: &str) -> Option<String> {
        let r = self.refused.read().unwrap_or_else(|p| p.into_inner());
        r.get(ns)
            .cloned()
            .or_else(|| self.leases.as_ref().and_then(|l| l.refusal(ns)))
    }

    pub(super) fn store(&self, client: &Client) -> Result<Arc<LocalStore>> {
        // Another server's namespace: neither its clients nor this
        // server's scrub and sweep touch it here.
        if let Some(why) = self
            .leases
            .as_ref()
            .and_then(|l| l.refusal(&client.namespace))
        {
            return Err(Error::Denied(why));
        }
        // unwrap: the lock is never held across a panic
        let mut m = self.stores.lock().unwrap();
        if let Some(s) = m.get(&client.namespace) {
            return Ok(s.clone());
        }
        let s = Arc::new(namespace_store(
            &self.data,
            &client.namespace,
            client.policy,
            self.parity,
            self.backend.clone(),
        )?);
        m.insert(client.namespace.clone(), s.clone());
        Ok(s)
    }
}
