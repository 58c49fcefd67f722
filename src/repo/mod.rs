//! The client engine over a [`Store`]: unlocking keys, the cache, reading
//! blobs, and the backup, restore and check operations in its submodules.
//! Owns the order of operations (packs before snapshots); it never parses
//! bytes itself (that is [`crate::format`]).

pub mod backup;
mod batch;
pub mod check;
pub mod diff;
pub mod dump;
pub mod dump_tar;
pub mod exclude;
pub mod filter;
pub mod find;
mod parent_image;
mod readahead;
pub mod restore;
pub mod restore_plan;
mod reused;
pub mod seen;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::OsRng;
use rand::RngCore;

use crate::cache::{BlobLocation, Cache};
use crate::crypto::{Keys, Kind, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::blob::Plain;
use crate::format::chunklist::{self, ChunkRef};
use crate::format::config::{ConfigFile, Settings};
use crate::format::keyfile::{KdfParams, KeyFile};
use crate::format::pack::{self, PackEntry, TRAILER_LEN};
use crate::format::snapshot::{self, SnapshotRecord};
use crate::format::tree::{Node, Tree};
use crate::format::FormatError;
use crate::id::{BlobId, PackId, RepoId, SnapshotId};
use crate::store::{LocalStore, Store};

/// Choices made when a repository is created.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Argon2id cost of the first key file.
    pub kdf: KdfParams,
    /// Chunk sizes, pack size, compression.
    pub settings: Settings,
    /// Host name recorded in the key file.
    pub host: String,
    /// Creation time recorded in the key file (seconds).
    pub now: i64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::DEFAULT,
            settings: Settings::default(),
            host: String::new(),
            now: 0,
        }
    }
}

/// A snapshot: its id, decrypted record and the packs it references.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The snapshot file's name.
    pub id: SnapshotId,
    /// What the client recorded.
    pub record: SnapshotRecord,
    /// The packs it references.
    pub packs: Vec<PackId>,
    /// What the store recorded (received, lock, expiry), by its clock.
    pub stamp: Option<crate::retention::Stamp>,
}

/// The cache database's file in a repository's cache directory.
const CACHE_FILE: &str = "cache.db";
/// The name of the key file that opened the repository last, in its cache
/// directory.
const LAST_KEY_FILE: &str = "last-key";

/// An open, unlocked repository.
pub struct Repository {
    store: Arc<dyn Store>,
    keys: Arc<Keys>,
    master: MasterKey,
    key_name: String,
    id: RepoId,
    settings: Settings,
    cache_dir: PathBuf,
    /// Whether the cache was checked whole in this process (the check runs
    /// at the first open only).
    cache_verified: std::sync::atomic::AtomicBool,
    /// Whether the cache was set aside and built anew in this process.
    cache_rebuilt: std::sync::atomic::AtomicBool,
    /// Told, in one line, what the engine did on its own (a key file
    /// skipped, a damaged cache moved aside).
    notice: Notice,
}

/// Where [`Repository`] says what it did on its own.
pub type Notice = Arc<dyn Fn(&str) + Send + Sync>;

/// A key file's name: 16 random bytes in hex.
fn new_key_name() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The snapshots of a repository, as [`Repository::snapshots`] found them.
#[derive(Debug, Default)]
pub struct Snapshots {
    /// Those that open, oldest first.
    pub good: Vec<Snapshot>,
    /// Those that do not (damaged, or not sealed with this repository's
    /// key), by id, with why.
    pub unopened: Vec<(SnapshotId, Error)>,
}

/// What syncing the cache with the repository found.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    /// Headers read and added.
    pub added: u64,
    /// Packs the cache knew that the repository no longer holds.
    pub removed: u64,
    /// Packs whose header could not be read: name and reason.
    pub unreadable: Vec<(PackId, String)>,
}

