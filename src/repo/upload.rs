//! The write half of a backup: blobs in, durable packs out. The calling
//! thread deduplicates against the cache; worker threads compress, seal and
//! verify; one packer thread writes packs to the store. Memory is bounded by
//! the channel depths, not by the size of the backup.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use rand::rngs::{OsRng, StdRng};
use rand::SeedableRng;

use super::batch::Batch;
use crate::cache::Cache;
use crate::crypto::{Keys, Kind};
use crate::error::{Error, Result};
use crate::format::blob::{Sealer, Verifier};
use crate::format::pack::{PackEntry, PackWriter};
use crate::id::{BlobId, PackId};
use crate::store::{PackUpload, Store};

/// Calls of [`Uploader::add`] with fewer bytes than this are gathered and
/// looked up together.
const UNSURE_BYTES: usize = 256 << 10;

struct Job {
    kind: Kind,
    id: BlobId,
    data: Vec<u8>,
}

struct Sealed {
    kind: Kind,
    id: BlobId,
    sealed: Vec<u8>,
    plain_len: u32,
}

struct PackDone {
    id: PackId,
    size: u64,
    entries: Vec<PackEntry>,
}

/// Figures of what was written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UploadStats {
    pub new_blobs: u64,
    pub new_bytes: u64,
    pub packs: u64,
    pub pack_bytes: u64,
}

type ErrorSlot = Arc<Mutex<Option<Error>>>;

fn record(slot: &ErrorSlot, e: Error) {
    // unwrap: the lock is never held across a panic
    let mut s = slot.lock().unwrap();
    if s.is_none() {
        *s = Some(e);
    }
}

pub(crate) struct Uploader {
    pending: HashSet<BlobId>,
    jobs: Option<Sender<Vec<Job>>>,
    /// Blobs not yet handed to the workers.
    batch: Batch<Job>,
    /// Blobs of small files not yet looked up in the cache (pending).
    unsure: Batch<Job>,
    done: Receiver<PackDone>,
    threads: Vec<JoinHandle<()>>,
    error: ErrorSlot,
    pub stats: UploadStats,
    /// Packs not to deduplicate against (mostly dead).
    pub sparse: HashSet<PackId>,
    /// Told of each pack once it is durable.
    pub durable: Option<Sender<(PackId, u64)>>,
    /// The packs this run wrote (32 bytes each: a run of 100 GB of new
    /// data in 16 MiB packs holds 200 KB).
    pub written: HashSet<PackId>,
    /// `backup --dry-run`: new blobs are counted, never sealed or stored.
    dry: bool,
}

