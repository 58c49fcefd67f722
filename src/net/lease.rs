//! One server per namespace on a shared bucket: a lease object.
//!
//! Two servers on two machines may share one bucket as long as their
//! namespaces are disjoint; two serving the same namespace would each keep
//! a working copy the other does not see, and each prune would judge
//! without the other's commits. So a server that serves a namespace on an
//! object store holds `leases/<ns>` in the bucket: who holds it (a random
//! id of the data directory, and the host name for people) and until when,
//! by the bucket's clock. It renews the lease every quarter of its length;
//! a server that finds another's lease live refuses that namespace's
//! clients with a message naming the holder, asks again at each renewal,
//! and takes the lease over once it has lapsed (its holder stopped or
//! lost its disk).
//!
//! The lease is an ordinary object, not locked: each renewal writes a new
//! version and purges the one before. A takeover reads the lease back after
//! writing it and yields if another's write came last; two servers taking a
//! lapsed lease within the same moment can both believe they hold it until
//! their next renewal, when the one whose write did not last yields.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::object::{ObjectBackend, ObjectKey, PutOutcome, VersionId};

/// The default length of a lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// `data/server-id`: the holder id of this data directory.
const HOLDER_FILE: &str = "server-id";

/// What `leases/<ns>` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Lease {
    /// The holder: a random id made once per data directory.
    holder: String,
    /// The holder's host name, for the message of the refused.
    host: String,
    /// Until when it holds, seconds since the epoch by the bucket's clock.
    until: i64,
}

/// The leases of one server.
pub struct Leases {
    backend: Arc<dyn ObjectBackend>,
    holder: String,
    host: String,
    secs: i64,
    /// The version of each lease held, purged at the next renewal.
    held: Mutex<HashMap<String, VersionId>>,
    /// Why each namespace whose lease another holds is refused.
    refused: Mutex<HashMap<String, String>>,
}

/// The holder id of the data directory `data`, made on first use.
pub fn holder_id(data: &Path) -> Result<String> {
    let path = data.join(HOLDER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&path, e)),
    }
    std::fs::create_dir_all(data).at(data)?;
    let mut r = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut r);
    let id = hex::encode(r);
    match crate::durable::write_once(data, &path, id.as_bytes()) {
        Ok(()) => Ok(id),
        // another start made it first
        Err(Error::Conflict(_)) => holder_id(data),
        Err(e) => Err(e),
    }
}

