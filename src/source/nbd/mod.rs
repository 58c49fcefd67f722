//! Reading a disk through NBD: `qemu-nbd`, a running QEMU's NBD server or
//! any fixed-newstyle server exports the guest-visible disk of a qcow2 (or
//! any format QEMU reads), and its block status says which ranges read as
//! zeros, so those are never read. One connection, read-only; reads are
//! sent several at a time (block status one at a time); the bytes of the protocol live in [`wire`].

pub mod qemu;
pub mod wire;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use wire::{Extent, ReplyHead, WireError};

/// How long one reply may take before the read fails (a server that stops
/// answering must not hold a nightly job for ever).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where an export is: `nbd+unix:///EXPORT?socket=PATH` or
/// `nbd://HOST[:PORT]/EXPORT` (the NBD URI form of qemu and libnbd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUrl {
    /// The export's name (may be empty: the server's default).
    pub export: String,
    /// How to reach the server.
    pub addr: NbdAddr,
}

/// A server's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// A Unix socket.
    Unix(PathBuf),
    /// Host and port.
    Tcp(String, u16),
}

/// Whether `s` names an NBD export rather than a file.
pub fn is_url(s: &str) -> bool {
    s.starts_with("nbd://") || s.starts_with("nbd+unix://")
}

impl NbdUrl {
    /// Parses an NBD URI; the error says what is wrong.
    pub fn parse(s: &str) -> Result<NbdUrl, String> {
        let bad = |why: &str| {
            format!("{s:?}: {why} (nbd+unix:///EXPORT?socket=PATH or nbd://HOST:PORT/EXPORT)")
        };
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let (path, query) = rest.split_once('?').ok_or_else(|| bad("no ?socket="))?;
            let export = path
                .strip_prefix('/')
                .ok_or_else(|| bad("no host part is allowed"))?;
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad("no socket="))?;
            return Ok(NbdUrl {
                export: unescape(export),
                addr: NbdAddr::Unix(PathBuf::from(unescape(socket))),
            });
        }
        let rest = s
            .strip_prefix("nbd://")
            .ok_or_else(|| bad("not an NBD URI"))?;
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad("bad port"))?)
            }
            _ => (hostport, 10809),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(NbdUrl {
            export: unescape(export),
            addr: NbdAddr::Tcp(host.to_string(), port),
        })
    }
}

/// Undoes `%XX` escapes (an export name or a socket path with odd bytes).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn proto(e: WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("NBD: {e}"))
}

/// Reads exactly `buf.len()` bytes; a server that hangs up or goes
/// silent is named as such.
fn recv(s: &mut dyn Stream, buf: &mut [u8]) -> io::Result<()> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::new(
            e.kind(),
            "NBD: the server closed the connection in the middle of a message",
        ),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "NBD: no answer from the server within {} s",
                REPLY_TIMEOUT.as_secs()
            ),
        ),
        _ => e,
    })
}

fn refused(what: String) -> io::Error {
    io::Error::other(format!("NBD: {what}"))
}

/// What block status told of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `base:allocation` extents (`wire::STATE_*`).
    pub alloc: Vec<Extent>,
    /// Dirty-bitmap extents (flag 1: dirty), when a bitmap was negotiated.
    pub dirty: Option<Vec<Extent>>,
}

fn too_many_chunks() -> io::Error {
    proto(WireError(format!(
        "a reply of more than {} chunks",
        wire::MAX_CHUNKS
    )))
}

/// What the data and hole chunks of one read's reply filled: each within
/// the read and none overlapping another, so that their lengths adding up
/// to the read's means every byte was sent once (a buffer is reused: a
/// byte no chunk covers would be stale).
struct Coverage {
    offset: u64,
    len: u64,
    filled: Vec<(u64, u64)>,
    total: u64,
}

impl Coverage {
    fn new(offset: u64, len: u32) -> Coverage {
        Coverage {
            offset,
            len: len as u64,
            filled: Vec::new(),
            total: 0,
        }
    }

