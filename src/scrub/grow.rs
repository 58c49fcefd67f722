//! Adding new members to a stripe's parity in place: each shard file gets
//! the rows the new members reach rewritten and a new header, nothing else.
//!
//! Crash safety. The rows of every shard are written first and made
//! durable, then each file's header, one file at a time. A kill before a
//! file's header lands leaves its old header, whose sums the rewritten rows
//! no longer match: those rows count as damaged (never as parity of the
//! old members) and the next protect, finding the new packs still in no
//! stripe and a shard row they reach failing its sum, computes the stripe
//! whole. A kill while a header is written leaves that file unreadable (it
//! counts as missing) or, past it, files whose headers disagree (the one
//! with the most members describes the stripe, the others count as
//! missing), as the renames of a whole write did. No state has a sum that
//! vouches for bytes it was not computed over.

use super::write::{each_piece, header, open_members, Io, Once};
use super::*;
use crate::parity::{cauchy, SECTOR};

/// Adds `fresh` to the parity of `base` (layout 3, every shard present)
/// in place. A base row that fails its sum is never rewritten: the stripe
/// is then to be computed whole ([`Once::BaseDamaged`]).
pub(super) fn grow(
    s: &LocalStore,
    base: &Stripe,
    fresh: &[(PackId, u64)],
    io: &mut Io,
) -> Result<Once> {
    let h = &base.header;
    let files = match open_members(s, fresh) {
        Ok(f) => f,
        Err(once) => return Ok(once),
    };
    // Each shard: its file, open for writing, and its row sums.
    let mut shards: Vec<(&PathBuf, File, Vec<u8>)> = Vec::new();
    for f in &base.files {
        let Some((p, sums)) = f else {
            return Ok(Once::BaseDamaged);
        };
        match fs::OpenOptions::new().read(true).write(true).open(p) {
            Ok(file) => shards.push((p, file, sums.to_vec())),
            Err(_) => return Ok(Once::BaseDamaged),
        }
    }
    let start = h.members.len();
    let reach = fresh.iter().map(|(_, z)| *z).max().unwrap_or(0);
    let old_len = h.rows * SECTOR as u64;
    let touched = parity::rows(STRIPE_VERSION, reach) * SECTOR as u64;
    let rows = h.rows.max(touched / SECTOR as u64);
    for (_, _, sums) in shards.iter_mut() {
        sums.resize(rows as usize * 32, 0);
    }
    let mut pbs = vec![Vec::with_capacity(PARITY_BLOCK); shards.len()];
    // Nothing is written before every fresh member hashes to its name and
    // every row it reaches matches its sum: a grow given up half way would
    // leave the stripe's rows failing their sums, and when the whole
    // recompute then finds an old member damaged the stripe is kept as it
    // is: the rows that would rebuild that member must still be sound.
    let checked = each_piece(fresh, &files, io, &mut |c, _, io| {
        Ok(base_rows(&shards, c, (old_len, touched), &mut pbs, io))
    })?;
    if let Err(stop) = checked {
        return Ok(stop);
    }
    let sums = each_piece(fresh, &files, io, &mut |c, pieces, io| {
        let at = c * PARITY_BLOCK as u64;
        let first = (at / SECTOR as u64) as usize;
        // Checked again as they are read for the change: damage must not
        // get fresh sums.
        if let Some(stop) = base_rows(&shards, c, (old_len, touched), &mut pbs, io) {
            return Ok(Some(stop));
        }
        for (i, b) in pieces.iter().enumerate() {
            cauchy::add_member(start + i, b, &mut pbs);
        }
        for ((p, f, sums), pb) in shards.iter_mut().zip(&pbs) {
            put(f, pb, 8 + at, io).at(&**p)?;
            for (r, sector) in pb.chunks(SECTOR).enumerate() {
                let row = first + r;
                let sum = parity::block_sum(STRIPE_VERSION, row as u64, sector);
                sums[row * 32..row * 32 + 32].copy_from_slice(&sum);
            }
        }
        Ok(None)
    })?;
    let fresh_sums = match sums {
        Ok(s) => s,
        Err(stop) => return Ok(stop),
    };
    let mut all = h.members.clone();
    all.extend(fresh.iter().zip(fresh_sums).map(|((p, size), s)| Member {
        pack: *p,
        size: *size,
        sums: ByteBuf::from(s),
    }));
    // The rows of every shard durable before any header names them.
    for (p, f, _) in &shards {
        f.sync_data().at(&**p)?;
    }
    let at = 8 + rows * SECTOR as u64;
    for (j, (p, f, sums)) in shards.into_iter().enumerate() {
        let mut h = header(base.id, all.clone(), base.header.m as usize, j);
        h.sums = ByteBuf::from(sums);
        let tail = parity::encode_tail(&h);
        put(&f, &tail, at, io).at(p)?;
        f.set_len(at + tail.len() as u64).at(p)?;
        f.sync_all().at(p)?;
    }
    Ok(Once::Written)
}

/// Reads piece `c` of every shard into `pbs`, the rows a base of
/// `lens.0` bytes holds checked against their sums and zeros up to
/// `lens.1`; [`Once::BaseDamaged`] when one cannot be read or fails.
fn base_rows(
    shards: &[(&PathBuf, File, Vec<u8>)],
    c: u64,
    (old_len, touched): (u64, u64),
    pbs: &mut [Vec<u8>],
    io: &mut Io,
) -> Option<Once> {
    let at = c * PARITY_BLOCK as u64;
    let len = (touched - at).min(PARITY_BLOCK as u64) as usize;
    let have = old_len.saturating_sub(at).min(len as u64) as usize;
    let first = (at / SECTOR as u64) as usize;
    for ((_, f, sums), pb) in shards.iter().zip(pbs.iter_mut()) {
        pb.clear();
        pb.resize(have, 0);
        if f.read_exact_at(pb, 8 + at).is_err() {
            return Some(Once::BaseDamaged);
        }
        io.read += have as u64;
        for (r, sector) in pb.chunks(SECTOR).enumerate() {
            let row = first + r;
            let want = &sums[row * 32..row * 32 + 32];
            if parity::block_sum(STRIPE_VERSION, row as u64, sector) != want {
                return Some(Once::BaseDamaged);
            }
        }
        pb.resize(len, 0);
    }
    None
}

/// Writes `buf` at `off` of a parity file and counts it.
fn put(f: &File, buf: &[u8], off: u64, io: &mut Io) -> std::io::Result<()> {
    #[cfg(test)]
    if let Some(n) = crash::cut(buf.len()) {
        // A kill mid-update: only the first `n` bytes land.
        f.write_all_at(&buf[..n], off)?;
        return Err(std::io::Error::other("killed (test)"));
    }
    f.write_all_at(buf, off)?;
    io.written += buf.len() as u64;
    Ok(())
}

/// A kill in the middle of an in-place update, for tests: after a budget
/// of bytes written, the write in progress is cut and fails.
#[cfg(test)]
pub(super) mod crash {
    use std::cell::Cell;

    thread_local! {
        static BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Lets `bytes` more bytes be written on this thread, then cuts.
    pub(in crate::scrub) fn after(bytes: Option<usize>) {
        BUDGET.with(|b| b.set(bytes));
    }

    /// `Some(n)`: only `n` of a write of `len` bytes land.
    pub(super) fn cut(len: usize) -> Option<usize> {
        BUDGET.with(|b| {
            let left = b.get()?;
            if len <= left {
                b.set(Some(left - len));
                None
            } else {
                b.set(Some(0));
                Some(left)
            }
        })
    }
}
