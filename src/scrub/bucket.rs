//! Scrub of a namespace's bucket, after the scrub of its local copy: the
//! two copies repair each other.
//!
//! - A pack the local scrub could not repair (beyond its stripe's parity,
//!   or lost with it) is put back from the newest version in the bucket
//!   that hashes to its name.
//! - Then every local pack, sound by now, is compared with the latest
//!   version of its object in the bucket, read in pieces at the scrub's
//!   byte rate and at most [`REQUESTS_PER_SEC`] requests a second. One that
//!   is damaged or missing (bit rot, a tamperer with the credentials, a
//!   version purged with a governance bypass) is written again from the
//!   local copy as a new version; the damaged one is never deleted, its
//!   lock keeps it.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{put_back_pack, ScrubReport};
use crate::error::Result;
use crate::id::PackId;
use crate::store::{Bucket, LocalStore, Store};

/// The most bucket requests a scrub makes in a second.
pub const REQUESTS_PER_SEC: u64 = 50;

/// What the scrub of a bucket found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct BucketScrub {
    /// Pack objects checked.
    pub objects_checked: u64,
    /// Bytes read from the bucket.
    pub bytes_read: u64,
    /// Packs whose object was damaged or missing, written again from the
    /// local copy, with what was wrong.
    pub rewritten: Vec<(PackId, String)>,
    /// Packs the local copy had lost beyond repair, put back from the
    /// bucket.
    pub fetched_back: Vec<PackId>,
}

/// Paces requests and bytes.
struct Pace {
    start: Instant,
    requests: u64,
    rate: Option<u64>,
}

impl Pace {
    fn wait(&mut self, bytes: u64) {
        self.requests += 1;
        let by_requests = Duration::from_millis(self.requests * 1000 / REQUESTS_PER_SEC);
        let by_bytes = self.rate.filter(|r| *r > 0).map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(bytes as f64 / r as f64)
        });
        let due = by_requests.max(by_bytes);
        if let Some(nap) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(nap);
        }
    }
}

/// Scrubs the bucket of `s` after its local scrub reported `rep`: packs
/// put back from the bucket leave `rep.unrepairable` for
/// `rep.repaired_packs`.
pub fn scrub_bucket(
    s: &LocalStore,
    b: &Bucket,
    rep: &mut ScrubReport,
    rate: Option<u64>,
) -> Result<BucketScrub> {
    let mut out = BucketScrub::default();
    let mut pace = Pace {
        start: Instant::now(),
        requests: 0,
        rate,
    };
    let lost: Vec<PackId> = rep.unrepairable.iter().map(|u| u.pack).collect();
    for id in lost {
        if let Some(bytes) = b.fetch_pack(&id)? {
            out.bytes_read += bytes.len() as u64;
            pace.wait(out.bytes_read);
            if put_back_pack(s, &id, &bytes)? {
                rep.unrepairable.retain(|u| u.pack != id);
                rep.repaired_packs.push(id);
                out.fetched_back.push(id);
            }
        }
    }
    let now = s.now();
    let until = now
        .saturating_add(s.policy().lock_secs)
        .saturating_add(crate::store::bucket_slack(&s.policy()));
    let unsound: std::collections::HashSet<PackId> =
        rep.unrepairable.iter().map(|u| u.pack).collect();
    s.for_each_pack(&mut |id, _| {
        if unsound.contains(&id) {
            return Ok(()); // sound nowhere here: nothing to copy from
        }
        let fault = b.pack_fault(&id, &mut out.bytes_read)?;
        out.objects_checked += 1;
        pace.wait(out.bytes_read);
        if let Some(why) = fault {
            let bytes = s.read_pack(&id, 0, s.pack_size(&id)?.unwrap_or(0) as usize)?;
            if PackId::of(&bytes) == id {
                b.rewrite_pack(&id, &bytes, until, now)?;
                out.rewritten.push((id, why));
            }
        }
        Ok(())
    })?;
    Ok(out)
}
