//! Restore: turns a snapshot's trees back into files. The calling
//! thread walks trees and creates entries; worker threads read, open and
//! verify chunks and write them in place, so files fill in parallel. Every
//! name comes from a validated tree, so nothing is written outside the
//! target, and an entry already in the target is replaced, never followed.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::batch::Batch;
use super::restore_plan::{self, Action, Overwrite, Patterns};
use super::{Repository, Snapshot};
use crate::cache::{BlobLocation, Cache, ReadHold};
use crate::crypto::{Keys, Kind};
use crate::error::{Error, Result};
use crate::format::blob::{self, Opened, Plain};
use crate::format::chunklist::{self, ChunkRef};
use crate::format::tree::{Node, NodeKind, Tree};
use crate::id::BlobId;
use crate::source::{self, MetaWarnings};
use crate::store::Store;

pub use super::dump::dump;

mod ahead;
mod lookups;
mod write;
use ahead::{Located, TreesAhead};
use lookups::{Lookups, RenewedHold};
use write::{finish, write_chunk, FileTask, Job, Links, Shared, WriteRun};

/// Chunk readers at least, whatever the cores: reads from a server wait on
/// round trips, and from a disk on I/O, more than they compute.
pub(super) const RESTORE_READERS: usize = 6;

/// A batch of chunks handed to a reader holds locations, not data: large
/// batches let the walker run tens of MiB ahead of the readers and are
/// read in long runs (see [`span_len`]), with the files held open still
/// bounded by the batch's item count.
const RESTORE_BATCH_BYTES: u64 = 4 << 20;

/// Entries walked under one read transaction of the cache.
const HOLD_ENTRIES: usize = 4096;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The directory to restore into (created if missing).
    pub target: PathBuf,
    /// Paths inside the snapshot to restore; all when empty.
    pub include: Vec<String>,
    /// Restore owners (needs root).
    pub owners: bool,
    /// `--include` and `--exclude` patterns (see [`restore_plan`]).
    pub patterns: Patterns,
    /// What to do with an entry already in the target.
    pub overwrite: Overwrite,
    /// Remove what the snapshot does not have, inside the restored paths.
    pub delete: bool,
    /// Decide and list, but change nothing.
    pub dry_run: bool,
    /// Read every written file back and compare it with the snapshot.
    pub verify: bool,
    /// A progress bar to advance by the bytes written.
    pub progress: Option<indicatif::ProgressBar>,
}

impl RestoreOptions {
    /// Restores everything into `target`, the defaults otherwise.
    pub fn new(target: PathBuf) -> RestoreOptions {
        RestoreOptions {
            target,
            include: Vec::new(),
            owners: false,
            patterns: Patterns::default(),
            overwrite: Overwrite::default(),
            delete: false,
            dry_run: false,
            verify: false,
            progress: None,
        }
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone)]
pub struct RestoreStats {
    /// Files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries restored.
    pub others: u64,
    /// Bytes of file content written or left as holes.
    pub bytes: u64,
    /// Entries that could not be restored (their partial files removed).
    pub errors: Vec<String>,
    /// Metadata that could not be applied.
    pub warnings: Vec<String>,
    /// Entries (not directories) already as the snapshot has them, or
    /// kept by the overwrite mode: left alone.
    pub unchanged: u64,
    /// Entries removed by `--delete`.
    pub deleted: u64,
    /// Recorded entries not restored (sockets), by relative path.
    pub skipped: Vec<String>,
    /// Non-empty directories left where the snapshot has something else.
    pub refused: Vec<String>,
    /// With `--dry-run`: `+ path` (created), `M path` (replaced), `- path`
    /// (deleted), `! path` (refused).
    pub changes: Vec<String>,
    /// Files read back and found equal to the snapshot (`--verify`).
    pub verified: u64,
}

/// Reads and opens blobs: the part of a repository a worker thread needs.
#[derive(Clone)]
pub(super) struct BlobReader {
    pub(super) store: Arc<dyn Store>,
    pub(super) keys: Arc<Keys>,
}

impl BlobReader {
    pub(super) fn read(&self, loc: &BlobLocation, kind: Kind, id: &BlobId) -> Result<Plain> {
        read_or_repair(self.store.as_ref(), &self.keys, loc, kind, id)
    }

