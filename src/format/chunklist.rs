//! Chunk lists: the ordered content of one file as `(id, len)` pairs, where the
//! all-zero id stands for a run of zero bytes that is not stored (holes and
//! zero blocks of images and sparse files). Owns that encoding; never touches
//! files.

use super::FormatError;
use crate::id::BlobId;
use crate::limits::MAX_BLOB_BYTES;

/// Bytes of one encoded entry: `id (32) || len (u64 LE)`.
pub const CHUNK_REF_LEN: usize = 40;
/// Entries per chunk-list blob when a file's list is too long to sit in its
/// tree node.
pub const LIST_BLOB_ENTRIES: usize = 4096;
/// Entries a file node holds inline before its list moves to list blobs.
pub const INLINE_ENTRIES: usize = 64;

/// One piece of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// The data blob, or [`BlobId::default()`] (all zero) for a zero run.
    pub id: BlobId,
    /// Bytes of content this piece stands for.
    pub len: u64,
}

impl ChunkRef {
    /// A run of `len` zero bytes, stored as nothing.
    pub fn zeros(len: u64) -> Self {
        ChunkRef {
            id: BlobId::default(),
            len,
        }
    }
    /// Whether this piece is a zero run.
    pub fn is_zero(&self) -> bool {
        self.id == BlobId::default()
    }
}

/// Encodes entries back to back.
pub fn encode(refs: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(refs.len() * CHUNK_REF_LEN);
    for r in refs {
        out.extend_from_slice(r.id.as_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
    }
    out
}

/// Decodes entries; a data entry longer than a blob can be is refused.
pub fn decode(bytes: &[u8]) -> Result<Vec<ChunkRef>, FormatError> {
    if !bytes.len().is_multiple_of(CHUNK_REF_LEN) {
        return Err(FormatError::invalid(
            "chunk list",
            format!("{} bytes is not a whole number of entries", bytes.len()),
        ));
    }
    bytes
        .chunks_exact(CHUNK_REF_LEN)
        .map(|e| {
            let mut id = [0u8; 32];
            id.copy_from_slice(&e[..32]);
            let mut len = [0u8; 8];
            len.copy_from_slice(&e[32..]);
            let r = ChunkRef {
                id: BlobId(id),
                len: u64::from_le_bytes(len),
            };
            if !r.is_zero() && r.len > MAX_BLOB_BYTES as u64 {
                return Err(FormatError::invalid(
                    "chunk list",
                    format!("chunk of {} bytes", r.len),
                ));
            }
            Ok(r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(v in proptest::collection::vec((any::<[u8; 32]>(), 0u64..1_000_000), 0..100)) {
            let refs: Vec<ChunkRef> = v.into_iter().map(|(id, len)| ChunkRef { id: BlobId(id), len }).collect();
            prop_assert_eq!(decode(&encode(&refs)).unwrap(), refs);
        }
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
        }
    }
}
