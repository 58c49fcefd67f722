//! The object store of one repository directory. Owns the directory layout
//! and the write-once rule: every object is written to a temporary file,
//! fsynced, linked into place without replacing anything, and its directory
//! fsynced. Knows no keys: it checks what it can without one (a pack's name is
//! the BLAKE3 of its bytes; a snapshot's packs must all exist).
//!
//! ```text
//! REPO/config                 repository id, version, sealed settings
//! REPO/keys/<name>            key files
//! REPO/packs/<2 hex>/<64 hex> packs
//! REPO/snapshots/<64 hex>     snapshot files
//! REPO/tmp/                   uploads in progress (never read)
//! ```
//!
//! The parts: this file holds the [`Store`] and [`PackUpload`] contracts and
//! the clock; `local` the directory store itself (layout, locks, stamps,
//! figures), `store_impl` the contract on it, `upload` a pack being written,
//! `settings` `policy.json` and
//! `parity.json`, `pack_set` the sweep's on-disk set of referenced packs and
//! `sweep` retention and collection. Parity and repair are `crate::scrub`'s;
//! the store still calls it for a reader's repair and for collected packs.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, IoContext, Result};
use crate::format::snapshot;
use crate::id::{PackHasher, PackId, SnapshotGroup, SnapshotId};
use crate::limits::{MAX_PACK_BYTES, MAX_SMALL_FILE_BYTES, MAX_SNAPSHOT_BYTES};
use crate::retention::{self, Policy, SnapshotUsage, Stamp};

/// A pack being uploaded: write its bytes, then [`PackUpload::commit`] it
/// under its name. Dropping it without commit leaves nothing visible.
pub trait PackUpload: Write + Send {
    /// Makes the pack durable under `id`. Returns `false` when a pack of that
    /// name existed already (first writer wins; the new bytes are dropped).
    fn commit(self: Box<Self>, id: PackId) -> Result<bool>;
}

/// Write-once storage of one repository: a local directory, or a namespace on
/// a server. Nothing here ever replaces or truncates an object.
pub trait Store: Send + Sync {
    /// Reads the config file.
    fn read_config(&self) -> Result<Vec<u8>>;
    /// Writes the config file; fails if one exists.
    fn write_config(&self, bytes: &[u8]) -> Result<()>;
    /// Names of the key files.
    fn list_keys(&self) -> Result<Vec<String>>;
    /// Reads one key file.
    fn read_key(&self, name: &str) -> Result<Vec<u8>>;
    /// Writes a new key file; fails if the name exists.
    fn write_key(&self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Removes a key file.
    fn remove_key(&self, name: &str) -> Result<()>;
    /// Starts uploading a pack.
    fn upload_pack(&self) -> Result<Box<dyn PackUpload>>;
    /// Size of a pack, or `None` when it does not exist.
    fn pack_size(&self, id: &PackId) -> Result<Option<u64>>;
    /// Reads `len` bytes at `offset` of a pack.
    fn read_pack(&self, id: &PackId, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Reads `len` bytes at `offset` of a pack into `buf` (reused from call
    /// to call) and returns where they lie in it: for a reader that takes
    /// each byte once, such as a restore, a local store reads past the page
    /// cache.
    fn read_pack_span(
        &self,
        id: &PackId,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        *buf = self.read_pack(id, offset, len)?;
        Ok(0..len)
    }
    /// Hints that a command is about to list packs and read snapshots, so
    /// a local disk can start while the key is derived. Only a hint.
    fn warm(&self) {}
    /// Calls `f` with every pack's name and size.
    fn for_each_pack(&self, f: &mut dyn FnMut(PackId, u64) -> Result<()>) -> Result<()>;
    /// Stores a snapshot file after checking its plain part and that every pack
    /// it references exists. Returns its id. `group` names the backup job it
    /// belongs to (see [`crate::keep`]): the store records it in the stamp.
    fn write_snapshot(&self, bytes: &[u8], group: Option<SnapshotGroup>) -> Result<SnapshotId>;
    /// Ids of all snapshots.
    fn list_snapshots(&self) -> Result<Vec<SnapshotId>>;
    /// Reads a snapshot file.
    fn read_snapshot(&self, id: &SnapshotId) -> Result<Vec<u8>>;
    /// What the store recorded about a snapshot, by its own clock.
    fn stamp(&self, id: &SnapshotId) -> Result<Stamp>;
    /// Removes a snapshot; refused inside its lock window, on legal hold, or
    /// when the store's clock went backwards.
    fn forget(&self, id: &SnapshotId) -> Result<()>;
    /// Extends a snapshot's lock to `until` (never shortens it) and sets a
    /// legal hold when `hold`.
    fn lock(&self, id: &SnapshotId, until: i64, hold: bool) -> Result<Stamp>;
    /// Asks the store to repair a pack a reader found damaged, from parity.
    /// Returns whether the pack is sound now.
    fn repair(&self, id: &PackId) -> Result<bool>;
}

/// The furthest a lock may be extended ahead of now: ten years.
pub const MAX_LOCK_SECS: i64 = 3650 * retention::DAY_SECS;

/// The store's clock: seconds since the epoch. Injectable for tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    })
}

mod bucket;
mod local;
mod pack_set;
mod settings;
mod store_impl;
mod sweep;
#[cfg(test)]
mod tests;
mod upload;

pub(crate) use crate::durable::tmp_name;
use crate::durable::*;
pub use crate::durable::{
    append_operator_log, fsync_dir, replace_file, replace_file_via, write_once,
};
pub use bucket::{slack as bucket_slack, Bucket, PurgeReport, RebuildReport};
pub(crate) use local::read_seen;
use local::*;
pub use local::{LocalStore, Stamps};
pub(crate) use pack_set::PackSet;
use settings::*;
pub use sweep::{PruneReport, SnapshotFate};
use upload::*;