impl SyncReport {
    /// One line for each pack whose header does not open. Such a pack is
    /// never reused, and no source entry was lost for it: a backup reports
    /// it apart from entries it could not read. Whether it is damage (a
    /// snapshot lists it) or a foreign object is for `check` to say.
    pub fn notices(&self) -> Vec<String> {
        self.unreadable
            .iter()
            .map(|(p, e)| {
                format!("pack {p} does not open with this repository's key, not reused: {e}")
            })
            .collect()
    }
}

impl Repository {
    /// Creates a repository in a local directory.
    pub fn init(path: &Path, passphrase: &[u8], opts: &InitOptions) -> Result<RepoId> {
        let store = LocalStore::create(path)?;
        Self::init_store(&store, passphrase, opts)
    }

    /// Creates a repository in any store: a master key, its first key file,
    /// the sealed config.
    pub fn init_store(store: &dyn Store, passphrase: &[u8], opts: &InitOptions) -> Result<RepoId> {
        opts.settings.validate()?;
        let mut rid = [0u8; 32];
        OsRng.fill_bytes(&mut rid);
        let id = RepoId(rid);
        let master = MasterKey::generate(&mut OsRng);
        let keys = Keys::derive(&master);
        let kf = KeyFile::create(
            &master,
            passphrase,
            opts.kdf,
            id,
            opts.now,
            opts.host.clone(),
            &mut OsRng,
        )?;
        store.write_key(&new_key_name(), &kf.encode())?;
        let cfg = ConfigFile::create(&keys, id, &opts.settings, &mut OsRng);
        store.write_config(&cfg.encode())?;
        Ok(id)
    }

    /// Opens a local repository, with the cache in the default place.
    pub fn open(path: &Path, passphrase: &[u8]) -> Result<Repository> {
        Self::open_store(
            Arc::new(LocalStore::open(path)?),
            passphrase,
            &default_cache_dir(),
        )
    }

    /// Opens a repository in any store: tries each key file with the
    /// passphrase, then opens the sealed config.
    pub fn open_store(
        store: Arc<dyn Store>,
        passphrase: &[u8],
        cache_root: &Path,
    ) -> Result<Repository> {
        Self::open_store_with(store, passphrase, cache_root, Arc::new(|_| {}))
    }

