//! What this client has seen of a repository, so that a repository put back
//! from an older copy of itself (rolled back by a server's disk restore, or
//! by someone who controls the store) does not pass for the truth. Every
//! snapshot in such a copy opens, so nothing else would notice.
//!
//! Kept in `<cache dir>/<repository id>/seen.json`, beside the cache
//! database but not in it: a rebuilt cache keeps it. It holds the newest
//! [`KEEP`] snapshots the client saw (id, record time, the store's expiry
//! and hold), the newest record time it saw, and the snapshots this client
//! is forgetting. A snapshot it saw that the store no longer lists is
//! *vanished* unless this client forgot it or its expiry explains it;
//! vanished snapshots stay in the file, so every later run says so again,
//! until [`Seen::accept`] takes the repository as it is. A forget by
//! another client (or an operator's `forget --damaged`) looks the same from
//! here, and is reported the same way.
//!
//! Readers and writers take an flock on `seen.lock`, so a forget and a
//! listing of the same client never cross. The file is replaced atomically
//! (temporary file, fsync, rename, fsync of the directory).

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Repository, Snapshot};
use crate::error::{Error, IoContext, Result};
use crate::id::SnapshotId;
use crate::retention::DAY_SECS;

/// The newest snapshots remembered (by record time), vanished ones included.
pub const KEEP: usize = 64;
/// Forgets in progress remembered at most.
const FORGETTING_KEEP: usize = 64;
/// How far past the client's clock a snapshot's expiry still explains that
/// it is gone: the store sweeps by its own clock, which may run ahead.
pub const EXPIRY_SLACK_SECS: i64 = DAY_SECS;
/// The state file, its temporary name and the lock beside it.
const FILE: &str = "seen.json";
const TMP: &str = "seen.json.tmp";
const LOCK: &str = "seen.lock";
/// The largest state file read (it holds at most a few hundred ids).
const MAX_BYTES: u64 = 1 << 20;

/// One snapshot as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenSnapshot {
    /// Its id.
    pub id: SnapshotId,
    /// Its record's time (the client's clock when it was taken), ns.
    pub time_ns: i64,
    /// The store's expiry for it, when known (seconds).
    #[serde(default)]
    pub expires: Option<i64>,
    /// On legal hold when last seen. Informative only: a hold can be
    /// released and the long-expired snapshot swept, so a past expiry
    /// explains it all the same (a rollback still shows through the newer
    /// snapshots that vanish with it).
    #[serde(default)]
    pub hold: bool,
}

impl SeenSnapshot {
    /// What a listing shows of a snapshot.
    pub fn of(s: &Snapshot) -> SeenSnapshot {
        SeenSnapshot {
            id: s.id,
            time_ns: s.record.time_ns,
            expires: s.stamp.map(|t| t.expires),
            hold: s.stamp.is_some_and(|t| t.hold),
        }
    }

    /// Whether its expiry explains that it is gone at `now` (seconds, the
    /// client's clock).
    fn expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|e| e <= now + EXPIRY_SLACK_SECS)
    }
}

/// The state file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// The newest record time seen (ns).
    #[serde(default)]
    newest_ns: i64,
    /// The newest snapshots seen, newest first; vanished ones included.
    #[serde(default)]
    seen: Vec<SeenSnapshot>,
    /// Snapshots this client is forgetting or forgot.
    #[serde(default)]
    forgetting: Vec<SnapshotId>,
}

/// The state, locked for one command; [`Seen::save`] writes it back.
pub struct Seen {
    dir: PathBuf,
    state: State,
    /// Found vanished by [`Seen::vanished`]: kept whatever the bound.
    missing: HashSet<SnapshotId>,
    /// Why the file was started over, when it did not read.
    notice: Option<String>,
    /// Held for the command's life (`None` only in the fuzz target).
    _lock: Option<nix::fcntl::Flock<File>>,
}

impl Repository {
    /// What this client has seen of this repository, locked until dropped.
    pub fn seen(&self) -> Result<Seen> {
        Seen::open(&self.cache_dir)
    }
}

