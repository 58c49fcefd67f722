//! Copying a repository from one store into a local one, key-free and byte
//! for byte: what a replica server does with the namespaces it pulls from
//! a primary (see `net::replica` for the servers' side).
//!
//! Only what the copy lacks is fetched. Every pack is hashed as it arrives
//! and kept only if it hashes to its name; a snapshot is committed only
//! after every pack it references is held, so a run killed at any point
//! leaves nothing partial visible (an unfinished pack is a temporary file
//! the store sweeps; finished packs wait for the rerun, which finds them).
//! The copy stamps each snapshot by its own clock when it arrives, and
//! extends its lock to at least the primary's; its retention is its own
//! from then on. A snapshot the copy once took and has since removed by
//! its own rules is not taken again: the copied log says so.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::snapshot;
use crate::id::{PackHasher, PackId, SnapshotId};
use crate::retention::Stamp;
use crate::store::{LocalStore, Store};

/// Bytes of a pack fetched per request.
const PIECE: usize = 4 << 20;

/// What one run copied and refused.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    /// Snapshots the source lists.
    pub source_snapshots: usize,
    /// Snapshots committed in the copy by this run.
    pub snapshots_copied: usize,
    /// Packs written by this run.
    pub packs_copied: u64,
    /// Bytes of those packs.
    pub bytes_copied: u64,
    /// Key files written by this run.
    pub keys_copied: usize,
    /// Snapshots held already whose lock or hold was extended to the source's.
    pub locks_extended: usize,
    /// Key files not copied, each with why (a name no store gives, or one
    /// the source could not read).
    pub keys_refused: Vec<Refused>,
    /// Snapshots not copied, each with why (retried by the next run).
    pub refused: Vec<Refused>,
    /// The oldest source snapshot (by the source's stamp) the copy still
    /// lacks after this run, seconds since the epoch: the lag.
    pub oldest_missing: Option<i64>,
    /// The newest source snapshot, by the source's stamp.
    pub newest_source: Option<i64>,
}

/// A snapshot left out of the copy.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// The snapshot (in `keys_refused`: the key file's name).
    pub snapshot: String,
    /// Why.
    pub reason: String,
}

/// The snapshots a copy has taken, kept in `REPO/replicated` (one id per
/// line, appended): a snapshot the copy's own retention removed is not
/// copied back while the source still holds it.
pub struct CopiedLog {
    path: PathBuf,
    ids: HashSet<SnapshotId>,
}

impl CopiedLog {
    /// Reads the log of the store at `root` (empty when there is none).
    /// A line that is not an id (a torn last line) is skipped.
    pub fn open(root: &Path) -> Result<CopiedLog> {
        let path = root.join("replicated");
        let mut ids = HashSet::new();
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    if let Ok(id) = line.at(&path)?.trim().parse::<SnapshotId>() {
                        ids.insert(id);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
        Ok(CopiedLog { path, ids })
    }

    /// Whether `id` was copied once.
    pub fn contains(&self, id: &SnapshotId) -> bool {
        self.ids.contains(id)
    }

    /// Records `id` as copied, durably.
    fn add(&mut self, id: SnapshotId) -> Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .at(&self.path)?;
        // A line torn by a crash is skipped at open; the newline first
        // keeps the next one whole.
        f.write_all(format!("\n{}", id.to_hex()).as_bytes())
            .at(&self.path)?;
        f.sync_all().at(&self.path)?;
        self.ids.insert(id);
        Ok(())
    }
}

