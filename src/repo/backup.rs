//! Backup: walks a source (file trees, a stream, a disk image), cuts it into
//! chunks, hands new chunks to the [`Uploader`], writes trees bottom-up and
//! commits a snapshot once every pack it references is durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use nix::fcntl::PosixFadviseAdvice;

mod image;
mod walk;
use image::{image_name, nbd_name, nbd_url};

use super::exclude::{keeps, ExcludeRules, Excludes, SourceRoots};
use super::parent_image::{self, ParentImage, ParentRefs};
use super::readahead::ReadAhead;
use super::upload::Uploader;
use super::Repository;
use crate::cache::{Cache, FileRecord};
use crate::chunk::Chunker;
use crate::crypto::{Keys, Kind};
use crate::error::{Error, Result};
use crate::format::chunklist::{self, ChunkRef, INLINE_ENTRIES, LIST_BLOB_ENTRIES};
use crate::format::snapshot::{
    self, ImageRecord, SnapshotRecord, SnapshotStats, SourceKind, RECORD_VERSION,
};
use crate::format::tree::{Node, NodeKind, Tree};
use crate::format::{cbor_decode, cbor_encode};
use crate::id::{BlobId, PackId, SnapshotId};
use crate::source::command::CommandReader;
use crate::source::image::{ImageReader, Piece};
use crate::source::{self, Names};

/// What to back up. One run may take several sources: they become one
/// snapshot whose root holds the path trees under their absolute paths and
/// each stream or image as a file named after it.
pub enum BackupSource {
    /// Files and directories, recorded under their absolute paths, with
    /// exclude patterns of their own (on top of [`BackupOptions::excludes`]).
    Paths {
        /// The paths.
        paths: Vec<PathBuf>,
        /// Patterns that apply below these paths only.
        excludes: Vec<String>,
    },
    /// A stream, recorded as one file named `name`.
    Stream {
        /// The file name in the snapshot.
        name: String,
        /// Where the bytes come from.
        reader: Box<dyn Read + Send>,
    },
    /// A command's standard output, recorded as one file named `name`; the
    /// command's failure fails the backup.
    Command {
        /// The file name in the snapshot.
        name: String,
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// A disk image or block device, recorded as one file named `name` (by
    /// default the device's file name).
    Image {
        /// The image or device.
        path: PathBuf,
        /// The file name in the snapshot.
        name: Option<String>,
    },
}

impl BackupSource {
    /// Paths with no excludes of their own.
    pub fn paths(paths: Vec<PathBuf>) -> BackupSource {
        BackupSource::Paths {
            paths,
            excludes: vec![],
        }
    }

    fn kind(&self) -> SourceKind {
        match self {
            BackupSource::Paths { .. } => SourceKind::Tree,
            BackupSource::Stream { .. } | BackupSource::Command { .. } => SourceKind::Stdin,
            BackupSource::Image { .. } => SourceKind::Image,
        }
    }
}

/// Counters a caller may watch while a backup runs (a progress bar).
#[derive(Debug, Default)]
pub struct Progress {
    /// Files seen.
    pub files: AtomicU64,
    /// Bytes of source processed (read, or reused from the files cache).
    pub bytes: AtomicU64,
}

/// What a backup did with one file it met (see [`BackupOptions::on_file`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Read, and the files cache knew no earlier version of it.
    New,
    /// Read, and the files cache held an earlier, different version.
    Modified,
    /// Its content came from the files cache, unread.
    Unchanged,
    /// A further name of a hard link whose content this run already has.
    Linked,
}

/// Told of each regular file once its content is decided.
pub type FileListener = Arc<dyn Fn(&Path, FileStatus) + Send + Sync>;

