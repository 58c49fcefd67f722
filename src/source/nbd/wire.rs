//! The client side of the NBD protocol's messages, as bytes: the fixed
//! newstyle handshake, option replies, requests, simple and structured
//! replies and block status descriptors. Pure: no socket, no clock. Every
//! parser takes bytes a server sent (untrusted) and returns an error,
//! never a panic; lengths are checked before anything is allocated.
//!
//! The protocol is <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>;
//! every integer is big-endian.

use std::fmt;

/// `NBDMAGIC`, the server's first eight bytes.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle negotiation, and the prefix of each option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// The magic of a request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// The magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// The magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;

/// Options.
pub const OPT_ABORT: u32 = 2;
/// Choose the export and end the handshake, with info replies.
pub const OPT_GO: u32 = 7;
/// Ask for structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Choose the metadata contexts block status reports.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: done.
pub const REP_ACK: u32 = 1;
/// Option reply: information about the export.
pub const REP_INFO: u32 = 3;
/// Option reply: a metadata context chosen, with its id.
pub const REP_META_CONTEXT: u32 = 4;
/// Option replies with this bit set are errors.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// Error reply: the server does not know the option.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;

/// Info: the export's size and transmission flags.
pub const INFO_EXPORT: u16 = 0;
/// Info: the export's block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
/// End the session.
pub const CMD_DISC: u16 = 2;
/// Block status of a range.
pub const CMD_BLOCK_STATUS: u16 = 7;

/// Structured reply chunk flag: the last chunk of its reply.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Chunk types.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Zeros at an offset, not sent.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Block status descriptors of one context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Chunk types with this bit set are errors.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;

/// `base:allocation`: not allocated (may still read non-zero, from a
/// backing file).
pub const STATE_HOLE: u32 = 1;
/// `base:allocation`: reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// The most bytes of one structured chunk's payload this client accepts:
/// a read is at most [`MAX_READ`], a block status reply a few descriptors
/// per MiB.
pub const MAX_CHUNK: u32 = MAX_READ + 64;
/// The most bytes one read asks for (servers accept 32 MiB).
pub const MAX_READ: u32 = 4 << 20;
/// The most bytes of one option reply this client accepts.
pub const MAX_OPTION_REPLY: u32 = 64 << 10;
/// The most chunks one structured reply may have: a read of
/// [`MAX_READ`] in 4 KiB pieces and then some. The overlap check of a read
/// costs the square of its chunks, so this bounds it too.
pub const MAX_CHUNKS: usize = 1024;
/// The most descriptors one block status chunk may hold.
pub const MAX_DESCRIPTORS: usize = 1 << 20;

/// What was wrong with what the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

/// The result of a parser.
pub type Result<T> = std::result::Result<T, WireError>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(WireError(what.into()))
}

/// Reads big-endian integers off the front of a slice, failing on a short one.
struct Take<'a>(&'a [u8]);

impl<'a> Take<'a> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return bad(format!("{what}: {} bytes where {n} were due", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.bytes(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

/// The server's greeting (18 bytes): its handshake flags.
pub fn parse_greeting(b: &[u8; 18]) -> Result<u16> {
    let mut t = Take(b);
    if t.u64("greeting")? != NBD_MAGIC {
        return bad("not an NBD server (no NBDMAGIC)");
    }
    match t.u64("greeting")? {
        IHAVEOPT => {}
        0x0000_4202_8186_1253 => return bad("the server speaks oldstyle NBD only"),
        _ => return bad("not an NBD newstyle server"),
    }
    let flags = t.u16("handshake flags")?;
    if flags & FLAG_FIXED_NEWSTYLE == 0 {
        return bad("the server does not speak fixed newstyle NBD");
    }
    Ok(flags)
}

/// An option: its number and data.
pub fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + data.len());
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn push_str32(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u32).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

/// `NBD_OPT_GO` for `export`, asking for the block size info.
pub fn opt_go(export: &str) -> Vec<u8> {
    let mut d = Vec::new();
    push_str32(&mut d, export);
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    option(OPT_GO, &d)
}

/// `NBD_OPT_SET_META_CONTEXT` for `export` with `queries`.
pub fn opt_set_meta_context(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = Vec::new();
    push_str32(&mut d, export);
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        push_str32(&mut d, q);
    }
    option(OPT_SET_META_CONTEXT, &d)
}

/// The fixed head of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptReply {
    /// The option it answers.
    pub option: u32,
    /// `REP_*`.
    pub kind: u32,
    /// Bytes of data that follow.
    pub len: u32,
}

