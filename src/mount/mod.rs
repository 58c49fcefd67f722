//! `coffer mount`: a repository's snapshots as a read-only file system
//! (FUSE, through `fuser`). The layout is made of fixed directories that sort
//! the snapshots (see [`table`]); inside a snapshot, directories are listed
//! from their trees when asked and files are read by offset from the chunks
//! under the read (see [`content`]), through bounded caches of trees and of
//! decrypted chunks ([`lru`]). Nothing is written to the repository.
//!
//! A read that meets damage fails with `EIO` and is named to the caller's
//! notice; the mount stays up.

pub mod content;
pub mod lru;
pub mod table;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyXattr, Request,
};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::cache::{BlobLocation, Cache};
use crate::crypto::Kind;
use crate::format::tree::{Node, NodeKind, Tree};
use crate::id::BlobId;
use crate::repo::restore::read_or_repair;
use crate::repo::{Repository, Snapshot};
use crate::Result;
use content::ChunkIndex;
use lru::Lru;
use table::{Table, What};

/// How long the kernel may keep names and attributes: a snapshot never
/// changes, so long.
const TTL: Duration = Duration::from_secs(300);
/// Decrypted chunks kept for reads.
const BLOB_BUDGET: usize = 64 << 20;
/// Decoded trees kept for listings and lookups.
const TREE_BUDGET: usize = 32 << 20;
/// Files' chunk indexes kept between opens.
const INDEX_BUDGET: usize = 16 << 20;
/// A listing reads at most this many of its subdirectories' trees ahead, and
/// with at most `PREFETCH_THREADS` reads at once: a walk (`find`, `du`) then
/// waits for one round of reads per directory, not one read per
/// subdirectory, which matters most over `quic://`.
const PREFETCH: usize = 64;
const PREFETCH_THREADS: usize = 8;

/// The file system of a mount.
pub struct Browse {
    repo: Repository,
    cache: Cache,
    snaps: Vec<Snapshot>,
    table: Table,
    trees: Lru<BlobId, Arc<Tree>>,
    blobs: Lru<BlobId, Arc<Vec<u8>>>,
    indexes: Lru<(BlobId, u32), Arc<ChunkIndex>>,
    open: HashMap<u64, Arc<ChunkIndex>>,
    next_fh: u64,
    uid: u32,
    gid: u32,
    started: SystemTime,
    notice: Box<dyn Fn(&str)>,
}

impl Browse {
    /// The file system over `snaps` (oldest first) of `repo`; `notice`
    /// hears of each failed read (the read itself answers `EIO`).
    pub fn new(
        repo: Repository,
        cache: Cache,
        snaps: Vec<Snapshot>,
        notice: Box<dyn Fn(&str)>,
    ) -> Browse {
        Browse {
            table: Table::new(&snaps),
            repo,
            cache,
            snaps,
            trees: Lru::new(TREE_BUDGET),
            blobs: Lru::new(BLOB_BUDGET),
            indexes: Lru::new(INDEX_BUDGET),
            open: HashMap::new(),
            next_fh: 1,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            started: SystemTime::now(),
            notice,
        }
    }

    fn tree(&mut self, id: &BlobId) -> Result<Arc<Tree>> {
        if let Some(t) = self.trees.get(id) {
            return Ok(t);
        }
        let bytes = self.repo.read_blob(&self.cache, Kind::Tree, id)?;
        let t = Arc::new(Tree::decode(&bytes)?);
        // Decoded nodes take about twice their encoded size.
        self.trees.insert(*id, t.clone(), bytes.len() * 2 + 64);
        Ok(t)
    }