/// How to back up.
pub struct BackupOptions {
    /// Tags for the snapshot.
    pub tags: Vec<String>,
    /// Host name recorded.
    pub host: String,
    /// The backup job's name for retention; `None`: the host and the
    /// sources name it (see [`crate::crypto::Keys::snapshot_group`]).
    pub job: Option<String>,
    /// User name recorded.
    pub user: String,
    /// Start time by the client's clock (ns since the epoch).
    pub time_ns: i64,
    /// What to leave out of the path sources (see [`super::exclude`]).
    pub excludes: ExcludeRules,
    /// Stay on the file system of each given path.
    pub one_file_system: bool,
    /// zstd level; the repository's default when `None`.
    pub compression: Option<i32>,
    /// Reuse the content of files whose size, times and inode are unchanged.
    pub files_cache: bool,
    /// Set from outside (a signal) to stop the backup: it returns
    /// [`Error::Interrupted`] and commits nothing.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Updated as the backup runs.
    pub progress: Option<Arc<Progress>>,
    /// Most bytes per second written to the store (averaged per pack).
    pub upload_limit: Option<u64>,
    /// Write chunks anew rather than reuse them from a pack whose live share
    /// (as the last backup found it) is below this; 0 never rewrites.
    pub rewrite_below: f64,
    /// Told of each new pack (id and size) once it is durable: a local
    /// repository computes parity for full stripes while the backup runs.
    pub durable_packs: Option<crossbeam_channel::Sender<(PackId, u64)>>,
    /// Told of each regular file (`-v`); called on the walking thread.
    pub on_file: Option<FileListener>,
    /// A dirty bitmap that starts at this backup (`--start-bitmap`):
    /// recorded, so that a later `changed_bitmap` of the same name reads
    /// only what changed since.
    pub start_bitmap: Option<String>,
    /// The token of this start (recorded with `start_bitmap`).
    pub start_token: Option<String>,
    /// The token the bitmap of `changed_bitmap` started with: the parent
    /// must have recorded it.
    pub changed_token: Option<String>,
    /// Read only the extents this dirty bitmap (exported by the NBD
    /// server) reports dirty; take the clean ones from the newest snapshot
    /// that started it. Without such a parent, a full read (with a notice).
    pub changed_bitmap: Option<String>,
    /// The parent for `changed_bitmap`, in place of the newest that
    /// started it (an id prefix or `latest`).
    pub parent: Option<String>,
    /// With `changed_bitmap`: the percent of clean blocks read anyway and
    /// compared with the parent's; a difference (a bitmap that missed a
    /// write) turns the backup into a full read of the disk.
    pub verify_clean: f64,
    /// Walk, read and count what would be new, but write nothing: no
    /// pack, no snapshot, no files-cache record (a record of content never
    /// stored would make the next run skip the file).
    pub dry_run: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            tags: vec![],
            host: String::new(),
            job: None,
            user: String::new(),
            time_ns: 0,
            excludes: ExcludeRules::default(),
            one_file_system: false,
            compression: None,
            files_cache: true,
            cancel: None,
            progress: None,
            upload_limit: None,
            rewrite_below: crate::cache::REWRITE_BELOW_LIVE,
            durable_packs: None,
            on_file: None,
            start_bitmap: None,
            start_token: None,
            changed_token: None,
            changed_bitmap: None,
            parent: None,
            verify_clean: 0.0,
            dry_run: false,
        }
    }
}

/// The result of a backup.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The new snapshot (in a dry run, the id it would have had: nothing
    /// is written).
    pub id: SnapshotId,
    /// Its figures.
    pub stats: SnapshotStats,
    /// Entries that could not be read (left out of the snapshot).
    pub warnings: Vec<String>,
    /// Exclude patterns that matched nothing the walk met (a typo, a path
    /// that moved); nothing was left out because of them.
    pub exclude_warnings: Vec<String>,
    /// What the repository held that this run could not use, such as packs
    /// that do not open (never a source entry left out).
    pub notices: Vec<String>,
    /// Steps after the commit that failed: the snapshot is saved and
    /// complete, but something meant to follow it did not happen.
    pub after_commit: Vec<String>,
    /// Bytes read from the sources: holes, zero ranges an NBD server
    /// reported and files reused from the files cache are not read.
    pub bytes_read: u64,
}

/// A file's content as a node holds it, also what the files cache stores.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Content {
    chunks: Option<ByteBuf>,
    lists: Option<Vec<BlobId>>,
}

/// Collects a file's chunk references, spilling long lists into list blobs.
#[derive(Default)]
struct ContentBuilder {
    refs: Vec<ChunkRef>,
    lists: Vec<BlobId>,
    bytes: u64,
}

const READ_BYTES: usize = 1 << 20;
/// Files opened and read ahead while the current one is processed.
const PREFETCH_FILES: usize = 16;
/// Bytes of each such file read ahead.
const PREFETCH_BYTES: u64 = 2 << 20;