/// Parses an option reply's head (20 bytes) to the option `sent`.
pub fn parse_opt_reply(b: &[u8; 20], sent: u32) -> Result<OptReply> {
    let mut t = Take(b);
    if t.u64("option reply")? != OPT_REPLY_MAGIC {
        return bad("bad option reply magic");
    }
    let r = OptReply {
        option: t.u32("option reply")?,
        kind: t.u32("option reply")?,
        len: t.u32("option reply")?,
    };
    if r.option != sent {
        return bad(format!(
            "the server answered option {} to option {sent}",
            r.option
        ));
    }
    if r.len > MAX_OPTION_REPLY {
        return bad(format!("option reply of {} bytes", r.len));
    }
    Ok(r)
}

/// The error an option reply of kind `kind` (with the error bit) names,
/// with the server's message.
pub fn option_error(kind: u32, data: &[u8]) -> String {
    let name = match kind & !REP_FLAG_ERROR {
        1 => "unsupported",
        2 => "refused by policy",
        3 => "invalid",
        4 => "unsupported on this platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "server shutting down",
        8 => "block size required",
        9 => "request too big",
        _ => "error",
    };
    let msg = String::from_utf8_lossy(data);
    match msg.is_empty() {
        true => name.to_string(),
        false => format!("{name}: {msg}"),
    }
}

/// What an `NBD_REP_INFO` told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    /// The export's size in bytes and transmission flags.
    Export {
        /// Bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// Minimum, preferred and maximum block sizes.
    BlockSize {
        /// Smallest request alignment.
        min: u32,
        /// Preferred.
        preferred: u32,
        /// Largest payload.
        max: u32,
    },
    /// An info this client does not use.
    Other(u16),
}

/// Parses an `NBD_REP_INFO`'s data.
pub fn parse_info(d: &[u8]) -> Result<Info> {
    let mut t = Take(d);
    Ok(match t.u16("info")? {
        INFO_EXPORT => Info::Export {
            size: t.u64("export info")?,
            flags: t.u16("export info")?,
        },
        INFO_BLOCK_SIZE => {
            let (min, preferred, max) = (
                t.u32("block size info")?,
                t.u32("block size info")?,
                t.u32("block size info")?,
            );
            if min == 0 || !min.is_power_of_two() || min > 65536 || max < min {
                return bad(format!("block sizes {min}/{preferred}/{max}"));
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            }
        }
        other => Info::Other(other),
    })
}

/// Parses an `NBD_REP_META_CONTEXT`'s data: the context's id and name.
pub fn parse_meta_context(d: &[u8]) -> Result<(u32, String)> {
    let mut t = Take(d);
    let id = t.u32("meta context")?;
    let name = String::from_utf8(t.0.to_vec())
        .map_err(|_| WireError("meta context name is not UTF-8".into()))?;
    Ok((id, name))
}

/// Bytes of a request (no payload: this client never writes).
pub const REQUEST_LEN: usize = 28;

/// A request (28 bytes).
pub fn request(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; 28];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..28].copy_from_slice(&len.to_be_bytes());
    b
}

/// The head of a reply: simple (16 bytes) or a structured chunk (20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyHead {
    /// A simple reply: its error (0: none) and cookie; a read's data follows.
    Simple {
        /// errno-style error, 0 for none.
        error: u32,
        /// The request's cookie.
        cookie: u64,
    },
    /// A structured reply chunk.
    Chunk {
        /// `REPLY_FLAG_*`.
        flags: u16,
        /// `REPLY_TYPE_*`.
        kind: u16,
        /// The request's cookie.
        cookie: u64,
        /// Bytes of payload that follow.
        len: u32,
    },
}

/// How many bytes of head follow the first four (the magic) for a reply.
pub fn reply_head_rest(magic: [u8; 4]) -> Result<usize> {
    match u32::from_be_bytes(magic) {
        SIMPLE_REPLY_MAGIC => Ok(12),
        STRUCTURED_REPLY_MAGIC => Ok(16),
        m => bad(format!("bad reply magic {m:#x}")),
    }
}