impl Seen {
    /// Locks and reads the state in `dir` (created if missing). A file that
    /// does not read is moved aside and the state starts over, with a
    /// [`Seen::notice`] saying so.
    pub fn open(dir: &Path) -> Result<Seen> {
        fs::create_dir_all(dir).at(dir)?;
        let lp = dir.join(LOCK);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lp)
            .at(&lp)?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(&lp, e.into()))?;
        let path = dir.join(FILE);
        let (state, notice) = match read(&path) {
            Ok(s) => (s, None),
            Err(e) if e.kind() != crate::error::ErrorKind::Corrupt => return Err(e),
            Err(e) => {
                let aside = dir.join("seen.json.bad");
                fs::rename(&path, &aside).at(&aside)?;
                let why = format!(
                    "{} does not read ({e}); moved to {}: what this client saw of the repository starts over",
                    path.display(),
                    aside.display()
                );
                (State::default(), Some(why))
            }
        };
        Ok(Seen {
            dir: dir.to_path_buf(),
            state,
            missing: HashSet::new(),
            notice,
            _lock: Some(lock),
        })
    }

    /// Why the state started over, if it did.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// The newest record time seen (ns; 0 when none).
    pub fn newest_ns(&self) -> i64 {
        self.state.newest_ns
    }

    /// The snapshots seen before that `present` (the store's listing) no
    /// longer holds, that this client did not forget and whose expiry
    /// (by `now`, seconds) does not explain it, newest first. Those that
    /// are explained are dropped from the state; the vanished stay.
    pub fn vanished(&mut self, present: &HashSet<SnapshotId>, now: i64) -> Vec<SeenSnapshot> {
        let forgetting: HashSet<SnapshotId> = self.state.forgetting.iter().copied().collect();
        let mut gone = Vec::new();
        self.state.seen.retain(|s| {
            if present.contains(&s.id) {
                return true;
            }
            if forgetting.contains(&s.id) || s.expired(now) {
                return false;
            }
            gone.push(s.clone());
            true
        });
        // A finished forget needs no memory once its snapshot is gone.
        self.state.forgetting.retain(|id| present.contains(id));
        self.missing = gone.iter().map(|s| s.id).collect();
        gone
    }

    /// Remembers snapshots seen (newer figures replace older ones), keeping
    /// the vanished and the newest others up to [`KEEP`].
    pub fn record(&mut self, snaps: impl IntoIterator<Item = SeenSnapshot>) {
        for s in snaps {
            self.state.newest_ns = self.state.newest_ns.max(s.time_ns);
            match self.state.seen.iter_mut().find(|o| o.id == s.id) {
                // A stamp that could not be read this time is not "no
                // expiry": the one recorded before still explains it.
                Some(o) if s.expires.is_none() => o.time_ns = s.time_ns,
                Some(o) => *o = s,
                None => self.state.seen.push(s),
            }
        }
        self.state
            .seen
            .sort_by_key(|s| std::cmp::Reverse((s.time_ns, s.id)));
        let mut room = KEEP.saturating_sub(self.missing.len());
        let missing = &self.missing;
        self.state.seen.retain(|s| {
            if missing.contains(&s.id) {
                return true;
            }
            let keep = room > 0;
            room = room.saturating_sub(1);
            keep
        });
    }

    /// Notes, before it is asked of the store, that this client forgets
    /// `id`: once gone, it is not reported.
    pub fn forgetting(&mut self, id: SnapshotId) {
        self.state.forgetting.retain(|f| *f != id);
        self.state.forgetting.push(id);
        let extra = self.state.forgetting.len().saturating_sub(FORGETTING_KEEP);
        self.state.forgetting.drain(..extra);
    }

    /// The outcome of a forget noted with [`Seen::forgetting`].
    pub fn forgot(&mut self, id: SnapshotId, done: bool) {
        if done {
            self.state.seen.retain(|s| s.id != id);
        } else {
            self.state.forgetting.retain(|f| *f != id);
        }
    }

    /// Takes the repository as it is: `present` (every snapshot that opens)
    /// becomes what was seen, and the vanished are forgotten. Returns them.
    pub fn accept(
        &mut self,
        listed: &HashSet<SnapshotId>,
        present: impl IntoIterator<Item = SeenSnapshot>,
    ) -> Vec<SeenSnapshot> {
        let dropped = self
            .state
            .seen
            .iter()
            .filter(|s| !listed.contains(&s.id))
            .cloned()
            .collect();
        self.state = State::default();
        self.missing.clear();
        self.record(present);
        dropped
    }

    /// Writes the state back, atomically.
    pub fn save(&self) -> Result<()> {
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec_pretty(&self.state).expect("seen JSON");
        crate::store::replace_file_via(&self.dir.join(TMP), &self.dir.join(FILE), &bytes)
    }
}

/// Reads the state file; a missing file is an empty state.
fn read(path: &Path) -> Result<State> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_BYTES + 1), &mut bytes).at(path)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(Error::Corrupt(format!("larger than {MAX_BYTES} bytes")));
    }
    decode(&bytes)
}

/// Decodes `seen.json`'s bytes (the cache directory is a convenience,
/// never an authority: anything may be there), within the bounds whatever
/// the file says.
fn decode(bytes: &[u8]) -> Result<State> {
    let mut st: State = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
    st.seen.truncate(KEEP);
    let extra = st.forgetting.len().saturating_sub(FORGETTING_KEEP);
    st.forgetting.drain(..extra);
    Ok(st)
}

