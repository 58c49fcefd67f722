//! Copies from a source that lies, fails in one place, or goes away: what
//! the copy holds is never harmed, one bad snapshot does not stop the
//! others, and what the copy's own rules removed stays removed.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;
use crate::retention::{Policy, DAY_SECS};
use crate::store::{PackUpload, MAX_LOCK_SECS};

/// What a [`Source`] falsifies.
#[derive(Default)]
struct Lies {
    /// Every stamp says locked 20 years ahead.
    far_lock: bool,
    /// This snapshot's stamp does not parse there.
    corrupt_stamp: Option<SnapshotId>,
    /// Reads of this pack fail as a disk's would (the server's answer).
    failing_pack: Option<PackId>,
    /// This pack is said to be this large.
    size_of: Option<(PackId, u64)>,
    /// A key file whose name climbs out of `keys/`.
    bad_key: bool,
}

/// A source: a local store whose answers a test falsifies.
struct Source {
    s: LocalStore,
    lies: Lies,
    /// Reads of `lies.size_of`'s pack.
    reads: AtomicU64,
    /// Gone: every call fails as a lost connection does.
    gone: AtomicBool,
}

impl Source {
    fn up(&self) -> Result<()> {
        if self.gone.load(Ordering::SeqCst) {
            return Err(Error::RawIo(std::io::Error::other(
                "server quic://p:1: connection lost",
            )));
        }
        Ok(())
    }
}

impl Store for Source {
    fn read_config(&self) -> Result<Vec<u8>> {
        self.up()?;
        self.s.read_config()
    }
    fn write_config(&self, b: &[u8]) -> Result<()> {
        self.s.write_config(b)
    }
    fn list_keys(&self) -> Result<Vec<String>> {
        self.up()?;
        let mut k = self.s.list_keys()?;
        if self.lies.bad_key {
            k.push("../../../escaped".into());
        }
        Ok(k)
    }
    fn read_key(&self, name: &str) -> Result<Vec<u8>> {
        self.up()?;
        if name.contains('/') {
            return Ok(b"planted".to_vec());
        }
        self.s.read_key(name)
    }
    fn write_key(&self, n: &str, b: &[u8]) -> Result<()> {
        self.s.write_key(n, b)
    }
    fn remove_key(&self, n: &str) -> Result<()> {
        self.s.remove_key(n)
    }
    fn upload_pack(&self) -> Result<Box<dyn PackUpload>> {
        self.s.upload_pack()
    }
    fn pack_size(&self, id: &PackId) -> Result<Option<u64>> {
        self.up()?;
        match self.lies.size_of {
            Some((p, n)) if p == *id => Ok(Some(n)),
            _ => self.s.pack_size(id),
        }
    }
    fn read_pack(&self, id: &PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.up()?;
        if self.lies.size_of.is_some_and(|(p, _)| p == *id) {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        if self.lies.failing_pack == Some(*id) {
            return Err(Error::RawIo(std::io::Error::other(
                "server error: storage error: input/output error",
            )));
        }
        self.s.read_pack(id, offset, len)
    }
    fn for_each_pack(&self, f: &mut dyn FnMut(PackId, u64) -> Result<()>) -> Result<()> {
        self.s.for_each_pack(f)
    }
    fn write_snapshot(&self, b: &[u8], g: Option<crate::id::SnapshotGroup>) -> Result<SnapshotId> {
        self.s.write_snapshot(b, g)
    }
    fn list_snapshots(&self) -> Result<Vec<SnapshotId>> {
        self.up()?;
        self.s.list_snapshots()
    }
    fn read_snapshot(&self, id: &SnapshotId) -> Result<Vec<u8>> {
        self.up()?;
        self.s.read_snapshot(id)
    }
    fn stamp(&self, id: &SnapshotId) -> Result<Stamp> {
        self.up()?;
        if self.lies.corrupt_stamp == Some(*id) {
            return Err(Error::Corrupt(
                "server refused: stamp of snapshot: EOF".into(),
            ));
        }
        let mut st = self.s.stamp(id)?;
        if self.lies.far_lock {
            st.locked_until = st.received + 20 * 365 * DAY_SECS;
        }
        Ok(st)
    }
    fn forget(&self, id: &SnapshotId) -> Result<()> {
        self.s.forget(id)
    }
    fn lock(&self, id: &SnapshotId, until: i64, hold: bool) -> Result<Stamp> {
        self.s.lock(id, until, hold)
    }
    fn repair(&self, id: &PackId) -> Result<bool> {
        self.s.repair(id)
    }
}

/// No lock window: the copy's own operator may forget at once.
fn unlocked() -> Policy {
    Policy {
        lock_secs: 0,
        ..Policy::default()
    }
}

/// A source at `dir/src` with a config, a key file and `n` snapshots of
/// one pack each, with `lies`; and an empty copy at `dir/dst`.
fn fixture(
    dir: &Path,
    n: usize,
    lies: impl FnOnce(&[(SnapshotId, PackId)]) -> Lies,
) -> (Source, LocalStore, Vec<(SnapshotId, PackId)>) {
    let s = LocalStore::create(&dir.join("src"))
        .unwrap()
        .with_policy(unlocked());
    s.write_config(b"the config").unwrap();
    s.write_key("00ab", b"a key file").unwrap();
    let mut made = Vec::new();
    for i in 0..n {
        let bytes = format!("pack {i} ").repeat(1000 + i).into_bytes();
        let p = PackId::of(&bytes);
        let mut u = s.upload_pack().unwrap();
        u.write_all(&bytes).unwrap();
        u.commit(p).unwrap();
        let mut file = snapshot::MAGIC_SNAPSHOT.to_vec();
        file.extend(1u32.to_le_bytes());
        file.extend(p.as_bytes());
        file.push(i as u8);
        made.push((s.write_snapshot(&file, None).unwrap(), p));
    }
    let src = Source {
        s,
        lies: lies(&made),
        reads: AtomicU64::new(0),
        gone: AtomicBool::new(false),
    };
    let dst = LocalStore::create(&dir.join("dst"))
        .unwrap()
        .with_policy(unlocked());
    (src, dst, made)
}

fn copied(dst: &LocalStore) -> Vec<SnapshotId> {
    dst.list_snapshots().unwrap()
}

#[test]
fn a_lock_beyond_the_copys_cap_is_kept_as_far_as_it_may_go() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst, made) = fixture(d.path(), 2, |_| Lies {
        far_lock: true,
        ..Lies::default()
    });
    let rep = sync(&src, &dst).expect("the run goes on");
    assert_eq!(rep.snapshots_copied, 2, "{rep:?}");
    for (id, _) in &made {
        let st = dst.stamp(id).unwrap();
        let cap = dst.now() + MAX_LOCK_SECS;
        assert!(
            st.locked_until <= cap && st.locked_until > cap - 3600,
            "{st:?}"
        );
    }
    // Held already: the next run extends as far as it may, and goes on.
    sync(&src, &dst).expect("the second run goes on");
    assert_eq!(copied(&dst).len(), 2);
}

