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

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::RngCore;

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

mod sweep;
pub use sweep::{PruneReport, SnapshotFate};

/// A repository in a local directory.
pub struct LocalStore {
    root: PathBuf,
    handles: Mutex<HashMap<PackId, Handle>>,
    policy: Policy,
    parity: crate::parity::ParityConfig,
    clock: Clock,
    /// Whether the kernel's boot clocks stand beside `clock` (not beside a
    /// test's clock): see `clock_guard`.
    kernel_clocks: bool,
    /// Cleared once the file system refuses O_DIRECT: spans are then read
    /// through the cache without trying again for each one.
    direct_io: std::sync::atomic::AtomicBool,
}

const OPEN_HANDLES: usize = 64;

/// `REPO/collecting`: present while packs a prune deleted may still be in
/// the parity of their stripes (see [`LocalStore::prune`]).
const COLLECTING: &str = "collecting";

impl LocalStore {
    /// Opens an existing repository directory.
    pub fn open(root: &Path) -> Result<LocalStore> {
        if !root.join("config").is_file() {
            return Err(Error::NotFound(format!(
                "repository at {} (no config file; run `coffer init` first)",
                root.display()
            )));
        }
        LocalStore::observe(root)
    }

    /// Creates the directory layout of a new repository; refuses a directory
    /// that holds anything already.
    pub fn create(root: &Path) -> Result<LocalStore> {
        // An empty layout left by an earlier, interrupted init is fine.
        let layout = ["keys", "packs", "snapshots", "tmp"];
        if root.exists() {
            for e in fs::read_dir(root).at(root)? {
                let e = e.at(root)?;
                let name = e.file_name();
                let empty_layout_dir = layout.iter().any(|l| name == *l)
                    && fs::read_dir(e.path())
                        .map(|mut d| d.next().is_none())
                        .unwrap_or(false);
                if !empty_layout_dir {
                    return Err(Error::Conflict(format!(
                        "{} exists and is not empty; refusing to create a repository there",
                        root.display()
                    )));
                }
            }
        }
        for d in layout {
            fs::create_dir_all(root.join(d)).at(root.join(d))?;
        }
        fsync_dir(root)?;
        LocalStore::observe(root)
    }

    /// Opens a directory as a store, creating its layout if missing; a
    /// server namespace starts like this, before its client runs `init`.
    pub fn open_dir(root: &Path) -> Result<LocalStore> {
        for d in ["keys", "packs", "snapshots", "tmp"] {
            fs::create_dir_all(root.join(d)).at(root.join(d))?;
        }
        LocalStore::observe(root)
    }