impl Uploader {
    pub fn start(
        store: Arc<dyn Store>,
        keys: Arc<Keys>,
        level: i32,
        pack_size: u64,
        limit: Option<u64>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Uploader {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8);
        let (job_tx, job_rx) = bounded::<Vec<Job>>(workers);
        let (seal_tx, seal_rx) = bounded::<Vec<Sealed>>(workers);
        let (done_tx, done_rx) = bounded::<PackDone>(1024);
        let error: ErrorSlot = Arc::new(Mutex::new(None));
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (rx, tx, keys, err) =
                (job_rx.clone(), seal_tx.clone(), keys.clone(), error.clone());
            threads.push(std::thread::spawn(move || {
                crate::priority::lower_this_thread(crate::priority::HELPER_NICE);
                seal_worker(rx, tx, &keys, level, &err)
            }));
        }
        drop(seal_tx);
        let err = error.clone();
        threads.push(std::thread::spawn(move || {
            let pacer = limit.map(|l| Pacer::new(l, cancel));
            if let Err(e) = packer(seal_rx, done_tx, store.as_ref(), &keys, pack_size, pacer) {
                record(&err, e);
            }
        }));
        Uploader::with(Some(job_tx), done_rx, threads, error, false)
    }

    fn with(
        jobs: Option<Sender<Vec<Job>>>,
        done: Receiver<PackDone>,
        threads: Vec<JoinHandle<()>>,
        error: ErrorSlot,
        dry: bool,
    ) -> Uploader {
        Uploader {
            pending: HashSet::new(),
            jobs,
            batch: Batch::default(),
            unsure: Batch::default(),
            done,
            threads,
            error,
            stats: UploadStats::default(),
            written: HashSet::new(),
            sparse: HashSet::new(),
            durable: None,
            dry,
        }
    }

    /// An uploader that only counts: each blob the repository lacks is
    /// counted once as new and dropped. No thread, no pack, no cache row:
    /// a dry run must leave nothing a later run could mistake for stored.
    pub fn dry_run() -> Uploader {
        // A channel whose sender is gone: draining it ends at once.
        let (_, done) = bounded::<PackDone>(0);
        Uploader::with(None, done, Vec::new(), Arc::new(Mutex::new(None)), true)
    }

    fn take_error(&self) -> Option<Error> {
        // unwrap: the lock is never held across a panic
        self.error.lock().unwrap().take()
    }

    /// Enters finished packs into the cache, so a killed run's packs are
    /// reused by the next one.
    fn drain(&mut self, cache: &mut Cache, block: bool) -> Result<()> {
        loop {
            let msg = if block {
                self.done.recv().ok()
            } else {
                self.done.try_recv().ok()
            };
            let Some(p) = msg else { return Ok(()) };
            cache.add_pack(&p.id, p.size, &p.entries)?;
            if let Some(tx) = &self.durable {
                // A listener that is gone only means no early parity.
                let _ = tx.send((p.id, p.size));
            }
            for e in &p.entries {
                self.pending.remove(&e.id);
            }
            self.stats.packs += 1;
            self.written.insert(p.id);
            self.stats.pack_bytes += p.size;
        }
    }

    /// Stores blobs of one kind unless the repository or this run has them
    /// already. Whether the repository has them is asked of the cache for
    /// many blobs in one read transaction: an image's 32 KiB blocks cost
    /// one per buffer read, and the blobs of small files are gathered
    /// (copied, as a new blob is anyway) and asked about together, since a
    /// transaction per small file cost a tree backup more than its lookups.
    pub fn add(&mut self, cache: &mut Cache, kind: Kind, blobs: &[(BlobId, &[u8])]) -> Result<()> {
        self.drain(cache, false)?;
        let job = |id: &BlobId, data: &[u8]| Job {
            kind,
            id: *id,
            data: data.to_vec(),
        };
        let bytes: usize = blobs.iter().map(|(_, d)| d.len()).sum();
        if bytes >= UNSURE_BYTES {
            self.look_up_unsure(cache)?;
            let known = cache.have_blobs(blobs.iter().map(|(id, _)| id), &self.sparse)?;
            for ((id, data), known) in blobs.iter().zip(known) {
                // pending also catches a blob repeated within `blobs`
                if !known && self.pending.insert(*id) {
                    self.queue(job(id, data))?;
                }
            }
            return Ok(());
        }
        for (id, data) in blobs {
            // Pending from here on, so a repeat within the run is not
            // gathered twice; taken back if the cache knows it.
            if self.pending.insert(*id) {
                if let Some(full) = self.unsure.push(job(id, data), data.len() as u64) {
                    self.look_up(cache, full)?;
                }
            }
        }
        Ok(())
    }

    /// Looks up what was gathered by [`Uploader::add`].
    fn look_up_unsure(&mut self, cache: &mut Cache) -> Result<()> {
        match self.unsure.take() {
            Some(jobs) => self.look_up(cache, jobs),
            None => Ok(()),
        }
    }

    /// Queues those of `jobs` the repository does not have.
    fn look_up(&mut self, cache: &mut Cache, jobs: Vec<Job>) -> Result<()> {
        let known = cache.have_blobs(jobs.iter().map(|j| &j.id), &self.sparse)?;
        for (job, known) in jobs.into_iter().zip(known) {
            if known {
                self.pending.remove(&job.id);
            } else {
                self.queue(job)?;
            }
        }
        Ok(())
    }

    /// Hands a new blob to the workers (in the next batch); it is pending.
    fn queue(&mut self, job: Job) -> Result<()> {
        let len = job.data.len() as u64;
        self.stats.new_blobs += 1;
        self.stats.new_bytes += len;
        if self.dry {
            // Stays pending, so a repeat within the run counts once.
            return Ok(());
        }
        match self.batch.push(job, len) {
            Some(full) => self.send(full),
            None => Ok(()),
        }
    }

    /// Hands a batch of blobs to the workers.
    fn send(&mut self, batch: Vec<Job>) -> Result<()> {
        let sent = match self.jobs.as_ref() {
            Some(jobs) => jobs.send(batch).is_ok(),
            None => false,
        };
        if !sent {
            // The workers are gone, so the packer ends too: wait for it, as
            // it records why (a full disk) only after its committer stops.
            self.stop_threads();
            return Err(self
                .take_error()
                .unwrap_or_else(|| Error::Corrupt("upload pipeline stopped".into())));
        }
        Ok(())
    }

    /// Closes the queue and waits for every thread to end. Nothing
    /// listens for finished packs any more: dropping our end of `done`
    /// keeps the committer from blocking (it ignores a failed report).
    fn stop_threads(&mut self) {
        drop(self.jobs.take());
        self.done = crossbeam_channel::never();
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }

    /// Flushes the last pack and waits until every pack is durable and in
    /// the cache.
    /// Stores what is left and waits for every pack to be durable; the
    /// figures, and the packs this run wrote.
    pub fn finish(mut self, cache: &mut Cache) -> Result<(UploadStats, HashSet<PackId>)> {
        self.look_up_unsure(cache)?;
        let sent = match self.batch.take() {
            Some(last) => self.send(last),
            None => Ok(()),
        };
        // A failed send has already waited for the threads and taken why.
        sent?;
        drop(self.jobs.take());
        // Drain while the threads finish, so the packer never blocks on us
        // (should this fail, dropping self waits for them).
        self.drain(cache, true)?;
        for t in std::mem::take(&mut self.threads) {
            if t.join().is_err() {
                return Err(Error::Corrupt("an upload thread panicked".into()));
            }
        }
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        if !self.pending.is_empty() && !self.dry {
            return Err(Error::Corrupt(format!(
                "{} blobs were not stored",
                self.pending.len()
            )));
        }
        Ok((self.stats, std::mem::take(&mut self.written)))
    }
}

