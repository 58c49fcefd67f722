//! Parity and scrub on a local store (a repository directory, or one
//! namespace of a server). Owns the parity files under `REPO/parity/` and
//! the repair of damaged packs from them; needs no key. The codec is in
//! [`crate::parity`].
//!
//! Packs are grouped in stripes of up to k members with m parity shards.
//! New packs join the open stripe: their contributions are added to its
//! parity shards in place, without reading its other members or writing
//! the rows they do not reach.
//! A scrub reads every block of every member and shard, checks its BLAKE3,
//! rebuilds damaged rows when at most m shards of the row are bad, writes a
//! repaired pack atomically after checking that it hashes to its name again,
//! and reports what it could not repair with the snapshots that need it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::RecvTimeoutError;
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::error::{Error, IoContext, Result};
use crate::id::{PackId, SnapshotId};
pub use crate::parity::ParityConfig;
use crate::parity::{self, Member, StripeHeader, MAGIC_PARITY, PARITY_BLOCK, STRIPE_VERSION};
use crate::partial;
use crate::referenced;
use crate::store::{fsync_dir, replace_file, LocalStore, Store};
use crate::stripe_index::{self, Known, StripeIndex};

mod bucket;
mod grow;
mod protect;
mod stripes;
#[cfg(test)]
mod tests;
mod verify;
mod write;

pub use bucket::{scrub_bucket, BucketScrub};
pub use protect::{forget_packs, protect, Protector};
use protect::{known, protect_locked};
use stripes::*;
pub use verify::{put_back_pack, repair_pack, scrub};
use write::{write_stripe, Io, Wrote};

/// What `protect` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProtectReport {
    /// Packs that joined a stripe.
    pub packs_protected: u64,
    /// Stripes whose parity was (re)written.
    pub stripes_written: u64,
    /// Bytes of packs and parity files read to write them: the new packs
    /// and the stripe's parity files when new members are added to it,
    /// every member when a stripe is computed whole.
    pub parity_bytes_read: u64,
    /// Bytes written to parity files: when new members are added to a
    /// stripe, the shard rows they reach and the files' headers.
    pub parity_bytes_written: u64,
    /// Packs left out because they did not hash to their name.
    pub damaged: Vec<PackId>,
}

/// A pack that could not be repaired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Unrepairable {
    /// The pack.
    pub pack: PackId,
    /// Why.
    pub reason: String,
    /// The snapshots that reference it.
    pub snapshots: Vec<SnapshotId>,
}

/// What a scrub found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScrubReport {
    /// Packs read.
    pub packs_checked: u64,
    /// Parity files read.
    pub parity_checked: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Blocks whose checksum was verified.
    pub blocks_checked: u64,
    /// Blocks found damaged or missing (packs and parity).
    pub damaged_blocks: u64,
    /// Blocks rebuilt.
    pub repaired_blocks: u64,
    /// Blocks of packs that could not be rebuilt (beyond the parity budget,
    /// or every block of a damaged pack that was in no stripe yet).
    pub unrepairable_blocks: u64,
    /// Packs rewritten after repair.
    pub repaired_packs: Vec<PackId>,
    /// Stripes whose parity was rewritten.
    pub parity_rewritten: u64,
    /// Packs in no stripe yet (checked by their hash only).
    pub unprotected_checked: u64,
    /// Stripes skipped because the interrupted pass had verified them.
    pub stripes_resumed: u64,
    /// Stripes none of whose parity files could be read: their members
    /// were checked by their hash and given new parity.
    pub stripes_unreadable: u64,
    /// What could not be repaired.
    pub unrepairable: Vec<Unrepairable>,
    /// The scrub of the namespace's bucket, on an object store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<BucketScrub>,
}

/// How to scrub.
#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Read at most this many bytes per second (none: no limit).
    pub rate: Option<u64>,
    /// Start a new pass even if an earlier one was interrupted.
    pub restart: bool,
}

/// Progress of scrub passes, kept in `REPO/scrub.json` so an interrupted
/// pass carries on where it stopped.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ScrubState {
    /// When the current (or last) pass started.
    pub pass_started: i64,
    /// When the last pass completed (0: never).
    pub last_complete: i64,
    /// Stripes verified in the current pass, and when.
    pub verified: BTreeMap<u64, i64>,
    /// Stripes the current pass has to verify (its progress is
    /// `verified / stripes`).
    #[serde(default)]
    pub stripes: u64,
    /// What the current pass found so far; kept across an interruption.
    #[serde(default)]
    pub current: ScrubCounts,
    /// What the last completed pass found, whoever ran it (the server's
    /// schedule or `coffer scrub`): what monitoring and alerts report.
    #[serde(default)]
    pub last: Option<ScrubCounts>,
}