    /// The buffer range of `n` bytes at export offset `at`.
    fn take(&mut self, at: u64, n: u64) -> io::Result<std::ops::Range<usize>> {
        let from = at.checked_sub(self.offset).filter(|f| f + n <= self.len);
        let Some(from) = from else {
            return Err(proto(WireError(format!(
                "chunk at {at}+{n} outside the read {}+{}",
                self.offset, self.len
            ))));
        };
        let to = from + n;
        if self.filled.iter().any(|&(a, b)| from < b && a < to) {
            return Err(proto(WireError(format!("chunks overlap at {at}"))));
        }
        self.filled.push((from, to));
        self.total += n;
        Ok(from as usize..to as usize)
    }

    /// Whether every byte of the read came.
    fn whole(&self) -> io::Result<()> {
        match self.total == self.len {
            true => Ok(()),
            false => Err(proto(WireError(format!(
                "read at {}: the reply covered {} of {} bytes",
                self.offset, self.total, self.len
            )))),
        }
    }
}

/// A connection to one export, in transmission.
pub struct NbdClient {
    s: Box<dyn Stream>,
    size: u64,
    /// The id of `base:allocation`, when the server gave block status.
    alloc: Option<u32>,
    /// The id of `qemu:dirty-bitmap:NAME`, when asked for and given.
    dirty: Option<u32>,
    structured: bool,
    cookie: u64,
    /// The largest read the server takes.
    max_read: u32,
}

impl NbdClient {
    /// Connects and negotiates: fixed newstyle, structured replies and
    /// `base:allocation` when the server has them, then `NBD_OPT_GO`.
    pub fn connect(url: &NbdUrl) -> io::Result<NbdClient> {
        Self::connect_with(url, None)
    }

