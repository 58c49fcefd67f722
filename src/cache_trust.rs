//! Whether the local cache can be believed. Owns telling a damaged cache
//! database apart (SQLite's own corruption errors, a truncated file, a
//! failed `quick_check`) and moving one aside so it is rebuilt from the
//! repository; it never decides what a snapshot holds (the repository does).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, ErrorCode};

use crate::cache::{BlobLocation, FileRecord};
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::id::{BlobId, PackId};

/// Bytes of a row checksum.
pub const ROW_MAC_LEN: usize = 16;

/// The key of the checksum each blob row of the cache carries: keyed BLAKE3
/// (under a subkey of the repository's keys, see
/// [`crate::crypto::Keys::cache_row_key`]) of the blob id, pack, offset,
/// lengths and kind, cut to [`ROW_MAC_LEN`] bytes. SQLite does not checksum
/// its pages, so a flipped bit could leave a well-formed row that points a
/// blob at the wrong pack or offset; such a row no longer checks, and is
/// not used.
#[derive(Clone)]
pub struct RowKey([u8; 32]);

impl std::fmt::Debug for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowKey(..)")
    }
}

/// A blob row as SQLite returns it, nothing checked yet.
#[derive(Debug, Clone, Default)]
pub struct RawRow {
    /// The blob's id.
    pub id: Vec<u8>,
    /// The pack's id.
    pub pack: Vec<u8>,
    /// Offset in the pack.
    pub offset: i64,
    /// Sealed length.
    pub sealed_len: i64,
    /// Plain length.
    pub plain_len: i64,
    /// Kind code.
    pub kind: i64,
    /// The row's checksum.
    pub mac: Vec<u8>,
}

impl RowKey {
    /// The key for rows of the repository whose keys gave `key`.
    pub fn new(key: [u8; 32]) -> RowKey {
        RowKey(key)
    }

    /// The checksum of a row.
    pub fn mac(&self, id: &BlobId, loc: &BlobLocation) -> [u8; ROW_MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(id.as_bytes());
        h.update(loc.pack.as_bytes());
        h.update(&loc.offset.to_le_bytes());
        h.update(&loc.sealed_len.to_le_bytes());
        h.update(&loc.plain_len.to_le_bytes());
        h.update(&[loc.kind as u8]);
        let mut out = [0u8; ROW_MAC_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..ROW_MAC_LEN]);
        out
    }

    /// The checksum of a files-cache row: what the file looked like and the
    /// content and packs a backup reuses without reading it.
    pub fn file_mac(&self, path: &[u8], rec: &FileRecord) -> [u8; ROW_MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(b"file");
        for part in [path, &rec.content, &rec.packs] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        for n in [
            rec.size,
            rec.mtime_ns as u64,
            rec.ctime_ns as u64,
            rec.inode,
            rec.dev,
        ] {
            h.update(&n.to_le_bytes());
        }
        let mut out = [0u8; ROW_MAC_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..ROW_MAC_LEN]);
        out
    }

    /// Whether a files-cache row's checksum holds.
    pub fn file_checks(&self, path: &[u8], rec: &FileRecord, mac: &[u8]) -> bool {
        same(&self.file_mac(path, rec), mac)
    }

    /// The location a row gives, if it is well-formed and its checksum
    /// holds; `None` for a row not to use.
    pub fn check(&self, row: &RawRow) -> Option<(BlobId, BlobLocation)> {
        let id = BlobId(row.id.as_slice().try_into().ok()?);
        let loc = BlobLocation {
            pack: PackId::from_slice(&row.pack)?,
            offset: u64::try_from(row.offset).ok()?,
            sealed_len: u32::try_from(row.sealed_len).ok()?,
            plain_len: u32::try_from(row.plain_len).ok()?,
            kind: Kind::from_u8(u8::try_from(row.kind).ok()?)?,
        };
        same(&self.mac(&id, &loc), &row.mac).then_some((id, loc))
    }
}

/// Whether a stored checksum is the one computed, compared in constant time
/// as a MAC should be.
fn same(want: &[u8; ROW_MAC_LEN], got: &[u8]) -> bool {
    got.len() == ROW_MAC_LEN && want.iter().zip(got).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// A cache file at most this big gets a `PRAGMA quick_check` at every open.
/// quick_check reads every page: on a warm cache it costs about 2 ms per
/// MB (4.5 MB, 20k blobs: 12 ms; 45 MB, 200k blobs: 97 ms; 446 MB, 2M
/// blobs: 0.72 s), so a larger cache is checked only once every
/// [`QUICK_CHECK_EVERY`].
pub const QUICK_CHECK_MAX_BYTES: u64 = 16 << 20;

/// A larger cache is quick-checked again after this long.
pub const QUICK_CHECK_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Whether an error says the cache database itself is damaged (SQLite's
/// SQLITE_CORRUPT or SQLITE_NOTADB): rebuilding it is then the cure.
pub fn is_damage(e: &Error) -> bool {
    match e {
        Error::Cache(rusqlite::Error::SqliteFailure(f, _)) => {
            matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        }
        // A value of the wrong type where the schema has one (a flipped bit
        // in a record's type byte turns a BLOB into TEXT): SQLite reads it
        // without complaint, so only the reader can tell.
        Error::Cache(
            rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..),
        ) => true,
        _ => false,
    }
}

/// The error a damage found by our own checks is reported as.
pub(crate) fn damage(what: String) -> Error {
    Error::Cache(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some(what),
    ))
}

