//! Object backends: where a store's bytes live, behind one narrow trait.
//!
//! This module owns the [`ObjectBackend`] contract and the vocabulary it
//! speaks (keys, versions, retention); it never interprets the bytes it
//! moves and knows nothing of packs, snapshots or namespaces. Two backends
//! implement it side by side: [`dir::DirBackend`] (a local directory, the
//! embedded default) and, with the `s3` feature, [`s3::S3Backend`] (an
//! S3-compatible bucket with Object Lock).
//!
//! The trait is synchronous. The S3 backend owns a small tokio runtime of its
//! own, so callers never see tokio; an async caller (the QUIC server) calls
//! it from `spawn_blocking`, never from a task.
//!
//! ## Model
//!
//! A *key* names an object. In a versioned store (S3 with Object Lock) every
//! write of a key makes a new *version*; [`ObjectBackend::delete`] only adds a
//! delete marker, which hides the key from listings and reads of the latest
//! version while every older version stays readable by its id until
//! [`ObjectBackend::delete_version`] purges it. A version may carry a
//! *retention* (retain-until date and mode) and a *legal hold*; while either
//! holds, the store itself refuses to purge that version or to shorten its
//! retention, whatever coffer asks. A directory has one version per key and
//! no delete markers ([`ObjectBackend::versioned`] is false); see
//! [`dir`] for what it records and enforces.
//!
//! `coffer serve` with `[storage] kind = "s3"` writes every namespace's
//! objects through it (see `crate::store::Bucket`).

pub mod dir;
#[cfg(feature = "s3")]
pub mod s3;

use std::fmt;
use std::ops::{ControlFlow, Range};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{ErrorKind, Result};

/// Longest key accepted, in bytes (S3 allows 1024 including the prefix).
pub const MAX_KEY_BYTES: usize = 512;

/// Most versions of one key that [`ObjectBackend::list_versions`] returns
/// before it refuses: a key has its first write, repairs and markers, never
/// thousands.
pub const MAX_VERSIONS_PER_KEY: usize = 10_000;

/// The name of an object, relative to the backend's root or prefix.
///
/// Checked on construction: 1 to [`MAX_KEY_BYTES`] bytes of `[A-Za-z0-9._-]`
/// in `/`-separated segments, none empty and none starting with `.` (so
/// `..` cannot climb out of a directory, and dot-names stay free for a
/// backend's own files).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Checks and wraps `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, ObjectError> {
        let key = key.into();
        check_name(&key, false)?;
        Ok(ObjectKey(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({})", self.0)
    }
}

/// Checks a key (`prefix == false`) or a listing prefix (`prefix == true`,
/// which may be empty and may end in `/` or inside a segment).
pub(crate) fn check_name(name: &str, prefix: bool) -> Result<(), ObjectError> {
    let bad = |why: &str| ObjectError::BadKey {
        key: name.chars().take(80).collect(),
        why: why.to_string(),
    };
    if name.len() > MAX_KEY_BYTES {
        return Err(bad("too long"));
    }
    if name.is_empty() {
        return if prefix { Ok(()) } else { Err(bad("empty")) };
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(bad(&format!("character {c:?} not allowed")));
    }
    let mut segments: Vec<&str> = name.split('/').collect();
    if prefix && name.ends_with('/') {
        segments.pop();
    }
    for s in segments {
        if s.is_empty() {
            return Err(bad("empty path segment"));
        }
        if s.starts_with('.') {
            return Err(bad("a segment starts with '.'"));
        }
    }
    Ok(())
}

/// One version of an object, as the backend names it. Opaque: compare it,
/// store it, hand it back; never parse it. A directory's only version is
/// `null`, as S3 names the version of an unversioned bucket.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct VersionId(pub String);

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Object Lock mode of a retention.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Nobody, not even the bucket's root account, can purge the version or
    /// shorten its retention before it lapses. What coffer asks for.
    Compliance,
    /// Like compliance, except that a principal holding
    /// `s3:BypassGovernanceRetention` can purge or shorten by sending the
    /// bypass header. Weaker: coffer never sends it, but anyone holding such
    /// credentials can.
    Governance,
}