/// Backs up `sources` into `repo` and commits one snapshot of them all.
pub fn backup(
    repo: &Repository,
    sources: Vec<BackupSource>,
    mut opts: BackupOptions,
) -> Result<BackupOutcome> {
    if sources.is_empty() {
        return Err(Error::Denied("nothing to back up".into()));
    }
    let mut cache = repo.cache()?;
    let sync = repo.sync_cache(&mut cache)?;
    cache.run_reset()?;
    let mut notices = sync.notices();
    let parent = match (&opts.changed_bitmap, sources.as_slice()) {
        (Some(bitmap), [BackupSource::Image { path, name }]) => {
            let name = image_name(path, name.as_deref())?;
            let host = &opts.host;
            let token = opts.changed_token.as_deref();
            let spec = opts.parent.as_deref();
            match parent_image::find(repo, &cache, host, &name, bitmap, token, spec)? {
                Ok(p) => Some(p),
                Err(why) => {
                    notices.push(format!("{why}: reading the whole disk"));
                    None
                }
            }
        }
        (Some(_), _) => {
            return Err(Error::Denied(
                "--changed-bitmap goes with exactly one --image source".into(),
            ))
        }
        _ => None,
    };
    let settings = repo.settings().clone();
    let level = opts.compression.unwrap_or(settings.compression);
    let mut up = match opts.dry_run {
        true => Uploader::dry_run(),
        false => Uploader::start(
            repo.store().clone(),
            repo.keys().clone(),
            level,
            settings.pack_size as u64,
            opts.upload_limit,
            opts.cancel.clone(),
        ),
    };
    up.sparse = cache.sparse_packs(opts.rewrite_below)?;
    // Taken, so the listener hears the end once the last pack is durable.
    up.durable = opts.durable_packs.take();
    let planned = plan(&sources)?;
    let ex = Arc::new(excludes(&opts.excludes, &sources, &planned)?);
    let mut w = Walker {
        keys: repo.keys().clone(),
        cache,
        up,
        chunker: Chunker::new(settings.chunker, repo.keys().gear_table()),
        block: settings.image_block as usize,
        ex: ex.clone(),
        one_file_system: opts.one_file_system,
        root_dev: 0,
        use_files_cache: opts.files_cache,
        names: Names::default(),
        stats: SnapshotStats::default(),
        file_seq: 0,
        refs: Vec::new(),
        hardlinks: HashMap::new(),
        buf: Vec::new(),
        warnings: Vec::new(),
        start_ns: opts.time_ns,
        prefetched: HashMap::new(),
        cancel: opts.cancel.clone(),
        progress: opts.progress.clone(),
        looked_up: HashMap::new(),
        run_packs: HashMap::new(),
        known_packs: HashSet::new(),
        run_files: Vec::new(),
        ahead: None,
        read_bytes: 0,
        source_read: 0,
        on_file: opts.on_file.take(),
        parent,
        changed_bitmap: opts.changed_bitmap.clone(),
        verify_clean: opts.verify_clean,
        bitmap_lie: None,
        notices: Vec::new(),
        image: None,
    };
    let mut kinds: Vec<SourceKind> = sources.iter().map(|s| s.kind()).collect();
    kinds.dedup();
    let kind = match kinds[..] {
        [k] => k,
        _ => SourceKind::Mixed,
    };
    // Only a backup of one image records how it was read.
    let single_image = sources.len() == 1 && matches!(kind, SourceKind::Image);
    let mut planned = planned.into_iter();
    let mut paths = Vec::new();
    // What names the job for retention: the paths, an image by its name.
    let mut group_by: Vec<String> = Vec::new();
    let mut trees = Vec::new();
    let mut files = Vec::new();
    for src in sources {
        // unwrap-free: plan gives one entry per source.
        let abs = planned.next().unwrap_or_default();
        let before = paths.len();
        match src {
            BackupSource::Paths { .. } => {
                paths.extend(abs.iter().map(|p| p.to_string_lossy().into_owned()));
                trees.extend(abs);
            }
            BackupSource::Stream { name, mut reader } => {
                files.push(w.backup_stream(&name, &mut reader, opts.time_ns)?);
                paths.push(name);
            }
            BackupSource::Command { name, argv } => {
                let mut reader = CommandReader::new(argv);
                files.push(w.backup_stream(&name, &mut reader, opts.time_ns)?);
                paths.push(name);
            }
            BackupSource::Image { name, .. } => {
                for a in abs {
                    files.push(w.backup_image(&a, name.as_deref())?);
                    paths.push(a.to_string_lossy().into_owned());
                    // A hook's device path may change every night; the
                    // image's name does not.
                    group_by.push(
                        name.clone()
                            .unwrap_or_else(|| a.to_string_lossy().into_owned()),
                    );
                }
                continue;
            }
        }
        group_by.extend(paths[before..].iter().cloned());
    }
    let mut root = if trees.is_empty() {
        Tree::default()
    } else {
        let cache = if opts.files_cache {
            repo.cache().ok()
        } else {
            None
        };
        w.ahead = Some(ReadAhead::start(
            trees.clone(),
            cache,
            ex.clone(),
            opts.one_file_system,
        ));
        let tree = w.backup_paths(&trees);
        w.ahead = None;
        tree?
    };
    for f in files {
        // plan() checked the names; an entry of `/` created since is refused.
        if root.nodes.iter().any(|n| n.name == f.name) {
            return Err(Error::Denied(format!(
                "{:?} names both a source and an entry of the root directory",
                String::from_utf8_lossy(&f.name)
            )));
        }
        root.nodes.push(f);
    }
    let tree = w.store_tree(&mut root)?;
    w.flush_refs()?;
    let Walker {
        mut cache,
        up,
        mut stats,
        warnings,
        source_read,
        image,
        notices: walk_notices,
        ..
    } = w;
    notices.extend(walk_notices);
    let image = image.filter(|_| single_image).map(|i| ImageRecord {
        bitmap_start: opts.start_bitmap.clone(),
        bitmap_token: opts.start_token.clone(),
        ..i
    });
    let (up_stats, written) = up.finish(&mut cache)?;
    if !opts.dry_run {
        super::reused::verify(repo, &mut cache, &written)?;
    }
    let (packs, missing) = cache.run_packs()?;
    if missing > 0 && !opts.dry_run {
        return Err(Error::Corrupt(format!(
            "{missing} referenced blobs are in no known pack; nothing committed"
        )));
    }
    if opts
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::SeqCst))
    {
        return Err(Error::Interrupted);
    }
    stats.new_blobs = up_stats.new_blobs;
    stats.new_bytes = up_stats.new_bytes;
    stats.new_packs = up_stats.packs;
    stats.new_pack_bytes = up_stats.pack_bytes;
    let record = SnapshotRecord {
        version: RECORD_VERSION,
        time_ns: opts.time_ns,
        host: opts.host,
        user: opts.user,
        source: kind,
        paths,
        tags: opts.tags,
        tree,
        stats: stats.clone(),
        image,
    };
    let group = match &opts.job {
        Some(job) => repo
            .keys()
            .snapshot_group(&record.host, &[format!("job:{job}")]),
        None => repo.keys().snapshot_group(&record.host, &group_by),
    };
    let (id, bytes) = snapshot::encode(repo.keys(), packs, &record, &mut OsRng);
    let exclude_warnings = match trees.is_empty() {
        true => Vec::new(),
        false => ex
            .unmatched()
            .into_iter()
            .map(|p| format!("exclude pattern {p:?} matched nothing under the backed-up paths"))
            .collect(),
    };
    if opts.dry_run {
        // The run's scratch rows go; the files cache keeps what it had.
        cache.run_reset()?;
        return Ok(BackupOutcome {
            id,
            stats,
            warnings,
            exclude_warnings,
            notices,
            after_commit: Vec::new(),
            bytes_read: source_read,
        });
    }
    repo.store().write_snapshot(&bytes, Some(group))?;
    // Committed: what follows only speeds up the next run, and its failure
    // must not be reported as a backup that saved nothing.
    let mut after_commit = Vec::new();
    if let Err(e) = cache
        .run_commit_files()
        .and_then(|_| cache.run_note_liveness())
        .and_then(|()| cache.run_reset())
        .and_then(|()| repo.mend_cache(&mut cache))
    {
        after_commit.push(format!("the local cache was not updated: {e}"));
    }
    Ok(BackupOutcome {
        id,
        stats,
        warnings,
        exclude_warnings,
        notices,
        after_commit,
        bytes_read: source_read,
    })
}

