//! Reed–Solomon parity across packs, as pure functions: the parity file
//! layout, per-row checksums, and rebuilding one row of a stripe. A stripe
//! is up to k packs (its members) and m parity shards; row `j` of the
//! stripe is row `j` of every member (zero-padded) and of every shard: a
//! 4 KiB sector in layout 3 ([`cauchy`], where a new member adds its own
//! contribution to the shards), a 64 KiB block in layouts 1 and 2
//! ([`legacy`]). Needs no key: it sees only pack bytes. The store does the
//! I/O.
//!
//! A parity file is `MAGIC_PARITY || shard || header || header_len (u32 LE)`;
//! the header (CBOR) names the stripe, its members with their sizes and the
//! sum of each of their rows, and this shard's own row sums, so each parity
//! file alone describes its stripe.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::format::{cbor_decode, cbor_encode, FormatError};
use crate::id::PackId;

pub mod cauchy;
pub mod legacy;

/// Stripe shape: k packs, m parity shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityConfig {
    /// Members per stripe.
    pub k: usize,
    /// Parity shards per stripe: that many lost members can be rebuilt.
    pub m: usize,
}

impl ParityConfig {
    /// Checks a shape read from a file or an option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if (1..=64).contains(&self.k) && (1..=16).contains(&self.m) {
            Ok(())
        } else {
            Err(format!(
                "parity {}+{}: k must be 1..=64 and m 1..=16",
                self.k, self.m
            ))
        }
    }

    /// Whether a stripe of `members` packs with `m` parity shards is the
    /// open one new packs join: not full, and of this shape.
    pub(crate) fn takes_more(&self, members: usize, m: u32) -> bool {
        members < self.k && m as usize == self.m
    }

    /// Parses `K+M`, e.g. `10+2`.
    pub fn parse(s: &str) -> std::result::Result<ParityConfig, String> {
        let (k, m) = s
            .split_once('+')
            .ok_or_else(|| format!("parity {s:?}: expected K+M, e.g. 10+2"))?;
        let p = ParityConfig {
            k: k.trim()
                .parse()
                .map_err(|_| format!("parity {s:?}: K is not a number"))?,
            m: m.trim()
                .parse()
                .map_err(|_| format!("parity {s:?}: M is not a number"))?,
        };
        p.validate()?;
        Ok(p)
    }
}

impl Default for ParityConfig {
    fn default() -> Self {
        ParityConfig { k: 10, m: 2 }
    }
}

/// Bytes per row in layouts 1 and 2, and the unit the store reads and
/// encodes in (16 sectors).
pub const PARITY_BLOCK: usize = 64 << 10;
/// Bytes per row in layout 3: the unit of checksums and of repair.
pub const SECTOR: usize = 4 << 10;
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
    /// The sum of each of its rows ([`block_sum`]), 32 bytes each.
    pub sums: ByteBuf,
}

/// What every parity file of a stripe records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeHeader {
    /// Layout version: 3, or 1 and 2 (64 KiB rows, the GF(2^16) code).
    pub version: u32,
    /// The stripe's number.
    pub stripe: u64,
    /// Parity shards of the stripe.
    pub m: u32,
    /// Row size: [`SECTOR`] in layout 3, [`PARITY_BLOCK`] before.
    pub block: u32,
    /// Rows of the largest member.
    pub rows: u64,
    /// The members, in shard order.
    pub members: Vec<Member>,
    /// Which parity shard this file holds.
    pub index: u32,
    /// The sum of each row of this shard ([`block_sum`]).
    pub sums: ByteBuf,
}

/// 64 KiB blocks needed for `len` bytes.
pub fn blocks(len: u64) -> u64 {
    len.div_ceil(PARITY_BLOCK as u64)
}

/// Bytes per row in a stripe of layout `version`.
pub fn row_size(version: u32) -> usize {
    if version >= 3 {
        SECTOR
    } else {
        PARITY_BLOCK
    }
}

