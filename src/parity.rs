//! Reed–Solomon parity across packs, as pure functions: the parity file
//! layout, per-block checksums, and encoding and rebuilding one row of a
//! stripe. A stripe is up to k packs (its members) and m parity shards; row
//! `j` of the stripe is block `j` of every member (zero-padded) and of every
//! shard. Needs no key: it sees only pack bytes. The store does the I/O.
//!
//! A parity file is `MAGIC_PARITY || shard || header || header_len (u32 LE)`;
//! the header (CBOR) names the stripe, its members with their sizes and the
//! BLAKE3 of each of their blocks, and this shard's own block sums, so each
//! parity file alone describes its stripe.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::format::{cbor_decode, cbor_encode, FormatError};
use crate::id::PackId;

/// Bytes per block: the unit of checksums and of repair.
pub const PARITY_BLOCK: usize = 64 << 10;
/// `blake3("coffer parity v1")[..8]`. Never change.
pub const MAGIC_PARITY: [u8; 8] = [0x38, 0xb1, 0xba, 0x15, 0xc6, 0x55, 0x97, 0xb9];
/// Largest parity header accepted.
pub const MAX_PARITY_HEADER: usize = 64 << 20;

/// One pack of a stripe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The pack.
    pub pack: PackId,
    /// Its size in bytes.
    pub size: u64,
    /// BLAKE3 of each of its blocks, 32 bytes each.
    pub sums: ByteBuf,
}

/// What every parity file of a stripe records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeHeader {
    /// Layout version (1).
    pub version: u32,
    /// The stripe's number.
    pub stripe: u64,
    /// Parity shards of the stripe.
    pub m: u32,
    /// Block size.
    pub block: u32,
    /// Rows: blocks of the largest member.
    pub rows: u64,
    /// The members, in shard order.
    pub members: Vec<Member>,
    /// Which parity shard this file holds.
    pub index: u32,
    /// BLAKE3 of each block of this shard.
    pub sums: ByteBuf,
}

/// Blocks needed for `len` bytes.
pub fn blocks(len: u64) -> u64 {
    len.div_ceil(PARITY_BLOCK as u64)
}