impl Leases {
    /// The leases of the server whose data directory is `data`.
    pub fn new(backend: Arc<dyn ObjectBackend>, data: &Path, length: Duration) -> Result<Leases> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Ok(Leases {
            backend,
            holder: holder_id(data)?,
            host,
            secs: length.as_secs().max(1) as i64,
            held: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        })
    }

    /// How often [`Leases::renew`] should run: a quarter of the length.
    pub fn period(&self) -> Duration {
        Duration::from_millis((self.secs as u64 * 1000 / 4).max(250))
    }

    /// Why `ns` is refused here, if another server holds its lease.
    pub fn refusal(&self, ns: &str) -> Option<String> {
        // unwrap: the lock is never held across a panic
        self.refused.lock().unwrap().get(ns).cloned()
    }

    fn key(ns: &str) -> Result<ObjectKey> {
        Ok(ObjectKey::new(format!("leases/{ns}"))?)
    }

    fn read(&self, key: &ObjectKey) -> Result<Option<(Lease, VersionId)>> {
        let Some(h) = self.backend.head(key, None)? else {
            return Ok(None);
        };
        if h.size > 4096 {
            return Err(Error::Corrupt(format!("lease {key}: {} bytes", h.size)));
        }
        let bytes = self.backend.get_range(key, Some(&h.version), 0..h.size)?;
        let lease = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("lease {key}: {e}")))?;
        Ok(Some((lease, h.version)))
    }

    /// Takes or renews the lease of every namespace of `names`; a namespace
    /// whose lease another server holds is refused until it lapses.
    /// Returns the namespaces refused now, and those taken from another
    /// holder (or with no lease before) or held by this data directory
    /// before this process: they stay refused, as being rebuilt, until
    /// [`Leases::ready`], since this server's copy of them may be stale,
    /// missing, or behind the bucket by what a kill interrupted.
    pub fn renew(&self, names: &[String]) -> Result<(Vec<String>, Vec<String>)> {
        let now = self
            .backend
            .clock()?
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut refused = Vec::new();
        let mut taken = Vec::new();
        for ns in names {
            // unwrap: the lock is never held across a panic
            let had = self.held.lock().unwrap().contains_key(ns);
            // held, but its rebuild failed: asked again
            let unready = had && self.refused.lock().unwrap().contains_key(ns);
            match self.take(ns, now)? {
                Taken::Refused(why) => {
                    // unwrap: the lock is never held across a panic
                    self.refused.lock().unwrap().insert(ns.clone(), why);
                    self.held.lock().unwrap().remove(ns);
                    refused.push(ns.clone());
                }
                _ if unready => taken.push(ns.clone()),
                Taken::Renewed if had => {}
                Taken::Renewed => {
                    // Ours before this process, which may have been killed
                    // between an object's write to the bucket and its write
                    // here (a snapshot committed there, not here): the copy
                    // is brought up to date before it is served.
                    self.refused.lock().unwrap().insert(
                        ns.clone(),
                        format!(
                            "namespace {ns} is being rebuilt from the bucket (held here before this start); try again shortly"
                        ),
                    );
                    taken.push(ns.clone());
                }
                Taken::From(_) if had => {}
                Taken::From(previous) => {
                    self.refused.lock().unwrap().insert(
                        ns.clone(),
                        format!(
                            "namespace {ns} is being rebuilt from the bucket (taken over from {previous}); try again shortly"
                        ),
                    );
                    taken.push(ns.clone());
                }
            }
        }
        Ok((refused, taken))
    }

    /// Serves `ns` again after its copy was rebuilt from the bucket.
    pub fn ready(&self, ns: &str) {
        // unwrap: the lock is never held across a panic
        self.refused.lock().unwrap().remove(ns);
    }

    /// Takes or renews one lease.
    fn take(&self, ns: &str, now: i64) -> Result<Taken> {
        let key = Self::key(ns)?;
        let mine = Lease {
            holder: self.holder.clone(),
            host: self.host.clone(),
            until: now + self.secs,
        };
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec(&mine).expect("lease JSON");
        let before = match self.read(&key)? {
            None => match self.backend.put_once(&key, &bytes, None)? {
                PutOutcome::Created(v) => {
                    self.held.lock().unwrap().insert(ns.to_string(), v);
                    return Ok(Taken::From("no holder".into()));
                }
                // another server's first lease, a moment ago
                PutOutcome::Exists => self.read(&key)?,
            },
            some => some,
        };
        let (old, previous) = match before {
            Some((l, _)) if l.holder != self.holder && l.until > now => {
                return Ok(Taken::Refused(refusal(ns, &l, now)));
            }
            Some((l, v)) if l.holder == self.holder => (Some(v), None),
            Some((l, v)) => (Some(v), Some(format!("host {}, id {}", l.host, l.holder))),
            None => (None, Some("no holder".into())),
        };
        let v = self.backend.put_version(&key, &bytes, None)?;
        // Read back: a takeover another server wrote after ours wins.
        match self.read(&key)? {
            Some((l, _)) if l.holder != self.holder => {
                return Ok(Taken::Refused(refusal(ns, &l, now)))
            }
            _ => {}
        }
        if let Some(old) = old.filter(|o| *o != v) {
            // the versions of a renewed lease would pile up: one a minute
            let _ = self.backend.delete_version(&key, &old);
        }
        self.held.lock().unwrap().insert(ns.to_string(), v);
        Ok(match previous {
            None => Taken::Renewed,
            Some(p) => Taken::From(p),
        })
    }
}

/// What [`Leases::take`] did.
enum Taken {
    /// The lease was this data directory's already.
    Renewed,
    /// Taken from another holder whose lease lapsed (named), or made anew.
    From(String),
    /// Another holder's lease is live: why this server refuses.
    Refused(String),
}

fn refusal(ns: &str, l: &Lease, now: i64) -> String {
    format!(
        "namespace {ns} is served by another server (host {}, id {}) whose lease in the bucket \
         runs for {} s more; this server refuses it until that lease lapses (stop the other \
         server, or remove the namespace from one of the two configs)",
        l.host,
        l.holder,
        l.until - now
    )
}