    /// [`Repository::open_store`], telling `notice` of what it does on its
    /// own (a key file refused, later a damaged cache moved aside). The key
    /// file that opened the repository last time is tried first (its name
    /// is remembered in the cache directory, in a file of its own that
    /// outlives a rebuilt cache database), so a key file planted to sort
    /// first costs nothing while the passphrase is unchanged; any other is
    /// refused before its KDF runs if its parameters are outside the floor
    /// and ceiling (see [`KdfParams::check`]).
    pub fn open_store_with(
        store: Arc<dyn Store>,
        passphrase: &[u8],
        cache_root: &Path,
        notice: Notice,
    ) -> Result<Repository> {
        let cfg = ConfigFile::decode(&store.read_config()?)?;
        let cache_dir = cache_root.join(cfg.id.to_hex());
        // The disk starts on what comes next while the key is derived.
        crate::cache::prefetch(&cache_dir.join(CACHE_FILE));
        store.warm();
        let remembered = std::fs::read_to_string(cache_dir.join(LAST_KEY_FILE)).ok();
        let (mut last_refusal, mut tried) = (None, false);
        // Key files are small: all are read first, so that after the
        // remembered one the cheapest KDF runs first, and a costly file
        // planted to sort first (within the ceiling) runs last, if at all.
        let mut files = Vec::new();
        for name in store.list_keys()? {
            match KeyFile::decode(&store.read_key(&name)?) {
                Ok(kf) if kf.repo == cfg.id => files.push((name, kf)),
                Ok(_) => {}
                Err(e) => last_refusal = Some(Error::KeyRefused(e.to_string())),
            }
        }
        let is_remembered = |n: &str| remembered.as_deref().map(str::trim) == Some(n);
        files.sort_by_key(|(name, kf)| {
            let cost = u64::from(kf.params.memory_kib) * u64::from(kf.params.iterations);
            (!is_remembered(name), cost, name.clone())
        });
        for (name, kf) in files {
            match kf.open(passphrase) {
                Ok(master) => {
                    let keys = Keys::derive(&master);
                    // A key file sealed under this passphrase can still wrap
                    // another master key (planted by a client that knows
                    // the passphrase): it must not stop the real one.
                    let settings = match cfg.open(&keys) {
                        Ok(s) => s,
                        Err(e) => {
                            notice(&format!(
                                "warning: key file {name} opens with this passphrase but not the repository's config ({e}); skipped"
                            ));
                            tried = true;
                            continue;
                        }
                    };
                    if !is_remembered(&name) {
                        // Only an ordering hint: failing to write it costs
                        // the next run time, never a wrong answer.
                        let _ = std::fs::create_dir_all(&cache_dir)
                            .and_then(|()| std::fs::write(cache_dir.join(LAST_KEY_FILE), &name));
                    }
                    return Ok(Repository {
                        store,
                        keys: Arc::new(keys),
                        master,
                        key_name: name,
                        id: cfg.id,
                        settings,
                        cache_dir,
                        cache_verified: Default::default(),
                        cache_rebuilt: Default::default(),
                        notice,
                    });
                }
                Err(FormatError::Crypto(_)) => tried = true,
                // A weakened, too costly or malformed key file: say so, by
                // name, and go on to the next; if none opens, say so rather
                // than "wrong passphrase".
                Err(e) => {
                    notice(&format!("warning: key file {name} skipped: {e}"));
                    last_refusal = Some(Error::KeyRefused(format!("key file {name}: {e}")));
                }
            }
        }
        // A key file that ran its KDF and did not open: the passphrase is
        // wrong, whatever other key files were refused on the way.
        match last_refusal {
            Some(e) if !tried => Err(e),
            _ => Err(Error::WrongPassphrase),
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    /// The subkeys.
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }
    /// The repository's id.
    pub fn id(&self) -> RepoId {
        self.id
    }
    /// Settings fixed at init.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    /// Name of the key file that opened the repository.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    fn cache_path(&self) -> PathBuf {
        self.cache_dir.join(CACHE_FILE)
    }

    /// Opens the local cache database of this repository. The first open in
    /// a process checks it whole (see [`crate::cache_trust::verify`]); a
    /// damaged one is moved aside and an empty one started, to be filled by
    /// [`Repository::sync_cache`] from the repository.
    pub fn cache(&self) -> Result<Cache> {
        use std::sync::atomic::Ordering;
        let path = self.cache_path();
        let mut cache = if self.cache_verified.load(Ordering::SeqCst) {
            Cache::open(&path)?
        } else {
            match Cache::open_verified(&path) {
                Err(e) if crate::cache_trust::is_damage(&e) => {
                    self.set_cache_aside(&e)?;
                    Cache::open(&path)?
                }
                r => r?,
            }
        };
        self.cache_verified.store(true, Ordering::SeqCst);
        cache.set_row_key(crate::cache_trust::RowKey::new(self.keys.cache_row_key()));
        Ok(cache)
    }

    /// Says, in one line, what the engine did on its own.
    pub(crate) fn notify(&self, what: &str) {
        (self.notice)(what)
    }

