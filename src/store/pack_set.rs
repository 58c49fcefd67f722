//! The sweep's scratch set of referenced packs, on disk (SQLite), so
//! collection's memory does not grow with the repository.

use super::*;

/// A set of pack names in a temporary SQLite database under a store's
/// `tmp/`, removed when dropped: what a sweep must look up by name without
/// holding every name of the repository in memory. Its page cache is small
/// and bounded; the rest stays in the file.
pub(crate) struct PackSet {
    pub(super) conn: rusqlite::Connection,
    pub(super) path: PathBuf,
}

/// The page cache of a [`PackSet`], in KiB.
pub(super) const PACK_SET_CACHE_KIB: i64 = 4096;

impl PackSet {
    /// An empty set in a new file under `tmp_dir`.
    pub(crate) fn create(tmp_dir: &Path) -> Result<PackSet> {
        let path = tmp_name(tmp_dir);
        let conn = rusqlite::Connection::open(&path).map_err(|e| sql_err(&path, e))?;
        let set = PackSet { conn, path };
        // Scratch data: no journal, no fsync; a crash leaves a file in tmp/.
        set.conn
            .execute_batch(&format!(
                "PRAGMA journal_mode = OFF;
                 PRAGMA synchronous = OFF;
                 PRAGMA locking_mode = EXCLUSIVE;
                 PRAGMA temp_store = FILE;
                 PRAGMA cache_size = -{PACK_SET_CACHE_KIB};
                 CREATE TABLE packs (id BLOB PRIMARY KEY) WITHOUT ROWID;"
            ))
            .map_err(|e| sql_err(&set.path, e))?;
        Ok(set)
    }

    /// Adds these names, in one transaction.
    pub(crate) fn insert(&mut self, ids: &[PackId]) -> Result<()> {
        let path = &self.path;
        let res = (|| {
            let tx = self.conn.transaction()?;
            {
                let mut st = tx.prepare_cached("INSERT OR IGNORE INTO packs (id) VALUES (?1)")?;
                for id in ids {
                    st.execute([&id.as_bytes()[..]])?;
                }
            }
            tx.commit()
        })();
        res.map_err(|e| sql_err(path, e))
    }

    /// Whether the set holds this name.
    pub(crate) fn contains(&self, id: &PackId) -> Result<bool> {
        let res = (|| {
            let mut st = self
                .conn
                .prepare_cached("SELECT 1 FROM packs WHERE id = ?1")?;
            st.exists([&id.as_bytes()[..]])
        })();
        res.map_err(|e| sql_err(&self.path, e))
    }

    /// The names of the set from `lo` to `hi`, both included.
    pub(crate) fn range(&self, lo: &PackId, hi: &PackId) -> Result<HashSet<PackId>> {
        let res = (|| {
            let mut st = self
                .conn
                .prepare_cached("SELECT id FROM packs WHERE id BETWEEN ?1 AND ?2")?;
            let rows = st.query_map([&lo.as_bytes()[..], &hi.as_bytes()[..]], |r| {
                r.get::<_, Vec<u8>>(0)
            })?;
            let mut out = HashSet::new();
            for r in rows {
                // a name always has 32 bytes: only this type writes the table
                if let Ok(b) = <[u8; 32]>::try_from(r?) {
                    out.insert(PackId(b));
                }
            }
            Ok(out)
        })();
        res.map_err(|e| sql_err(&self.path, e))
    }
}

impl Drop for PackSet {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub(super) fn sql_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::io(path, io::Error::other(e))
}
