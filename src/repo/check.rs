//! Check: proves that every snapshot can be restored. Without `read_data` it
//! verifies structure (every snapshot opens, every pack it lists exists,
//! every tree opens and every chunk it names sits in a listed pack); with
//! `read_data` it also reads every pack whole, checks its name against its
//! hash and opens every blob (decrypt, decompress, recompute the keyed id).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::Repository;
use crate::cache::Cache;
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::chunklist;
use crate::format::tree::NodeKind;
use crate::format::{blob, pack};
use crate::id::{BlobId, PackId};

/// What a check found.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Distinct trees opened.
    pub trees: u64,
    /// Chunk references checked.
    pub chunks: u64,
    /// Packs read whole (with `read_data`).
    pub packs_read: u64,
    /// Blobs opened from packs (with `read_data`).
    pub blobs_read: u64,
    /// Problems, one line each.
    pub errors: Vec<String>,
    /// Packs that no snapshot lists and whose header does not open with
    /// this repository's key (their bytes do hash to their name): foreign
    /// objects, such as a client without the key could upload. Never
    /// reused; collected by prune like any unreferenced pack. Not damage.
    pub foreign_packs: Vec<String>,
}

/// Checks the repository; problems go into the report, not the `Err`.
pub fn check(repo: &Repository, read_data: bool) -> Result<CheckReport> {
    let mut cache = repo.cache()?;
    let sync = repo.sync_cache(&mut cache)?;
    let mut rep = CheckReport::default();
    // Judged once every snapshot is read: damage if a snapshot lists one.
    let mut suspects: HashMap<PackId, String> = sync
        .unreadable
        .into_iter()
        .map(|(p, e)| (p, format!("header does not open: {e}")))
        .collect();
    let mut trees_seen: HashSet<BlobId> = HashSet::new();
    for id in repo.store().list_snapshots()? {
        rep.snapshots += 1;
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                rep.errors.push(e.to_string());
                continue;
            }
        };
        let packs: HashSet<PackId> = snap.packs.iter().copied().collect();
        for p in &snap.packs {
            if repo.store().pack_size(p)?.is_none() {
                rep.errors
                    .push(format!("snapshot {}: pack {p} is missing", id.short()));
            }
        }
        let mut w = TreeCheck {
            repo,
            cache: &cache,
            packs: &packs,
            snap: id.short(),
            rep: &mut rep,
            seen: &mut trees_seen,
        };
        w.tree(&snap.record.tree, "/");
    }
    if read_data {
        read_all(repo, &cache, &mut rep, &mut suspects)?;
    }
    judge_suspects(repo, suspects, &mut rep)?;
    Ok(rep)
}

/// Packs whose bytes match their name but whose header does not open are
/// damage when a snapshot lists them, and foreign objects otherwise. Only
/// the suspects are held, and the snapshots' plain pack lists are read
/// again one at a time, only when there are any.
fn judge_suspects(
    repo: &Repository,
    suspects: HashMap<PackId, String>,
    rep: &mut CheckReport,
) -> Result<()> {
    if suspects.is_empty() {
        return Ok(());
    }
    let mut listed = HashSet::new();
    // A snapshot whose plain part does not decode was reported above.
    crate::referenced::for_each_list(repo.store().as_ref(), &mut |_, packs| {
        listed.extend(packs.into_iter().filter(|p| suspects.contains_key(p)));
        Ok(())
    })?;
    let mut all: Vec<_> = suspects.into_iter().collect();
    all.sort();
    for (p, why) in all {
        if listed.contains(&p) {
            rep.errors.push(format!("pack {p}: {why}"));
        } else {
            rep.foreign_packs.push(format!(
                "pack {p} is listed by no snapshot and does not open with this repository's key ({why}): \
                 a foreign object, never reused; prune collects it"
            ));
        }
    }
    Ok(())
}

struct TreeCheck<'a> {
    repo: &'a Repository,
    cache: &'a Cache,
    packs: &'a HashSet<PackId>,
    snap: String,
    rep: &'a mut CheckReport,
    seen: &'a mut HashSet<BlobId>,
}