    /// Opens a store directory only to read it: creates nothing, and a
    /// missing part shows up as an error when it is read.
    pub fn observe(root: &Path) -> Result<LocalStore> {
        Ok(LocalStore {
            root: root.to_path_buf(),
            handles: Mutex::new(HashMap::new()),
            policy: read_setting(root)?,
            parity: read_setting(root)?,
            clock: system_clock(),
            kernel_clocks: true,
            direct_io: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The shard directories under `packs/`, sorted: a pack listing walks
    /// them in this order with [`LocalStore::shard_packs`], so it holds one
    /// shard at a time, never the whole repository.
    pub fn pack_shards(&self) -> Result<Vec<PathBuf>> {
        let dir = self.root.join("packs");
        // An entry that cannot be read fails the listing: a shard silently
        // missing would make prune, parity and clients see a short list.
        let mut subs = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            subs.push(e.at(&dir)?.path());
        }
        subs.sort();
        Ok(subs)
    }

    /// The packs of one shard of [`LocalStore::pack_shards`], sorted by name,
    /// with their sizes. A pack removed while the shard is read is left out.
    pub fn shard_packs(&self, shard: &Path) -> Result<Vec<(PackId, u64)>> {
        let mut names = Vec::new();
        for e in fs::read_dir(shard).at(shard)? {
            let e = e.at(shard)?;
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<PackId>().ok())
            else {
                continue;
            };
            match e.metadata() {
                Ok(m) => names.push((id, m.len())),
                // collected by a concurrent prune: not in the listing
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io(e.path(), err)),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Uses these retention rules instead of the repository's own.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Now, by the store's clock.
    pub(crate) fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Whether the kernel's boot clocks go with the store's clock.
    pub(crate) fn kernel_clocks(&self) -> bool {
        self.kernel_clocks
    }

    /// Drops a cached handle of a pack that was replaced or removed.
    pub(crate) fn forget_handle(&self, id: &PackId) {
        // unwrap: the lock is never held across a panic
        self.handles.lock().unwrap().remove(id);
    }

    /// Uses this clock instead of the system's.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.kernel_clocks = false;
        self
    }

    /// Uses this parity shape instead of the repository's own.
    pub fn with_parity(mut self, p: crate::parity::ParityConfig) -> Self {
        self.parity = p;
        self
    }

    /// The parity shape in force.
    pub fn parity(&self) -> crate::parity::ParityConfig {
        self.parity
    }

    /// Records the parity shape of a local repository (`REPO/parity.json`).
    pub fn write_parity(&self, p: &crate::parity::ParityConfig) -> Result<()> {
        self.write_setting(p)
    }

    /// Writes a store-level setting once, after checking it.
    fn write_setting<T: Setting>(&self, v: &T) -> Result<()> {
        v.check().map_err(Error::Denied)?;
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec_pretty(v).expect("setting JSON");
        write_once(&self.root.join("tmp"), &self.root.join(T::FILE), &bytes)
    }

    /// The retention rules in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Records the retention rules of a local repository (`REPO/policy.json`).
    pub fn write_policy(&self, p: &Policy) -> Result<()> {
        self.write_setting(p)
    }

    fn stamp_path(&self, id: &SnapshotId) -> PathBuf {
        self.root
            .join("snapshots")
            .join(format!("{}.stamp", id.to_hex()))
    }

    /// The latest time this store has seen, so a clock that goes back is noticed.
    pub(crate) fn seen(&self) -> i64 {
        read_seen(&self.root)
    }

    fn note_time(&self, now: i64) -> Result<()> {
        if now <= self.seen() {
            return Ok(());
        }
        let tmp = tmp_name(&self.root.join("tmp"));
        fs::write(&tmp, now.to_string()).at(&tmp)?;
        fs::rename(&tmp, self.root.join("clock")).at(self.root.join("clock"))
    }

    pub(crate) fn lock_file(&self, exclusive: bool) -> Result<nix::fcntl::Flock<File>> {
        self.lock_named("lock", exclusive)
    }

    /// The file `REPO/<name>` that an flock is taken on.
    fn lock_target(&self, name: &str) -> Result<(File, PathBuf)> {
        let p = self.root.join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .at(&p)?;
        Ok((f, p))
    }

    /// Like [`LocalStore::lock_named`] (exclusive), but `None` at once
    /// when someone else holds it.
    pub(crate) fn try_lock_named(&self, name: &str) -> Result<Option<nix::fcntl::Flock<File>>> {
        let (f, p) = self.lock_target(name)?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(g) => Ok(Some(g)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(Error::io(&p, e.into())),
        }
    }

    /// An flock on `REPO/<name>`, shared or exclusive.
    pub(crate) fn lock_named(
        &self,
        name: &str,
        exclusive: bool,
    ) -> Result<nix::fcntl::Flock<File>> {
        let (f, p) = self.lock_target(name)?;
        let arg = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        nix::fcntl::Flock::lock(f, arg).map_err(|(_, e)| Error::io(&p, e.into()))
    }

    /// Held across every read-modify-write of a stamp and every judgement
    /// that removes a snapshot by its stamp, so a lock or hold set
    /// meanwhile is neither lost nor overlooked.
    pub(crate) fn stamps_lock(&self) -> Result<nix::fcntl::Flock<File>> {
        self.lock_named("stamps.lock", true)
    }

    pub(crate) fn write_stamp(&self, id: &SnapshotId, st: &Stamp, replace: bool) -> Result<()> {
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec(st).expect("stamp JSON");
        let path = self.stamp_path(id);
        if !replace {
            return write_once(&self.root.join("tmp"), &path, &bytes);
        }
        replace_file(&self.root.join("tmp"), &path, &bytes)
    }

    fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        let p = self.snapshot_path(id);
        fs::remove_file(&p).at(&p)?;
        let _ = fs::remove_file(self.stamp_path(id));
        fsync_dir(&self.root.join("snapshots"))
    }

    /// The operator's removal of a snapshot that does not open (damaged, or
    /// planted by a client without the key): whatever its lock and legal
    /// hold say, since a lock protects a backup and this one restores
    /// nothing. The store cannot open a snapshot, so the judgement is the
    /// caller's; every removal is appended to `REPO/operator.log` (one JSON
    /// line: when, by whom, what, and the stamp it overrode) before it
    /// happens. Returns that stamp.
    pub fn remove_damaged(&self, id: &SnapshotId, by: &str, why: &str) -> Result<Stamp> {
        let st = self.stamp(id)?;
        let now = (self.clock)();
        let entry = serde_json::json!({
            "time": retention::fmt_time(now), "action": "remove-damaged-snapshot",
            "snapshot": id.to_hex(), "by": by, "why": why, "stamp": st,
        });
        append_operator_log(&self.root, &entry)?;
        self.remove_snapshot(id)?;
        Ok(st)
    }

    /// Removes the partial files (uploads, parity, repairs) that killed
    /// writers left in `tmp/`, at the start of a writing session: a crash
    /// loop must not fill the disk. A live writer holds its file locked
    /// and keeps it. Returns how many files and bytes were removed.
    pub fn sweep_abandoned(&self) -> Result<(u64, u64)> {
        crate::partial::sweep(&self.root.join("tmp"))
    }

    /// Bytes of the partial uploads in `tmp/` that killed writers left:
    /// they take space like packs, and a namespace's quota counts them.
    pub fn abandoned_tmp_bytes(&self) -> Result<u64> {
        crate::partial::abandoned_bytes(&self.root.join("tmp"))
    }

    /// Every snapshot with its stamp, in the order they were committed, for
    /// figures: a snapshot removed meanwhile (a concurrent forget) is
    /// skipped, and so is one whose stamp cannot be read, its error returned
    /// beside the list, so one bad stamp does not hide the others. Reads
    /// every stamp: a sweep holds about half a kilobyte per snapshot (32 MB
    /// for 40 000 measured), which the keep rules bound in practice.
    pub fn stamps(&self) -> Result<(Stamps, Vec<Error>)> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for id in self.list_snapshots()? {
            match self.commit_order(id) {
                Ok(Some(x)) => out.push(x),
                Ok(None) => {}
                Err(e) => skipped.push(e),
            }
        }
        out.sort_by_key(|(key, _)| *key);
        Ok((
            out.into_iter().map(|((_, _, id), st)| (id, st)).collect(),
            skipped,
        ))
    }

    /// The latest commit (as [`LocalStore::stamps`] orders them) without
    /// keeping the others; an unreadable stamp is skipped.
    fn newest_stamp(&self) -> Result<Option<(SnapshotId, Stamp)>> {
        let mut best: Option<(CommitKey, Stamp)> = None;
        for id in self.list_snapshots()? {
            if let Ok(Some(x)) = self.commit_order(id) {
                if best.as_ref().is_none_or(|(k, _)| x.0 > *k) {
                    best = Some(x);
                }
            }
        }
        Ok(best.map(|((_, _, id), st)| (id, st)))
    }

