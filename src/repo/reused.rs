//! Before a backup commits, the packs it reuses are checked against their
//! headers: the snapshot's plain pack list must name every pack that holds
//! one of its blobs, and the cache is never trusted for that. Owns this
//! check; it reads headers through the [`Repository`] and mends the cache's
//! rows of a pack found wrong, never the repository.

use std::collections::{HashMap, HashSet};

use super::Repository;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::id::PackId;

/// Checks every pack the running backup's blobs resolved to and that it did
/// not write itself: one header read per pack and run, held in memory while
/// that pack's blobs are compared (one header at a time), so the cost
/// follows what the run read and deduplicated, not the repository's size
/// (files reused whole from the files cache resolve to no blob here; their
/// rows carry a checksum). A pack that is gone, or whose header does not
/// hold a blob where the cache says, has its rows read again from its
/// header (or dropped), and the blobs are resolved again, once: a blob then
/// in no pack fails the backup with nothing committed.
pub(crate) fn verify(
    repo: &Repository,
    cache: &mut Cache,
    written: &HashSet<PackId>,
) -> Result<()> {
    for round in 0..2 {
        let wrong = wrong_packs(repo, cache, written)?;
        if wrong.is_empty() {
            return Ok(());
        }
        if round == 1 {
            break;
        }
        for p in &wrong {
            cache.remove_pack(p)?;
            if let Some(size) = repo.store().pack_size(p)? {
                if let Ok(entries) = repo.read_pack_header(p, size) {
                    cache.add_pack(p, size, &entries)?;
                }
            }
        }
        cache.run_unresolve();
        repo.notify(&format!(
            "the local cache was wrong about {} packs (rows their headers do not hold); read them again from their headers",
            wrong.len()
        ));
    }
    Err(Error::Conflict(
        "the local cache was wrong about the packs of this backup and is mended; nothing committed, run it again"
            .into(),
    ))
}

/// The packs (not written by this run) whose header does not hold a blob
/// where the cache says it lies, or that the repository no longer holds.
fn wrong_packs(repo: &Repository, cache: &Cache, written: &HashSet<PackId>) -> Result<Vec<PackId>> {
    let mut wrong = Vec::new();
    cache.run_blobs_by_pack(&mut |pack, blobs| {
        if written.contains(&pack) {
            return Ok(());
        }
        let Some(size) = repo.store().pack_size(&pack)? else {
            wrong.push(pack);
            return Ok(());
        };
        let header: HashMap<_, _> = match repo.read_pack_header(&pack, size) {
            Ok(entries) => entries.into_iter().map(|e| (e.id, e)).collect(),
            Err(_) => {
                wrong.push(pack);
                return Ok(());
            }
        };
        let holds = blobs.iter().all(|(id, loc)| {
            header.get(id).is_some_and(|e| {
                (e.offset, e.sealed_len, e.plain_len, e.kind)
                    == (loc.offset, loc.sealed_len, loc.plain_len, loc.kind)
            })
        });
        if !holds {
            wrong.push(pack);
        }
        Ok(())
    })?;
    Ok(wrong)
}