    /// Whether this process built the cache anew (it was damaged, or
    /// wrong): it then holds exactly what the repository's headers say.
    pub fn cache_rebuilt(&self) -> bool {
        self.cache_rebuilt.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Mends the blob rows the cache found not to check since it was
    /// opened: removes them, and reads again from their headers the packs
    /// they named, if the repository holds them. Returns the rows mended.
    pub fn mend_cache(&self, cache: &mut Cache) -> Result<usize> {
        let bad = cache.take_bad_rows();
        if bad.is_empty() {
            return Ok(0);
        }
        let mut packs = std::collections::BTreeSet::new();
        for (id, pack) in &bad {
            cache.remove_row(id, pack)?;
            packs.extend(PackId::from_slice(pack));
        }
        for p in &packs {
            cache.remove_pack(p)?;
            if let Some(size) = self.store.pack_size(p)? {
                // A header that does not read leaves the pack unknown: the
                // next sync tries again and reports it.
                if let Ok(entries) = self.read_pack_header(p, size) {
                    cache.add_pack(p, size, &entries)?;
                }
            }
        }
        (self.notice)(&format!(
            "the local cache held {} blob rows that did not match their checksum; not used, and the rows of {} packs read again from their headers",
            bad.len(),
            packs.len()
        ));
        Ok(bad.len())
    }

    /// Moves the damaged cache database aside, so the next open starts an
    /// empty one, and says so. `why` is the damage found. Every connection
    /// to it must be closed.
    pub fn set_cache_aside(&self, why: &Error) -> Result<()> {
        let aside = crate::cache_trust::set_aside(&self.cache_path())?;
        self.cache_rebuilt
            .store(true, std::sync::atomic::Ordering::SeqCst);
        (self.notice)(&format!(
            "the local cache was damaged or wrong ({why}); moved aside to {} and rebuilding it from the repository",
            aside.display()
        ));
        Ok(())
    }

    /// Brings the cache in line with the repository: reads the header of
    /// every pack it does not know, forgets packs that are gone. Pack by
    /// pack, so memory stays flat. A cache found damaged on the way is
    /// moved aside and `cache` replaced by one built anew.
    pub fn sync_cache(&self, cache: &mut Cache) -> Result<SyncReport> {
        match self.sync_cache_once(cache) {
            Err(e) if crate::cache_trust::is_damage(&e) => {
                cache.close();
                self.set_cache_aside(&e)?;
                *cache = Cache::open(&self.cache_path())?;
                self.sync_cache_once(cache)
            }
            r => r,
        }
    }

    fn sync_cache_once(&self, cache: &mut Cache) -> Result<SyncReport> {
        let mut rep = SyncReport::default();
        // One listing of the repository, no request per pack: its names go
        // to a temporary table so the packs that vanished can be found.
        let mut batch = Vec::with_capacity(4096);
        self.store.for_each_pack(&mut |id, size| {
            batch.push(id);
            if batch.len() == 4096 {
                cache.note_listed(&batch)?;
                batch.clear();
            }
            if cache.has_pack(&id)? {
                return Ok(());
            }
            match self.read_pack_header(&id, size) {
                Ok(entries) => {
                    cache.add_pack(&id, size, &entries)?;
                    rep.added += 1;
                }
                Err(e) => rep.unreadable.push((id, e.to_string())),
            }
            Ok(())
        })?;
        cache.note_listed(&batch)?;
        for id in cache.unlisted_packs()? {
            cache.remove_pack(&id)?;
            rep.removed += 1;
        }
        Ok(rep)
    }

    /// Reads and opens the blob table at the end of a pack of `size` bytes.
    pub fn read_pack_header(&self, id: &PackId, size: u64) -> Result<Vec<PackEntry>> {
        let tail_len = size.min(64 << 10) as usize;
        let tail = self.store.read_pack(id, size - tail_len as u64, tail_len)?;
        let hlen =
            pack::decode_trailer(&tail[tail.len().saturating_sub(TRAILER_LEN)..], size)? as usize;
        let sealed = if hlen + TRAILER_LEN <= tail.len() {
            tail[tail.len() - TRAILER_LEN - hlen..tail.len() - TRAILER_LEN].to_vec()
        } else {
            self.store
                .read_pack(id, size - (TRAILER_LEN + hlen) as u64, hlen)?
        };
        Ok(pack::open_header(&self.keys, &sealed, size)?)
    }

    /// Reads and opens one blob at a known location (repairing its pack
    /// from parity first, when the store can, if it turns out damaged).
    pub fn read_blob_at(&self, loc: &BlobLocation, kind: Kind, id: &BlobId) -> Result<Vec<u8>> {
        restore::read_or_repair(self.store.as_ref(), &self.keys, loc, kind, id).map(Plain::into_vec)
    }

    /// Looks a blob up in the cache and reads it.
    pub fn read_blob(&self, cache: &Cache, kind: Kind, id: &BlobId) -> Result<Vec<u8>> {
        self.read_blob_at(&locate(cache, id)?, kind, id)
    }

    /// Reads a directory tree.
    pub fn load_tree(&self, cache: &Cache, id: &BlobId) -> Result<Tree> {
        Ok(Tree::decode(&self.read_blob(cache, Kind::Tree, id)?)?)
    }

    /// Calls `f` with each piece of a file's content, in order, reading list
    /// blobs one at a time.
    pub fn for_each_chunk(
        &self,
        cache: &Cache,
        node: &Node,
        f: &mut dyn FnMut(ChunkRef) -> Result<()>,
    ) -> Result<()> {
        if let Some(inline) = &node.chunks {
            for r in chunklist::decode(inline)? {
                f(r)?;
            }
        }
        for list in node.lists.iter().flatten() {
            for r in chunklist::decode(&self.read_blob(cache, Kind::ChunkList, list)?)? {
                f(r)?;
            }
        }
        Ok(())
    }

    /// Reads one snapshot.
    pub fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let bytes = self.store.read_snapshot(id)?;
        if SnapshotId::of(&bytes) != *id {
            return Err(Error::Corrupt(format!(
                "snapshot {id} does not open: its file does not hash to its name"
            )));
        }
        let unopened = |e: FormatError| Error::Corrupt(format!("snapshot {id} does not open: {e}"));
        let file = snapshot::decode(&bytes).map_err(unopened)?;
        let record = snapshot::open_record(&self.keys, &file).map_err(unopened)?;
        Ok(Snapshot {
            id: *id,
            record,
            packs: file.packs,
            stamp: self.store.stamp(id).ok(),
        })
    }