    /// Reads the chunks of `jobs`, which lie in one run of a pack (see
    /// [`span_len`]), with one read into `buf`, and hands each to `run`. A
    /// chunk that does not open is read again alone, where a damaged pack
    /// is repaired or the failure reported.
    fn read_span(&self, jobs: Vec<Job>, buf: &mut Vec<u8>, run: &mut WriteRun, shared: &Shared) {
        let (first, last) = (&jobs[0].loc, &jobs[jobs.len() - 1].loc);
        let start = first.offset;
        let len = (last.offset + u64::from(last.sealed_len) - start) as usize;
        let Ok(at) = self.store.read_pack_span(&first.pack, start, len, buf) else {
            for job in jobs {
                self.read_one(job, run, shared);
            }
            return;
        };
        for job in jobs {
            let lo = at.start + (job.loc.offset - start) as usize;
            let sealed = &mut buf[lo..lo + job.loc.sealed_len as usize];
            match blob::open_in_place(&self.keys, Kind::Data, &job.chunk.id, sealed) {
                Ok(Opened::Raw(p)) => write_chunk(job, &sealed[p], run, shared),
                Ok(Opened::Decompressed(v)) => write_chunk(job, &v, run, shared),
                Err(_) => self.read_one(job, run, shared),
            }
        }
    }

    fn read_one(&self, job: Job, run: &mut WriteRun, shared: &Shared) {
        match self.read(&job.loc, Kind::Data, &job.chunk.id) {
            Ok(data) => write_chunk(job, &data, run, shared),
            Err(e) => finish(&job, Err(e), shared),
        }
    }
}

/// Chunks within this of each other in a pack are read together...
const SPAN_GAP: u64 = 64 << 10;
/// ...up to this many bytes at once.
const SPAN_BYTES: u64 = 16 << 20;

/// How many of `jobs`, from the first, lie one after another in one pack,
/// close enough to be read with one call: a batch of an image's blocks is
/// mostly one run of a pack.
fn span_len(jobs: &[Job]) -> usize {
    let first = &jobs[0].loc;
    let mut end = first.offset + u64::from(first.sealed_len);
    let mut n = 1;
    for j in &jobs[1..] {
        let (at, to) = (j.loc.offset, j.loc.offset + u64::from(j.loc.sealed_len));
        // Each chunk after the one before: a chunk met twice is read twice,
        // its first copy being decrypted over by then.
        if j.loc.pack != first.pack
            || at < end
            || at > end + SPAN_GAP
            || to - first.offset > SPAN_BYTES
        {
            break;
        }
        end = to;
        n += 1;
    }
    n
}

/// Reads and opens a blob; when its pack turns out damaged, asks the store
/// to repair it from parity and reads once more.
pub(crate) fn read_or_repair(
    store: &dyn Store,
    keys: &Keys,
    loc: &BlobLocation,
    kind: Kind,
    id: &BlobId,
) -> Result<Plain> {
    let once = || -> Result<Plain> {
        let sealed = store.read_pack(&loc.pack, loc.offset, loc.sealed_len as usize)?;
        blob::open_owned(keys, kind, id, sealed).map_err(|e| {
            Error::Corrupt(format!(
                "blob {} in pack {}: {e}",
                id.short(),
                loc.pack.short()
            ))
        })
    };
    match once() {
        Err(Error::Corrupt(first)) => match store.repair(&loc.pack) {
            Ok(true) => once(),
            _ => Err(Error::Corrupt(first)),
        },
        r => r,
    }
}

/// Hands a batch of chunks to the readers.
fn send(to: &Sender<Vec<Job>>, batch: Vec<Job>) -> Result<()> {
    to.send(batch)
        .map_err(|_| Error::Corrupt("restore workers stopped".into()))
}

