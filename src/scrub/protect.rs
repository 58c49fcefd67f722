//! Parity for new packs (added to the open stripe's shards), and
//! forgetting packs a collection deleted.

use super::*;

/// Puts every pack that is in no stripe into one, computing parity at once:
/// new packs are added to the open stripe's parity, full stripes start anew.
pub fn protect(s: &LocalStore, cfg: ParityConfig) -> Result<ProtectReport> {
    let _g = s.lock_named("parity.lock", true)?;
    let rep = protect_locked(s, cfg)?;
    if let Some(b) = s.bucket() {
        // Stripes sealed by this protect: their parity to the bucket.
        super::bucket::sync_parity(s, b, cfg, false)?;
    }
    Ok(rep)
}

/// A stripe's members as written: each pack with its size.
type Members = Vec<(PackId, u64)>;

pub(super) fn protect_locked(s: &LocalStore, cfg: ParityConfig) -> Result<ProtectReport> {
    // Which packs are in a stripe comes from the stripe index, brought up
    // to date first: only stripes written or changed since the last run
    // are read, and no set of every protected pack is held.
    let files = stripe_files(s)?;
    let mut idx = StripeIndex::open(&parity_dir(s))?;
    idx.refresh(&files, &mut |id, f| load_stripe(id, f).map(|st| known(&st)))?;
    let top = files.keys().next_back().copied();
    // The stripe being filled starts as the last one when that one is
    // readable and not full.
    let open = match top {
        Some(t) => idx
            .stripe(t)?
            .filter(|k| k.readable && cfg.takes_more(k.members.len(), k.m))
            .map(|k| Open {
                id: t,
                old: k.members.len(),
                members: k.members,
                grew: false,
            }),
        None => None,
    };
    let mut f = Filler {
        s,
        cfg,
        idx,
        rep: ProtectReport::default(),
        open,
        next_id: top.map_or(0, |t| t + 1),
    };
    // Packs in no stripe join the open one as the walk finds them, looked
    // up a batch at a time: only one stripe's members are held, never the
    // list of every pack.
    let mut batch: Members = Vec::with_capacity(stripe_index::LOOKUP_BATCH);
    s.for_each_pack(&mut |id, size| {
        batch.push((id, size));
        if batch.len() >= stripe_index::LOOKUP_BATCH {
            f.add_batch(&mut batch)?;
        }
        Ok(())
    })?;
    f.add_batch(&mut batch)?;
    f.close()
}

/// A stripe as the index records it.
pub(super) fn known(st: &Stripe) -> Known {
    Known {
        m: st.header.m,
        members: st.header.members.iter().map(|m| (m.pack, m.size)).collect(),
        readable: true,
    }
}

/// Puts packs in no stripe into stripes, for [`protect`].
pub(super) struct Filler<'a> {
    pub(super) s: &'a LocalStore,
    pub(super) cfg: ParityConfig,
    pub(super) idx: StripeIndex,
    pub(super) rep: ProtectReport,
    /// The stripe being filled.
    pub(super) open: Option<Open>,
    pub(super) next_id: u64,
}

/// The stripe [`Filler`] is filling.
pub(super) struct Open {
    pub(super) id: u64,
    pub(super) members: Members,
    /// How many of `members` its parity on disk holds already.
    pub(super) old: usize,
    /// Whether it gained any member.
    pub(super) grew: bool,
}