/// Rows needed for `len` bytes in a stripe of layout `version`.
pub fn rows(version: u32, len: u64) -> u64 {
    len.div_ceil(row_size(version) as u64)
}

/// Layout version of the stripes written now; stripes of versions 1 and 2
/// are still read, checked and repaired.
pub const STRIPE_VERSION: u32 = 3;

/// The sum of row `row` of a member or shard (its bytes as stored, not
/// padded) in a stripe of layout `version`.
///
/// Version 1: BLAKE3 of the block alone. Versions 2 and 3: the BLAKE3
/// chaining value of the row as the subtree of the whole member it is (a
/// 64 KiB block at a 64 KiB offset, or a 4 KiB sector at a 4 KiB offset,
/// always is one), so a member's sums also give its BLAKE3, its name,
/// without hashing it twice ([`member_hash`]).
pub fn block_sum(version: u32, row: u64, data: &[u8]) -> [u8; 32] {
    if version == 1 {
        return *blake3::hash(data).as_bytes();
    }
    use blake3::hazmat::HasherExt;
    blake3::Hasher::new()
        .set_input_offset(row * row_size(version) as u64)
        .update(data)
        .finalize_non_root()
}

/// BLAKE3 of a whole member from its version-2 or 3 row sums (32 bytes
/// each); `None` for a member of one row, whose hash is that of the row.
pub fn member_hash(sums: &[u8]) -> Option<[u8; 32]> {
    let cvs: Vec<[u8; 32]> = sums
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32-byte chunks"))
        .collect();
    if cvs.len() < 2 {
        return None;
    }
    let split = left_len(cvs.len());
    let root = blake3::hazmat::merge_subtrees_root(
        &subtree(&cvs[..split]),
        &subtree(&cvs[split..]),
        blake3::hazmat::Mode::Hash,
    );
    Some(*root.as_bytes())
}

/// Blocks in the left subtree of `n >= 2` blocks: the largest power of two
/// below `n` (BLAKE3's tree shape).
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The chaining value of the subtree over `cvs` (not the root).
fn subtree(cvs: &[[u8; 32]]) -> [u8; 32] {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let split = left_len(cvs.len());
    blake3::hazmat::merge_subtrees_non_root(
        &subtree(&cvs[..split]),
        &subtree(&cvs[split..]),
        blake3::hazmat::Mode::Hash,
    )
}

