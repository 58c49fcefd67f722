//! A namespace's quota under concurrent uploads. Each `PutPack` that passes
//! the check reserves its announced length under the same lock as the
//! check, so uploads announced at once cannot pass the quota together: the
//! check counts packs stored, uploads reserved, partial files that killed
//! uploads left, and the new pack. A reservation is a [`Claim`]: committed,
//! it becomes stored bytes (when the pack was new); dropped on any other
//! path (refused, cut off, failed), it is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Result;
use crate::store::{LocalStore, Store};

/// Per namespace: bytes of packs (once counted) and of uploads reserved.
#[derive(Default)]
struct Usage {
    /// Bytes of packs on disk; `None` until counted, and after a prune.
    stored: Option<u64>,
    /// Announced bytes of uploads that passed the check and have not ended.
    reserved: u64,
    /// Bumped by every change a count of the disk might have missed (a
    /// pack committed, a prune): a count that raced one is not kept.
    generation: u64,
    /// Bytes of packs committed, ever: what a racing count may have missed.
    committed: u64,
}

/// Every namespace's usage, shared by the server's connections.
#[derive(Default)]
pub struct Quotas(Mutex<HashMap<String, Usage>>);

/// Why an upload was refused: what the namespace holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Over {
    /// The namespace's quota.
    pub quota: u64,
    /// Bytes of packs stored.
    pub stored: u64,
    /// Bytes reserved by uploads in progress.
    pub reserved: u64,
    /// Bytes of partial files that killed uploads left.
    pub leftovers: u64,
    /// The refused pack's length.
    pub len: u64,
}

impl Over {
    /// The refusal, naming the namespace and the figures.
    pub fn message(&self, ns: &str) -> String {
        let used = self.stored + self.reserved + self.leftovers;
        format!(
            "namespace {ns} is over its quota: {used} of {} bytes used ({} by uploads in progress, {} by partial files of interrupted uploads), this pack needs {} more; nothing stored was touched",
            self.quota, self.reserved, self.leftovers, self.len
        )
    }
}

/// An upload's reservation; released when dropped unless committed.
pub struct Claim {
    quotas: Arc<Quotas>,
    ns: String,
    len: u64,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Claim({}, {} bytes)", self.ns, self.len)
    }
}

impl Quotas {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Usage>> {
        // A poisoned map still counts.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets a namespace's count of stored bytes (after a prune); the
    /// next upload counts the disk again. Reservations stay.
    pub fn forget_stored(&self, ns: &str) {
        let mut m = self.lock();
        let u = m.entry(ns.to_string()).or_default();
        u.stored = None;
        u.generation += 1;
    }

