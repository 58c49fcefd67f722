//! A namespace's bucket: the tier of a local store whose bytes must outlive
//! the server's disk. Every object a rebuild needs (config, key files,
//! packs, snapshot files, stamps, the namespace's settings) is written to
//! an [`ObjectBackend`] *before* it becomes visible in the local directory,
//! under the same relative name, so the bucket is the source of truth and
//! the directory can be rebuilt from it alone ([`Bucket::rebuild`]).
//!
//! The bucket's own Object Lock is the second wall behind the store's lock
//! window; this module keeps its invariant: every pack that a locked or held
//! snapshot references has a retain-until at least as late as that
//! snapshot's `locked_until` (and the legal hold with it). A commit extends
//! its packs first ([`Bucket::cover_packs`]), with [`SLACK_SECS`] to spare so
//! a pack that daily backups share is extended about once a week, not once
//! a day; what each pack was given is remembered in `REPO/bucket.db`, a
//! cache (lost, it costs one request per pack at the next commit).
//!
//! Collection is in two phases ([`Bucket::collected`], [`Bucket::purge`]):
//! a collected pack gets a delete marker at once, and its versions are
//! purged only when their retention has lapsed, and only while the
//! bucket's clock agrees with ours within [`MAX_SKEW_SECS`].
//!
//! The layout under the server's prefix:
//!
//! ```text
//! namespaces/<ns>/config, keys/<name>, packs/<2 hex>/<64 hex>,
//! namespaces/<ns>/snapshots/<64 hex>, snapshots/<64 hex>.stamp,
//! namespaces/<ns>/policy.json, parity.json
//! ```

use std::ops::ControlFlow;
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use super::*;
use crate::object::{LockMode, ObjectBackend, ObjectKey, PutOutcome, Retention};

/// Retention given to a pack beyond what the commit in hand needs, at
/// most: never more than the lock window itself (see [`slack`]).
pub const SLACK_SECS: i64 = 7 * retention::DAY_SECS;

/// The slack of a namespace with `policy`: [`SLACK_SECS`], or the lock
/// window when that is shorter, so a namespace without a lock window
/// leaves its packs without retention.
pub fn slack(policy: &Policy) -> i64 {
    SLACK_SECS.min(policy.lock_secs.max(0))
}

/// The retain-until of a pack written to the bucket at `now`: the lock
/// window and the slack.
pub(crate) fn pack_until(policy: &Policy, now: i64) -> i64 {
    Stamp::new(now, policy)
        .locked_until
        .saturating_add(slack(policy))
}

/// The most the bucket's clock and ours may differ before nothing that a
/// retention date protects is purged.
pub const MAX_SKEW_SECS: i64 = 300;

/// Bytes fetched per request when a rebuild copies a large object.
const FETCH_PIECE: u64 = 16 << 20;

/// The bucket tier of one namespace.
pub struct Bucket {
    backend: Arc<dyn ObjectBackend>,
    /// `namespaces/<ns>/`.
    prefix: String,
    mode: LockMode,
    /// `REPO/bucket.db`: what retention each pack was given, and which
    /// collected packs still have versions to purge.
    db: Mutex<Connection>,
}

/// What a purge pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PurgeReport {
    /// Versions purged for good.
    pub versions_purged: u64,
    /// Removed objects whose every version is gone now.
    pub objects_done: u64,
    /// Removed objects with versions still retained or held.
    pub objects_waiting: u64,
    /// Why the pass deleted nothing, if it did not.
    pub refused: Option<String>,
}

/// What a rebuild brought back.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    /// Objects copied from the bucket.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects already present locally (same size), left alone.
    pub present: u64,
    /// Objects left out: a pack that does not hash to its name, or a name
    /// this layout does not know.
    pub skipped: Vec<String>,
}

fn secs_to_time(t: i64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.max(0) as u64)
}

