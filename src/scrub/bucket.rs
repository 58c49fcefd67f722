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
//! - The parity files of sealed stripes are in the bucket too, locked like
//!   their members ([`sync_parity`], also after each protect); a scrub
//!   compares each with the local file it just verified.

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
    /// The sealed stripes' parity files in the bucket.
    pub parity: ParitySync,
    /// Packs whose retention or hold in the bucket had fallen short of
    /// what they were given, locked again.
    pub relocked: Vec<PackId>,
    /// Locked or held snapshots whose packs and file were checked to be
    /// locked in the bucket at least as long (the maintenance pass).
    pub locks_checked: u64,
    /// Requests that pass made to extend or hold what fell short.
    pub lock_requests: u64,
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
    let until = s.bucket_until(now);
    let unsound: std::collections::HashSet<PackId> =
        rep.unrepairable.iter().map(|u| u.pack).collect();
    s.for_each_pack(&mut |id, _| {
        if unsound.contains(&id) {
            return Ok(()); // sound nowhere here: nothing to copy from
        }
        let mut relocked = false;
        let fault = b.pack_fault(&id, &mut out.bytes_read, &mut relocked, now)?;
        out.objects_checked += 1;
        if relocked {
            out.relocked.push(id);
        }
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
    out.parity = sync_parity(s, b, s.parity(), true)?;
    // The maintenance pass: every locked or held snapshot's packs and file
    // are locked in the bucket at least as long as the snapshot (free of
    // requests where `bucket.db` says so, and the check above made that
    // record true).
    for id in s.list_snapshots()? {
        let Ok(st) = s.stamp(&id) else { continue };
        if st.locked_until <= now && !st.hold {
            continue;
        }
        match s.lock_in_bucket(&id, &st) {
            Ok(n) => out.lock_requests += n,
            Err(crate::error::Error::NotFound(_)) => continue, // forgotten meanwhile
            Err(e) => return Err(e),
        }
        out.locks_checked += 1;
        pace.wait(out.bytes_read);
    }
    Ok(out)
}

/// What a parity sync did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ParitySync {
    /// Parity files sent (new, or changed since sent).
    pub sent: u64,
    /// Parity objects checked against the local file (scrub only).
    pub checked: u64,
    /// Parity objects found damaged or missing, sent again.
    pub rewritten: Vec<String>,
}

/// The signature of a local file: size and modification time. A parity
/// file is replaced by rename, so any change shows here.
fn signature(md: &std::fs::Metadata) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let mut sig = Vec::with_capacity(32);
    sig.extend_from_slice(&md.size().to_le_bytes());
    sig.extend_from_slice(&md.ino().to_le_bytes());
    sig.extend_from_slice(&md.mtime().to_le_bytes());
    sig.extend_from_slice(&md.mtime_nsec().to_le_bytes());
    sig
}

/// Sends the parity files of every sealed stripe that the bucket does not
/// have as they are here (the open stripe's stay here until it seals).
/// With `check`, also reads every parity object sent before and sends it
/// again when it differs from the local file, which a scrub just
/// verified. Called with the parity lock held.
pub(super) fn sync_parity(
    s: &LocalStore,
    b: &Bucket,
    cfg: crate::parity::ParityConfig,
    check: bool,
) -> Result<ParitySync> {
    let mut out = ParitySync::default();
    let files = super::stripe_files(s)?;
    let top = files.keys().next_back().copied();
    let idx = crate::stripe_index::StripeIndex::open(&super::parity_dir(s))?;
    let now = s.now();
    let until = s.bucket_until(now);
    let mut pace = Pace {
        start: Instant::now(),
        requests: 0,
        rate: None,
    };
    for (id, shards) in files {
        let open = Some(id) == top
            && idx
                .stripe(id)?
                .is_some_and(|k| k.readable && cfg.takes_more(k.members.len(), k.m));
        if open {
            continue;
        }
        for (i, path) in shards {
            let rel = format!("parity/{id:016x}.{i}");
            let Ok(md) = std::fs::metadata(&path) else {
                continue; // removed meanwhile
            };
            let sig = signature(&md);
            let sent = b.parity_sent(&rel)?;
            let changed = sent.as_deref() != Some(&sig[..]);
            if !changed && !check {
                continue;
            }
            let local = std::fs::read(&path).map_err(|e| crate::error::Error::io(&path, e))?;
            if changed {
                b.send_parity(&rel, &local, &sig, until, now)?;
                out.sent += 1;
                pace.wait(0);
                continue;
            }
            out.checked += 1;
            pace.wait(0);
            if !b.holds(&rel, &local)? {
                b.send_parity(&rel, &local, &sig, until, now)?;
                out.rewritten.push(rel);
            }
        }
    }
    Ok(out)
}
