//! Entry points for fuzz targets and the fuzz smoke test; not a stable API.
//!
//! One function per parser of untrusted bytes. Each takes any input, must
//! never panic on it, and asserts round-trip properties wherever a decode
//! succeeds: a panic here is either a parser bug or a broken invariant. Keyed
//! parsers use the fixed master key [`MASTER_KEY`], so the seeds the smoke
//! test builds with the real encoders open under [`keys`].

use rand::rngs::OsRng;

use crate::crypto::{Keys, Kind, MasterKey, SEAL_OVERHEAD};
use crate::format::blob::{self, Sealer};
use crate::format::chunklist;
use crate::format::config::{ConfigFile, REPO_VERSION};
use crate::format::keyfile::KeyFile;
use crate::format::pack::{self, PackEntry, MAGIC_PACK, TRAILER_LEN};
use crate::format::snapshot::{self, MAGIC_SNAPSHOT};
use crate::format::tree::Tree;
use crate::id::{BlobId, RepoId};

thread_local! {
    /// A sealer without and one with compression: zstd contexts are costly
    /// to create, so they are made once per thread.
    static SEALERS: std::cell::RefCell<[Sealer; 2]> =
        std::cell::RefCell::new([Sealer::new(0), Sealer::new(3)]);
}

/// The master key every keyed target uses.
pub const MASTER_KEY: [u8; 32] = [7u8; 32];

/// The subkeys derived from [`MASTER_KEY`].
pub fn keys() -> Keys {
    Keys::derive(&MasterKey::from_bytes(MASTER_KEY))
}

/// Checks that every entry lies in `[8, blob_end)` and that the table
/// survives an encode/decode round trip (the encoding is padded, so entries
/// are compared, not bytes).
fn check_entries(entries: &[PackEntry], blob_end: u64) {
    for e in entries {
        assert!(
            e.offset >= MAGIC_PACK.len() as u64,
            "entry before the magic: {e:?}"
        );
        assert!(
            e.offset + u64::from(e.sealed_len) <= blob_end,
            "entry beyond the blob area ({blob_end}): {e:?}"
        );
        assert!(
            e.sealed_len as usize > SEAL_OVERHEAD,
            "entry too short: {e:?}"
        );
    }
    let enc = pack::encode_header(entries);
    assert_eq!(enc.len() % pack::HEADER_PAD, 0);
    let again = pack::decode_header(&enc, blob_end).expect("re-encoded pack header decodes");
    assert_eq!(again, entries, "pack header round trip");
}

/// A whole pack, its trailer, and the raw bytes read as a header plaintext.
pub fn pack(data: &[u8]) {
    let keys = keys();
    let len = data.len() as u64;

    if let Ok(entries) = pack::decode(&keys, data) {
        let hlen = pack::decode_trailer(&data[data.len() - TRAILER_LEN..], len)
            .expect("a decoded pack has a valid trailer") as usize;
        let blob_end = len - (hlen + TRAILER_LEN) as u64;
        check_entries(&entries, blob_end);
        // The blobs it points at must be safe to open too.
        for e in &entries {
            let start = e.offset as usize;
            let sealed = &data[start..start + e.sealed_len as usize];
            if let Ok(plain) = blob::open(&keys, e.kind, &e.id, sealed) {
                assert_eq!(keys.blob_id(&plain), e.id);
            }
        }
    }

    if data.len() >= TRAILER_LEN {
        if let Ok(hlen) = pack::decode_trailer(&data[data.len() - TRAILER_LEN..], len) {
            let hlen = u64::from(hlen);
            assert!(hlen >= SEAL_OVERHEAD as u64);
            assert!(hlen + (MAGIC_PACK.len() + TRAILER_LEN) as u64 <= len);
        }
    }

    if let Ok(entries) = pack::decode_header(data, len) {
        check_entries(&entries, len);
    }
}