fn time_to_secs(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The relative name of a pack, as in the directory.
pub(crate) fn pack_rel(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{hex}", &hex[..2])
}

impl Bucket {
    /// The bucket tier of namespace `ns` of a store at `root`.
    pub fn open(
        backend: Arc<dyn ObjectBackend>,
        ns: &str,
        mode: LockMode,
        root: &Path,
    ) -> Result<Bucket> {
        let prefix = format!("namespaces/{ns}/");
        crate::object::check_prefix(&prefix)?;
        let path = root.join("bucket.db");
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS retained (pack BLOB PRIMARY KEY, until INTEGER NOT NULL, hold INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS collected (name TEXT PRIMARY KEY, not_before INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS parity (name TEXT PRIMARY KEY, sig BLOB NOT NULL);",
        )?;
        Ok(Bucket {
            backend,
            prefix,
            mode,
            db: Mutex::new(conn),
        })
    }

    /// The backend under it.
    pub fn backend(&self) -> &Arc<dyn ObjectBackend> {
        &self.backend
    }

    fn key(&self, rel: &str) -> Result<ObjectKey> {
        Ok(ObjectKey::new(format!("{}{rel}", self.prefix))?)
    }

    /// A retention until `until`, or none when that is not ahead of `now`
    /// (a store refuses a retain-until in the past).
    fn retention(&self, until: i64, now: i64) -> Option<Retention> {
        (until > now).then(|| Retention::new(self.mode, secs_to_time(until)))
    }

    /// Writes a write-once object (config, key, snapshot file). `true`
    /// when it was created, `false` when the bucket held it already.
    pub(crate) fn put_once(&self, rel: &str, bytes: &[u8], until: i64, now: i64) -> Result<bool> {
        let r = self.retention(until, now);
        Ok(matches!(
            self.backend.put_once(&self.key(rel)?, bytes, r)?,
            PutOutcome::Created(_)
        ))
    }

    /// Reads a small object whole (a config, a key file).
    pub(crate) fn read(&self, rel: &str) -> Result<Vec<u8>> {
        let key = self.key(rel)?;
        let size = match self.backend.head(&key, None)? {
            Some(h) if h.size <= MAX_SMALL_FILE_BYTES as u64 => h.size,
            Some(h) => {
                return Err(Error::Corrupt(format!(
                    "{rel} in the bucket: {} bytes is larger than allowed",
                    h.size
                )))
            }
            None => return Err(Error::NotFound(format!("{rel} in the bucket"))),
        };
        self.backend.get_range(&key, None, 0..size)
    }

    /// Writes a new version of a record that changes (a stamp, a setting),
    /// locked until `until` and held when `hold`.
    pub(crate) fn put_record(
        &self,
        rel: &str,
        bytes: &[u8],
        until: i64,
        hold: bool,
        now: i64,
    ) -> Result<()> {
        let key = self.key(rel)?;
        let v = self
            .backend
            .put_version(&key, bytes, self.retention(until, now))?;
        if hold {
            self.backend.set_legal_hold(&key, Some(&v), true)?;
        }
        Ok(())
    }

    /// Extends the retention of a write-once object, and holds it.
    pub(crate) fn extend(&self, rel: &str, until: i64, hold: bool, now: i64) -> Result<()> {
        let key = self.key(rel)?;
        if let Some(r) = self.retention(until, now) {
            self.backend.extend_retention(&key, None, r)?;
        }
        if hold {
            self.backend.set_legal_hold(&key, None, true)?;
        }
        Ok(())
    }

    /// Takes the legal hold off every version of `rel` (and, for a pack,
    /// forgets in `bucket.db` that it was held).
    pub(crate) fn release_hold(&self, rel: &str) -> Result<()> {
        let key = self.key(rel)?;
        for v in self.backend.list_versions(&key)? {
            if !v.is_delete_marker {
                self.backend.set_legal_hold(&key, Some(&v.version), false)?;
            }
        }
        if let Some(id) = rel
            .strip_prefix("packs/")
            .and_then(|r| r.rsplit('/').next())
            .and_then(|n| n.parse::<PackId>().ok())
        {
            // unwrap: the lock is never held across a panic
            let db = self.db.lock().unwrap();
            db.execute(
                "UPDATE retained SET hold = 0 WHERE pack = ?1",
                params![id.as_bytes().as_slice()],
            )?;
        }
        Ok(())
    }

    /// Deletes an object as the bucket does: a delete marker over its
    /// versions, which stay until purged.
    fn delete(&self, rel: &str) -> Result<()> {
        self.backend.delete(&self.key(rel)?)?;
        Ok(())
    }

    /// Sends a pack from the durable file `path`, locked until `until`
    /// (the lock window and the slack). A pack the bucket holds already
    /// (a racer's, or one uploaded before a crash) is left as it is.
    pub(crate) fn put_pack(&self, id: &PackId, path: &Path, until: i64, now: i64) -> Result<()> {
        let r = self.retention(until, now);
        let key = self.key(&pack_rel(id))?;
        match self.backend.put_file_once(&key, path, r)? {
            PutOutcome::Created(_) => self.remember(id, until, false),
            PutOutcome::Exists => Ok(()),
        }
    }

    fn remember(&self, id: &PackId, until: i64, hold: bool) -> Result<()> {
        // unwrap: the lock is never held across a panic
        let db = self.db.lock().unwrap();
        db.execute(
            "INSERT INTO retained (pack, until, hold) VALUES (?1, ?2, ?3)
             ON CONFLICT(pack) DO UPDATE SET until = max(until, ?2), hold = max(hold, ?3)",
            params![id.as_bytes().as_slice(), until, hold as i64],
        )?;
        db.execute(
            "DELETE FROM collected WHERE name = ?1",
            params![pack_rel(id)],
        )?;
        Ok(())
    }

    fn known(&self, id: &PackId) -> Result<Option<(i64, bool)>> {
        // unwrap: the lock is never held across a panic
        let db = self.db.lock().unwrap();
        Ok(db
            .query_row(
                "SELECT until, hold FROM retained WHERE pack = ?1",
                params![id.as_bytes().as_slice()],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? != 0)),
            )
            .optional()?)
    }

    /// Makes every pack of `packs` retained at least until `until` (and
    /// held when `hold`) before a snapshot that needs them is visible.
    /// A pack given enough already (by `bucket.db`) costs no request; one
    /// extended gets `until` and `slack` more. A pack whose latest
    /// version in the bucket is a delete marker (collected, then needed
    /// again while the local copy was kept) is sent again from `local`.
    /// Returns the requests made.
    pub(crate) fn cover_packs(
        &self,
        packs: &[PackId],
        until: i64,
        hold: bool,
        slack: i64,
        now: i64,
        local: &dyn Fn(&PackId) -> PathBuf,
    ) -> Result<u64> {
        let mut requests = 0;
        for p in packs {
            if let Some((u, h)) = self.known(p)? {
                if u >= until && (h || !hold) {
                    continue;
                }
            }
            let key = self.key(&pack_rel(p))?;
            let want = until.saturating_add(slack);
            let extended = match self.retention(want, now) {
                Some(r) => self.backend.extend_retention(&key, None, r).map(|_| ()),
                None => Ok(()),
            };
            requests += 2;
            match extended {
                Ok(()) => {}
                Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {
                    let path = local(p);
                    self.backend
                        .put_file_once(&key, &path, self.retention(want, now))?;
                    requests += 1;
                }
                Err(e) => return Err(e),
            }
            if hold {
                self.backend.set_legal_hold(&key, None, true)?;
                requests += 1;
            }
            self.remember(p, want, hold)?;
        }
        Ok(requests)
    }

    /// Records that the store removed `rel` (a pack prune collected, a
    /// forgotten snapshot or its stamp, a removed key file) and puts its
    /// delete marker. The record comes first: a marker that fails is put
    /// by a later purge, which also purges its versions once they may go.
    /// `locked_until` is how long its versions are retained, as far as the
    /// caller knows (a stamp's lock; a pack's comes from `bucket.db`):
    /// purges do not ask the bucket about it before then, so objects
    /// waiting out a month's lock cost no request at each sweep.
    pub(crate) fn collected(&self, rel: &str, locked_until: i64) -> Result<()> {
        {
            // unwrap: the lock is never held across a panic
            let db = self.db.lock().unwrap();
            let mut not_before = locked_until;
            if let Some(id) = rel
                .rsplit('/')
                .next()
                .filter(|_| rel.starts_with("packs/"))
                .and_then(|n| n.parse::<PackId>().ok())
            {
                let given: Option<i64> = db
                    .query_row(
                        "SELECT until FROM retained WHERE pack = ?1",
                        params![id.as_bytes().as_slice()],
                        |r| r.get(0),
                    )
                    .optional()?;
                not_before = not_before.max(given.unwrap_or(0));
                db.execute(
                    "DELETE FROM retained WHERE pack = ?1",
                    params![id.as_bytes().as_slice()],
                )?;
            }
            db.execute(
                "INSERT OR REPLACE INTO collected (name, not_before) VALUES (?1, ?2)",
                params![rel, not_before],
            )?;
        }
        self.delete(rel)
    }

    /// Seconds by which the bucket's clock is ahead of `now` (negative:
    /// behind).
    pub fn skew(&self, now: i64) -> Result<i64> {
        Ok(time_to_secs(self.backend.clock()?) - now)
    }

    /// The second phase of collection: for each object the store removed,
    /// the versions whose retention has lapsed are purged, and its delete
    /// markers with the last of them. One stored again since (`live` says
    /// the store holds it: a pack a new backup needed) leaves the list
    /// untouched. Nothing is purged while the clocks disagree by more than
    /// [`MAX_SKEW_SECS`].
    pub fn purge(&self, now: i64, live: &dyn Fn(&str) -> bool) -> Result<PurgeReport> {
        let mut rep = PurgeReport::default();
        let skew = self.skew(now)?;
        if skew.abs() > MAX_SKEW_SECS {
            rep.refused = Some(format!(
                "the bucket's clock is {skew:+} s from ours (more than {MAX_SKEW_SECS} s): nothing purged"
            ));
            return Ok(rep);
        }
        let names: Vec<String> = {
            // unwrap: the lock is never held across a panic
            let db = self.db.lock().unwrap();
            // what the bucket still retains by our records is not asked
            let mut st =
                db.prepare("SELECT name FROM collected WHERE not_before <= ?1 ORDER BY name")?;
            let rows = st
                .query_map(params![now.min(now + skew)], |r| r.get::<_, String>(0))?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let later: i64 = db.query_row(
                "SELECT count(*) FROM collected WHERE not_before > ?1",
                params![now.min(now + skew)],
                |r| r.get(0),
            )?;
            rep.objects_waiting += later as u64;
            rows
        };
        // the earlier of the two clocks: a version is judged lapsed only
        // when it is by both
        let judged_at = secs_to_time(now.min(now + skew));
        let done = |rel: &str| -> Result<()> {
            // unwrap: the lock is never held across a panic
            let db = self.db.lock().unwrap();
            db.execute("DELETE FROM collected WHERE name = ?1", params![rel])?;
            Ok(())
        };
        for rel in names {
            if live(&rel) {
                done(&rel)?;
                continue;
            }
            let key = self.key(&rel)?;
            let versions = self.backend.list_versions(&key)?;
            if versions
                .first()
                .is_some_and(|v| v.is_latest && !v.is_delete_marker)
            {
                // the marker failed or never came: put it now
                self.backend.delete(&key)?;
                rep.objects_waiting += 1;
                continue;
            }
            let mut waiting = false;
            for v in versions.iter().filter(|v| !v.is_delete_marker) {
                let head = self.backend.head(&key, Some(&v.version))?;
                let protected = head.as_ref().is_some_and(|h| {
                    h.legal_hold || h.retention.is_some_and(|r| r.holds_at(judged_at))
                });
                if protected {
                    waiting = true;
                    continue;
                }
                self.backend.delete_version(&key, &v.version)?;
                rep.versions_purged += 1;
            }
            if waiting {
                rep.objects_waiting += 1;
                continue;
            }
            for v in versions.iter().filter(|v| v.is_delete_marker) {
                self.backend.delete_version(&key, &v.version)?;
                rep.versions_purged += 1;
            }
            done(&rel)?;
            rep.objects_done += 1;
        }
        Ok(rep)
    }

    /// What the local file of parity object `rel` was when it was last
    /// sent (its size and times), if it was.
    pub fn parity_sent(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        // unwrap: the lock is never held across a panic
        let db = self.db.lock().unwrap();
        Ok(db
            .query_row(
                "SELECT sig FROM parity WHERE name = ?1",
                params![rel],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?)
    }

    /// Sends a parity file as the new version of `rel`, retained until
    /// `until`, and records the local file's signature `sig`.
    pub fn send_parity(
        &self,
        rel: &str,
        bytes: &[u8],
        sig: &[u8],
        until: i64,
        now: i64,
    ) -> Result<()> {
        self.put_record(rel, bytes, until, false, now)?;
        // unwrap: the lock is never held across a panic
        let db = self.db.lock().unwrap();
        db.execute(
            "INSERT OR REPLACE INTO parity (name, sig) VALUES (?1, ?2)",
            params![rel, sig],
        )?;
        Ok(())
    }

    /// Whether the latest version of `rel` holds exactly `bytes` (one
    /// `HEAD`, and a read only when the size matches).
    pub fn holds(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        let key = self.key(rel)?;
        match self.backend.head(&key, None)? {
            Some(h) if h.size == bytes.len() as u64 => {
                Ok(self.backend.get_range(&key, Some(&h.version), 0..h.size)? == bytes)
            }
            _ => Ok(false),
        }
    }

    /// Checks the latest version of pack `id` in the bucket against its
    /// name, read in pieces. `None` when sound, else what is wrong.
    /// Adds the bytes read to `read`. A sound version whose retention or
    /// hold falls short of what `bucket.db` says it was given (shortened
    /// with a governance bypass, say) is locked again, and `relocked` set.
    pub fn pack_fault(
        &self,
        id: &PackId,
        read: &mut u64,
        relocked: &mut bool,
        now: i64,
    ) -> Result<Option<String>> {
        let key = self.key(&pack_rel(id))?;
        let Some(head) = self.backend.head(&key, None)? else {
            return Ok(Some("missing from the bucket".into()));
        };
        match self.hash_version(&key, &head.version, head.size, read) {
            Ok(h) if h == *id => {
                if let Some((until, hold)) = self.known(id)? {
                    let short = head.retention.is_none_or(|r| r.until < secs_to_time(until));
                    if short && until > now {
                        let r = Retention::new(self.mode, secs_to_time(until));
                        self.backend
                            .extend_retention(&key, Some(&head.version), r)?;
                        *relocked = true;
                    }
                    if hold && !head.legal_hold {
                        self.backend
                            .set_legal_hold(&key, Some(&head.version), true)?;
                        *relocked = true;
                    }
                }
                Ok(None)
            }
            Ok(h) => Ok(Some(format!("its latest version hashes to {}", h.short()))),
            Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => Ok(Some(e.to_string())),
            Err(e) => Err(e),
        }
    }

    fn hash_version(
        &self,
        key: &ObjectKey,
        version: &crate::object::VersionId,
        size: u64,
        read: &mut u64,
    ) -> Result<PackId> {
        let mut hasher = PackHasher::default();
        let mut at = 0;
        while at < size {
            let end = (at + FETCH_PIECE).min(size);
            let piece = self.backend.get_range(key, Some(version), at..end)?;
            *read += piece.len() as u64;
            hasher.update(&piece);
            at = end;
        }
        Ok(hasher.finalize())
    }

    /// The bytes of pack `id` from the newest version in the bucket that
    /// hashes to its name (a damaged latest version does not hide a sound
    /// older one), or `None` when none does.
    pub fn fetch_pack(&self, id: &PackId) -> Result<Option<Vec<u8>>> {
        let key = self.key(&pack_rel(id))?;
        for v in self.backend.list_versions(&key)? {
            if v.is_delete_marker || v.size > crate::limits::MAX_PACK_BYTES {
                continue;
            }
            let mut bytes = Vec::with_capacity(v.size as usize);
            let mut at = 0;
            while at < v.size {
                let end = (at + FETCH_PIECE).min(v.size);
                match self.backend.get_range(&key, Some(&v.version), at..end) {
                    Ok(piece) => bytes.extend_from_slice(&piece),
                    Err(e) if e.kind() == crate::error::ErrorKind::Corrupt => break,
                    Err(e) => return Err(e),
                }
                at = end;
            }
            if PackId::of(&bytes) == *id {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// Writes a sound copy of pack `id` as its new latest version in the
    /// bucket (the damaged one stays beneath under its own lock), retained
    /// at least as long as the pack was before, and held if it was.
    pub fn rewrite_pack(&self, id: &PackId, bytes: &[u8], until: i64, now: i64) -> Result<()> {
        let key = self.key(&pack_rel(id))?;
        let (until, hold) = match self.known(id)? {
            Some((u, h)) => (u.max(until), h),
            None => (until, false),
        };
        let v = self
            .backend
            .put_version(&key, bytes, self.retention(until, now))?;
        if hold {
            self.backend.set_legal_hold(&key, Some(&v), true)?;
        }
        self.remember(id, until, hold)
    }

    /// Copies every object of the namespace from the bucket into `root`
    /// (the latest version of each), leaving alone what is there already
    /// with the same size. Packs are checked against their names on the
    /// way; what fails is left out and named. Streams: one listing page
    /// and one piece of one object at a time.
    pub fn rebuild(&self, root: &Path) -> Result<RebuildReport> {
        let mut rep = RebuildReport::default();
        let tmp = root.join("tmp");
        for d in ["keys", "packs", "snapshots", "tmp", "parity"] {
            fs::create_dir_all(root.join(d)).at(root.join(d))?;
        }
        let prefix = self.prefix.clone();
        let mut fail = None;
        self.backend.list(&prefix, &mut |e| {
            let rel = e.key.as_str()[prefix.len()..].to_string();
            if !known_rel(&rel) {
                rep.skipped.push(rel);
                return Ok(ControlFlow::Continue(()));
            }
            let dest = root.join(&rel);
            if fs::metadata(&dest).is_ok_and(|m| m.len() == e.size) && !rel.ends_with(".stamp") {
                rep.present += 1;
                return Ok(ControlFlow::Continue(()));
            }
            match self.fetch(&e.key, e.size, &rel, &tmp, &dest) {
                Ok(true) => {
                    rep.objects += 1;
                    rep.bytes += e.size;
                }
                Ok(false) => rep.skipped.push(rel),
                Err(err) => {
                    fail = Some(err);
                    return Ok(ControlFlow::Break(()));
                }
            }
            Ok(ControlFlow::Continue(()))
        })?;
        if let Some(e) = fail {
            return Err(e);
        }
        Ok(rep)
    }

    /// Copies one object to `dest` through a durable temporary file.
    /// `false` for a pack that does not hash to its name.
    fn fetch(
        &self,
        key: &ObjectKey,
        size: u64,
        rel: &str,
        tmp: &Path,
        dest: &Path,
    ) -> Result<bool> {
        let path = tmp_name(tmp);
        let mut out = File::create(&path).at(&path)?;
        let mut hasher = PackHasher::default();
        let mut at = 0;
        let r = (|| -> Result<()> {
            while at < size {
                let end = (at + FETCH_PIECE).min(size);
                let piece = self.backend.get_range(key, None, at..end)?;
                hasher.update(&piece);
                out.write_all(&piece).at(&path)?;
                at = end;
            }
            out.sync_all().at(&path)
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        if let Some(name) = rel.strip_prefix("packs/") {
            let named = name
                .rsplit('/')
                .next()
                .and_then(|n| n.parse::<PackId>().ok());
            if named != Some(hasher.finalize()) {
                let _ = fs::remove_file(&path);
                return Ok(false);
            }
        }
        // unwrap: every layout path has a parent inside the root
        let dir = dest.parent().expect("parent");
        fs::create_dir_all(dir).at(dir)?;
        fs::rename(&path, dest).at(dest)?;
        fsync_dir(dir)?;
        Ok(true)
    }
}

/// Whether `rel` is a name of the store's layout that a rebuild copies.
fn known_rel(rel: &str) -> bool {
    let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match rel.split('/').collect::<Vec<_>>().as_slice() {
        ["config" | "policy.json" | "parity.json"] => true,
        ["keys", name] => valid_key_name(name),
        ["packs", shard, name] => hex64(name) && name.starts_with(shard) && shard.len() == 2,
        ["snapshots", name] => hex64(name) || name.strip_suffix(".stamp").is_some_and(hex64),
        ["parity", name] => name.split_once('.').is_some_and(|(stripe, i)| {
            stripe.len() == 16
                && stripe.bytes().all(|b| b.is_ascii_hexdigit())
                && !i.is_empty()
                && i.len() <= 3
                && i.bytes().all(|b| b.is_ascii_digit())
        }),
        _ => false,
    }
}