/// Copies into `dst` what it lacks of `src`: the config (the first time;
/// a different one is refused), key files, and every snapshot with its
/// packs, oldest first by the source's clock. Locks of snapshots held
/// already are extended where the source's were.
pub fn sync(src: &dyn Store, dst: &LocalStore) -> Result<SyncReport> {
    // One copy at a time: an operator's run waits for a scheduled one.
    let _one = dst.lock_named("replicate.lock", true)?;
    // Read under the lock: a run that held it may have added to it.
    let mut log = CopiedLog::open(dst.root())?;
    let mut report = SyncReport::default();
    let config = match src.read_config() {
        Ok(c) => c,
        // Nothing to copy before the client's first `init`.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    match dst.read_config() {
        Ok(mine) if mine == config => {}
        Ok(_) => {
            return Err(Error::Denied(format!(
                "{} holds a different repository than the source (their config files differ); nothing copied",
                dst.root().display()
            )))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => dst.write_config(&config)?,
        Err(e) => return Err(e),
    }
    let have: HashSet<String> = dst.list_keys()?.into_iter().collect();
    for name in src.list_keys()? {
        if have.contains(&name) {
            continue;
        }
        let written = match src.read_key(&name) {
            Ok(bytes) => dst.write_key(&name, &bytes).map_err(|e| match e.kind() {
                // A name no store gives (`../x`): the source lies.
                ErrorKind::Denied => Ok(e.to_string()),
                _ => Err(e),
            }),
            Err(e) => Err(about_one(src, e)),
        };
        match written {
            Ok(()) => report.keys_copied += 1,
            Err(Ok(reason)) => report.keys_refused.push(Refused {
                snapshot: name,
                reason,
            }),
            Err(Err(e)) => return Err(e),
        }
    }
    let held: HashSet<SnapshotId> = dst.list_snapshots()?.into_iter().collect();
    let listed = src.list_snapshots()?;
    report.source_snapshots = listed.len();
    let mut todo: Vec<(Stamp, SnapshotId)> = Vec::new();
    for id in listed {
        let stamp = match src.stamp(&id) {
            Ok(s) => s,
            // Forgotten on the source between its listing and now.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            // Damaged there: this snapshot waits, the others go on.
            Err(e) => {
                let reason = about_one(src, e)?;
                if !held.contains(&id) && !log.contains(&id) {
                    report.refused.push(Refused {
                        snapshot: id.to_hex(),
                        reason: format!("its stamp could not be read on the source: {reason}"),
                    });
                }
                continue;
            }
        };
        report.newest_source = report.newest_source.max(Some(stamp.received));
        if held.contains(&id) {
            // A run killed between the commit and the log's line: the
            // line now, or the copy's own retention would be undone.
            if !log.contains(&id) {
                log.add(id)?;
            }
            if extend_lock(dst, &id, &stamp)? {
                report.locks_extended += 1;
            }
        } else if !log.contains(&id) {
            todo.push((stamp, id));
        }
    }
    todo.sort_by_key(|(s, id)| (s.received, *id));
    for (stamp, id) in todo {
        match copy_snapshot(src, dst, &id, &stamp, &mut report)? {
            Ok(()) => {
                log.add(id)?;
                report.snapshots_copied += 1;
            }
            Err(reason) => {
                report.oldest_missing = report.oldest_missing.or(Some(stamp.received));
                report.refused.push(Refused {
                    snapshot: id.to_hex(),
                    reason,
                });
            }
        }
    }
    Ok(report)
}

/// Extends `dst`'s lock of `id` to the source's stamp; whether it changed.
/// A lock past the copy's own cap (a source whose clock runs ahead, or
/// that lies) is kept as far as the copy allows, never refused: a refusal
/// would stop every run for good.
fn extend_lock(dst: &LocalStore, id: &SnapshotId, src: &Stamp) -> Result<bool> {
    let mine = dst.stamp(id)?;
    let until = src
        .locked_until
        .min(dst.now().saturating_add(crate::store::MAX_LOCK_SECS));
    if until <= mine.locked_until && (!src.hold || mine.hold) {
        return Ok(false);
    }
    dst.lock(id, until.max(mine.locked_until), src.hold)?;
    Ok(true)
}

/// Copies one snapshot and the packs it needs. The outer error stops the
/// run (the copy's disk, the connection); the inner one refuses this
/// snapshot only (what the source holds is wrong or missing).
fn copy_snapshot(
    src: &dyn Store,
    dst: &LocalStore,
    id: &SnapshotId,
    stamp: &Stamp,
    report: &mut SyncReport,
) -> Result<std::result::Result<(), String>> {
    let bytes = match src.read_snapshot(id) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Err("forgotten on the source during the copy".into()))
        }
        Err(e) => return Ok(Err(about_one(src, e)?)),
    };
    if SnapshotId::of(&bytes) != *id {
        return Ok(Err("the source's file does not hash to its name".into()));
    }
    let file = match snapshot::decode(&bytes) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("the source's file does not decode: {e}"))),
    };
    let mut missing = Vec::new();
    for p in &file.packs {
        if dst.pack_size(p)?.is_none() {
            missing.push(*p);
        }
    }
    if let Err(why) = copy_packs(src, dst, &missing, report)? {
        return Ok(Err(why));
    }
    let got = dst.write_snapshot(&bytes, stamp.group)?;
    debug_assert_eq!(got, *id);
    extend_lock(dst, id, stamp)?;
    Ok(Ok(()))
}

