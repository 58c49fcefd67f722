//! The bytes coffer writes: every on-disk and in-repository format, as pure
//! `encode`/`decode` functions. Owns layouts and their checks; never touches
//! files, sockets or the clock. The tables are in `docs/format.md`.

pub mod blob;
pub mod chunklist;
pub mod config;
pub mod keyfile;
pub mod pack;
pub mod snapshot;
pub mod tree;

use crate::crypto::CryptoError;

/// Derives an 8-byte magic: `blake3(label)[..8]`. The labels are written next
/// to each constant; never change them.
pub fn magic(label: &str) -> [u8; 8] {
    let h = blake3::hash(label.as_bytes());
    let mut m = [0u8; 8];
    m.copy_from_slice(&h.as_bytes()[..8]);
    m
}

/// Decoding untrusted bytes failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the layout needs.
    #[error("{what} truncated: need {need} bytes, have {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The leading magic is wrong: not this kind of file.
    #[error("{what}: bad magic, not a coffer {what}")]
    BadMagic {
        /// What was being read.
        what: &'static str,
    },
    /// A version this build does not know.
    #[error(
        "{what}: format version {found} is not supported (this build reads version {supported})"
    )]
    Version {
        /// What was being read.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A length beyond the limits.
    #[error("{what}: length {len} exceeds the limit of {max}")]
    TooLarge {
        /// What was being read.
        what: &'static str,
        /// The length found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A field holds a value that makes no sense.
    #[error("{what}: {detail}")]
    Invalid {
        /// What was being read.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// After decryption the recomputed id differs from the expected one.
    #[error("blob {expected}: content hashes to {actual} (tampered or swapped)")]
    IdMismatch {
        /// The id the blob was stored under.
        expected: String,
        /// The keyed hash of what it holds.
        actual: String,
    },
    /// Authentication failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl FormatError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// A little-endian reader over untrusted bytes that never panics.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let have = self.buf.len() - self.pos;
        if n > have {
            return Err(FormatError::Truncated {
                what: self.what,
                need: self.pos.saturating_add(n),
                have: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Decodes CBOR from untrusted bytes into `T`.
pub(crate) fn cbor_decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, FormatError> {
    ciborium::de::from_reader_with_recursion_limit(bytes, 64)
        .map_err(|e| FormatError::invalid(what, format!("CBOR: {e}")))
}

/// Encodes `T` as CBOR.
pub(crate) fn cbor_encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // unwrap: serializing into a Vec cannot fail for our plain data types
    ciborium::ser::into_writer(v, &mut out).expect("CBOR encode into Vec");
    out
}
