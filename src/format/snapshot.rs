//! Snapshot files: a plain, sorted list of the packs a snapshot references,
//! then its encrypted record. Owns that layout. The store reads the plain part
//! without a key (retention, GC, damage reports); the record's associated data
//! binds it to the plain part, so the list cannot be altered unnoticed.
//!
//! ```text
//! MAGIC_SNAPSHOT (8) || pack_count (u32 LE) || pack_id (32) × pack_count || sealed_record
//! ```

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use super::{cbor_decode, cbor_encode, FormatError, Reader};
use crate::crypto::{Keys, Kind};
use crate::id::{BlobId, PackId, SnapshotId};
use crate::limits::{MAX_SNAPSHOT_BYTES, MAX_SNAPSHOT_PACKS};

/// `blake3("coffer snapshot v1")[..8]`. Never change.
pub const MAGIC_SNAPSHOT: [u8; 8] = [0xa0, 0x27, 0xb7, 0xbd, 0x25, 0xe3, 0x44, 0xeb];
/// Version of the record.
pub const RECORD_VERSION: u32 = 1;

/// What a snapshot was taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Files and directories.
    Tree,
    /// A stream read from standard input or a command.
    Stdin,
    /// A disk image or block device.
    Image,
    /// Several sources of different kinds (a client config).
    Mixed,
    /// A kind this version does not know (written by a newer one): the
    /// snapshot is still listed and restored.
    #[serde(other)]
    Other,
}

/// Figures about one backup run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    /// Regular files seen.
    pub files: u64,
    /// Directories seen.
    pub dirs: u64,
    /// Other entries seen.
    pub others: u64,
    /// Bytes of file content seen.
    pub bytes: u64,
    /// Files whose content came from the files cache unread.
    pub files_unchanged: u64,
    /// Blobs written anew.
    pub new_blobs: u64,
    /// Plaintext bytes of the new blobs.
    pub new_bytes: u64,
    /// Bytes of new packs written.
    pub new_pack_bytes: u64,
    /// Packs written.
    pub new_packs: u64,
}

/// The encrypted part of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Record version ([`RECORD_VERSION`]).
    pub version: u32,
    /// When the backup started, by the client's clock: ns since the epoch.
    pub time_ns: i64,
    /// Host name of the client.
    pub host: String,
    /// User that ran the backup.
    pub user: String,
    /// What was backed up.
    pub source: SourceKind,
    /// The paths (or stream name) given.
    pub paths: Vec<String>,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// The root directory tree.
    pub tree: BlobId,
    /// Figures about the run.
    pub stats: SnapshotStats,
    /// For a backup of one disk image: how it was read (absent in records
    /// of other sources and of older clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRecord>,
}

/// How a disk image was read, so that a later backup of the same disk can
/// read only what a dirty bitmap says changed since this one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image's file name in the snapshot's root.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The dirty bitmap that starts at this snapshot (`--start-bitmap`):
    /// the hook created or cleared it at the instant of the disk snapshot
    /// this backup read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap_start: Option<String>,
    /// The token the hook gave the bitmap's start (`--start-token`): a
    /// later run names the token its bitmap started with, and a parent
    /// with another token (the bitmap was restarted by a run that saved
    /// nothing) is not trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap_token: Option<String>,
    /// The dirty bitmap whose clean extents were taken from `parent`
    /// rather than read (`--changed-bitmap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitmap_changed: Option<String>,
    /// The snapshot the clean extents came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::id::SnapshotId>,
}

/// A decoded snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile<'a> {
    /// The packs referenced, sorted and unique.
    pub packs: Vec<PackId>,
    /// The sealed record.
    pub sealed: &'a [u8],
    /// BLAKE3 of the plain part, the id the record is sealed under.
    pub plain_hash: [u8; 32],
}

/// Decodes the plain part of a snapshot file (no key needed).
pub fn decode(bytes: &[u8]) -> Result<SnapshotFile<'_>, FormatError> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(FormatError::TooLarge {
            what: "snapshot",
            len: bytes.len() as u64,
            max: MAX_SNAPSHOT_BYTES as u64,
        });
    }
    let mut r = Reader::new(bytes, "snapshot");
    if r.array::<8>()? != MAGIC_SNAPSHOT {
        return Err(FormatError::BadMagic { what: "snapshot" });
    }
    let count = r.u32()? as usize;
    if count > MAX_SNAPSHOT_PACKS || count * 32 > r.remaining() {
        return Err(FormatError::invalid(
            "snapshot",
            format!("{count} packs do not fit"),
        ));
    }
    let mut packs = Vec::with_capacity(count);
    for _ in 0..count {
        let p = PackId(r.array()?);
        if packs.last().is_some_and(|l| *l >= p) {
            return Err(FormatError::invalid(
                "snapshot",
                "pack list not sorted or not unique",
            ));
        }
        packs.push(p);
    }
    let plain_len = bytes.len() - r.remaining();
    let plain_hash = *blake3::hash(&bytes[..plain_len]).as_bytes();
    Ok(SnapshotFile {
        packs,
        sealed: r.rest(),
        plain_hash,
    })
}