    /// A snapshot's stamp with the key that orders commits: stamps count
    /// whole seconds, so the snapshot file's own time orders commits within
    /// one. `None` when the snapshot is gone.
    fn commit_order(&self, id: SnapshotId) -> Result<Option<(CommitKey, Stamp)>> {
        match self.stamp(&id) {
            Ok(st) => {
                let t = fs::metadata(self.snapshot_path(&id))
                    .and_then(|m| m.modified())
                    .ok();
                Ok(Some(((st.received, t, id), st)))
            }
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What a snapshot listing `packs` (name, size, file time by the
    /// store's clock) occupies, against the latest commit: see `usage` in
    /// docs/format.md.
    fn usage(&self, packs: &[(PackId, u64, Option<i64>)]) -> Result<SnapshotUsage> {
        let previous = match self.newest_stamp()? {
            Some((pid, st)) => {
                let bytes = self.read_snapshot(&pid)?;
                let f = snapshot::decode(&bytes).map_err(|e| {
                    Error::Corrupt(format!("previous snapshot {}: {e}", pid.short()))
                })?;
                Some((st.received, f.packs))
            }
            None => None,
        };
        let mut usage = SnapshotUsage::default();
        for (p, len, written) in packs {
            usage.referenced_bytes += len;
            // New = written since the previous commit and not already in the
            // previous snapshot (a pack written in the same second as that
            // commit belongs to it, not to this one).
            let new = previous.as_ref().is_none_or(|(t, listed)| {
                written.is_none_or(|w| w >= *t) && listed.binary_search(p).is_err()
            });
            if new {
                usage.new_bytes += len;
            }
        }
        Ok(usage)
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn pack_path(&self, id: &PackId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join("packs").join(&hex[..2]).join(hex)
    }

    fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.root.join("snapshots").join(id.to_hex())
    }

    fn short_read(&self, id: &PackId, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::Corrupt(format!(
                "pack {id} is shorter than its header says (truncated?)"
            ))
        } else {
            Error::io(self.pack_path(id), e)
        }
    }

    /// Reads a pack range with O_DIRECT: the disk writes straight into
    /// `buf`, with no page cache to fill, charge and copy out of (a sixth
    /// of a cold image restore's CPU). `None` where the file system does
    /// not do direct I/O (remembered); the caller then reads through the
    /// cache.
    fn read_direct(
        &self,
        id: &PackId,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Option<std::ops::Range<usize>>> {
        use std::os::unix::fs::OpenOptionsExt;
        const ALIGN: u64 = crate::aligned::ALIGN as u64;
        use std::sync::atomic::Ordering::Relaxed;
        if !self.direct_io.load(Relaxed) {
            return Ok(None);
        }
        let path = self.pack_path(id);
        let unsupported = |e: &io::Error| {
            let no = e.raw_os_error() == Some(nix::libc::EINVAL);
            if no {
                self.direct_io.store(false, Relaxed);
            }
            no
        };
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if unsupported(&e) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!("pack {id}")))
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let start = offset & !(ALIGN - 1);
        let end = (offset + len as u64).div_ceil(ALIGN) * ALIGN;
        let n = (end - start) as usize;
        let pad = crate::aligned::aligned_room(buf, n);
        let mut got = 0;
        while got < n {
            match f.read_at(&mut buf[pad + got..pad + n], start + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if got == 0 && unsupported(&e) => return Ok(None),
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        let lo = (offset - start) as usize;
        if got < lo + len {
            return Err(self.short_read(id, io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(Some(pad + lo..pad + lo + len))
    }

    /// An open handle on a pack, kept for the next reads of it. One stat
    /// of its path per call: a pack replaced since it was opened (the
    /// operator's `coffer scrub` rewrote it repaired, in another process)
    /// is opened again, so a long-running server never keeps serving the
    /// damaged copy; a pack deleted meanwhile is not found.
    fn handle(&self, id: &PackId) -> Result<Arc<File>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.pack_path(id);
        let not_found = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NotFound(format!("pack {id}"))
            } else {
                Error::io(&path, e)
            }
        };
        let now = fs::metadata(&path);
        // unwrap: the lock is never held across a panic
        let cached = self.handles.lock().unwrap().get(id).cloned();
        if let (Some(h), Ok(md)) = (cached, &now) {
            if (h.dev, h.ino) == (md.dev(), md.ino()) {
                return Ok(h.file);
            }
        }
        let f = match now.and_then(|_| File::open(&path)) {
            Ok(f) => f,
            Err(e) => {
                self.handles.lock().unwrap().remove(id);
                return Err(not_found(e));
            }
        };
        let md = f.metadata().at(&path)?;
        let h = Handle {
            file: Arc::new(f),
            dev: md.dev(),
            ino: md.ino(),
        };
        let mut all = self.handles.lock().unwrap();
        if all.len() >= OPEN_HANDLES {
            all.clear();
        }
        all.insert(*id, h.clone());
        Ok(h.file)
    }
}

/// Refuses a range that no pack can hold (a client's or a damaged
/// header's), before the OS is asked for it: an offset past what `pread`
/// takes would come back as an I/O error, as if the disk had failed.
fn within_any_pack(id: &PackId, offset: u64, len: usize) -> Result<()> {
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > MAX_PACK_BYTES)
    {
        return Err(Error::Corrupt(format!(
            "range {offset}+{len} of pack {id} lies past the end of any pack"
        )));
    }
    Ok(())
}

/// An open pack and the file it was opened as.
#[derive(Clone)]
struct Handle {
    file: Arc<File>,
    dev: u64,
    ino: u64,
}

/// Reads what opening a repository reads next into the page cache: the
/// snapshot files, and the pack directories with their entries' inodes (a
/// pack listing stats every pack). Errors are left to the real readers.
fn warm_dirs(root: &Path) {
    use nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED;
    if let Ok(dir) = fs::read_dir(root.join("snapshots")) {
        for e in dir.flatten() {
            if let Ok(f) = File::open(e.path()) {
                crate::source::advise(&f, 0, 0, POSIX_FADV_WILLNEED);
            }
        }
    }
    if let Ok(dir) = fs::read_dir(root.join("packs")) {
        for shard in dir.flatten() {
            if let Ok(packs) = fs::read_dir(shard.path()) {
                for p in packs.flatten() {
                    let _ = p.metadata();
                }
            }
        }
    }
}

/// A set of pack names in a temporary SQLite database under a store's
/// `tmp/`, removed when dropped: what a sweep must look up by name without
/// holding every name of the repository in memory. Its page cache is small
/// and bounded; the rest stays in the file.
pub(crate) struct PackSet {
    conn: rusqlite::Connection,
    path: PathBuf,
}

/// The page cache of a [`PackSet`], in KiB.
const PACK_SET_CACHE_KIB: i64 = 4096;

impl PackSet {
    /// An empty set in a new file under `tmp_dir`.
    pub(crate) fn create(tmp_dir: &Path) -> Result<PackSet> {
        let path = tmp_name(tmp_dir);
        let conn = rusqlite::Connection::open(&path).map_err(|e| sql_err(&path, e))?;
        let set = PackSet { conn, path };
        // Scratch data: no journal, no fsync; a crash leaves a file in tmp/.
        set.conn
            .execute_batch(&format!(
                "PRAGMA journal_mode = OFF;
                 PRAGMA synchronous = OFF;
                 PRAGMA locking_mode = EXCLUSIVE;
                 PRAGMA temp_store = FILE;
                 PRAGMA cache_size = -{PACK_SET_CACHE_KIB};
                 CREATE TABLE packs (id BLOB PRIMARY KEY) WITHOUT ROWID;"
            ))
            .map_err(|e| sql_err(&set.path, e))?;
        Ok(set)
    }

    /// Adds these names, in one transaction.
    pub(crate) fn insert(&mut self, ids: &[PackId]) -> Result<()> {
        let path = &self.path;
        let res = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut st = tx.prepare_cached("INSERT OR IGNORE INTO packs (id) VALUES (?1)")?;
                for id in ids {
                    st.execute([&id.as_bytes()[..]])?;
                }
            }
            tx.commit()
        })();
        res.map_err(|e| sql_err(path, e))
    }

    /// Whether the set holds this name.
    pub(crate) fn contains(&self, id: &PackId) -> Result<bool> {
        let res = (|| {
            let mut st = self
                .conn
                .prepare_cached("SELECT 1 FROM packs WHERE id = ?1")?;
            st.exists([&id.as_bytes()[..]])
        })();
        res.map_err(|e| sql_err(&self.path, e))
    }

    /// The names of the set from `lo` to `hi`, both included.
    pub(crate) fn range(&self, lo: &PackId, hi: &PackId) -> Result<HashSet<PackId>> {
        let res = (|| {
            let mut st = self
                .conn
                .prepare_cached("SELECT id FROM packs WHERE id BETWEEN ?1 AND ?2")?;
            let rows = st.query_map([&lo.as_bytes()[..], &hi.as_bytes()[..]], |r| {
                r.get::<_, Vec<u8>>(0)
            })?;
            let mut out = HashSet::new();
            for r in rows {
                // a name always has 32 bytes: only this type writes the table
                if let Ok(b) = <[u8; 32]>::try_from(r?) {
                    out.insert(PackId(b));
                }
            }
            Ok(out)
        })();
        res.map_err(|e| sql_err(&self.path, e))
    }
}

