//! The client's local cache in SQLite: the blob index (blob → pack, offset,
//! length), the packs whose headers are known, and the files cache. Always
//! rebuildable from the repository's pack headers, never authoritative:
//! losing it costs only time. Nothing here is held in memory whole.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::cache_trust::{RawRow, RowKey};
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::pack::PackEntry;
use crate::id::{BlobId, PackId};

/// Where a blob lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Offset of the sealed blob in the pack.
    pub offset: u64,
    /// Length of the sealed blob.
    pub sealed_len: u32,
    /// Length of the plaintext.
    pub plain_len: u32,
    /// What it is.
    pub kind: Kind,
}

/// A files-cache record: what a file looked like and what its content was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// Size in bytes.
    pub size: u64,
    /// Modification time (ns).
    pub mtime_ns: i64,
    /// Status change time (ns).
    pub ctime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Device.
    pub dev: u64,
    /// The node's content, CBOR (inline chunks or list ids).
    pub content: Vec<u8>,
    /// The packs the content lives in: 40-byte entries, the pack's id and
    /// the bytes of this file's blobs in it (u64 LE).
    pub packs: Vec<u8>,
}

impl FileRecord {
    /// Whether a file with this metadata looks unchanged since the record:
    /// same size, times and inode.
    pub fn matches(&self, m: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.size == m.len()
            && self.mtime_ns == m.mtime() * 1_000_000_000 + m.mtime_nsec()
            && self.ctime_ns == m.ctime() * 1_000_000_000 + m.ctime_nsec()
            && self.inode == m.ino()
    }
}

/// The cache database of one repository.
pub struct Cache {
    conn: Connection,
    /// Checks each blob row's checksum (see [`RowKey`]).
    row_key: RowKey,
    /// Blob rows (id, pack) found not to check, not used since: see
    /// [`Cache::take_bad_rows`]. At most [`BAD_ROWS_KEPT`].
    bad_rows: std::cell::RefCell<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Whether `run_blobs` holds where each blob of `run_refs` lives, as
    /// the index says now.
    run_resolved: std::cell::Cell<bool>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB NOT NULL, pack BLOB NOT NULL, offset INTEGER NOT NULL,
    sealed_len INTEGER NOT NULL, plain_len INTEGER NOT NULL, kind INTEGER NOT NULL,
    seq INTEGER NOT NULL, mac BLOB NOT NULL, PRIMARY KEY (id, pack)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pack_live (
    pack BLOB PRIMARY KEY, live INTEGER NOT NULL, size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_pack ON blobs(pack);
CREATE TABLE IF NOT EXISTS packs (id BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, dev INTEGER NOT NULL, content BLOB NOT NULL, packs BLOB NOT NULL,
    mac BLOB NOT NULL
) WITHOUT ROWID;
";

/// Layout version of the cache database (3: blob and file rows carry a
/// checksum).
const CACHE_VERSION: i64 = 3;

/// Bad blob rows remembered for mending; more are still not used.
const BAD_ROWS_KEPT: usize = 4096;

/// A pack holding less than this share of live data (as the last backup
/// found it) is not deduplicated against: its live chunks are written anew,
/// so the pack falls out of new snapshots and expires with the old ones.
pub const REWRITE_BELOW_LIVE: f64 = 0.5;

/// A read transaction held by [`Cache::hold_read`]; ends when dropped.
pub struct ReadHold<'a> {
    /// None when nested in another hold.
    conn: Option<&'a Connection>,
}

impl Drop for ReadHold<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn {
            // A read transaction has nothing to lose if this fails.
            let _ = c.execute_batch("COMMIT");
        }
    }
}

/// A cache file at most this big is read in whole when opened.
const PREFETCH_MAX_BYTES: u64 = 128 << 20;

/// Starts reading a cache file that is small enough into memory, so the
/// lookups that follow do not wait on a cold disk one page at a time (a cold
/// restore's first lookups took a sixth of its time so). Called as a
/// repository is opened, before its key is derived.
pub(crate) fn prefetch(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        if f.metadata().is_ok_and(|m| m.len() <= PREFETCH_MAX_BYTES) {
            crate::source::advise(
                &f,
                0,
                0,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
        }
    }
}

