//! Chunk look-ups of a restore, batched: many files' chunks are located
//! in one pass over the cache, under a read transaction renewed now and
//! then so it is never held for long.

use super::*;

/// Chunks (of one file or of many small ones) looked up in the cache
/// together, and files whose chunks are all among them.
#[derive(Default)]
pub(super) struct Lookups {
    /// A file, a chunk's offset in it, the chunk, and where it lives when
    /// that was looked up already (`Some(None)`: in no pack).
    pub(super) chunks: Vec<(Arc<FileTask>, u64, ChunkRef, Option<Located>)>,
    /// Files the walker has finished with: their walker reference is
    /// dropped once their chunks are queued.
    pub(super) closed: Vec<Arc<FileTask>>,
}

/// Lookups gathered before one pass over the cache; also bounds the files
/// held open while they wait.
const LOOKUP_ITEMS: usize = 256;

impl Lookups {
    pub(super) fn full(&self) -> bool {
        self.chunks.len() >= LOOKUP_ITEMS || self.closed.len() >= LOOKUP_ITEMS
    }

    /// Looks every gathered chunk up and queues a job for each; a chunk in
    /// no pack fails its file only.
    pub(super) fn flush(
        &mut self,
        cache: &Cache,
        batch: &mut Batch<Job>,
        to: &Sender<Vec<Job>>,
        shared: &Shared,
    ) -> Result<()> {
        let res = self.queue(cache, batch, to);
        for task in self.closed.drain(..) {
            task.release(shared);
        }
        res
    }

    pub(super) fn queue(
        &mut self,
        cache: &Cache,
        batch: &mut Batch<Job>,
        to: &Sender<Vec<Job>>,
    ) -> Result<()> {
        if self.chunks.is_empty() {
            return Ok(());
        }
        let unknown = self.chunks.iter().filter(|c| c.3.is_none());
        let mut locs = match cache.lookup_many(unknown.map(|(_, _, c, _)| &c.id)) {
            Ok(l) => l.into_iter(),
            Err(e) => {
                for (task, _, _, _) in self.chunks.drain(..) {
                    task.fail(e.to_string());
                }
                return Ok(());
            }
        };
        for (task, offset, chunk, known) in self.chunks.drain(..) {
            // unwrap: one looked-up location per chunk without one
            let loc = known.unwrap_or_else(|| locs.next().unwrap());
            let Some(loc) = loc else {
                task.fail(format!(
                    "chunk {} is in no pack of the repository",
                    chunk.id
                ));
                continue;
            };
            task.remaining.fetch_add(1, Ordering::AcqRel);
            let len = chunk.len;
            let job = Job {
                task,
                offset,
                chunk,
                loc,
            };
            if let Some(full) = batch.push(job, len) {
                send(to, full)?;
            }
        }
        Ok(())
    }
}

/// One read transaction of the cache shared by many lookups, taken anew
/// every [`HOLD_ENTRIES`] steps so it is never held for long.
pub(super) struct RenewedHold<'a> {
    cache: &'a Cache,
    hold: Option<ReadHold<'a>>,
    steps: usize,
}

impl<'a> RenewedHold<'a> {
    pub(super) fn new(cache: &'a Cache) -> RenewedHold<'a> {
        RenewedHold {
            cache,
            hold: None,
            steps: 0,
        }
    }

    /// Ends the transaction held now, if any.
    pub(super) fn end(&mut self) {
        self.hold = None;
    }

    /// Counts a step; holds the transaction, renewing it when due.
    pub(super) fn tick(&mut self) -> Result<()> {
        self.steps += 1;
        if self.hold.is_none() || self.steps >= HOLD_ENTRIES {
            // The old transaction ends before the new one begins.
            self.end();
            self.hold = Some(self.cache.hold_read()?);
            self.steps = 0;
        }
        Ok(())
    }
}