    /// Reserves `len` bytes for an upload to `ns`, or says why not.
    /// `count` walks the namespace's packs (run when nothing is counted
    /// yet, outside the lock); `leftovers` are the bytes killed uploads
    /// left in its tmp/.
    pub fn claim(
        self: &Arc<Self>,
        ns: &str,
        quota: u64,
        len: u64,
        leftovers: u64,
        count: impl FnOnce() -> Result<u64>,
    ) -> Result<std::result::Result<Claim, Over>> {
        let (generation, committed) = {
            let m = self.lock();
            let u = m.get(ns);
            match u.and_then(|u| u.stored) {
                Some(_) => (None, 0),
                None => (
                    Some(u.map_or(0, |u| u.generation)),
                    u.map_or(0, |u| u.committed),
                ),
            }
        };
        let counted = match generation {
            Some(_) => Some(count()?),
            None => None,
        };
        let mut m = self.lock();
        let u = m.entry(ns.to_string()).or_default();
        let stored = match (u.stored, counted) {
            (Some(s), _) => s,
            (None, Some(c)) if Some(u.generation) == generation => {
                u.stored = Some(c);
                c
            }
            // The count raced a commit or a prune: add what it may have
            // missed, and keep no count.
            (None, c) => c.unwrap_or(0) + (u.committed - committed),
        };
        let over = Over {
            quota,
            stored,
            reserved: u.reserved,
            leftovers,
            len,
        };
        if stored + u.reserved + leftovers + len > quota {
            return Ok(Err(over));
        }
        u.reserved += len;
        Ok(Ok(Claim {
            quotas: self.clone(),
            ns: ns.to_string(),
            len,
        }))
    }
}

impl Claim {
    /// The upload ended with its pack stored: the reservation becomes
    /// stored bytes if the pack was `created` (an existing one takes
    /// nothing more), in one step.
    pub fn commit(mut self, created: bool) {
        let mut m = self.quotas.lock();
        if let Some(u) = m.get_mut(&self.ns) {
            u.reserved -= self.len;
            if created {
                u.stored = u.stored.map(|s| s + self.len);
                u.committed += self.len;
                u.generation += 1;
            }
        }
        self.len = 0;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        if let Some(u) = self.quotas.lock().get_mut(&self.ns) {
            u.reserved -= self.len;
        }
    }
}

/// Reserves `len` bytes of `ns`'s `quota` for an upload into `store`.
pub async fn claim(
    quotas: &Arc<Quotas>,
    store: &Arc<LocalStore>,
    ns: &str,
    quota: u64,
    len: u64,
) -> Result<std::result::Result<Claim, Over>> {
    let (quotas, store, ns) = (quotas.clone(), store.clone(), ns.to_string());
    tokio::task::spawn_blocking(move || {
        let leftovers = store.abandoned_tmp_bytes()?;
        quotas.claim(&ns, quota, len, leftovers, || {
            let mut total = 0;
            store.for_each_pack(&mut |_, size| {
                total += size;
                Ok(())
            })?;
            Ok(total)
        })
    })
    .await
    .map_err(|e| crate::error::Error::RawIo(std::io::Error::other(e.to_string())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(q: &Arc<Quotas>, len: u64) -> std::result::Result<Claim, Over> {
        q.claim("ns", 100, len, 0, || Ok(10)).unwrap()
    }

    #[test]
    fn reservations_count_until_their_upload_ends() {
        let q = Arc::new(Quotas::default());
        let a = take(&q, 40).unwrap();
        let b = take(&q, 40).unwrap();
        // 10 stored + 80 reserved: 20 more do not fit.
        let over = take(&q, 20).unwrap_err();
        assert_eq!((over.stored, over.reserved), (10, 80));
        // A failed upload gives its room back; a committed one keeps it.
        drop(a);
        a_fits_then_b_commits(&q, b);
    }

    fn a_fits_then_b_commits(q: &Arc<Quotas>, b: Claim) {
        drop(take(q, 20).unwrap());
        b.commit(true);
        let over = take(q, 60).unwrap_err();
        assert_eq!((over.stored, over.reserved), (50, 0));
        // A pack that existed already takes nothing.
        take(q, 50).unwrap().commit(false);
        assert!(take(q, 50).is_ok());
    }

    #[test]
    fn a_count_that_raced_a_commit_is_not_kept() {
        let q = Arc::new(Quotas::default());
        let c = take(&q, 30).unwrap();
        q.forget_stored("ns");
        // The disk count misses the pack committed while it ran: it is
        // added, so 10 + 30 + 61 do not fit.
        let over = q
            .claim("ns", 100, 61, 0, || {
                c.commit(true);
                Ok(10)
            })
            .unwrap()
            .unwrap_err();
        assert_eq!(over.stored, 40);
        // And that count is not kept: the next check counts the disk again.
        let over = q.claim("ns", 100, 70, 0, || Ok(40)).unwrap().unwrap_err();
        assert_eq!(over.stored, 40);
        // Leftovers of killed uploads count too.
        let over = q.claim("ns", 100, 1, 95, || Ok(10)).unwrap().unwrap_err();
        assert_eq!(over.leftovers, 95);
    }
}
