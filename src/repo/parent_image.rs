//! The parent of an incremental image backup: the snapshot a dirty bitmap
//! started at, and its disk's chunk list read in order, so that the clean
//! ranges of today's disk take the parent's chunks without being read.
//! The list is walked once, front to back, one list blob at a time: memory
//! does not grow with the disk.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Repository;
use crate::cache::Cache;
use crate::crypto::{Keys, Kind};
use crate::error::{Error, Result};
use crate::format::chunklist::{self, ChunkRef};
use crate::format::tree::Node;
use crate::id::{BlobId, SnapshotId};
use crate::store::Store;

/// The parent snapshot's copy of the disk.
pub(crate) struct ParentImage {
    /// The parent snapshot.
    pub id: SnapshotId,
    /// The disk's size then.
    pub size: u64,
    /// The packs the parent snapshot lists: every chunk taken from its
    /// disk lies in one of them.
    pub packs: Vec<crate::id::PackId>,
    node: Node,
    store: Arc<dyn Store>,
    keys: Arc<Keys>,
}

/// The newest snapshot of `host` whose image `name` started `bitmap`, or
/// the snapshot `spec` names (`--parent`), with its copy of the disk.
/// `None` (and why) when there is none to trust.
pub(crate) fn find(
    repo: &Repository,
    cache: &Cache,
    host: &str,
    name: &str,
    bitmap: &str,
    token: Option<&str>,
    spec: Option<&str>,
) -> Result<std::result::Result<ParentImage, String>> {
    let snap = match spec {
        Some(spec) => repo.find_snapshot(spec)?,
        None => {
            let good = repo.snapshots()?.good;
            let newest = good.into_iter().rev().find(|s| {
                s.record.host == host
                    && s.record.image.as_ref().is_some_and(|i| {
                        i.name == name && i.bitmap_start.as_deref() == Some(bitmap)
                    })
            });
            match newest {
                Some(s) => s,
                None => {
                    return Ok(Err(format!(
                        "no snapshot of image {name:?} on {host} started bitmap {bitmap:?}"
                    )))
                }
            }
        }
    };
    let Some(img) = &snap.record.image else {
        return Ok(Err(format!(
            "snapshot {} is not of a disk image",
            snap.id.short()
        )));
    };
    if img.name != name || img.bitmap_start.as_deref() != Some(bitmap) {
        return Ok(Err(format!(
            "snapshot {} did not start bitmap {bitmap:?} of image {name:?}",
            snap.id.short()
        )));
    }
    if let Some(t) = token {
        if img.bitmap_token.as_deref() != Some(t) {
            return Ok(Err(format!(
                "bitmap {bitmap:?} started at snapshot {} with token {:?}, but its token now is {t:?} (restarted since)",
                snap.id.short(),
                img.bitmap_token.as_deref().unwrap_or("")
            )));
        }
    }
    let root = repo.load_tree(cache, &snap.record.tree)?;
    let Some(node) = root
        .nodes
        .into_iter()
        .find(|n| n.name.as_slice() == name.as_bytes())
    else {
        return Ok(Err(format!(
            "snapshot {} holds no file {name:?}",
            snap.id.short()
        )));
    };
    if node.size != img.size {
        return Ok(Err(format!(
            "snapshot {}'s {name:?} is not of the size it recorded",
            snap.id.short()
        )));
    }
    Ok(Ok(ParentImage {
        id: snap.id,
        size: img.size,
        packs: snap.packs.clone(),
        node,
        store: repo.store().clone(),
        keys: repo.keys().clone(),
    }))
}

/// The parent's chunk references, taken in order by offset.
pub(crate) struct ParentRefs {
    image: ParentImage,
    /// List blobs not read yet.
    lists: VecDeque<BlobId>,
    /// References read and not taken; the front may be a zero run already
    /// partly taken.
    refs: VecDeque<ChunkRef>,
    /// The offset where the front of `refs` starts.
    pos: u64,
}

impl ParentRefs {
    pub fn new(image: ParentImage) -> Result<ParentRefs> {
        let refs = match &image.node.chunks {
            Some(inline) => chunklist::decode(inline)?.into(),
            None => VecDeque::new(),
        };
        Ok(ParentRefs {
            lists: image.node.lists.clone().unwrap_or_default().into(),
            refs,
            pos: 0,
            image,
        })
    }

    /// The parent snapshot.
    pub fn id(&self) -> SnapshotId {
        self.image.id
    }

    /// The packs the parent snapshot lists.
    pub fn packs(&self) -> &[crate::id::PackId] {
        &self.image.packs
    }

    fn front(&mut self, cache: &Cache) -> Result<Option<&mut ChunkRef>> {
        while self.refs.is_empty() {
            let Some(list) = self.lists.pop_front() else {
                return Ok(None);
            };
            let loc = super::locate(cache, &list)?;
            let plain = super::restore::read_or_repair(
                self.image.store.as_ref(),
                &self.image.keys,
                &loc,
                Kind::ChunkList,
                &list,
            )?;
            self.refs = chunklist::decode(&plain)?.into();
        }
        Ok(self.refs.front_mut())
    }

    /// The references that make `[at, at + len)` of the parent's disk.
    /// Ranges come in increasing order; a data chunk that straddles either
    /// end is an error (images are cut in fixed, aligned blocks, so it
    /// means the parent was cut differently).
    pub fn take(&mut self, cache: &Cache, at: u64, len: u64) -> Result<Vec<ChunkRef>> {
        let misaligned = |pos: u64| {
            Error::Corrupt(format!(
                "the parent snapshot's chunks do not align with this disk's blocks at byte {pos}; run a full read"
            ))
        };
        if at < self.pos {
            return Err(Error::Corrupt("parent ranges out of order".into()));
        }
        // Up to `at`.
        while self.pos < at {
            let pos = self.pos;
            let Some(r) = self.front(cache)? else {
                return Err(misaligned(pos));
            };
            if pos + r.len <= at {
                self.pos += r.len;
                self.refs.pop_front();
            } else if r.is_zero() {
                r.len -= at - pos;
                self.pos = at;
            } else {
                return Err(misaligned(pos));
            }
        }
        let mut out = Vec::new();
        let end = at + len;
        while self.pos < end {
            let pos = self.pos;
            let Some(r) = self.front(cache)? else {
                return Err(Error::Corrupt(format!(
                    "the parent snapshot's disk ends before byte {end}"
                )));
            };
            if pos + r.len <= end {
                out.push(*r);
                self.pos += r.len;
                self.refs.pop_front();
            } else if r.is_zero() {
                out.push(ChunkRef::zeros(end - pos));
                r.len -= end - pos;
                self.pos = end;
            } else {
                return Err(misaligned(pos));
            }
        }
        Ok(out)
    }
}