/// Sealed blobs (the first 32 bytes are the id, the rest the sealed blob, so
/// a seed can be a blob that opens), the input as a blob's inner payload and
/// as a bare zstd frame, and seal/open of the input as a plaintext.
pub fn blob(data: &[u8]) {
    let keys = keys();

    if data.len() >= 32 {
        let (id, sealed) = data.split_at(32);
        let id = BlobId::from_slice(id).expect("32 bytes");
        for kind in [Kind::Data, Kind::Tree, Kind::ChunkList] {
            if let Ok(plain) = blob::open(&keys, kind, &id, sealed) {
                assert_eq!(keys.blob_id(&plain), id, "opened blob matches its id");
                assert!(plain.len() <= crate::limits::MAX_BLOB_BYTES);
            }
        }
    }
    // The input as the inner payload of a blob (flag byte, then the raw
    // plaintext or a zstd frame): sealed under a kind that is not
    // content-addressed, it reaches the flag and zstd paths; then sealed
    // under the id of what it holds, it must open the same as a data blob.
    let any_id = BlobId([0x11; 32]);
    let sealed = keys.seal(Kind::Config, any_id.as_bytes(), data, &mut OsRng);
    if let Ok(plain) = blob::open(&keys, Kind::Config, &any_id, &sealed) {
        match data.first() {
            Some(0) => assert_eq!(plain, &data[1..], "raw payload"),
            Some(1) => assert_eq!(
                plain,
                blob::decompress(&data[1..]).expect("a payload that opened decompresses"),
                "zstd payload"
            ),
            _ => panic!("opened a blob with flag {:?}", data.first()),
        }
        let id = keys.blob_id(&plain);
        let sealed = keys.seal(Kind::Data, id.as_bytes(), data, &mut OsRng);
        let again = blob::open(&keys, Kind::Data, &id, &sealed).expect("content matches its id");
        assert_eq!(again, plain);
    }

    // The input as a plaintext: sealing then opening gives it back, with and
    // without compression.
    let id = keys.blob_id(data);
    for which in 0..2 {
        let sealed =
            SEALERS.with(|s| s.borrow_mut()[which].seal(&keys, Kind::Data, &id, data, &mut OsRng));
        assert!(
            sealed.len() <= data.len() + 1 + SEAL_OVERHEAD,
            "sealing never expands beyond raw"
        );
        let plain = blob::open(&keys, Kind::Data, &id, &sealed).expect("a fresh seal opens");
        assert_eq!(plain, data, "seal/open round trip");
        assert!(
            blob::open(&keys, Kind::Tree, &id, &sealed).is_err(),
            "kind is bound"
        );
    }
}

/// Chunk lists: a successful decode re-encodes to the very same bytes.
pub fn chunklist(data: &[u8]) {
    if let Ok(refs) = chunklist::decode(data) {
        assert_eq!(chunklist::encode(&refs), data, "chunk list is canonical");
    }
}

/// Trees: a decoded tree re-encodes to bytes that decode to the same tree;
/// inline chunk lists are decoded too.
pub fn tree(data: &[u8]) {
    let Ok(t) = Tree::decode(data) else { return };
    for n in &t.nodes {
        if let Some(c) = &n.chunks {
            chunklist(c);
        }
    }
    let mut t2 = t.clone();
    let enc = t2.encode();
    assert_eq!(t2, t, "a valid tree is already sorted");
    let again = Tree::decode(&enc).expect("re-encoded tree decodes");
    assert_eq!(again, t, "tree round trip");
    let mut t3 = again;
    assert_eq!(t3.encode(), enc, "tree encoding is stable");
}

/// Snapshot files: the plain part is canonical (it re-encodes to the input's
/// prefix), and an opened record re-encodes to a file that opens the same.
/// The input is also sealed as the record of a file without packs, so the
/// record decoder sees fuzzed bytes too.
pub fn snapshot(data: &[u8]) {
    let keys = keys();
    check_snapshot(&keys, data);

    let mut file = Vec::with_capacity(12 + data.len() + SEAL_OVERHEAD);
    file.extend_from_slice(&MAGIC_SNAPSHOT);
    file.extend_from_slice(&0u32.to_le_bytes());
    let plain_hash = *blake3::hash(&file).as_bytes();
    file.extend_from_slice(&keys.seal(Kind::Snapshot, &plain_hash, data, &mut OsRng));
    check_snapshot(&keys, &file);
}

fn check_snapshot(keys: &Keys, data: &[u8]) {
    let Ok(f) = snapshot::decode(data) else {
        return;
    };
    let plain_len = data.len() - f.sealed.len();
    let mut plain = Vec::with_capacity(plain_len);
    plain.extend_from_slice(&MAGIC_SNAPSHOT);
    plain.extend_from_slice(&(f.packs.len() as u32).to_le_bytes());
    for p in &f.packs {
        plain.extend_from_slice(p.as_bytes());
    }
    assert_eq!(
        plain,
        &data[..plain_len],
        "snapshot plain part is canonical"
    );
    assert_eq!(f.plain_hash, *blake3::hash(&plain).as_bytes());

    if let Ok(rec) = snapshot::open_record(keys, &f) {
        let (id, bytes) = snapshot::encode(keys, f.packs.clone(), &rec, &mut OsRng);
        assert_eq!(id, crate::id::SnapshotId::of(&bytes));
        let f2 = snapshot::decode(&bytes).expect("re-encoded snapshot decodes");
        assert_eq!(f2.packs, f.packs);
        assert_eq!(f2.plain_hash, f.plain_hash);
        let rec2 = snapshot::open_record(keys, &f2).expect("re-encoded record opens");
        assert_eq!(rec2, rec, "snapshot record round trip");
    }
}

