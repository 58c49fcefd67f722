//! Packs: many sealed blobs, then padding, then a sealed blob table, then its
//! length. Owns the pack layout and its streaming writer; never touches files
//! itself (the writer takes any `Write`) and never sees plaintext.
//!
//! ```text
//! MAGIC_PACK (8) || blob_1 || … || blob_n || zero padding || sealed_header || header_len (u32 LE)
//! ```
//! The padding makes the file size a Padmé length, so the size of a pack says
//! little about the chunks inside; the header plaintext is padded to 512 bytes
//! so its length says little about their number.

use std::io::Write;

use rand::{CryptoRng, RngCore};

use super::{FormatError, Reader};
use crate::crypto::{Keys, Kind, SEAL_OVERHEAD};
use crate::id::{BlobId, PackHasher, PackId};
use crate::limits::{
    MAX_BLOB_BYTES, MAX_PACK_BYTES, MAX_PACK_ENTRIES, MAX_PACK_HEADER_BYTES, MAX_SEALED_BLOB_BYTES,
};

/// `blake3("coffer pack v1")[..8]`. Never change.
pub const MAGIC_PACK: [u8; 8] = [0xfa, 0xce, 0xa6, 0x0c, 0x8c, 0xfa, 0x4f, 0x86];
/// Version of the header plaintext.
pub const PACK_HEADER_VERSION: u8 = 1;
/// Bytes of one header entry.
pub const ENTRY_LEN: usize = 1 + 32 + 8 + 4 + 4;
/// Bytes of the trailer (`header_len`).
pub const TRAILER_LEN: usize = 4;
/// The header plaintext is padded to a multiple of this.
pub const HEADER_PAD: usize = 512;
/// The id under which the header is sealed (headers are not content-addressed).
pub const HEADER_ID: [u8; 32] = [0u8; 32];

/// Where one blob sits in a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// What the blob is.
    pub kind: Kind,
    /// Its id.
    pub id: BlobId,
    /// Offset of the sealed blob from the start of the pack.
    pub offset: u64,
    /// Length of the sealed blob.
    pub sealed_len: u32,
    /// Length of the plaintext.
    pub plain_len: u32,
}

/// Padmé padding (Nikitin et al., PURBs 2019): rounds `len` up so that at most
/// O(log log len) bits of the length leak, with at most ~12% overhead.
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - len.leading_zeros() as u64; // floor(log2 len)
    let s = 64 - e.leading_zeros() as u64; // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

/// Encodes the header plaintext, padded to [`HEADER_PAD`].
pub fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + entries.len() * ENTRY_LEN + HEADER_PAD);
    out.push(PACK_HEADER_VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.push(e.kind as u8);
        out.extend_from_slice(e.id.as_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.sealed_len.to_le_bytes());
        out.extend_from_slice(&e.plain_len.to_le_bytes());
    }
    let padded = out.len().div_ceil(HEADER_PAD) * HEADER_PAD;
    out.resize(padded, 0);
    out
}

/// Decodes a header plaintext; every entry must lie within `[8, blob_end)`.
pub fn decode_header(plain: &[u8], blob_end: u64) -> Result<Vec<PackEntry>, FormatError> {
    let mut r = Reader::new(plain, "pack header");
    let version = r.u8()?;
    if version != PACK_HEADER_VERSION {
        return Err(FormatError::Version {
            what: "pack header",
            found: version.into(),
            supported: PACK_HEADER_VERSION.into(),
        });
    }
    let count = r.u32()? as usize;
    if count > MAX_PACK_ENTRIES || count * ENTRY_LEN > r.remaining() {
        return Err(FormatError::invalid(
            "pack header",
            format!("{count} entries do not fit in {} bytes", plain.len()),
        ));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = r.u8()?;
        let kind = Kind::from_u8(kind)
            .filter(|k| matches!(k, Kind::Data | Kind::Tree | Kind::ChunkList))
            .ok_or_else(|| FormatError::invalid("pack header", format!("bad blob kind {kind}")))?;
        let id = BlobId(r.array()?);
        let offset = r.u64()?;
        let sealed_len = r.u32()?;
        let plain_len = r.u32()?;
        let end = offset.checked_add(sealed_len.into());
        if offset < MAGIC_PACK.len() as u64
            || end.is_none_or(|e| e > blob_end)
            || (sealed_len as usize) < SEAL_OVERHEAD + 1
            || sealed_len as usize > MAX_SEALED_BLOB_BYTES
            || plain_len as usize > MAX_BLOB_BYTES
        {
            return Err(FormatError::invalid(
                "pack header",
                format!("entry {id} at {offset}+{sealed_len} lies outside the blob area"),
            ));
        }
        entries.push(PackEntry {
            kind,
            id,
            offset,
            sealed_len,
            plain_len,
        });
    }
    Ok(entries)
}

