//! Sealed blobs: `nonce || XChaCha20-Poly1305(flag || payload) || tag`, where
//! flag 0 means the payload is the plaintext and flag 1 means it is one zstd
//! frame holding it. Owns compression and the open-and-verify path; never
//! touches files.

use std::ops::Range;

use rand::{CryptoRng, RngCore};

use super::FormatError;
use crate::crypto::{Keys, Kind, NONCE_LEN, SEAL_OVERHEAD};
use crate::id::BlobId;
use crate::limits::MAX_BLOB_BYTES;

const FLAG_RAW: u8 = 0;
const FLAG_ZSTD: u8 = 1;

/// Compresses and seals blobs; holds a reusable zstd context, so keep one per
/// worker thread.
pub struct Sealer {
    compressor: zstd::bulk::Compressor<'static>,
    level: i32,
}

impl Sealer {
    /// A sealer compressing at `level` (0 disables compression).
    pub fn new(level: i32) -> Self {
        // unwrap: creating a zstd context only fails on allocation failure
        let compressor = zstd::bulk::Compressor::new(level.max(1)).expect("zstd context");
        Sealer { compressor, level }
    }

    /// Seals `plain` under `id`. Compression is kept only when it saves
    /// about 6% or more (below that, decompressing costs more than it saves).
    pub fn seal(
        &mut self,
        keys: &Keys,
        kind: Kind,
        id: &BlobId,
        plain: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        let mut out = Vec::with_capacity(NONCE_LEN + 1 + bound + SEAL_OVERHEAD);
        out.resize(NONCE_LEN, 0);
        out.push(FLAG_ZSTD);
        // Compressed straight into the output, after the nonce and flag: no
        // scratch buffer to keep per worker, no copy.
        if !(self.level > 0 && plain.len() > 64 && self.compress_after(plain, &mut out)) {
            out.truncate(NONCE_LEN);
            out.push(FLAG_RAW);
            out.extend_from_slice(plain);
        }
        keys.seal_in_place(kind, id.as_bytes(), &mut out, rng);
        // Room for the worst case stays reserved while the blob waits for
        // its pack: give back what compression saved (a shrink in place).
        if out.capacity() - out.len() > out.len() / 8 {
            out.shrink_to_fit();
        }
        out
    }

    /// Appends one zstd frame of `plain` (content size in its header) to
    /// `out`, whose spare capacity must hold the compression bound. Whether
    /// it was written and pays.
    fn compress_after(&mut self, plain: &[u8], out: &mut Vec<u8>) -> bool {
        use zstd::zstd_safe::zstd_sys::ZSTD_EndDirective;
        use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
        let start = out.len();
        let ctx = self.compressor.context_mut();
        if ctx.reset(ResetDirective::SessionOnly).is_err() {
            return false;
        }
        let mut input = InBuffer::around(plain);
        let mut output = OutBuffer::around_pos(out, start);
        // One call with the whole input and End: zstd records the content
        // size in the frame header, exactly as a one-shot compress does.
        let done = matches!(
            ctx.compress_stream2(&mut output, &mut input, ZSTD_EndDirective::ZSTD_e_end),
            Ok(0)
        );
        let n = output.pos() - start;
        done && input.pos() == plain.len() && n + n / 32 < plain.len() - plain.len() / 32
    }
}

/// Largest buffer a [`Verifier`] keeps between blobs: a default-size
/// average chunk (1 MiB) and its sealing overhead. Larger sealed blobs
/// (mostly incompressible ones) get a buffer of their own; keeping room for
/// the largest chunk in every worker cost a tree backup 6 MiB of peak RSS.
const VERIFIER_KEEP_BYTES: usize = (1 << 20) + (64 << 10);

/// Decompressed bytes compared at a time by a [`Verifier`].
const VERIFY_WINDOW: usize = 128 << 10;

/// Checks freshly sealed blobs before they are written: opens each one and
/// compares what comes out with the plaintext the writer holds. Keeps its
/// buffers, so checking an ordinary blob allocates nothing; decompresses
/// through a small window rather than into a whole-blob buffer.
pub struct Verifier {
    inner: Vec<u8>,
    window: Vec<u8>,
    dctx: zstd::zstd_safe::DCtx<'static>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            inner: Vec::new(),
            window: vec![0; VERIFY_WINDOW],
            // panics only on allocation failure, like the sealer's context
            dctx: zstd::zstd_safe::DCtx::create(),
        }
    }
}

