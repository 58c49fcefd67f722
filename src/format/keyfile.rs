//! Key files: the master key wrapped under a key derived from a passphrase by
//! Argon2id. Owns the JSON layout, the KDF parameters and their floor. The
//! parameters, salt and repository id are the associated data of the wrapped
//! key, so editing any of them makes the file fail to open; a floor refuses
//! weakened parameters before any work is done.

use rand::{CryptoRng, RngCore};
use rayon::iter::ParallelExtend;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::FormatError;
use crate::crypto::{open_with, Cipher, CryptoError, Kind, MasterKey, NONCE_LEN, SEAL_OVERHEAD};
use crate::id::RepoId;
use crate::limits::MAX_SMALL_FILE_BYTES;

/// Version of the key file layout.
pub const KEYFILE_VERSION: u32 = 1;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The floor every client enforces (OWASP's minimum for Argon2id).
    pub const FLOOR: KdfParams = KdfParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };
    /// What `init` uses unless told otherwise: 32 MiB and 4 passes, above
    /// OWASP's recommendation (19 MiB × 2) at a memory peak that stays below
    /// the rest of a backup run. Two lanes are filled on two threads: the
    /// same memory and passes in about two thirds of the time (every
    /// command derives the key once; one lane took 55-70 ms of a 0.3 s
    /// restore).
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 32 * 1024,
        iterations: 4,
        parallelism: 2,
    };
    /// The most one key file may ask a client to spend, enforced like the
    /// floor: before the KDF runs. Anyone who may add a key file (a client
    /// of the namespace, a compromised VPS) can plant one that sorts first,
    /// and every command of every client would try it before the real key,
    /// so the ceiling is what such a file can cost each of them: at most
    /// 2 GiB of memory, 16 passes, 16 lanes, and at most
    /// [`KdfParams::CEILING_WORK_KIB`] of memory times passes. That still
    /// admits the memory of RFC 9106's first recommended setting (2 GiB, at
    /// the floor's 2 passes) and its second (64 MiB, 3 passes) with room
    /// to spare, and bounds a planted file to the memory traffic of about
    /// a 4 GiB fill (seconds on one core; the old bound of 4 GiB × 64
    /// passes was minutes, and more memory than a small VPS has). Bitwarden bounds the parameters
    /// its server hands to clients the same way (1 GiB, 10 passes).
    pub const CEILING: KdfParams = KdfParams {
        memory_kib: 2 * 1024 * 1024,
        iterations: 16,
        parallelism: 16,
    };
    /// The ceiling of memory (KiB) times passes: 4 GiB × 1, 2 GiB × 2,
    /// 1 GiB × 4 … 256 MiB × 16.
    pub const CEILING_WORK_KIB: u64 = 4 * 1024 * 1024;

    /// Refuses parameters below the floor or above the ceiling.
    pub fn check(&self) -> Result<(), FormatError> {
        let (f, c) = (Self::FLOOR, Self::CEILING);
        if self.memory_kib < f.memory_kib
            || self.iterations < f.iterations
            || self.parallelism < f.parallelism
        {
            return Err(FormatError::invalid(
                "key file",
                format!(
                    "Argon2id parameters (memory {} KiB, {} iterations, {} lanes) are below the floor of {} KiB, {} iterations, {} lane; refusing a weakened key file",
                    self.memory_kib, self.iterations, self.parallelism, f.memory_kib, f.iterations, f.parallelism
                ),
            ));
        }
        if self.memory_kib > c.memory_kib
            || self.iterations > c.iterations
            || self.parallelism > c.parallelism
            || self.memory_kib as u64 * self.iterations as u64 > Self::CEILING_WORK_KIB
        {
            return Err(FormatError::invalid(
                "key file",
                format!(
                    "Argon2id parameters (memory {} KiB, {} iterations, {} lanes) are above the ceiling of {} KiB, {} iterations, {} lanes and {} KiB times iterations; refusing to run so costly a KDF",
                    self.memory_kib, self.iterations, self.parallelism, c.memory_kib, c.iterations, c.parallelism, Self::CEILING_WORK_KIB
                ),
            ));
        }
        Ok(())
    }

    fn derive(&self, passphrase: &[u8], salt: &[u8]) -> Result<[u8; 32], CryptoError> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        // argon2 would zero its memory on this thread alone (a 64-byte
        // alignment takes the allocator's memset path): 20 ms of page
        // faults before the lanes start, half that on two threads.
        let mut memory = Vec::with_capacity(params.block_count());
        memory.par_extend(rayon::iter::repeat_n(
            argon2::Block::new(),
            params.block_count(),
        ));
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        a.hash_password_into_with_memory(passphrase, salt, &mut out, &mut memory[..])
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        Ok(out)
    }
}