fn components(p: &str) -> Vec<&str> {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

struct Restorer<'a> {
    repo: &'a Repository,
    cache: &'a Cache,
    opts: &'a RestoreOptions,
    include: Vec<Vec<String>>,
    jobs: Sender<Vec<Job>>,
    /// Chunks not yet handed to the readers; may span several files.
    batch: Batch<Job>,
    /// Chunks not yet looked up; may span several files.
    lookups: Lookups,
    /// Trees read ahead of the walk, when all of the snapshot is restored.
    ahead: Option<TreesAhead>,
    /// The read transaction lookups share, renewed now and then.
    hold: RenewedHold<'a>,
    shared: Arc<Shared>,
    stats: RestoreStats,
    /// The first name of each hard-linked file, and its other names.
    hardlinks: HashMap<(u64, u64), (PathBuf, Arc<Links>)>,
    dirs: Vec<(PathBuf, Node)>,
    /// Directories created only on the way to included entries: removed
    /// at the end when nothing was restored into them.
    on_the_way: Vec<PathBuf>,
    /// Files written, read back at the end with `--verify`.
    written: Vec<(PathBuf, Node)>,
}

/// How far a directory is selected: `full` when all of it is restored
/// (excludes aside), `inc` when it or a directory above it matched an
/// include pattern.
#[derive(Debug, Clone, Copy)]
struct Sel {
    full: bool,
    inc: bool,
}

/// Restores a snapshot (or the chosen paths of it) into `opts.target`.
pub fn restore(repo: &Repository, snap: &Snapshot, opts: &RestoreOptions) -> Result<RestoreStats> {
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    for inc in &opts.include {
        repo.find_node(&cache, snap, inc)?;
    }
    // A target this restore creates is empty: nothing in it to replace.
    let fresh = !opts.target.exists();
    if !opts.dry_run {
        fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    }
    let shared = Arc::new(Shared {
        errors: Mutex::new(Vec::new()),
        warnings: Mutex::new(Vec::new()),
        lost: Mutex::new((0, 0)),
        progress: opts.progress.clone(),
    });
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
        // More readers than cores: a remote store's round trips overlap.
        .max(RESTORE_READERS);
    let (tx, rx) = bounded::<Vec<Job>>(workers * 2);
    let reader = BlobReader {
        store: repo.store().clone(),
        keys: repo.keys().clone(),
    };
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (rx, reader, shared) = (rx.clone(), reader.clone(), shared.clone());
        handles.push(std::thread::spawn(move || {
            let (mut run, mut span) = (WriteRun::default(), Vec::new());
            for mut batch in rx.iter() {
                while !batch.is_empty() {
                    let n = span_len(&batch);
                    reader.read_span(batch.drain(..n).collect(), &mut span, &mut run, &shared);
                }
                // Nothing waits past its batch: the last chunk of a file
                // finishes it.
                run.flush(&shared);
            }
        }));
    }
    // Only the workers receive: should they all stop, a send fails instead
    // of waiting for ever.
    drop(rx);
    let mut r = Restorer {
        repo,
        cache: &cache,
        opts,
        include: opts
            .include
            .iter()
            .map(|i| components(i).into_iter().map(String::from).collect())
            .collect(),
        jobs: tx,
        batch: Batch::with_bytes(RESTORE_BATCH_BYTES),
        lookups: Lookups::default(),
        ahead: None,
        hold: RenewedHold::new(&cache),
        shared: shared.clone(),
        stats: RestoreStats::default(),
        hardlinks: HashMap::new(),
        dirs: Vec::new(),
        on_the_way: Vec::new(),
        written: Vec::new(),
    };
    // Trees are read ahead in the walk's order, which skipping breaks.
    if opts.include.is_empty() && opts.patterns.is_empty() {
        r.ahead = Some(TreesAhead::start(reader, repo.cache()?, snap.record.tree));
    }
    let root = Sel {
        full: opts.include.is_empty() && !opts.patterns.has_includes(),
        inc: !opts.patterns.has_includes(),
    };
    let walked = r.restore_tree(&snap.record.tree, &[], &opts.target, fresh, root);
    r.ahead = None;
    let looked = r.lookups.flush(&cache, &mut r.batch, &r.jobs, &shared);
    r.hold.end();
    let sent = r.batch.take().map_or(Ok(()), |last| send(&r.jobs, last));
    let Restorer {
        jobs,
        mut stats,
        dirs,
        on_the_way,
        written,
        ..
    } = r;
    drop(jobs);
    for h in handles {
        let _ = h.join();
    }
    walked?;
    looked?;
    sent?;
    // Deepest first: a directory on the way inside another one.
    for d in on_the_way.iter().rev() {
        let _ = fs::remove_dir(d);
    }
    // Directories last, deepest first (as the walk finished them): creating
    // entries changed their times, and a parent made unsearchable first
    // would hide its children.
    let mut w = MetaWarnings::default();
    for (path, node) in &dirs {
        apply_dir_meta(path, node, opts.owners, &mut w);
    }
    // unwrap: the lock is never held across a panic
    stats.errors.extend(shared.errors.lock().unwrap().drain(..));
    let (lost_files, lost_bytes) = *shared.lost.lock().unwrap();
    stats.files = stats.files.saturating_sub(lost_files);
    stats.bytes = stats.bytes.saturating_sub(lost_bytes);
    stats
        .warnings
        .extend(shared.warnings.lock().unwrap().drain(..));
    stats.warnings.extend(w.0);
    if let Some(p) = &opts.progress {
        p.finish_and_clear();
    }
    // A file whose content failed was removed and reported already.
    for (path, node) in written.iter().filter(|(p, _)| p.exists()) {
        match restore_plan::content_matches(repo, &cache, node, path)? {
            true => stats.verified += 1,
            false => stats.errors.push(format!(
                "{}: verify: the content read back differs from the snapshot",
                path.display()
            )),
        }
    }
    Ok(stats)
}