/// Reads the trailer of a pack of `pack_len` bytes: returns the sealed
/// header's length, checked against the pack's size.
pub fn decode_trailer(trailer: &[u8], pack_len: u64) -> Result<u32, FormatError> {
    let min = (MAGIC_PACK.len() + SEAL_OVERHEAD + TRAILER_LEN) as u64;
    if pack_len < min || pack_len > MAX_PACK_BYTES {
        return Err(FormatError::invalid(
            "pack",
            format!("impossible pack size {pack_len}"),
        ));
    }
    let t: [u8; 4] = trailer
        .try_into()
        .map_err(|_| FormatError::invalid("pack", "trailer must be 4 bytes"))?;
    let hlen = u32::from_le_bytes(t);
    if hlen as usize > MAX_PACK_HEADER_BYTES
        || (hlen as u64) + (MAGIC_PACK.len() + TRAILER_LEN) as u64 > pack_len
        || (hlen as usize) < SEAL_OVERHEAD
    {
        return Err(FormatError::invalid(
            "pack",
            format!("header length {hlen} does not fit a pack of {pack_len} bytes"),
        ));
    }
    Ok(hlen)
}

/// Opens a sealed header read from the end of a pack of `pack_len` bytes.
pub fn open_header(
    keys: &Keys,
    sealed: &[u8],
    pack_len: u64,
) -> Result<Vec<PackEntry>, FormatError> {
    let plain = keys.open(Kind::PackHeader, &HEADER_ID, sealed)?;
    let blob_end = pack_len - (sealed.len() + TRAILER_LEN) as u64;
    decode_header(&plain, blob_end)
}

/// Parses a whole pack held in memory: checks the magic, the trailer and the
/// header, and returns the blob table.
pub fn decode(keys: &Keys, pack: &[u8]) -> Result<Vec<PackEntry>, FormatError> {
    if pack.len() < MAGIC_PACK.len() || pack[..8] != MAGIC_PACK {
        return Err(FormatError::BadMagic { what: "pack" });
    }
    let len = pack.len() as u64;
    let hlen = decode_trailer(&pack[pack.len().saturating_sub(TRAILER_LEN)..], len)? as usize;
    let hstart = pack.len() - TRAILER_LEN - hlen;
    open_header(keys, &pack[hstart..pack.len() - TRAILER_LEN], len)
}

/// Writes a pack to any `Write`, hashing as it goes, so a pack never has to
/// sit in memory whole.
pub struct PackWriter<W: Write> {
    out: W,
    hasher: PackHasher,
    offset: u64,
    entries: Vec<PackEntry>,
}

impl<W: Write> PackWriter<W> {
    /// Starts a pack: writes the magic.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&MAGIC_PACK)?;
        let mut hasher = PackHasher::default();
        hasher.update(&MAGIC_PACK);
        Ok(PackWriter {
            out,
            hasher,
            offset: MAGIC_PACK.len() as u64,
            entries: Vec::new(),
        })
    }

    /// Appends one sealed blob.
    pub fn add(
        &mut self,
        kind: Kind,
        id: BlobId,
        sealed: &[u8],
        plain_len: u32,
    ) -> std::io::Result<()> {
        self.out.write_all(sealed)?;
        self.hasher.update(sealed);
        self.entries.push(PackEntry {
            kind,
            id,
            offset: self.offset,
            sealed_len: sealed.len() as u32,
            plain_len,
        });
        self.offset += sealed.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// Whether no blob was added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Blobs added so far.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Writes padding, the sealed header and the trailer. Returns the pack's
    /// name, the writer, the blob table and the pack's total size.
    pub fn finish(
        mut self,
        keys: &Keys,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> std::io::Result<(PackId, W, Vec<PackEntry>, u64)> {
        let plain = encode_header(&self.entries);
        let sealed = keys.seal(Kind::PackHeader, &HEADER_ID, &plain, rng);
        // Open what was sealed before writing it, like every blob.
        if keys
            .open(Kind::PackHeader, &HEADER_ID, &sealed)
            .ok()
            .as_deref()
            != Some(&plain[..])
        {
            return Err(std::io::Error::other(
                "pack header did not verify after sealing",
            ));
        }
        let unpadded = self.offset + (sealed.len() + TRAILER_LEN) as u64;
        let pad = padme(unpadded) - unpadded;
        let zeros = [0u8; 8192];
        let mut left = pad;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.out.write_all(&zeros[..n])?;
            self.hasher.update(&zeros[..n]);
            left -= n as u64;
        }
        let trailer = (sealed.len() as u32).to_le_bytes();
        self.out.write_all(&sealed)?;
        self.out.write_all(&trailer)?;
        self.hasher.update(&sealed);
        self.hasher.update(&trailer);
        let id = self.hasher.finalize();
        Ok((id, self.out, self.entries, unpadded + pad))
    }
}