/// Packs copied at once: one request at a time leaves the link idle
/// while each piece is hashed and written (measured on loopback: 231 MB/s
/// with one request in flight, 333 MB/s with four).
const IN_FLIGHT: usize = 4;

/// Copies `packs`, up to [`IN_FLIGHT`] at a time. Stops at the first pack
/// that is refused (the inner error) or at the first failure of the
/// copy's disk or the connection (the outer one); packs copied before are
/// kept for the rerun.
fn copy_packs(
    src: &dyn Store,
    dst: &LocalStore,
    packs: &[PackId],
    report: &mut SyncReport,
) -> Result<std::result::Result<(), String>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let copied = Mutex::new((0u64, 0u64));
    let outcome: Mutex<Option<Result<String>>> = Mutex::new(None);
    let one = |p: &PackId| -> Result<std::result::Result<u64, String>> {
        let size = match src.pack_size(p) {
            Ok(s) => s,
            Err(e) => return Ok(Err(about_one(src, e)?)),
        };
        let Some(size) = size else {
            return Ok(Err(format!(
                "it references pack {p}, which the source does not hold"
            )));
        };
        // Said larger than any pack may be: not downloaded into the
        // replica's disk to find out.
        if size > crate::limits::MAX_PACK_BYTES {
            return Ok(Err(format!(
                "the source says pack {p} is {size} bytes, over the limit of {}",
                crate::limits::MAX_PACK_BYTES
            )));
        }
        Ok(copy_pack(src, dst, p, size)?.map(|()| size))
    };
    std::thread::scope(|sc| {
        for _ in 0..IN_FLIGHT.min(packs.len()) {
            sc.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(p) = packs.get(i) else { break };
                    let failed = match one(p) {
                        Ok(Ok(size)) => {
                            // unwrap (here and below): never held across a panic
                            let mut c = copied.lock().unwrap();
                            c.0 += 1;
                            c.1 += size;
                            continue;
                        }
                        Ok(Err(why)) => Ok(why),
                        Err(e) => Err(e),
                    };
                    stop.store(true, Ordering::SeqCst);
                    outcome.lock().unwrap().get_or_insert(failed);
                }
            });
        }
    });
    let (n, bytes) = *copied.lock().unwrap();
    report.packs_copied += n;
    report.bytes_copied += bytes;
    match outcome.into_inner().unwrap() {
        None => Ok(Ok(())),
        Some(Ok(why)) => Ok(Err(why)),
        Some(Err(e)) => Err(e),
    }
}

