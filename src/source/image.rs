//! Reads a disk image (or a sparse file) ahead of the backup, on a thread
//! of its own, in large reads with O_DIRECT where the file system allows.
//!
//! Why: through the page cache, a cold image costs the reading thread a
//! copy of every byte plus the cache's own bookkeeping (half of the backup
//! thread's CPU), and a backup of a large image evicts everything the host
//! had cached. With direct reads the disk writes straight into our buffers;
//! the thread keeps the disk busy while the caller hashes the previous
//! buffer. Holes are skipped with `SEEK_DATA`/`SEEK_HOLE` and never read.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use nix::fcntl::PosixFadviseAdvice;

use crate::aligned::{aligned_room, ALIGN};

/// Bytes asked for by one read. Reads of 1, 2, 4 and 8 MiB (with 3 to 8
/// buffers) backed up the harness image equally fast; each buffer costs
/// its size in resident memory.
pub const READ_BYTES: usize = 1 << 20;
/// Buffers in flight: one being read, one waiting, one with the caller.
const BUFFERS: usize = 3;
/// Bytes asked of the kernel ahead of the reader when reading through the
/// page cache (a file system without direct I/O).
const ADVISE_AHEAD_BYTES: u64 = 8 << 20;

/// What the reader found next, in file order.
pub enum Piece {
    /// This many bytes of hole: zeros, not read.
    Hole(u64),
    /// Bytes read; hand the buffer back with [`ImageReader::give_back`].
    Data(Buffer),
    /// This many bytes unchanged since the parent snapshot (clean in a
    /// dirty bitmap): taken from the parent's chunk list, not read.
    Clean(u64),
    /// Bytes the dirty bitmap calls clean, read anyway to check the bitmap
    /// (`--verify-clean`): they must equal the parent's.
    Sample(Buffer),
    /// The end of the image.
    End,
}

/// A read buffer aligned for direct I/O.
pub struct Buffer {
    mem: Vec<u8>,
    /// Offset of the aligned start in `mem`.
    start: usize,
    /// Bytes of data from `start`.
    len: usize,
}

/// The bytes to fill: `len` of them.
impl AsMut<[u8]> for Buffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self.room(self.len)
    }
}

impl Buffer {
    fn new(size: usize) -> Buffer {
        let mut mem = Vec::new();
        let start = aligned_room(&mut mem, size);
        Buffer { mem, start, len: 0 }
    }

    fn room(&mut self, want: usize) -> &mut [u8] {
        &mut self.mem[self.start..self.start + want]
    }

    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

/// The caller's end of an image being read ahead.
pub struct ImageReader {
    pieces: Option<Receiver<io::Result<Piece>>>,
    free: Option<Sender<Buffer>>,
    thread: Option<JoinHandle<()>>,
}

impl ImageReader {
    /// Starts reading `f` from its start in whole multiples of `block` (a
    /// power of two of at least 4 KiB). A regular file (`sparse`) has its
    /// holes skipped and ends at its size; a device ends where reads do.
    pub fn start(f: &File, sparse: bool, block: usize) -> io::Result<ImageReader> {
        Self::start_with(f, sparse, block, true)
    }

    /// [`ImageReader::start`], through the page cache unless `direct`.
    fn start_with(f: &File, sparse: bool, block: usize, direct: bool) -> io::Result<ImageReader> {
        let f = f.try_clone()?;
        let len = if sparse { f.metadata()?.len() } else { 0 };
        let mut size = (READ_BYTES / block).max(1) * block;
        if sparse {
            // A small file gets a buffer of its size, not of the largest read.
            let whole = usize::try_from(len.div_ceil(block as u64)).unwrap_or(usize::MAX);
            size = size.min(whole.saturating_mul(block).max(block));
        }
        let (tx, rx) = bounded(BUFFERS - 1);
        let (free_tx, free_rx) = unbounded();
        let reading = Reading {
            f,
            sparse,
            block: block as u64,
            len,
            size,
            direct,
        };
        let thread = std::thread::Builder::new()
            .name("image-read".into())
            .spawn(move || reading.run(&tx, &free_rx))?;
        Ok(ImageReader {
            pieces: Some(rx),
            free: Some(free_tx),
            thread: Some(thread),
        })
    }

