//! The repository config: a plain JSON envelope with the repository's id and
//! format version, around sealed settings (chunk sizes, image block size, pack
//! size) that only a key holder can read or change unnoticed.

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{cbor_decode, cbor_encode, FormatError};
use crate::chunk::ChunkerParams;
use crate::crypto::{Keys, Kind};
use crate::id::RepoId;
use crate::limits::MAX_SMALL_FILE_BYTES;

/// Version of the repository format.
pub const REPO_VERSION: u32 = 1;

/// Settings fixed at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// FastCDC sizes for files and streams.
    pub chunker: ChunkerParams,
    /// Fixed block size for images and sparse files.
    pub image_block: u32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Default zstd level. 1 (zstd's fast strategy): level 3 costs about
    /// twice the CPU on text for a few percent of size.
    pub compression: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            chunker: ChunkerParams::default(),
            image_block: 32 << 10,
            pack_size: 16 << 20,
            compression: 1,
        }
    }
}

impl Settings {
    /// Checks values read from a config.
    pub fn validate(&self) -> Result<(), FormatError> {
        self.chunker
            .validate()
            .map_err(|e| FormatError::invalid("config", e))?;
        if !(4096..=(4 << 20)).contains(&self.image_block) || !self.image_block.is_power_of_two() {
            return Err(FormatError::invalid(
                "config",
                "image block must be a power of two in 4 KiB..4 MiB",
            ));
        }
        if !((1 << 20)..=(256 << 20)).contains(&self.pack_size) {
            return Err(FormatError::invalid(
                "config",
                "pack size must be within 1 MiB..256 MiB",
            ));
        }
        if !(0..=19).contains(&self.compression) {
            return Err(FormatError::invalid(
                "config",
                "compression level must be within 0..=19",
            ));
        }
        Ok(())
    }
}

/// The config file as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// [`REPO_VERSION`].
    pub version: u32,
    /// The repository's id.
    pub id: RepoId,
    /// The sealed [`Settings`], hex.
    pub settings: String,
}

impl ConfigFile {
    /// Seals settings into a new config.
    pub fn create(
        keys: &Keys,
        id: RepoId,
        s: &Settings,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> ConfigFile {
        ConfigFile {
            version: REPO_VERSION,
            id,
            settings: hex::encode(keys.seal(Kind::Config, id.as_bytes(), &cbor_encode(s), rng)),
        }
    }

    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        // unwrap: plain data always serializes
        serde_json::to_vec_pretty(self).expect("config JSON")
    }

    /// Decodes the envelope; refuses unknown versions.
    pub fn decode(bytes: &[u8]) -> Result<ConfigFile, FormatError> {
        if bytes.len() > MAX_SMALL_FILE_BYTES {
            return Err(FormatError::TooLarge {
                what: "config",
                len: bytes.len() as u64,
                max: MAX_SMALL_FILE_BYTES as u64,
            });
        }
        let c: ConfigFile = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::invalid("config", e.to_string()))?;
        if c.version != REPO_VERSION {
            return Err(FormatError::Version {
                what: "repository",
                found: c.version,
                supported: REPO_VERSION,
            });
        }
        Ok(c)
    }

    /// Opens and validates the settings.
    pub fn open(&self, keys: &Keys) -> Result<Settings, FormatError> {
        let sealed = hex::decode(&self.settings)
            .map_err(|_| FormatError::invalid("config", "settings not hex"))?;
        let s: Settings = cbor_decode(
            "config",
            &keys.open(Kind::Config, self.id.as_bytes(), &sealed)?,
        )?;
        s.validate()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use rand::rngs::OsRng;

    #[test]
    fn round_trip_and_tamper() {
        let k = Keys::derive(&MasterKey::from_bytes([1; 32]));
        let s = Settings::default();
        let c = ConfigFile::create(&k, RepoId([4; 32]), &s, &mut OsRng);
        let d = ConfigFile::decode(&c.encode()).unwrap();
        assert_eq!(d.open(&k).unwrap(), s);
        let mut moved = d;
        moved.id = RepoId([5; 32]);
        assert!(moved.open(&k).is_err());
        assert!(ConfigFile::decode(b"{\"version\":9}").is_err());
    }
}