/// Opens the record of a decoded snapshot file.
pub fn open_record(keys: &Keys, file: &SnapshotFile<'_>) -> Result<SnapshotRecord, FormatError> {
    let plain = keys.open(Kind::Snapshot, &file.plain_hash, file.sealed)?;
    let rec: SnapshotRecord = cbor_decode("snapshot record", &plain)?;
    if rec.version != RECORD_VERSION {
        return Err(FormatError::Version {
            what: "snapshot record",
            found: rec.version,
            supported: RECORD_VERSION,
        });
    }
    Ok(rec)
}

/// Encodes a snapshot file; returns its id and bytes. `packs` is sorted and
/// deduplicated here.
pub fn encode(
    keys: &Keys,
    mut packs: Vec<PackId>,
    record: &SnapshotRecord,
    rng: &mut (impl RngCore + CryptoRng),
) -> (SnapshotId, Vec<u8>) {
    packs.sort();
    packs.dedup();
    let mut out = Vec::with_capacity(12 + packs.len() * 32 + 512);
    out.extend_from_slice(&MAGIC_SNAPSHOT);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in &packs {
        out.extend_from_slice(p.as_bytes());
    }
    let plain_hash = *blake3::hash(&out).as_bytes();
    let plain = cbor_encode(record);
    let sealed = keys.seal(Kind::Snapshot, &plain_hash, &plain, rng);
    // Open what was sealed before it is written, like every blob. A failure
    // is a cipher bug: stop rather than write an unreadable snapshot.
    assert_eq!(
        keys.open(Kind::Snapshot, &plain_hash, &sealed).as_deref(),
        Ok(&plain[..]),
        "snapshot record did not verify after sealing"
    );
    out.extend_from_slice(&sealed);
    (SnapshotId::of(&out), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_source_kinds_still_decode() {
        let bytes = crate::format::cbor_encode(&"from-the-future");
        let k: SourceKind = crate::format::cbor_decode("kind", &bytes).unwrap();
        assert_eq!(k, SourceKind::Other);
        let bytes = crate::format::cbor_encode(&SourceKind::Mixed);
        let k: SourceKind = crate::format::cbor_decode("kind", &bytes).unwrap();
        assert_eq!(k, SourceKind::Mixed);
    }
    use crate::crypto::MasterKey;
    use proptest::prelude::*;
    use rand::rngs::OsRng;

    fn record() -> SnapshotRecord {
        SnapshotRecord {
            version: RECORD_VERSION,
            time_ns: 1_700_000_000_000_000_000,
            host: "h".into(),
            user: "u".into(),
            source: SourceKind::Tree,
            paths: vec!["/etc".into()],
            tags: vec![],
            tree: BlobId([2; 32]),
            stats: SnapshotStats::default(),
            image: None,
        }
    }

    #[test]
    fn magic_matches_its_label() {
        assert_eq!(MAGIC_SNAPSHOT, crate::format::magic("coffer snapshot v1"));
    }

    #[test]
    fn pack_list_is_bound_to_the_record() {
        let k = Keys::derive(&MasterKey::from_bytes([1; 32]));
        let (_, mut bytes) = encode(
            &k,
            vec![PackId([1; 32]), PackId([2; 32])],
            &record(),
            &mut OsRng,
        );
        // drop a pack from the plain list: the record no longer opens
        bytes[12 + 32] = 0x03;
        let f = decode(&bytes).unwrap();
        assert!(open_record(&k, &f).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(packs in proptest::collection::vec(any::<[u8; 32]>(), 0..20)) {
            let k = Keys::derive(&MasterKey::from_bytes([1; 32]));
            let packs: Vec<PackId> = packs.into_iter().map(PackId).collect();
            let (id, bytes) = encode(&k, packs.clone(), &record(), &mut OsRng);
            prop_assert_eq!(id, SnapshotId::of(&bytes));
            let f = decode(&bytes).unwrap();
            let mut want = packs;
            want.sort();
            want.dedup();
            prop_assert_eq!(&f.packs, &want);
            prop_assert_eq!(open_record(&k, &f).unwrap(), record());
        }
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&b);
        }
    }
}
