//! The [`ObjectBackend`] on a local directory: the embedded default.
//!
//! This module owns the mapping of keys to files under one root directory
//! and the records of retention and legal hold beside them; it writes every
//! object through the store's one durable write-once helper
//! ([`crate::durable::write_once`]) and never interprets the bytes.
//!
//! ## Layout
//!
//! ```text
//! ROOT/<key>                 the object (key segments are directories), as today's store lays out packs
//! ROOT/.object-lock/<key>    its retention and legal hold, JSON, only if one was ever set
//! ROOT/.object-tmp/          temporary files of writes in progress
//! ```
//!
//! Keys never start a segment with `.`, so the two dot-directories cannot
//! collide with an object.
//!
//! ## What a directory does not do
//!
//! A directory is not [versioned](ObjectBackend::versioned): a key has one
//! version, named `null` as S3 names the version of an unversioned bucket,
//! and [`ObjectBackend::delete`] removes the bytes at once (no delete
//! marker), so it is refused while a retention or hold protects them.
//!
//! Retention and legal hold are recorded and enforced *by this process*:
//! coffer's own code cannot purge a locked object or shorten its lock
//! through this backend, which guards against coffer's mistakes and lets the
//! store above be written once for both backends. It is no wall against
//! anyone who holds the server's Unix account, who can remove files and
//! records alike; that wall is what a bucket with Object Lock adds. The
//! record is written after the object, so a crash between the two leaves an
//! object without its record (the store's own lock window still protects
//! it); and a retention costs one more durable write per object.

use std::fs::{self, File};
use std::io;
use std::ops::{ControlFlow, Range};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    check_prefix, check_range_len, ListEntry, LockMode, ObjectBackend, ObjectError, ObjectHead,
    ObjectKey, ObjectVersion, PutOutcome, Retention, VersionId,
};
use crate::durable::{fsync_dir, replace_file, write_once};
use crate::error::{Error, IoContext, Result};

/// Directory of the retention and hold records.
const LOCK_DIR: &str = ".object-lock";
/// Directory of temporary files.
const TMP_DIR: &str = ".object-tmp";
/// The one version id of a directory's objects.
const NULL_VERSION: &str = "null";

/// An object backend on a local directory.
pub struct DirBackend {
    root: PathBuf,
    tmp: PathBuf,
    /// Serialises read-modify-write of the lock records within this
    /// process (one process serves a store: the store's lock sees to that).
    records: Mutex<()>,
}

/// The record of `ROOT/.object-lock/<key>`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRecord {
    /// Retention mode, if a retention was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<LockMode>,
    /// Retain-until, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
    /// Legal hold.
    #[serde(default)]
    legal_hold: bool,
}

impl LockRecord {
    fn retention(&self) -> Option<Retention> {
        Some(Retention {
            mode: self.mode?,
            until: UNIX_EPOCH + Duration::from_secs(self.until?),
        })
    }

    fn set_retention(&mut self, r: Retention) {
        self.mode = Some(r.mode);
        self.until = Some(secs(r.until));
    }

