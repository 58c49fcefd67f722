//! Scrub: every row of every member and shard checked, damaged rows
//! rebuilt from parity, repaired packs written atomically; and the repair
//! of one pack a reader found damaged.

use super::*;

pub(super) struct Throttle {
    pub(super) rate: Option<u64>,
    pub(super) start: Instant,
    pub(super) bytes: u64,
}

impl Throttle {
    fn add(&mut self, n: u64) {
        self.bytes += n;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let spent = self.start.elapsed();
            if due > spent {
                std::thread::sleep(due - spent);
            }
        }
    }
}

/// Repairs one pack from its stripe's parity, for a reader that found it
/// damaged. Returns whether the pack is sound now.
pub fn repair_pack(s: &LocalStore, id: &PackId) -> Result<bool> {
    let _g = s.lock_named("parity.lock", true)?;
    let mut found = None;
    for_each_stripe(s, &mut |st| {
        if found.is_none() && st.header.members.iter().any(|m| m.pack == *id) {
            found = Some(st);
        }
        Ok(())
    })?;
    let Some(st) = found else {
        return Ok(false);
    };
    let mut rep = ScrubReport::default();
    let mut t = Throttle {
        rate: None,
        start: Instant::now(),
        bytes: 0,
    };
    let mut bad = HashMap::new();
    scrub_stripe(s, &st, &mut rep, &mut t, &mut bad)?;
    Ok(fs::read(s.pack_path(id))
        .map(|b| PackId::of(&b) == *id)
        .unwrap_or(false))
}

/// Puts a damaged or lost pack back from `bytes`, which must hash to its
/// name: written aside, fsynced and renamed over (the one place a pack is
/// replaced: by its own verified bytes), keeping the old file's time (the
/// store's clock at upload, which a commit's new bytes and the collection's
/// grace period read). Returns whether it reads back intact.
pub fn put_back_pack(s: &LocalStore, id: &PackId, bytes: &[u8]) -> Result<bool> {
    if PackId::of(bytes) != *id {
        return Err(Error::Corrupt(format!(
            "bytes offered for pack {id} do not hash to its name"
        )));
    }
    let path = s.pack_path(id);
    let (tmp, mut out, _held) = partial::create(&s.root().join("tmp"))?;
    let written = fs::metadata(&path).and_then(|m| m.modified()).ok();
    out.write_all(bytes)
        .and_then(|_| written.map_or(Ok(()), |t| out.set_modified(t)))
        .and_then(|_| out.sync_all())
        .at(&tmp)?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).at(dir)?;
    }
    fs::rename(&tmp, &path).at(&path)?;
    // unwrap: a pack path always has a parent
    fsync_dir(path.parent().expect("pack dir"))?;
    s.forget_handle(id);
    Ok(fs::read(&path)
        .map(|b| PackId::of(&b) == *id)
        .unwrap_or(false))
}

