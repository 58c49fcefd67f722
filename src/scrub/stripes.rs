//! The parity files of a store: where they live, reading their headers,
//! walking the stripes, and writing a stripe's parity durably.

use super::*;

pub(super) struct Stripe {
    pub(super) id: u64,
    pub(super) header: StripeHeader,
    /// Parity shard `i`: its path and its block sums, when a file agreeing
    /// with `header` exists.
    pub(super) files: Vec<Option<(PathBuf, ByteBuf)>>,
}

pub(super) fn parity_dir(s: &LocalStore) -> PathBuf {
    s.root().join("parity")
}

pub(super) fn parity_path(s: &LocalStore, stripe: u64, i: usize) -> PathBuf {
    parity_dir(s).join(format!("{stripe:016x}.{i}"))
}

pub(super) fn read_header(path: &std::path::Path) -> Result<StripeHeader> {
    let f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    if len < 12 {
        return Err(Error::Corrupt(format!("{}: too short", path.display())));
    }
    let mut t = [0u8; 4];
    f.read_exact_at(&mut t, len - 4).at(path)?;
    let n = parity::decode_trailer(&t, len)?;
    let mut h = vec![0u8; n];
    f.read_exact_at(&mut h, len - 4 - n as u64).at(path)?;
    let mut magic = [0u8; 8];
    f.read_exact_at(&mut magic, 0).at(path)?;
    if magic != MAGIC_PARITY {
        return Err(Error::Corrupt(format!(
            "{}: not a parity file",
            path.display()
        )));
    }
    Ok(parity::decode_header(&h, len)?)
}

/// The parity files in `parity/`, by stripe id in order: names only, so
/// a walk over the stripes holds one stripe's headers at a time.
pub(super) fn stripe_files(s: &LocalStore) -> Result<BTreeMap<u64, Vec<(usize, PathBuf)>>> {
    let dir = parity_dir(s);
    fs::create_dir_all(&dir).at(&dir)?;
    let mut by_id: BTreeMap<u64, Vec<(usize, PathBuf)>> = BTreeMap::new();
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let name = e.file_name();
        let Some((id, idx)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        let (Ok(id), Ok(idx)) = (u64::from_str_radix(id, 16), idx.parse::<usize>()) else {
            continue;
        };
        by_id.entry(id).or_default().push((idx, e.path()));
    }
    Ok(by_id)
}

/// A stripe's description from its parity files: the file with the most
/// members describes it (a stripe only grows until it is rewritten whole);
/// files that disagree with it count as missing. `None` when no file of
/// it can be read.
pub(super) fn load_stripe(id: u64, files: Vec<(usize, PathBuf)>) -> Option<Stripe> {
    let files: Vec<(usize, PathBuf, Option<StripeHeader>)> = files
        .into_iter()
        .map(|(idx, path)| {
            let h = read_header(&path).ok();
            (idx, path, h)
        })
        .collect();
    let best = files
        .iter()
        .filter_map(|(_, _, h)| h.as_ref())
        .max_by_key(|h| h.members.len())
        .cloned()?;
    let mut slots = vec![None; best.m as usize];
    for (idx, path, h) in files {
        if let Some(h) = h {
            if idx < slots.len() && h.members == best.members && h.index as usize == idx {
                slots[idx] = Some((path, h.sums));
            }
        }
    }
    Some(Stripe {
        id,
        header: best,
        files: slots,
    })
}

/// Calls `f` with every stripe, in id order, one in memory at a time: a
/// stripe's headers carry the block sums of its members, so holding them
/// all would grow with the repository (about 0.06 % of its size).
pub(super) fn for_each_stripe(
    s: &LocalStore,
    f: &mut dyn FnMut(Stripe) -> Result<()>,
) -> Result<()> {
    for (id, files) in stripe_files(s)? {
        if let Some(st) = load_stripe(id, files) {
            f(st)?;
        }
    }
    Ok(())
}

pub(super) fn read_block(f: Option<&File>, size: u64, row: u64) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    read_block_into(f?, size, row, &mut b).then_some(b)
}