/// Applies a restored directory's metadata through a handle on it: one
/// lookup of its path instead of one per call.
fn apply_dir_meta(path: &Path, node: &Node, owners: bool, w: &mut MetaWarnings) {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(dir) => source::apply_meta_fd(&dir, path, node, owners, w),
        // A directory this process may not read: by path (never a link,
        // which the open above would have refused with another error).
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            source::apply_meta(path, node, owners, w)
        }
        // Replaced by a symlink or something else meanwhile: never follow it.
        Err(e) => w.0.push(format!(
            "{}: not restoring its metadata: {e}",
            path.display()
        )),
    }
}

/// Removes whatever is at `path` unless it is a real directory (never
/// follows a symlink an attacker may have planted in the target).
fn clear(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Restorer<'_> {
    /// Whether `rel` is restored (`Some(true)`: fully; `Some(false)`: only
    /// as a directory on the way to an included path).
    fn selected(&self, rel: &[String]) -> Option<bool> {
        if self.include.is_empty() {
            return Some(true);
        }
        let mut partial = false;
        for inc in &self.include {
            if rel.starts_with(inc) {
                return Some(true);
            }
            if inc.starts_with(rel) {
                partial = true;
            }
        }
        partial.then_some(false)
    }

    /// How `rel` is selected by the paths and patterns, under a parent
    /// selected as `parent`; None when it is not restored.
    fn select(&self, rel: &[String], parent: Sel, is_dir: bool) -> Option<Sel> {
        let paths = self.selected(rel)?;
        let p = &self.opts.patterns;
        if p.is_empty() {
            return Some(Sel {
                full: paths,
                inc: true,
            });
        }
        let (path, name) = (rel.join("/"), rel.last().map_or("", |s| s.as_str()));
        if p.excluded(&path, name) {
            return None;
        }
        let inc = parent.inc || p.included(&path, name);
        (inc || is_dir).then_some(Sel {
            full: paths && inc,
            inc,
        })
    }

    /// Records a change a dry run would make.
    fn change(&mut self, what: char, rel: &[String]) {
        if self.opts.dry_run {
            self.stats.changes.push(format!("{what} {}", rel.join("/")));
        }
    }

    /// Restores a tree into `dest`; `fresh` when this restore created
    /// `dest` (then none of its entries can exist yet, and none is looked
    /// for: on a tree of small files those lookups cost a tenth of the
    /// walking thread's time).
    fn restore_tree(
        &mut self,
        tree: &BlobId,
        rel: &[String],
        dest: &Path,
        fresh: bool,
        sel: Sel,
    ) -> Result<()> {
        self.hold.tick()?;
        let (tree, mut located) = match self.ahead.as_mut().and_then(|a| a.next(tree)) {
            Some(t) => {
                let t = t?;
                (t.tree, t.chunks.into_iter())
            }
            None => (
                self.repo.load_tree(self.cache, tree)?,
                Vec::new().into_iter(),
            ),
        };
        let delete = self.opts.delete && sel.full && !fresh;
        let names: std::collections::HashSet<Vec<u8>> = match delete {
            true => tree.nodes.iter().map(|n| n.name.to_vec()).collect(),
            false => Default::default(),
        };
        for node in tree.nodes {
            let located = located.next().flatten();
            self.hold.tick()?;
            let name = String::from_utf8_lossy(&node.name).into_owned();
            let mut rel_child = rel.to_vec();
            rel_child.push(name);
            let is_dir = node.kind == Some(NodeKind::Dir);
            let Some(child) = self.select(&rel_child, sel, is_dir) else {
                continue;
            };
            let path = dest.join(std::ffi::OsStr::from_bytes(&node.name));
            if let Err(e) = self.restore_node(node, located, &rel_child, &path, child, fresh) {
                match e {
                    Error::Io { .. } | Error::RawIo(_) => self.stats.errors.push(e.to_string()),
                    e => return Err(e),
                }
            }
        }
        if delete {
            self.delete_extra(dest, rel, &names)?;
        }
        Ok(())
    }

    /// Removes the entries of `dest` the snapshot's directory lacks, but
    /// none an exclude pattern names.
    fn delete_extra(
        &mut self,
        dest: &Path,
        rel: &[String],
        names: &std::collections::HashSet<Vec<u8>>,
    ) -> Result<()> {
        let Ok(rd) = fs::read_dir(dest) else {
            return Ok(());
        };
        let mut extra: Vec<_> = rd
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !names.contains(n.as_bytes()))
            .collect();
        extra.sort();
        for n in extra {
            let mut rel_child = rel.to_vec();
            rel_child.push(n.to_string_lossy().into_owned());
            let (path, name) = (rel_child.join("/"), &rel_child[rel_child.len() - 1]);
            if self.opts.patterns.excluded(&path, name) {
                continue;
            }
            self.change('-', &rel_child);
            if !self.opts.dry_run {
                let p = dest.join(&n);
                clear(&p).map_err(|e| Error::io(&p, e))?;
            }
            self.stats.deleted += 1;
        }
        Ok(())
    }

    /// What to do with `node` at `path`: looks at what stands there.
    fn decide(&self, node: &Node, path: &Path, fresh: bool) -> Result<Action> {
        if fresh {
            return Ok(Action::Create);
        }
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Action::Create),
            Err(e) => return Err(Error::io(path, e)),
        };
        // A further name of a hard-linked file whose first name was met:
        // kept when it is that inode already, else linked to it anew (its
        // content, however equal, is another file).
        if node.kind == Some(NodeKind::File) && node.links > 1 && !m.is_dir() {
            if let Some((first, _)) = self.hardlinks.get(&(node.dev, node.inode)) {
                let same = fs::symlink_metadata(first)
                    .is_ok_and(|f| (f.dev(), f.ino()) == (m.dev(), m.ino()));
                return Ok(match self.opts.overwrite {
                    Overwrite::Never => Action::Keep,
                    Overwrite::Always => Action::Replace,
                    _ if same => Action::Keep,
                    _ => Action::Replace,
                });
            }
        }
        let (repo, cache) = (self.repo, self.cache);
        // Asked last, when all else matches: reads the file.
        let mut same = || {
            node.kind != Some(NodeKind::File)
                || restore_plan::content_matches(repo, cache, node, path).unwrap_or(false)
        };
        let o = self.opts;
        Ok(restore_plan::decide(
            o.overwrite,
            o.delete,
            o.owners,
            node,
            path,
            Some(&m),
            &mut same,
        ))
    }

    fn restore_node(
        &mut self,
        node: Node,
        located: Option<Vec<Located>>,
        rel: &[String],
        path: &Path,
        sel: Sel,
        fresh: bool,
    ) -> Result<()> {
        let io = |e| Error::io(path, e);
        if matches!(node.kind, Some(NodeKind::Socket) | None) {
            self.stats.skipped.push(rel.join("/"));
            return Ok(());
        }
        let action = self.decide(&node, path, fresh)?;
        let dry = self.opts.dry_run;
        match action {
            Action::Refuse => {
                self.change('!', rel);
                self.stats.refused.push(path.display().to_string());
                return Ok(());
            }
            Action::Keep if node.kind == Some(NodeKind::Dir) => {}
            Action::Leave => {
                self.stats.unchanged += 1;
                return Ok(());
            }
            Action::Keep => {
                // A kept file of several names: its other names link to it.
                if node.kind == Some(NodeKind::File) && node.links > 1 {
                    self.hardlinks
                        .entry((node.dev, node.inode))
                        .or_insert_with(|| (path.to_path_buf(), Arc::new(Links::default())));
                }
                self.stats.unchanged += 1;
                return Ok(());
            }
            Action::Replace => {
                if node.kind != Some(NodeKind::Dir) || sel.full {
                    self.change('M', rel);
                }
                if !dry {
                    clear(path).map_err(io)?;
                }
            }
            Action::Create => {
                if node.kind != Some(NodeKind::Dir) || sel.full {
                    self.change('+', rel);
                }
            }
        }
        // Nothing stands at `path` now (Create, Replace), or a directory
        // (Keep).
        match node.kind {
            Some(NodeKind::Dir) => {
                let existed = action == Action::Keep;
                if !existed && !dry {
                    fs::create_dir(path).map_err(io)?;
                    if !sel.full {
                        self.on_the_way.push(path.to_path_buf());
                    }
                }
                // unwrap: a decoded tree guarantees a dir has a subtree
                let sub = node.subtree.expect("dir has subtree");
                self.restore_tree(&sub, rel, path, !existed, sel)?;
                if sel.full {
                    self.stats.dirs += 1;
                    if !dry {
                        self.dirs.push((path.to_path_buf(), node));
                    }
                }
            }
            Some(NodeKind::File) if dry => {
                self.stats.files += 1;
                self.stats.bytes += node.size;
            }
            Some(NodeKind::File) => {
                let mut links = None;
                if node.links > 1 {
                    if let Some((first, l)) = self.hardlinks.get(&(node.dev, node.inode)) {
                        l.link(first, path).map_err(io)?;
                        self.stats.files += 1;
                        return Ok(());
                    }
                    let l = Arc::new(Links::default());
                    self.hardlinks
                        .insert((node.dev, node.inode), (path.to_path_buf(), l.clone()));
                    links = Some(l);
                }
                if self.opts.verify {
                    self.written.push((path.to_path_buf(), node.clone()));
                }
                self.restore_file(node, located, path, links)?;
            }
            _ if dry => self.stats.others += 1,
            Some(NodeKind::Symlink) => {
                // unwrap: a decoded tree guarantees a symlink has a target
                let target = node.target.as_ref().expect("symlink has target");
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path)
                    .map_err(io)?;
                let mut w = MetaWarnings::default();
                source::apply_meta(path, &node, self.opts.owners, &mut w);
                self.stats.warnings.extend(w.0);
                self.stats.others += 1;
            }
            _ => match source::make_special(path, &node) {
                Ok(()) => {
                    let mut w = MetaWarnings::default();
                    source::apply_meta(path, &node, self.opts.owners, &mut w);
                    self.stats.warnings.extend(w.0);
                    self.stats.others += 1;
                }
                Err(e) => self
                    .stats
                    .warnings
                    .push(format!("{}: mknod: {e}", path.display())),
            },
        }
        Ok(())
    }

    /// Creates a file and queues its chunks; `located`: where its inline
    /// chunks live, when known.
    fn restore_file(
        &mut self,
        node: Node,
        located: Option<Vec<Located>>,
        path: &Path,
        links: Option<Arc<Links>>,
    ) -> Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        self.stats.files += 1;
        self.stats.bytes += node.size;
        if let Some(p) = &self.opts.progress {
            p.inc_length(node.size);
        }
        let task = Arc::new(FileTask {
            path: path.to_path_buf(),
            file,
            node: node.clone(),
            owners: self.opts.owners,
            remaining: AtomicUsize::new(1),
            failed: Mutex::new(None),
            links,
        });
        let (mut offset, mut holes) = (0u64, false);
        let (jobs, cache, batch) = (&self.jobs, self.cache, &mut self.batch);
        let (lookups, shared) = (&mut self.lookups, &*self.shared);
        // Inline chunks come first, in the order they were located.
        let mut located = located.into_iter().flatten();
        let res = self.repo.for_each_chunk(cache, &node, &mut |chunk| {
            let at = offset;
            offset += chunk.len;
            if chunk.is_zero() {
                holes = true;
            } else {
                lookups
                    .chunks
                    .push((task.clone(), at, chunk, located.next()));
                if lookups.full() {
                    lookups.flush(cache, batch, jobs, shared)?;
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            task.fail(e.to_string());
        } else if offset != node.size {
            task.fail(format!(
                "content is {offset} bytes, the tree says {}",
                node.size
            ));
        } else if holes {
            // Holes are never written: sizing the file leaves them sparse.
            if let Err(e) = task.file.set_len(node.size) {
                task.fail(Error::io(path, e).to_string());
            }
        }
        self.lookups.closed.push(task);
        if self.lookups.full() {
            self.lookups
                .flush(self.cache, &mut self.batch, &self.jobs, &self.shared)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn a_span_is_one_ascending_run_of_one_pack() {
        let d = tempfile::tempdir().unwrap();
        let task = Arc::new(FileTask {
            path: d.path().join("f"),
            file: File::create(d.path().join("f")).unwrap(),
            node: Node::default(),
            owners: false,
            remaining: AtomicUsize::new(1),
            failed: Mutex::new(None),
            links: None,
        });
        let job = |pack: u8, offset: u64, len: u32| Job {
            task: task.clone(),
            offset: 0,
            chunk: ChunkRef {
                id: BlobId([0; 32]),
                len: 1,
            },
            loc: BlobLocation {
                pack: crate::id::PackId([pack; 32]),
                offset,
                sealed_len: len,
                plain_len: 1,
                kind: Kind::Data,
            },
        };
        let gap = SPAN_GAP;
        let jobs = vec![
            job(1, 0, 100),
            job(1, 100, 50),
            job(1, 150 + gap, 10),         // a gap of the limit still joins
            job(1, 160 + 2 * gap + 1, 10), // one byte more does not
        ];
        assert_eq!(span_len(&jobs), 3);
        assert_eq!(span_len(&jobs[3..]), 1);
        // another pack, a chunk met again, a step back: each ends the run
        assert_eq!(span_len(&[job(1, 0, 10), job(2, 10, 10)]), 1);
        assert_eq!(span_len(&[job(1, 0, 10), job(1, 0, 10)]), 1);
        assert_eq!(span_len(&[job(1, 50, 10), job(1, 5, 10)]), 1);
        // and a run stops at the size limit
        let big = (SPAN_BYTES / 2) as u32;
        assert_eq!(
            span_len(&[
                job(1, 0, big),
                job(1, big.into(), big),
                job(1, 2 * u64::from(big), 1)
            ]),
            2
        );
    }

    #[test]
    fn directory_metadata_never_follows_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let (real, link) = (d.path().join("real"), d.path().join("link"));
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
        symlink(&real, &link).unwrap();
        let node = Node {
            kind: Some(NodeKind::Dir),
            mode: 0o700,
            mtime_ns: 1_000_000_000,
            ..Default::default()
        };
        let mut w = MetaWarnings::default();
        apply_dir_meta(&link, &node, false, &mut w);
        assert_eq!(w.0.len(), 1, "{:?}", w.0);
        assert!(w.0[0].contains("not restoring its metadata"), "{:?}", w.0);
        let m = fs::metadata(&real).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755, "target untouched");
        // A real directory gets its metadata.
        apply_dir_meta(&real, &node, false, &mut w);
        assert_eq!(w.0.len(), 1, "{:?}", w.0);
        let m = fs::metadata(&real).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        assert_eq!(
            filetime::FileTime::from_last_modification_time(&m).unix_seconds(),
            1
        );
    }
}