impl Drop for Uploader {
    /// A run that stops early (a failed dump, an error, a cancel) still
    /// waits for the packs already handed over: the process must not exit
    /// with a pack half written in the store's `tmp/`. Those packs are
    /// committed, for the next run to reuse.
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn seal_worker(
    rx: Receiver<Vec<Job>>,
    tx: Sender<Vec<Sealed>>,
    keys: &Keys,
    level: i32,
    err: &ErrorSlot,
) {
    let mut sealer = Sealer::new(level);
    let mut verifier = Verifier::new();
    // A CSPRNG per thread, seeded from the OS: one getrandom per thread, not per blob.
    let mut rng = StdRng::from_entropy();
    for batch in rx {
        let mut out = Vec::with_capacity(batch.len());
        for job in batch {
            match seal_one(keys, &mut sealer, &mut verifier, &mut rng, job) {
                Ok(s) => out.push(s),
                Err(id) => {
                    record(
                        err,
                        Error::Corrupt(format!("blob {id} did not verify after sealing")),
                    );
                    return;
                }
            }
        }
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// Seals one blob and opens it again; the blob's id when that fails.
fn seal_one(
    keys: &Keys,
    sealer: &mut Sealer,
    verifier: &mut Verifier,
    rng: &mut StdRng,
    job: Job,
) -> std::result::Result<Sealed, BlobId> {
    // The id is the caller's to compute once; tests check every caller.
    debug_assert_eq!(
        keys.blob_id(&job.data),
        job.id,
        "blob id of the wrong bytes"
    );
    let sealed = sealer.seal(keys, job.kind, &job.id, &job.data, rng);
    // Open every sealed blob once before it is written: catches a
    // compressor or cipher bug before it can reach the repository.
    // Comparing with the plaintext the id was computed from proves the
    // blob opens to the right content without hashing it again.
    if !verifier.verify(keys, job.kind, &job.id, &sealed, &job.data) {
        return Err(job.id);
    }
    Ok(Sealed {
        kind: job.kind,
        id: job.id,
        plain_len: job.data.len() as u32,
        sealed,
    })
}

/// A pack written whole, waiting to be made durable.
struct Written {
    id: PackId,
    upload: Box<dyn PackUpload>,
    entries: Vec<PackEntry>,
    size: u64,
    started: Instant,
}

/// Packs written but not yet committed: the packer fills the next one
/// while the committer waits for the disk (a local store's fsync of 16 MiB
/// stalled the whole pipeline: a tenth of an image backup's wall time).
const COMMITS_AHEAD: usize = 1;

fn packer(
    rx: Receiver<Vec<Sealed>>,
    done: Sender<PackDone>,
    store: &dyn Store,
    keys: &Keys,
    pack_size: u64,
    pacer: Option<Pacer>,
) -> Result<()> {
    let (tx, written) = bounded::<Written>(COMMITS_AHEAD);
    std::thread::scope(|s| {
        let committer = s.spawn(move || committer(written, done, pacer));
        let packed = pack_all(rx, tx, store, keys, pack_size);
        let committed = committer
            .join()
            .unwrap_or_else(|_| Err(Error::Corrupt("the pack committer panicked".into())));
        // The committer's failure first: the packer only saw it stop.
        committed.and(packed)
    })
}

/// Gathers sealed blobs into packs and hands each finished pack on.
fn pack_all(
    rx: Receiver<Vec<Sealed>>,
    to: Sender<Written>,
    store: &dyn Store,
    keys: &Keys,
    pack_size: u64,
) -> Result<()> {
    let mut current: Option<PackWriter<Box<dyn PackUpload>>> = None;
    let flush = |w: PackWriter<Box<dyn PackUpload>>| -> Result<()> {
        let started = Instant::now();
        let (id, upload, entries, size) = w.finish(keys, &mut OsRng)?;
        let w = Written {
            id,
            upload,
            entries,
            size,
            started,
        };
        to.send(w)
            .map_err(|_| Error::Corrupt("the pack committer stopped".into()))
    };
    for s in rx.iter().flatten() {
        let w = match current.as_mut() {
            Some(w) => w,
            None => current.insert(PackWriter::new(store.upload_pack()?)?),
        };
        w.add(s.kind, s.id, &s.sealed, s.plain_len)?;
        if w.len() >= pack_size {
            // unwrap: current was set just above
            flush(current.take().unwrap())?;
        }
    }
    if let Some(w) = current.take() {
        flush(w)?;
    }
    Ok(())
}

/// Makes written packs durable, in order, and reports each once it is.
fn committer(
    rx: Receiver<Written>,
    done: Sender<PackDone>,
    mut pacer: Option<Pacer>,
) -> Result<()> {
    for w in rx {
        w.upload.commit(w.id)?;
        if let Some(p) = pacer.as_mut() {
            let wait = p.wait_after(w.started, w.size, Instant::now());
            p.sleep(wait)?;
        }
        let _ = done.send(PackDone {
            id: w.id,
            size: w.size,
            entries: w.entries,
        });
    }
    Ok(())
}

/// Keeps the write rate under a limit, one pack at a time: a pack may go at
/// line speed, then the writer waits until the pack's bytes fit the rate.
/// Idle time (reading unchanged files) earns no credit for a later burst.
#[derive(Debug)]
struct Pacer {
    rate: crate::pace::RatePacer,
    /// A wait ends early, with [`Error::Interrupted`], when this is set.
    cancel: Option<Arc<AtomicBool>>,
}

impl Pacer {
    fn new(bytes_per_sec: u64, cancel: Option<Arc<AtomicBool>>) -> Pacer {
        Pacer {
            rate: crate::pace::RatePacer::new(bytes_per_sec),
            cancel,
        }
    }

    /// Waits, in short steps so that a cancel is seen at once.
    fn sleep(&self, wait: Duration) -> Result<()> {
        let end = Instant::now() + wait;
        loop {
            if self
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                return Err(Error::Interrupted);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(100)));
        }
    }

    /// How long to wait after writing `bytes` that began at `started`.
    fn wait_after(&mut self, started: Instant, bytes: u64, now: Instant) -> Duration {
        self.rate.after(bytes, started, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::store::LocalStore;

    /// Stores `calls` (each one [`Uploader::add`] of data blobs) into a
    /// fresh uploader and returns its figures.
    fn upload(
        store: &Arc<dyn Store>,
        cache: &mut Cache,
        keys: &Arc<Keys>,
        calls: &[Vec<Vec<u8>>],
    ) -> UploadStats {
        let mut up = Uploader::start(store.clone(), keys.clone(), 1, 1 << 20, None, None);
        for call in calls {
            let blobs: Vec<(BlobId, &[u8])> = call
                .iter()
                .map(|d| (keys.blob_id(d), d.as_slice()))
                .collect();
            up.add(cache, Kind::Data, &blobs).unwrap();
        }
        up.finish(cache).unwrap().0
    }

    #[test]
    fn gathered_and_direct_lookups_store_each_new_blob_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::create(&dir.path().join("repo")).unwrap());
        let mut cache = Cache::open(&dir.path().join("cache.db")).unwrap();
        let keys = Arc::new(Keys::derive(&MasterKey::from_bytes([9; 32])));
        let small = |i: u32| format!("small file {i}").repeat(50).into_bytes();
        let large = |i: u8| vec![i; UNSURE_BYTES];
        // Small blobs (gathered, in more than one batch), repeated across
        // calls and within one; large ones (looked up at once) in between,
        // one of them twice.
        let mut calls: Vec<Vec<Vec<u8>>> = (0..200).map(|i| vec![small(i % 150)]).collect();
        calls.push(vec![small(3), small(3), small(151)]);
        calls.push(vec![large(1), large(2)]);
        calls.push(vec![small(152), large(1)]);
        let first = upload(&store, &mut cache, &keys, &calls);
        assert_eq!(first.new_blobs, 150 + 1 + 1 + 2);
        for call in &calls {
            for d in call {
                assert!(
                    cache.lookup(&keys.blob_id(d)).unwrap().is_some(),
                    "every blob is in a pack"
                );
            }
        }
        // Again, with one new small blob among the known: only it is new.
        calls.push(vec![small(999)]);
        let second = upload(&store, &mut cache, &keys, &calls);
        assert_eq!(second.new_blobs, 1);
        assert_eq!(second.new_bytes, small(999).len() as u64);
    }

    #[test]
    fn pacer_holds_the_average_rate() {
        let mut p = Pacer::new(1000, None);
        let t0 = Instant::now();
        // 1000 bytes written instantly: wait a second.
        assert_eq!(p.wait_after(t0, 1000, t0), Duration::from_secs(1));
        // The next pack starts when the wait ended, took 0.5 s itself.
        let t1 = t0 + Duration::from_secs(1);
        let w = p.wait_after(t1, 1000, t1 + Duration::from_millis(500));
        assert_eq!(w, Duration::from_millis(500));
    }

    #[test]
    fn a_cancel_ends_the_wait() {
        let cancel = Arc::new(AtomicBool::new(true));
        let p = Pacer::new(1, Some(cancel));
        let t0 = Instant::now();
        assert!(matches!(
            p.sleep(Duration::from_secs(3600)),
            Err(Error::Interrupted)
        ));
        assert!(t0.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn pacer_gives_no_credit_for_idle_time() {
        let mut p = Pacer::new(1000, None);
        let t0 = Instant::now();
        let _ = p.wait_after(t0, 1000, t0);
        // A long idle pause, then a pack: it still pays its full second.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(p.wait_after(t1, 1000, t1), Duration::from_secs(1));
    }
}
