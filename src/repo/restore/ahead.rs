//! Trees read ahead of a restore's walker, on a thread of their own.

use super::*;

/// Decoded trees kept ready for the walker.
const TREES_AHEAD: usize = 64;

/// Where a chunk lives, or that it is in no pack.
pub(super) type Located = Option<BlobLocation>;

/// A tree read ahead, with the locations of its files' inline chunks
/// (those not zero, in order), one entry per node: `None` when not looked
/// up. The walker then asks the cache only for chunks of long files.
pub(super) struct AheadTree {
    pub(super) tree: Tree,
    pub(super) chunks: Vec<Option<Vec<Located>>>,
}

/// Looks up the inline chunks of a tree's files in one transaction; none
/// when that fails (the walker looks them up itself then).
fn locate_inline(cache: &Cache, tree: &Tree) -> Vec<Option<Vec<Located>>> {
    let mut ids = Vec::new();
    let spans: Vec<Option<std::ops::Range<usize>>> = tree
        .nodes
        .iter()
        .map(|n| {
            let inline = n
                .chunks
                .as_ref()
                .filter(|_| n.kind == Some(NodeKind::File))?;
            let refs = chunklist::decode(inline).ok()?;
            let start = ids.len();
            ids.extend(refs.iter().filter(|r| !r.is_zero()).map(|r| r.id));
            Some(start..ids.len())
        })
        .collect();
    let Ok(locs) = cache.lookup_many(ids.iter()) else {
        return spans.iter().map(|_| None).collect();
    };
    spans
        .into_iter()
        .map(|span| span.map(|r| locs[r].to_vec()))
        .collect()
}

/// Reads, opens and decodes a snapshot's trees on a thread of its own, in
/// the order the walker visits them (depth first, entries in order), so
/// the walker neither waits on a tree's read nor spends its time opening
/// it. On a tree of 9k directories those reads were a tenth of the
/// walker's time, plus its waits on the disk.
pub(super) struct TreesAhead {
    rx: Option<Receiver<(BlobId, Result<AheadTree>)>>,
    handle: Option<JoinHandle<()>>,
}

impl TreesAhead {
    pub(super) fn start(reader: BlobReader, cache: Cache, root: BlobId) -> TreesAhead {
        let (tx, rx) = bounded(TREES_AHEAD);
        let handle = std::thread::spawn(move || {
            let mut hold = RenewedHold::new(&cache);
            // Pre-order with an explicit stack: next to visit on top.
            let mut stack = vec![root];
            while let Some(id) = stack.pop() {
                // Without a hold, lookups take a transaction each.
                let _ = hold.tick();
                let tree = crate::repo::locate(&cache, &id)
                    .and_then(|loc| reader.read(&loc, Kind::Tree, &id))
                    .and_then(|plain| Ok(Tree::decode(&plain)?))
                    .map(|tree| {
                        let chunks = locate_inline(&cache, &tree);
                        AheadTree { tree, chunks }
                    });
                if let Ok(t) = &tree {
                    let subs = t
                        .tree
                        .nodes
                        .iter()
                        .rev()
                        .filter(|n| n.kind == Some(NodeKind::Dir));
                    stack.extend(subs.filter_map(|n| n.subtree));
                }
                // The walker gone or done with us: stop.
                if tx.send((id, tree)).is_err() {
                    break;
                }
            }
        });
        TreesAhead {
            rx: Some(rx),
            handle: Some(handle),
        }
    }

    /// The next tree, when it is `id`; None (and no more trees ahead) when
    /// the walk left the expected order.
    pub(super) fn next(&mut self, id: &BlobId) -> Option<Result<AheadTree>> {
        match self.rx.as_ref()?.recv() {
            Ok((got, tree)) if got == *id => Some(tree),
            _ => {
                self.stop();
                None
            }
        }
    }

    fn stop(&mut self) {
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for TreesAhead {
    fn drop(&mut self) {
        self.stop();
    }
}
