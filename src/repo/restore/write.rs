//! The writing side of a restore: the files being filled, the chunks
//! queued for them, and runs of chunks written with one call. A file is
//! finished (metadata applied, or removed with its other names when a
//! chunk failed) when its last chunk is written.

use super::*;

/// Hands a chunk's plaintext to the write run, unless its length is not
/// what the tree says.
pub(super) fn write_chunk(job: Job, data: &[u8], run: &mut WriteRun, shared: &Shared) {
    if data.len() as u64 != job.chunk.len {
        let e = Error::Corrupt(format!(
            "chunk {} has the wrong length",
            job.chunk.id.short()
        ));
        finish(&job, Err(e), shared);
    } else {
        run.add(job, data, shared);
    }
}

pub(super) struct FileTask {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) node: Node,
    pub(super) owners: bool,
    /// Chunks still to write, plus one held by the walker until it has
    /// queued them all.
    pub(super) remaining: AtomicUsize,
    pub(super) failed: Mutex<Option<String>>,
    /// Further names hard-linked to this file, when it has several.
    pub(super) links: Option<Arc<Links>>,
}

/// The other names of a hard-linked file: removed with it when its content
/// fails, so no name is left with wrong or partial bytes.
#[derive(Default)]
pub(super) struct Links {
    /// The names linked so far, and whether the file failed.
    state: Mutex<(Vec<PathBuf>, bool)>,
}

impl Links {
    /// Links `to` to `first`, unless the file failed.
    pub(super) fn link(&self, first: &Path, to: &Path) -> io::Result<()> {
        // unwrap: the lock is never held across a panic
        let mut st = self.state.lock().unwrap();
        if st.1 {
            return Err(io::Error::other("the linked file could not be restored"));
        }
        fs::hard_link(first, to)?;
        st.0.push(to.to_path_buf());
        Ok(())
    }

    /// Removes every name linked so far, and refuses new ones. Returns how
    /// many names were removed.
    pub(super) fn fail(&self) -> u64 {
        // unwrap: the lock is never held across a panic
        let mut st = self.state.lock().unwrap();
        st.1 = true;
        let mut n = 0;
        for l in st.0.drain(..) {
            let _ = fs::remove_file(l);
            n += 1;
        }
        n
    }
}

pub(super) struct Shared {
    pub(super) errors: Mutex<Vec<String>>,
    pub(super) warnings: Mutex<Vec<String>>,
    /// Names and bytes of files counted when created whose content then
    /// failed (removed): taken off the summary, which counts what was
    /// restored.
    pub(super) lost: Mutex<(u64, u64)>,
    pub(super) progress: Option<indicatif::ProgressBar>,
}

impl FileTask {
    pub(super) fn fail(&self, msg: String) {
        // unwrap: the lock is never held across a panic
        let mut f = self.failed.lock().unwrap();
        if f.is_none() {
            *f = Some(msg);
        }
    }

    /// Drops one reference; the last one finishes the file.
    pub(super) fn release(&self, shared: &Shared) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // unwrap: the lock is never held across a panic
        if let Some(msg) = self.failed.lock().unwrap().take() {
            // Never leave wrong or partial bytes behind.
            let _ = fs::remove_file(&self.path);
            let names = 1 + self.links.as_ref().map_or(0, |l| l.fail());
            {
                let mut lost = shared.lost.lock().unwrap();
                lost.0 += names;
                lost.1 += self.node.size;
            }
            shared
                .errors
                .lock()
                .unwrap()
                .push(format!("{}: {msg}", self.path.display()));
            return;
        }
        let mut w = MetaWarnings::default();
        source::apply_meta_fd(&self.file, &self.path, &self.node, self.owners, &mut w);
        if !w.0.is_empty() {
            shared.warnings.lock().unwrap().extend(w.0);
        }
    }
}

pub(super) struct Job {
    pub(super) task: Arc<FileTask>,
    pub(super) offset: u64,
    pub(super) chunk: ChunkRef,
    pub(super) loc: BlobLocation,
}

/// Chunks of one file written back to back are gathered up to this many
/// bytes and written with one call: an image's 32 KiB blocks written one by
/// one by every reader at once kept the readers spinning on the file's
/// lock.
const WRITE_RUN_BYTES: usize = 1 << 20;

/// Consecutive chunks of one file waiting to be written together.
#[derive(Default)]
pub(super) struct WriteRun {
    buf: Vec<u8>,
    /// The chunks in `buf`, in order; the first one's offset is where
    /// `buf` goes.
    jobs: Vec<Job>,
}

impl WriteRun {
    /// Adds a chunk's bytes: gathered when they continue the run (written
    /// at once when large), else the run is written first.
    fn add(&mut self, job: Job, data: &[u8], shared: &Shared) {
        let continues = self.jobs.first().is_some_and(|first| {
            Arc::ptr_eq(&first.task, &job.task)
                && first.offset + self.buf.len() as u64 == job.offset
                && self.buf.len() + data.len() <= WRITE_RUN_BYTES
        });
        if !continues {
            self.flush(shared);
        }
        if data.len() >= WRITE_RUN_BYTES / 4 && self.jobs.is_empty() {
            finish(&job, write_at(&job, data, shared), shared);
            return;
        }
        self.buf.extend_from_slice(data);
        self.jobs.push(job);
    }

    /// Writes the run and finishes its chunks.
    pub(super) fn flush(&mut self, shared: &Shared) {
        let Some(first) = self.jobs.first() else {
            return;
        };
        if let Err(e) = write_at(first, &self.buf, shared) {
            first.task.fail(e.to_string());
        }
        self.buf.clear();
        for job in self.jobs.drain(..) {
            job.task.release(shared);
        }
        // A rare long run's buffer is not kept.
        if self.buf.capacity() > WRITE_RUN_BYTES {
            self.buf = Vec::new();
        }
    }
}

/// Writes `data` where `job`'s chunk starts.
fn write_at(job: &Job, data: &[u8], shared: &Shared) -> Result<()> {
    job.task
        .file
        .write_all_at(data, job.offset)
        .map_err(|e| Error::io(&job.task.path, e))?;
    if let Some(p) = &shared.progress {
        p.inc(data.len() as u64);
    }
    Ok(())
}

/// Records how a chunk ended and drops its reference to its file.
pub(super) fn finish(job: &Job, res: Result<()>, shared: &Shared) {
    if let Err(e) = res {
        job.task.fail(e.to_string());
    }
    job.task.release(shared);
}