    /// Every snapshot that opens, oldest first, and apart those that do
    /// not. A snapshot file that is damaged, or that a client without the
    /// key planted (the store cannot tell: it holds no key), must not hide
    /// the history around it. Failures to reach the store are errors.
    pub fn snapshots(&self) -> Result<Snapshots> {
        let mut out = Snapshots::default();
        for id in self.store.list_snapshots()? {
            match self.load_snapshot(&id) {
                Ok(s) => out.good.push(s),
                Err(e) if e.kind() == ErrorKind::Corrupt => out.unopened.push((id, e)),
                // Forgotten since it was listed.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.good.sort_by_key(|s| (s.record.time_ns, s.id));
        Ok(out)
    }

    /// Resolves `latest` (the newest snapshot that opens) or a unique id
    /// prefix, and opens it.
    pub fn find_snapshot(&self, spec: &str) -> Result<Snapshot> {
        self.find_snapshot_in(spec, &filter::SnapshotFilter::default())
    }

    /// Like [`Repository::find_snapshot`], with `latest` meaning the newest
    /// snapshot that opens and that `filter` takes. An id prefix names its
    /// snapshot whatever the filter says, as restic reads them.
    pub fn find_snapshot_in(
        &self,
        spec: &str,
        filter: &filter::SnapshotFilter,
    ) -> Result<Snapshot> {
        if spec == "latest" {
            let mut good = self.snapshots()?.good;
            good.retain(|s| filter.matches(&s.record));
            return good.pop().ok_or_else(|| match filter.is_empty() {
                true => Error::NotFound("snapshot (the repository has none that opens)".into()),
                false => Error::NotFound(format!("snapshot matching {}", filter.describe())),
            });
        }
        self.load_snapshot(&self.resolve_snapshot(spec)?)
    }

    /// Resolves `latest` or a unique id prefix to an id, without opening a
    /// snapshot a prefix names (so a damaged one can still be named).
    pub fn resolve_snapshot(&self, spec: &str) -> Result<SnapshotId> {
        if spec == "latest" {
            return self.find_snapshot(spec).map(|s| s.id);
        }
        resolve_prefix(self.store.as_ref(), spec)
    }

    /// Finds the node at `path` inside a snapshot (`/` or empty: the root).
    pub fn find_node(&self, cache: &Cache, snap: &Snapshot, path: &str) -> Result<Node> {
        let mut node = Node {
            kind: Some(crate::format::tree::NodeKind::Dir),
            subtree: Some(snap.record.tree),
            ..Default::default()
        };
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let sub = node.subtree.ok_or_else(|| {
                Error::NotFound(format!("{path} in snapshot {}", snap.id.short()))
            })?;
            let tree = self.load_tree(cache, &sub)?;
            node = tree
                .nodes
                .into_iter()
                .find(|n| n.name.as_ref() as &[u8] == comp.as_bytes())
                .ok_or_else(|| {
                    Error::NotFound(format!("{path} in snapshot {}", snap.id.short()))
                })?;
        }
        Ok(node)
    }

    /// Adds a key file wrapping the master key under another passphrase.
    pub fn add_key(
        &self,
        passphrase: &[u8],
        kdf: KdfParams,
        host: String,
        now: i64,
    ) -> Result<String> {
        let kf = KeyFile::create(
            &self.master,
            passphrase,
            kdf,
            self.id,
            now,
            host,
            &mut OsRng,
        )?;
        let name = new_key_name();
        self.store.write_key(&name, &kf.encode())?;
        Ok(name)
    }

    /// Key files: name and decoded contents.
    pub fn list_keys(&self) -> Result<Vec<(String, KeyFile)>> {
        let mut out = Vec::new();
        for name in self.store.list_keys()? {
            out.push((name.clone(), KeyFile::decode(&self.store.read_key(&name)?)?));
        }
        Ok(out)
    }

    /// Removes a key file; refuses the last one, and the one in use.
    pub fn remove_key(&self, name_prefix: &str) -> Result<String> {
        let keys = self.store.list_keys()?;
        let m: Vec<&String> = keys.iter().filter(|k| k.starts_with(name_prefix)).collect();
        let name = match m.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(Error::NotFound(format!("key {name_prefix}"))),
            _ => {
                return Err(Error::Denied(format!(
                    "key prefix {name_prefix} is ambiguous"
                )))
            }
        };
        if name == self.key_name {
            return Err(Error::Denied(
                "refusing to remove the key in use; open the repository with another passphrase first".into(),
            ));
        }
        if keys.len() < 2 {
            return Err(Error::Denied("refusing to remove the last key".into()));
        }
        self.store.remove_key(&name)?;
        Ok(name)
    }
}