    /// Starts reading an NBD export from its start, in whole multiples of
    /// `block`: ranges the server's block status reports as zeros are
    /// holes, never read; with `changed` (the client negotiated a dirty
    /// bitmap), whole blocks the bitmap reports clean are
    /// [`Piece::Clean`], not read either.
    pub fn start_nbd(
        client: super::nbd::NbdClient,
        block: usize,
        changed: bool,
        verify_pct: f64,
    ) -> io::Result<ImageReader> {
        let (tx, rx) = bounded(BUFFERS - 1);
        let (free_tx, free_rx) = unbounded();
        let size = (READ_BYTES / block).max(1) * block;
        let mut reading = NbdReading {
            c: client,
            block: block as u64,
            size,
            zero: Known::default(),
            dirty: changed.then(Known::default),
            verify_pct,
        };
        let thread = std::thread::Builder::new()
            .name("nbd-read".into())
            .spawn(move || {
                if let Err(e) = reading.read_all(&tx, &free_rx) {
                    let _ = tx.send(Err(e));
                }
            })?;
        Ok(ImageReader {
            pieces: Some(rx),
            free: Some(free_tx),
            thread: Some(thread),
        })
    }

    /// The next piece; an error if the image could not be read (or the
    /// reading thread stopped without saying why).
    pub fn next_piece(&self) -> io::Result<Piece> {
        match self.pieces.as_ref().map(|p| p.recv()) {
            Some(Ok(piece)) => piece,
            _ => Err(io::Error::other("the image reader stopped")),
        }
    }

