//! A store's commit counter, `REPO/commits`: one decimal number that every
//! snapshot commit raises by one, durably, before the snapshot file is
//! written. It never goes down, so a repository directory put back from an
//! older copy of itself shows a smaller number than one seen before: a
//! server keeps the highest it saw of each namespace outside the namespace
//! and refuses to serve one that went back (see `net::rollback`).

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::store::LocalStore;

/// The counter's file in a store directory.
pub const FILE: &str = "commits";
/// The lock that orders concurrent commits' increments.
const LOCK: &str = "commits.lock";

/// The counter of the store at `root` (0 when it has none: no commit yet,
/// or a store from before the counter).
pub fn read(root: &Path) -> Result<u64> {
    read_file(&root.join(FILE))
}

/// A counter kept in the file `path` (0 when there is none).
pub fn read_file(path: &Path) -> Result<u64> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| {
            Error::Corrupt(format!(
                "{}: {:?} is not a commit counter",
                path.display(),
                s.chars().take(40).collect::<String>()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Raises the counter by one, durably (temporary file, fsync, rename, fsync
/// of the directory); returns the new value.
pub(crate) fn bump(store: &LocalStore) -> Result<u64> {
    let _order = store.lock_named(LOCK, true)?;
    let root = store.root();
    let n = read(root)?.saturating_add(1);
    crate::store::replace_file(
        &root.join("tmp"),
        &root.join(FILE),
        n.to_string().as_bytes(),
    )?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_from_nothing_and_refuses_garbage() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(&d.path().join("r")).unwrap();
        assert_eq!(read(s.root()).unwrap(), 0);
        assert_eq!(bump(&s).unwrap(), 1);
        assert_eq!(bump(&s).unwrap(), 2);
        assert_eq!(read(s.root()).unwrap(), 2);
        fs::write(s.root().join(FILE), "x").unwrap();
        assert!(bump(&s).is_err());
    }
}