/// Reads and checks everything, repairs what parity allows, then protects
/// packs that were in no stripe yet.
pub fn scrub(s: &LocalStore, cfg: ParityConfig, opts: &ScrubOptions) -> Result<ScrubReport> {
    let _g = s.lock_named("parity.lock", true)?;
    // What a killed scrub (or upload) left in tmp/: repaired packs and
    // parity half written. Live writers hold theirs locked.
    s.sweep_abandoned()?;
    let mut rep = ScrubReport::default();
    let mut t = Throttle {
        rate: opts.rate,
        start: Instant::now(),
        bytes: 0,
    };
    let mut bad: HashMap<PackId, String> = HashMap::new();
    let stripes = stripe_files(s)?;
    let mut state = scrub_state(s);
    // An interrupted pass (started, not completed since) carries on.
    if opts.restart || !state.in_pass() {
        state.pass_started = s.now().max(state.last_complete + 1);
        state.verified.clear();
        state.current = ScrubCounts::default();
    }
    state.stripes = stripes.len() as u64;
    save_state(s, &state)?;
    let base = state.current.clone();
    let mut saved: Option<Instant> = None;
    let mut in_stripe = HashSet::new();
    // The scrub reads every header, so it also tells the stripe index what
    // it found: a stripe whose headers rotted in place (same inode, length
    // and mtime) is known unreadable, and its members get new parity.
    let mut idx = StripeIndex::open(&parity_dir(s))?;
    // One stripe's headers in memory at a time.
    for (id, files) in stripes {
        let sig = stripe_index::signature(&files);
        let Some(st) = load_stripe(id, files) else {
            rep.stripes_unreadable += 1;
            idx.record(id, &sig, &Known::unreadable())?;
            continue;
        };
        idx.record(id, &sig, &known(&st))?;
        for m in &st.header.members {
            in_stripe.insert(m.pack);
        }
        if state.verified.contains_key(&st.id) {
            rep.stripes_resumed += 1;
            continue;
        }
        scrub_stripe(s, &st, &mut rep, &mut t, &mut bad)?;
        state.verified.insert(st.id, s.now());
        // The state grows with the pass: saved after the first stripe, then
        // at most every SAVE_EVERY (and at the end), not after every stripe.
        if saved.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            state.current = ScrubCounts::tally(&base, &rep, &listed(&bad));
            save_state(s, &state)?;
            saved = Some(Instant::now());
        }
    }
    // Packs in no stripe yet: their name is their hash, nothing to repair from.
    let mut loose = Vec::new();
    s.for_each_pack(&mut |id, size| {
        if !in_stripe.contains(&id) {
            loose.push((id, size));
        }
        Ok(())
    })?;
    for &(id, size) in &loose {
        rep.unprotected_checked += 1;
        rep.packs_checked += 1;
        let ok = s.read_pack(&id, 0, size as usize).map(|b| {
            t.add(size);
            rep.bytes_read += size;
            PackId::of(&b) == id
        });
        if !matches!(ok, Ok(true)) {
            rep.unrepairable_blocks += parity::blocks(size);
            bad.insert(id, "damaged and in no stripe yet (no parity)".into());
        }
    }
    let loose: HashSet<PackId> = loose.into_iter().map(|(id, _)| id).collect();
    let pr = protect_locked(s, cfg)?;
    for p in pr.damaged {
        bad.entry(p).or_insert_with(|| "damaged".into());
    }
    // Every pack a snapshot lists must be somewhere: one lost together
    // with its stripe's parity is in no stripe and on no disk, and only
    // the snapshots still know of it.
    let mut refs = referenced::walk(s, &|p| in_stripe.contains(p) || loose.contains(p), &mut bad)?;
    let mut list: Vec<_> = bad.into_iter().collect();
    list.sort();
    for (pack, reason) in list {
        rep.unrepairable.push(Unrepairable {
            pack,
            reason,
            snapshots: refs.remove(&pack).unwrap_or_default(),
        });
    }
    if let Some(b) = s.bucket() {
        // The bucket and the local copy repair each other.
        rep.bucket = Some(super::scrub_bucket(s, b, &mut rep, opts.rate)?);
    }
    state.last = Some(ScrubCounts::tally(&base, &rep, &rep.unrepairable));
    state.current = ScrubCounts::default();
    state.last_complete = s.now().max(state.pass_started);
    state.verified.clear();
    save_state(s, &state)?;
    Ok(rep)
}

