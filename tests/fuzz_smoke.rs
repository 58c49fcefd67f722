//! Fuzz smoke test: every `coffer::fuzzing` entry point on valid seeds built
//! with the real encoders, then on a few thousand deterministic mutations of
//! them and on random buffers. The entry points assert their own round trips,
//! so passing means no panic and no broken invariant.
//!
//! `COFFER_FUZZ_SEEDS=fuzz/corpus cargo test --test fuzz_smoke` also writes
//! the seeds to `fuzz/corpus/<target>/` for cargo-fuzz.

use coffer::crypto::{Kind, MasterKey};
use coffer::format::blob::{self, Sealer};
use coffer::format::chunklist::{self, ChunkRef};
use coffer::format::config::{ConfigFile, Settings};
use coffer::format::keyfile::{KdfParams, KeyFile};
use coffer::format::pack::{self, PackEntry, PackWriter};
use coffer::format::snapshot::{self, SnapshotRecord, SnapshotStats, SourceKind, RECORD_VERSION};
use coffer::format::tree::{Node, NodeKind, Tree, Xattr};
use coffer::fuzzing;
use coffer::id::{BlobId, PackId, RepoId};
use rand::rngs::OsRng;
use serde_bytes::ByteBuf;

/// Mutated inputs per target.
const ITERATIONS: usize = 2000;

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `0..n`; `n` must be positive.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Applies one to four random edits: bit flips, byte writes, interesting
/// values, truncation, insertion, deletion and duplication.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.byte();
            }
            2 if len > 0 => {
                let i = rng.below(len);
                v[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'{', b'0'][rng.below(8)];
            }
            3 => v.truncate(rng.below(len + 1)),
            4 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let ins = rng.bytes(n);
                v.splice(i..i, ins);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                v.drain(i..i + n);
            }
            6 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let dup = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, dup);
            }
            _ if len >= 4 => {
                // overwrite a little-endian u32 with an edge value
                let i = rng.below(len - 3);
                let x = [
                    0u32,
                    1,
                    0x7fff_ffff,
                    0xffff_ffff,
                    len as u32,
                    rng.next() as u32,
                ][rng.below(6)];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            _ => v.push(rng.byte()),
        }
    }
    v
}