impl Drop for PackSet {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn sql_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::io(path, io::Error::other(e))
}

/// The latest time the store at `root` has seen (0: none).
pub(crate) fn read_seen(root: &Path) -> i64 {
    fs::read_to_string(root.join("clock"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Snapshots with their stamps, in commit order.
pub type Stamps = Vec<(SnapshotId, Stamp)>;

/// How commits are ordered: received (store clock), then the snapshot
/// file's time, then the id.
type CommitKey = (i64, Option<std::time::SystemTime>, SnapshotId);

/// A snapshot's usage could not be computed; it is committed without.
fn warn_usage(e: &Error) {
    #[cfg(feature = "net")]
    tracing::warn!("snapshot committed without usage figures: {e}");
    #[cfg(not(feature = "net"))]
    let _ = e;
}

fn read_small(path: &Path, max: usize) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NotFound(path.display().to_string()),
        _ => Error::io(path, e),
    })?;
    let len = f.metadata().at(path)?.len();
    if len > max as u64 {
        return Err(Error::Corrupt(format!(
            "{}: {len} bytes is larger than allowed",
            path.display()
        )));
    }
    let mut buf = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::Read::take(f, max as u64), &mut buf).at(path)?;
    Ok(buf)
}

/// A file's modification time in seconds since the epoch.
fn mtime_secs(m: &fs::Metadata) -> Option<i64> {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}

/// Appends one JSON line to the store's `REPO/operator.log`, fsynced: the
/// record of an operator's override.
pub fn append_operator_log(root: &Path, entry: &serde_json::Value) -> Result<()> {
    let path = root.join("operator.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .at(&path)?;
    writeln!(log, "{entry}")
        .and_then(|()| log.sync_all())
        .at(&path)
}

/// Fsyncs a directory so a rename or link in it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes `bytes` to `path` once: temporary file, fsync, link without
/// replacing, fsync of the directory. Fails with `Conflict` if `path` exists.
pub fn write_once(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = durable_tmp(tmp_dir, bytes)?;
    let r = link_into_place(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match r? {
        true => Ok(()),
        false => Err(Error::Conflict(format!(
            "{} exists already; never overwritten",
            path.display()
        ))),
    }
}

/// Replaces the metadata file `path` atomically: temporary file in
/// `tmp_dir` (same file system), fsync, rename over `path`, fsync of its
/// directory. For the store's own metadata, never for objects.
pub fn replace_file(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = durable_tmp(tmp_dir, bytes)?;
    rename_into_place(&tmp, path)
}

/// Like [`replace_file`] through the fixed temporary name `tmp` (truncated
/// if a crash left it): for a file with a single writer outside a
/// repository, where a crash must leave no litter of random names.
pub fn replace_file_via(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(tmp).at(tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).at(tmp)?;
    rename_into_place(tmp, path)
}

/// Renames the durable `tmp` over `path` and fsyncs the directory; `tmp`
/// is removed if the rename fails.
fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    if let Err(e) = fs::rename(tmp, path).at(path) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    // unwrap: a metadata path always has a parent directory
    fsync_dir(path.parent().expect("metadata path has a parent"))
}

/// Writes `bytes` to a new temporary file in `tmp_dir` and fsyncs it;
/// nothing is left behind on failure.
fn durable_tmp(tmp_dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = tmp_name(tmp_dir);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .at(&tmp)?;
    match f.write_all(bytes).and_then(|_| f.sync_all()).at(&tmp) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            drop(f);
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub(crate) fn tmp_name(tmp_dir: &Path) -> PathBuf {
    let mut r = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut r);
    tmp_dir.join(format!("{}.tmp", hex::encode(r)))
}

/// Links a durable temporary file to its final name without replacing an
/// existing one (a hard link fails on an existing name, atomically), then
/// fsyncs the directory. Returns `false` when the name existed.
fn link_into_place(tmp: &Path, path: &Path) -> Result<bool> {
    // unwrap: every object path has a parent directory inside the repository
    let dir = path.parent().expect("object path has a parent");
    if !dir.exists() {
        fs::create_dir_all(dir).at(dir)?;
        // unwrap: same as above
        fsync_dir(dir.parent().expect("parent"))?;
    }
    match fs::hard_link(tmp, path) {
        Ok(()) => {
            fsync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

struct LocalUpload {
    clock: Clock,
    tmp: PathBuf,
    /// Held while the upload lives: a sweep leaves its file alone.
    _held: crate::partial::Held,
    file: io::BufWriter<File>,
    hasher: PackHasher,
    len: u64,
    root: PathBuf,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len + buf.len() as u64 > MAX_PACK_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pack larger than allowed",
            ));
        }
        let n = self.file.write(buf).map_err(|e| self.named(e))?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().map_err(|e| self.named(e))
    }
}

