//! Typed 32-byte identifiers. Each object kind gets its own type so that a
//! pack name can never be passed where a blob id is expected.

use std::fmt;
use std::str::FromStr;

/// Parsing a hex identifier failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid id {0:?}: expected 64 hex digits")]
pub struct IdParseError(pub String);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lower-case hex, 64 digits.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex digits, as shown to users.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
            /// Builds an id from a slice that must be exactly 32 bytes long.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(b).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError(s.to_string()))?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("32 bytes or 64 hex digits")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<$name, E> {
                        $name::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(|_| E::custom("bad hex id"))
                    }
                }
                if d.is_human_readable() {
                    d.deserialize_str(V)
                } else {
                    d.deserialize_bytes(V)
                }
            }
        }
    };
}

id_type!(
    /// Keyed BLAKE3 of a blob's plaintext: names data chunks, trees and chunk lists.
    BlobId
);
id_type!(
    /// Plain BLAKE3 of a pack file's bytes: its name in the store.
    PackId
);
id_type!(
    /// Plain BLAKE3 of a snapshot file's bytes: its name in the store.
    SnapshotId
);
id_type!(
    /// Random identifier of a repository, chosen at init.
    RepoId
);
id_type!(
    /// Keyed BLAKE3 of a backup job's host and source paths: the group a
    /// snapshot belongs to for retention (a machine's job keeps its newest
    /// snapshots). The store learns which snapshots share a job, never the
    /// host or the paths.
    SnapshotGroup
);

impl PackId {
    /// The name a pack must have: the plain BLAKE3 of its bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// Bytes a [`PackHasher`] hands to BLAKE3 at a time.
const HASH_RUN: usize = 64 << 10;

/// The name of a pack written in pieces of any size.
///
/// BLAKE3 hashes with SIMD only subtrees that start at an aligned offset:
/// fed pieces of odd sizes (sealed blobs), it falls back to one 1 KiB chunk
/// at a time after every piece (measured: 40% of a pack's hashing time). The
/// pieces are gathered into 64 KiB runs at 64 KiB offsets instead.
#[derive(Clone, Default)]
pub struct PackHasher {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

impl PackHasher {
    /// Adds the next bytes of the pack.
    pub fn update(&mut self, mut data: &[u8]) {
        if !self.pending.is_empty() {
            let take = (HASH_RUN - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < HASH_RUN {
                return;
            }
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
        let whole = data.len() / HASH_RUN * HASH_RUN;
        self.hasher.update(&data[..whole]);
        self.pending.extend_from_slice(&data[whole..]);
    }

    /// The name of the bytes added so far.
    pub fn finalize(&self) -> PackId {
        let mut h = self.hasher.clone();
        h.update(&self.pending);
        PackId(*h.finalize().as_bytes())
    }
}

impl SnapshotId {
    /// The name a snapshot file must have: the plain BLAKE3 of its bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_hasher_names_bytes_fed_in_any_pieces() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i * 31 + i / 977) as u8).collect();
        let want = PackId::of(&data);
        for piece in [1usize, 1000, 33_000, 65_536, 65_537, 200_001, 700_000] {
            let mut h = PackHasher::default();
            for p in data.chunks(piece) {
                h.update(p);
            }
            assert_eq!(h.finalize(), want, "pieces of {piece}");
        }
        assert_eq!(PackHasher::default().finalize(), PackId::of(b""));
    }

    #[test]
    fn hex_round_trip() {
        let id = BlobId([7u8; 32]);
        let s = id.to_hex();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
        assert!("zz".parse::<BlobId>().is_err());
    }
}