/// The compiled excludes: the options' rules and each path source's own
/// patterns, anchored at its paths (as walked and as given).
fn excludes(
    rules: &ExcludeRules,
    sources: &[BackupSource],
    planned: &[Vec<PathBuf>],
) -> Result<Excludes> {
    let mut roots = Vec::new();
    for (s, abs) in sources.iter().zip(planned) {
        if let BackupSource::Paths { paths, excludes } = s {
            let given = paths
                .iter()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
            roots.push(SourceRoots {
                roots: abs.iter().cloned().zip(given).collect(),
                patterns: excludes,
            });
        }
    }
    Excludes::new(rules, &roots)
}

/// Checks, before anything is read, what would otherwise fail a long run at
/// its end or silently lose a source: a path inside another source's path
/// (the outer one's excludes and file-system boundary would decide for it)
/// and two root entries of one name. Returns each source's absolute paths.
fn plan(sources: &[BackupSource]) -> Result<Vec<Vec<PathBuf>>> {
    let mut out = Vec::with_capacity(sources.len());
    let mut trees: Vec<PathBuf> = Vec::new();
    let mut names: Vec<(Vec<u8>, String)> = Vec::new();
    for s in sources {
        let abs = match s {
            BackupSource::Paths { paths, .. } => {
                let abs = paths
                    .iter()
                    .map(|p| absolute(p))
                    .collect::<Result<Vec<_>>>()?;
                for a in &abs {
                    if let Some(t) = trees.iter().find(|t| a.starts_with(t) || t.starts_with(a)) {
                        return Err(Error::Denied(format!(
                            "{} and {} overlap: give only the outer one (with its excludes), or \
                             paths side by side",
                            t.display(),
                            a.display()
                        )));
                    }
                    trees.push(a.clone());
                }
                abs
            }
            BackupSource::Stream { name, .. } | BackupSource::Command { name, .. } => {
                names.push((name.as_bytes().to_vec(), format!("source {name:?}")));
                vec![]
            }
            BackupSource::Image { path, name } if source::nbd::is_url(&path.to_string_lossy()) => {
                let url = nbd_url(path)?;
                let n = name.clone().unwrap_or_else(|| nbd_name(&url));
                names.push((n.into_bytes(), format!("image {}", path.display())));
                vec![path.clone()]
            }
            BackupSource::Image { path, name } => {
                let abs = absolute(path)?;
                let n = match name {
                    Some(n) => n.as_bytes().to_vec(),
                    None => abs
                        .file_name()
                        .map(|n| n.as_bytes().to_vec())
                        .unwrap_or_default(),
                };
                names.push((n, format!("image {}", abs.display())));
                vec![abs]
            }
        };
        out.push(abs);
    }
    for t in &trees {
        if t == Path::new("/") {
            for e in fs::read_dir("/").map_err(|e| Error::io("/", e))?.flatten() {
                names.push((
                    e.file_name().as_bytes().to_vec(),
                    format!("/{}", e.file_name().to_string_lossy()),
                ));
            }
        } else if let Some(first) = t.components().nth(1) {
            names.push((
                first.as_os_str().as_bytes().to_vec(),
                t.display().to_string(),
            ));
        }
    }
    names.sort();
    for pair in names.windows(2) {
        if pair[0].0 == pair[1].0 && !(pair[0].1.starts_with('/') && pair[1].1.starts_with('/')) {
            return Err(Error::Denied(format!(
                "{} and {} would both be {:?} at the snapshot's root: give the source another name",
                pair[0].1,
                pair[1].1,
                String::from_utf8_lossy(&pair[0].0)
            )));
        }
    }
    Ok(out)
}

