//! Read-ahead for cold trees. Owns one helper thread that walks the same
//! paths as a backup, in the same order, a bounded distance ahead of it,
//! and asks the kernel to read the files the backup will have to read
//! (not those the files cache will reuse). When the backup mostly reuses
//! files, it only walks: its directory reads and stats warm the kernel's
//! metadata caches, so the backup's own no longer wait on the disk one at a
//! time (a cold no-change run of the harness's tree: 1.6-2.2 s to 1.1-1.8 s).
//! Beside it, a few scout threads list directories and stat their entries
//! in parallel, a bounded distance ahead, so that several metadata reads
//! wait on the disk at once instead of one (a cold no-change run of the
//! harness tree: 1.2-1.3 s to 0.8-0.9 s).
//! It only warms caches: it hands nothing to the backup, and what it gets
//! wrong costs only I/O.

use std::fs::{self, File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::exclude::{keeps, Excludes};
use crate::cache::Cache;

/// Bytes of file content advised ahead of what the backup has read.
const AHEAD_BYTES: u64 = 64 << 20;
/// Files reached ahead of the backup.
const AHEAD_FILES: u64 = 1024;
/// Bytes advised of any one file.
const FILE_BYTES: u64 = 8 << 20;
/// Threads that only read directories and stat their entries, so that
/// several metadata reads wait on the disk at once (a cold walk of the
/// harness tree: 1.2-1.4 s with one thread, 0.7-0.8 s with four).
const SCOUTS: usize = 3;
/// Files the scouts may stat ahead of the files the backup reached.
const SCOUT_AHEAD: u64 = 1 << 16;

/// Where the backup is, shared with the helper.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Bytes of file content the backup has read.
    bytes: AtomicU64,
    /// Files the backup has reached.
    files: AtomicU64,
    /// Of those, files it had to read (the files cache did not reuse them).
    read: AtomicU64,
    /// Regular files the scouts have stat'ed.
    scouted: AtomicU64,
}

/// What the helper must skip, as the backup would.
pub(crate) type Skip = Arc<Excludes>;

/// A running helper; stopped and joined on drop.
pub(crate) struct ReadAhead {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts walking `roots` (sorted as the backup walks them). `cache`
    /// is a connection of the helper's own, to leave reused files alone.
    pub fn start(
        mut roots: Vec<PathBuf>,
        cache: Option<Cache>,
        skip: Skip,
        one_file_system: bool,
    ) -> ReadAhead {
        // Component by component, as the backup's trie of roots walks them
        // (`/x/a/c` before `/x/a-b`), so both count the same files.
        roots.sort();
        let shared = Arc::new(Shared::default());
        let scouts = Arc::new(Scouts {
            shared: shared.clone(),
            skip: skip.clone(),
            one_file_system,
            work: Mutex::new(Work::default()),
            changed: Condvar::new(),
        });
        {
            // unwrap: the lock is never held across a panic
            let mut w = scouts.work.lock().unwrap();
            for root in roots.iter().rev() {
                if let Ok(m) = fs::symlink_metadata(root) {
                    if m.is_dir() {
                        w.dirs.push((root.clone(), m.dev()));
                    }
                }
            }
        }
        let mut h = Helper {
            shared: shared.clone(),
            cache,
            skip,
            one_file_system,
            dev: 0,
            bytes: 0,
            files: 0,
        };
        let mut threads = vec![std::thread::spawn(move || {
            crate::priority::lower_this_thread(crate::priority::HELPER_NICE);
            for root in roots {
                if let Ok(m) = fs::symlink_metadata(&root) {
                    h.dev = m.dev();
                    let reused = h.reused(&[(root.clone(), m.clone())]);
                    h.entry(&root, &m, reused[0]);
                }
            }
        })];
        for _ in 0..SCOUTS {
            let s = scouts.clone();
            threads.push(std::thread::spawn(move || {
                crate::priority::lower_this_thread(crate::priority::HELPER_NICE);
                s.run()
            }));
        }
        ReadAhead { shared, threads }
    }

