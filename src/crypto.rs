//! Keys and authenticated encryption. Owns the master key, the subkeys
//! derived from it and XChaCha20-Poly1305 sealing; it never touches files.
//!
//! XChaCha20-Poly1305 is built the standard way (draft-irtf-cfrg-xchacha):
//! HChaCha20 (from the `chacha20` crate) turns the key and the first 16
//! nonce bytes into the key of an IETF ChaCha20-Poly1305 (RFC 8439, from
//! `ring`, whose assembly seals and opens about twice as fast on this kind
//! of machine as the portable `chacha20poly1305` crate) under the nonce
//! `0^4 || nonce[16..24]`. The output is that of `chacha20poly1305`'s
//! `XChaCha20Poly1305` byte for byte; tests check it against that crate.
//!
//! Nonces are random 24-byte XChaCha20 nonces drawn from the caller's CSPRNG,
//! so random nonces are safe at any repository size. The associated data binds
//! the format version, the object kind and the object id, so a sealed object
//! cannot be swapped for another, replayed under another name, or read as
//! another kind.

use rand::{CryptoRng, RngCore};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::id::{BlobId, SnapshotGroup};

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
const CTX_CACHE_ROWS: &str = "coffer 2026-12 local cache row checksum key v1";
const CTX_GROUP: &str = "coffer 2026-12 snapshot group key v1";

/// Subkeys derived from the master key, one per purpose.
#[derive(Clone)]
pub struct Keys {
    id_key: [u8; 32],
    gear_key: [u8; 32],
    cache_row_key: [u8; 32],
    group_key: [u8; 32],
    cipher: Cipher,
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
        self.cache_row_key.zeroize();
        self.group_key.zeroize();
    }
}

impl Keys {
    /// Derives every subkey from the master key.
    pub fn derive(master: &MasterKey) -> Self {
        let mut enc = blake3::derive_key(CTX_ENC, &master.0);
        let cipher = Cipher::new(&enc);
        enc.zeroize();
        Keys {
            id_key: blake3::derive_key(CTX_ID, &master.0),
            gear_key: blake3::derive_key(CTX_GEAR, &master.0),
            cache_row_key: blake3::derive_key(CTX_CACHE_ROWS, &master.0),
            group_key: blake3::derive_key(CTX_GROUP, &master.0),
            cipher,
        }
    }

    /// The id of a blob: keyed BLAKE3 of its plaintext.
    pub fn blob_id(&self, plaintext: &[u8]) -> BlobId {
        let mut h = blake3::Hasher::new_keyed(&self.id_key);
        h.update(plaintext);
        BlobId(*h.finalize().as_bytes())
    }

    /// The key of the local cache's row checksums (see
    /// `cache_trust::RowKey`): never stored, so a row the client did not
    /// write, or one a flipped bit changed, does not check.
    pub fn cache_row_key(&self) -> [u8; 32] {
        self.cache_row_key
    }