impl LocalUpload {
    /// An error that says which file it was about ("No space left on
    /// device" alone does not say where), of the same kind.
    fn named(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("writing {}: {e}", self.tmp.display()))
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

impl PackUpload for LocalUpload {
    fn commit(mut self: Box<Self>, id: PackId) -> Result<bool> {
        // The store's own rule: a pack is named by the hash of its bytes.
        let actual = self.hasher.finalize();
        if actual != id {
            return Err(Error::Denied(format!(
                "pack named {id} hashes to {actual}; refused"
            )));
        }
        self.file.flush().at(&self.tmp)?;
        // A pack's age for collection is by the store's clock, like stamps.
        // Never behind a time the store has seen, like a stamp's `received`,
        // so a clock stepped back does not make new packs look old.
        let now = (self.clock)().max(read_seen(&self.root));
        let written = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.max(0) as u64);
        self.file.get_ref().set_modified(written).at(&self.tmp)?;
        self.file.get_ref().sync_all().at(&self.tmp)?;
        let hex = id.to_hex();
        let path = self.root.join("packs").join(&hex[..2]).join(&hex);
        link_into_place(&self.tmp, &path)
    }
}

impl Store for LocalStore {
    fn read_config(&self) -> Result<Vec<u8>> {
        read_small(&self.root.join("config"), MAX_SMALL_FILE_BYTES)
    }

    fn write_config(&self, bytes: &[u8]) -> Result<()> {
        write_once(&self.root.join("tmp"), &self.root.join("config"), bytes)
    }

    fn list_keys(&self) -> Result<Vec<String>> {
        let dir = self.root.join("keys");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(n) = e.file_name().to_str() {
                if valid_key_name(n) {
                    out.push(n.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_key(&self, name: &str) -> Result<Vec<u8>> {
        if !valid_key_name(name) {
            return Err(Error::NotFound(format!("key {name}")));
        }
        read_small(&self.root.join("keys").join(name), MAX_SMALL_FILE_BYTES)
    }

    fn write_key(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if !valid_key_name(name) {
            return Err(Error::Denied(format!("invalid key name {name:?}")));
        }
        write_once(
            &self.root.join("tmp"),
            &self.root.join("keys").join(name),
            bytes,
        )
    }

    fn remove_key(&self, name: &str) -> Result<()> {
        if !valid_key_name(name) {
            return Err(Error::NotFound(format!("key {name}")));
        }
        let p = self.root.join("keys").join(name);
        fs::remove_file(&p).at(&p)?;
        fsync_dir(&self.root.join("keys"))
    }

    fn upload_pack(&self) -> Result<Box<dyn PackUpload>> {
        let (tmp, file, held) = crate::partial::create(&self.root.join("tmp"))?;
        Ok(Box::new(LocalUpload {
            tmp,
            _held: held,
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: PackHasher::default(),
            len: 0,
            root: self.root.clone(),
            clock: self.clock.clone(),
        }))
    }

    fn pack_size(&self, id: &PackId) -> Result<Option<u64>> {
        let p = self.pack_path(id);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn read_pack(&self, id: &PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        within_any_pack(id, offset, len)?;
        let f = self.handle(id)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| self.short_read(id, e))?;
        Ok(buf)
    }

    fn read_pack_span(
        &self,
        id: &PackId,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        within_any_pack(id, offset, len)?;
        if let Some(r) = self.read_direct(id, offset, len, buf)? {
            return Ok(r);
        }
        let f = self.handle(id)?;
        buf.resize(buf.len().max(len), 0);
        f.read_exact_at(&mut buf[..len], offset)
            .map_err(|e| self.short_read(id, e))?;
        Ok(0..len)
    }

    fn warm(&self) {
        let root = self.root.clone();
        // Detached: it only reads, and a command that needs none of it may
        // exit before it is done.
        let _ = std::thread::Builder::new()
            .name("warm".into())
            .spawn(move || warm_dirs(&root));
    }

    fn for_each_pack(&self, f: &mut dyn FnMut(PackId, u64) -> Result<()>) -> Result<()> {
        for shard in self.pack_shards()? {
            for (id, len) in self.shard_packs(&shard)? {
                f(id, len)?;
            }
        }
        Ok(())
    }

    fn write_snapshot(&self, bytes: &[u8], group: Option<SnapshotGroup>) -> Result<SnapshotId> {
        let file = snapshot::decode(bytes)?;
        // A shared lock: a collection cannot delete a pack between the check
        // below and the commit.
        let _guard = self.lock_file(false)?;
        let mut packs = Vec::with_capacity(file.packs.len());
        for p in &file.packs {
            let path = self.pack_path(p);
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::Denied(format!(
                        "snapshot refused: it references pack {p}, which the repository does not hold"
                    )))
                }
                Err(e) => return Err(Error::io(path, e)),
            };
            packs.push((*p, meta.len(), mtime_secs(&meta)));
        }
        // Monitoring's figure, best effort: a commit never fails for it.
        let usage = match self.usage(&packs) {
            Ok(u) => Some(u),
            Err(e) => {
                warn_usage(&e);
                None
            }
        };
        let id = SnapshotId::of(bytes);
        if self.snapshot_path(&id).exists() {
            return Err(Error::Conflict(format!("snapshot {id} exists already")));
        }
        // Counted before the snapshot is written: a copy of this directory
        // put back later shows a smaller count (see `commits`).
        crate::commits::bump(self)?;
        // The store's clock, never the client's, starts the lock window.
        let now = (self.clock)();
        let now = now.max(self.seen());
        self.note_time(now)?;
        let stamp = Stamp {
            usage,
            group,
            ..Stamp::new(now, &self.policy)
        };
        match self.write_stamp(&id, &stamp, false) {
            // A stamp left by an interrupted commit of the same snapshot: keep the earlier one.
            Ok(()) | Err(Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        write_once(&self.root.join("tmp"), &self.snapshot_path(&id), bytes)?;
        Ok(id)
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotId>> {
        let dir = self.root.join("snapshots");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_snapshot(&self, id: &SnapshotId) -> Result<Vec<u8>> {
        read_small(&self.snapshot_path(id), MAX_SNAPSHOT_BYTES)
    }

    fn stamp(&self, id: &SnapshotId) -> Result<Stamp> {
        let snap = self.snapshot_path(id);
        let meta = fs::metadata(&snap).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("snapshot {id}")),
            _ => Error::io(&snap, e),
        })?;
        match fs::read(self.stamp_path(id)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Corrupt(format!("stamp of snapshot {}: {e}", id.short()))),
            // No stamp (written by an older build): the file's time stands in.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Stamp::new(mtime_secs(&meta).unwrap_or(0), &self.policy))
            }
            Err(e) => Err(Error::io(self.stamp_path(id), e)),
        }
    }