    /// [`NbdClient::connect`], also asking for the dirty bitmap `bitmap`
    /// (`qemu:dirty-bitmap:NAME`, as `qemu-nbd -B NAME` exports it); see
    /// [`NbdClient::has_bitmap`].
    pub fn connect_with(url: &NbdUrl, bitmap: Option<&str>) -> io::Result<NbdClient> {
        let s: Box<dyn Stream> = match &url.addr {
            NbdAddr::Unix(p) => {
                let s = UnixStream::connect(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("NBD socket {}: {e}", p.display()))
                })?;
                s.set_read_timeout(Some(REPLY_TIMEOUT))?;
                s.set_write_timeout(Some(REPLY_TIMEOUT))?;
                Box::new(s)
            }
            NbdAddr::Tcp(h, port) => {
                let s = TcpStream::connect((h.as_str(), *port))
                    .map_err(|e| io::Error::new(e.kind(), format!("NBD server {h}:{port}: {e}")))?;
                s.set_read_timeout(Some(REPLY_TIMEOUT))?;
                s.set_write_timeout(Some(REPLY_TIMEOUT))?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        };
        Self::handshake(s, &url.export, bitmap)
    }

    fn handshake(
        mut s: Box<dyn Stream>,
        export: &str,
        bitmap: Option<&str>,
    ) -> io::Result<NbdClient> {
        let mut g = [0u8; 18];
        recv(&mut *s, &mut g)?;
        let flags = wire::parse_greeting(&g).map_err(proto)?;
        let client = (wire::FLAG_FIXED_NEWSTYLE | (flags & wire::FLAG_NO_ZEROES)) as u32;
        s.write_all(&client.to_be_bytes())?;
        let mut c = NbdClient {
            s,
            size: 0,
            alloc: None,
            dirty: None,
            structured: false,
            cookie: 0,
            max_read: wire::MAX_READ,
        };
        c.structured = c.option(
            wire::OPT_STRUCTURED_REPLY,
            &wire::option(wire::OPT_STRUCTURED_REPLY, &[]),
            |_, _| Ok(()),
        )?;
        if c.structured {
            let (mut alloc, mut dirty) = (None, None);
            let dirty_name = bitmap.map(|b| format!("qemu:dirty-bitmap:{b}"));
            let mut queries = vec!["base:allocation"];
            queries.extend(dirty_name.as_deref());
            let msg = wire::opt_set_meta_context(export, &queries);
            c.option(wire::OPT_SET_META_CONTEXT, &msg, |kind, d| {
                if kind == wire::REP_META_CONTEXT {
                    let (id, name) = wire::parse_meta_context(d).map_err(proto)?;
                    if name == "base:allocation" {
                        alloc = Some(id);
                    } else if Some(&name) == dirty_name.as_ref() {
                        dirty = Some(id);
                    }
                }
                Ok(())
            })?;
            c.alloc = alloc;
            c.dirty = dirty;
        }
        let (mut size, mut max) = (None, None);
        let ok = c.option(wire::OPT_GO, &wire::opt_go(export), |kind, d| {
            if kind == wire::REP_INFO {
                match wire::parse_info(d).map_err(proto)? {
                    wire::Info::Export { size: z, .. } => size = Some(z),
                    wire::Info::BlockSize { max: m, .. } => max = Some(m),
                    wire::Info::Other(_) => {}
                }
            }
            Ok(())
        })?;
        if !ok {
            return Err(refused("the server does not know NBD_OPT_GO".into()));
        }
        c.size = size.ok_or_else(|| {
            proto(WireError(
                "no export size in the replies to NBD_OPT_GO".into(),
            ))
        })?;
        if let Some(m) = max {
            c.max_read = c.max_read.min(m.max(4096));
        }
        Ok(c)
    }

    /// Sends an option and reads its replies up to the final one, handing
    /// each to `each`; `false` when the server does not know the option.
    fn option(
        &mut self,
        opt: u32,
        msg: &[u8],
        mut each: impl FnMut(u32, &[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        self.s.write_all(msg)?;
        // A server sends a few replies per option; more is a loop.
        for _ in 0..1024 {
            let mut h = [0u8; 20];
            recv(&mut *self.s, &mut h)?;
            let r = wire::parse_opt_reply(&h, opt).map_err(proto)?;
            let mut d = vec![0u8; r.len as usize];
            recv(&mut *self.s, &mut d)?;
            match r.kind {
                wire::REP_ACK => return Ok(true),
                wire::REP_ERR_UNSUP => return Ok(false),
                k if k & wire::REP_FLAG_ERROR != 0 => {
                    return Err(refused(format!(
                        "option {opt} refused: {}",
                        wire::option_error(k, &d)
                    )))
                }
                k => each(k, &d)?,
            }
        }
        Err(proto(WireError(format!(
            "no end to the replies to option {opt}"
        ))))
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the server reports which ranges read as zeros.
    pub fn has_block_status(&self) -> bool {
        self.alloc.is_some()
    }

    /// Whether the server reports the dirty bitmap asked for.
    pub fn has_bitmap(&self) -> bool {
        self.dirty.is_some()
    }

    fn send(&mut self, kind: u16, flags: u16, offset: u64, len: u32) -> io::Result<u64> {
        self.cookie += 1;
        let req = wire::request(flags, kind, self.cookie, offset, len);
        self.s.write_all(&req)?;
        Ok(self.cookie)
    }

    /// The next reply head, which must be for a request in `cookies`
    /// (sent and not yet answered in full: the caller checks the latter).
    fn head(&mut self, cookies: std::ops::Range<u64>) -> io::Result<ReplyHead> {
        let mut m = [0u8; 4];
        recv(&mut *self.s, &mut m)?;
        let n = wire::reply_head_rest(m).map_err(proto)?;
        let mut rest = [0u8; 16];
        recv(&mut *self.s, &mut rest[..n])?;
        let h = wire::parse_reply_head(m, &rest[..n]).map_err(proto)?;
        let got = match h {
            ReplyHead::Simple { cookie, .. } | ReplyHead::Chunk { cookie, .. } => cookie,
        };
        if !cookies.contains(&got) {
            return Err(proto(WireError(format!(
                "a reply for request {got}, which was not sent"
            ))));
        }
        Ok(h)
    }

    fn payload(&mut self, len: u32) -> io::Result<Vec<u8>> {
        let mut d = vec![0u8; len as usize];
        recv(&mut *self.s, &mut d)?;
        Ok(d)
    }

    fn chunk_error(d: &[u8], what: &str) -> io::Error {
        match wire::parse_error_chunk(d) {
            Ok((code, msg)) => refused(format!("{what} failed: error {code}: {msg}")),
            Err(e) => proto(e),
        }
    }

    /// The status of `[offset, offset + len)`: `base:allocation` (every
    /// range data when the server has none) and the dirty bitmap when one
    /// was negotiated. Each list has one or more extents from `offset` on
    /// (they may cover less than asked, never past the export's end).
    pub fn block_status(&mut self, offset: u64, len: u32) -> io::Result<Status> {
        let Some(alloc) = self.alloc else {
            let len = len.min(u32::try_from(self.size.saturating_sub(offset)).unwrap_or(u32::MAX));
            return Ok(Status {
                alloc: vec![Extent {
                    len: len.max(1),
                    flags: 0,
                }],
                dirty: None,
            });
        };
        let cookie = self.send(wire::CMD_BLOCK_STATUS, 0, offset, len)?;
        let (mut got, mut dirty) = (None, None);
        let mut done = false;
        for _ in 0..=wire::MAX_CHUNKS {
            match self.head(cookie..cookie + 1)? {
                ReplyHead::Simple { error, .. } => {
                    if error != 0 {
                        return Err(refused(format!("block status failed: error {error}")));
                    }
                    return Err(proto(WireError("a simple reply to block status".into())));
                }
                ReplyHead::Chunk {
                    flags,
                    kind,
                    len: n,
                    ..
                } => {
                    let d = self.payload(n)?;
                    match kind {
                        wire::REPLY_TYPE_BLOCK_STATUS => {
                            let (ctx, ext) = wire::parse_block_status(&d).map_err(proto)?;
                            if ctx == alloc {
                                got = Some(ext);
                            } else if Some(ctx) == self.dirty {
                                dirty = Some(ext);
                            }
                        }
                        wire::REPLY_TYPE_NONE => {}
                        k if k & wire::REPLY_TYPE_FLAG_ERROR != 0 => {
                            return Err(Self::chunk_error(&d, "block status"))
                        }
                        k => {
                            return Err(proto(WireError(format!(
                                "chunk type {k} in a block status reply"
                            ))))
                        }
                    }
                    if flags & wire::REPLY_FLAG_DONE != 0 {
                        done = true;
                        break;
                    }
                }
            }
        }
        if !done {
            return Err(too_many_chunks());
        }
        let alloc =
            got.ok_or_else(|| proto(WireError("block status without base:allocation".into())))?;
        let dirty =
            match self.dirty {
                Some(_) => Some(dirty.ok_or_else(|| {
                    proto(WireError("block status without the dirty bitmap".into()))
                })?),
                None => None,
            };
        Ok(Status {
            alloc: self.clip(offset, alloc)?,
            dirty: dirty.map(|d| self.clip(offset, d)).transpose()?,
        })
    }

    /// Clips extents to the export: nothing past its end is read or skipped.
    fn clip(&self, offset: u64, mut ext: Vec<Extent>) -> io::Result<Vec<Extent>> {
        let mut left = self.size.saturating_sub(offset);
        ext.retain_mut(|e| {
            let keep = left > 0;
            e.len = e.len.min(u32::try_from(left).unwrap_or(u32::MAX));
            left -= e.len as u64;
            keep
        });
        if ext.is_empty() {
            return Err(proto(WireError(format!(
                "block status at {offset} is past the end"
            ))));
        }
        Ok(ext)
    }

    /// Reads `buf.len()` bytes at `offset` (in reads of at most the
    /// server's maximum, all in flight at once).
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_many(vec![(offset, buf)], &mut |_| Ok(true))
    }

    /// Reads each `(offset, buffer)` (the buffer's whole length) with every
    /// request sent before the first reply is awaited: a dirty bitmap
    /// leaves thousands of small scattered reads, and one round trip to
    /// the server each made waiting the largest part of an incremental
    /// backup. Each buffer goes to `done` as soon as it and every buffer
    /// before it are filled, so the caller works on the first while the
    /// rest arrive; `done` returning `false` stops (the connection is then
    /// not to be used again). The server may answer in any order, and
    /// interleave the chunks of structured replies; each reply is matched
    /// to its request by cookie, and each read must be covered exactly
    /// once.
    pub fn read_many<B: AsMut<[u8]>>(
        &mut self,
        mut reads: Vec<(u64, B)>,
        done: &mut dyn FnMut(B) -> io::Result<bool>,
    ) -> io::Result<()> {
        let max = self.max_read as usize;
        // Requests: (offset, read, range in its buffer).
        let mut parts: Vec<(u64, usize, std::ops::Range<usize>)> = Vec::new();
        let mut left = Vec::with_capacity(reads.len());
        for (r, (offset, buf)) in reads.iter_mut().enumerate() {
            let len = buf.as_mut().len();
            let end = offset.checked_add(len as u64);
            if end.is_none_or(|e| e > self.size) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "NBD read past the end",
                ));
            }
            let n = len.div_ceil(max);
            for i in 0..n {
                let from = i * max;
                parts.push((*offset + from as u64, r, from..len.min(from + max)));
            }
            left.push(n);
        }
        let mut bufs: Vec<Option<B>> = reads.into_iter().map(|(_, b)| Some(b)).collect();
        let mut next = 0;
        let mut hand_on = |left: &[usize], bufs: &mut [Option<B>]| -> io::Result<bool> {
            while next < bufs.len() && left[next] == 0 {
                if let Some(b) = bufs[next].take() {
                    if !done(b)? {
                        return Ok(false);
                    }
                }
                next += 1;
            }
            Ok(true)
        };
        if parts.is_empty() {
            hand_on(&left, &mut bufs)?;
            return Ok(());
        }
        let first = self.cookie + 1;
        let mut reqs = Vec::with_capacity(parts.len() * wire::REQUEST_LEN);
        for (at, _, range) in &parts {
            self.cookie += 1;
            let req = wire::request(0, wire::CMD_READ, self.cookie, *at, range.len() as u32);
            reqs.extend_from_slice(&req);
        }
        self.s.write_all(&reqs)?;
        let mut covered: Vec<Option<Coverage>> = parts
            .iter()
            .map(|(at, _, range)| Some(Coverage::new(*at, range.len() as u32)))
            .collect();
        let mut open = parts.len();
        for _ in 0..parts.len() * (wire::MAX_CHUNKS + 1) {
            if open == 0 {
                return Ok(());
            }
            let h = self.head(first..self.cookie + 1)?;
            let (ReplyHead::Simple { cookie, .. } | ReplyHead::Chunk { cookie, .. }) = h;
            let i = (cookie - first) as usize;
            let (offset, r, range) = &parts[i];
            let (offset, r) = (*offset, *r);
            let Some(read) = bufs[r].as_mut() else {
                return Err(proto(WireError(format!(
                    "a reply for request {cookie}, which was answered already"
                ))));
            };
            let buf = &mut read.as_mut()[range.clone()];
            let Some(cov) = covered[i].as_mut() else {
                return Err(proto(WireError(format!(
                    "a reply for request {cookie}, which was answered already"
                ))));
            };
            match h {
                ReplyHead::Simple { error, .. } => {
                    if error != 0 {
                        return Err(refused(format!("read at {offset} failed: error {error}")));
                    }
                    if self.structured {
                        return Err(proto(WireError("a simple reply to a read".into())));
                    }
                    recv(&mut *self.s, buf)?;
                    covered[i] = None;
                    open -= 1;
                    left[r] -= 1;
                    if !hand_on(&left, &mut bufs)? {
                        return Ok(());
                    }
                }
                ReplyHead::Chunk {
                    flags,
                    kind,
                    len: n,
                    ..
                } => {
                    match kind {
                        wire::REPLY_TYPE_OFFSET_DATA => {
                            if n < 9 {
                                return Err(proto(WireError("data chunk without data".into())));
                            }
                            let mut h = [0u8; 8];
                            recv(&mut *self.s, &mut h)?;
                            let r = cov.take(u64::from_be_bytes(h), (n - 8) as u64)?;
                            recv(&mut *self.s, &mut buf[r])?;
                        }
                        wire::REPLY_TYPE_OFFSET_HOLE => {
                            let d = self.payload(n)?;
                            let (at, hl) = wire::parse_offset_hole(&d).map_err(proto)?;
                            buf[cov.take(at, hl as u64)?].fill(0);
                        }
                        wire::REPLY_TYPE_NONE => {
                            self.payload(n)?;
                        }
                        k if k & wire::REPLY_TYPE_FLAG_ERROR != 0 => {
                            let d = self.payload(n)?;
                            return Err(Self::chunk_error(&d, &format!("read at {offset}")));
                        }
                        k => {
                            return Err(proto(WireError(format!("chunk type {k} in a read reply"))))
                        }
                    }
                    if flags & wire::REPLY_FLAG_DONE != 0 {
                        cov.whole()?;
                        covered[i] = None;
                        open -= 1;
                        left[r] -= 1;
                        if !hand_on(&left, &mut bufs)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
        match open {
            0 => Ok(()),
            _ => Err(too_many_chunks()),
        }
    }
}

/// A whole client session against a server that sends `data`: the
/// handshake, block status and reads over the export, the way a backup
/// reads it: one read of up to 64 KiB at 0, then three reads of up to
/// 4 KiB in flight at once (at 0, at the end, at 0 again). An error is
/// fine; a panic, a hang or an allocation beyond the protocol's bounds is
/// not. For the fuzz target; the bytes of the four reads, in order of
/// request, if they all worked.
#[doc(hidden)]
pub fn fuzz_session(data: &[u8]) -> Option<Vec<u8>> {
    struct Scripted(io::Cursor<Vec<u8>>);
    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for Scripted {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let owned = Scripted(io::Cursor::new(data.to_vec()));
    let Ok(mut c) = NbdClient::handshake(Box::new(owned), "x", Some("b0")) else {
        return None;
    };
    let size = c.size();
    if let Ok(st) = c.block_status(0, u32::try_from(size.min(1 << 30)).unwrap_or(0).max(1)) {
        for ext in std::iter::once(&st.alloc).chain(st.dirty.as_ref()) {
            let total: u64 = ext.iter().map(|e| e.len as u64).sum();
            assert!(total <= size, "extents past the end");
        }
    }
    let mut buf = vec![0u8; size.min(1 << 16) as usize];
    c.read_at(&mut buf, 0).ok()?;
    let n = size.min(4096) as usize;
    let (mut a, mut b, mut d) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
    let end = size - n as u64;
    let reads = vec![(0, &mut a[..]), (end, &mut b[..]), (0, &mut d[..])];
    c.read_many(reads, &mut |_| Ok(true)).ok()?;
    buf.extend(a.into_iter().chain(b).chain(d));
    Some(buf)
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        // A polite end; the server closes on EOF anyway.
        let req = wire::request(0, wire::CMD_DISC, 0, 0, 0);
        let _ = self.s.write_all(&req);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            NbdUrl::parse("nbd+unix:///disk0?socket=/run/x.sock").unwrap(),
            NbdUrl {
                export: "disk0".into(),
                addr: NbdAddr::Unix("/run/x.sock".into())
            }
        );
        assert_eq!(
            NbdUrl::parse("nbd://127.0.0.1:10900/vda").unwrap(),
            NbdUrl {
                export: "vda".into(),
                addr: NbdAddr::Tcp("127.0.0.1".into(), 10900)
            }
        );
        assert_eq!(
            NbdUrl::parse("nbd://localhost").unwrap().addr,
            NbdAddr::Tcp("localhost".into(), 10809)
        );
        assert_eq!(
            NbdUrl::parse("nbd+unix:///?socket=/a%20b").unwrap(),
            NbdUrl {
                export: "".into(),
                addr: NbdAddr::Unix("/a b".into())
            }
        );
        for bad in [
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd://:99/x",
            "nbd://h:port/x",
            "file:///x",
        ] {
            assert!(NbdUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(is_url("nbd://h/x") && !is_url("/var/lib/disk.img"));
    }
}