    /// Why a purge must be refused at `now`, if it must.
    fn forbids_purge(&self, now: SystemTime) -> Option<String> {
        if self.legal_hold {
            return Some("a legal hold is on".into());
        }
        match self.retention() {
            Some(r) if r.holds_at(now) => Some(format!(
                "retained until {} ({:?} mode)",
                humantime::format_rfc3339_seconds(r.until),
                r.mode
            )),
            _ => None,
        }
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn null_version() -> VersionId {
    VersionId(NULL_VERSION.into())
}

impl DirBackend {
    /// Opens (and creates if needed) a backend rooted at `root`.
    pub fn open(root: &Path) -> Result<Self> {
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).at(&tmp)?;
        Ok(DirBackend {
            root: root.to_path_buf(),
            tmp,
            records: Mutex::new(()),
        })
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn record_path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(LOCK_DIR).join(key.as_str())
    }

    /// The size of the object, or `None` if there is none. A version other
    /// than `null` does not exist in a directory.
    fn size(&self, key: &ObjectKey, version: Option<&VersionId>) -> Result<Option<u64>> {
        if version.is_some_and(|v| v.0 != NULL_VERSION) {
            return Ok(None);
        }
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn existing_size(
        &self,
        op: &'static str,
        key: &ObjectKey,
        version: Option<&VersionId>,
    ) -> Result<u64> {
        self.size(key, version)?.ok_or_else(|| {
            ObjectError::NotFound {
                op,
                key: key.to_string(),
            }
            .into()
        })
    }

    fn load_record(&self, key: &ObjectKey) -> Result<LockRecord> {
        let path = self.record_path(key);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ObjectError::Damaged {
                    op: "read lock record",
                    key: key.to_string(),
                    reason: format!("{}: {e}", path.display()),
                }
                .into()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(LockRecord::default()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn save_record(&self, key: &ObjectKey, record: &LockRecord) -> Result<()> {
        let path = self.record_path(key);
        // unwrap: a record path is ROOT/.object-lock/<key>, never a root
        let dir = path.parent().expect("record has a parent");
        if !dir.exists() {
            fs::create_dir_all(dir).at(dir)?;
            // unwrap: as above, the parent is at least ROOT
            fsync_dir(dir.parent().expect("parent"))?;
        }
        // unwrap: serialising a plain struct cannot fail
        let bytes = serde_json::to_vec(record).expect("lock record serialises");
        replace_file(&self.tmp, &path, &bytes)
    }

    /// Removes `key` and its record unless the record forbids it.
    fn purge(&self, op: &'static str, key: &ObjectKey) -> Result<()> {
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if self.size(key, None)?.is_none() {
            return Ok(());
        }
        // Enforced here, not by the file system: see the module doc.
        if let Some(why) = self.load_record(key)?.forbids_purge(SystemTime::now()) {
            return Err(ObjectError::Refused {
                op,
                key: key.to_string(),
                reason: why,
            }
            .into());
        }
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(path, e)),
        }
        // unwrap: an object path has a parent inside ROOT
        fsync_dir(path.parent().expect("object has a parent"))?;
        let record = self.record_path(key);
        match fs::remove_file(&record) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(record, e)),
        }
    }
}

impl ObjectBackend for DirBackend {
    fn versioned(&self) -> bool {
        false
    }

    fn put_once(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        retention: Option<Retention>,
    ) -> Result<PutOutcome> {
        // The directory has no transit to protect with a checksum: the
        // helper fsyncs the file before it links it into place.
        match write_once(&self.tmp, &self.path(key), bytes) {
            Ok(()) => {}
            // first writer wins; the loser's bytes were never visible
            Err(Error::Conflict(_)) => return Ok(PutOutcome::Exists),
            Err(e) => return Err(e),
        }
        if let Some(r) = retention {
            let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let mut record = LockRecord::default();
            record.set_retention(Retention::new(r.mode, r.until));
            self.save_record(key, &record)?;
        }
        Ok(PutOutcome::Created(null_version()))
    }

    fn put_version(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        retention: Option<Retention>,
    ) -> Result<VersionId> {
        // One version only: replacing it is a purge of the old one, refused
        // while that one is protected.
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.load_record(key)?;
        if self.size(key, None)?.is_some() {
            if let Some(why) = record.forbids_purge(SystemTime::now()) {
                return Err(ObjectError::Refused {
                    op: "put",
                    key: key.to_string(),
                    reason: why,
                }
                .into());
            }
        }
        let path = self.path(key);
        // unwrap: an object path is ROOT/<key>, never a root
        let dir = path.parent().expect("object has a parent");
        if !dir.exists() {
            fs::create_dir_all(dir).at(dir)?;
            fsync_dir(dir.parent().expect("parent"))?;
        }
        replace_file(&self.tmp, &path, bytes)?;
        if let Some(r) = retention {
            record.set_retention(Retention::new(r.mode, r.until));
            self.save_record(key, &record)?;
        } else if record != LockRecord::default() {
            self.save_record(key, &LockRecord::default())?;
        }
        Ok(null_version())
    }