    /// Reads the trees of `ids` not cached yet, several at once, into the
    /// cache. A tree that fails here is left out: the lookup that needs it
    /// reads it again and reports the failure.
    fn prefetch_trees(&mut self, ids: impl Iterator<Item = BlobId>) {
        let mut want: Vec<BlobId> = ids.filter(|id| !self.trees.contains(id)).collect();
        want.sort();
        want.dedup();
        want.truncate(PREFETCH);
        if want.len() < 2 {
            return;
        }
        let Ok(locs) = self.cache.lookup_many(want.iter()) else {
            return;
        };
        let jobs: Vec<(BlobId, BlobLocation)> = want
            .into_iter()
            .zip(locs)
            .filter_map(|(id, l)| Some((id, l?)))
            .collect();
        let (store, keys) = (self.repo.store().clone(), self.repo.keys().clone());
        let next = AtomicUsize::new(0);
        let read = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..PREFETCH_THREADS.min(jobs.len()) {
                s.spawn(|| {
                    while let Some((id, loc)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        if let Ok(p) = read_or_repair(store.as_ref(), &keys, loc, Kind::Tree, id) {
                            read.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((*id, p));
                        }
                    }
                });
            }
        });
        for (id, plain) in read.into_inner().unwrap_or_else(|e| e.into_inner()) {
            if let Ok(t) = Tree::decode(&plain) {
                self.trees.insert(id, Arc::new(t), plain.len() * 2 + 64);
            }
        }
    }

    fn blob(&mut self, id: &BlobId) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.blobs.get(id) {
            return Ok(b);
        }
        let b = Arc::new(self.repo.read_blob(&self.cache, Kind::Data, id)?);
        self.blobs.insert(*id, b.clone(), b.len() + 64);
        Ok(b)
    }

    /// The tree holding `ino`'s node and the node's index in it, for an
    /// entry inside a snapshot.
    fn place(&self, ino: u64) -> Option<(BlobId, u32)> {
        match self.table.get(ino)? {
            What::Node { tree, index, .. } => Some((*tree, *index)),
            _ => None,
        }
    }

    /// The tree listing directory `ino`, if it is one inside a snapshot
    /// (its top included); `Err` with the errno to answer otherwise.
    fn listing(&mut self, ino: u64) -> std::result::Result<Option<BlobId>, i32> {
        match self.table.get(ino) {
            None => Err(libc::ENOENT),
            Some(What::Dir(_)) => Ok(None),
            Some(What::Link(_)) => Err(libc::ENOTDIR),
            Some(What::Root { tree, .. }) => Ok(Some(*tree)),
            Some(What::Node { tree, index, .. }) => {
                let (tree, index) = (*tree, *index);
                let t = self.tree(&tree).map_err(|e| self.failed(ino, &e))?;
                match t.nodes[index as usize].subtree {
                    Some(sub) => Ok(Some(sub)),
                    None => Err(libc::ENOTDIR),
                }
            }
        }
    }

    /// Names a failure to the notice (the entry, when its tree is at hand,
    /// and its snapshot); the errno to answer (`EIO`).
    fn failed(&mut self, ino: u64, e: &crate::Error) -> i32 {
        let mut name = format!("inode {ino}");
        if let Some(What::Node { root, tree, index }) = self.table.get(ino).cloned() {
            if let Some(t) = self.trees.get(&tree) {
                name = format!(
                    "{:?}",
                    String::from_utf8_lossy(&t.nodes[index as usize].name)
                );
            }
            if let Some(What::Root { snap, .. }) = self.table.get(root) {
                name = format!("{name} in snapshot {}", self.snaps[*snap].id.short());
            }
        }
        (self.notice)(&format!("{name}: {e}"));
        libc::EIO
    }

    fn attr(&mut self, ino: u64) -> std::result::Result<FileAttr, i32> {
        let virt = |kind, perm, size, time| FileAttr {
            ino,
            size,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        match self.table.get(ino) {
            None => Err(libc::ENOENT),
            Some(What::Dir(_)) => Ok(virt(FileType::Directory, 0o555, 0, self.started)),
            Some(What::Link(t)) => Ok(virt(FileType::Symlink, 0o777, t.len() as u64, self.started)),
            Some(What::Root { snap, .. }) => {
                let t = time(self.snaps[*snap].record.time_ns);
                Ok(virt(FileType::Directory, 0o555, 0, t))
            }
            Some(What::Node { tree, index, .. }) => {
                let (tree, index) = (*tree, *index);
                let t = self.tree(&tree).map_err(|e| self.failed(ino, &e))?;
                Ok(node_attr(ino, &t.nodes[index as usize]))
            }
        }
    }

    fn node(&mut self, ino: u64) -> std::result::Result<(Arc<Tree>, usize), i32> {
        let (tree, index) = self.place(ino).ok_or(libc::EINVAL)?;
        let t = self.tree(&tree).map_err(|e| self.failed(ino, &e))?;
        Ok((t, index as usize))
    }

    fn index(&mut self, ino: u64) -> std::result::Result<Arc<ChunkIndex>, i32> {
        let (tree, index) = self.place(ino).ok_or(libc::EISDIR)?;
        if let Some(i) = self.indexes.get(&(tree, index)) {
            return Ok(i);
        }
        let (t, i) = self.node(ino)?;
        let n = &t.nodes[i];
        if n.kind != Some(NodeKind::File) {
            return Err(libc::EINVAL);
        }
        let mut refs = Vec::new();
        self.repo
            .for_each_chunk(&self.cache, n, &mut |r| {
                refs.push(r);
                Ok(())
            })
            .map_err(|e| self.failed(ino, &e))?;
        let idx = Arc::new(ChunkIndex::new(refs));
        self.indexes
            .insert((tree, index), idx.clone(), idx.weight());
        Ok(idx)
    }
}