/// Runs `target` on every seed, then on [`ITERATIONS`] mutations of them and
/// random buffers.
fn hammer(name: &str, seeds: &[Vec<u8>], target: fn(&[u8])) {
    assert!(!seeds.is_empty());
    if let Some(dir) = std::env::var_os("COFFER_FUZZ_SEEDS") {
        let dir = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
    for s in seeds {
        target(s);
    }
    let tag = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng::new(tag);
    for i in 0..ITERATIONS {
        let input = if i % 8 == 7 {
            let n = rng.below(600);
            rng.bytes(n)
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        target(&input);
    }
}

fn keys() -> coffer::crypto::Keys {
    fuzzing::keys()
}

#[test]
fn pack() {
    let k = keys();
    let mut sealer = Sealer::new(3);
    let mut w = PackWriter::new(Vec::new()).unwrap();
    let blobs: [(Kind, Vec<u8>); 3] = [
        (Kind::Data, b"hello, pack".to_vec()),
        (Kind::Tree, b"abcd".repeat(100)),
        (Kind::ChunkList, chunklist::encode(&[ChunkRef::zeros(4096)])),
    ];
    for (kind, plain) in &blobs {
        let id = k.blob_id(plain);
        let sealed = sealer.seal(&k, *kind, &id, plain, &mut OsRng);
        w.add(*kind, id, &sealed, plain.len() as u32).unwrap();
    }
    let (_, full, entries, _) = w.finish(&k, &mut OsRng).unwrap();
    let (_, empty, _, _) = PackWriter::new(Vec::new())
        .unwrap()
        .finish(&k, &mut OsRng)
        .unwrap();
    assert_eq!(pack::decode(&k, &full).unwrap(), entries);
    assert!(pack::decode(&k, &empty).unwrap().is_empty());

    // A header plaintext whose entries fit in its own length.
    let header = pack::encode_header(&[
        PackEntry {
            kind: Kind::Data,
            id: BlobId([1; 32]),
            offset: 8,
            sealed_len: 100,
            plain_len: 50,
        },
        PackEntry {
            kind: Kind::Tree,
            id: BlobId([2; 32]),
            offset: 108,
            sealed_len: 41,
            plain_len: 1,
        },
    ]);
    assert_eq!(
        pack::decode_header(&header, header.len() as u64)
            .unwrap()
            .len(),
        2
    );

    hammer("pack", &[full, empty, header], fuzzing::pack);
}

#[test]
fn blob() {
    let k = keys();
    let mut sealer = Sealer::new(3);
    let mut seeds = Vec::new();
    for (kind, plain) in [
        (Kind::Data, b"x".repeat(1000)),
        (Kind::Tree, b"short".to_vec()),
        (Kind::ChunkList, Vec::new()),
    ] {
        let id = k.blob_id(&plain);
        let sealed = sealer.seal(&k, kind, &id, &plain, &mut OsRng);
        assert_eq!(blob::open(&k, kind, &id, &sealed).unwrap(), plain);
        seeds.push([id.as_bytes().as_slice(), &sealed].concat());
    }
    // A bare zstd frame: the payload of a compressed blob after its flag byte.
    let plain = b"0123456789".repeat(50);
    let id = k.blob_id(&plain);
    let sealed = sealer.seal(&k, Kind::Data, &id, &plain, &mut OsRng);
    let inner = k.open(Kind::Data, id.as_bytes(), &sealed).unwrap();
    assert_eq!(inner[0], 1, "compressed");
    let frame = inner[1..].to_vec();
    assert_eq!(blob::decompress(&frame).unwrap(), plain);
    seeds.push(frame);
    // Inner payloads (flag byte, then raw bytes or a zstd frame).
    seeds.push(inner);
    seeds.push(b"\0raw payload".to_vec());

    hammer("blob", &seeds, fuzzing::blob);
}

#[test]
fn chunklist() {
    let refs = vec![
        ChunkRef {
            id: BlobId([9; 32]),
            len: 1 << 20,
        },
        ChunkRef::zeros(1 << 40),
        ChunkRef {
            id: BlobId([3; 32]),
            len: 1,
        },
    ];
    let seed = chunklist::encode(&refs);
    assert_eq!(chunklist::decode(&seed).unwrap(), refs);
    hammer("chunklist", &[seed, Vec::new()], fuzzing::chunklist);
}

fn node(name: &[u8], kind: NodeKind) -> Node {
    let mut n = Node {
        name: ByteBuf::from(name.to_vec()),
        kind: Some(kind),
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_123_456_789,
        ctime_ns: -5,
        links: 1,
        ..Default::default()
    };
    match kind {
        NodeKind::Dir => n.subtree = Some(BlobId([1; 32])),
        NodeKind::Symlink => n.target = Some(ByteBuf::from(b"../x".to_vec())),
        NodeKind::File => {
            n.chunks = Some(ByteBuf::from(chunklist::encode(&[ChunkRef::zeros(10)])));
            n.user = Some("alice".into());
            n.xattrs = vec![Xattr {
                name: ByteBuf::from(b"user.k".to_vec()),
                value: ByteBuf::from(vec![0, 1, 2]),
            }];
        }
        NodeKind::Blockdev => n.rdev = 0x0801,
        _ => {}
    }
    n
}

#[test]
fn tree() {
    let mut t = Tree {
        nodes: vec![
            node(b"file", NodeKind::File),
            node(b"dir", NodeKind::Dir),
            node(b"link", NodeKind::Symlink),
            node(b"sda", NodeKind::Blockdev),
            node(b"\xff\xfe", NodeKind::Fifo),
        ],
    };
    let mut big = node(b"big", NodeKind::File);
    big.chunks = None;
    big.lists = Some(vec![BlobId([4; 32]), BlobId([5; 32])]);
    t.nodes.push(big);
    let seed = t.encode();
    assert_eq!(Tree::decode(&seed).unwrap(), t);
    let empty = Tree::default().encode();
    assert!(Tree::decode(&empty).unwrap().nodes.is_empty());
    hammer("tree", &[seed, empty], fuzzing::tree);
}

#[test]
fn snapshot() {
    let k = keys();
    let record = SnapshotRecord {
        version: RECORD_VERSION,
        time_ns: 1_700_000_000_000_000_000,
        host: "host".into(),
        user: "user".into(),
        source: SourceKind::Tree,
        paths: vec!["/etc".into(), "/home".into()],
        tags: vec!["daily".into()],
        tree: BlobId([2; 32]),
        stats: SnapshotStats {
            files: 10,
            bytes: 12345,
            ..Default::default()
        },
        image: None,
    };
    let (_, seed) = snapshot::encode(
        &k,
        vec![PackId([3; 32]), PackId([1; 32])],
        &record,
        &mut OsRng,
    );
    let (_, bare) = snapshot::encode(&k, Vec::new(), &record, &mut OsRng);
    for s in [&seed, &bare] {
        let f = snapshot::decode(s).unwrap();
        assert_eq!(snapshot::open_record(&k, &f).unwrap(), record);
    }
    // The record plaintext (CBOR): the target also seals its input as a record.
    let f = snapshot::decode(&seed).unwrap();
    let cbor = k.open(Kind::Snapshot, &f.plain_hash, f.sealed).unwrap();
    hammer("snapshot", &[seed, bare, cbor], fuzzing::snapshot);
}

#[test]
fn keyfile() {
    let master = MasterKey::from_bytes([9; 32]);
    let kf = KeyFile::create(
        &master,
        b"passphrase",
        KdfParams::FLOOR,
        RepoId([1; 32]),
        1_700_000_000,
        "host".into(),
        &mut OsRng,
    )
    .unwrap();
    let seed = kf.encode();
    let d = KeyFile::decode(&seed).unwrap();
    assert_eq!(d, kf);
    d.params.check().unwrap();
    hammer("keyfile", &[seed], fuzzing::keyfile);
}

#[test]
fn config() {
    let k = keys();
    let s = Settings::default();
    let c = ConfigFile::create(&k, RepoId([4; 32]), &s, &mut OsRng);
    let seed = c.encode();
    assert_eq!(ConfigFile::decode(&seed).unwrap().open(&k).unwrap(), s);
    // The settings plaintext (CBOR): the target also seals its input as settings.
    let sealed = hex::decode(&c.settings).unwrap();
    let cbor = k.open(Kind::Config, c.id.as_bytes(), &sealed).unwrap();
    hammer("config", &[seed, cbor], fuzzing::config);
}

#[test]
fn text_config() {
    let job = b"repo = \"/r\"\npre = \"true\"\n[[source]]\npath = \"/\"\nexclude = [\"/proc\"]\n\n[[source]]\nname = \"a.dump\"\ncommand = [\"pg_dump\", \"a\"]\n".to_vec();
    assert!(coffer::job::JobConfig::parse(std::str::from_utf8(&job).unwrap()).is_ok());
    let server = b"data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"0000000000000000000000000000000000000000000000000000000000000001\"\nnamespace = \"a\"\n".to_vec();
    assert!(
        coffer::net::config::ServerConfig::parse(std::str::from_utf8(&server).unwrap()).is_ok()
    );
    hammer("text_config", &[job, server], fuzzing::text_config);
}

#[test]
fn http() {
    let seeds = vec![
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n".to_vec(),
        b"http://127.0.0.1:9000/hook".to_vec(),
        b"http://[::1]/a?b".to_vec(),
    ];
    assert_eq!(
        coffer::net::http::route(&seeds[0]),
        coffer::net::http::Route::Metrics { body: true }
    );
    hammer("http", &seeds, fuzzing::http);
}

#[test]
fn proto_frame() {
    use coffer::id::{PackId, SnapshotId};
    use coffer::proto::{ErrorCode, Request, Response};
    let seeds = vec![
        Request::Hello {
            version: 1,
            namespace: "vps-101".into(),
        }
        .encode(),
        Request::PutPack {
            id: PackId([1; 32]),
            len: 123,
        }
        .encode(),
        Request::ReadPack {
            id: PackId([2; 32]),
            offset: 8,
            len: 99,
        }
        .encode(),
        Request::Lock {
            id: SnapshotId([3; 32]),
            until: 1_900_000_000,
            hold: true,
        }
        .encode(),
        Request::ListPacks.encode(),
        Response::Error {
            code: ErrorCode::Denied,
            message: "no".into(),
        }
        .encode(),
        Response::Packs {
            packs: vec![(PackId([4; 32]), 77)],
        }
        .encode(),
    ];
    for s in &seeds {
        let (tag, p) = coffer::proto::split_frame(s).unwrap();
        assert!(Request::decode(tag, p).is_ok() || Response::decode(tag, p).is_ok());
    }
    hammer("proto_frame", &seeds, fuzzing::proto_frame);
}

#[test]
fn parity_header() {
    use coffer::parity::{encode_tail, Member, StripeHeader, PARITY_BLOCK};
    let h = StripeHeader {
        version: 1,
        stripe: 3,
        m: 2,
        block: PARITY_BLOCK as u32,
        rows: 2,
        members: vec![Member {
            pack: coffer::id::PackId([5; 32]),
            size: PARITY_BLOCK as u64 + 10,
            sums: serde_bytes::ByteBuf::from(vec![1u8; 64]),
        }],
        index: 0,
        sums: serde_bytes::ByteBuf::from(vec![2u8; 64]),
    };
    let tail = encode_tail(&h);
    let header = tail[..tail.len() - 4].to_vec();
    let file_len = 8 + 2 * PARITY_BLOCK as u64 + tail.len() as u64;
    assert_eq!(coffer::parity::decode_header(&header, file_len).unwrap(), h);
    // and a layout-3 header: 4 KiB rows
    let sector = coffer::parity::SECTOR as u64;
    let mut h3 = h.clone();
    h3.version = 3;
    h3.block = sector as u32;
    h3.rows = 17;
    h3.members[0].size = 16 * sector + 10;
    h3.members[0].sums = serde_bytes::ByteBuf::from(vec![1u8; 17 * 32]);
    h3.sums = serde_bytes::ByteBuf::from(vec![2u8; 17 * 32]);
    let tail3 = encode_tail(&h3);
    let header3 = tail3[..tail3.len() - 4].to_vec();
    let len3 = 8 + 17 * sector + tail3.len() as u64;
    assert_eq!(coffer::parity::decode_header(&header3, len3).unwrap(), h3);
    hammer(
        "parity_header",
        &[header, tail, header3, tail3],
        fuzzing::parity_header,
    );
}

#[test]
fn cache_row() {
    use coffer::cache::BlobLocation;
    use coffer::cache_trust::RowKey;
    let key = RowKey::new(fuzzing::keys().cache_row_key());
    let (id, loc) = (
        BlobId([3; 32]),
        BlobLocation {
            pack: PackId([4; 32]),
            offset: 8,
            sealed_len: 1000,
            plain_len: 960,
            kind: Kind::Data,
        },
    );
    let mut seed = vec![32, 32];
    seed.extend_from_slice(id.as_bytes());
    seed.extend_from_slice(loc.pack.as_bytes());
    for n in [8i64, 1000, 960, Kind::Data as i64] {
        seed.extend_from_slice(&n.to_le_bytes());
    }
    seed.extend_from_slice(&key.mac(&id, &loc));
    hammer("cache_row", &[seed], fuzzing::cache_row);
}

#[test]
fn seen_state() {
    let id = |b: u8| hex::encode([b; 32]);
    // Newest first; the fuzz entry lists every other one (1 and 3).
    let seed = format!(
        r#"{{"newest_ns": 2000000000000000000, "seen": [
            {{"id": "{}", "time_ns": 2000000000000000000, "expires": 2000000100, "hold": false}},
            {{"id": "{}", "time_ns": 1900000000000000000, "expires": 1900000000, "hold": true}},
            {{"id": "{}", "time_ns": 1850000000000000000}},
            {{"id": "{}", "time_ns": 1800000000000000000}}],
          "forgetting": ["{}"]}}"#,
        id(1),
        id(2),
        id(3),
        id(4),
        id(5)
    );
    let seed = seed.into_bytes();
    // The seed decodes: of the two not listed, the expired one (on hold
    // when seen) is not reported gone, the other one is.
    let (_, gone) = coffer::repo::seen::fuzz_state(&seed).expect("the seed decodes");
    assert_eq!(gone, 1);
    hammer("seen_state", &[seed], fuzzing::seen_state);
}