impl Verifier {
    /// A verifier with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `sealed` opens under `id` as `kind` to exactly `plain`.
    ///
    /// The same steps as [`open`] (authenticate and decrypt, decode the flag,
    /// decompress one frame whose header declares its size), except the
    /// last: instead of hashing the result to compare it with `id`, it
    /// compares it byte for byte with `plain`, which is at least as strict
    /// when `id` was computed from `plain`, as a writer does.
    pub fn verify(
        &mut self,
        keys: &Keys,
        kind: Kind,
        id: &BlobId,
        sealed: &[u8],
        plain: &[u8],
    ) -> bool {
        if keys
            .open_into(kind, id.as_bytes(), sealed, &mut self.inner)
            .is_err()
        {
            return false;
        }
        let ok = match self.inner.split_first() {
            Some((&FLAG_RAW, rest)) => rest == plain,
            Some((&FLAG_ZSTD, rest)) => {
                frame_matches(&mut self.dctx, &mut self.window, rest, plain)
            }
            _ => false,
        };
        // Keep buffers of ordinary blobs only: one that once held a rare
        // large blob would hold its pages for the rest of the run.
        if self.inner.capacity() > VERIFIER_KEEP_BYTES {
            self.inner = Vec::new();
        }
        ok
    }
}

/// Whether `frame` is one zstd frame, declaring its size, that decompresses
/// to exactly `plain`; compared a window at a time.
fn frame_matches(
    dctx: &mut zstd::zstd_safe::DCtx<'static>,
    window: &mut [u8],
    frame: &[u8],
    plain: &[u8],
) -> bool {
    use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
    if !matches!(zstd::zstd_safe::get_frame_content_size(frame), Ok(Some(n)) if n == plain.len() as u64)
        || dctx.reset(ResetDirective::SessionOnly).is_err()
    {
        return false;
    }
    let mut input = InBuffer::around(frame);
    let mut pos = 0;
    loop {
        let mut output = OutBuffer::around(&mut *window);
        let Ok(left) = dctx.decompress_stream(&mut output, &mut input) else {
            return false;
        };
        let n = output.pos();
        if plain.len() - pos < n || window[..n] != plain[pos..pos + n] {
            return false;
        }
        pos += n;
        if left == 0 {
            // The frame ended: it must be all of the payload and all of `plain`.
            return pos == plain.len() && input.pos() == frame.len();
        }
        if n == 0 && input.pos() == frame.len() {
            return false;
        }
    }
}

/// Opens a sealed blob stored under `id` as `kind`, decompresses it and, for
/// content-addressed kinds, recomputes the keyed id and compares it.
pub fn open(keys: &Keys, kind: Kind, id: &BlobId, sealed: &[u8]) -> Result<Vec<u8>, FormatError> {
    open_owned(keys, kind, id, sealed.to_vec()).map(Plain::into_vec)
}

/// Like [`open`], decrypting inside `sealed` itself: a blob stored raw is
/// returned where it lies, with no copy.
pub fn open_owned(
    keys: &Keys,
    kind: Kind,
    id: &BlobId,
    mut sealed: Vec<u8>,
) -> Result<Plain, FormatError> {
    let plain = match open_in_place(keys, kind, id, &mut sealed)? {
        Opened::Raw(range) => Plain { buf: sealed, range },
        Opened::Decompressed(v) => Plain {
            range: 0..v.len(),
            buf: v,
        },
    };
    Ok(plain)
}

/// A blob opened where it lay: the range of its plaintext in the sealed
/// bytes, or the plaintext decompressed out of them.
#[derive(Debug)]
pub enum Opened {
    /// Stored raw: the plaintext is this range of the buffer.
    Raw(Range<usize>),
    /// Stored compressed: the plaintext.
    Decompressed(Vec<u8>),
}

impl Opened {
    /// The plaintext's length.
    pub fn plain_len(&self) -> usize {
        match self {
            Opened::Raw(r) => r.len(),
            Opened::Decompressed(v) => v.len(),
        }
    }
}

/// Opens and verifies the blob in `sealed` (see [`open`]), decrypting over
/// its ciphertext; on error the plaintext is never handed out.
pub fn open_in_place(
    keys: &Keys,
    kind: Kind,
    id: &BlobId,
    sealed: &mut [u8],
) -> Result<Opened, FormatError> {
    let r = keys.open_in_place(kind, id.as_bytes(), sealed)?;
    let opened = match sealed[r.clone()].split_first() {
        None => return Err(FormatError::invalid("blob", "empty payload")),
        Some((&FLAG_RAW, _)) => Opened::Raw(r.start + 1..r.end),
        Some((&FLAG_ZSTD, rest)) => Opened::Decompressed(decompress(rest)?),
        Some((f, _)) => return Err(FormatError::invalid("blob", format!("unknown flag {f}"))),
    };
    if kind.content_addressed() {
        let plain = match &opened {
            Opened::Raw(r) => &sealed[r.clone()],
            Opened::Decompressed(v) => v.as_slice(),
        };
        let actual = keys.blob_id(plain);
        if actual != *id {
            // Authenticated, yet the content does not match its name: the
            // writer was buggy or holds the key and lies. Never return it.
            return Err(FormatError::IdMismatch {
                expected: id.to_hex(),
                actual: actual.to_hex(),
            });
        }
    }
    Ok(opened)
}