/// Nanoseconds since the epoch as a time (before 1970 too).
fn time(ns: i64) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn file_type(k: Option<NodeKind>) -> FileType {
    match k {
        Some(NodeKind::Dir) => FileType::Directory,
        Some(NodeKind::Symlink) => FileType::Symlink,
        Some(NodeKind::Chardev) => FileType::CharDevice,
        Some(NodeKind::Blockdev) => FileType::BlockDevice,
        Some(NodeKind::Fifo) => FileType::NamedPipe,
        Some(NodeKind::Socket) => FileType::Socket,
        Some(NodeKind::File) | None => FileType::RegularFile,
    }
}

/// A stored node's attributes, as stored.
fn node_attr(ino: u64, n: &Node) -> FileAttr {
    let size = match n.kind {
        Some(NodeKind::File) => n.size,
        Some(NodeKind::Symlink) => n.target.as_ref().map_or(0, |t| t.len() as u64),
        _ => 0,
    };
    let (major, minor) = (
        libc::major(n.rdev as libc::dev_t),
        libc::minor(n.rdev as libc::dev_t),
    );
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: time(n.mtime_ns),
        mtime: time(n.mtime_ns),
        ctime: time(n.ctime_ns),
        crtime: time(n.mtime_ns),
        kind: file_type(n.kind),
        perm: (n.mode & 0o7777) as u16,
        nlink: n.links.clamp(1, u64::from(u32::MAX)) as u32,
        uid: n.uid,
        gid: n.gid,
        // The kernel's encoding of a device number.
        rdev: (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
        blksize: 4096,
        flags: 0,
    }
}

/// Answers a getxattr/listxattr: the size when asked for it, else the bytes
/// if they fit.
fn xattr_reply(reply: ReplyXattr, size: u32, bytes: &[u8]) {
    if size == 0 {
        reply.size(bytes.len() as u32);
    } else if bytes.len() <= size as usize {
        reply.data(bytes);
    } else {
        reply.error(libc::ERANGE);
    }
}