/// A retain-until date and its mode. Stores keep whole seconds; a date
/// with a fraction is rounded up ([`Retention::new`]) so that rounding never
/// shortens a lock.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Retention {
    /// How strictly the store holds the date.
    pub mode: LockMode,
    /// The version may not be purged before this instant.
    pub until: SystemTime,
}

impl Retention {
    /// A retention until `until`, rounded up to the next whole second.
    pub fn new(mode: LockMode, until: SystemTime) -> Self {
        Retention {
            mode,
            until: round_up_to_second(until),
        }
    }

    /// Whether it still forbids a purge at `now`.
    pub fn holds_at(&self, now: SystemTime) -> bool {
        self.until > now
    }
}

/// Rounds `t` up to a whole second since the epoch (times before the epoch
/// become the epoch: no store takes them).
pub fn round_up_to_second(t: SystemTime) -> SystemTime {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// What [`ObjectBackend::put_once`] did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PutOutcome {
    /// The object was absent (or its latest version was a delete marker)
    /// and is now stored as this version.
    Created(VersionId),
    /// A live object of that key exists already; nothing was written. The
    /// first writer wins, as `PackUpload::commit` returning `false` today.
    Exists,
}

/// What [`ObjectBackend::head`] tells of one version.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ObjectHead {
    /// Size in bytes.
    pub size: u64,
    /// The version described.
    pub version: VersionId,
    /// Its retention, if it has one (a lapsed one may still be reported).
    pub retention: Option<Retention>,
    /// Whether a legal hold is on.
    pub legal_hold: bool,
}

/// One key found by [`ObjectBackend::list`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ListEntry {
    /// The key, without the backend's prefix.
    pub key: ObjectKey,
    /// Size of its latest version in bytes.
    pub size: u64,
}

/// One version of a key, from [`ObjectBackend::list_versions`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ObjectVersion {
    /// Its id, for [`ObjectBackend::get_range`] and
    /// [`ObjectBackend::delete_version`].
    pub version: VersionId,
    /// Whether it is the key's latest version.
    pub is_latest: bool,
    /// A delete marker (no bytes) rather than data.
    pub is_delete_marker: bool,
    /// Size in bytes (0 for a marker).
    pub size: u64,
}

/// The storage engine under a store: write-once objects, range reads,
/// listings, retention, legal holds and versioned deletes.
///
/// Every method is synchronous and may be called from several threads at
/// once. Every method that names a key works on exactly that key (no
/// prefix matching) and reports a refusal of the store as an error of kind
/// [`ErrorKind::Denied`], an absent object as [`ErrorKind::NotFound`], and a
/// failure to reach the store as [`ErrorKind::Io`].
pub trait ObjectBackend: Send + Sync {
    /// Whether deletes leave markers and keep versions (S3 with versioning)
    /// or remove the bytes at once (a directory). Callers that need the
    /// two-phase collection of a bucket read it here.
    fn versioned(&self) -> bool;

    /// Stores `bytes` under `key` only if no live object has that key.
    ///
    /// Never overwrites: if the key exists (its latest version is not a
    /// delete marker), nothing is written and the answer is
    /// [`PutOutcome::Exists`], also for a racer that loses by a moment. The
    /// bytes travel with an integrity checksum that the store verifies
    /// before it accepts them; a write that fails leaves no visible object.
    /// With `retention`, the new version is locked until then from its first
    /// moment (one request: there is no window in which it is unlocked).
    fn put_once(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        retention: Option<Retention>,
    ) -> Result<PutOutcome>;

    /// [`put_once`](Self::put_once) of the whole file at `path`, read as it
    /// is sent rather than held in memory (a pack may reach a gigabyte).
    /// The file must not change while it is sent; its checksum travels
    /// with it as with `put_once`. The default reads the file whole.
    fn put_file_once(
        &self,
        key: &ObjectKey,
        path: &std::path::Path,
        retention: Option<Retention>,
    ) -> Result<PutOutcome> {
        let bytes = std::fs::read(path).map_err(|e| crate::error::Error::io(path, e))?;
        self.put_once(key, &bytes, retention)
    }

