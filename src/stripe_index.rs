//! Which pack is in which stripe, kept in SQLite beside the parity files
//! (`parity/members.db`). Protect runs after every commit; without this it
//! would read every stripe's headers each time (they carry the block sums
//! of every member, about 0.06 % of the repository per parity file) and
//! hold every protected pack's id in memory.
//!
//! A cache only, never trusted blindly: each stripe's row keeps the
//! identity of its parity files as they were read (inode, length, mtime),
//! a stripe whose files differ is read again, and a database that cannot
//! be opened is deleted and rebuilt from the headers.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::id::PackId;

/// The database's file name in the parity directory (not a stripe's name).
pub const INDEX_FILE: &str = "members.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stripe (
    id INTEGER PRIMARY KEY,
    sig BLOB NOT NULL,
    m INTEGER NOT NULL,
    readable INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS member (
    stripe INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    pack BLOB NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (stripe, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS member_pack ON member(pack);
";

/// Bumped when the tables change: an index of another version is rebuilt.
const INDEX_VERSION: i32 = 1;

/// Packs looked up per read transaction.
pub const LOOKUP_BATCH: usize = 1024;

/// A stripe as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Parity shards.
    pub m: u32,
    /// Members in order, with their sizes; empty when unreadable.
    pub members: Vec<(PackId, u64)>,
    /// Whether any of its parity files could be read.
    pub readable: bool,
}

impl Known {
    /// A stripe none of whose parity files can be read.
    pub fn unreadable() -> Known {
        Known {
            m: 0,
            members: Vec::new(),
            readable: false,
        }
    }
}

/// The identity of a stripe's parity files: any rewrite (a rename over),
/// truncation or removal changes it.
pub fn signature(files: &[(usize, PathBuf)]) -> Vec<u8> {
    let mut files: Vec<&(usize, PathBuf)> = files.iter().collect();
    files.sort();
    let mut sig = Vec::with_capacity(files.len() * 40);
    for (i, p) in files {
        sig.extend_from_slice(&(*i as u64).to_le_bytes());
        match fs::metadata(p) {
            Ok(md) => {
                sig.extend_from_slice(&md.dev().to_le_bytes());
                sig.extend_from_slice(&md.ino().to_le_bytes());
                sig.extend_from_slice(&md.size().to_le_bytes());
                sig.extend_from_slice(&md.mtime().to_le_bytes());
                sig.extend_from_slice(&md.mtime_nsec().to_le_bytes());
            }
            Err(_) => sig.extend_from_slice(&[0xff; 40]),
        }
    }
    sig
}

/// The open index of one parity directory.
pub struct StripeIndex {
    conn: Connection,
}

impl StripeIndex {
    /// Opens (or creates) the index in `dir`. One that cannot be opened,
    /// or of another version, is deleted and started anew; when even that
    /// fails (a full disk, a read-only directory), an index in memory
    /// serves this run: it is only a cache.
    pub fn open(dir: &Path) -> Result<StripeIndex> {
        let path = dir.join(INDEX_FILE);
        if let Ok(i) = Self::open_at(&path) {
            return Ok(i);
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Self::open_at(&path).or_else(|_| Self::ready(Connection::open_in_memory()?))
    }

    fn open_at(path: &Path) -> Result<StripeIndex> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        if tables != 0 && version != INDEX_VERSION {
            return Err(Error::Corrupt("stripe index of another version".into()));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::ready(conn)
    }

    fn ready(conn: Connection) -> Result<StripeIndex> {
        conn.execute_batch(SCHEMA)?;
        // Written only when new: a write on every open costs each commit's
        // protect a WAL write and its checkpoint.
        let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != INDEX_VERSION {
            conn.pragma_update(None, "user_version", INDEX_VERSION)?;
        }
        // A damaged file may open and still fail its first real query.
        conn.query_row("SELECT count(*) FROM stripe", [], |r| r.get::<_, i64>(0))?;
        Ok(StripeIndex { conn })
    }

    /// Brings the index up to date with the parity files on disk: stripes
    /// it does not know or whose files changed are read with `load`,
    /// stripes that are gone are dropped. Returns how many were read.
    pub fn refresh(
        &mut self,
        files: &BTreeMap<u64, Vec<(usize, PathBuf)>>,
        load: &mut dyn FnMut(u64, Vec<(usize, PathBuf)>) -> Option<Known>,
    ) -> Result<u64> {
        let mut read = 0;
        let mut on_disk = Vec::new();
        {
            let mut known = self
                .conn
                .prepare("SELECT id, sig FROM stripe ORDER BY id")?;
            let rows = known.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
            let mut known: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for r in rows {
                let (id, sig) = r?;
                known.insert(id, sig);
            }
            for (id, f) in files {
                let sig = signature(f);
                if known.remove(id).as_ref() != Some(&sig) {
                    on_disk.push((*id, sig));
                }
            }
            let tx = self.conn.unchecked_transaction()?;
            for id in known.keys() {
                tx.execute("DELETE FROM member WHERE stripe = ?1", params![*id as i64])?;
                tx.execute("DELETE FROM stripe WHERE id = ?1", params![*id as i64])?;
            }
            tx.commit()?;
        }
        for (id, sig) in on_disk {
            // unwrap-free: the id came from `files`
            let f = files.get(&id).cloned().unwrap_or_default();
            let k = load(id, f).unwrap_or_else(Known::unreadable);
            self.record(id, &sig, &k)?;
            read += 1;
        }
        Ok(read)
    }

    /// Records what stripe `id`'s files (with signature `sig`) hold.
    pub fn record(&mut self, id: u64, sig: &[u8], k: &Known) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM member WHERE stripe = ?1", params![id as i64])?;
        tx.execute(
            "INSERT OR REPLACE INTO stripe (id, sig, m, readable) VALUES (?1, ?2, ?3, ?4)",
            params![id as i64, sig, k.m, k.readable],
        )?;
        {
            let mut ins = tx.prepare(
                "INSERT OR REPLACE INTO member (stripe, pos, pack, size) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (pos, (p, size)) in k.members.iter().enumerate() {
                ins.execute(params![
                    id as i64,
                    pos as i64,
                    p.as_bytes().as_slice(),
                    *size as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops stripe `id` (its files are gone).
    pub fn remove(&mut self, id: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM member WHERE stripe = ?1", params![id as i64])?;
        tx.execute("DELETE FROM stripe WHERE id = ?1", params![id as i64])?;
        tx.commit()?;
        Ok(())
    }

    /// What the index knows of stripe `id`.
    pub fn stripe(&self, id: u64) -> Result<Option<Known>> {
        let row = self
            .conn
            .query_row(
                "SELECT m, readable FROM stripe WHERE id = ?1",
                params![id as i64],
                |r| Ok((r.get::<_, u32>(0)?, r.get::<_, bool>(1)?)),
            )
            .optional()?;
        let Some((m, readable)) = row else {
            return Ok(None);
        };
        let mut q = self
            .conn
            .prepare("SELECT pack, size FROM member WHERE stripe = ?1 ORDER BY pos")?;
        let rows = q.query_map(params![id as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        let mut members = Vec::new();
        for r in rows {
            let (p, size) = r?;
            let p: [u8; 32] = p
                .try_into()
                .map_err(|_| Error::Corrupt("stripe index: a pack id of the wrong size".into()))?;
            members.push((PackId(p), size));
        }
        Ok(Some(Known {
            m,
            members,
            readable,
        }))
    }

    /// For each pack, whether it is in no stripe: one read transaction.
    pub fn unprotected(&self, packs: &[(PackId, u64)]) -> Result<Vec<bool>> {
        let tx = self.conn.unchecked_transaction()?;
        let mut q = tx.prepare_cached("SELECT 1 FROM member WHERE pack = ?1 LIMIT 1")?;
        let mut out = Vec::with_capacity(packs.len());
        for (p, _) in packs {
            out.push(
                q.query_row(params![p.as_bytes().as_slice()], |_| Ok(()))
                    .optional()?
                    .is_none(),
            );
        }
        drop(q);
        tx.commit()?;
        Ok(out)
    }
}