/// Makes a path absolute and clean without following a final symlink.
fn absolute(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Ok(PathBuf::from("/"));
    };
    let parent = fs::canonicalize(parent).map_err(|e| Error::io(parent, e))?;
    Ok(parent.join(name))
}

#[derive(Default)]
struct Trie {
    leaf: bool,
    children: BTreeMap<Vec<u8>, Trie>,
}

struct Walker {
    keys: std::sync::Arc<Keys>,
    cache: Cache,
    up: Uploader,
    chunker: Chunker,
    block: usize,
    /// What to leave out.
    ex: Arc<Excludes>,
    one_file_system: bool,
    root_dev: u64,
    use_files_cache: bool,
    names: Names,
    stats: SnapshotStats,
    file_seq: u64,
    refs: Vec<(u64, BlobId)>,
    hardlinks: HashMap<(u64, u64), Content>,
    buf: Vec<u8>,
    warnings: Vec<String>,
    start_ns: i64,
    prefetched: HashMap<PathBuf, File>,
    cancel: Option<Arc<AtomicBool>>,
    progress: Option<Arc<Progress>>,
    /// Files-cache records read while prefetching, so each file costs one
    /// query (`None`: not in the cache).
    looked_up: HashMap<PathBuf, Option<FileRecord>>,
    /// Bytes of packs used by files reused from the files cache, not yet
    /// written to the cache's run tables (batched: one transaction, not one
    /// per file).
    run_packs: HashMap<PackId, u64>,
    /// Packs already found in the cache during this run; cleared when large,
    /// so it stays bounded.
    known_packs: HashSet<PackId>,
    /// Files-cache records of files read in this run, not yet written to
    /// the cache's run tables (batched like `run_packs`).
    run_files: Vec<(u64, Vec<u8>, FileRecord)>,
    /// Warms the page cache ahead of a tree walk.
    ahead: Option<ReadAhead>,
    /// Bytes of file content read so far (files the cache reused not counted).
    read_bytes: u64,
    /// Bytes read from the sources (holes and files-cache hits are not).
    source_read: u64,
    /// `-v`: told of each file's [`FileStatus`].
    on_file: Option<FileListener>,
    /// The parent image of a dirty-bitmap backup, until the image uses it.
    parent: Option<ParentImage>,
    /// `--changed-bitmap`: the bitmap's name.
    changed_bitmap: Option<String>,
    /// `--verify-clean`: percent of clean blocks read and compared.
    verify_clean: f64,
    /// Where a read clean block differed from the parent's.
    bitmap_lie: Option<u64>,
    /// How the one image of this backup was read.
    image: Option<ImageRecord>,
    /// What the run did on its own that the user should hear of (a full
    /// read where a bitmap was asked for).
    notices: Vec<String>,
}