impl Filesystem for Browse {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = match self.listing(parent) {
            Err(e) => Err(e),
            Ok(None) => match self.table.get(parent) {
                Some(What::Dir(v)) => v
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, ino)| *ino)
                    .ok_or(libc::ENOENT),
                _ => Err(libc::ENOENT),
            },
            Ok(Some(sub)) => match self.tree(&sub) {
                Err(e) => Err(self.failed(parent, &e)),
                Ok(t) => match t
                    .nodes
                    .binary_search_by(|n| n.name.as_slice().cmp(name.as_bytes()))
                {
                    Err(_) => Err(libc::ENOENT),
                    Ok(i) => {
                        let n = &t.nodes[i];
                        let link = (n.kind != Some(NodeKind::Dir) && n.links > 1)
                            .then_some((n.dev, n.inode));
                        Ok(self.table.child(parent, sub, i as u32, link))
                    }
                },
            },
        };
        match found.and_then(|ino| self.attr(ino)) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.table.forget(ino, nlookup);
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        if let Some(What::Link(t)) = self.table.get(ino) {
            return reply.data(t.as_bytes());
        }
        match self.node(ino) {
            Ok((t, i)) => match &t.nodes[i].target {
                Some(target) => reply.data(target),
                None => reply.error(libc::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        match self.index(ino) {
            Ok(idx) => {
                let fh = self.next_fh;
                self.next_fh += 1;
                self.open.insert(fh, idx);
                // Content never changes: the kernel keeps what it read.
                reply.opened(fh, fuser::consts::FOPEN_KEEP_CACHE);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(idx) = self.open.get(&fh).cloned() else {
            return reply.error(libc::EBADF);
        };
        let got = idx.read(offset.max(0) as u64, u64::from(size), &mut |r| {
            self.blob(&r.id)
        });
        match got {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => reply.error(self.failed(ino, &e)),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: fuser::ReplyEmpty,
    ) {
        self.open.remove(&fh);
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        // Entry k (`.`, `..`, then the directory's own) has offset k + 1;
        // only those from `offset` on are sent, as many as fit.
        let start = offset.max(0) as usize;
        let mut at = start;
        let mut add = |reply: &mut ReplyDirectory, child: u64, kind, name: &OsStr| {
            at += 1;
            reply.add(child, at as i64, kind, name)
        };
        for name in [".", ".."].iter().skip(start) {
            if add(&mut reply, ino, FileType::Directory, OsStr::new(name)) {
                return reply.ok();
            }
        }
        let skip = start.saturating_sub(2);
        match self.listing(ino) {
            Err(e) => return reply.error(e),
            Ok(None) => {
                if let Some(What::Dir(v)) = self.table.get(ino) {
                    for (name, child) in v.iter().skip(skip) {
                        let kind = match self.table.get(*child) {
                            Some(What::Link(_)) => FileType::Symlink,
                            _ => FileType::Directory,
                        };
                        if add(&mut reply, *child, kind, name) {
                            break;
                        }
                    }
                }
            }
            Ok(Some(sub)) => match self.tree(&sub) {
                Err(e) => return reply.error(self.failed(ino, &e)),
                Ok(t) => {
                    if start == 0 {
                        self.prefetch_trees(t.nodes.iter().filter_map(|n| n.subtree));
                    }
                    for (i, n) in t.nodes.iter().enumerate().skip(skip) {
                        let child = self.table.peek(ino, i as u32);
                        if add(&mut reply, child, file_type(n.kind), &table::os(&n.name)) {
                            break;
                        }
                    }
                }
            },
        }
        reply.ok();
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        if self.place(ino).is_none() {
            return reply.error(libc::ENODATA);
        }
        match self.node(ino) {
            Ok((t, i)) => match t.nodes[i]
                .xattrs
                .iter()
                .find(|x| x.name.as_slice() == name.as_bytes())
            {
                Some(x) => xattr_reply(reply, size, &x.value),
                None => reply.error(libc::ENODATA),
            },
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        if self.place(ino).is_none() {
            return xattr_reply(reply, size, &[]);
        }
        match self.node(ino) {
            Ok((t, i)) => {
                let mut names = Vec::new();
                for x in &t.nodes[i].xattrs {
                    names.extend_from_slice(&x.name);
                    names.push(0);
                }
                xattr_reply(reply, size, &names);
            }
            Err(e) => reply.error(e),
        }
    }
}

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Let other users see the mount (then the kernel checks each entry's
    /// stored mode and owner); needs `user_allow_other` in
    /// `/etc/fuse.conf` when not root.
    pub allow_other: bool,
}

/// Mounts `fs` on `dir` and serves it until it is unmounted (see
/// [`detach`]); `ready` is called once the mount is in place. Mounted
/// read-only, `nosuid` and `nodev`: set-id bits and device nodes of a
/// backup are shown, never honoured.
pub fn serve(
    fs: Browse,
    dir: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(),
) -> std::io::Result<()> {
    use fuser::MountOption as O;
    let mut options = vec![
        O::RO,
        O::NoSuid,
        O::NoDev,
        O::NoAtime,
        O::FSName("coffer".into()),
        O::Subtype("coffer".into()),
    ];
    if opts.allow_other {
        options.push(O::AllowOther);
        options.push(O::DefaultPermissions);
    }
    let mut session = fuser::Session::new(fs, dir, &options)?;
    ready();
    session.run()
}

/// Detaches the mount at `dir` (lazily: a file still open keeps the
/// connection until it is closed, but the mount point is free at once).
pub fn detach(dir: &Path) -> std::io::Result<()> {
    if nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        return Ok(());
    }
    let st = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "-q", "--"])
        .arg(dir)
        .status()?;
    match st.success() {
        true => Ok(()),
        false => Err(std::io::Error::other(format!(
            "fusermount3 -u failed: {st}"
        ))),
    }
}