impl Filler<'_> {
    fn add_batch(&mut self, batch: &mut Members) -> Result<()> {
        let fresh = self.idx.unprotected(batch)?;
        for ((id, size), fresh) in batch.drain(..).zip(fresh) {
            if !fresh {
                continue;
            }
            let next_id = &mut self.next_id;
            let open = self.open.get_or_insert_with(|| {
                *next_id += 1;
                Open {
                    id: *next_id - 1,
                    members: Vec::new(),
                    old: 0,
                    grew: false,
                }
            });
            open.members.push((id, size));
            open.grew = true;
            self.rep.packs_protected += 1;
            if open.members.len() >= self.cfg.k {
                // unwrap: set just above
                let full = self.open.take().unwrap();
                self.write(full)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, st: Open) -> Result<()> {
        let spare = self.next_id;
        let (id, written) = write_counted(
            self.s,
            self.cfg,
            &mut self.rep,
            (st.id, spare),
            &st.members,
            st.old,
        )?;
        if id == spare {
            self.next_id += 1;
        }
        record_written(self.s, self.cfg, &mut self.idx, id, written)
    }

    fn close(mut self) -> Result<ProtectReport> {
        if let Some(st) = self.open.take().filter(|o| o.grew) {
            self.write(st)?;
        }
        Ok(self.rep)
    }
}

/// Writes stripe `id.0` over `members`, the first `old` of which its
/// parity holds already, and counts it: fresh members that turn out
/// damaged are left out of it and reported instead of protected. When an
/// old member is missing or damaged, that stripe keeps its parity (the
/// copy that can rebuild the member) and the fresh members go to the new
/// stripe `id.1` instead. Returns the stripe written and its members.
pub(super) fn write_counted(
    s: &LocalStore,
    cfg: ParityConfig,
    rep: &mut ProtectReport,
    id: (u64, u64),
    members: &[(PackId, u64)],
    old: usize,
) -> Result<(u64, Members)> {
    let mut io = Io::default();
    let (id, members, bad) = match write_stripe(s, id.0, members, old, cfg.m, &mut io)? {
        Wrote::Done(bad) => (id.0, members, bad),
        Wrote::Kept(lost) => {
            rep.damaged.extend(lost);
            let fresh = &members[old..];
            match write_stripe(s, id.1, fresh, 0, cfg.m, &mut io)? {
                Wrote::Done(bad) | Wrote::Kept(bad) => (id.1, fresh, bad),
            }
        }
    };
    rep.parity_bytes_read += io.read;
    rep.parity_bytes_written += io.written;
    // Saturating: an earlier member of a grown stripe may be among them.
    rep.packs_protected = rep.packs_protected.saturating_sub(bad.len() as u64);
    let written = members
        .iter()
        .filter(|(p, _)| !bad.contains(p))
        .copied()
        .collect();
    rep.damaged.extend(bad);
    rep.stripes_written += 1;
    Ok((id, written))
}

/// Records in the index what stripe `id` holds as just written (nothing:
/// it is gone), so the next protect need not read its headers again.
fn record_written(
    s: &LocalStore,
    cfg: ParityConfig,
    idx: &mut StripeIndex,
    id: u64,
    written: Members,
) -> Result<()> {
    if written.is_empty() {
        return idx.remove(id);
    }
    let files: Vec<(usize, PathBuf)> = (0..cfg.m).map(|i| (i, parity_path(s, id, i))).collect();
    let k = Known {
        m: cfg.m as u32,
        members: written,
        readable: true,
    };
    idx.record(id, &stripe_index::signature(&files), &k)
}

/// Parity computed while a backup runs: the backup hands over each pack as
/// soon as it is durable, full stripes are written at once (their packs are
/// still in the page cache), and the rest when the backup stops handing
/// packs over. The [`protect`] after the commit then only finds what other
/// writers left.
pub struct Protector {
    pub(super) tx: Option<crossbeam_channel::Sender<(PackId, u64)>>,
    pub(super) thread: std::thread::JoinHandle<Result<ProtectReport>>,
    pub(super) stop: Arc<AtomicBool>,
}

impl Protector {
    /// Starts the parity thread for `s`.
    pub fn start(s: LocalStore, cfg: ParityConfig) -> Result<Protector> {
        // Stripes from before this run's packs existed cannot hold them,
        // except the last readable one, which another writer's protect may
        // grow.
        let mut from = 0;
        for (id, files) in stripe_files(&s)?.into_iter().rev() {
            if load_stripe(id, files).is_some() {
                from = id;
                break;
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || protect_fresh(&s, cfg, from, rx, &st));
        Ok(Protector {
            tx: Some(tx),
            thread,
            stop,
        })
    }

    /// Where to send each new pack (id and size) once it is durable.
    pub fn sender(&mut self) -> Option<crossbeam_channel::Sender<(PackId, u64)>> {
        self.tx.take()
    }

    /// Waits until every pack handed over is in a stripe (or left for the
    /// next protect, when parity was busy elsewhere).
    pub fn finish(mut self) -> Result<ProtectReport> {
        drop(self.tx.take());
        self.thread
            .join()
            .map_err(|_| Error::Corrupt("the parity thread panicked".into()))?
    }

    /// For a backup that failed or was interrupted: starts no further
    /// stripe, and waits only for the one being written, so that the
    /// process does not exit with its temporary files half written in
    /// `tmp/` (CI's full-disk test caught two). The next protect covers
    /// the packs.
    pub fn abandon(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.tx.take());
        let _ = self.thread.join();
    }
}

/// How often the parity thread of a backup looks whether it was abandoned.
pub(super) const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The parity thread: gathers fresh packs, writes each stripe as soon as
/// it can be filled, and the last (open) one when the sender is gone.
pub(super) fn protect_fresh(
    s: &LocalStore,
    cfg: ParityConfig,
    mut from: u64,
    rx: crossbeam_channel::Receiver<(PackId, u64)>,
    stop: &AtomicBool,
) -> Result<ProtectReport> {
    let mut rep = ProtectReport::default();
    let mut fresh: Members = Vec::new();
    let mut open = true;
    while open {
        // Polled, so an abandoning backup that still holds a sender is not
        // kept waiting.
        match rx.recv_timeout(STOP_POLL) {
            Ok(p) => fresh.push(p),
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => break,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        // A lock and a directory listing per stripe, not per pack.
        if fresh.is_empty() || (open && fresh.len() < cfg.k) || stop.load(Ordering::SeqCst) {
            continue;
        }
        // Never waits behind a scrub (which holds the lock for its whole
        // pass): the protect after the commit does what is left.
        let Some(_g) = s.try_lock_named("parity.lock")? else {
            continue;
        };
        let files = stripe_files(s)?;
        // Another writer's protect may have taken some of these packs into
        // a stripe since the last look: those written or grown since.
        let mut last = None;
        for (id, f) in files.range(from..) {
            if let Some(st) = load_stripe(*id, f.clone()) {
                fresh.retain(|(p, _)| st.header.members.iter().all(|m| m.pack != *p));
                last = Some(st);
            }
        }
        let top = files.keys().next_back().copied();
        let (mut id, mut members): (u64, Members) = match last {
            Some(st)
                if Some(st.id) == top && cfg.takes_more(st.header.members.len(), st.header.m) =>
            {
                let m = st.header.members.iter().map(|m| (m.pack, m.size));
                (st.id, m.collect())
            }
            _ => (top.map_or(0, |t| t + 1), Vec::new()),
        };
        let mut old = members.len();
        // Full stripes now; while the backup runs, an open one waits.
        while !fresh.is_empty()
            && (!open || members.len() + fresh.len() >= cfg.k)
            && !stop.load(Ordering::SeqCst)
        {
            let n = (cfg.k - members.len()).min(fresh.len());
            members.extend(fresh.drain(..n));
            rep.packs_protected += n as u64;
            let (used, written) = write_counted(s, cfg, &mut rep, (id, id + 1), &members, old)?;
            // Only a cache: a failure costs the next protect a re-read.
            let _ = StripeIndex::open(&parity_dir(s))
                .and_then(|mut idx| record_written(s, cfg, &mut idx, used, written));
            from = used;
            id = used + 1;
            members.clear();
            old = 0;
        }
    }
    Ok(rep)
}

/// After packs were deleted on purpose: rewrites the parity of the stripes
/// that held them, so a scrub never brings a collected pack back. `gone`
/// tells whether a pack was deleted; it is asked once per stripe member.
/// A stripe with another member missing or damaged keeps its parity: it
/// is what rebuilds that member (a scrub may then bring the collected
/// ones back too, as unreferenced packs the next collection removes).
pub fn forget_packs(
    s: &LocalStore,
    gone: &mut dyn FnMut(&PackId) -> Result<bool>,
    cfg: ParityConfig,
) -> Result<()> {
    let _g = s.lock_named("parity.lock", true)?;
    for_each_stripe(s, &mut |st| {
        let mut keep = Vec::with_capacity(st.header.members.len());
        for m in &st.header.members {
            if !gone(&m.pack)? {
                keep.push((m.pack, m.size));
            }
        }
        if keep.len() < st.header.members.len() {
            let m = cfg.m.max(st.header.m as usize);
            write_stripe(s, st.id, &keep, keep.len(), m, &mut Io::default())?;
        }
        Ok(())
    })
}
