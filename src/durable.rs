//! Durable files: written to `tmp/`, fsynced, linked or renamed into
//! place, the directory fsynced; and the operator log. The primitives under
//! the local store and the directory object backend alike, so neither
//! imports the other for them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::error::{Error, IoContext, Result};

/// Appends one JSON line to the store's `REPO/operator.log`, fsynced: the
/// record of an operator's override.
pub fn append_operator_log(root: &Path, entry: &serde_json::Value) -> Result<()> {
    let path = root.join("operator.log");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .at(&path)?;
    writeln!(log, "{entry}")
        .and_then(|()| log.sync_all())
        .at(&path)
}

/// Fsyncs a directory so a rename or link in it is durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes `bytes` to `path` once: temporary file, fsync, link without
/// replacing, fsync of the directory. Fails with `Conflict` if `path` exists.
pub fn write_once(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = durable_tmp(tmp_dir, bytes)?;
    let r = link_into_place(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match r? {
        true => Ok(()),
        false => Err(Error::Conflict(format!(
            "{} exists already; never overwritten",
            path.display()
        ))),
    }
}

/// Replaces the metadata file `path` atomically: temporary file in
/// `tmp_dir` (same file system), fsync, rename over `path`, fsync of its
/// directory. For the store's own metadata, never for objects.
pub fn replace_file(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = durable_tmp(tmp_dir, bytes)?;
    rename_into_place(&tmp, path)
}

/// Like [`replace_file`] through the fixed temporary name `tmp` (truncated
/// if a crash left it): for a file with a single writer outside a
/// repository, where a crash must leave no litter of random names.
pub fn replace_file_via(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(tmp).at(tmp)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).at(tmp)?;
    rename_into_place(tmp, path)
}

/// Renames the durable `tmp` over `path` and fsyncs the directory; `tmp`
/// is removed if the rename fails.
pub(crate) fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    if let Err(e) = fs::rename(tmp, path).at(path) {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    // unwrap: a metadata path always has a parent directory
    fsync_dir(path.parent().expect("metadata path has a parent"))
}

/// Writes `bytes` to a new temporary file in `tmp_dir` and fsyncs it;
/// nothing is left behind on failure.
pub(crate) fn durable_tmp(tmp_dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = tmp_name(tmp_dir);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .at(&tmp)?;
    match f.write_all(bytes).and_then(|_| f.sync_all()).at(&tmp) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            drop(f);
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub(crate) fn tmp_name(tmp_dir: &Path) -> PathBuf {
    let mut r = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut r);
    tmp_dir.join(format!("{}.tmp", hex::encode(r)))
}

/// Links a durable temporary file to its final name without replacing an
/// existing one (a hard link fails on an existing name, atomically), then
/// fsyncs the directory. Returns `false` when the name existed.
pub(crate) fn link_into_place(tmp: &Path, path: &Path) -> Result<bool> {
    // unwrap: every object path has a parent directory inside the repository
    let dir = path.parent().expect("object path has a parent");
    if !dir.exists() {
        fs::create_dir_all(dir).at(dir)?;
        // unwrap: same as above
        fsync_dir(dir.parent().expect("parent"))?;
    }
    match fs::hard_link(tmp, path) {
        Ok(()) => {
            fsync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}