    /// Returns a buffer for reuse.
    pub fn give_back(&self, b: Buffer) {
        if let Some(free) = &self.free {
            // A reader that is gone needs no buffers.
            let _ = free.send(b);
        }
    }
}

impl Drop for ImageReader {
    fn drop(&mut self) {
        // Closing both channels ends a thread waiting on either.
        self.pieces.take();
        self.free.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Reading {
    f: File,
    sparse: bool,
    block: u64,
    len: u64,
    size: usize,
    direct: bool,
}

impl Reading {
    fn run(mut self, tx: &Sender<io::Result<Piece>>, free: &Receiver<Buffer>) {
        if let Err(e) = self.read_all(tx, free) {
            let _ = tx.send(Err(e));
        }
    }

    /// Sends the image's pieces; `Ok` also when the caller has gone.
    fn read_all(
        &mut self,
        tx: &Sender<io::Result<Piece>>,
        free: &Receiver<Buffer>,
    ) -> io::Result<()> {
        self.direct = self.direct && set_direct(&self.f, true);
        if !self.direct && self.sparse {
            // The kernel's own readahead runs past the end of each data
            // extent and zero-fills the hole after it: off, and the data
            // extents are asked for ahead instead.
            super::advise(&self.f, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM);
        }
        let mut advised = 0u64;
        let (mut pos, mut data_end, mut made) = (0u64, 0u64, 0usize);
        loop {
            let mut want = self.size;
            if self.sparse {
                if pos >= data_end {
                    let (next, end) = self.next_extent(pos);
                    if next > pos {
                        if tx.send(Ok(Piece::Hole(next - pos))).is_err() {
                            return Ok(());
                        }
                        pos = next;
                    }
                    data_end = end;
                    if pos >= self.len {
                        let _ = tx.send(Ok(Piece::End));
                        return Ok(());
                    }
                }
                want = want.min(usize::try_from(data_end - pos).unwrap_or(usize::MAX));
            }
            let Some(mut buf) = next_buffer(free, &mut made, self.size) else {
                return Ok(());
            };
            if !self.direct && self.sparse {
                let to = pos.saturating_add(ADVISE_AHEAD_BYTES).min(data_end);
                let from = advised.max(pos);
                if to > from && (to - from >= ADVISE_AHEAD_BYTES / 2 || to == data_end) {
                    super::advise(
                        &self.f,
                        from,
                        to - from,
                        PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                    );
                    advised = to;
                }
            }
            let n = self.read_at(buf.room(want), pos)?;
            buf.len = n;
            if tx.send(Ok(Piece::Data(buf))).is_err() {
                return Ok(());
            }
            pos += n as u64;
            if n < want {
                let _ = tx.send(Ok(Piece::End));
                return Ok(());
            }
        }
    }

    /// Where the next data at or after `pos` starts and where its extent
    /// ends, both in whole blocks (the file's size when none is left).
    fn next_extent(&self, pos: u64) -> (u64, u64) {
        use nix::unistd::{lseek, Whence};
        let fd = self.f.as_raw_fd();
        let block = self.block;
        let at = |p: u64| i64::try_from(p).unwrap_or(i64::MAX);
        let next = match lseek(fd, at(pos), Whence::SeekData) {
            Ok(d) => (d as u64 / block) * block,
            Err(nix::errno::Errno::ENXIO) => self.len,
            Err(_) => pos,
        }
        .max(pos);
        let end = match lseek(fd, at(next), Whence::SeekHole) {
            Ok(h) if h as u64 > next => (h as u64).div_ceil(block) * block,
            // No answer: read on, and ask again after one buffer.
            _ => next + self.size as u64,
        };
        (next, end)
    }

    /// Fills `buf` from `pos`; fewer bytes only at the end of the file.
    fn read_at(&mut self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.f.read_at(&mut buf[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(k) => {
                    got += k;
                    // A direct read stops short of alignment only at the
                    // end of the file (and a read from there would fail).
                    if self.direct && got % ALIGN != 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Refused after all (a device with larger blocks): read
                // through the page cache from here on.
                Err(e) if self.direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    set_direct(&self.f, false);
                    self.direct = false;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }
}

/// A buffer to read into: one handed back, a new one while fewer than
/// [`BUFFERS`] exist, or else one handed back later; `None` when the
/// caller has gone.
fn next_buffer(free: &Receiver<Buffer>, made: &mut usize, size: usize) -> Option<Buffer> {
    match free.try_recv() {
        Ok(b) => Some(b),
        Err(_) if *made < BUFFERS => {
            *made += 1;
            Some(Buffer::new(size))
        }
        Err(_) => free.recv().ok(),
    }
}

/// Bytes of block status asked for at once.
const STATUS_BYTES: u64 = 1 << 30;

/// Extents of one kind of block status, known from the reader's position
/// on: `(start, end, set)`.
#[derive(Default)]
struct Known {
    q: std::collections::VecDeque<(u64, u64, bool)>,
    to: u64,
}

impl Known {
    /// Appends extents reported from `at` on, past what is known already.
    fn push(&mut self, at: u64, ext: &[super::nbd::wire::Extent], set: impl Fn(u32) -> bool) {
        let mut p = at;
        for e in ext {
            let end = p + e.len as u64;
            if end > self.to {
                self.q.push_back((p.max(self.to), end, set(e.flags)));
                self.to = end;
            }
            p = end;
        }
    }

    /// Whether all of `[at, end)` is set (`end` is known).
    fn all(&mut self, at: u64, end: u64) -> bool {
        while self.q.front().is_some_and(|e| e.1 <= at) {
            self.q.pop_front();
        }
        self.q.iter().take_while(|e| e.0 < end).all(|e| e.2)
    }
}

/// What a block of an NBD export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Zero,
    Clean,
    /// Clean, and read to check the bitmap.
    Sample,
    Data,
}

/// An NBD export being read: the extents known ahead of the reader.
struct NbdReading {
    c: super::nbd::NbdClient,
    block: u64,
    size: usize,
    zero: Known,
    /// Dirty extents, when reading only what changed.
    dirty: Option<Known>,
    /// Percent of clean blocks read anyway, to catch a bitmap that missed
    /// a write.
    verify_pct: f64,
}

impl NbdReading {
    /// What `[at, at + len)` is, by block status (asked for as far as
    /// needed): zeros, clean (unchanged since the bitmap started), or data.
    fn class(&mut self, at: u64, len: u64) -> io::Result<Class> {
        let end = (at + len).min(self.c.size());
        loop {
            let from = self
                .zero
                .to
                .min(self.dirty.as_ref().map_or(u64::MAX, |d| d.to));
            if from >= end {
                break;
            }
            let want = (self.c.size() - from).min(STATUS_BYTES) as u32;
            let st = self.c.block_status(from, want)?;
            use super::nbd::wire::STATE_ZERO;
            self.zero.push(from, &st.alloc, |f| f & STATE_ZERO != 0);
            if let (Some(d), Some(ext)) = (self.dirty.as_mut(), st.dirty.as_ref()) {
                // Clean is "not dirty": bit 0 of the bitmap's flags.
                d.push(from, ext, |f| f & 1 == 0);
            }
        }
        if self.zero.all(at, end) {
            return Ok(Class::Zero);
        }
        let clean = self.dirty.as_mut().is_some_and(|d| d.all(at, end));
        let sample = || {
            use rand::Rng;
            self.verify_pct >= 100.0 || rand::thread_rng().gen::<f64>() * 100.0 < self.verify_pct
        };
        Ok(match clean {
            true if self.verify_pct > 0.0 && sample() => Class::Sample,
            true => Class::Clean,
            false => Class::Data,
        })
    }

    /// The run of whole blocks of one class from `pos`: its class and
    /// length (data at most one buffer).
    fn run_at(&mut self, pos: u64, len: u64) -> io::Result<(Class, u64)> {
        let first = self.class(pos, self.block.min(len - pos))?;
        let mut run = self.block.min(len - pos);
        let reads = matches!(first, Class::Data | Class::Sample);
        while pos + run < len && (!reads || run < self.size as u64) {
            let n = self.block.min(len - pos - run);
            if self.class(pos + run, n)? != first {
                break;
            }
            run += n;
        }
        Ok((first, run))
    }

    /// Sends the export's pieces in order, in batches whose reads are all
    /// in flight at once (see [`super::nbd::NbdClient::read_many`]).
    fn read_all(
        &mut self,
        tx: &Sender<io::Result<Piece>>,
        free: &Receiver<Buffer>,
    ) -> io::Result<()> {
        let len = self.c.size();
        let (mut pos, mut made) = (0u64, 0usize);
        while pos < len {
            // Pieces in order: those not read as they are, and for each
            // read its buffer (sent on once filled) and whether it samples.
            let mut plan: Vec<Option<Piece>> = Vec::new();
            let mut reads: Vec<(u64, Buffer)> = Vec::new();
            let mut sample = Vec::new();
            let mut bytes = 0u64;
            while pos < len && reads.len() < NBD_IN_FLIGHT && bytes < NBD_BATCH_BYTES {
                let (class, run) = self.run_at(pos, len)?;
                match class {
                    Class::Zero => plan.push(Some(Piece::Hole(run))),
                    Class::Clean => plan.push(Some(Piece::Clean(run))),
                    Class::Data | Class::Sample => {
                        bytes += run;
                        let Some(mut b) = nbd_buffer(free, &mut made, run as usize) else {
                            return Ok(());
                        };
                        b.len = run as usize;
                        reads.push((pos, b));
                        sample.push(class == Class::Sample);
                        plan.push(None);
                    }
                }
                pos += run;
            }
            // Each read's piece goes on as soon as it is filled, after the
            // pieces before it: the caller hashes it while the rest arrive.
            let mut plan = plan.into_iter();
            let mut sample = sample.into_iter();
            let mut gone = false;
            let mut send = |p: Piece| match tx.send(Ok(p)) {
                Ok(()) => true,
                Err(_) => {
                    gone = true;
                    false
                }
            };
            let mut upto_read = |send: &mut dyn FnMut(Piece) -> bool| {
                for p in plan.by_ref() {
                    match p {
                        Some(p) => {
                            if !send(p) {
                                return false;
                            }
                        }
                        None => return true,
                    }
                }
                true
            };
            self.c.read_many(reads, &mut |b| {
                if !upto_read(&mut send) {
                    return Ok(false);
                }
                let piece = match sample.next() {
                    Some(true) => Piece::Sample(b),
                    _ => Piece::Data(b),
                };
                Ok(send(piece))
            })?;
            if !upto_read(&mut send) || gone {
                return Ok(());
            }
        }
        let _ = tx.send(Ok(Piece::End));
        Ok(())
    }
}

/// Reads of an NBD export in flight at once (qemu-nbd serves 16 requests
/// of a connection at a time).
const NBD_IN_FLIGHT: usize = 16;
/// Bytes of an NBD export in flight at once: bounds a batch's buffers.
const NBD_BATCH_BYTES: u64 = 8 << 20;

/// A buffer of at least `want` bytes for an NBD read: one handed back (or
/// a larger one in its place), a new one while fewer than a batch and the
/// caller's share exist, or else one handed back later; `None` when the
/// caller has gone.
fn nbd_buffer(free: &Receiver<Buffer>, made: &mut usize, want: usize) -> Option<Buffer> {
    let b = match free.try_recv() {
        Ok(b) => b,
        Err(_) if *made < BUFFERS + NBD_IN_FLIGHT => {
            *made += 1;
            return Some(Buffer::new(want));
        }
        Err(_) => free.recv().ok()?,
    };
    Some(match b.mem.len() - b.start >= want {
        true => b,
        false => Buffer::new(want),
    })
}

/// Turns direct I/O on or off for `f`; whether it is now on.
fn set_direct(f: &File, on: bool) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = f.as_raw_fd();
    let Ok(bits) = fcntl(fd, FcntlArg::F_GETFL) else {
        return false;
    };
    let mut flags = OFlag::from_bits_truncate(bits);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(fd, FcntlArg::F_SETFL(flags)).is_ok() && on
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// Reads a whole image through the reader: data bytes, with holes as
    /// zeros, and the hole bytes reported.
    fn read_image(f: &File, sparse: bool, block: usize, direct: bool) -> (Vec<u8>, u64) {
        let r = ImageReader::start_with(f, sparse, block, direct).unwrap();
        let (mut out, mut holes) = (Vec::new(), 0);
        loop {
            match r.next_piece().unwrap() {
                Piece::Hole(n) => {
                    holes += n;
                    out.resize(out.len() + n as usize, 0);
                }
                Piece::Data(b) => {
                    assert_eq!(out.len() % block, 0, "a read starts on a block");
                    out.extend_from_slice(b.bytes());
                    r.give_back(b);
                }
                Piece::Clean(_) | Piece::Sample(_) => panic!("a file has no parent"),
                Piece::End => return (out, holes),
            }
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn a_sparse_file_reads_back_whole_with_its_holes_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = File::create(&path).unwrap();
        // Data, a 16 MiB hole, data at an odd offset, a trailing hole and an
        // unaligned size: more than one buffer of reads, too.
        let a = pattern(5 << 20, 1);
        let b = pattern(100_001, 2);
        f.write_all(&a).unwrap();
        f.seek(SeekFrom::Start((21 << 20) + 12_345)).unwrap();
        f.write_all(&b).unwrap();
        let size = (30 << 20) + 777;
        f.set_len(size).unwrap();
        drop(f);
        let mut want = vec![0u8; size as usize];
        want[..a.len()].copy_from_slice(&a);
        let at = (21 << 20) + 12_345;
        want[at..at + b.len()].copy_from_slice(&b);
        let f = File::open(&path).unwrap();
        for direct in [true, false] {
            for block in [4096, 32 << 10, 1 << 20] {
                let (got, holes) = read_image(&f, true, block, direct);
                assert_eq!(got.len(), want.len(), "block {block}");
                assert!(got == want, "block {block}: bytes differ");
                // The file system may allocate more than was written, not less.
                assert!(holes >= 10 << 20, "block {block}: {holes} bytes of holes");
            }
            // Read as a device: every byte read, none skipped.
            let (got, holes) = read_image(&f, false, 32 << 10, direct);
            assert_eq!(holes, 0);
            assert!(got == want);
        }
    }

    #[test]
    fn small_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, 70_000] {
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, pattern(len, 7)).unwrap();
            let f = File::open(&path).unwrap();
            for direct in [true, false] {
                let (got, _) = read_image(&f, true, 32 << 10, direct);
                assert!(got == pattern(len, 7), "len {len}");
            }
        }
    }

    #[test]
    fn dropping_the_reader_midway_stops_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.img");
        std::fs::write(&path, pattern(20 << 20, 3)).unwrap();
        let f = File::open(&path).unwrap();
        let r = ImageReader::start(&f, true, 32 << 10).unwrap();
        let Piece::Data(b) = r.next_piece().unwrap() else {
            panic!("data first");
        };
        assert_eq!(b.bytes(), &pattern(20 << 20, 3)[..READ_BYTES]);
        // Holding the buffer and dropping the reader must not hang.
        drop(r);
        drop(b);
    }
}
