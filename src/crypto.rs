//! Keys and authenticated encryption. Owns the master key, the subkeys
//! derived from it and XChaCha20-Poly1305 sealing; it never touches files.
//!
//! Nonces are random 24-byte XChaCha20 nonces drawn from the caller's CSPRNG,
//! so random nonces are safe at any repository size. The associated data binds
//! the format version, the object kind and the object id, so a sealed object
//! cannot be swapped for another, replayed under another name, or read as
//! another kind.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use rand::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::id::BlobId;

/// Version of the sealed-object format, part of every object's associated data.
pub const SEAL_VERSION: u8 = 1;
/// Bytes of nonce in front of every sealed object.
pub const NONCE_LEN: usize = 24;
/// Bytes of Poly1305 tag behind every sealed object.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Sealing or opening failed. Deliberately opaque: no detail that could
/// serve as an oracle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication failed: wrong key, or the bytes were altered.
    #[error("authentication failed: wrong key or damaged or tampered data")]
    Auth,
    /// Too short to be a sealed object.
    #[error("sealed object too short ({0} bytes)")]
    TooShort(usize),
    /// Argon2 rejected its parameters.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// What a sealed object is. Part of the associated data: opening an object as
/// another kind fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A chunk of file content.
    Data = 1,
    /// A directory listing.
    Tree = 2,
    /// A list of chunk references of one large file.
    ChunkList = 3,
    /// The blob table at the end of a pack.
    PackHeader = 4,
    /// The encrypted record of a snapshot.
    Snapshot = 5,
    /// The repository's encrypted settings.
    Config = 6,
    /// A master key wrapped by a passphrase.
    KeyFile = 7,
}

impl Kind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Data,
            2 => Kind::Tree,
            3 => Kind::ChunkList,
            4 => Kind::PackHeader,
            5 => Kind::Snapshot,
            6 => Kind::Config,
            7 => Kind::KeyFile,
            _ => return None,
        })
    }

    /// Whether the object's id is the keyed hash of its plaintext, so a
    /// reader must recompute and compare it after opening.
    pub fn content_addressed(self) -> bool {
        matches!(self, Kind::Data | Kind::Tree | Kind::ChunkList)
    }
}

/// Builds the associated data: `"coffer" || version || kind || id`.
pub fn associated_data(kind: Kind, id: &[u8; 32]) -> [u8; 40] {
    let mut ad = [0u8; 40];
    ad[..6].copy_from_slice(b"coffer");
    ad[6] = SEAL_VERSION;
    ad[7] = kind as u8;
    ad[8..].copy_from_slice(id);
    ad
}

/// The repository's random master key. Wiped on drop; prints as `MasterKey(..)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Draws a new random master key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        MasterKey(k)
    }
    /// Wraps raw key bytes (from a key file).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        MasterKey(b)
    }
    /// The raw key bytes, for wrapping into a key file.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Context strings for subkey derivation (BLAKE3 `derive_key`). Never change them.
const CTX_ID: &str = "coffer 2026-11 chunk id key v1";
const CTX_GEAR: &str = "coffer 2026-11 chunker gear table v1";
const CTX_ENC: &str = "coffer 2026-11 object encryption key v1";

/// Subkeys derived from the master key, one per purpose.
#[derive(Clone)]
pub struct Keys {
    id_key: [u8; 32],
    gear_key: [u8; 32],
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.id_key.zeroize();
        self.gear_key.zeroize();
    }
}