/// The marker whose mtime says when the cache at `db` last passed a
/// quick_check.
fn checked_marker(db: &Path) -> PathBuf {
    db.with_extension("db.checked")
}

/// Checks a freshly opened cache database at `db` before it is used: a
/// header and schema SQLite can read (random bytes and a broken header fail
/// here, as SQLITE_NOTADB), a file as long as its header says (a truncated
/// file, unless a write-ahead log holds the missing pages), and a
/// quick_check when the file is small or the last one is old.
pub fn verify(conn: &Connection, db: &Path) -> Result<()> {
    let _: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let len = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    let wal = std::fs::metadata(wal_of(db)).map(|m| m.len()).unwrap_or(0);
    if wal == 0 && len < pages * page_size {
        return Err(damage(format!(
            "the file holds {len} bytes, its header says {}",
            pages * page_size
        )));
    }
    let marker = checked_marker(db);
    let recent = std::fs::metadata(&marker)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < QUICK_CHECK_EVERY);
    if len > QUICK_CHECK_MAX_BYTES && recent {
        return Ok(());
    }
    let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(damage(format!("quick_check: {verdict}")));
    }
    if len > QUICK_CHECK_MAX_BYTES {
        // Only the time matters; a marker that cannot be written means
        // another check next time, nothing worse.
        let _ = std::fs::write(&marker, b"");
    }
    Ok(())
}

fn wal_of(db: &Path) -> PathBuf {
    db.with_extension("db-wal")
}

/// Moves a damaged cache database and its write-ahead log and shared-memory
/// files aside, to `<name>.corrupt-<unix time>[-wal|-shm]`, so the next open
/// starts an empty one and the damaged one is kept for a look (the one set
/// aside before it is removed). Every
/// connection to it must be closed first (SQLite removes its `-wal` by
/// name when the last one closes). Returns the new name of the database.
pub(crate) fn set_aside(db: &Path) -> Result<PathBuf> {
    // Only the latest is kept: a repository whose damage sends every check
    // through a rebuilt cache must not fill the disk with old ones.
    if let (Some(dir), Some(name)) = (db.parent(), db.file_name()) {
        let prefix = format!("{}.corrupt-", name.to_string_lossy());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = db.with_extension(format!("db.corrupt-{secs}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        let to = PathBuf::from(format!("{}{suffix}", aside.display()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(from, e)),
        }
    }
    let _ = std::fs::remove_file(checked_marker(db));
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_checks_until_any_field_changes() {
        let key = RowKey::new([7; 32]);
        let id = BlobId([1; 32]);
        let loc = BlobLocation {
            pack: PackId([2; 32]),
            offset: 8,
            sealed_len: 100,
            plain_len: 50,
            kind: Kind::Data,
        };
        let row = RawRow {
            id: id.as_bytes().to_vec(),
            pack: loc.pack.as_bytes().to_vec(),
            offset: 8,
            sealed_len: 100,
            plain_len: 50,
            kind: Kind::Data as i64,
            mac: key.mac(&id, &loc).to_vec(),
        };
        assert_eq!(key.check(&row), Some((id, loc)));
        let edits: [&dyn Fn(&mut RawRow); 7] = [
            &|r| r.id[0] ^= 1,
            &|r| r.pack[31] ^= 0x80,
            &|r| r.offset += 1,
            &|r| r.sealed_len = -1,
            &|r| r.plain_len += 1,
            &|r| r.kind = Kind::Tree as i64,
            &|r| r.mac.truncate(15),
        ];
        for edit in edits {
            let mut bad = row.clone();
            edit(&mut bad);
            assert_eq!(key.check(&bad), None, "{bad:?}");
        }
        assert_eq!(RowKey::new([8; 32]).check(&row), None, "another key");
    }

    #[test]
    fn sqlite_corruption_codes_are_damage_and_others_are_not() {
        assert!(is_damage(&damage("x".into())));
        let notadb = Error::Cache(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
            None,
        ));
        assert!(is_damage(&notadb));
        let busy = Error::Cache(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ));
        assert!(!is_damage(&busy));
        assert!(!is_damage(&Error::Corrupt("pack".into())));
    }
}