/// Reads block `row` of a member of `size` bytes into `b` (empty past its
/// end), reusing its allocation; false when it cannot be read.
pub(super) fn read_block_into(f: &File, size: u64, row: u64, b: &mut Vec<u8>) -> bool {
    let start = row * PARITY_BLOCK as u64;
    let len = size.saturating_sub(start).min(PARITY_BLOCK as u64) as usize;
    // Every byte is overwritten by the read: no need to zero it first.
    if b.len() != len {
        b.resize(len, 0);
    }
    len == 0 || f.read_exact_at(b, start).is_ok()
}

/// What [`write_stripe`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wrote {
    /// The parity is written; these fresh members were left out because
    /// they are missing or do not hash to their name.
    Done(Vec<PackId>),
    /// A member the stripe's parity already held is missing or damaged:
    /// nothing was written. That parity is what can rebuild the member,
    /// so the stripe is never recomputed without it.
    Kept(Vec<PackId>),
}

/// Computes and writes the parity of a stripe over `members`, replacing
/// any earlier version. The first `old` members are those the stripe's
/// current parity holds: when one of them is missing or damaged, the
/// stripe is left as it is ([`Wrote::Kept`]). Fresh members that are
/// missing or damaged are left out and returned.
pub(super) fn write_stripe(
    s: &LocalStore,
    id: u64,
    members: &[(PackId, u64)],
    old: usize,
    m: usize,
) -> Result<Wrote> {
    let (earlier, _) = members.split_at(old.min(members.len()));
    let earlier: Vec<PackId> = earlier.iter().map(|(p, _)| *p).collect();
    let mut members = members.to_vec();
    let mut bad = Vec::new();
    loop {
        // One pass computes parity, block sums and each member's hash; a
        // member that does not hash to its name is left out and the stripe
        // computed again without it.
        match write_stripe_once(s, id, &members, m)? {
            None => return Ok(Wrote::Done(bad)),
            Some(wrong) if wrong.iter().any(|p| earlier.contains(p)) => {
                return Ok(Wrote::Kept(wrong))
            }
            Some(wrong) => {
                members.retain(|(p, _)| !wrong.contains(p));
                bad.extend(wrong);
            }
        }
    }
}