    fn forget(&self, id: &SnapshotId) -> Result<()> {
        let _g = self.stamps_lock()?;
        let st = self.stamp(id)?;
        let now = (self.clock)();
        if let Some(why) =
            crate::clock_guard::refusal(self, self.seen(), crate::clock_guard::Check::Forget)?
        {
            return Err(Error::Denied(why));
        }
        retention::may_forget(*id, &st, now, self.seen())
            .map_err(|r| Error::Denied(r.to_string()))?;
        self.note_time(now)?;
        self.remove_snapshot(id)
    }

    fn repair(&self, id: &PackId) -> Result<bool> {
        let ok = crate::scrub::repair_pack(self, id)?;
        self.forget_handle(id);
        Ok(ok)
    }

    fn lock(&self, id: &SnapshotId, until: i64, hold: bool) -> Result<Stamp> {
        // A lock is a promise of storage: bounded, so a client cannot pin
        // space for ever (a legal hold is the explicit way to do that).
        let max = (self.clock)().saturating_add(MAX_LOCK_SECS);
        if until > max {
            return Err(Error::Denied(format!(
                "a lock may reach at most {} days ahead; use a legal hold to keep a snapshot longer",
                MAX_LOCK_SECS / retention::DAY_SECS
            )));
        }
        let _g = self.stamps_lock()?;
        let mut st = self.stamp(id)?;
        st.extend(until, hold);
        self.write_stamp(id, &st, true)?;
        Ok(st)
    }
}

/// A store-level setting kept as JSON in the repository directory, with a
/// default when the file is absent.
pub(crate) trait Setting: serde::Serialize + serde::de::DeserializeOwned + Default {
    /// Its file name in the repository directory.
    const FILE: &'static str;
    /// Checks a value read from the file or given by a user.
    fn check(&self) -> std::result::Result<(), String>;
}

impl Setting for Policy {
    const FILE: &'static str = "policy.json";
    fn check(&self) -> std::result::Result<(), String> {
        self.validate()
    }
}

impl Setting for crate::parity::ParityConfig {
    const FILE: &'static str = "parity.json";
    fn check(&self) -> std::result::Result<(), String> {
        self.validate()
    }
}