    /// The backup has reached one more file, `read` it or not, and read
    /// `bytes` in all.
    pub fn progress(&self, read: bool, bytes: u64) {
        self.shared.files.fetch_add(1, Ordering::Relaxed);
        self.shared.read.fetch_add(read.into(), Ordering::Relaxed);
        self.shared.bytes.store(bytes, Ordering::Relaxed);
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Directories waiting for a scout, and how many scouts are busy.
#[derive(Default)]
struct Work {
    /// A stack, so the scouts stay near the backup's depth-first order.
    dirs: Vec<(PathBuf, u64)>,
    busy: usize,
}

/// What the scouts share: they list directories and stat every entry,
/// warming the kernel's metadata caches several reads at a time; the
/// ordered helper and the backup then find it there.
struct Scouts {
    shared: Arc<Shared>,
    skip: Skip,
    one_file_system: bool,
    work: Mutex<Work>,
    changed: Condvar,
}

impl Scouts {
    fn run(&self) {
        while let Some((dir, dev)) = self.next() {
            let subs = self.scout(&dir, dev);
            // unwrap: the lock is never held across a panic
            let mut w = self.work.lock().unwrap();
            w.dirs.extend(subs.into_iter().rev());
            w.busy -= 1;
            self.changed.notify_all();
        }
    }

    /// The next directory to scout; `None` when all are done or stopped.
    fn next(&self) -> Option<(PathBuf, u64)> {
        let s = &self.shared;
        loop {
            if s.stop.load(Ordering::Relaxed) {
                return None;
            }
            let ahead =
                s.scouted.load(Ordering::Relaxed) > s.files.load(Ordering::Relaxed) + SCOUT_AHEAD;
            // unwrap: the lock is never held across a panic
            let mut w = self.work.lock().unwrap();
            if !ahead {
                if let Some(d) = w.dirs.pop() {
                    w.busy += 1;
                    return Some(d);
                }
                if w.busy == 0 {
                    return None;
                }
            }
            // Waits for work, for the backup to catch up, or for a stop.
            let _ = self
                .changed
                .wait_timeout(w, Duration::from_millis(5))
                .unwrap();
        }
    }

    /// Stats the entries of `dir`; returns its subdirectories, in order.
    fn scout(&self, dir: &Path, dev: u64) -> Vec<(PathBuf, u64)> {
        let Ok(rd) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut subs = Vec::new();
        let kept = self.skip.marked(dir);
        for e in rd.flatten() {
            let (path, name) = (e.path(), e.file_name());
            if !keeps(&kept, &name) {
                continue;
            }
            if let Ok(m) = fs::symlink_metadata(&path) {
                if self.skip.leaves_out(&path, &m, false) {
                    continue;
                }
                // Counted like the backup's progress: regular files.
                if m.is_file() {
                    self.shared.scouted.fetch_add(1, Ordering::Relaxed);
                }
                if m.is_dir() && (!self.one_file_system || m.dev() == dev) {
                    subs.push((path, m.dev()));
                }
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        subs.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
        subs
    }
}

struct Helper {
    shared: Arc<Shared>,
    cache: Option<Cache>,
    skip: Skip,
    one_file_system: bool,
    dev: u64,
    /// Bytes advised so far.
    bytes: u64,
    /// Files reached so far.
    files: u64,
}

impl Helper {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn entry(&mut self, path: &Path, m: &Metadata, reused: bool) {
        if self.stopped() {
            return;
        }
        if m.is_dir() {
            if !self.one_file_system || m.dev() == self.dev {
                self.dir(path);
            }
        } else if m.is_file() {
            self.file(path, m, reused);
        }
    }

    fn dir(&mut self, dir: &Path) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let kept = self.skip.marked(dir);
        let entries: Vec<(PathBuf, Metadata)> = names
            .into_iter()
            .filter(|name| keeps(&kept, name))
            .filter_map(|name| {
                let path = dir.join(&name);
                let m = fs::symlink_metadata(&path).ok()?;
                (!self.skip.leaves_out(&path, &m, false)).then_some((path, m))
            })
            .collect();
        let reused = self.reused(&entries);
        for ((path, m), reused) in entries.iter().zip(reused) {
            self.entry(path, m, reused);
            if self.stopped() {
                return;
            }
        }
    }

    /// Waits while the helper is far enough ahead. Returns false when
    /// stopped.
    fn pace(&self) -> bool {
        loop {
            if self.stopped() {
                return false;
            }
            let s = &self.shared;
            let busy = self.files > s.files.load(Ordering::Relaxed) + AHEAD_FILES
                || self.bytes > s.bytes.load(Ordering::Relaxed) + AHEAD_BYTES;
            if !busy {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the backup mostly reuses files from the files cache. Then
    /// the walk itself is all the help: its directory reads and stats warm
    /// the kernel's caches for the backup's own (measured cold, a
    /// no-change run waits on them), and file contents are left alone.
    fn mostly_reused(&self) -> bool {
        let s = &self.shared;
        s.read.load(Ordering::Relaxed) * 4 < s.files.load(Ordering::Relaxed)
    }

    fn file(&mut self, path: &Path, m: &Metadata, reused: bool) {
        self.files += 1;
        if !self.pace() {
            return;
        }
        // Behind the backup: the backup reads this file itself by now.
        if self.files <= self.shared.files.load(Ordering::Relaxed) || m.len() == 0 {
            return;
        }
        if reused || self.mostly_reused() {
            return;
        }
        if let Ok(f) = File::open(path) {
            let len = m.len().min(FILE_BYTES);
            crate::source::advise(
                &f,
                0,
                len,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
            self.bytes += len;
        }
    }

    /// Which of a directory's `entries` are regular files the files cache
    /// will reuse (those are not read), looked up in one read transaction:
    /// one lock of the database per directory, not per file (a first
    /// backup of the harness tree spent 0.5 CPU-s on those). Not looked up
    /// while the backup mostly reuses files, as then nothing is advised.
    fn reused(&mut self, entries: &[(PathBuf, Metadata)]) -> Vec<bool> {
        let mut out = vec![false; entries.len()];
        if self.mostly_reused() {
            return out;
        }
        let Some(cache) = &mut self.cache else {
            return out;
        };
        let files: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].1.is_file() && entries[i].1.len() > 0)
            .collect();
        if files.is_empty() {
            return out;
        }
        let paths = files.iter().map(|&i| entries[i].0.as_os_str().as_bytes());
        if let Ok(recs) = cache.files(paths) {
            for (i, rec) in files.into_iter().zip(recs) {
                out[i] = rec.is_some_and(|r| r.matches(&entries[i].1));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::exclude::{ExcludeRules, SourceRoots};

    /// Leaves out `d1` below `root`.
    fn skip_d1(root: &Path) -> Skip {
        let rules = ExcludeRules {
            patterns: vec!["d1".into()],
            ..Default::default()
        };
        let src = SourceRoots {
            roots: vec![(root.to_path_buf(), root.to_path_buf())],
            patterns: &[],
        };
        Arc::new(Excludes::new(&rules, &[src]).unwrap())
    }

    #[test]
    fn walks_ahead_and_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..3 {
            let sub = dir.path().join(format!("d{d}"));
            fs::create_dir(&sub).unwrap();
            for f in 0..5 {
                fs::write(sub.join(format!("f{f}")), vec![7u8; 4096]).unwrap();
            }
        }
        let skip = skip_d1(dir.path());
        let ra = ReadAhead::start(vec![dir.path().to_path_buf()], None, skip, true);
        ra.progress(true, 4096);
        // Dropping stops and joins the helper, wherever it is.
        let started = std::time::Instant::now();
        drop(ra);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn scouts_stat_every_entry_the_backup_would_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for d in 0..3 {
            let sub = dir.path().join(format!("d{d}")).join("deeper");
            fs::create_dir_all(&sub).unwrap();
            for f in 0..5 {
                fs::write(sub.join(format!("f{f}")), b"x").unwrap();
            }
        }
        std::os::unix::fs::symlink(dir.path().join("d0"), dir.path().join("link")).unwrap();
        let skip = skip_d1(dir.path());
        let ra = ReadAhead::start(vec![dir.path().to_path_buf()], None, skip, false);
        // The five files in each of d0/deeper and d2/deeper: the skipped
        // d1 is not entered, the link to d0 not followed.
        let want = 10;
        let started = std::time::Instant::now();
        while ra.shared.scouted.load(Ordering::Relaxed) < want
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ra.shared.scouted.load(Ordering::Relaxed), want);
    }
}