pub(super) fn scrub_stripe(
    s: &LocalStore,
    st: &Stripe,
    rep: &mut ScrubReport,
    t: &mut Throttle,
    bad: &mut HashMap<PackId, String>,
) -> Result<()> {
    let h = &st.header;
    let k = h.members.len();
    let m = h.m as usize;
    let members: Vec<Option<File>> = h
        .members
        .iter()
        .map(|mb| File::open(s.pack_path(&mb.pack)).ok())
        .collect();
    let sizes: Vec<u64> = members
        .iter()
        .map(|f| {
            f.as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|md| md.len())
                .unwrap_or(0)
        })
        .collect();
    let shards: Vec<Option<(File, &ByteBuf)>> = st
        .files
        .iter()
        .map(|p| {
            p.as_ref()
                .and_then(|(p, sums)| File::open(p).ok().map(|f| (f, sums)))
        })
        .collect();
    rep.packs_checked += k as u64;
    rep.parity_checked += m as u64;
    // Repaired bytes of each member, by offset.
    let mut fixes: Vec<BTreeMap<u64, Vec<u8>>> = vec![BTreeMap::new(); k];
    let mut parity_bad = false;
    // Read 64 KiB at a time; checked and rebuilt a row at a time (a 4 KiB
    // sector in layout 3, the whole 64 KiB before).
    let unit = parity::row_size(h.version) as u64;
    let per = PARITY_BLOCK as u64 / unit;
    let shard_len = h.rows * unit;
    for c in 0..shard_len.div_ceil(PARITY_BLOCK as u64) {
        let at = c * PARITY_BLOCK as u64;
        // Read as the member should be: its recorded size, not the file's.
        let mchunks: Vec<Option<Vec<u8>>> = h
            .members
            .iter()
            .enumerate()
            .map(|(i, mb)| read_block(members[i].as_ref(), mb.size, c))
            .collect();
        let plen = (shard_len - at).min(PARITY_BLOCK as u64) as usize;
        let pchunks: Vec<Option<Vec<u8>>> = shards
            .iter()
            .map(|sh| {
                let (f, _) = sh.as_ref()?;
                let mut b = vec![0u8; plen];
                f.read_exact_at(&mut b, 8 + at).ok()?;
                Some(b)
            })
            .collect();
        for row in c * per..((c + 1) * per).min(h.rows) {
            let off = ((row - c * per) * unit) as usize;
            let piece =
                |b: &Vec<u8>| b[off.min(b.len())..(off + unit as usize).min(b.len())].to_vec();
            let mut mb: Vec<Option<Vec<u8>>> = Vec::with_capacity(k);
            let mut damaged = false;
            for (i, member) in h.members.iter().enumerate() {
                if row >= parity::rows(h.version, member.size) {
                    mb.push(Some(Vec::new()));
                    continue;
                }
                rep.blocks_checked += 1;
                let b = mchunks[i].as_ref().map(piece).filter(|b| {
                    let want = &member.sums[row as usize * 32..row as usize * 32 + 32];
                    parity::block_sum(h.version, row, b) == want
                });
                if let Some(b) = &b {
                    t.add(b.len() as u64);
                    rep.bytes_read += b.len() as u64;
                } else {
                    damaged = true;
                    rep.damaged_blocks += 1;
                }
                mb.push(b);
            }
            let mut pb: Vec<Option<Vec<u8>>> = Vec::with_capacity(m);
            for (sh, chunk) in shards.iter().zip(&pchunks) {
                rep.blocks_checked += 1;
                let b = sh
                    .as_ref()
                    .zip(chunk.as_ref())
                    .and_then(|((_, sums), chunk)| {
                        let b = piece(chunk);
                        let want = &sums[row as usize * 32..row as usize * 32 + 32];
                        (parity::block_sum(h.version, row, &b) == want).then_some(b)
                    });
                if let Some(b) = &b {
                    t.add(b.len() as u64);
                    rep.bytes_read += b.len() as u64;
                } else {
                    rep.damaged_blocks += 1;
                    parity_bad = true;
                }
                pb.push(b);
            }
            if !damaged {
                continue;
            }
            match parity::rebuild_row(h.version, &mb, &pb) {
                Ok(full) => {
                    for (i, was) in mb.iter().enumerate() {
                        if was.is_none() {
                            let len = (h.members[i].size - row * unit).min(unit) as usize;
                            fixes[i].insert(row * unit, full[i][..len].to_vec());
                            rep.repaired_blocks += 1;
                        }
                    }
                }
                Err(e) => {
                    for (i, was) in mb.iter().enumerate() {
                        if was.is_none() {
                            rep.unrepairable_blocks += 1;
                            bad.entry(h.members[i].pack)
                                .or_insert_with(|| format!("beyond the parity budget: {e}"));
                        }
                    }
                }
            }
        }
    }
    // Write every repaired pack: the old bytes with the rebuilt blocks, and
    // only if the result hashes to the pack's name again. A file longer than
    // its pack (bytes appended) is cut back the same way.
    for (i, f) in fixes.into_iter().enumerate() {
        let member = &h.members[i];
        let too_long = members[i].is_some() && sizes[i] > member.size;
        if too_long && f.is_empty() {
            rep.damaged_blocks += 1;
        }
        if (f.is_empty() && !too_long) || bad.contains_key(&member.pack) {
            continue;
        }
        let mut bytes = vec![0u8; member.size as usize];
        if let Some(file) = &members[i] {
            let have = sizes[i].min(member.size) as usize;
            let _ = file.read_exact_at(&mut bytes[..have], 0);
        }
        for (off, b) in f {
            let off = off as usize;
            bytes[off..off + b.len()].copy_from_slice(&b);
        }
        if PackId::of(&bytes) != member.pack {
            bad.insert(
                member.pack,
                "rebuilt bytes do not hash to the pack's name".into(),
            );
            continue;
        }
        if !put_back_pack(s, &member.pack, &bytes)? {
            bad.insert(
                member.pack,
                "the repaired pack did not read back intact".into(),
            );
            continue;
        }
        rep.repaired_packs.push(member.pack);
    }
    if parity_bad {
        let keep: Vec<(PackId, u64)> = h
            .members
            .iter()
            .filter(|mb| !bad.contains_key(&mb.pack))
            .map(|mb| (mb.pack, mb.size))
            .collect();
        if keep.len() == h.members.len()
            && write_stripe(s, st.id, &keep, keep.len(), m, &mut Io::default())?
                == Wrote::Done(Vec::new())
        {
            rep.parity_rewritten += 1;
        }
    }
    Ok(())
}