impl TreeCheck<'_> {
    fn located(&mut self, id: &BlobId, what: &str, path: &str) -> bool {
        // A blob written anew (out of a mostly dead pack) has several
        // homes; the snapshot needs one of them among the packs it lists.
        if let Ok(locs) = self.cache.locations(id) {
            if locs.iter().any(|p| self.packs.contains(p)) {
                return true;
            }
        }
        match self.cache.lookup(id) {
            Ok(Some(loc)) if self.packs.contains(&loc.pack) => true,
            Ok(Some(loc)) => {
                self.rep.errors.push(format!(
                    "snapshot {}: {what} {} of {path} is in pack {}, which the snapshot does not list",
                    self.snap,
                    id.short(),
                    loc.pack.short()
                ));
                false
            }
            Ok(None) => {
                self.rep.errors.push(format!(
                    "snapshot {}: {what} {} of {path} is in no pack",
                    self.snap,
                    id.short()
                ));
                false
            }
            Err(e) => {
                self.rep.errors.push(e.to_string());
                false
            }
        }
    }

    fn tree(&mut self, id: &BlobId, path: &str) {
        if !self.seen.insert(*id) {
            return;
        }
        self.rep.trees += 1;
        if !self.located(id, "tree", path) {
            return;
        }
        let tree = match self.repo.load_tree(self.cache, id) {
            Ok(t) => t,
            Err(e) => {
                self.rep
                    .errors
                    .push(format!("snapshot {}: tree of {path}: {e}", self.snap));
                return;
            }
        };
        for node in &tree.nodes {
            let child = format!(
                "{}/{}",
                path.trim_end_matches('/'),
                String::from_utf8_lossy(&node.name)
            );
            match node.kind {
                Some(NodeKind::Dir) => {
                    if let Some(sub) = &node.subtree {
                        self.tree(sub, &child);
                    }
                }
                Some(NodeKind::File) => self.file(node, &child),
                _ => {}
            }
        }
    }

    fn file(&mut self, node: &crate::format::tree::Node, path: &str) {
        let mut total = 0u64;
        if let Some(inline) = &node.chunks {
            match chunklist::decode(inline) {
                Ok(refs) => {
                    for r in refs {
                        total += r.len;
                        self.chunk(&r, path);
                    }
                }
                Err(e) => self
                    .rep
                    .errors
                    .push(format!("snapshot {}: {path}: {e}", self.snap)),
            }
        }
        for list in node.lists.iter().flatten() {
            if !self.located(list, "chunk list", path) {
                continue;
            }
            match self
                .repo
                .read_blob(self.cache, Kind::ChunkList, list)
                .and_then(|b| Ok(chunklist::decode(&b)?))
            {
                Ok(refs) => {
                    for r in refs {
                        total += r.len;
                        self.chunk(&r, path);
                    }
                }
                Err(e) => self
                    .rep
                    .errors
                    .push(format!("snapshot {}: {path}: {e}", self.snap)),
            }
        }
        if total != node.size {
            self.rep.errors.push(format!(
                "snapshot {}: {path}: content adds up to {total} bytes, the tree says {}",
                self.snap, node.size
            ));
        }
    }

    fn chunk(&mut self, r: &chunklist::ChunkRef, path: &str) {
        self.rep.chunks += 1;
        if !r.is_zero() {
            self.located(&r.id, "chunk", path);
        }
    }
}

/// Reads every pack whole, in parallel.
fn read_all(
    repo: &Repository,
    _cache: &Cache,
    rep: &mut CheckReport,
    suspects: &mut HashMap<PackId, String>,
) -> Result<()> {
    let (tx, rx) = crossbeam_channel::bounded::<(PackId, u64)>(4);
    let out = Mutex::new((0u64, 0u64, Vec::<String>::new(), Vec::new()));
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 8);
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            let rx = rx.clone();
            let out = &out;
            s.spawn(move || {
                for (id, size) in rx {
                    let r = read_pack(repo, &id, size);
                    // unwrap: the lock is never held across a panic
                    let mut o = out.lock().unwrap();
                    o.0 += 1;
                    o.1 += r.blobs;
                    o.2.extend(r.errors);
                    o.3.extend(r.unopened.map(|why| (id, why)));
                }
            });
        }
        drop(rx);
        let r = repo.store().for_each_pack(&mut |id, size| {
            tx.send((id, size))
                .map_err(|_| Error::Corrupt("check workers stopped".into()))
        });
        drop(tx);
        r
    })?;
    // unwrap: the lock is never held across a panic
    let (packs, blobs, errs, unopened) = out.into_inner().unwrap();
    rep.packs_read = packs;
    rep.blobs_read = blobs;
    rep.errors.extend(errs);
    for (id, why) in unopened {
        // A header the cache sync could not open either: one line.
        suspects.entry(id).or_insert(why);
    }
    Ok(())
}

/// What reading one pack whole found.
#[derive(Default)]
struct PackRead {
    /// Blobs opened.
    blobs: u64,
    /// Problems.
    errors: Vec<String>,
    /// The pack's bytes match its name, but its header does not open:
    /// damage or a foreign object, as [`judge_suspects`] decides.
    unopened: Option<String>,
}

/// Reads one pack whole; returns the blobs opened and the problems found.
fn read_pack(repo: &Repository, id: &PackId, size: u64) -> PackRead {
    let mut out = PackRead::default();
    let mut bytes = match repo.store().read_pack(id, 0, size as usize) {
        Ok(b) => b,
        Err(e) => {
            out.errors.push(format!("pack {id}: {e}"));
            return out;
        }
    };
    let sound = PackId::of(&bytes) == *id;
    if !sound {
        out.errors.push(format!(
            "pack {id}: content does not hash to its name (damaged)"
        ));
    }
    let entries = match pack::decode(repo.keys(), &bytes) {
        Ok(e) => e,
        Err(e) if sound => {
            out.unopened = Some(format!("header does not open: {e}"));
            return out;
        }
        Err(e) => {
            out.errors.push(format!("pack {id}: {e}"));
            return out;
        }
    };
    let errs = &mut out.errors;
    // Each blob is decrypted where it lies, so entries must not overlap
    // (a writer never makes them; an overlap is reported, not opened).
    if pack::blobs_overlap(&entries) {
        errs.push(format!("pack {id}: blobs overlap in the pack"));
        return out;
    }
    let mut n = 0;
    for e in entries {
        // Opened where it lies: the pack's bytes are not needed again.
        let sealed = &mut bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
        match blob::open_in_place(repo.keys(), e.kind, &e.id, sealed) {
            Ok(p) if p.plain_len() == e.plain_len as usize => n += 1,
            Ok(_) => errs.push(format!(
                "pack {id}: blob {} has the wrong length",
                e.id.short()
            )),
            Err(err) => errs.push(format!("pack {id}: blob {}: {err}", e.id.short())),
        }
    }
    out.blobs = n;
    out
}
