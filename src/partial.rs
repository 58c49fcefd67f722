//! Partial files in a store's `tmp/`: pack uploads, parity being computed,
//! packs being repaired. Each is held under an flock for as long as its
//! writer lives, so a new session can remove what killed writers left
//! (a crash loop must not fill the disk) without touching a live one.
//! Owns only `tmp/*.part` and `tmp/*.new`; other scratch files in `tmp/`
//! are the grace-period sweep's (see `LocalStore::prune`).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

/// The suffix of a partial file that its writer holds locked.
const PART: &str = "part";
/// The suffix it has between its creation and its rename to `.part`, also
/// locked by its writer.
const NEW: &str = "new";

/// Whether a file name's extension is a partial file's (either suffix):
/// such a file is never judged by its age. A `.part` goes when no one holds
/// its lock; a `.new` is never touched, since its writer has created it but
/// may not hold its lock yet (one a writer died with in that instant stays,
/// empty).
pub(crate) fn is_partial(ext: &std::ffi::OsStr) -> bool {
    ext == PART || ext == NEW
}

/// A new partial file in `tmp_dir`, open for writing and locked. The lock
/// is held by a duplicate of the file's descriptor: it lasts until the
/// returned [`Held`] is dropped or the process dies.
pub(crate) fn create(tmp_dir: &Path) -> Result<(PathBuf, File, Held)> {
    // Created under a name no sweep touches (see `is_partial`), locked,
    // then renamed: a sweep cannot find it between its creation and its lock.
    let new = crate::store::tmp_name(tmp_dir).with_extension(NEW);
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .open(&new)
        .at(&new)?;
    let held = f
        .try_clone()
        .and_then(|d| {
            Flock::lock(d, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| io::Error::from(e))
        })
        .at(&new);
    let part = new.with_extension(PART);
    let renamed = held.and_then(|h| fs::rename(&new, &part).at(&part).map(|_| h));
    match renamed {
        Ok(h) => Ok((part, f, Held(h))),
        Err(e) => {
            let _ = fs::remove_file(&new);
            Err(e)
        }
    }
}

/// The lock on a partial file; released when dropped.
pub(crate) struct Held(#[allow(dead_code)] Flock<File>);

/// Calls `f` with each partial file in `tmp_dir` that no live process
/// holds (its writer is dead), its length, and its lock, taken.
fn for_each_abandoned(tmp_dir: &Path, f: &mut dyn FnMut(&Path, u64, Flock<File>)) -> Result<()> {
    for e in fs::read_dir(tmp_dir).at(tmp_dir)? {
        let path = e.at(tmp_dir)?.path();
        if path.extension().is_none_or(|x| x != PART) {
            continue;
        }
        // Gone meanwhile (committed, or another sweep): nothing to do.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => f(&path, len, lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
            Err((_, e)) => return Err(Error::io(&path, e.into())),
        }
    }
    Ok(())
}

/// Removes the partial files in `tmp_dir` that no live process holds.
/// Returns how many it removed and the bytes they held.
pub(crate) fn sweep(tmp_dir: &Path) -> Result<(u64, u64)> {
    let mut removed = (0, 0);
    // Removed under the lock, so no one can take it meanwhile.
    for_each_abandoned(tmp_dir, &mut |path, len, _lock| {
        if fs::remove_file(path).is_ok() {
            removed.0 += 1;
            removed.1 += len;
        }
    })?;
    Ok(removed)
}

/// Bytes of the partial files in `tmp_dir` that no live process holds:
/// what killed uploads left, which takes disk space until swept and counts
/// against a namespace's quota. Live uploads are counted by their
/// reservation instead (see `net::quota`), and other writers' scratch files
/// (parity, repairs, prune's lists) by no one.
pub(crate) fn abandoned_bytes(tmp_dir: &Path) -> Result<u64> {
    let mut total = 0;
    // The lock is let go at once.
    for_each_abandoned(tmp_dir, &mut |_, len, _lock| total += len)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_takes_only_what_no_one_holds() {
        let d = tempfile::tempdir().unwrap();
        let (live, mut f, held) = create(d.path()).unwrap();
        std::io::Write::write_all(&mut f, b"in progress").unwrap();
        let (dead, _, lock) = create(d.path()).unwrap();
        drop(lock);
        let other = d.path().join("scratch.tmp");
        fs::write(&other, b"not a partial file").unwrap();
        assert_eq!(sweep(d.path()).unwrap(), (1, 0));
        assert!(live.exists() && !dead.exists() && other.exists());
        // Neither the live upload nor the other scratch file is abandoned.
        assert_eq!(abandoned_bytes(d.path()).unwrap(), 0);
        drop(held);
        assert_eq!(abandoned_bytes(d.path()).unwrap(), 11);
        assert_eq!(sweep(d.path()).unwrap(), (1, 11));
        assert!(!live.exists());
    }
}