    /// The retention group of a backup job: keyed BLAKE3 of its host and
    /// its source paths (sorted, duplicates dropped, so the order given on
    /// the command line does not matter), each length-prefixed. Keyed, so
    /// the store sees which snapshots share a job and nothing else.
    pub fn snapshot_group(&self, host: &str, paths: &[String]) -> SnapshotGroup {
        let mut sorted: Vec<&str> = paths.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut h = blake3::Hasher::new_keyed(&self.group_key);
        h.update(&(host.len() as u64).to_le_bytes());
        h.update(host.as_bytes());
        h.update(&(sorted.len() as u64).to_le_bytes());
        for p in sorted {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        SnapshotGroup(*h.finalize().as_bytes())
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
        let tag = self.cipher.encrypt(&nonce, &ad, &mut buf[NONCE_LEN..]);
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
    /// large blobs copies nothing. On failure the ciphertext is overwritten
    /// with zeros: no unauthenticated plaintext is ever left behind.
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

/// Checks the tag of `ct` and decrypts it in place (zeroed when the tag
/// does not match).
fn decrypt(
    cipher: &Cipher,
    kind: Kind,
    id: &[u8; 32],
    nonce: &[u8],
    ct: &mut [u8],
    tag: &[u8],
) -> Result<(), CryptoError> {
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Auth)?;
    cipher.decrypt(nonce, &associated_data(kind, id), ct, tag)
}

/// Opens a sealed object under an explicit cipher (also used for key files).
pub(crate) fn open_with(
    cipher: &Cipher,
    kind: Kind,
    id: &[u8; 32],
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    open_into_with(cipher, kind, id, sealed, &mut out)?;
    Ok(out)
}

fn open_into_with(
    cipher: &Cipher,
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

/// XChaCha20-Poly1305 under one key (see the module documentation).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Cipher {
    key: [u8; 32],
}

impl Cipher {
    /// A cipher under `key` (an encryption subkey, or a key-encryption key
    /// from Argon2).
    pub(crate) fn new(key: &[u8; 32]) -> Cipher {
        Cipher { key: *key }
    }

    /// The IETF ChaCha20-Poly1305 key and nonce that XChaCha20 uses for
    /// `nonce`.
    fn ietf(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        use chacha20::cipher::{consts::U10, generic_array::GenericArray};
        let mut sub = chacha20::hchacha::<U10>(
            GenericArray::from_slice(&self.key),
            GenericArray::from_slice(&nonce[..16]),
        );
        // unwrap: HChaCha20 gives 32 bytes, ChaCha20-Poly1305's key length
        let key = UnboundKey::new(&CHACHA20_POLY1305, &sub).expect("32-byte key");
        sub.as_mut_slice().zeroize();
        let mut ietf = [0u8; 12];
        ietf[4..].copy_from_slice(&nonce[16..]);
        (LessSafeKey::new(key), Nonce::assume_unique_for_key(ietf))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn encrypt(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let (key, n) = self.ietf(nonce);
        let tag: Tag = key
            .seal_in_place_separate_tag(n, Aad::from(ad), buf)
            // unwrap: ChaCha20 only fails beyond 256 GiB per message; objects are capped far below
            .expect("plaintext within ChaCha20 limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks `tag` and decrypts `ct` in place; `ct` is zeroed when the tag
    /// does not match.
    pub(crate) fn decrypt(
        &self,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        ct: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let tag = Tag::try_from(tag).map_err(|_| CryptoError::Auth)?;
        let (key, n) = self.ietf(nonce);
        key.open_in_place_separate_tag(n, Aad::from(ad), tag, ct, 0..)
            .map(|_| ())
            .map_err(|_| CryptoError::Auth)
    }
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

    proptest::proptest! {
        /// The ring-based construction is XChaCha20-Poly1305 byte for byte:
        /// what the chacha20poly1305 crate seals, it opens, and the reverse.
        #[test]
        fn same_bytes_as_the_chacha20poly1305_crate(
            key in proptest::array::uniform32(0u8..),
            nonce in proptest::collection::vec(0u8.., NONCE_LEN),
            ad in proptest::collection::vec(0u8.., 0..64),
            plain in proptest::collection::vec(0u8.., 0..3000),
        ) {
            use chacha20poly1305::aead::{AeadInPlace, KeyInit};
            let theirs = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
            let nonce: [u8; NONCE_LEN] = nonce.try_into().unwrap();
            let mut a = plain.clone();
            let tag_a = theirs
                .encrypt_in_place_detached((&nonce).into(), &ad, &mut a)
                .unwrap();
            let ours = Cipher::new(&key);
            let mut b = plain.clone();
            let tag_b = ours.encrypt(&nonce, &ad, &mut b);
            proptest::prop_assert_eq!(&a, &b);
            proptest::prop_assert_eq!(tag_a.as_slice(), &tag_b[..]);
            ours.decrypt(&nonce, &ad, &mut a, &tag_b).unwrap();
            proptest::prop_assert_eq!(&a, &plain);
            theirs
                .decrypt_in_place_detached((&nonce).into(), &ad, &mut b, (&tag_b).into())
                .unwrap();
            proptest::prop_assert_eq!(&b, &plain);
        }
    }

    #[test]
    fn xchacha_test_vector_of_the_draft() {
        // draft-irtf-cfrg-xchacha-03, appendix A.3.1.
        let key: [u8; 32] =
            hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .unwrap()
                .try_into()
                .unwrap();
        let nonce: [u8; NONCE_LEN] =
            hex::decode("404142434445464748494a4b4c4d4e4f5051525354555657")
                .unwrap()
                .try_into()
                .unwrap();
        let ad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let mut buf = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = Cipher::new(&key).encrypt(&nonce, &ad, &mut buf);
        assert_eq!(
            hex::encode(&buf),
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb\
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452\
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9\
             21f9664c97637da9768812f615c68b13b52e"
        );
        assert_eq!(hex::encode(tag), "c0875924c1c7987947deafd8780acf49");
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