    /// Writes `bytes` as the new latest version of `key`, whether or not a
    /// live one exists: for the few records that change after they are
    /// first written (a snapshot's stamp when its lock is extended, a
    /// namespace's settings). Never for packs or snapshot files, which are
    /// [`put_once`](Self::put_once).
    ///
    /// In a versioned store every earlier version stays, each under its own
    /// retention, so a lock recorded in an older version cannot be undone
    /// by writing a newer one. A directory keeps one version: it replaces
    /// the bytes, and refuses ([`ErrorKind::Denied`]) while the current
    /// ones are retained or held, as a purge would be refused.
    fn put_version(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        retention: Option<Retention>,
    ) -> Result<VersionId>;

    /// Reads the bytes `range` of `key` (its latest version, or `version`).
    ///
    /// Returns exactly `range.end - range.start` bytes, or an error: a range
    /// past the end is [`ErrorKind::Corrupt`] (the caller knew the size, so
    /// a shorter object is damage), an absent key or a key whose latest
    /// version is a delete marker is [`ErrorKind::NotFound`]. The bytes are
    /// not verified here; a caller checks them against its own hashes.
    fn get_range(
        &self,
        key: &ObjectKey,
        version: Option<&VersionId>,
        range: Range<u64>,
    ) -> Result<Vec<u8>>;

    /// Describes `key` (its latest version, or `version`): size, version id,
    /// retention and legal hold. `None` if the key is absent or its latest
    /// version is a delete marker.
    fn head(&self, key: &ObjectKey, version: Option<&VersionId>) -> Result<Option<ObjectHead>>;

    /// Calls `visit` once for each live key that starts with `prefix`, in no
    /// promised order, until `visit` breaks or the keys run out.
    ///
    /// Streams: the backend holds one page of keys (or one directory's
    /// entries) at a time, never the whole listing. Keys written or deleted
    /// during the listing may or may not be seen. `prefix` is checked as a
    /// key is, but may be empty and may end inside a segment.
    fn list(
        &self,
        prefix: &str,
        visit: &mut dyn FnMut(ListEntry) -> Result<ControlFlow<()>>,
    ) -> Result<()>;

    /// Makes the retention of `key` (its latest version, or `version`) last
    /// at least until `retention.until`; never shortens it.
    ///
    /// Returns the retention in force afterwards: the existing one if it
    /// already lasts as long, else the extended one. A version with a
    /// retention keeps its mode (changing it needs a bypass coffer never
    /// holds); one without gets `retention.mode`.
    fn extend_retention(
        &self,
        key: &ObjectKey,
        version: Option<&VersionId>,
        retention: Retention,
    ) -> Result<Retention>;

    /// Puts a legal hold on (`on == true`) or takes it off `key` (its latest
    /// version, or `version`). While on, the version cannot be purged,
    /// whatever its retention. Idempotent.
    fn set_legal_hold(&self, key: &ObjectKey, version: Option<&VersionId>, on: bool) -> Result<()>;

    /// Deletes `key` as a versioned store does: a delete marker becomes its
    /// latest version, so it leaves every listing and read of the latest
    /// version at once, while each of its versions stays readable by id
    /// until purged. Returns the marker's version id.
    ///
    /// In a store that is not [`versioned`](Self::versioned) there is no
    /// marker: the bytes go at once, the delete is refused as
    /// [`delete_version`](Self::delete_version) would be (retention, hold),
    /// and the answer is `None`. Deleting an absent key is not an error.
    fn delete(&self, key: &ObjectKey) -> Result<Option<VersionId>>;

    /// Lists every version of exactly `key` (data and delete markers),
    /// newest first. Refuses (as [`ErrorKind::Denied`]) past
    /// [`MAX_VERSIONS_PER_KEY`].
    fn list_versions(&self, key: &ObjectKey) -> Result<Vec<ObjectVersion>>;