impl ScrubState {
    /// Whether a pass has started and not completed (running, or interrupted).
    pub fn in_pass(&self) -> bool {
        self.pass_started > self.last_complete
    }

    /// Share of the current pass done, 0 to 1; 1 when no pass is under way.
    pub fn progress(&self) -> f64 {
        if !self.in_pass() {
            1.0
        } else if self.stripes == 0 {
            0.0
        } else {
            (self.verified.len() as f64 / self.stripes as f64).min(1.0)
        }
    }
}

/// The most unrepairable packs a scrub state lists by name (the count is
/// always complete): a disaster must not make the state file huge.
pub const MAX_LISTED_UNREPAIRABLE: usize = 100;

/// What one scrub pass found, summed over its runs when it was interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScrubCounts {
    /// Blocks whose checksum was verified.
    pub blocks_checked: u64,
    /// Blocks found damaged or missing.
    pub damaged_blocks: u64,
    /// Blocks rebuilt from parity.
    pub repaired_blocks: u64,
    /// Blocks that could not be rebuilt.
    pub unrepairable_blocks: u64,
    /// Packs that could not be repaired.
    pub unrepairable_packs: u64,
    /// The first [`MAX_LISTED_UNREPAIRABLE`] of them, with the snapshots
    /// they touch (known once the pass completes).
    #[serde(default)]
    pub unrepairable: Vec<Unrepairable>,
}

impl ScrubCounts {
    /// `base` (earlier runs of the pass) plus what this run found so far.
    fn tally(base: &ScrubCounts, rep: &ScrubReport, bad: &[Unrepairable]) -> ScrubCounts {
        let mut unrepairable = base.unrepairable.clone();
        unrepairable.extend(bad.iter().cloned());
        unrepairable.truncate(MAX_LISTED_UNREPAIRABLE);
        ScrubCounts {
            blocks_checked: base.blocks_checked + rep.blocks_checked,
            damaged_blocks: base.damaged_blocks + rep.damaged_blocks,
            repaired_blocks: base.repaired_blocks + rep.repaired_blocks,
            unrepairable_blocks: base.unrepairable_blocks + rep.unrepairable_blocks,
            unrepairable_packs: base.unrepairable_packs + bad.len() as u64,
            unrepairable,
        }
    }
}

/// Packs found bad so far, as unrepairable entries without their snapshots.
fn listed(bad: &HashMap<PackId, String>) -> Vec<Unrepairable> {
    let mut v: Vec<Unrepairable> = bad
        .iter()
        .map(|(pack, reason)| Unrepairable {
            pack: *pack,
            reason: reason.clone(),
            snapshots: Vec::new(),
        })
        .collect();
    v.sort_by_key(|u| u.pack);
    v
}

/// Reads the scrub state of a store.
pub fn scrub_state(s: &LocalStore) -> ScrubState {
    fs::read(s.root().join("scrub.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Takes packs put back whole since the scrub (from a replica) off its
/// unrepairable lists, so monitoring and the `scrub_unrepairable` alert
/// stop reporting them before the next pass.
pub fn mark_put_back(s: &LocalStore, packs: &[PackId]) -> Result<()> {
    let mut st = scrub_state(s);
    for counts in st.last.iter_mut().chain(std::iter::once(&mut st.current)) {
        let before = counts.unrepairable.len();
        counts.unrepairable.retain(|u| !packs.contains(&u.pack));
        let gone = (before - counts.unrepairable.len()) as u64;
        counts.unrepairable_packs = counts.unrepairable_packs.saturating_sub(gone);
    }
    save_state(s, &st)
}

/// How often a scrub records its progress: an interruption repeats at most
/// this much work.
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn save_state(s: &LocalStore, st: &ScrubState) -> Result<()> {
    // unwrap: plain data always serializes
    let bytes = serde_json::to_vec(st).expect("scrub state JSON");
    replace_file(&s.root().join("tmp"), &s.root().join("scrub.json"), &bytes)
}