#[test]
fn a_snapshot_whose_stamp_the_source_cannot_read_is_refused_alone() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst, made) = fixture(d.path(), 3, |m| Lies {
        corrupt_stamp: Some(m[1].0),
        ..Lies::default()
    });
    let rep = sync(&src, &dst).expect("the run goes on");
    assert_eq!(copied(&dst).len(), 2, "{rep:?}");
    assert!(!copied(&dst).contains(&made[1].0));
    assert_eq!(rep.refused.len(), 1, "{rep:?}");
    assert_eq!(rep.refused[0].snapshot, made[1].0.to_hex());
}

#[test]
fn a_pack_the_sources_disk_cannot_read_refuses_its_snapshot_alone() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst, made) = fixture(d.path(), 3, |m| Lies {
        failing_pack: Some(m[0].1),
        ..Lies::default()
    });
    let rep = sync(&src, &dst).expect("the run goes on");
    let mut want = vec![made[1].0, made[2].0];
    want.sort();
    assert_eq!(copied(&dst), want, "{rep:?}");
    assert_eq!(rep.refused.len(), 1, "{rep:?}");
    assert!(
        rep.refused[0].reason.contains("input/output error"),
        "{rep:?}"
    );
    assert_eq!(dst.pack_size(&made[0].1).unwrap(), None);
}

#[test]
fn a_source_that_goes_away_still_fails_the_run() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst, _) = fixture(d.path(), 2, |_| Lies::default());
    src.gone.store(true, Ordering::SeqCst);
    let e = sync(&src, &dst).expect_err("a lost source stops the run");
    assert!(e.to_string().contains("connection lost"), "{e}");
}

#[test]
fn a_key_file_name_that_climbs_out_is_left_out_and_the_rest_copied() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst, _) = fixture(d.path(), 2, |_| Lies {
        bad_key: true,
        ..Lies::default()
    });
    let rep = sync(&src, &dst).expect("the run goes on");
    assert_eq!(copied(&dst).len(), 2, "{rep:?}");
    assert_eq!(dst.list_keys().unwrap(), vec!["00ab".to_string()]);
    assert!(!d.path().join("escaped").exists());
    assert_eq!(rep.keys_refused.len(), 1, "{rep:?}");
}
#[test]
fn a_pack_said_to_be_over_the_limit_is_refused_before_any_read() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst, made) = fixture(d.path(), 3, |m| Lies {
        size_of: Some((m[2].1, crate::limits::MAX_PACK_BYTES + 1)),
        ..Lies::default()
    });
    let rep = sync(&src, &dst).unwrap();
    assert_eq!(copied(&dst).len(), 2, "{rep:?}");
    assert!(!copied(&dst).contains(&made[2].0));
    assert_eq!(src.reads.load(Ordering::SeqCst), 0, "{rep:?}");
    assert!(rep.refused[0].reason.contains("limit"), "{rep:?}");
    // Nothing of it was written aside either.
    assert_eq!(
        std::fs::read_dir(dst.root().join("tmp")).unwrap().count(),
        0
    );
}

#[test]
fn a_pack_said_to_be_shorter_or_longer_is_refused_and_the_rest_copied() {
    let d = tempfile::tempdir().unwrap();
    for (i, delta) in [-1i64, 1, 4 << 20].into_iter().enumerate() {
        let dir = d.path().join(i.to_string());
        let mut real = 0;
        let (src, dst, made) = fixture(&dir, 2, |m| {
            let s = LocalStore::open(&dir.join("src")).unwrap();
            real = s.pack_size(&m[0].1).unwrap().unwrap();
            Lies {
                size_of: Some((m[0].1, (real as i64 + delta) as u64)),
                ..Lies::default()
            }
        });
        assert!(real > 0);
        let rep = sync(&src, &dst).expect("the run goes on");
        assert_eq!(copied(&dst), vec![made[1].0], "{delta}: {rep:?}");
        assert_eq!(dst.pack_size(&made[0].1).unwrap(), None);
    }
}