#[test]
fn nbd_session() {
    // A whole session as a server would send it: greeting, structured
    // replies, base:allocation (context 1), the export's size, a block
    // status reply and a read answered by a data and a hole chunk.
    let opt = |o: u32, kind: u32, d: &[u8]| {
        let mut r = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
        r.extend_from_slice(&o.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&(d.len() as u32).to_be_bytes());
        r.extend_from_slice(d);
        r
    };
    let chunk = |flags: u16, kind: u16, cookie: u64, d: &[u8]| {
        let mut r = 0x668e_33efu32.to_be_bytes().to_vec();
        r.extend_from_slice(&flags.to_be_bytes());
        r.extend_from_slice(&kind.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&(d.len() as u32).to_be_bytes());
        r.extend_from_slice(d);
        r
    };
    let mut s = b"NBDMAGICIHAVEOPT".to_vec();
    s.extend_from_slice(&3u16.to_be_bytes());
    s.extend(opt(8, 1, &[]));
    let mut ctx = 1u32.to_be_bytes().to_vec();
    ctx.extend_from_slice(b"base:allocation");
    s.extend(opt(10, 4, &ctx));
    s.extend(opt(10, 1, &[]));
    let mut info = 0u16.to_be_bytes().to_vec();
    info.extend_from_slice(&65536u64.to_be_bytes());
    info.extend_from_slice(&1u16.to_be_bytes());
    s.extend(opt(7, 3, &info));
    s.extend(opt(7, 1, &[]));
    let mut bs = 1u32.to_be_bytes().to_vec();
    for (len, flags) in [(4096u32, 0u32), (61440, 3)] {
        bs.extend_from_slice(&len.to_be_bytes());
        bs.extend_from_slice(&flags.to_be_bytes());
    }
    s.extend(chunk(1, 5, 1, &bs));
    let mut data = 0u64.to_be_bytes().to_vec();
    data.extend(std::iter::repeat_n(0xab, 4096));
    s.extend(chunk(0, 1, 2, &data));
    let before_hole = s.clone();
    let hole_at = |at: u64| {
        let mut hole = at.to_be_bytes().to_vec();
        hole.extend_from_slice(&61440u32.to_be_bytes());
        chunk(1, 2, 2, &hole)
    };
    s.extend(hole_at(4096));
    // Three reads in flight at once (cookies 3, 4, 5), answered out of
    // order and interleaved: 5 whole, half of 4, 3 whole, the rest of 4.
    let at = |off: u64, byte: u8| {
        let mut d = off.to_be_bytes().to_vec();
        d.extend(std::iter::repeat_n(byte, 4096));
        d
    };
    let mut end_hole = 61440u64.to_be_bytes().to_vec();
    end_hole.extend_from_slice(&4096u32.to_be_bytes());
    let before_many = s.clone();
    let answer = |first: Vec<u8>| {
        let mut r = before_many.clone();
        r.extend(first);
        r.extend(chunk(0, 2, 4, &end_hole));
        r.extend(chunk(1, 1, 3, &at(0, 0x33)));
        r.extend(chunk(1, 0, 4, &[]));
        r
    };
    let s = answer(chunk(1, 1, 5, &at(0, 0x55)));
    let got = coffer::source::nbd::fuzz_session(&s).expect("the seed session reads");
    let mut want = vec![0xab; 4096];
    want.resize(65536, 0);
    want.extend([0x33; 4096]);
    want.extend([0; 4096]);
    want.extend([0x55; 4096]);
    assert!(got == want, "each reply's bytes land in its own read");
    // A hole over the data chunk: the lengths add up to the read's, but the
    // last 4 KiB were never sent.
    let mut overlap = before_hole;
    overlap.extend(hole_at(0));
    assert!(
        coffer::source::nbd::fuzz_session(&overlap).is_none(),
        "overlapping chunks make a read"
    );
    // A reply for a request never sent, and a second one for a request
    // answered in full already.
    let five = chunk(1, 1, 5, &at(0, 0x55));
    let twice = [five.clone(), five].concat();
    for (first, why) in [
        (chunk(1, 1, 9, &at(0, 0x55)), "a request never sent"),
        (
            chunk(1, 1, 2, &at(0, 0x55)),
            "a request of an earlier batch",
        ),
        (twice, "a request answered in full already"),
    ] {
        let bad = answer(first);
        assert!(
            coffer::source::nbd::fuzz_session(&bad).is_none(),
            "a reply for {why} is taken"
        );
    }
    hammer("nbd_session", &[s], fuzzing::nbd_session);
}