impl Keys {
    /// Derives every subkey from the master key.
    pub fn derive(master: &MasterKey) -> Self {
        let mut enc = blake3::derive_key(CTX_ENC, &master.0);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&enc));
        enc.zeroize();
        Keys {
            id_key: blake3::derive_key(CTX_ID, &master.0),
            gear_key: blake3::derive_key(CTX_GEAR, &master.0),
            cipher,
        }
    }

    /// The id of a blob: keyed BLAKE3 of its plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(plaintext);
        BlobId(*h.finalize().as_bytes())
    }

    /// The chunker's secret 256-entry gear table, from the BLAKE3 XOF keyed by
    /// the gear subkey. Never the public table, never a 64-bit seed.
    pub fn gear_table(&self) -> Box<[u64; 256]> {
        let mut xof = blake3::Hasher::new_keyed(&self.gear_key).finalize_xof();
        let mut bytes = [0u8; 256 * 8];
        xof.fill(&mut bytes);
        let mut table = Box::new([0u64; 256]);
        for (i, v) in table.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *v = u64::from_le_bytes(w);
        }
        table
    }

    /// Seals `buf[NONCE_LEN..]` in place: `buf` must start with `NONCE_LEN`
    /// bytes of room for the nonce; the tag is appended.
    pub fn seal_in_place(
        &self,
        kind: Kind,
        id: &[u8; 32],
        buf: &mut Vec<u8>,
        rng: &mut (impl RngCore + CryptoRng),
    ) {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let ad = associated_data(kind, id);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &ad, &mut buf[NONCE_LEN..])
            // unwrap: XChaCha20 only fails beyond 256 GiB per message; blobs are capped far below
            .expect("plaintext within XChaCha20 limits");
        buf.extend_from_slice(&tag);
    }

    /// Seals a plaintext: returns `nonce || ciphertext || tag`.
    pub fn seal(
        &self,
        kind: Kind,
        id: &[u8; 32],
        plaintext: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        let mut buf = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        buf.resize(NONCE_LEN, 0);
        buf.extend_from_slice(plaintext);
        self.seal_in_place(kind, id, &mut buf, rng);
        buf
    }

    /// Opens `nonce || ciphertext || tag`, returning the plaintext.
    pub fn open(&self, kind: Kind, id: &[u8; 32], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.cipher, kind, id, sealed)
    }

    /// Like [`Keys::open`], into `out` (replacing what it held), so a caller
    /// opening many objects reuses one allocation. `out` is left empty when
    /// authentication fails.
    pub fn open_into(
        &self,
        kind: Kind,
        id: &[u8; 32],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        open_into_with(&self.cipher, kind, id, sealed, out)
    }

    /// Opens `nonce || ciphertext || tag` where it lies: the plaintext is
    /// decrypted over the ciphertext and its range returned, so a reader of
    /// large blobs copies nothing. On failure the bytes are left as they
    /// were (the tag is checked before anything is decrypted).
    pub fn open_in_place(
        &self,
        kind: Kind,
        id: &[u8; 32],
        sealed: &mut [u8],
    ) -> Result<std::ops::Range<usize>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let end = sealed.len() - TAG_LEN;
        let (head, tag) = sealed.split_at_mut(end);
        let (nonce, ct) = head.split_at_mut(NONCE_LEN);
        decrypt(&self.cipher, kind, id, nonce, ct, tag)?;
        Ok(NONCE_LEN..end)
    }
}

/// Checks the tag of `ct` and decrypts it in place (left as it was when the
/// tag does not match).
fn decrypt(
    cipher: &XChaCha20Poly1305,
    kind: Kind,
    id: &[u8; 32],
    nonce: &[u8],
    ct: &mut [u8],
    tag: &[u8],
) -> Result<(), CryptoError> {
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &associated_data(kind, id),
            ct,
            Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Auth)
}

/// Opens a sealed object under an explicit cipher (also used for key files).
pub(crate) fn open_with(
    cipher: &XChaCha20Poly1305,
    kind: Kind,
    id: &[u8; 32],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    open_into_with(cipher, kind, id, sealed, &mut out)?;
    Ok(out)
}

fn open_into_with(
    cipher: &XChaCha20Poly1305,
    kind: Kind,
    id: &[u8; 32],
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    out.clear();
    if sealed.len() < SEAL_OVERHEAD {
        return Err(CryptoError::TooShort(sealed.len()));
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    out.extend_from_slice(ct);
    if decrypt(cipher, kind, id, nonce, out, tag).is_err() {
        // Never leave unauthenticated plaintext behind.
        out.clear();
        return Err(CryptoError::Auth);
    }
    Ok(())
}

/// A cipher built from raw key bytes (a key-encryption key from Argon2).
pub(crate) fn cipher_from(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn keys() -> Keys {
        Keys::derive(&MasterKey::from_bytes([1u8; 32]))
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = keys();
        let id = [9u8; 32];
        let sealed = k.seal(Kind::Data, &id, b"hello", &mut OsRng);
        assert_eq!(k.open(Kind::Data, &id, &sealed).unwrap(), b"hello");
        // another kind, another id, a flipped bit: all refused
        assert_eq!(k.open(Kind::Tree, &id, &sealed), Err(CryptoError::Auth));
        assert_eq!(
            k.open(Kind::Data, &[8u8; 32], &sealed),
            Err(CryptoError::Auth)
        );
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert_eq!(k.open(Kind::Data, &id, &bad), Err(CryptoError::Auth));
        assert_eq!(
            k.open(Kind::Data, &id, &sealed[..10]),
            Err(CryptoError::TooShort(10))
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let k = keys();
        let a = k.seal(Kind::Data, &[0; 32], b"x", &mut OsRng);
        let b = k.seal(Kind::Data, &[0; 32], b"x", &mut OsRng);
        assert_ne!(a, b);
    }

    #[test]
    fn subkeys_differ_and_gear_is_keyed() {
        let a = keys();
        let b = Keys::derive(&MasterKey::from_bytes([2u8; 32]));
        assert_ne!(a.blob_id(b"x"), b.blob_id(b"x"));
        assert_ne!(a.gear_table(), b.gear_table());
        assert_ne!(a.id_key, a.gear_key);
        // no entry of the gear table is zero or repeated in practice
        let g = a.gear_table();
        let mut s: Vec<u64> = g.to_vec();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 256);
    }
}
