//! Writing a stripe's parity (layout 3): from scratch over every member, or
//! by adding the new members' contributions to the shards the stripe has,
//! reading only the new packs and those shards.

use super::*;
use crate::parity::{cauchy, SECTOR};
use std::io::{Read, Seek};

/// Bytes a parity write read (packs and parity files) and wrote (parity
/// files).
#[derive(Debug, Default)]
pub(super) struct Io {
    pub(super) read: u64,
    pub(super) written: u64,
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

/// Writes the parity of stripe `id` over `members`, replacing any earlier
/// version, and adds the bytes it read to `read`. The first `old` members
/// are those the stripe's current parity holds. When that parity is of
/// layout 3, its shards sound and all present, the fresh members'
/// contributions are added to it: only they and the shards are read.
/// Otherwise (an older layout, a lost or damaged shard) the stripe is
/// computed whole, and when one of the first `old` members is then missing
/// or damaged, the stripe is left as it is ([`Wrote::Kept`]). Fresh
/// members that are missing or damaged are left out and returned.
pub(super) fn write_stripe(
    s: &LocalStore,
    id: u64,
    members: &[(PackId, u64)],
    old: usize,
    m: usize,
    io: &mut Io,
) -> Result<Wrote> {
    let (earlier, _) = members.split_at(old.min(members.len()));
    let earlier: Vec<PackId> = earlier.iter().map(|(p, _)| *p).collect();
    let mut members = members.to_vec();
    let mut bad = Vec::new();
    let mut base = match old {
        0 => None,
        n if n >= members.len() => None,
        _ => base_of(s, id, &members[..old], m, io)?,
    };
    loop {
        // One pass computes parity, row sums and each fresh member's hash;
        // a member that does not hash to its name is left out and the
        // stripe computed again without it.
        match write_once(s, id, &members, base.as_ref(), m, io)? {
            Once::Written => return Ok(Wrote::Done(bad)),
            Once::BaseDamaged => base = None,
            Once::Wrong(wrong) if wrong.iter().any(|p| earlier.contains(p)) => {
                return Ok(Wrote::Kept(wrong))
            }
            Once::Wrong(wrong) => {
                members.retain(|(p, _)| !wrong.contains(p));
                bad.extend(wrong);
            }
        }
    }
}

/// The stripe's parity on disk when new members can be added to it: of
/// layout 3 and shape `m`, every shard file present and agreeing, holding
/// exactly `prefix`.
fn base_of(
    s: &LocalStore,
    id: u64,
    prefix: &[(PackId, u64)],
    m: usize,
    io: &mut Io,
) -> Result<Option<Stripe>> {
    let Some(files) = stripe_files(s)?.remove(&id) else {
        return Ok(None);
    };
    let lens: u64 = files
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok())
        .map(|md| md.len())
        .sum();
    let Some(st) = load_stripe(id, files) else {
        return Ok(None);
    };
    let h = &st.header;
    // Headers (and trailers) read: what the files hold besides the shards.
    io.read += lens.saturating_sub(st.files.len() as u64 * (8 + h.rows * h.block as u64));
    let same = h.members.len() == prefix.len()
        && h.members
            .iter()
            .zip(prefix)
            .all(|(a, (p, z))| a.pack == *p && a.size == *z);
    let usable = h.version == STRIPE_VERSION
        && h.m as usize == m
        && same
        && st.files.iter().all(|f| f.is_some());
    Ok(usable.then_some(st))
}

/// What one attempt of [`write_once`] did.
enum Once {
    Written,
    /// Members missing or not hashing to their name: nothing written.
    Wrong(Vec<PackId>),
    /// A shard of the base could not be read or failed its sums: nothing
    /// written; the stripe is to be computed whole.
    BaseDamaged,
}