/// An opened blob's plaintext, left in the buffer it was decrypted in.
#[derive(Debug)]
pub struct Plain {
    buf: Vec<u8>,
    range: Range<usize>,
}

impl Plain {
    /// The plaintext as a vector of its own (a copy only when it is a part
    /// of a larger buffer).
    pub fn into_vec(mut self) -> Vec<u8> {
        if self.range.start == 0 {
            self.buf.truncate(self.range.end);
            self.buf
        } else {
            self.buf[self.range].to_vec()
        }
    }
}

impl std::ops::Deref for Plain {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

thread_local! {
    /// One reusable decompression context per thread.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().ok());
}

/// Decompresses one zstd frame whose declared size must be within
/// [`MAX_BLOB_BYTES`]: no decompression bombs.
pub fn decompress(frame: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    decompress_into(frame, &mut out)?;
    Ok(out)
}

/// Like [`decompress`], into `out` (replacing what it held).
pub fn decompress_into(frame: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(n)) => n,
        _ => {
            return Err(FormatError::invalid(
                "blob",
                "zstd frame without a valid content size",
            ))
        }
    };
    if size > MAX_BLOB_BYTES as u64 {
        return Err(FormatError::TooLarge {
            what: "blob",
            len: size,
            max: MAX_BLOB_BYTES as u64,
        });
    }
    out.clear();
    out.reserve(size as usize);
    let n = DECOMPRESSOR
        .with(|d| match d.borrow_mut().as_mut() {
            Some(d) => d.decompress_to_buffer(frame, out),
            None => Err(std::io::Error::other("no zstd context")),
        })
        .map_err(|e| FormatError::invalid("blob", format!("zstd: {e}")))?;
    if n as u64 != size {
        return Err(FormatError::invalid("blob", "zstd frame size mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;
    use rand::rngs::OsRng;

    fn keys() -> Keys {
        Keys::derive(&MasterKey::from_bytes([5u8; 32]))
    }

    #[test]
    fn compressible_and_random_round_trip() {
        let k = keys();
        let mut s = Sealer::new(3);
        let text = b"abc".repeat(10000);
        let id = k.blob_id(&text);
        let sealed = s.seal(&k, Kind::Data, &id, &text, &mut OsRng);
        assert!(sealed.len() < text.len() / 10);
        assert_eq!(open(&k, Kind::Data, &id, &sealed).unwrap(), text);

        let mut rnd = vec![0u8; 50000];
        rand::RngCore::fill_bytes(&mut OsRng, &mut rnd);
        let id = k.blob_id(&rnd);
        let sealed = s.seal(&k, Kind::Data, &id, &rnd, &mut OsRng);
        assert_eq!(sealed.len(), rnd.len() + 1 + SEAL_OVERHEAD);
        assert_eq!(open(&k, Kind::Data, &id, &sealed).unwrap(), rnd);
    }

    #[test]
    fn opened_in_place_raw_blobs_stay_where_they_lie() {
        let k = keys();
        let mut s = Sealer::new(1);
        let mut rnd = vec![0u8; 40000];
        rand::RngCore::fill_bytes(&mut OsRng, &mut rnd);
        let id = k.blob_id(&rnd);
        let mut sealed = s.seal(&k, Kind::Data, &id, &rnd, &mut OsRng);
        let opened = open_in_place(&k, Kind::Data, &id, &mut sealed).unwrap();
        let Opened::Raw(r) = opened else {
            panic!("random bytes are stored raw")
        };
        assert_eq!(r, NONCE_LEN + 1..NONCE_LEN + 1 + rnd.len());
        assert_eq!(&sealed[r], &rnd[..]);

        let text = b"abc".repeat(10000);
        let id = k.blob_id(&text);
        let sealed = s.seal(&k, Kind::Data, &id, &text, &mut OsRng);
        let plain = open_owned(&k, Kind::Data, &id, sealed.clone()).unwrap();
        assert_eq!(&plain[..], &text[..]);
        assert_eq!(plain.into_vec(), text);

        // A flipped byte: refused, and the buffer holds no plaintext: the
        // ciphertext is zeroed, nonce and tag are left.
        let mut bad = sealed.clone();
        bad[NONCE_LEN + 3] ^= 1;
        let before = bad.clone();
        assert!(open_in_place(&k, Kind::Data, &id, &mut bad).is_err());
        let tag_at = bad.len() - crate::crypto::TAG_LEN;
        assert!(bad[NONCE_LEN..tag_at].iter().all(|&b| b == 0));
        assert_eq!(bad[..NONCE_LEN], before[..NONCE_LEN]);
        assert_eq!(bad[tag_at..], before[tag_at..]);
        // Sealed under a lying id: authenticates, the content check refuses it.
        let liar = k.blob_id(b"other");
        let sealed = s.seal(&k, Kind::Data, &liar, &rnd, &mut OsRng);
        assert!(matches!(
            open_owned(&k, Kind::Data, &liar, sealed),
            Err(FormatError::IdMismatch { .. })
        ));
    }

    #[test]
    fn wrong_kind_or_id_is_refused() {
        let k = keys();
        let mut s = Sealer::new(3);
        let id = k.blob_id(b"data");
        let sealed = s.seal(&k, Kind::Data, &id, b"data", &mut OsRng);
        assert!(open(&k, Kind::Tree, &id, &sealed).is_err());
        assert!(open(&k, Kind::Data, &k.blob_id(b"other"), &sealed).is_err());
        // sealed under a lying id: authenticates, but the content check fails
        let liar = k.blob_id(b"other");
        let sealed = s.seal(&k, Kind::Data, &liar, b"data", &mut OsRng);
        assert!(matches!(
            open(&k, Kind::Data, &liar, &sealed),
            Err(FormatError::IdMismatch { .. })
        ));
    }

    #[test]
    fn verifier_accepts_only_the_right_plaintext() {
        let k = keys();
        let mut s = Sealer::new(1);
        let mut v = Verifier::new();
        for plain in [b"abc".repeat(10000), b"short".to_vec()] {
            let id = k.blob_id(&plain);
            let out = s.seal(&k, Kind::Data, &id, &plain, &mut OsRng);
            assert!(v.verify(&k, Kind::Data, &id, &out, &plain));
            // another plaintext, kind or id, or a flipped bit: refused
            let mut other = plain.clone();
            other[0] ^= 1;
            assert!(!v.verify(&k, Kind::Data, &id, &out, &other));
            assert!(!v.verify(&k, Kind::Data, &id, &out, &plain[1..]));
            assert!(!v.verify(&k, Kind::Tree, &id, &out, &plain));
            assert!(!v.verify(&k, Kind::Data, &k.blob_id(b"x"), &out, &plain));
            let mut bad = out.clone();
            bad[30] ^= 1;
            assert!(!v.verify(&k, Kind::Data, &id, &bad, &plain));
            assert_eq!(open(&k, Kind::Data, &id, &out).unwrap(), plain);
        }
    }

    #[test]
    fn frame_check_wants_exactly_one_sized_frame_of_the_plaintext() {
        let plain = b"some text, some text, some more text ".repeat(20000);
        let frame = zstd::bulk::compress(&plain, 1).unwrap();
        let mut d = zstd::zstd_safe::DCtx::create();
        let mut w = vec![0u8; VERIFY_WINDOW];
        assert!(frame_matches(&mut d, &mut w, &frame, &plain));
        // the context is reused across blobs
        assert!(frame_matches(&mut d, &mut w, &frame, &plain));
        let mut longer = plain.clone();
        longer.push(b'x');
        assert!(!frame_matches(&mut d, &mut w, &frame, &longer));
        assert!(!frame_matches(&mut d, &mut w, &frame, &plain[1..]));
        let mut other = plain.clone();
        other[300_000] ^= 1;
        assert!(!frame_matches(&mut d, &mut w, &frame, &other));
        let mut trailing = frame.clone();
        trailing.push(0);
        assert!(!frame_matches(&mut d, &mut w, &trailing, &plain));
        let half = plain.len() / 2;
        let mut two = zstd::bulk::compress(&plain[..half], 1).unwrap();
        two.extend(zstd::bulk::compress(&plain[half..], 1).unwrap());
        assert!(!frame_matches(&mut d, &mut w, &two, &plain));
        assert!(!frame_matches(
            &mut d,
            &mut w,
            &frame[..frame.len() - 1],
            &plain
        ));
        // a frame that does not declare its size is refused, as open() does
        let mut no_size = Vec::new();
        let mut e = zstd::stream::Encoder::new(&mut no_size, 1).unwrap();
        std::io::Write::write_all(&mut e, &plain).unwrap();
        e.finish().unwrap();
        assert!(decompress(&no_size).is_err());
        assert!(!frame_matches(&mut d, &mut w, &no_size, &plain));
    }

    #[test]
    fn bomb_is_refused() {
        let big = vec![0u8; MAX_BLOB_BYTES + 1];
        let frame = zstd::bulk::compress(&big, 1).unwrap();
        assert!(matches!(
            decompress(&frame),
            Err(FormatError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), level in 0i32..5) {
            let k = keys();
            let mut s = Sealer::new(level);
            let id = k.blob_id(&data);
            let sealed = s.seal(&k, Kind::Tree, &id, &data, &mut OsRng);
            prop_assert_eq!(open(&k, Kind::Tree, &id, &sealed).unwrap(), data);
        }
    }
}