/// Key files: a decoded file re-encodes to one that decodes the same, and its
/// parameters can be checked. The passphrase path (Argon2) is not run: too
/// slow for fuzzing.
pub fn keyfile(data: &[u8]) {
    let Ok(kf) = KeyFile::decode(data) else {
        return;
    };
    let _ = kf.params.check();
    let again = KeyFile::decode(&kf.encode()).expect("re-encoded key file decodes");
    assert_eq!(again, kf, "key file round trip");
}

/// Rows of the local cache's blob table, as SQLite could hand them back
/// after any damage: the input is cut into an id and a pack of any length
/// (the first two bytes give them), four integers and a checksum. A row that
/// checks must give back exactly its fields; a row built from what a check
/// returned, with its checksum, checks again.
pub fn cache_row(data: &[u8]) {
    use crate::cache_trust::{RawRow, RowKey};
    let key = RowKey::new(keys().cache_row_key());
    let mut rest = data;
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        a.to_vec()
    };
    let lens = take(2);
    let (id_len, pack_len) = (
        *lens.first().unwrap_or(&32) as usize % 40,
        *lens.get(1).unwrap_or(&32) as usize % 40,
    );
    let id = take(id_len);
    let pack = take(pack_len);
    let mut int = || {
        let mut b = [0u8; 8];
        let got = take(8);
        b[..got.len()].copy_from_slice(&got);
        i64::from_le_bytes(b)
    };
    let (offset, sealed_len, plain_len, kind) = (int(), int(), int(), int());
    let row = RawRow {
        id,
        pack,
        offset,
        sealed_len,
        plain_len,
        kind,
        mac: rest.to_vec(),
    };
    if let Some((id, loc)) = key.check(&row) {
        assert_eq!(id.as_bytes().as_slice(), row.id.as_slice(), "id");
        assert_eq!(loc.pack.as_bytes().as_slice(), row.pack.as_slice(), "pack");
        assert_eq!(
            (
                loc.offset as i64,
                loc.sealed_len as i64,
                loc.plain_len as i64,
                loc.kind as i64
            ),
            (row.offset, row.sealed_len, row.plain_len, row.kind),
            "fields"
        );
    }
    // Whatever the fields, a well-formed row sealed under the key checks.
    if let (Ok(id), Some(pack), Some(kind)) = (
        <[u8; 32]>::try_from(row.id.as_slice()),
        crate::id::PackId::from_slice(&row.pack),
        u8::try_from(row.kind).ok().and_then(Kind::from_u8),
    ) {
        let loc = crate::cache::BlobLocation {
            pack,
            offset: row.offset.unsigned_abs() >> 1,
            sealed_len: row.sealed_len as u32,
            plain_len: row.plain_len as u32,
            kind,
        };
        let id = BlobId(id);
        let sealed = RawRow {
            offset: loc.offset as i64,
            sealed_len: loc.sealed_len as i64,
            plain_len: loc.plain_len as i64,
            mac: key.mac(&id, &loc).to_vec(),
            ..row
        };
        assert_eq!(key.check(&sealed), Some((id, loc)), "a sealed row checks");
    }
}

/// Repository configs: the envelope round-trips, and opened settings re-seal
/// to a config that opens to the same settings. The input is also sealed as
/// the settings of a config, so the settings decoder sees fuzzed bytes too.
pub fn config(data: &[u8]) {
    let keys = keys();
    if let Ok(c) = ConfigFile::decode(data) {
        let again = ConfigFile::decode(&c.encode()).expect("re-encoded config decodes");
        assert_eq!(again, c, "config envelope round trip");
        check_config(&keys, &c);
    }

    let id = RepoId([4; 32]);
    let sealed = keys.seal(Kind::Config, id.as_bytes(), data, &mut OsRng);
    let c = ConfigFile {
        version: REPO_VERSION,
        id,
        settings: hex::encode(sealed),
    };
    check_config(&keys, &c);
}

