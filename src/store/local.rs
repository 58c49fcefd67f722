//! A repository in a local directory: its layout, locks, stamps, the
//! store clock and the figures a commit records.

use super::*;

/// A repository in a local directory.
pub struct LocalStore {
    pub(super) root: PathBuf,
    pub(super) handles: Mutex<HashMap<PackId, Handle>>,
    pub(super) policy: Policy,
    pub(super) parity: crate::parity::ParityConfig,
    pub(super) clock: Clock,
    /// Whether the kernel's boot clocks stand beside `clock` (not beside a
    /// test's clock): see `clock_guard`.
    pub(super) kernel_clocks: bool,
    /// Cleared once the file system refuses O_DIRECT: spans are then read
    /// through the cache without trying again for each one.
    pub(super) direct_io: std::sync::atomic::AtomicBool,
    /// The bucket every object is written to before it is visible here,
    /// when the namespace lives on an object store (see `bucket`).
    pub(super) bucket: Option<Arc<Bucket>>,
}

pub(super) const OPEN_HANDLES: usize = 64;

/// `REPO/collecting`: present while packs a prune deleted may still be in
/// the parity of their stripes (see [`LocalStore::prune`]).
pub(super) const COLLECTING: &str = "collecting";

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
            bucket: None,
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

    /// Writes every object to `bucket` before it is visible here: the
    /// directory becomes a copy of the bucket that
    /// [`Bucket::rebuild`] can make again.
    pub fn with_bucket(mut self, bucket: Arc<Bucket>) -> Self {
        self.bucket = Some(bucket);
        self
    }

    /// The bucket under this store, if it has one.
    pub fn bucket(&self) -> Option<&Arc<Bucket>> {
        self.bucket.as_ref()
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
    pub(super) fn write_setting<T: Setting>(&self, v: &T) -> Result<()> {
        v.check().map_err(Error::Denied)?;
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec_pretty(v).expect("setting JSON");
        if let Some(b) = &self.bucket {
            b.put_record(T::FILE, &bytes, 0, false, self.now())?;
        }
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

    /// Changes the retention rules of a local repository, by its owner's
    /// word: checked, appended to `operator.log` (who, the rules before and
    /// after) and then written in place of `REPO/policy.json`. Stamps
    /// already given keep their lock and expiry; the next sweep applies the
    /// new keep rules and new commits get the new lock and retention.
    pub fn replace_policy(&self, p: &Policy, by: &str) -> Result<()> {
        p.validate().map_err(Error::Denied)?;
        let before = self.policy;
        append_operator_log(
            &self.root,
            &serde_json::json!({
                "time": retention::fmt_time((self.clock)()), "action": "policy-set",
                "by": by, "from": before, "to": p,
            }),
        )?;
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec_pretty(p).expect("policy JSON");
        if let Some(b) = &self.bucket {
            b.put_record("policy.json", &bytes, 0, false, self.now())?;
        }
        replace_file(
            &self.root.join("tmp"),
            &self.root.join("policy.json"),
            &bytes,
        )
    }

    pub(super) fn stamp_path(&self, id: &SnapshotId) -> PathBuf {
        self.root
            .join("snapshots")
            .join(format!("{}.stamp", id.to_hex()))
    }

    /// The latest time this store has seen, so a clock that goes back is noticed.
    pub(crate) fn seen(&self) -> i64 {
        read_seen(&self.root)
    }

    pub(super) fn note_time(&self, now: i64) -> Result<()> {
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
    pub(super) fn lock_target(&self, name: &str) -> Result<(File, PathBuf)> {
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
        if let Some(b) = &self.bucket {
            // The bucket first, locked as the stamp says: a lock or hold
            // is in force there before it is reported here.
            let rel = format!("snapshots/{}.stamp", id.to_hex());
            b.put_record(&rel, &bytes, st.locked_until, st.hold, self.now())?;
        }
        if !replace {
            return write_once(&self.root.join("tmp"), &path, &bytes);
        }
        replace_file(&self.root.join("tmp"), &path, &bytes)
    }

    pub(super) fn remove_snapshot(&self, id: &SnapshotId) -> Result<()> {
        let p = self.snapshot_path(id);
        // its lock, for the bucket's purge: read before the stamp goes
        let locked_until = self.stamp(id).map_or(0, |st| st.locked_until);
        fs::remove_file(&p).at(&p)?;
        let _ = fs::remove_file(self.stamp_path(id));
        fsync_dir(&self.root.join("snapshots"))?;
        if let Some(b) = &self.bucket {
            // Markers: the locked versions stay until their retention
            // lapses, then a sweep purges them.
            b.collected(&format!("snapshots/{}", id.to_hex()), locked_until)?;
            b.collected(&format!("snapshots/{}.stamp", id.to_hex()), locked_until)?;
        }
        Ok(())
    }

    /// Locks snapshot `id`'s packs and file in the bucket at least until
    /// `st.locked_until` (held when `st.hold`). Returns the requests made
    /// (none where `bucket.db` says they are covered); nothing without a
    /// bucket.
    pub fn lock_in_bucket(&self, id: &SnapshotId, st: &Stamp) -> Result<u64> {
        let Some(b) = &self.bucket else {
            return Ok(0);
        };
        let now = self.now();
        let bytes = self.read_snapshot(id)?;
        let file = snapshot::decode(&bytes)?;
        let slack = bucket::slack(&self.policy);
        let n = b.cover_packs(&file.packs, st.locked_until, st.hold, slack, now, &|p| {
            self.pack_path(p)
        })?;
        let rel = format!("snapshots/{}", id.to_hex());
        b.extend(&rel, st.locked_until, st.hold, now)?;
        Ok(n)
    }

    /// The retain-until a pack written to the bucket now gets: the lock
    /// window and the slack.
    pub fn bucket_until(&self, now: i64) -> i64 {
        bucket::pack_until(&self.policy, now)
    }

    /// Takes the bucket's legal holds off snapshot `id` after its hold
    /// was released here: its file, every version of its stamp, and each
    /// of its packs that no other held snapshot references. Called under
    /// the stamps lock, after the stamp says the hold is off.
    pub fn release_bucket_hold(&self, id: &SnapshotId) -> Result<()> {
        let Some(b) = &self.bucket else {
            return Ok(());
        };
        let hex = id.to_hex();
        b.release_hold(&format!("snapshots/{hex}"))?;
        b.release_hold(&format!("snapshots/{hex}.stamp"))?;
        let mine = snapshot::decode(&self.read_snapshot(id)?)?.packs;
        // What the other held snapshots need stays held (a held snapshot
        // is the operator's rare act: their pack lists are read whole).
        let mut still = HashSet::new();
        for other in self.list_snapshots()? {
            if other == *id || !self.stamp(&other).is_ok_and(|st| st.hold) {
                continue;
            }
            still.extend(snapshot::decode(&self.read_snapshot(&other)?)?.packs);
        }
        for p in mine.iter().filter(|p| !still.contains(*p)) {
            b.release_hold(&bucket::pack_rel(p))?;
        }
        Ok(())
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
    pub(super) fn newest_stamp(&self) -> Result<Option<(SnapshotId, Stamp)>> {
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
    pub(super) fn commit_order(&self, id: SnapshotId) -> Result<Option<(CommitKey, Stamp)>> {
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
    pub(super) fn usage(&self, packs: &[(PackId, u64, Option<i64>)]) -> Result<SnapshotUsage> {
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

    pub(super) fn snapshot_path(&self, id: &SnapshotId) -> PathBuf {
        self.root.join("snapshots").join(id.to_hex())
    }

    pub(super) fn short_read(&self, id: &PackId, e: io::Error) -> Error {
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
    pub(super) fn read_direct(
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
    pub(super) fn handle(&self, id: &PackId) -> Result<Arc<File>> {
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
pub(super) fn within_any_pack(id: &PackId, offset: u64, len: usize) -> Result<()> {
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
pub(super) struct Handle {
    pub(super) file: Arc<File>,
    pub(super) dev: u64,
    pub(super) ino: u64,
}

/// Reads what opening a repository reads next into the page cache: the
/// snapshot files, and the pack directories with their entries' inodes (a
/// pack listing stats every pack). Errors are left to the real readers.
pub(super) fn warm_dirs(root: &Path) {
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
pub(super) type CommitKey = (i64, Option<std::time::SystemTime>, SnapshotId);

/// A snapshot's usage could not be computed; it is committed without.
pub(super) fn warn_usage(e: &Error) {
    #[cfg(feature = "net")]
    tracing::warn!("snapshot committed without usage figures: {e}");
    #[cfg(not(feature = "net"))]
    let _ = e;
}

pub(super) fn read_small(path: &Path, max: usize) -> Result<Vec<u8>> {
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
pub(super) fn mtime_secs(m: &fs::Metadata) -> Option<i64> {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}