/// A key file as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// [`KEYFILE_VERSION`].
    pub version: u32,
    /// Always `"argon2id"`.
    pub kdf: String,
    /// Cost parameters.
    pub params: KdfParams,
    /// 32 random bytes, hex.
    pub salt: String,
    /// The repository this key opens, hex.
    pub repo: RepoId,
    /// When it was made, seconds since the epoch (informative).
    pub created: i64,
    /// Host that made it (informative).
    pub host: String,
    /// `nonce || XChaCha20-Poly1305(master key) || tag`, hex.
    pub wrapped: String,
}

impl KeyFile {
    /// The associated data of the wrapped key: every field that matters.
    fn binding(&self, salt: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"coffer keyfile v1");
        h.update(&self.version.to_le_bytes());
        h.update(self.kdf.as_bytes());
        h.update(&self.params.memory_kib.to_le_bytes());
        h.update(&self.params.iterations.to_le_bytes());
        h.update(&self.params.parallelism.to_le_bytes());
        h.update(salt);
        h.update(self.repo.as_bytes());
        *h.finalize().as_bytes()
    }

    /// Wraps `master` under `passphrase`.
    pub fn create(
        master: &MasterKey,
        passphrase: &[u8],
        params: KdfParams,
        repo: RepoId,
        created: i64,
        host: String,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<KeyFile, FormatError> {
        params.check()?;
        let mut salt = [0u8; 32];
        rng.fill_bytes(&mut salt);
        let mut kf = KeyFile {
            version: KEYFILE_VERSION,
            kdf: "argon2id".into(),
            params,
            salt: hex::encode(salt),
            repo,
            created,
            host,
            wrapped: String::new(),
        };
        let mut kek = params.derive(passphrase, &salt)?;
        let cipher = Cipher::new(&kek);
        kek.zeroize();
        let mut buf = vec![0u8; NONCE_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        buf.extend_from_slice(master.expose());
        let ad = crate::crypto::associated_data(Kind::KeyFile, &kf.binding(&salt));
        let tag = cipher.encrypt(&nonce, &ad, &mut buf[NONCE_LEN..]);
        buf.extend_from_slice(&tag);
        kf.wrapped = hex::encode(&buf);
        buf.zeroize();
        Ok(kf)
    }

    /// Unwraps the master key. Checks the floor first, so a weakened file is
    /// refused without running the KDF.
    pub fn open(&self, passphrase: &[u8]) -> Result<MasterKey, FormatError> {
        self.params.check()?;
        let salt = hex::decode(&self.salt)
            .map_err(|_| FormatError::invalid("key file", "salt is not hex"))?;
        if salt.len() < 16 {
            return Err(FormatError::invalid(
                "key file",
                "salt shorter than 16 bytes",
            ));
        }
        let wrapped = hex::decode(&self.wrapped)
            .map_err(|_| FormatError::invalid("key file", "wrapped key is not hex"))?;
        if wrapped.len() != 32 + SEAL_OVERHEAD {
            return Err(FormatError::invalid(
                "key file",
                "wrapped key has the wrong length",
            ));
        }
        let mut kek = self.params.derive(passphrase, &salt)?;
        let cipher = Cipher::new(&kek);
        kek.zeroize();
        let mut plain = open_with(&cipher, Kind::KeyFile, &self.binding(&salt), &wrapped)?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&plain);
        plain.zeroize();
        Ok(MasterKey::from_bytes(k))
    }

    /// Encodes as pretty JSON.
    pub fn encode(&self) -> Vec<u8> {
        // unwrap: plain data always serializes
        serde_json::to_vec_pretty(self).expect("key file JSON")
    }

    /// Decodes and checks the layout (not the passphrase).
    pub fn decode(bytes: &[u8]) -> Result<KeyFile, FormatError> {
        if bytes.len() > MAX_SMALL_FILE_BYTES {
            return Err(FormatError::TooLarge {
                what: "key file",
                len: bytes.len() as u64,
                max: MAX_SMALL_FILE_BYTES as u64,
            });
        }
        let kf: KeyFile = serde_json::from_slice(bytes)
            .map_err(|e| FormatError::invalid("key file", e.to_string()))?;
        if kf.version != KEYFILE_VERSION {
            return Err(FormatError::Version {
                what: "key file",
                found: kf.version,
                supported: KEYFILE_VERSION,
            });
        }
        if kf.kdf != "argon2id" {
            return Err(FormatError::invalid(
                "key file",
                format!("unknown KDF {:?}", kf.kdf),
            ));
        }
        Ok(kf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn make() -> (MasterKey, KeyFile) {
        let m = MasterKey::generate(&mut OsRng);
        let kf = KeyFile::create(
            &m,
            b"pw",
            KdfParams::FLOOR,
            RepoId([1; 32]),
            0,
            "h".into(),
            &mut OsRng,
        )
        .unwrap();
        (m, kf)
    }

    #[test]
    fn open_and_refuse() {
        let (m, kf) = make();
        let kf = KeyFile::decode(&kf.encode()).unwrap();
        assert_eq!(kf.open(b"pw").unwrap().expose(), m.expose());
        assert!(matches!(
            kf.open(b"nope"),
            Err(FormatError::Crypto(CryptoError::Auth))
        ));
        // weakened below the floor: refused with a message naming the floor
        let mut weak = kf.clone();
        weak.params.memory_kib = 1024;
        let e = weak.open(b"pw").unwrap_err().to_string();
        assert!(e.contains("below the floor"), "{e}");
        // other parameters above the floor: the binding breaks
        let mut edited = kf.clone();
        edited.params.iterations = 5;
        assert!(edited.open(b"pw").is_err());
        let mut moved = kf.clone();
        moved.repo = RepoId([2; 32]);
        assert!(moved.open(b"pw").is_err());
        // above the ceiling, in any one bound or in memory times passes
        for (m, t, p) in [
            (4 << 20, 2, 1),
            (19456, 64, 1),
            (19456, 2, 64),
            (1 << 20, 5, 1),
        ] {
            let mut costly = kf.clone();
            costly.params = KdfParams {
                memory_kib: m,
                iterations: t,
                parallelism: p,
            };
            let e = costly.open(b"pw").unwrap_err().to_string();
            assert!(e.contains("above the ceiling"), "{e}");
        }
        // RFC 9106's first recommended setting is within it
        let rfc = KdfParams {
            memory_kib: 2 << 20,
            iterations: 1,
            parallelism: 4,
        };
        assert!(rfc.check().is_err(), "one pass is below the floor");
        let two = KdfParams {
            iterations: 2,
            ..rfc
        };
        assert!(two.check().is_ok());
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        for b in [&b""[..], b"{}", b"[1,2]", b"{\"version\":1}", &[0xff; 10]] {
            assert!(KeyFile::decode(b).is_err());
        }
    }
}