    /// Purges one version of `key` for good (data or delete marker).
    ///
    /// The store refuses while the version's retention holds or a legal hold
    /// is on ([`ErrorKind::Denied`]); coffer never sends a governance bypass.
    /// Purging an absent version is not an error.
    fn delete_version(&self, key: &ObjectKey, version: &VersionId) -> Result<()>;

    /// The store's clock: the `Date` of a fresh answer from it (our own
    /// clock for a directory). A caller compares it with its own before it
    /// deletes anything that a retention date protects. Whole seconds.
    fn clock(&self) -> Result<SystemTime>;
}

/// Why an object backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// A key or prefix that no backend accepts.
    #[error("object key {key:?} refused: {why}")]
    BadKey {
        /// The key (its first 80 characters).
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The object (or version, or bucket) does not exist.
    #[error("{op} {key}: not found")]
    NotFound {
        /// The operation.
        op: &'static str,
        /// The key or bucket.
        key: String,
    },
    /// The store refused: a retention or legal hold protects the version,
    /// or the credentials lack the permission.
    #[error("{op} {key}: refused by the object store: {reason}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// The store's code and message, or ours.
        reason: String,
    },
    /// The bytes read are not what the caller was promised.
    #[error("{op} {key}: {reason}")]
    Damaged {
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// What differs.
        reason: String,
    },
    /// The store could not be reached, or answered with a server error.
    #[error("{op} {key}: {reason}")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// The key or bucket.
        key: String,
        /// The transport's or the store's message.
        reason: String,
    },
    /// A startup check failed; the message names the problem and the
    /// remedy.
    #[error("object store not usable: {0}")]
    Setup(String),
}

impl ObjectError {
    /// Classifies the error for [`crate::Error::kind`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            ObjectError::BadKey { .. } | ObjectError::Refused { .. } | ObjectError::Setup(_) => {
                ErrorKind::Denied
            }
            ObjectError::NotFound { .. } => ErrorKind::NotFound,
            ObjectError::Damaged { .. } => ErrorKind::Corrupt,
            ObjectError::Unavailable { .. } => ErrorKind::Io,
        }
    }
}

/// Checks a listing prefix.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), ObjectError> {
    check_name(prefix, true)
}

/// Checks that a read returned the whole range it asked for.
pub(crate) fn check_range_len(
    key: &ObjectKey,
    range: &Range<u64>,
    got: usize,
) -> Result<(), ObjectError> {
    let want = range.end.saturating_sub(range.start);
    if got as u64 != want {
        return Err(ObjectError::Damaged {
            op: "get",
            key: key.to_string(),
            reason: format!(
                "asked for bytes {}..{} ({want} bytes), got {got}",
                range.start, range.end
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for ok in ["a", "packs/ab/abcdef", "x-1_2.3", "snapshots/2026/s.json"] {
            assert!(ObjectKey::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/abs",
            "trail/",
            "a//b",
            "../up",
            "a/../b",
            ".hidden",
            "a/.tmp/b",
            "sp ace",
            "nul\0",
            "é",
            "back\\slash",
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
        assert!(ObjectKey::new("a".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(ObjectKey::new("a".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn prefixes_may_be_empty_or_end_anywhere() {
        for ok in ["", "packs/", "packs/a", "packs/ab/"] {
            assert!(check_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["/", "packs//", ".x/", "a/../", "a//"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retention_rounds_up_never_down() {
        let base = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(round_up_to_second(base), base);
        assert_eq!(
            round_up_to_second(base + Duration::from_nanos(1)),
            base + Duration::from_secs(1)
        );
        let r = Retention::new(LockMode::Compliance, base + Duration::from_millis(999));
        assert_eq!(r.until, base + Duration::from_secs(1));
        assert!(r.holds_at(base));
        assert!(!r.holds_at(base + Duration::from_secs(1)));
    }

    #[test]
    fn short_reads_are_damage() {
        let k = ObjectKey::new("k").unwrap();
        assert!(check_range_len(&k, &(0..10), 10).is_ok());
        let e = check_range_len(&k, &(5..10), 3).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.to_string().contains("5..10"), "{e}");
    }
}