fn check_config(keys: &Keys, c: &ConfigFile) {
    if let Ok(s) = c.open(keys) {
        s.validate().expect("opened settings are valid");
        let c2 = ConfigFile::create(keys, c.id, &s, &mut OsRng);
        let c2 = ConfigFile::decode(&c2.encode()).expect("fresh config decodes");
        assert_eq!(
            c2.open(keys).expect("fresh config opens"),
            s,
            "settings round trip"
        );
    }
}

/// Text configs an operator writes: the job file (`backup --config`) and,
/// with the `net` feature, the server's file. Any bytes give a value or an
/// error, and a job that validates lists only well-formed sources.
pub fn text_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(job) = crate::job::JobConfig::parse(text) {
        for s in job.sources() {
            s.expect("a validated job has only valid sources");
        }
    }
    #[cfg(feature = "net")]
    if let Ok(c) = crate::net::config::ServerConfig::parse(text) {
        c.validated_clients()
            .expect("a validated server config has valid clients");
        c.listen_addr().expect("a validated listen address");
    }
}

/// The server's little HTTP: request heads routed for `/metrics` (any bytes
/// a local client sends), and webhook URLs from the config (checked, never
/// a panic).
#[cfg(feature = "net")]
pub fn http(data: &[u8]) {
    let _ = crate::net::http::route(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::net::webhook::check_url(text);
    }
}

/// Wire frames: the frame splitter, then both message decoders. A decoded
/// message re-encodes to a frame that decodes to the same message.
pub fn proto_frame(data: &[u8]) {
    use crate::proto::{decode_head, split_frame, Request, Response, HEAD_LEN};
    if let Some(head) = data
        .get(..HEAD_LEN)
        .and_then(|h| <&[u8; HEAD_LEN]>::try_from(h).ok())
    {
        if let Ok((_, len)) = decode_head(head) {
            assert!(len <= crate::proto::MAX_FRAME_BYTES);
        }
    }
    let Ok((tag, payload)) = split_frame(data) else {
        return;
    };
    if let Ok(r) = Request::decode(tag, payload) {
        let f = r.encode();
        let (t2, p2) = split_frame(&f).expect("re-encoded request frame");
        assert_eq!(Request::decode(t2, p2).expect("re-encoded request"), r);
    }
    if let Ok(r) = Response::decode(tag, payload) {
        let f = r.encode();
        let (t2, p2) = split_frame(&f).expect("re-encoded response frame");
        assert_eq!(Response::decode(t2, p2).expect("re-encoded response"), r);
    }
}

/// Parity files: the trailer and the CBOR header a scrub reads from disk.
/// A header that decodes re-encodes to one that decodes the same.
pub fn parity_header(data: &[u8]) {
    use crate::parity::{decode_header, decode_trailer, encode_tail};
    let len = data.len() as u64;
    if let Some(t) = data.len().checked_sub(4).map(|i| &data[i..]) {
        if let Ok(n) = decode_trailer(t, len) {
            assert!(n as u64 + 12 <= len);
        }
    }
    // the input as the header of files of 0 to 4 rows, of either row size
    // (64 KiB in layouts 1 and 2, a 4 KiB sector in layout 3)
    let sizes = [crate::parity::PARITY_BLOCK, crate::parity::SECTOR];
    for (rows, row) in (0..=4u64).flat_map(|r| sizes.map(|z| (r, z as u64))) {
        let file_len = 8 + rows * row + len + 4;
        if let Ok(h) = decode_header(data, file_len) {
            let tail = encode_tail(&h);
            let body = &tail[..tail.len() - 4];
            let again = decode_header(body, file_len - data.len() as u64 + body.len() as u64)
                .expect("re-encoded parity header");
            assert_eq!(again, h);
        }
    }
}

/// `seen.json` as the cache directory could hold it: decoded within its
/// bounds, then a listing and a recording run over it without a panic.
pub fn seen_state(data: &[u8]) {
    if let Some((kept, gone)) = crate::repo::seen::fuzz_state(data) {
        assert!(kept <= crate::repo::seen::KEEP + gone + 1, "{kept} kept");
        assert!(gone <= crate::repo::seen::KEEP, "{gone} gone");
    }
}

/// An NBD server's bytes, as a backup's client session reads them (the
/// handshake, block status and a read), and the NBD URI parser on the
/// same bytes as text.
pub fn nbd_session(data: &[u8]) {
    let _ = crate::source::nbd::fuzz_session(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::source::nbd::NbdUrl::parse(text);
    }
}
