//! Writing a stripe's parity (layout 3): from scratch over every member,
//! into new files renamed over the old ones, or by adding the new members'
//! contributions in place to the rows they reach ([`super::grow`]).

use super::*;
use crate::parity::{cauchy, SECTOR};

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
/// version, and counts what it read and wrote in `io`. The first `old`
/// members are those the stripe's current parity holds. When that parity
/// is of layout 3, its shards sound and all present, the fresh members'
/// contributions are added to it in place: only they and the shard rows
/// they reach are read and written. Otherwise (an older layout, a lost or
/// damaged shard) the stripe is computed whole, and when one of the first
/// `old` members is then missing or damaged, the stripe is left as it is
/// ([`Wrote::Kept`]). Fresh members that are missing or damaged are left
/// out and returned.
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
    // A fresh member longer than the shards would grow them over their
    // headers: a kill then would leave no file of the stripe readable (its
    // files never described again, its old members with no parity until
    // the next protect). The stripe is then written whole, renamed over.
    let reach = members[old.min(members.len())..]
        .iter()
        .map(|(_, z)| parity::rows(STRIPE_VERSION, *z))
        .max()
        .unwrap_or(0);
    let mut base = match old {
        0 => None,
        n if n >= members.len() => None,
        _ => base_of(s, id, &members[..old], m, io)?.filter(|b| reach <= b.header.rows),
    };
    loop {
        // One pass computes parity, row sums and each fresh member's hash;
        // a member that does not hash to its name is left out and the
        // stripe computed again without it.
        let once = match &base {
            Some(b) => super::grow::grow(s, b, &members[old..], io)?,
            None => write_whole(s, id, &members, m, io)?,
        };
        match once {
            Once::Written => return Ok(Wrote::Done(bad)),
            Once::BaseDamaged => base = None,
            Once::Wrong(wrong) if wrong.iter().any(|p| earlier.contains(p)) => {
                return Ok(Wrote::Kept(wrong))
            }
            Once::Wrong(wrong) => {
                members.retain(|(p, _)| !wrong.contains(p));
                bad.extend(wrong);
                // A grow may have changed rows already: computed whole.
                base = None;
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

/// What one attempt of [`write_whole`] or a grow did.
pub(super) enum Once {
    Written,
    /// Members missing or not hashing to their name: the stripe is to be
    /// written again without them.
    Wrong(Vec<PackId>),
    /// A shard of the base could not be read or failed its sums: the
    /// stripe is to be computed whole.
    BaseDamaged,
}

/// Opens each of `members`; `Err` names those missing.
pub(super) fn open_members(
    s: &LocalStore,
    members: &[(PackId, u64)],
) -> std::result::Result<Vec<File>, Once> {
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for (p, _) in members {
        match File::open(s.pack_path(p)) {
            Ok(f) => files.push(f),
            Err(_) => missing.push(*p),
        }
    }
    if missing.is_empty() {
        Ok(files)
    } else {
        Err(Once::Wrong(missing))
    }
}

/// What [`each_piece`] hands over for every 64 KiB piece of the members:
/// its number, each member's bytes there (empty past its end), the count.
pub(super) type OnPiece<'a> = dyn FnMut(u64, &[Vec<u8>], &mut Io) -> Result<Option<Once>> + 'a;

/// Reads `members` (opened as `files`) 64 KiB at a time, all of them side
/// by side, and hands each piece to `f`, which may stop the walk with an
/// outcome. Meanwhile a second core computes each member's row sums and
/// BLAKE3 (its name) from the same pieces: every byte is read once.
/// Returns the members' row sums when each hashes to its name.
pub(super) fn each_piece(
    members: &[(PackId, u64)],
    files: &[File],
    io: &mut Io,
    f: &mut OnPiece<'_>,
) -> Result<std::result::Result<Vec<Vec<u8>>, Once>> {
    let reach = members.iter().map(|(_, z)| *z).max().unwrap_or(0);
    let (done, names) = std::thread::scope(|sc| {
        // Pieces go to the hashing thread and come back to be filled
        // again: at most three sets exist.
        let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(1);
        let (back_tx, back_rx) = crossbeam_channel::unbounded::<Vec<Vec<u8>>>();
        let hashing = sc.spawn(move || {
            let mut sums: Vec<Vec<u8>> = vec![Vec::new(); members.len()];
            let mut single: Vec<Option<[u8; 32]>> = vec![None; members.len()];
            for (c, pieces) in rx.into_iter().enumerate() {
                let first = (c * PARITY_BLOCK / SECTOR) as u64;
                for (i, b) in pieces.iter().enumerate() {
                    for (r, sector) in b.chunks(SECTOR).enumerate() {
                        let sum = parity::block_sum(STRIPE_VERSION, first + r as u64, sector);
                        sums[i].extend_from_slice(&sum);
                    }
                    if members[i].1 <= SECTOR as u64 && !b.is_empty() {
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
            for c in 0..reach.div_ceil(PARITY_BLOCK as u64) {
                let mut pieces = back_rx
                    .try_recv()
                    .unwrap_or_else(|_| vec![Vec::new(); members.len()]);
                for (i, (p, size)) in members.iter().enumerate() {
                    if !read_block_into(&files[i], *size, c, &mut pieces[i]) {
                        return Ok(Some(Once::Wrong(vec![*p])));
                    }
                    io.read += pieces[i].len() as u64;
                }
                if let Some(stop) = f(c, &pieces, io)? {
                    return Ok(Some(stop));
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
        return Ok(Err(stop));
    }
    let (names, sums) = names.map_err(|_| Error::Corrupt("a parity thread panicked".into()))?;
    let wrong: Vec<PackId> = members
        .iter()
        .zip(names)
        .filter(|((p, _), name)| *name != Some(*p))
        .map(|((p, _), _)| *p)
        .collect();
    if !wrong.is_empty() {
        return Ok(Err(Once::Wrong(wrong)));
    }
    Ok(Ok(sums))
}

/// The header of shard `index` of stripe `id` over `members`.
pub(super) fn header(id: u64, members: Vec<Member>, m: usize, index: usize) -> StripeHeader {
    let rows = members
        .iter()
        .map(|mb| parity::rows(STRIPE_VERSION, mb.size))
        .max()
        .unwrap_or(0);
    StripeHeader {
        version: STRIPE_VERSION,
        stripe: id,
        m: m as u32,
        block: SECTOR as u32,
        rows,
        members,
        index: index as u32,
        sums: ByteBuf::new(),
    }
}

/// Computes stripe `id` from all its members into new files, renamed over
/// the old ones.
fn write_whole(
    s: &LocalStore,
    id: u64,
    members: &[(PackId, u64)],
    m: usize,
    io: &mut Io,
) -> Result<Once> {
    if members.is_empty() {
        for i in 0..m {
            let _ = fs::remove_file(parity_path(s, id, i));
        }
        return Ok(Once::Written);
    }
    let files = match open_members(s, members) {
        Ok(f) => f,
        Err(once) => return Ok(once),
    };
    let reach = members.iter().map(|(_, z)| *z).max().unwrap_or(0);
    let shard_len = parity::rows(STRIPE_VERSION, reach) * SECTOR as u64;
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
        let mut pbs = vec![Vec::with_capacity(PARITY_BLOCK); m];
        let sums = each_piece(members, &files, io, &mut |c, pieces, io| {
            let at = c * PARITY_BLOCK as u64;
            let len = (shard_len - at).min(PARITY_BLOCK as u64) as usize;
            for pb in pbs.iter_mut() {
                pb.clear();
                pb.resize(len, 0);
            }
            for (i, b) in pieces.iter().enumerate() {
                cauchy::add_member(i, b, &mut pbs);
            }
            let first = at / SECTOR as u64;
            for ((t, w, ss), pb) in outs.iter_mut().zip(&pbs) {
                w.write_all(pb).at(&*t)?;
                io.written += pb.len() as u64;
                for (r, sector) in pb.chunks(SECTOR).enumerate() {
                    let sum = parity::block_sum(STRIPE_VERSION, first + r as u64, sector);
                    ss.extend_from_slice(&sum);
                }
            }
            Ok(None)
        })?;
        let sums = match sums {
            Ok(s) => s,
            Err(stop) => return Ok(stop),
        };
        let all: Vec<Member> = members
            .iter()
            .zip(sums)
            .map(|((p, size), s)| Member {
                pack: *p,
                size: *size,
                sums: ByteBuf::from(s),
            })
            .collect();
        for (j, (t, w, ss)) in outs.iter_mut().enumerate() {
            let mut h = header(id, all.clone(), m, j);
            h.sums = ByteBuf::from(std::mem::take(ss));
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