fn read_setting<T: Setting>(root: &Path) -> Result<T> {
    let path = root.join(T::FILE);
    match fs::read(&path) {
        Ok(b) => {
            let v: T = serde_json::from_slice(&b)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
            v.check().map_err(Error::Denied)?;
            Ok(v)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn valid_key_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_upload_is_write_once_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(&d.path().join("r")).unwrap();
        let bytes = b"pack bytes".to_vec();
        let id = PackId::of(&bytes);
        let mut u = s.upload_pack().unwrap();
        u.write_all(&bytes).unwrap();
        assert!(u.commit(id).unwrap());
        let mut u = s.upload_pack().unwrap();
        u.write_all(&bytes).unwrap();
        assert!(!u.commit(id).unwrap(), "second writer must not replace");
        let mut u = s.upload_pack().unwrap();
        u.write_all(b"other").unwrap();
        assert!(
            u.commit(id).is_err(),
            "a name must be the hash of the bytes"
        );
        assert_eq!(s.read_pack(&id, 0, bytes.len()).unwrap(), bytes);
        // nothing left in tmp
        assert_eq!(fs::read_dir(d.path().join("r/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn pack_spans_give_the_bytes_at_any_offset_and_length() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(&d.path().join("r")).unwrap();
        let bytes: Vec<u8> = (0..3 * 4096 + 1234u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let id = PackId::of(&bytes);
        let mut u = s.upload_pack().unwrap();
        u.write_all(&bytes).unwrap();
        assert!(u.commit(id).unwrap());
        let n = bytes.len();
        let mut buf = Vec::new();
        for (off, len) in [
            (0, 1),
            (0, n),
            (4095, 2),
            (4096, 4096),
            (5000, n - 5000),
            (n - 1, 1),
            (100, 8000),
        ] {
            let r = s.read_pack_span(&id, off as u64, len, &mut buf).unwrap();
            assert_eq!(&buf[r], &bytes[off..off + len], "{off}+{len}");
            // and through the cache, as where the file system refuses O_DIRECT
            s.direct_io
                .store(false, std::sync::atomic::Ordering::Relaxed);
            let r = s.read_pack_span(&id, off as u64, len, &mut buf).unwrap();
            assert_eq!(&buf[r], &bytes[off..off + len], "cached {off}+{len}");
            s.direct_io
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // and by the direct path itself, where the file system has one
            if let Some(r) = s.read_direct(&id, off as u64, len, &mut buf).unwrap() {
                assert_eq!(&buf[r], &bytes[off..off + len], "direct {off}+{len}");
            }
        }
        assert!(matches!(
            s.read_pack_span(&id, n as u64 - 10, 11, &mut buf),
            Err(Error::Corrupt(_))
        ));
        let missing = PackId::of(b"none");
        assert!(matches!(
            s.read_pack_span(&missing, 0, 1, &mut buf),
            Err(Error::NotFound(_))
        ));
    }

    /// A store whose clock the test sets.
    fn store_at(root: &Path, t: &Arc<std::sync::atomic::AtomicI64>) -> LocalStore {
        let t = t.clone();
        LocalStore::create(root)
            .unwrap()
            .with_clock(Arc::new(move || {
                t.load(std::sync::atomic::Ordering::SeqCst)
            }))
    }

    fn pack(s: &LocalStore, bytes: &[u8]) -> PackId {
        let id = PackId::of(bytes);
        let mut u = s.upload_pack().unwrap();
        u.write_all(bytes).unwrap();
        u.commit(id).unwrap();
        id
    }

    /// A snapshot file listing `packs`; the store never opens the sealed part.
    fn snapshot_file(packs: &[PackId], sealed: u8) -> Vec<u8> {
        let mut packs = packs.to_vec();
        packs.sort();
        let mut b = snapshot::MAGIC_SNAPSHOT.to_vec();
        b.extend((packs.len() as u32).to_le_bytes());
        for p in &packs {
            b.extend(p.as_bytes());
        }
        b.push(sealed);
        b
    }

    fn usage(new_bytes: u64, referenced_bytes: u64) -> Option<SnapshotUsage> {
        Some(SnapshotUsage {
            new_bytes,
            referenced_bytes,
        })
    }

    #[test]
    fn usage_is_best_effort_and_never_fails_a_commit() {
        let d = tempfile::tempdir().unwrap();
        let t = Arc::new(std::sync::atomic::AtomicI64::new(1000));
        let set = |v| t.store(v, std::sync::atomic::Ordering::SeqCst);
        let s = store_at(&d.path().join("r"), &t);
        let a = pack(&s, b"aaaa");
        let s1 = s.write_snapshot(&snapshot_file(&[a], 1), None).unwrap();
        assert_eq!(s.stamp(&s1).unwrap().usage, usage(4, 4));
        set(1010);
        let b = pack(&s, b"bbbbbb");
        let s2 = s.write_snapshot(&snapshot_file(&[a, b], 2), None).unwrap();
        assert_eq!(s.stamp(&s2).unwrap().usage, usage(6, 10));
        // a corrupt stamp is skipped: the commit goes through, measured
        // against the latest readable one
        fs::write(s.stamp_path(&s2), b"{garbage").unwrap();
        set(1020);
        let s3 = s.write_snapshot(&snapshot_file(&[a, b], 3), None).unwrap();
        assert_eq!(s.stamp(&s3).unwrap().usage, usage(6, 10));
        let (listed, skipped) = s.stamps().unwrap();
        assert_eq!(
            listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![s1, s3]
        );
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].to_string().contains(&s2.short()),
            "{}",
            skipped[0]
        );
        // an unreadable previous snapshot: committed without usage
        fs::write(s.snapshot_path(&s3), b"garbage").unwrap();
        set(1030);
        let s4 = s.write_snapshot(&snapshot_file(&[a], 4), None).unwrap();
        assert_eq!(s.stamp(&s4).unwrap().usage, None);
    }

    #[test]
    fn new_bytes_survive_a_clock_stepped_back() {
        let d = tempfile::tempdir().unwrap();
        let t = Arc::new(std::sync::atomic::AtomicI64::new(2000));
        let s = store_at(&d.path().join("r"), &t);
        let a = pack(&s, b"aaaa");
        s.write_snapshot(&snapshot_file(&[a], 1), None).unwrap();
        t.store(1500, std::sync::atomic::Ordering::SeqCst);
        let b = pack(&s, b"bbbbbb");
        let s2 = s.write_snapshot(&snapshot_file(&[a, b], 2), None).unwrap();
        assert_eq!(s.stamp(&s2).unwrap().usage, usage(6, 10));
    }

    /// Packs in many shards: old and young, referenced and not.
    fn shard_fixture(
        s: &LocalStore,
        t: &Arc<std::sync::atomic::AtomicI64>,
        t0: i64,
    ) -> (Vec<PackId>, Vec<PackId>, Vec<PackId>, Vec<PackId>) {
        let set = |v| t.store(v, std::sync::atomic::Ordering::SeqCst);
        let (mut old, mut young) = (Vec::new(), Vec::new());
        set(t0);
        for i in 0u32..40 {
            old.push(pack(s, format!("old pack {i}").as_bytes()));
        }
        set(t0 + 2 * retention::DAY_SECS);
        for i in 0u32..40 {
            young.push(pack(s, format!("young pack {i}").as_bytes()));
        }
        let (old_ref, old_free) = (old[..20].to_vec(), old[20..].to_vec());
        let (young_ref, young_free) = (young[..20].to_vec(), young[20..].to_vec());
        // two snapshots, overlapping
        let mut first = old_ref[..12].to_vec();
        first.extend(&young_ref[..5]);
        let mut second = old_ref[8..].to_vec();
        second.extend(&young_ref[5..]);
        s.write_snapshot(&snapshot_file(&first, 1), None).unwrap();
        s.write_snapshot(&snapshot_file(&second, 2), None).unwrap();
        (old_ref, old_free, young_ref, young_free)
    }

    #[test]
    fn prune_collects_shard_by_shard() {
        let d = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
        let s = store_at(&d.path().join("r"), &t)
            .with_parity(crate::parity::ParityConfig { k: 4, m: 1 });
        let (old_ref, old_free, young_ref, young_free) = shard_fixture(&s, &t, t0);
        let shards = |ids: &[PackId]| {
            ids.iter()
                .map(|p| p.as_bytes()[0])
                .collect::<HashSet<_>>()
                .len()
        };
        assert!(
            shards(&old_free) > 5 && shards(&old_ref) > 5,
            "spread over shards"
        );
        crate::scrub::protect(&s, s.parity()).unwrap();
        // past the grace period of the old packs only
        t.store(
            t0 + 3 * retention::DAY_SECS,
            std::sync::atomic::Ordering::SeqCst,
        );
        let rep = s.prune().unwrap();
        assert_eq!(rep.refused, None);
        assert_eq!(rep.snapshots_kept, 2);
        assert_eq!(rep.packs_removed, 20);
        assert_eq!(rep.packs_kept, 60);
        let mut expect = 0;
        for (i, p) in old_free.iter().enumerate() {
            assert_eq!(s.pack_size(p).unwrap(), None, "old unreferenced {i}");
            expect += format!("old pack {}", i + 20).len() as u64;
        }
        assert_eq!(rep.bytes_freed, expect);
        for p in old_ref.iter().chain(&young_ref).chain(&young_free) {
            assert!(s.pack_size(p).unwrap().is_some(), "kept {p}");
        }
        // the scratch databases are gone
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
        // parity forgot the collected packs: a scrub does not bring them back
        crate::scrub::scrub(&s, s.parity(), &Default::default()).unwrap();
        for p in &old_free {
            assert_eq!(s.pack_size(p).unwrap(), None, "restored {p}");
        }
        // later, the young unreferenced ones go too
        t.store(
            t0 + 5 * retention::DAY_SECS,
            std::sync::atomic::Ordering::SeqCst,
        );
        let rep = s.prune().unwrap();
        assert_eq!((rep.packs_removed, rep.packs_kept), (20, 40));
        for p in &young_free {
            assert_eq!(s.pack_size(p).unwrap(), None);
        }
    }

    #[test]
    fn prune_failing_midway_still_makes_parity_forget_what_it_deleted() {
        let d = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
        let s = store_at(&d.path().join("r"), &t)
            .with_parity(crate::parity::ParityConfig { k: 4, m: 1 });
        let (_, old_free, _, _) = shard_fixture(&s, &t, t0);
        crate::scrub::protect(&s, s.parity()).unwrap();
        // A shard after every other one that cannot be listed (a symlink
        // loop fails for root too).
        let bad = s.root().join("packs").join("zz");
        std::os::unix::fs::symlink(&bad, &bad).unwrap();
        t.store(
            t0 + 3 * retention::DAY_SECS,
            std::sync::atomic::Ordering::SeqCst,
        );
        assert!(s.prune().is_err(), "the broken shard must fail the prune");
        fs::remove_file(&bad).unwrap();
        let deleted: Vec<_> = old_free
            .iter()
            .filter(|p| s.pack_size(p).unwrap().is_none())
            .collect();
        assert!(!deleted.is_empty(), "the shards before it were collected");
        // parity forgot them: a scrub does not bring them back
        crate::scrub::scrub(&s, s.parity(), &Default::default()).unwrap();
        for p in deleted {
            assert_eq!(s.pack_size(p).unwrap(), None, "restored {p}");
        }
    }

    #[test]
    fn prune_collects_nothing_when_a_snapshot_is_unreadable() {
        let d = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000;
        let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
        let s = store_at(&d.path().join("r"), &t);
        let (old_ref, old_free, _, _) = shard_fixture(&s, &t, t0);
        let bad = s
            .write_snapshot(&snapshot_file(&old_ref[..1], 3), None)
            .unwrap();
        fs::write(s.snapshot_path(&bad), b"garbage").unwrap();
        t.store(
            t0 + 10 * retention::DAY_SECS,
            std::sync::atomic::Ordering::SeqCst,
        );
        let rep = s.prune().unwrap();
        let why = rep.refused.unwrap();
        assert!(
            why.contains("unreadable") && why.contains(&bad.to_hex()),
            "{why}"
        );
        assert_eq!(rep.packs_removed, 0);
        for p in &old_free {
            assert!(s.pack_size(p).unwrap().is_some(), "kept {p}");
        }
        assert_eq!(fs::read_dir(s.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn bad_settings_files_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        LocalStore::create(&root).unwrap();
        fs::write(root.join("parity.json"), b"{\"k\": 0, \"m\": 1}").unwrap();
        let e = LocalStore::open_dir(&root).err().unwrap().to_string();
        assert!(e.contains("parity 0+1"), "{e}");
        fs::remove_file(root.join("parity.json")).unwrap();
        fs::write(root.join("policy.json"), b"not json").unwrap();
        let e = LocalStore::open_dir(&root).err().unwrap().to_string();
        assert!(e.contains("policy.json"), "{e}");
        fs::write(
            root.join("policy.json"),
            b"{\"lock_secs\": 100, \"retention_secs\": 10, \"grace_secs\": 0}",
        )
        .unwrap();
        let e = LocalStore::open_dir(&root).err().unwrap().to_string();
        assert!(e.contains("lock window"), "{e}");
    }

    #[test]
    fn prune_sweeps_what_killed_writers_left_in_tmp() {
        let d = tempfile::tempdir().unwrap();
        // The real clock: the running upload's file is written now.
        let t0 = system_clock()();
        let t = Arc::new(std::sync::atomic::AtomicI64::new(t0));
        let s = store_at(&d.path().join("r"), &t);
        let tmp = d.path().join("r").join("tmp");
        let at = |secs: i64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        // A partial upload of a killed backup, idle for three days, and one
        // written to an hour ago (a backup still running).
        let (stale, live) = (tmp.join("stale.tmp"), tmp.join("live.tmp"));
        for (p, when) in [(&stale, t0 - 3 * retention::DAY_SECS), (&live, t0 - 3600)] {
            let f = File::create(p).unwrap();
            f.set_modified(at(when)).unwrap();
        }
        // An upload in progress through the store keeps its file too.
        let mut u = s.upload_pack().unwrap();
        u.write_all(b"half a pack").unwrap();
        let rep = s.prune().unwrap();
        assert_eq!(rep.tmp_removed, 1);
        assert!(!stale.exists() && live.exists());
        let id = PackId::of(b"half a pack");
        assert!(u.commit(id).unwrap(), "the running upload still commits");
        assert_eq!(s.pack_size(&id).unwrap(), Some(11));
    }
}