/// For the fuzz target: decodes `bytes` as `seen.json`, then runs a
/// listing and a recording over the state; returns the number of
/// snapshots kept and found vanished, which never pass their bounds.
#[doc(hidden)]
pub fn fuzz_state(bytes: &[u8]) -> Option<(usize, usize)> {
    let state = decode(bytes).ok()?;
    let present: HashSet<SnapshotId> = state.seen.iter().step_by(2).map(|s| s.id).collect();
    let newest = state.seen.first().cloned();
    let mut seen = Seen {
        dir: PathBuf::new(),
        state,
        missing: HashSet::new(),
        notice: None,
        _lock: None,
    };
    let gone = seen.vanished(&present, state_now(&seen));
    seen.record(newest);
    Some((seen.state.seen.len(), gone.len()))
}

/// A `now` inside the state's own times, so expiry is exercised both ways.
fn state_now(s: &Seen) -> i64 {
    s.state.newest_ns / 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(n: u8, time: i64, expires: Option<i64>) -> SeenSnapshot {
        SeenSnapshot {
            id: SnapshotId([n; 32]),
            time_ns: time,
            expires,
            hold: false,
        }
    }

    fn ids(v: &[SeenSnapshot]) -> Vec<u8> {
        v.iter().map(|s| s.id.0[0]).collect()
    }

    #[test]
    fn vanished_unless_forgotten_here_or_expired_and_kept_until_accepted() {
        let d = tempfile::tempdir().unwrap();
        let now = 1_000_000;
        let mut s = Seen::open(d.path()).unwrap();
        s.record([
            snap(1, 10, Some(now - 5)),
            snap(2, 20, Some(now + 2 * DAY_SECS)),
            snap(3, 30, Some(now + 2 * DAY_SECS)),
            snap(4, 40, None),
        ]);
        s.forgetting(SnapshotId([3; 32]));
        s.forgot(SnapshotId([3; 32]), true);
        s.save().unwrap();
        drop(s);
        let mut s = Seen::open(d.path()).unwrap();
        assert_eq!(s.newest_ns(), 40);
        // 1 expired, 3 forgotten here: only 2 and 4 are vanished.
        let gone = s.vanished(&HashSet::new(), now);
        assert_eq!(ids(&gone), [4, 2]);
        // Many newer snapshots never push the vanished out.
        s.record((100..200).map(|n| snap(n, n as i64 * 100, None)));
        assert_eq!(s.state.seen.len(), KEEP);
        s.save().unwrap();
        drop(s);
        let mut s = Seen::open(d.path()).unwrap();
        let listed: HashSet<_> = (100..200).map(|n| SnapshotId([n; 32])).collect();
        assert_eq!(ids(&s.vanished(&listed, now)), [4, 2]);
        let dropped = s.accept(&listed, [snap(150, 15_000, None)]);
        assert_eq!(ids(&dropped), [4, 2]);
        assert!(s.vanished(&listed, now).is_empty());
    }

    #[test]
    fn a_failed_forget_explains_nothing_and_a_bad_file_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Seen::open(d.path()).unwrap();
        s.record([snap(1, 10, None)]);
        s.forgetting(SnapshotId([1; 32]));
        s.forgot(SnapshotId([1; 32]), false);
        assert_eq!(ids(&s.vanished(&HashSet::new(), 0)), [1]);
        drop(s);
        fs::write(d.path().join(FILE), b"{ not json").unwrap();
        let s = Seen::open(d.path()).unwrap();
        assert!(s.notice().unwrap().contains("starts over"));
        assert!(s.state.seen.is_empty());
        assert!(d.path().join("seen.json.bad").exists());
    }

    #[test]
    fn a_past_expiry_explains_a_snapshot_last_seen_on_hold() {
        // The hold is released later and the long-expired snapshot swept.
        let d = tempfile::tempdir().unwrap();
        let now = 1_000_000;
        let mut s = Seen::open(d.path()).unwrap();
        let held = |n, expires| SeenSnapshot {
            hold: true,
            ..snap(n, n as i64, Some(expires))
        };
        s.record([held(1, now - 30 * DAY_SECS), held(2, now + 30 * DAY_SECS)]);
        // 2 had a month to live: gone, whatever the hold said.
        assert_eq!(ids(&s.vanished(&HashSet::new(), now)), [2]);
    }

    #[test]
    fn a_stamp_not_read_keeps_the_expiry_recorded_before() {
        let d = tempfile::tempdir().unwrap();
        let now = 1_000_000;
        let mut s = Seen::open(d.path()).unwrap();
        s.record([snap(1, 10, Some(now + 2 * DAY_SECS))]);
        // A later listing could not read its stamp.
        s.record([snap(1, 10, None)]);
        s.save().unwrap();
        drop(s);
        let mut s = Seen::open(d.path()).unwrap();
        assert_eq!(s.state.seen[0].expires, Some(now + 2 * DAY_SECS));
        // A month later it expired and was swept: not vanished.
        assert!(s.vanished(&HashSet::new(), now + 30 * DAY_SECS).is_empty());
        // A stamp read again replaces it.
        s.record([snap(2, 20, Some(now)), snap(2, 20, Some(now + DAY_SECS))]);
        assert_eq!(s.state.seen[0].expires, Some(now + DAY_SECS));
    }
}