fn write_once(
    s: &LocalStore,
    id: u64,
    members: &[(PackId, u64)],
    base: Option<&Stripe>,
    m: usize,
    io: &mut Io,
) -> Result<Once> {
    if members.is_empty() {
        for i in 0..m {
            let _ = fs::remove_file(parity_path(s, id, i));
        }
        return Ok(Once::Written);
    }
    let start = base.map_or(0, |b| b.header.members.len());
    let fresh = &members[start..];
    if fresh.is_empty() {
        return Ok(Once::Written);
    }
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for (p, _) in fresh {
        match File::open(s.pack_path(p)) {
            Ok(f) => files.push(f),
            Err(_) => missing.push(*p),
        }
    }
    if !missing.is_empty() {
        return Ok(Once::Wrong(missing));
    }
    // The base's shards, each with its row sums.
    let mut olds: Vec<(File, &[u8])> = Vec::new();
    for f in base.iter().flat_map(|b| &b.files) {
        match f
            .as_ref()
            .and_then(|(p, sums)| Some((File::open(p).ok()?, &sums[..])))
        {
            Some(o) => olds.push(o),
            None => return Ok(Once::BaseDamaged),
        }
    }
    let old_len = base.map_or(0, |b| b.header.rows) * SECTOR as u64;
    let rows = fresh
        .iter()
        .map(|(_, z)| parity::rows(STRIPE_VERSION, *z))
        .max()
        .unwrap_or(0)
        .max(old_len / SECTOR as u64);
    let shard_len = rows * SECTOR as u64;
    let tmp_dir = s.root().join("tmp");
    // Every file created is in `outs` before anything is written to it,
    // so that a failure anywhere (a full disk) removes them all.
    let mut outs: Vec<(PathBuf, File, Vec<u8>)> = Vec::new();
    // Locked while this writer lives: a new session's sweep leaves them.
    let mut held = Vec::new();
    let res = (|| -> Result<Once> {
        for _ in 0..m {
            let (t, mut f, h) = partial::create(&tmp_dir)?;
            held.push(h);
            // Written 64 KiB at a time, unbuffered: a stripe computed
            // during a backup adds little to its memory.
            let magic = f.write_all(&MAGIC_PARITY).at(&t);
            outs.push((t, f, Vec::new()));
            magic?;
            io.written += MAGIC_PARITY.len() as u64;
        }
        let (done, names) = std::thread::scope(|sc| {
            // The fresh members' row sums and whole hashes on a second
            // core, from the pieces this one reads for the parity: every
            // byte is read once. Pieces go to the hashing thread and come
            // back to be filled again: at most three sets exist.
            let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(1);
            let (back_tx, back_rx) = crossbeam_channel::unbounded::<Vec<Vec<u8>>>();
            let hashing = sc.spawn(move || {
                let mut sums: Vec<Vec<u8>> = vec![Vec::new(); fresh.len()];
                let mut single: Vec<Option<[u8; 32]>> = vec![None; fresh.len()];
                for (c, pieces) in rx.into_iter().enumerate() {
                    let first = (c * PARITY_BLOCK / SECTOR) as u64;
                    for (i, b) in pieces.iter().enumerate() {
                        for (r, sector) in b.chunks(SECTOR).enumerate() {
                            let sum = parity::block_sum(STRIPE_VERSION, first + r as u64, sector);
                            sums[i].extend_from_slice(&sum);
                        }
                        if fresh[i].1 <= SECTOR as u64 && !b.is_empty() {
                            single[i] = Some(*blake3::hash(b).as_bytes());
                        }
                    }
                    let _ = back_tx.send(pieces);
                }
                let names: Vec<Option<PackId>> = sums
                    .iter()
                    .zip(&single)
                    .map(|(s, one)| one.or_else(|| parity::member_hash(s)).map(PackId))
                    .collect();
                (names, sums)
            });
            let done = (|| -> Result<Option<Once>> {
                let mut pbs = vec![Vec::with_capacity(PARITY_BLOCK); m];
                let reach = fresh.iter().map(|(_, z)| *z).max().unwrap_or(0);
                for c in 0..shard_len.div_ceil(PARITY_BLOCK as u64) {
                    let at = c * PARITY_BLOCK as u64;
                    if at >= reach && at < old_len {
                        // Past the fresh members: the base's rows and sums
                        // as they are, copied by the kernel.
                        for ((f, sums), (t, w, ss)) in olds.iter().zip(outs.iter_mut()) {
                            let mut f = f;
                            f.seek(std::io::SeekFrom::Start(8 + at)).at(&*t)?;
                            let n = std::io::copy(&mut f.take(old_len - at), w).at(&*t)?;
                            if n != old_len - at {
                                return Ok(Some(Once::BaseDamaged));
                            }
                            io.read += n;
                            io.written += n;
                            let first = (at / SECTOR as u64) as usize * 32;
                            ss.extend_from_slice(&sums[first..]);
                        }
                        break;
                    }
                    let len = (shard_len - at).min(PARITY_BLOCK as u64) as usize;
                    let mut pieces = back_rx
                        .try_recv()
                        .unwrap_or_else(|_| vec![Vec::new(); fresh.len()]);
                    for (i, (p, size)) in fresh.iter().enumerate() {
                        if !read_block_into(&files[i], *size, c, &mut pieces[i]) {
                            return Ok(Some(Once::Wrong(vec![*p])));
                        }
                        io.read += pieces[i].len() as u64;
                    }
                    // Rows the fresh members reach get new sums; the
                    // others keep the base's, unread by any hash.
                    let touched = pieces.iter().map(|b| b.len()).max().unwrap_or(0);
                    let first = at / SECTOR as u64;
                    for (j, pb) in pbs.iter_mut().enumerate() {
                        pb.clear();
                        let have = old_len.saturating_sub(at).min(len as u64) as usize;
                        pb.resize(have, 0);
                        if have > 0 {
                            let (f, sums) = &olds[j];
                            if f.read_exact_at(pb, 8 + at).is_err() {
                                return Ok(Some(Once::BaseDamaged));
                            }
                            io.read += have as u64;
                            // A shard is changed only where it is sound:
                            // damage must not get fresh sums.
                            let check = touched.next_multiple_of(SECTOR).min(have);
                            for (r, sector) in pb[..check].chunks(SECTOR).enumerate() {
                                let row = (first + r as u64) as usize;
                                let want = &sums[row * 32..row * 32 + 32];
                                if parity::block_sum(STRIPE_VERSION, row as u64, sector) != want {
                                    return Ok(Some(Once::BaseDamaged));
                                }
                            }
                        }
                        pb.resize(len, 0);
                    }
                    for (i, b) in pieces.iter().enumerate() {
                        cauchy::add_member(start + i, b, &mut pbs);
                    }
                    for (j, ((t, w, ss), pb)) in outs.iter_mut().zip(&pbs).enumerate() {
                        w.write_all(pb).at(&*t)?;
                        io.written += pb.len() as u64;
                        for (r, sector) in pb.chunks(SECTOR).enumerate() {
                            let row = first + r as u64;
                            if r * SECTOR < touched || row * (SECTOR as u64) >= old_len {
                                let sum = parity::block_sum(STRIPE_VERSION, row, sector);
                                ss.extend_from_slice(&sum);
                            } else {
                                let row = row as usize;
                                ss.extend_from_slice(&olds[j].1[row * 32..row * 32 + 32]);
                            }
                        }
                    }
                    if tx.send(pieces).is_err() {
                        break;
                    }
                }
                Ok(None)
            })();
            drop(tx);
            (done, hashing.join())
        });
        if let Some(stop) = done? {
            return Ok(stop);
        }
        let (names, fresh_sums) =
            names.map_err(|_| Error::Corrupt("a parity thread panicked".into()))?;
        let wrong: Vec<PackId> = fresh
            .iter()
            .zip(names)
            .filter(|((p, _), name)| *name != Some(*p))
            .map(|((p, _), _)| *p)
            .collect();
        if !wrong.is_empty() {
            return Ok(Once::Wrong(wrong));
        }
        let mut all: Vec<Member> = base.map_or_else(Vec::new, |b| b.header.members.clone());
        all.extend(fresh.iter().zip(fresh_sums).map(|((p, size), s)| Member {
            pack: *p,
            size: *size,
            sums: ByteBuf::from(s),
        }));
        for (j, (t, w, ss)) in outs.iter_mut().enumerate() {
            let h = StripeHeader {
                version: STRIPE_VERSION,
                stripe: id,
                m: m as u32,
                block: SECTOR as u32,
                rows,
                members: all.clone(),
                index: j as u32,
                sums: ByteBuf::from(std::mem::take(ss)),
            };
            let tail = parity::encode_tail(&h);
            w.write_all(&tail).at(&*t)?;
            io.written += tail.len() as u64;
            w.sync_all().at(&*t)?;
        }
        for (j, (t, _, _)) in outs.iter().enumerate() {
            fs::rename(t, parity_path(s, id, j)).at(parity_path(s, id, j))?;
        }
        fsync_dir(&parity_dir(s))?;
        Ok(Once::Written)
    })();
    if !matches!(res, Ok(Once::Written)) {
        for (t, _, _) in &outs {
            let _ = fs::remove_file(t);
        }
    }
    res
}