/// Files whose files-cache records are read in one transaction.
const LOOKUP_BATCH: usize = 256;
/// Batch size of [`Walker::run_packs`] and bound of [`Walker::known_packs`].
const PACK_MEMO: usize = 4096;

fn is_zero(data: &[u8]) -> bool {
    // No early exit inside a block, so the loop vectorizes.
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &b| a | b) == 0)
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Walker {
    /// Stops the walk when asked to (a signal).
    fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.load(Ordering::SeqCst) => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }

    fn note_progress(&self, files: u64, bytes: u64) {
        if let Some(p) = &self.progress {
            p.files.fetch_add(files, Ordering::SeqCst);
            p.bytes.fetch_add(bytes, Ordering::SeqCst);
        }
    }

    fn add_blob(&mut self, file: u64, kind: Kind, id: BlobId, data: &[u8]) -> Result<()> {
        self.add_blobs(file, kind, &[(id, data)])
    }

    /// Stores what is new of `blobs` and records that `file` refers to them.
    fn add_blobs(&mut self, file: u64, kind: Kind, blobs: &[(BlobId, &[u8])]) -> Result<()> {
        self.up.add(&mut self.cache, kind, blobs)?;
        self.note_refs(file, blobs.iter().map(|(id, _)| *id))
    }

    /// Records that `file` refers to `ids`, written to the cache in batches.
    fn note_refs(&mut self, file: u64, ids: impl Iterator<Item = BlobId>) -> Result<()> {
        self.refs.extend(ids.map(|id| (file, id)));
        if self.refs.len() >= 4096 {
            self.flush_refs()?;
        }
        Ok(())
    }

    fn flush_refs(&mut self) -> Result<()> {
        if !self.refs.is_empty() {
            self.cache.run_refs(&self.refs)?;
            self.refs.clear();
        }
        self.flush_run_packs()?;
        self.flush_run_files()
    }

    fn flush_run_files(&mut self) -> Result<()> {
        if !self.run_files.is_empty() {
            self.cache.run_file_batch(
                self.run_files
                    .iter()
                    .map(|(seq, path, rec)| (*seq, path.as_slice(), rec)),
            )?;
            self.run_files.clear();
        }
        Ok(())
    }

    fn flush_run_packs(&mut self) -> Result<()> {
        if !self.run_packs.is_empty() {
            let packs: Vec<(PackId, u64)> = self.run_packs.drain().collect();
            self.cache.run_pack_batch(&packs)?;
        }
        Ok(())
    }

    fn pack_known(&mut self, p: &PackId) -> Result<bool> {
        if self.known_packs.contains(p) {
            return Ok(true);
        }
        let known = self.cache.has_pack(p)?;
        if known {
            if self.known_packs.len() >= PACK_MEMO {
                self.known_packs.clear();
            }
            self.known_packs.insert(*p);
        }
        Ok(known)
    }

    fn store_tree(&mut self, tree: &mut Tree) -> Result<BlobId> {
        let bytes = tree.encode();
        let id = self.keys.blob_id(&bytes);
        self.add_blob(0, Kind::Tree, id, &bytes)?;
        Ok(id)
    }

    fn push_chunk(&mut self, cb: &mut ContentBuilder, file: u64, data: &[u8]) -> Result<()> {
        let r = if is_zero(data) {
            ChunkRef::zeros(data.len() as u64)
        } else {
            let id = self.keys.blob_id(data);
            self.add_blob(file, Kind::Data, id, data)?;
            ChunkRef {
                id,
                len: data.len() as u64,
            }
        };
        self.push_ref(cb, file, r)
    }

    /// Appends one chunk's reference to a file's content.
    fn push_ref(&mut self, cb: &mut ContentBuilder, file: u64, r: ChunkRef) -> Result<()> {
        cb.bytes += r.len;
        self.note_progress(0, r.len);
        match cb.refs.last_mut() {
            Some(last) if last.is_zero() && r.is_zero() => last.len += r.len,
            _ => cb.refs.push(r),
        }
        if cb.refs.len() >= LIST_BLOB_ENTRIES {
            self.spill(cb, file)?;
        }
        Ok(())
    }

    fn spill(&mut self, cb: &mut ContentBuilder, file: u64) -> Result<()> {
        let bytes = chunklist::encode(&cb.refs);
        let id = self.keys.blob_id(&bytes);
        self.add_blob(file, Kind::ChunkList, id, &bytes)?;
        cb.lists.push(id);
        cb.refs.clear();
        Ok(())
    }

    fn finish_content(&mut self, mut cb: ContentBuilder, file: u64) -> Result<Content> {
        if cb.lists.is_empty() && cb.refs.len() <= INLINE_ENTRIES {
            return Ok(Content {
                chunks: Some(ByteBuf::from(chunklist::encode(&cb.refs))),
                lists: None,
            });
        }
        if !cb.refs.is_empty() {
            self.spill(&mut cb, file)?;
        }
        Ok(Content {
            chunks: None,
            lists: Some(cb.lists),
        })
    }

    /// Reads a stream to its end, cutting it by content.
    fn read_cdc(&mut self, r: &mut dyn Read, file: u64, src: &Path) -> Result<(Content, u64)> {
        let max = self.chunker.params().max as usize;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(max + READ_BYTES, 0);
        let (mut start, mut end, mut eof) = (0usize, 0usize, false);
        let mut cb = ContentBuilder::default();
        let res: Result<()> = (|| loop {
            // Cut while a cut is certain; refill (moving what is left to the
            // front) only when none is.
            if let Some(n) = self.chunker.next_len(&buf[start..end], eof) {
                self.push_chunk(&mut cb, file, &buf[start..start + n])?;
                start += n;
                continue;
            }
            if eof {
                return Ok(());
            }
            if end == buf.len() {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            self.check_cancel()?;
            let n = read_full(r, &mut buf[end..]).map_err(|e| Error::io(src, e))?;
            self.source_read += n as u64;
            eof = n == 0;
            end += n;
        })();
        self.buf = buf;
        res?;
        let bytes = cb.bytes;
        Ok((self.finish_content(cb, file)?, bytes))
    }

    fn set_content(node: &mut Node, c: &Content) {
        node.chunks = c.chunks.clone();
        node.lists = c.lists.clone();
    }

    fn backup_stream(&mut self, name: &str, r: &mut dyn Read, now_ns: i64) -> Result<Node> {
        if !crate::format::tree::safe_name(name.as_bytes()) {
            return Err(Error::Denied(format!(
                "stream name {name:?} must be a plain file name"
            )));
        }
        self.file_seq += 1;
        self.note_progress(1, 0);
        let (c, n) = self.read_cdc(r, self.file_seq, Path::new(name))?;
        self.stats.files += 1;
        self.stats.bytes += n;
        let mut node = Node {
            name: ByteBuf::from(name.as_bytes().to_vec()),
            kind: Some(NodeKind::File),
            mode: 0o600,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mtime_ns: now_ns,
            ctime_ns: now_ns,
            size: n,
            links: 1,
            ..Default::default()
        };
        Self::set_content(&mut node, &c);
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 10000]));
        let mut v = vec![0u8; 10000];
        v[9999] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