/// Copies one pack, checking it against its name before it is kept.
fn copy_pack(
    src: &dyn Store,
    dst: &LocalStore,
    id: &PackId,
    size: u64,
) -> Result<std::result::Result<(), String>> {
    let mut up = dst.upload_pack()?;
    let mut hasher = PackHasher::default();
    let mut buf = Vec::new();
    let mut at = 0u64;
    while at < size {
        let len = PIECE.min((size - at) as usize);
        let span = match src.read_pack_span(id, at, len, &mut buf) {
            Ok(s) => s,
            Err(e) => {
                return Ok(Err(format!(
                    "pack {id} could not be read on the source: {}",
                    about_one(src, e)?
                )))
            }
        };
        let piece = &buf[span];
        hasher.update(piece);
        up.write_all(piece).map_err(Error::RawIo)?;
        at += len as u64;
    }
    let actual = hasher.finalize();
    if actual != *id {
        return Ok(Err(format!(
            "pack {id} on the source hashes to {actual}: damaged there, not copied"
        )));
    }
    up.commit(*id)?;
    Ok(Ok(()))
}

/// Whether an error of the source about one object is about that object
/// (`Ok`, why: damaged or unreadable there, the run goes on without it) or
/// about the source itself (`Err`: it went away, the run stops). An error
/// the source answered (its disk failed under one file) cannot be told
/// from a lost connection by its kind: the source is asked again.
pub(crate) fn about_one(src: &dyn Store, e: Error) -> Result<String> {
    if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) {
        return Ok(e.to_string());
    }
    match src.read_config() {
        Ok(_) => Ok(e.to_string()),
        Err(_) => Err(e),
    }
}

#[cfg(test)]
mod source_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::{SnapshotRecord, SourceKind};

    /// A store holding one pack and one snapshot that lists it.
    fn source(dir: &Path) -> (LocalStore, SnapshotId) {
        let s = LocalStore::create(dir).unwrap();
        s.write_config(b"a repository's config").unwrap();
        let bytes = b"a pack's bytes".to_vec();
        let id = PackId::of(&bytes);
        let mut up = s.upload_pack().unwrap();
        up.write_all(&bytes).unwrap();
        assert!(up.commit(id).unwrap());
        let keys = crate::crypto::Keys::derive(&crate::crypto::MasterKey::from_bytes([7; 32]));
        let rec = SnapshotRecord {
            version: 1,
            time_ns: 0,
            host: "h".into(),
            user: "u".into(),
            source: SourceKind::Tree,
            paths: vec![],
            tags: vec![],
            tree: crate::id::BlobId([0; 32]),
            stats: Default::default(),
            image: None,
        };
        let (_, file) = snapshot::encode(&keys, vec![id], &rec, &mut rand::rngs::OsRng);
        let snap = s.write_snapshot(&file, None).unwrap();
        (s, snap)
    }

    #[test]
    fn a_copy_whose_log_line_was_lost_is_logged_and_not_taken_back_after_its_removal() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (src, snap) = source(a.path());
        let dst = LocalStore::create(b.path()).unwrap();
        let rep = sync(&src, &dst).unwrap();
        assert_eq!((rep.snapshots_copied, rep.packs_copied), (1, 1));
        // Killed after the commit, before the log's line.
        std::fs::remove_file(b.path().join("replicated")).unwrap();
        assert!(!CopiedLog::open(b.path()).unwrap().contains(&snap));
        let rep = sync(&src, &dst).unwrap();
        assert_eq!(rep.snapshots_copied, 0);
        assert!(CopiedLog::open(b.path()).unwrap().contains(&snap));
        // The copy's own rules remove it; the source still lists it.
        let hex = snap.to_hex();
        std::fs::remove_file(b.path().join("snapshots").join(&hex)).unwrap();
        std::fs::remove_file(b.path().join("snapshots").join(format!("{hex}.stamp"))).unwrap();
        let rep = sync(&src, &dst).unwrap();
        assert_eq!(rep.snapshots_copied, 0, "{rep:?}");
        assert!(dst.list_snapshots().unwrap().is_empty());
    }
}