    fn get_range(
        &self,
        key: &ObjectKey,
        version: Option<&VersionId>,
        range: Range<u64>,
    ) -> Result<Vec<u8>> {
        let size = self.existing_size("get", key, version)?;
        // the caller knew the size: a range past the end is damage, and is
        // refused before anything is allocated
        if range.start > range.end || range.end > size {
            return Err(ObjectError::Damaged {
                op: "get",
                key: key.to_string(),
                reason: format!("range {}..{} past its {size} bytes", range.start, range.end),
            }
            .into());
        }
        let path = self.path(key);
        let file = File::open(&path).at(&path)?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], range.start + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        check_range_len(key, &range, filled)?;
        Ok(buf)
    }

    fn head(&self, key: &ObjectKey, version: Option<&VersionId>) -> Result<Option<ObjectHead>> {
        let Some(size) = self.size(key, version)? else {
            return Ok(None);
        };
        let record = self.load_record(key)?;
        Ok(Some(ObjectHead {
            size,
            version: null_version(),
            retention: record.retention(),
            legal_hold: record.legal_hold,
        }))
    }

    fn list(
        &self,
        prefix: &str,
        visit: &mut dyn FnMut(ListEntry) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        check_prefix(prefix)?;
        // "packs/ab" lists directory ROOT/packs, names starting with "ab",
        // and everything below those; "packs/" lists all of ROOT/packs.
        let (dir_part, first) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let base = if dir_part.is_empty() {
            String::new()
        } else {
            format!("{dir_part}/")
        };
        let rd = match fs::read_dir(&start) {
            Ok(rd) => rd,
            // nothing under a prefix that names no directory (or a file)
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(Error::io(start, e)),
        };
        // One open directory per level of the key: memory is bounded by the
        // depth of the keys, not by how many there are.
        let mut stack: Vec<(fs::ReadDir, String, bool)> = vec![(rd, base, true)];
        while let Some((rd, rel, top)) = stack.last_mut() {
            let Some(entry) = rd.next() else {
                stack.pop();
                continue;
            };
            let entry = entry.at(self.root.join(rel.as_str()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // dot-names are this backend's own (records, temporary files)
            if name.starts_with('.') || (*top && !name.starts_with(first)) {
                continue;
            }
            let key = format!("{rel}{name}");
            let ft = entry.file_type().at(entry.path())?;
            if ft.is_dir() {
                let sub = fs::read_dir(entry.path()).at(entry.path())?;
                stack.push((sub, format!("{key}/"), false));
            } else if ft.is_file() {
                // a file whose name is not a key (litter) is not an object
                let Ok(key) = ObjectKey::new(key) else {
                    continue;
                };
                let size = entry.metadata().at(entry.path())?.len();
                if visit(ListEntry { key, size })?.is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn extend_retention(
        &self,
        key: &ObjectKey,
        version: Option<&VersionId>,
        retention: Retention,
    ) -> Result<Retention> {
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.existing_size("extend retention", key, version)?;
        let mut record = self.load_record(key)?;
        let wanted = Retention::new(retention.mode, retention.until);
        match record.retention() {
            // never shortens: an equal or later date stays as it is
            Some(have) if have.until >= wanted.until => return Ok(have),
            // the mode is kept, as a bucket keeps it without a bypass
            Some(have) => record.set_retention(Retention::new(have.mode, wanted.until)),
            None => record.set_retention(wanted),
        }
        self.save_record(key, &record)?;
        // unwrap: set just above
        Ok(record.retention().expect("retention set"))
    }

    fn set_legal_hold(&self, key: &ObjectKey, version: Option<&VersionId>, on: bool) -> Result<()> {
        let _guard = self.records.lock().unwrap_or_else(|e| e.into_inner());
        self.existing_size("legal hold", key, version)?;
        let mut record = self.load_record(key)?;
        if record.legal_hold != on {
            record.legal_hold = on;
            self.save_record(key, &record)?;
        }
        Ok(())
    }

    fn delete(&self, key: &ObjectKey) -> Result<Option<VersionId>> {
        self.purge("delete", key)?;
        Ok(None)
    }

    fn list_versions(&self, key: &ObjectKey) -> Result<Vec<ObjectVersion>> {
        Ok(self
            .size(key, None)?
            .map(|size| ObjectVersion {
                version: null_version(),
                is_latest: true,
                is_delete_marker: false,
                size,
            })
            .into_iter()
            .collect())
    }

    fn delete_version(&self, key: &ObjectKey, version: &VersionId) -> Result<()> {
        if version.0 != NULL_VERSION {
            return Ok(());
        }
        self.purge("delete version", key)
    }

    fn clock(&self) -> Result<SystemTime> {
        Ok(UNIX_EPOCH + Duration::from_secs(secs(SystemTime::now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn key(s: &str) -> ObjectKey {
        ObjectKey::new(s).unwrap()
    }

    fn backend() -> (tempfile::TempDir, DirBackend) {
        let dir = tempfile::tempdir().unwrap();
        let b = DirBackend::open(dir.path()).unwrap();
        (dir, b)
    }

    #[test]
    fn put_once_keeps_the_first_bytes() {
        let (_d, b) = backend();
        let k = key("packs/ab/abc");
        assert!(matches!(
            b.put_once(&k, b"first", None).unwrap(),
            PutOutcome::Created(_)
        ));
        assert_eq!(b.put_once(&k, b"second", None).unwrap(), PutOutcome::Exists);
        assert_eq!(b.get_range(&k, None, 0..5).unwrap(), b"first");
        assert_eq!(b.get_range(&k, None, 1..3).unwrap(), b"ir");
        let e = b.get_range(&k, None, 2..9).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        let e = b.get_range(&key("packs/none"), None, 0..1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn retention_and_hold_refuse_a_purge_and_never_shorten() {
        let (_d, b) = backend();
        let k = key("snap/one");
        let now = SystemTime::now();
        let until = now + Duration::from_secs(3600);
        b.put_once(&k, b"x", Some(Retention::new(LockMode::Compliance, until)))
            .unwrap();
        let e = b.delete(&k).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
        // shorter: kept as it was
        let r = b
            .extend_retention(&k, None, Retention::new(LockMode::Governance, now))
            .unwrap();
        assert_eq!(r, Retention::new(LockMode::Compliance, until));
        // longer: extended, mode kept
        let later = until + Duration::from_secs(60);
        let r = b
            .extend_retention(&k, None, Retention::new(LockMode::Governance, later))
            .unwrap();
        assert_eq!(r, Retention::new(LockMode::Compliance, later));
        assert_eq!(b.head(&k, None).unwrap().unwrap().retention, Some(r));

        // a lapsed retention with a hold: refused until the hold is off
        let k2 = key("snap/two");
        let lapsed = now - Duration::from_secs(10);
        b.put_once(
            &k2,
            b"y",
            Some(Retention::new(LockMode::Compliance, lapsed)),
        )
        .unwrap();
        b.set_legal_hold(&k2, None, true).unwrap();
        assert!(b.head(&k2, None).unwrap().unwrap().legal_hold);
        let e = b.delete_version(&k2, &null_version()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Denied);
        b.set_legal_hold(&k2, None, false).unwrap();
        b.delete_version(&k2, &null_version()).unwrap();
        assert_eq!(b.head(&k2, None).unwrap(), None);
        assert!(b.list_versions(&k2).unwrap().is_empty());
        // its record went with it: a new object of that key starts unlocked
        b.put_once(&k2, b"z", None).unwrap();
        assert_eq!(b.head(&k2, None).unwrap().unwrap().retention, None);
        b.delete(&k2).unwrap();
    }

    #[test]
    fn list_streams_by_prefix_and_skips_own_files() {
        let (_d, b) = backend();
        for k in ["packs/ab/1", "packs/ab/2", "packs/ac/3", "packsx", "snap/s"] {
            b.put_once(
                &key(k),
                k.as_bytes(),
                Some(Retention::new(LockMode::Compliance, SystemTime::now())),
            )
            .unwrap();
        }
        let keys = |prefix: &str| {
            let mut v = Vec::new();
            b.list(prefix, &mut |e| {
                assert_eq!(e.size, e.key.as_str().len() as u64);
                v.push(e.key.to_string());
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
            v.sort();
            v
        };
        assert_eq!(keys("packs/ab/"), ["packs/ab/1", "packs/ab/2"]);
        assert_eq!(keys("packs/a"), ["packs/ab/1", "packs/ab/2", "packs/ac/3"]);
        assert_eq!(
            keys("packs"),
            ["packs/ab/1", "packs/ab/2", "packs/ac/3", "packsx"]
        );
        assert_eq!(
            keys("").len(),
            5,
            "records and temporary files are not listed"
        );
        assert!(keys("nothing/").is_empty());
        assert!(keys("packsx/").is_empty(), "a file is no directory to list");
        let mut n = 0;
        b.list("", &mut |_| {
            n += 1;
            Ok(ControlFlow::Break(()))
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