impl Cache {
    /// Opens (or creates) the cache database at `path`.
    pub fn open(path: &Path) -> Result<Cache> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        // The cache is rebuildable: favour speed over durability.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "temp_store", "FILE")?;
        // The cache is rebuildable: an older layout is dropped, not migrated.
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != CACHE_VERSION {
            conn.execute_batch(
                "DROP TABLE IF EXISTS blobs; DROP TABLE IF EXISTS packs; DROP TABLE IF EXISTS files;
                 DROP TABLE IF EXISTS pack_live;",
            )?;
            conn.pragma_update(None, "user_version", CACHE_VERSION)?;
        }
        conn.execute_batch(SCHEMA)?;
        // The counter behind `blobs.seq` (see `add_pack`); a cache from
        // before it existed starts it past every seq in use, once.
        let counted: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM counters WHERE name = 'seq')",
            [],
            |r| r.get(0),
        )?;
        if !counted {
            conn.execute(
                "INSERT OR IGNORE INTO counters (name, value)
                 SELECT 'seq', IFNULL(MAX(seq), 0) FROM blobs",
                [],
            )?;
        }
        conn.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS run_refs (file INTEGER NOT NULL, blob BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS temp.run_refs_file ON run_refs(file);
             CREATE TEMP TABLE IF NOT EXISTS run_packs (pack BLOB NOT NULL, bytes INTEGER NOT NULL);
             CREATE TEMP TABLE IF NOT EXISTS run_blobs (
                 blob BLOB PRIMARY KEY, pack BLOB, bytes INTEGER, offset INTEGER, plain_len INTEGER,
                 kind INTEGER, mac BLOB) WITHOUT ROWID;
             CREATE TEMP TABLE IF NOT EXISTS listed (pack BLOB PRIMARY KEY) WITHOUT ROWID;
             CREATE TEMP TABLE IF NOT EXISTS run_files (
                 seq INTEGER PRIMARY KEY, path BLOB NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                 ctime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, dev INTEGER NOT NULL, content BLOB NOT NULL);",
        )?;
        Ok(Cache {
            conn,
            row_key: RowKey::new([0; 32]),
            bad_rows: Default::default(),
            run_resolved: std::cell::Cell::new(false),
        })
    }

    /// [`Cache::open`], then checks that the database is whole (see
    /// [`crate::cache_trust::verify`]): a damaged one is an error for which
    /// [`crate::cache_trust::is_damage`] holds.
    pub fn open_verified(path: &Path) -> Result<Cache> {
        let c = Cache::open(path)?;
        crate::cache_trust::verify(&c.conn, path)?;
        Ok(c)
    }

    /// Closes the database (every later call fails), so its files can be
    /// moved aside.
    pub(crate) fn close(&mut self) {
        if let Ok(mem) = Connection::open_in_memory() {
            drop(std::mem::replace(&mut self.conn, mem));
        }
    }

    /// Sets the key of the rows' checksums: rows written under another key
    /// do not check (a cache opened without it uses a key of zeros).
    pub fn set_row_key(&mut self, key: RowKey) {
        self.row_key = key;
    }

    /// Checks a row; one that does not check is noted and not used.
    fn checked(&self, row: RawRow) -> Option<BlobLocation> {
        match self.row_key.check(&row) {
            Some((_, loc)) => Some(loc),
            None => {
                let mut bad = self.bad_rows.borrow_mut();
                if bad.len() < BAD_ROWS_KEPT {
                    bad.push((row.id, row.pack));
                }
                None
            }
        }
    }

    /// The blob rows (id, pack) found not to check since the last call.
    pub fn take_bad_rows(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut *self.bad_rows.borrow_mut())
    }

    /// Removes one blob row.
    pub fn remove_row(&self, id: &[u8], pack: &[u8]) -> Result<()> {
        self.conn
            .execute("DELETE FROM blobs WHERE id = ?1 AND pack = ?2", [id, pack])?;
        Ok(())
    }

    /// A files-cache record whose checksum holds; one that does not is
    /// not used (the file is read again, and its record replaced).
    fn file_in(&self, conn: &Connection, path: &[u8]) -> Result<Option<FileRecord>> {
        let mut st = conn.prepare_cached(
            "SELECT size, mtime_ns, ctime_ns, inode, dev, content, packs, mac FROM files WHERE path = ?1",
        )?;
        let row = st
            .query_row([path], |r| {
                let rec = file_record(r, 0, r.get(6)?)?;
                Ok((rec, r.get::<_, Vec<u8>>(7)?))
            })
            .optional()?;
        Ok(row.and_then(|(rec, mac)| self.row_key.file_checks(path, &rec, &mac).then_some(rec)))
    }

    /// Looks a blob up.
    pub fn lookup(&self, id: &BlobId) -> Result<Option<BlobLocation>> {
        self.lookup_in(&self.conn, id)
    }

    /// The newest location of a blob whose row checks.
    fn lookup_in(&self, conn: &Connection, id: &BlobId) -> Result<Option<BlobLocation>> {
        // The newest location: with max(), SQLite takes the bare columns
        // from the row holding the maximum, in one seek. `ORDER BY seq DESC
        // LIMIT 1` built a temporary B-tree for every lookup (a restore
        // makes one per chunk). No such blob: one row of NULLs.
        let mut st = conn.prepare_cached(
            "SELECT pack, offset, sealed_len, plain_len, kind, mac, max(seq) FROM blobs WHERE id = ?1",
        )?;
        let row = st.query_row([id.as_bytes()], |r| {
            let Some(pack) = r.get::<_, Option<Vec<u8>>>(0)? else {
                return Ok(None);
            };
            raw_row(r, id.as_bytes().to_vec(), pack, 1).map(Some)
        })?;
        let Some(row) = row else { return Ok(None) };
        if let Some(loc) = self.checked(row) {
            return Ok(Some(loc));
        }
        // The newest row does not check: the newest that does, if any.
        let mut st = conn.prepare_cached(
            "SELECT pack, offset, sealed_len, plain_len, kind, mac FROM blobs WHERE id = ?1 ORDER BY seq DESC",
        )?;
        let rows = st.query_map([id.as_bytes()], |r| {
            raw_row(r, id.as_bytes().to_vec(), r.get(0)?, 1)
        })?;
        for row in rows {
            if let Some(loc) = self.checked(row?) {
                return Ok(Some(loc));
            }
        }
        Ok(None)
    }

    /// [`Cache::lookup`] for many blobs, in one read transaction.
    pub fn lookup_many<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a BlobId>,
    ) -> Result<Vec<Option<BlobLocation>>> {
        self.in_read_tx(|conn| ids.into_iter().map(|id| self.lookup_in(conn, id)).collect())
    }

    /// Holds one read transaction until the guard is dropped: every lookup
    /// in between shares it instead of locking the database once each (a
    /// restore of 31k small files and directories spent a tenth of its
    /// walking thread on those locks). Hold it for a bounded stretch: an
    /// open reader keeps the write-ahead log from being recycled. Only
    /// reads may run while it is held; holding it again nests.
    pub fn hold_read(&self) -> Result<ReadHold<'_>> {
        if !self.conn.is_autocommit() {
            return Ok(ReadHold { conn: None });
        }
        self.conn.execute_batch("BEGIN")?;
        Ok(ReadHold {
            conn: Some(&self.conn),
        })
    }

    /// Runs `f` in one read transaction: a batch of lookups then costs one
    /// lock of the database, not one each. Inside [`Cache::hold_read`], in
    /// the held one.
    fn in_read_tx<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return f(&self.conn);
        }
        let tx = self.conn.unchecked_transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Every pack known to hold a blob, newest first.
    pub fn locations(&self, id: &BlobId) -> Result<Vec<PackId>> {
        let mut st = self.conn.prepare_cached(
            "SELECT pack, offset, sealed_len, plain_len, kind, mac FROM blobs WHERE id = ?1 ORDER BY seq DESC",
        )?;
        let rows = st.query_map([id.as_bytes()], |r| {
            raw_row(r, id.as_bytes().to_vec(), r.get(0)?, 1)
        })?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(loc) = self.checked(r?) {
                out.push(loc.pack);
            }
        }
        Ok(out)
    }

    /// Packs the last backup found holding less than `threshold` live data
    /// (see [`REWRITE_BELOW_LIVE`]).
    pub fn sparse_packs(&self, threshold: f64) -> Result<std::collections::HashSet<PackId>> {
        let mut st = self
            .conn
            .prepare("SELECT pack FROM pack_live WHERE CAST(live AS REAL) < ?1 * size")?;
        let rows = st.query_map([threshold], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = std::collections::HashSet::new();
        for r in rows {
            if let Some(p) = PackId::from_slice(&r?) {
                out.insert(p);
            }
        }
        Ok(out)
    }

    /// Which of `ids` the index holds in a pack other than those of
    /// `except` (copies in mostly dead packs do not count), asked in one
    /// read transaction.
    pub fn have_blobs<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a BlobId>,
        except: &std::collections::HashSet<PackId>,
    ) -> Result<Vec<bool>> {
        self.in_read_tx(|conn| {
            // Only a row that checks counts: one that does not would leave
            // the blob unstored and the snapshot without its pack.
            let mut st = conn.prepare_cached(
                "SELECT pack, offset, sealed_len, plain_len, kind, mac FROM blobs WHERE id = ?1",
            )?;
            let mut out = Vec::new();
            for id in ids {
                let mut elsewhere = false;
                let rows = st.query_map([id.as_bytes()], |r| {
                    raw_row(r, id.as_bytes().to_vec(), r.get(0)?, 1)
                })?;
                for row in rows {
                    elsewhere |= self
                        .checked(row?)
                        .is_some_and(|l| !except.contains(&l.pack));
                }
                out.push(elsewhere);
            }
            Ok(out)
        })
    }

    /// Whether a pack's header is known.
    pub fn has_pack(&self, id: &PackId) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM packs WHERE id = ?1")?;
        Ok(st.exists([id.as_bytes()])?)
    }

    /// A pack's size as the index knows it, if it does.
    pub fn pack_size(&self, id: &PackId) -> Result<Option<u64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT size FROM packs WHERE id = ?1")?;
        let mut rows = st.query([id.as_bytes()])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get::<_, i64>(0)? as u64),
            None => None,
        })
    }

    /// Records a durable pack and its blob table, in one transaction.
    pub fn add_pack(&mut self, id: &PackId, size: u64, entries: &[PackEntry]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            // From a counter: MAX(seq) over `blobs` has no index to use and
            // read the whole table for every pack (0.18 s at 2M blobs).
            let seq: i64 = tx.query_row(
                "UPDATE counters SET value = value + 1 WHERE name = 'seq' RETURNING value",
                [],
                |r| r.get(0),
            )?;
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO blobs (id, pack, offset, sealed_len, plain_len, kind, seq, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in entries {
                let loc = BlobLocation {
                    pack: *id,
                    offset: e.offset,
                    sealed_len: e.sealed_len,
                    plain_len: e.plain_len,
                    kind: e.kind,
                };
                st.execute(params![
                    e.id.as_bytes(),
                    id.as_bytes(),
                    e.offset as i64,
                    e.sealed_len as i64,
                    e.plain_len as i64,
                    e.kind as u8 as i64,
                    seq,
                    self.row_key.mac(&e.id, &loc)
                ])?;
            }
            tx.execute(
                "INSERT OR REPLACE INTO packs (id, size) VALUES (?1, ?2)",
                params![id.as_bytes(), size as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets a pack that the repository no longer holds, and its blobs.
    pub fn remove_pack(&mut self, id: &PackId) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM blobs WHERE pack = ?1", [id.as_bytes()])?;
        tx.execute("DELETE FROM packs WHERE id = ?1", [id.as_bytes()])?;
        tx.commit()?;
        Ok(())
    }

    /// Notes packs the repository listed (see [`Cache::unlisted_packs`]).
    pub fn note_listed(&mut self, packs: &[PackId]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO listed (pack) VALUES (?1)")?;
            for p in packs {
                st.execute([p.as_bytes()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Packs the cache knows that the repository's listing did not show;
    /// clears the noted listing. Kept on disk, so memory stays flat.
    pub fn unlisted_packs(&mut self) -> Result<Vec<PackId>> {
        let out = {
            let mut st = self
                .conn
                .prepare("SELECT id FROM packs WHERE id NOT IN (SELECT pack FROM listed)")?;
            let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut out = Vec::new();
            for r in rows {
                if let Some(p) = PackId::from_slice(&r?) {
                    out.push(p);
                }
            }
            out
        };
        self.conn.execute_batch("DELETE FROM listed")?;
        Ok(out)
    }

    /// Every pack the cache knows, in id order, page by page.
    pub fn for_each_pack(&self, f: &mut dyn FnMut(PackId) -> Result<()>) -> Result<()> {
        let mut last: Vec<u8> = Vec::new();
        loop {
            let page: Vec<Vec<u8>> = {
                let mut st = self
                    .conn
                    .prepare_cached("SELECT id FROM packs WHERE id > ?1 ORDER BY id LIMIT 4096")?;
                let rows = st.query_map([&last], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if page.is_empty() {
                return Ok(());
            }
            for p in &page {
                if let Some(id) = PackId::from_slice(p) {
                    f(id)?;
                }
            }
            // unwrap: page is not empty
            last = page.last().unwrap().clone();
        }
    }

    /// Reads a files-cache record.
    pub fn file(&self, path: &[u8]) -> Result<Option<FileRecord>> {
        self.file_in(&self.conn, path)
    }

    /// [`Cache::file`] for many paths in one read transaction: one lock of
    /// the database for all of them rather than one per path.
    pub fn files<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Option<FileRecord>>> {
        self.in_read_tx(|conn| paths.into_iter().map(|p| self.file_in(conn, p)).collect())
    }

    /// Notes that the running backup references these blobs, each for a
    /// file number (0 for trees and lists). Only temporary tables are
    /// written, so no lock on the shared index is taken.
    pub fn run_refs(&mut self, refs: &[(u64, BlobId)]) -> Result<()> {
        self.run_resolved.set(false);
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached("INSERT INTO run_refs (file, blob) VALUES (?1, ?2)")?;
            for (file, blob) in refs {
                st.execute(params![*file as i64, blob.as_bytes()])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Notes that the running backup references `bytes` of a pack (a file
    /// reused from the files cache).
    pub fn run_pack(&mut self, pack: &PackId, bytes: u64) -> Result<()> {
        self.run_pack_batch(&[(*pack, bytes)])
    }

    /// [`Cache::run_pack`] for many packs, in one transaction.
    pub fn run_pack_batch(&mut self, packs: &[(PackId, u64)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st =
                tx.prepare_cached("INSERT INTO run_packs (pack, bytes) VALUES (?1, ?2)")?;
            for (pack, bytes) in packs {
                st.execute(params![pack.as_bytes(), *bytes as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// After a committed backup: how much of each pack it used, so the next
    /// backup can stop deduplicating against packs that are mostly dead.
    pub fn run_note_liveness(&mut self) -> Result<()> {
        self.run_resolve()?;
        let tx = self.conn.transaction()?;
        tx.execute_batch(
            "DELETE FROM pack_live;
             INSERT INTO pack_live (pack, live, size)
             SELECT u.pack, SUM(u.bytes), IFNULL((SELECT size FROM packs WHERE id = u.pack), 0) FROM (
                 SELECT pack, bytes FROM run_blobs
                 UNION ALL SELECT pack, bytes FROM run_packs
             ) u WHERE u.pack IS NOT NULL GROUP BY u.pack;",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every pack the running backup references, and the number of
    /// referenced blobs the index does not know (must be zero).
    pub fn run_packs(&self) -> Result<(Vec<PackId>, u64)> {
        self.run_resolve()?;
        let missing: i64 = self.conn.query_row(
            "SELECT count(*) FROM run_blobs WHERE pack IS NULL",
            [],
            |r| r.get(0),
        )?;
        let mut st = self.conn.prepare(
            "SELECT pack FROM run_blobs WHERE pack IS NOT NULL UNION SELECT pack FROM run_packs",
        )?;
        let rows = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            if let Some(p) = PackId::from_slice(&r?) {
                out.push(p);
            }
        }
        Ok((out, missing as u64))
    }

    /// Clears the running backup's bookkeeping.
    pub fn run_reset(&self) -> Result<()> {
        self.run_resolved.set(false);
        self.conn.execute_batch(
            "DELETE FROM run_refs; DELETE FROM run_packs; DELETE FROM run_files; DELETE FROM run_blobs;",
        )?;
        Ok(())
    }

    /// Looks up, once for the three questions asked of it at the end of a
    /// backup, the pack and sealed size of every distinct blob it referenced
    /// (the newest location; no pack when the index does not know it).
    fn run_resolve(&self) -> Result<()> {
        if self.run_resolved.get() {
            return Ok(());
        }
        self.conn.execute_batch(
            "DELETE FROM run_blobs;
             INSERT INTO run_blobs (blob, pack, bytes, offset, plain_len, kind, mac)
             SELECT blob, pack, bytes, offset, plain_len, kind, mac FROM (
                 -- One seek per blob: with max(), SQLite takes the bare
                 -- columns from the row holding the maximum (the newest).
                 SELECT r.blob AS blob, b.pack AS pack, b.sealed_len AS bytes, b.offset AS offset,
                        b.plain_len AS plain_len, b.kind AS kind, b.mac AS mac, max(b.seq)
                 FROM (SELECT DISTINCT blob FROM run_refs) r
                 LEFT JOIN blobs b ON b.id = r.blob
                 GROUP BY r.blob
             );",
        )?;
        // What the snapshot lists comes from here: a row that does not
        // check is removed and the blob resolved again, to its newest row
        // that does or to none (then the backup fails: nothing missing is
        // ever committed). Each round removes rows, so it ends.
        loop {
            let bad = self.run_unchecked()?;
            if bad.is_empty() {
                break;
            }
            for (id, pack) in &bad {
                self.remove_row(id, pack)?;
                self.conn.execute(
                    "INSERT OR REPLACE INTO run_blobs (blob, pack, bytes, offset, plain_len, kind, mac)
                     SELECT ?1, pack, sealed_len, offset, plain_len, kind, mac FROM (
                         SELECT pack, sealed_len, offset, plain_len, kind, mac, max(seq) FROM blobs WHERE id = ?1
                     )",
                    [id],
                )?;
            }
        }
        self.run_resolved.set(true);
        Ok(())
    }

    /// Calls `f` with each pack the running backup's blobs resolved to and
    /// those blobs with where the cache says they lie, one pack at a time
    /// (memory holds one pack's blobs).
    pub fn run_blobs_by_pack(
        &self,
        f: &mut dyn FnMut(PackId, Vec<(BlobId, BlobLocation)>) -> Result<()>,
    ) -> Result<()> {
        self.run_resolve()?;
        let mut st = self.conn.prepare(
            "SELECT blob, pack, offset, bytes, plain_len, kind, mac FROM run_blobs
             WHERE pack IS NOT NULL ORDER BY pack",
        )?;
        let mut rows = st.query([])?;
        let mut group: Option<(PackId, Vec<(BlobId, BlobLocation)>)> = None;
        while let Some(r) = rows.next()? {
            let raw = raw_row(r, r.get(0)?, r.get(1)?, 2)?;
            // Checked when resolved: a row that fails now is damage.
            let (id, loc) = self
                .row_key
                .check(&raw)
                .ok_or_else(|| crate::cache_trust::damage("a resolved blob row".into()))?;
            match &mut group {
                Some((p, blobs)) if *p == loc.pack => blobs.push((id, loc)),
                _ => {
                    if let Some((p, blobs)) = group.take() {
                        f(p, blobs)?;
                    }
                    group = Some((loc.pack, vec![(id, loc)]));
                }
            }
        }
        if let Some((p, blobs)) = group {
            f(p, blobs)?;
        }
        Ok(())
    }

    /// Makes the next question about the running backup resolve its blobs
    /// anew (after rows were mended).
    pub fn run_unresolve(&self) {
        self.run_resolved.set(false);
    }

    /// The rows of `run_blobs` that do not check (noted as bad).
    fn run_unchecked(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut st = self.conn.prepare(
            "SELECT blob, pack, offset, bytes, plain_len, kind, mac FROM run_blobs WHERE pack IS NOT NULL",
        )?;
        let rows = st.query_map([], |r| raw_row(r, r.get(0)?, r.get(1)?, 2))?;
        let mut bad = Vec::new();
        for row in rows {
            let row = row?;
            if self.row_key.check(&row).is_none() {
                bad.push((row.id.clone(), row.pack.clone()));
                self.checked(row);
            }
        }
        Ok(bad)
    }

    /// Remembers a file read by the running backup, to enter into the files
    /// cache once the backup is committed (its packs known).
    pub fn run_file(&mut self, seq: u64, path: &[u8], rec: &FileRecord) -> Result<()> {
        self.run_file_batch([(seq, path, rec)])
    }

    /// [`Cache::run_file`] for many files, in one transaction.
    pub fn run_file_batch<'a>(
        &mut self,
        files: impl IntoIterator<Item = (u64, &'a [u8], &'a FileRecord)>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO run_files (seq, path, size, mtime_ns, ctime_ns, inode, dev, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for (seq, path, rec) in files {
                st.execute(params![
                    seq as i64,
                    path,
                    rec.size as i64,
                    rec.mtime_ns,
                    rec.ctime_ns,
                    rec.inode as i64,
                    rec.dev as i64,
                    rec.content
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves the running backup's files into the files cache, each with the
    /// packs its content lives in.
    pub fn run_commit_files(&mut self) -> Result<u64> {
        self.run_resolve()?;
        let mut n = 0;
        let tx = self.conn.transaction()?;
        {
            let mut rows = tx.prepare(
                "SELECT seq, path, size, mtime_ns, ctime_ns, inode, dev, content FROM run_files ORDER BY seq",
            )?;
            // Every file's packs in one pass, in file order (one query per
            // file cost a tree backup of 22k files 0.3 s at its end).
            let mut packs = tx.prepare(
                "SELECT r.file, b.pack, SUM(b.bytes) FROM (
                     SELECT DISTINCT file, blob FROM run_refs WHERE file IN (SELECT seq FROM run_files)
                 ) r
                 JOIN run_blobs b ON b.blob = r.blob
                 WHERE b.pack IS NOT NULL GROUP BY r.file, b.pack ORDER BY r.file, b.pack",
            )?;
            let mut put = tx.prepare_cached(
                "INSERT OR REPLACE INTO files (path, size, mtime_ns, ctime_ns, inode, dev, content, packs, mac)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut pr = packs.query([])?;
            let mut next = pr.next()?;
            let mut it = rows.query([])?;
            while let Some(r) = it.next()? {
                let seq: i64 = r.get(0)?;
                let mut ids = Vec::new();
                // Both in ascending file order: skip the packs of files
                // not kept (trees, lists, files read but not cached).
                while let Some(p) = next {
                    let file: i64 = p.get(0)?;
                    if file > seq {
                        break;
                    }
                    if file == seq {
                        ids.extend_from_slice(&p.get::<_, Vec<u8>>(1)?);
                        ids.extend_from_slice(&(p.get::<_, i64>(2)? as u64).to_le_bytes());
                    }
                    next = pr.next()?;
                }
                let path: Vec<u8> = r.get(1)?;
                let rec = file_record(r, 2, ids)?;
                put.execute(params![
                    path,
                    rec.size as i64,
                    rec.mtime_ns,
                    rec.ctime_ns,
                    rec.inode as i64,
                    rec.dev as i64,
                    rec.content,
                    rec.packs,
                    self.row_key.file_mac(&path, &rec)
                ])?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }
}

/// A files-cache record from columns size, mtime_ns, ctime_ns, inode, dev
/// and content from column `first`, with `packs`.
fn file_record(r: &rusqlite::Row, first: usize, packs: Vec<u8>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        size: r.get::<_, i64>(first)? as u64,
        mtime_ns: r.get(first + 1)?,
        ctime_ns: r.get(first + 2)?,
        inode: r.get::<_, i64>(first + 3)? as u64,
        dev: r.get::<_, i64>(first + 4)? as u64,
        content: r.get(first + 5)?,
        packs,
    })
}

/// A blob row from columns `pack` (given), then offset, sealed_len,
/// plain_len, kind and mac from column `first`.
fn raw_row(
    r: &rusqlite::Row,
    id: Vec<u8>,
    pack: Vec<u8>,
    first: usize,
) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id,
        pack,
        offset: r.get(first)?,
        sealed_len: r.get(first + 1)?,
        plain_len: r.get(first + 2)?,
        kind: r.get(first + 3)?,
        mac: r.get(first + 4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_read_sees_one_state_and_ends_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.db");
        let mut c = Cache::open(&path).unwrap();
        let entry = |n: u8| PackEntry {
            kind: Kind::Data,
            id: BlobId([n; 32]),
            offset: 8,
            sealed_len: 100,
            plain_len: 50,
        };
        c.add_pack(&PackId([2; 32]), 1000, &[entry(1)]).unwrap();
        let mut other = Cache::open(&path).unwrap();
        {
            let hold = c.hold_read().unwrap();
            let nested = c.hold_read().unwrap();
            assert!(c.lookup(&BlobId([1; 32])).unwrap().is_some());
            drop(nested);
            // Still inside the outer hold: a writer's new pack is not seen.
            other.add_pack(&PackId([3; 32]), 1000, &[entry(4)]).unwrap();
            let got = c.lookup_many([&BlobId([1; 32]), &BlobId([4; 32])]).unwrap();
            assert_eq!(
                got.iter().map(Option::is_some).collect::<Vec<_>>(),
                [true, false]
            );
            drop(hold);
        }
        assert!(c.lookup(&BlobId([4; 32])).unwrap().is_some());
        // Writes work again once the hold is gone.
        c.add_pack(&PackId([5; 32]), 1000, &[entry(6)]).unwrap();
        assert!(c.lookup(&BlobId([6; 32])).unwrap().is_some());
    }

    #[test]
    fn index_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Cache::open(&d.path().join("c.db")).unwrap();
        let e = PackEntry {
            kind: Kind::Data,
            id: BlobId([1; 32]),
            offset: 8,
            sealed_len: 100,
            plain_len: 50,
        };
        c.add_pack(&PackId([2; 32]), 1000, &[e]).unwrap();
        let l = c.lookup(&BlobId([1; 32])).unwrap().unwrap();
        assert_eq!(
            (l.pack, l.offset, l.sealed_len, l.kind),
            (PackId([2; 32]), 8, 100, Kind::Data)
        );
        assert!(c.lookup(&BlobId([3; 32])).unwrap().is_none());
        assert_eq!(
            c.have_blobs(
                [&BlobId([3; 32]), &BlobId([1; 32]), &BlobId([1; 32])],
                &Default::default()
            )
            .unwrap(),
            vec![false, true, true]
        );
        // A copy only in a pack to ignore does not count.
        let except = std::collections::HashSet::from([PackId([2; 32])]);
        assert_eq!(
            c.have_blobs([&BlobId([1; 32])], &except).unwrap(),
            vec![false]
        );
        let many = c.lookup_many([&BlobId([1; 32]), &BlobId([3; 32])]).unwrap();
        assert_eq!(
            many[0].as_ref().map(|l| (l.pack, l.offset)),
            Some((PackId([2; 32]), 8))
        );
        assert!(many[1].is_none());
        c.run_refs(&[(1, BlobId([1; 32])), (0, BlobId([9; 32]))])
            .unwrap();
        let (packs, missing) = c.run_packs().unwrap();
        assert_eq!((packs, missing), (vec![PackId([2; 32])], 1));
        // the files cache records, per file, each pack and its bytes
        c.run_file(1, b"/f", &record()).unwrap();
        assert_eq!(c.run_commit_files().unwrap(), 1);
        let mut want = vec![2u8; 32];
        want.extend_from_slice(&100u64.to_le_bytes());
        assert_eq!(c.file(b"/f").unwrap().unwrap().packs, want);
        c.remove_pack(&PackId([2; 32])).unwrap();
        assert_eq!(
            c.have_blobs([&BlobId([1; 32])], &Default::default())
                .unwrap(),
            vec![false]
        );
    }

    #[test]
    fn a_blob_in_several_packs_is_found_where_it_was_stored_last() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Cache::open(&d.path().join("c.db")).unwrap();
        // Names sort against the order of storing: newest is not largest.
        let (old, mid, new) = (PackId([5; 32]), PackId([9; 32]), PackId([1; 32]));
        c.add_pack(&old, 1000, &[entry(1, 10)]).unwrap();
        c.add_pack(&mid, 1000, &[entry(1, 20)]).unwrap();
        c.add_pack(&new, 1000, &[entry(1, 30)]).unwrap();
        let l = c.lookup(&BlobId([1; 32])).unwrap().unwrap();
        assert_eq!((l.pack, l.sealed_len), (new, 30));
        assert_eq!(c.locations(&BlobId([1; 32])).unwrap(), vec![new, mid, old]);
        c.remove_pack(&new).unwrap();
        let many = c.lookup_many([&BlobId([1; 32]), &BlobId([2; 32])]).unwrap();
        assert_eq!(many[0].as_ref().map(|l| l.pack), Some(mid));
        assert!(many[1].is_none(), "unknown blob");
        // A cache from before the counter: it starts past the seqs in use.
        c.conn.execute_batch("DROP TABLE counters").unwrap();
        drop(c);
        let mut c = Cache::open(&d.path().join("c.db")).unwrap();
        c.add_pack(&new, 1000, &[entry(1, 40)]).unwrap();
        let l = c.lookup(&BlobId([1; 32])).unwrap().unwrap();
        assert_eq!((l.pack, l.sealed_len), (new, 40));
    }

    #[test]
    fn committed_files_get_each_of_their_packs_with_its_bytes() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Cache::open(&d.path().join("c.db")).unwrap();
        let (p, q) = (PackId([7; 32]), PackId([8; 32]));
        c.add_pack(&p, 1000, &[entry(1, 10), entry(2, 20)]).unwrap();
        c.add_pack(&q, 1000, &[entry(3, 30)]).unwrap();
        // File 1: blobs in both packs, one of them twice; file 2: pack q
        // only; file 3 (read, not kept) and the trees (0) in between;
        // file 4: a blob no pack holds.
        c.run_refs(&[
            (0, BlobId([3; 32])),
            (1, BlobId([1; 32])),
            (1, BlobId([3; 32])),
            (1, BlobId([1; 32])),
            (1, BlobId([2; 32])),
            (2, BlobId([3; 32])),
            (3, BlobId([2; 32])),
            (4, BlobId([9; 32])),
        ])
        .unwrap();
        for (seq, path) in [(1, b"/a"), (2, b"/b"), (4, b"/d")] {
            c.run_file(seq, path, &record()).unwrap();
        }
        assert_eq!(c.run_commit_files().unwrap(), 3);
        let packs = |pairs: &[(PackId, u64)]| -> Vec<u8> {
            let mut v = Vec::new();
            for (id, n) in pairs {
                v.extend_from_slice(id.as_bytes());
                v.extend_from_slice(&n.to_le_bytes());
            }
            v
        };
        let got = |path: &[u8]| c.file(path).unwrap().unwrap().packs;
        assert_eq!(got(b"/a"), packs(&[(p, 30), (q, 30)]));
        assert_eq!(got(b"/b"), packs(&[(q, 30)]));
        assert_eq!(got(b"/d"), packs(&[]));
        assert!(c.file(b"/c").unwrap().is_none());
    }

    /// A file's record before the backup commits it (no packs yet).
    fn record() -> FileRecord {
        FileRecord {
            size: 50,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 1,
            dev: 1,
            content: vec![],
            packs: vec![],
        }
    }

    /// A data blob's entry in a pack, `len` bytes sealed and plain.
    fn entry(id: u8, len: u32) -> PackEntry {
        PackEntry {
            kind: Kind::Data,
            id: BlobId([id; 32]),
            offset: 8,
            sealed_len: len,
            plain_len: len,
        }
    }

    #[test]
    fn run_figures_follow_refs_added_after_a_question() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Cache::open(&d.path().join("c.db")).unwrap();
        c.add_pack(&PackId([2; 32]), 1000, &[entry(1, 100)])
            .unwrap();
        c.run_refs(&[(1, BlobId([1; 32])), (1, BlobId([1; 32]))])
            .unwrap();
        assert_eq!(c.run_packs().unwrap(), (vec![PackId([2; 32])], 0));
        // more refs after the answer, to a blob stored since: counted too
        c.add_pack(&PackId([3; 32]), 500, &[entry(4, 40)]).unwrap();
        c.run_refs(&[(1, BlobId([4; 32]))]).unwrap();
        assert_eq!(
            c.run_packs().unwrap(),
            (vec![PackId([2; 32]), PackId([3; 32])], 0)
        );
        c.run_note_liveness().unwrap();
        // a blob referenced twice counts once in its pack's live bytes
        assert!(c.sparse_packs(0.11).unwrap().contains(&PackId([2; 32])));
        assert!(!c.sparse_packs(0.09).unwrap().contains(&PackId([2; 32])));
        // after a reset nothing of the last run is left
        c.run_reset().unwrap();
        assert_eq!(c.run_packs().unwrap(), (vec![], 0));
    }

    #[test]
    fn a_run_counts_a_blob_in_its_newest_pack_and_an_unknown_one_as_missing() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Cache::open(&d.path().join("c.db")).unwrap();
        // blob 1 stored three times; the pack added last is its newest
        let (old, newest, mid) = (PackId([9; 32]), PackId([3; 32]), PackId([5; 32]));
        c.add_pack(&old, 1000, &[entry(1, 100)]).unwrap();
        c.add_pack(&mid, 1000, &[entry(1, 100)]).unwrap();
        c.add_pack(&newest, 1000, &[entry(1, 100), entry(2, 900)])
            .unwrap();
        c.run_refs(&[(1, BlobId([1; 32])), (2, BlobId([7; 32]))])
            .unwrap();
        assert_eq!(c.run_packs().unwrap(), (vec![newest], 1));
        // the live bytes go to the newest pack only
        c.run_note_liveness().unwrap();
        // (100 of its 1000 bytes; the older copies' packs get no figure)
        let sparse = c.sparse_packs(0.5).unwrap();
        assert_eq!(sparse, [newest].into_iter().collect());
    }
}