/// Whether any two entries share bytes of the pack. A writer never makes
/// such a table; a reader that decrypts blobs where they lie must refuse it.
pub fn blobs_overlap(entries: &[PackEntry]) -> bool {
    let mut spans: Vec<(u64, u64)> = entries
        .iter()
        .map(|e| (e.offset, e.offset + u64::from(e.sealed_len)))
        .collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::format::blob::{self, Sealer};
    use proptest::prelude::*;
    use rand::rngs::OsRng;

    fn keys() -> Keys {
        Keys::derive(&MasterKey::from_bytes([3u8; 32]))
    }

    #[test]
    fn overlapping_entries_are_found() {
        let e = |offset, sealed_len| PackEntry {
            kind: Kind::Data,
            id: crate::id::BlobId([0; 32]),
            offset,
            sealed_len,
            plain_len: 1,
        };
        assert!(!blobs_overlap(&[e(8, 10), e(18, 5), e(40, 1)]));
        assert!(!blobs_overlap(&[e(40, 1), e(8, 10)]));
        assert!(blobs_overlap(&[e(8, 10), e(17, 5)]));
        assert!(blobs_overlap(&[e(30, 5), e(8, 30)]));
    }

    #[test]
    fn magic_matches_its_label() {
        assert_eq!(MAGIC_PACK, crate::format::magic("coffer pack v1"));
    }

    #[test]
    fn padme_bounds() {
        for len in [
            2u64,
            100,
            1000,
            12345,
            1 << 20,
            16 << 20,
            (16 << 20) + 1,
            123_456_789,
        ] {
            let p = padme(len);
            assert!(p >= len && p <= len + len / 8 + 1, "{len} -> {p}");
        }
        assert_eq!(padme(16 << 20), 16 << 20);
    }

    #[test]
    fn build_and_decode() {
        let k = keys();
        let mut s = Sealer::new(3);
        let mut w = PackWriter::new(Vec::new()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; 1000 * (i + 1)]).collect();
        for b in &blobs {
            let id = k.blob_id(b);
            let sealed = s.seal(&k, Kind::Data, &id, b, &mut OsRng);
            w.add(Kind::Data, id, &sealed, b.len() as u32).unwrap();
        }
        let (id, bytes, entries, size) = w.finish(&k, &mut OsRng).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(id, PackId::of(&bytes));
        assert_eq!(decode(&k, &bytes).unwrap(), entries);
        for (e, b) in entries.iter().zip(&blobs) {
            let sealed = &bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
            assert_eq!(&blob::open(&k, Kind::Data, &e.id, sealed).unwrap(), b);
        }
        // the size is a Padmé length
        assert_eq!(padme(size), size);
        // a wrong key refuses the header
        let other = Keys::derive(&MasterKey::from_bytes([4u8; 32]));
        assert!(decode(&other, &bytes).is_err());
    }

    proptest! {
        #[test]
        fn header_round_trip(n in 0usize..50, seed in any::<u8>()) {
            let entries: Vec<PackEntry> = (0..n).map(|i| PackEntry {
                kind: if i % 2 == 0 { Kind::Data } else { Kind::Tree },
                id: BlobId([seed.wrapping_add(i as u8); 32]),
                offset: 8 + (i as u64) * 100,
                sealed_len: 100,
                plain_len: 60,
            }).collect();
            let enc = encode_header(&entries);
            prop_assert_eq!(enc.len() % HEADER_PAD, 0);
            prop_assert_eq!(decode_header(&enc, 8 + n as u64 * 100).unwrap(), entries);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&keys(), &bytes);
            let _ = decode_header(&bytes, 1000);
        }
    }
}