/// One attempt: `Some(packs)` names members that are missing or do not
/// hash to their name (nothing written); `None` means the parity is written.
pub(super) fn write_stripe_once(
    s: &LocalStore,
    id: u64,
    good: &[(PackId, u64)],
    m: usize,
) -> Result<Option<Vec<PackId>>> {
    if good.is_empty() {
        for i in 0..m {
            let _ = fs::remove_file(parity_path(s, id, i));
        }
        return Ok(None);
    }
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for (p, _) in good {
        match File::open(s.pack_path(p)) {
            Ok(f) => files.push(f),
            Err(_) => missing.push(*p),
        }
    }
    if !missing.is_empty() {
        return Ok(Some(missing));
    }
    let rows = good
        .iter()
        .map(|(_, z)| parity::blocks(*z))
        .max()
        .unwrap_or(0);
    let tmp_dir = s.root().join("tmp");
    // Every file created is in `outs` before anything is written to it,
    // so that a failure anywhere (a full disk) removes them all.
    let mut outs: Vec<(PathBuf, File, Vec<u8>)> = Vec::new();
    // Locked while this writer lives: a new session's sweep leaves them.
    let mut held = Vec::new();
    let res = (|| -> Result<Option<Vec<PackId>>> {
        for _ in 0..m {
            let (t, mut f, h) = partial::create(&tmp_dir)?;
            held.push(h);
            // Written a 64 KiB block at a time, unbuffered: a stripe
            // computed during a backup adds little to its memory.
            let magic = f.write_all(&MAGIC_PARITY).at(&t);
            outs.push((t, f, Vec::new()));
            magic?;
        }
        let (rows_done, names) = std::thread::scope(|sc| {
            // The members' block sums and whole hashes on a second core,
            // from the blocks this one reads for the parity: every byte is
            // read once.
            // Rows go to the hashing thread and come back to be filled
            // again: at most three rows of blocks exist.
            let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(1);
            let (back_tx, back_rx) = crossbeam_channel::unbounded::<Vec<Vec<u8>>>();
            let hashing = sc.spawn(move || {
                // One pass: the block sums also give each member's hash.
                let mut sums: Vec<Vec<u8>> = vec![Vec::new(); good.len()];
                let mut single: Vec<Option<[u8; 32]>> = vec![None; good.len()];
                for (row, blocks) in rx.into_iter().enumerate() {
                    for (i, b) in blocks.iter().enumerate() {
                        if b.is_empty() {
                            continue;
                        }
                        sums[i].extend_from_slice(&parity::block_sum(
                            STRIPE_VERSION,
                            row as u64,
                            b,
                        ));
                        if good[i].1 <= PARITY_BLOCK as u64 {
                            single[i] = Some(*blake3::hash(b).as_bytes());
                        }
                    }
                    let _ = back_tx.send(blocks);
                }
                let names: Vec<Option<PackId>> = sums
                    .iter()
                    .zip(&single)
                    .map(|(s, one)| one.or_else(|| parity::member_hash(s)).map(PackId))
                    .collect();
                (names, sums)
            });
            let rows_done = (|| -> Result<Option<Vec<PackId>>> {
                let mut enc = parity::RowEncoder::new(good.len(), m)?;
                let mut pbs = vec![Vec::new(); m];
                for row in 0..rows {
                    let mut blocks = back_rx
                        .try_recv()
                        .unwrap_or_else(|_| vec![Vec::new(); good.len()]);
                    for (i, (p, size)) in good.iter().enumerate() {
                        if !read_block_into(&files[i], *size, row, &mut blocks[i]) {
                            return Ok(Some(vec![*p]));
                        }
                    }
                    let refs: Vec<&[u8]> = blocks.iter().map(|b| b.as_slice()).collect();
                    enc.encode(&refs, &mut pbs)?;
                    for ((t, w, ss), pb) in outs.iter_mut().zip(&pbs) {
                        w.write_all(pb).at(&*t)?;
                        ss.extend_from_slice(&parity::block_sum(STRIPE_VERSION, row, pb));
                    }
                    if tx.send(blocks).is_err() {
                        break;
                    }
                }
                Ok(None)
            })();
            drop(tx);
            (rows_done, hashing.join())
        });
        if let Some(bad) = rows_done? {
            return Ok(Some(bad));
        }
        let (names, member_sums) =
            names.map_err(|_| Error::Corrupt("a parity thread panicked".into()))?;
        let wrong: Vec<PackId> = good
            .iter()
            .zip(names)
            .filter(|((p, _), name)| *name != Some(*p))
            .map(|((p, _), _)| *p)
            .collect();
        if !wrong.is_empty() {
            return Ok(Some(wrong));
        }
        let members: Vec<Member> = good
            .iter()
            .zip(member_sums)
            .map(|((p, size), s)| Member {
                pack: *p,
                size: *size,
                sums: ByteBuf::from(s),
            })
            .collect();
        for (j, (t, w, ss)) in outs.iter_mut().enumerate() {
            let h = StripeHeader {
                version: STRIPE_VERSION,
                stripe: id,
                m: m as u32,
                block: PARITY_BLOCK as u32,
                rows,
                members: members.clone(),
                index: j as u32,
                sums: ByteBuf::from(std::mem::take(ss)),
            };
            w.write_all(&parity::encode_tail(&h)).at(&*t)?;
            w.sync_all().at(&*t)?;
        }
        for (j, (t, _, _)) in outs.iter().enumerate() {
            fs::rename(t, parity_path(s, id, j)).at(parity_path(s, id, j))?;
        }
        fsync_dir(&parity_dir(s))?;
        Ok(None)
    })();
    if !matches!(res, Ok(None)) {
        for (t, _, _) in &outs {
            let _ = fs::remove_file(t);
        }
    }
    res
}