/// Checks a header read from an untrusted file.
fn validate(h: &StripeHeader) -> Result<(), FormatError> {
    let bad = |d: &str| Err(FormatError::invalid("parity header", d.to_string()));
    if !(1..=STRIPE_VERSION).contains(&h.version) {
        return Err(FormatError::Version {
            what: "parity header",
            found: h.version,
            supported: STRIPE_VERSION,
        });
    }
    if h.block as usize != row_size(h.version) || h.members.is_empty() || h.m == 0 || h.index >= h.m
    {
        return bad("impossible stripe shape");
    }
    if h.version >= 3 && (h.members.len() > cauchy::MAX_K || h.m as usize > cauchy::MAX_M) {
        return bad("stripe shape beyond the code");
    }
    if h.sums.len() as u64 != h.rows * 32 {
        return bad("shard sums do not match the rows");
    }
    let mut rows = 0;
    for m in &h.members {
        if m.sums.len() as u64 != self::rows(h.version, m.size) * 32 {
            return bad("member sums do not match its size");
        }
        rows = rows.max(self::rows(h.version, m.size));
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
    let body = h.rows.checked_mul(h.block as u64);
    if body.and_then(|b| b.checked_add(12 + bytes.len() as u64)) != Some(file_len) {
        return Err(FormatError::invalid(
            "parity file",
            "size does not match its header",
        ));
    }
    Ok(h)
}

/// Rebuilds the missing members of one row of a stripe of layout
/// `version` (a 64 KiB block for layouts 1 and 2, a 4 KiB sector for
/// layout 3) from what survived: `members[i]` and `parity[j]` are `None`
/// when damaged. Returns every member's row, padded; fails when more than
/// `m` shards of the row are gone.
pub fn rebuild_row(
    version: u32,
    members: &[Option<Vec<u8>>],
    parity: &[Option<Vec<u8>>],
) -> Result<Vec<Vec<u8>>, FormatError> {
    if version < 3 {
        return legacy::rebuild_row(members, parity);
    }
    let ms: Vec<Option<&[u8]>> = members.iter().map(|b| b.as_deref()).collect();
    let ps: Vec<Option<&[u8]>> = parity.iter().map(|b| b.as_deref()).collect();
    cauchy::rebuild(&ms, &ps, SECTOR).ok_or_else(|| {
        let gone = ms.iter().chain(&ps).filter(|b| b.is_none()).count();
        FormatError::invalid(
            "parity",
            format!(
                "{gone} of {} shards of a row are damaged; parity covers {}",
                ms.len() + ps.len(),
                ps.len()
            ),
        )
    })
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
            let parity = legacy::encode_row(&refs, m).unwrap();
            let mut gone: Vec<usize> = lost.iter().map(|x| *x as usize % (k + m)).collect();
            gone.sort();
            gone.dedup();
            gone.truncate(m);
            let ms: Vec<Option<Vec<u8>>> = (0..k).map(|i| (!gone.contains(&i)).then(|| members[i].clone())).collect();
            let ps: Vec<Option<Vec<u8>>> = (0..m).map(|j| (!gone.contains(&(k + j))).then(|| parity[j].clone())).collect();
            let back = rebuild_row(2, &ms, &ps).unwrap();
            for i in 0..k {
                prop_assert_eq!(&back[i][..members[i].len()], &members[i][..]);
            }
        }
    }

    /// Parity of `members` from scratch, byte by byte: shard `j` at `x` is
    /// the sum over members of `coef(j, i) · member_i[x]`.
    fn from_scratch(members: &[Vec<u8>], m: usize) -> Vec<Vec<u8>> {
        let len = members.iter().map(|b| b.len()).max().unwrap_or(0);
        (0..m)
            .map(|j| {
                (0..len)
                    .map(|x| {
                        members.iter().enumerate().fold(0u8, |acc, (i, b)| {
                            let mut one = [0u8];
                            let d = b.get(x).copied().unwrap_or(0);
                            cauchy::mul_add(cauchy::coef(j, i), &[d], &mut one);
                            acc ^ one[0]
                        })
                    })
                    .collect()
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn members_added_one_by_one_give_the_shards_of_a_whole_encode(
            sizes in proptest::collection::vec(prop_oneof![Just(0usize), Just(SECTOR), 1usize..3 * PARITY_BLOCK], 1..=16),
            m in 1usize..=4,
            old in 0usize..16,
            lost in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let k = sizes.len();
            let members: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| block(i as u8, *n)).collect();
            // The first `old` members once, then each later one added in
            // 64 KiB pieces at its offset, as the store does.
            let old = old.min(k);
            let mut shards = vec![Vec::new(); m];
            for (i, b) in members.iter().enumerate().take(old) {
                cauchy::add_member(i, b, &mut shards);
            }
            for (i, b) in members.iter().enumerate().skip(old) {
                for (c, piece) in b.chunks(PARITY_BLOCK).enumerate() {
                    let at = c * PARITY_BLOCK;
                    let mut part: Vec<Vec<u8>> = shards.iter().map(|s| s[at.min(s.len())..(at + PARITY_BLOCK).min(s.len())].to_vec()).collect();
                    cauchy::add_member(i, piece, &mut part);
                    for (s, p) in shards.iter_mut().zip(part) {
                        if s.len() < at + p.len() {
                            s.resize(at + p.len(), 0);
                        }
                        s[at..at + p.len()].copy_from_slice(&p);
                    }
                }
            }
            let whole = from_scratch(&members, m);
            for (j, (a, b)) in shards.iter().zip(&whole).enumerate() {
                prop_assert!(a == b, "shard {} of {}+{} differs", j, k, m);
            }
            // and any m lost shards of every 4 KiB row are rebuilt
            let mut gone: Vec<usize> = lost.iter().map(|x| *x as usize % (k + m)).collect();
            gone.sort();
            gone.dedup();
            gone.truncate(m);
            let len = whole.first().map_or(0, |s| s.len());
            for row in 0..len.div_ceil(SECTOR) {
                let cut = |b: &Vec<u8>| b[(row * SECTOR).min(b.len())..((row + 1) * SECTOR).min(b.len())].to_vec();
                let ms: Vec<Option<Vec<u8>>> = (0..k).map(|i| (!gone.contains(&i)).then(|| cut(&members[i]))).collect();
                let ps: Vec<Option<Vec<u8>>> = (0..m).map(|j| (!gone.contains(&(k + j))).then(|| cut(&shards[j]))).collect();
                let back = rebuild_row(3, &ms, &ps).unwrap();
                for i in 0..k {
                    let want = cut(&members[i]);
                    prop_assert_eq!(&back[i][..want.len()], &want[..]);
                    prop_assert!(back[i][want.len()..].iter().all(|b| *b == 0));
                }
            }
        }
    }

    #[test]
    fn more_than_m_lost_is_an_error() {
        let ms = vec![None, None, Some(vec![1u8; 10])];
        assert!(rebuild_row(3, &ms, &[Some(vec![0u8; SECTOR]), None]).is_err());
        assert!(rebuild_row(3, &ms, &[Some(vec![0u8; SECTOR]), Some(vec![0u8; 9])]).is_ok());
        let members: Vec<Vec<u8>> = (0..4).map(|i| block(i, 1000)).collect();
        let refs: Vec<&[u8]> = members.iter().map(|b| b.as_slice()).collect();
        let parity = legacy::encode_row(&refs, 2).unwrap();
        let ms = vec![
            None,
            None,
            Some(members[2].clone()),
            Some(members[3].clone()),
        ];
        let ps = vec![Some(parity[0].clone()), None];
        assert!(rebuild_row(2, &ms, &ps).is_err());
    }

    #[test]
    fn version_2_sums_give_the_hash_of_the_whole_member() {
        let b = PARITY_BLOCK;
        for len in [
            1,
            1000,
            b,
            b + 1,
            2 * b,
            2 * b + 7,
            3 * b,
            5 * b - 1,
            8 * b,
            9 * b + 3,
            37 * b + 11,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 1000) as u8).collect();
            let sums: Vec<u8> = data
                .chunks(b)
                .enumerate()
                .flat_map(|(row, blk)| block_sum(2, row as u64, blk))
                .collect();
            assert_eq!(sums.len() as u64, blocks(len as u64) * 32);
            let sector_sums: Vec<u8> = data
                .chunks(SECTOR)
                .enumerate()
                .flat_map(|(row, s)| block_sum(3, row as u64, s))
                .collect();
            if len > SECTOR {
                assert_eq!(
                    member_hash(&sector_sums),
                    Some(*blake3::hash(&data).as_bytes())
                );
            }
            let whole = *blake3::hash(&data).as_bytes();
            match member_hash(&sums) {
                Some(h) => assert_eq!(h, whole, "length {len}"),
                None => assert!(len <= b),
            }
            // a changed byte changes its block's sum and the member's hash
            let mut other = data.clone();
            other[len / 2] ^= 1;
            let row = (len / 2) / b;
            let changed = block_sum(2, row as u64, &other[row * b..((row + 1) * b).min(len)]);
            assert_ne!(&changed[..], &sums[row * 32..row * 32 + 32]);
        }
        // version 1 is the plain hash of the block
        assert_eq!(block_sum(1, 3, b"x"), *blake3::hash(b"x").as_bytes());
        assert_ne!(block_sum(2, 0, b"x"), block_sum(2, 1, b"x"));
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