/// Parses a reply head: its four magic bytes and the rest
/// ([`reply_head_rest`] bytes).
pub fn parse_reply_head(magic: [u8; 4], rest: &[u8]) -> Result<ReplyHead> {
    let mut t = Take(rest);
    match u32::from_be_bytes(magic) {
        SIMPLE_REPLY_MAGIC => Ok(ReplyHead::Simple {
            error: t.u32("simple reply")?,
            cookie: t.u64("simple reply")?,
        }),
        STRUCTURED_REPLY_MAGIC => {
            let h = ReplyHead::Chunk {
                flags: t.u16("reply chunk")?,
                kind: t.u16("reply chunk")?,
                cookie: t.u64("reply chunk")?,
                len: t.u32("reply chunk")?,
            };
            if let ReplyHead::Chunk { len, .. } = h {
                if len > MAX_CHUNK {
                    return bad(format!("reply chunk of {len} bytes"));
                }
            }
            Ok(h)
        }
        m => bad(format!("bad reply magic {m:#x}")),
    }
}

/// The error of an error chunk: errno-style code and message.
pub fn parse_error_chunk(d: &[u8]) -> Result<(u32, String)> {
    let mut t = Take(d);
    let code = t.u32("error chunk")?;
    let n = t.u16("error chunk")? as usize;
    let msg = String::from_utf8_lossy(t.bytes(n, "error message")?).into_owned();
    Ok((code, msg))
}

/// An `NBD_REPLY_TYPE_OFFSET_HOLE` payload: offset and length of zeros.
pub fn parse_offset_hole(d: &[u8]) -> Result<(u64, u32)> {
    let mut t = Take(d);
    let at = t.u64("hole chunk")?;
    let len = t.u32("hole chunk")?;
    if len == 0 || !t.0.is_empty() {
        return bad("malformed hole chunk");
    }
    Ok((at, len))
}

/// One block status descriptor: a run of bytes and its state flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes.
    pub len: u32,
    /// Context-specific flags (`STATE_*` for `base:allocation`).
    pub flags: u32,
}

/// An `NBD_REPLY_TYPE_BLOCK_STATUS` payload: the context id and its
/// descriptors (at least one, none empty).
pub fn parse_block_status(d: &[u8]) -> Result<(u32, Vec<Extent>)> {
    let mut t = Take(d);
    let ctx = t.u32("block status")?;
    if t.0.is_empty() || t.0.len() % 8 != 0 {
        return bad(format!(
            "block status with {} bytes of descriptors",
            t.0.len()
        ));
    }
    let n = t.0.len() / 8;
    if n > MAX_DESCRIPTORS {
        return bad(format!("block status with {n} descriptors"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let e = Extent {
            len: t.u32("descriptor")?,
            flags: t.u32("descriptor")?,
        };
        if e.len == 0 {
            return bad("a block status descriptor of length 0");
        }
        out.push(e);
    }
    Ok((ctx, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_needs_fixed_newstyle() {
        let mut g = [0u8; 18];
        g[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
        g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        g[16..].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(parse_greeting(&g), Ok(3));
        g[17] = 0;
        assert!(parse_greeting(&g).is_err());
        g[0] = b'X';
        assert!(parse_greeting(&g).is_err());
    }

    #[test]
    fn option_reply_checks_its_option_and_length() {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
        b[12..16].copy_from_slice(&REP_ACK.to_be_bytes());
        assert_eq!(parse_opt_reply(&b, OPT_GO).unwrap().kind, REP_ACK);
        assert!(parse_opt_reply(&b, OPT_STRUCTURED_REPLY).is_err());
        b[16..].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_opt_reply(&b, OPT_GO).is_err());
    }

    #[test]
    fn block_status_refuses_empty_and_ragged_payloads() {
        let mut d = 7u32.to_be_bytes().to_vec();
        assert!(parse_block_status(&d).is_err());
        d.extend_from_slice(&4096u32.to_be_bytes());
        d.extend_from_slice(&STATE_ZERO.to_be_bytes());
        assert_eq!(
            parse_block_status(&d).unwrap(),
            (
                7,
                vec![Extent {
                    len: 4096,
                    flags: STATE_ZERO
                }]
            )
        );
        d.push(0);
        assert!(parse_block_status(&d).is_err());
        let mut z = 7u32.to_be_bytes().to_vec();
        z.extend_from_slice(&[0; 8]);
        assert!(parse_block_status(&z).is_err());
    }

    #[test]
    fn reply_heads() {
        let rest = [0u8; 16];
        let m = STRUCTURED_REPLY_MAGIC.to_be_bytes();
        assert_eq!(reply_head_rest(m), Ok(16));
        assert!(matches!(
            parse_reply_head(m, &rest),
            Ok(ReplyHead::Chunk { len: 0, .. })
        ));
        let mut big = rest;
        big[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_reply_head(m, &big).is_err());
        assert!(reply_head_rest([1, 2, 3, 4]).is_err());
    }
}