/// BLAKE3 of one block's bytes (as stored, not padded).
pub fn block_sum(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Checks a header read from an untrusted file.
fn validate(h: &StripeHeader) -> Result<(), FormatError> {
    let bad = |d: &str| Err(FormatError::invalid("parity header", d.to_string()));
    if h.version != 1 {
        return Err(FormatError::Version {
            what: "parity header",
            found: h.version,
            supported: 1,
        });
    }
    if h.block as usize != PARITY_BLOCK || h.members.is_empty() || h.m == 0 || h.index >= h.m {
        return bad("impossible stripe shape");
    }
    if h.sums.len() as u64 != h.rows * 32 {
        return bad("shard sums do not match the rows");
    }
    let mut rows = 0;
    for m in &h.members {
        if m.sums.len() as u64 != blocks(m.size) * 32 {
            return bad("member sums do not match its size");
        }
        rows = rows.max(blocks(m.size));
    }
    if rows != h.rows {
        return bad("rows do not match the largest member");
    }
    Ok(())
}

/// The tail of a parity file after its shard: `header || header_len`.
pub fn encode_tail(h: &StripeHeader) -> Vec<u8> {
    let mut out = cbor_encode(h);
    let n = out.len() as u32;
    out.extend_from_slice(&n.to_le_bytes());
    out
}

/// Reads the header length from the last 4 bytes of a parity file of
/// `file_len` bytes.
pub fn decode_trailer(trailer: &[u8], file_len: u64) -> Result<usize, FormatError> {
    let t: [u8; 4] = trailer
        .try_into()
        .map_err(|_| FormatError::invalid("parity file", "trailer must be 4 bytes"))?;
    let n = u32::from_le_bytes(t) as usize;
    if n > MAX_PARITY_HEADER || (n as u64) + 12 > file_len {
        return Err(FormatError::invalid(
            "parity file",
            format!("header length {n} does not fit"),
        ));
    }
    Ok(n)
}

/// Decodes and checks a header; `file_len` is the parity file's size.
pub fn decode_header(bytes: &[u8], file_len: u64) -> Result<StripeHeader, FormatError> {
    let h: StripeHeader = cbor_decode("parity header", bytes)?;
    validate(&h)?;
    if 8 + h.rows * PARITY_BLOCK as u64 + bytes.len() as u64 + 4 != file_len {
        return Err(FormatError::invalid(
            "parity file",
            "size does not match its header",
        ));
    }
    Ok(h)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn magic_matches_its_label() {
        assert_eq!(MAGIC_PARITY, crate::format::magic("coffer parity v1"));
    }

    fn block(seed: u8, len: usize) -> Vec<u8> {
        let mut x = blake3::Hasher::new_keyed(&[seed; 32]).finalize_xof();
        let mut v = vec![0u8; len];
        x.fill(&mut v);
        v
    }

    proptest! {
        #[test]
        fn any_m_lost_shards_are_rebuilt(k in 1usize..8, m in 1usize..4, lost in proptest::collection::vec(any::<u8>(), 0..4), short in 1usize..PARITY_BLOCK) {
            let members: Vec<Vec<u8>> = (0..k).map(|i| block(i as u8, if i == 0 { short } else { PARITY_BLOCK })).collect();
            let refs: Vec<&[u8]> = members.iter().map(|b| b.as_slice()).collect();
            let parity = encode_row(&refs, m).unwrap();
            let mut gone: Vec<usize> = lost.iter().map(|x| *x as usize % (k + m)).collect();
            gone.sort();
            gone.dedup();
            gone.truncate(m);
            let ms: Vec<Option<Vec<u8>>> = (0..k).map(|i| (!gone.contains(&i)).then(|| members[i].clone())).collect();
            let ps: Vec<Option<Vec<u8>>> = (0..m).map(|j| (!gone.contains(&(k + j))).then(|| parity[j].clone())).collect();
            let back = rebuild_row(&ms, &ps).unwrap();
            for i in 0..k {
                prop_assert_eq!(&back[i][..members[i].len()], &members[i][..]);
            }
        }
    }

    #[test]
    fn more_than_m_lost_is_an_error() {
        let members: Vec<Vec<u8>> = (0..4).map(|i| block(i, 1000)).collect();
        let refs: Vec<&[u8]> = members.iter().map(|b| b.as_slice()).collect();
        let parity = encode_row(&refs, 2).unwrap();
        let ms = vec![
            None,
            None,
            Some(members[2].clone()),
            Some(members[3].clone()),
        ];
        let ps = vec![Some(parity[0].clone()), None];
        assert!(rebuild_row(&ms, &ps).is_err());
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = StripeHeader {
            version: 1,
            stripe: 7,
            m: 2,
            block: PARITY_BLOCK as u32,
            rows: 2,
            members: vec![Member {
                pack: PackId([1; 32]),
                size: PARITY_BLOCK as u64 + 5,
                sums: ByteBuf::from(vec![0u8; 64]),
            }],
            index: 1,
            sums: ByteBuf::from(vec![0u8; 64]),
        };
        let tail = encode_tail(&h);
        let len = 8 + 2 * PARITY_BLOCK as u64 + tail.len() as u64;
        let n = decode_trailer(&tail[tail.len() - 4..], len).unwrap();
        assert_eq!(decode_header(&tail[..n], len).unwrap(), h);
        assert!(decode_header(&tail[..n], len + 1).is_err());
        let mut bad = h.clone();
        bad.index = 2;
        let t = encode_tail(&bad);
        assert!(decode_header(
            &t[..t.len() - 4],
            8 + 2 * PARITY_BLOCK as u64 + t.len() as u64
        )
        .is_err());
    }
}