/// The one snapshot of `store` whose id starts with the hex prefix `spec`
/// (a whole id included); none or several are an error that says which.
/// Needs no key, so a server's operator names snapshots the same way.
pub fn resolve_prefix(store: &dyn Store, spec: &str) -> Result<SnapshotId> {
    let spec_l = spec.to_ascii_lowercase();
    let matches: Vec<SnapshotId> = store
        .list_snapshots()?
        .into_iter()
        .filter(|id| id.to_hex().starts_with(&spec_l))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::NotFound(format!("snapshot {spec}"))),
        _ => {
            const SHOWN: usize = 20;
            let mut names: Vec<String> = matches
                .iter()
                .take(SHOWN)
                .map(|id| id.to_hex()[..16].to_string())
                .collect();
            if matches.len() > SHOWN {
                names.push(format!("and {} more", matches.len() - SHOWN));
            }
            Err(Error::Denied(format!(
                "snapshot prefix {spec} is ambiguous ({} matches: {}); give more digits",
                matches.len(),
                names.join(", ")
            )))
        }
    }
}

/// Where caches live: `$COFFER_CACHE_DIR`, else `$XDG_CACHE_HOME/coffer`,
/// else `$HOME/.cache/coffer`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COFFER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("coffer");
    }
    if let Some(d) = std::env::var_os("HOME") {
        return PathBuf::from(d).join(".cache").join("coffer");
    }
    std::env::temp_dir().join("coffer-cache")
}

/// Where the cache says a blob lives; an error naming it when in no pack.
pub(crate) fn locate(cache: &Cache, id: &BlobId) -> Result<BlobLocation> {
    cache
        .lookup(id)?
        .ok_or_else(|| Error::Corrupt(format!("blob {id} is in no pack of the repository")))
}
