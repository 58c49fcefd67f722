//! Layouts 1 and 2: Reed–Solomon over GF(2^16) (the `reed-solomon-simd`
//! crate) on rows of 64 KiB blocks. Stripes of these layouts are still
//! checked and repaired; new parity is layout 3 ([`super::cauchy`]).

use super::PARITY_BLOCK;
use crate::format::FormatError;

fn pad(block: &[u8]) -> Vec<u8> {
    let mut v = block.to_vec();
    v.resize(PARITY_BLOCK, 0);
    v
}

/// Encodes one row: the members' blocks (each at most a block, shorter ones
/// zero-padded) to `m` parity blocks.
pub fn encode_row(members: &[&[u8]], m: usize) -> Result<Vec<Vec<u8>>, FormatError> {
    let mut out = vec![Vec::new(); m];
    RowEncoder::new(members.len(), m)?.encode(members, &mut out)?;
    Ok(out)
}

fn rs_error(e: reed_solomon_simd::Error) -> FormatError {
    FormatError::invalid("parity", e.to_string())
}

/// Encodes the rows of one stripe with one encoder, whose working space
/// (about a megabyte) is allocated once, not once a row.
pub struct RowEncoder {
    enc: reed_solomon_simd::ReedSolomonEncoder,
    k: usize,
    pad: Vec<u8>,
}

impl RowEncoder {
    /// An encoder for rows of `k` member blocks and `m` parity blocks.
    pub fn new(k: usize, m: usize) -> Result<RowEncoder, FormatError> {
        let enc =
            reed_solomon_simd::ReedSolomonEncoder::new(k, m, PARITY_BLOCK).map_err(rs_error)?;
        Ok(RowEncoder {
            enc,
            k,
            pad: Vec::with_capacity(PARITY_BLOCK),
        })
    }

    /// Encodes one row (see [`encode_row`]) into `out`, one parity block
    /// per element, reusing their allocations.
    pub fn encode(&mut self, members: &[&[u8]], out: &mut [Vec<u8>]) -> Result<(), FormatError> {
        if members.len() != self.k || members.iter().any(|b| b.len() > PARITY_BLOCK) {
            return Err(FormatError::invalid("parity", "row of the wrong shape"));
        }
        for b in members {
            if b.len() == PARITY_BLOCK {
                self.enc.add_original_shard(b).map_err(rs_error)?;
            } else {
                self.pad.clear();
                self.pad.extend_from_slice(b);
                self.pad.resize(PARITY_BLOCK, 0);
                self.enc.add_original_shard(&self.pad).map_err(rs_error)?;
            }
        }
        let res = self.enc.encode().map_err(rs_error)?;
        let mut n = 0;
        for (o, shard) in out.iter_mut().zip(res.recovery_iter()) {
            o.clear();
            o.extend_from_slice(shard);
            n += 1;
        }
        if n != out.len() {
            return Err(FormatError::invalid(
                "parity",
                "encoder gave too few shards",
            ));
        }
        Ok(())
    }
}

/// Rebuilds the missing members' blocks of one row from what survived:
/// `members[i]` and `parity[j]` are `None` when damaged. Returns every
/// member's block, padded; fails when more than `m` shards are gone.
pub fn rebuild_row(
    members: &[Option<Vec<u8>>],
    parity: &[Option<Vec<u8>>],
) -> Result<Vec<Vec<u8>>, FormatError> {
    let k = members.len();
    let m = parity.len();
    let originals: Vec<(usize, Vec<u8>)> = members
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.as_ref().map(|b| (i, pad(b))))
        .collect();
    if originals.len() == k {
        return Ok(originals.into_iter().map(|(_, b)| b).collect());
    }
    let recovery: Vec<(usize, &Vec<u8>)> = parity
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
        .collect();
    if originals.len() + recovery.len() < k {
        return Err(FormatError::invalid(
            "parity",
            format!(
                "{} of {} shards of a row are damaged; parity covers {m}",
                k + m - originals.len() - recovery.len(),
                k + m
            ),
        ));
    }
    let restored =
        reed_solomon_simd::decode(k, m, originals.iter().map(|(i, b)| (*i, b)), recovery)
            .map_err(|e| FormatError::invalid("parity", e.to_string()))?;
    let mut out = Vec::with_capacity(k);
    let mut have: std::collections::BTreeMap<usize, Vec<u8>> = originals.into_iter().collect();
    for i in 0..k {
        match have.remove(&i).or_else(|| restored.get(&i).cloned()) {
            Some(b) => out.push(b),
            None => {
                return Err(FormatError::invalid(
                    "parity",
                    "decoder did not restore a shard",
                ))
            }
        }
    }
    Ok(out)
}
