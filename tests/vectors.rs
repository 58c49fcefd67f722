//! Known-answer vectors of the repository format (`docs/vectors/*.json`).
//!
//! Each vector file is rebuilt here with the library and a deterministic
//! random stream and must match byte for byte; the stored bytes are then read
//! back twice: once with the library, once with a small reader written from
//! `docs/format.md` alone (module `spec`), so the document and the code cannot
//! drift apart unnoticed.
//!
//! Regenerate after a deliberate format change (and bump the version):
//! `cargo test --test vectors -- --ignored regenerate`.

use std::path::PathBuf;

use coffer::chunk::{Chunker, ChunkerParams};
use coffer::crypto::{Keys, Kind, MasterKey};
use coffer::format::blob::{self, Sealer};
use coffer::format::chunklist::{self, ChunkRef};
use coffer::format::config::{ConfigFile, Settings};
use coffer::format::keyfile::{KdfParams, KeyFile};
use coffer::format::pack::{self, PackEntry, PackWriter};
use coffer::format::snapshot::{self, SnapshotRecord, SnapshotStats, SourceKind, RECORD_VERSION};
use coffer::format::tree::{Node, NodeKind, Tree};
use coffer::id::{BlobId, PackId, RepoId, SnapshotId};
use serde_bytes::ByteBuf;
use serde_json::{json, Value};

/// The master key of every vector: bytes 0x00..=0x1f.
fn master() -> MasterKey {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = i as u8;
    }
    MasterKey::from_bytes(k)
}

const CTX_ID: &str = "coffer 2026-11 chunk id key v1";
const CTX_GEAR: &str = "coffer 2026-11 chunker gear table v1";
const CTX_ENC: &str = "coffer 2026-11 object encryption key v1";
const PASSPHRASE: &str = "correct horse battery staple";

/// A deterministic byte stream posing as a CSPRNG: first `prefix`, then the
/// BLAKE3 XOF of a label (or nothing: running out is a bug in the vector).
struct TestRng {
    prefix: Vec<u8>,
    used: usize,
    xof: Option<blake3::OutputReader>,
}

impl TestRng {
    /// The BLAKE3 XOF of `label` (plain hash, UTF-8 bytes).
    fn labelled(label: &str) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(label.as_bytes());
        TestRng {
            prefix: Vec::new(),
            used: 0,
            xof: Some(h.finalize_xof()),
        }
    }

    /// Exactly these bytes, then nothing.
    fn fixed(bytes: &[u8]) -> Self {
        TestRng {
            prefix: bytes.to_vec(),
            used: 0,
            xof: None,
        }
    }
}

impl rand::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let n = dest.len().min(self.prefix.len() - self.used);
        dest[..n].copy_from_slice(&self.prefix[self.used..self.used + n]);
        self.used += n;
        if n < dest.len() {
            self.xof
                .as_mut()
                .expect("fixed test byte stream exhausted")
                .fill(&mut dest[n..]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand::CryptoRng for TestRng {}

/// The first `len` bytes of the BLAKE3 XOF of `label`.
fn xof_bytes(label: &str, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    TestRng::labelled(label).xof.as_mut().unwrap().fill(&mut v);
    v
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Data => "data",
        Kind::Tree => "tree",
        Kind::ChunkList => "chunklist",
        Kind::PackHeader => "packheader",
        Kind::Snapshot => "snapshot",
        Kind::Config => "config",
        Kind::KeyFile => "keyfile",
    }
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/vectors")
        .join(name)
}

fn load(name: &str) -> Value {
    let p = path(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn id_of(v: &Value) -> [u8; 32] {
    hex_of(v).try_into().expect("32 bytes")
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().expect("unsigned number")
}

/// Compares a rebuilt vector file with the stored one, key by key.
fn assert_same(name: &str, built: &Value) {
    let stored = load(name);
    let (Value::Object(b), Value::Object(s)) = (built, &stored) else {
        panic!("{name}: top level must be an object");
    };
    let bk: Vec<&String> = b.keys().collect();
    let sk: Vec<&String> = s.keys().collect();
    assert_eq!(bk, sk, "{name}: top-level keys differ");
    for (k, v) in b {
        assert_eq!(
            v, &s[k],
            "{name}: field {k:?} differs from the stored vector"
        );
    }
}

// ---------------------------------------------------------------- builders

fn build_keys() -> Value {
    let m = master();
    let keys = Keys::derive(&m);
    let plaintexts: [&[u8]; 3] = [b"", b"abc", &(0u8..=250).collect::<Vec<u8>>()];
    let ids: Vec<Value> = plaintexts
        .iter()
        .map(|p| json!({ "plaintext": hex::encode(p), "id": keys.blob_id(p).to_hex() }))
        .collect();
    let gear = keys.gear_table();
    let first4: Vec<String> = gear[..4].iter().map(|v| format!("{v:016x}")).collect();

    let params = ChunkerParams {
        min: 4096,
        avg: 16384,
        max: 65536,
    };
    let input = xof_bytes("coffer vectors chunker input", 262_144);
    let lengths = Chunker::new(params, keys.gear_table()).split(&input);

    let mut rng = TestRng::labelled("coffer vectors keyfile");
    let mut rid = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rng, &mut rid);
    let repo = RepoId(rid);
    let kf = KeyFile::create(
        &m,
        PASSPHRASE.as_bytes(),
        // One lane, as every key file written before two became the
        // default: such files must keep opening.
        KdfParams {
            parallelism: 1,
            ..KdfParams::DEFAULT
        },
        repo,
        1_767_225_600,
        "vps-042".into(),
        &mut rng,
    )
    .unwrap();
    let settings = Settings::default();
    let cfg = ConfigFile::create(
        &keys,
        repo,
        &settings,
        &mut TestRng::labelled("coffer vectors config"),
    );

    json!({
        "description": "Key derivation, blob ids, gear table, chunk cuts, a key file and a config file for a fixed master key. See docs/format.md.",
        "master_key": hex::encode(m.expose()),
        "subkeys": {
            "id": { "context": CTX_ID, "key": hex::encode(blake3::derive_key(CTX_ID, m.expose())) },
            "gear": { "context": CTX_GEAR, "key": hex::encode(blake3::derive_key(CTX_GEAR, m.expose())) },
            "encryption": { "context": CTX_ENC, "key": hex::encode(blake3::derive_key(CTX_ENC, m.expose())) },
        },
        "blob_ids": ids,
        "gear_table_first4": first4,
        "magics": {
            "pack": { "label": "coffer pack v1", "bytes": hex::encode(pack::MAGIC_PACK) },
            "snapshot": { "label": "coffer snapshot v1", "bytes": hex::encode(snapshot::MAGIC_SNAPSHOT) },
        },
        "chunking": {
            "params": params,
            "input": "first 262144 bytes of the BLAKE3 XOF of \"coffer vectors chunker input\"",
            "input_blake3": blake3::hash(&input).to_hex().to_string(),
            "lengths": lengths,
        },
        "keyfile": {
            "rng": "BLAKE3 XOF of \"coffer vectors keyfile\": repository id (32), salt (32), nonce (24)",
            "passphrase": PASSPHRASE,
            "document": serde_json::to_value(&kf).unwrap(),
        },
        "config": {
            "rng": "BLAKE3 XOF of \"coffer vectors config\": nonce (24)",
            "settings": serde_json::to_value(&settings).unwrap(),
            "settings_cbor": hex::encode(spec::SpecKeys::derive(m.expose()).open(Kind::Config, &rid, &hex::decode(&cfg.settings).unwrap())),
            "document": serde_json::to_value(&cfg).unwrap(),
        },
    })
}

fn keys_enc(m: &MasterKey) -> [u8; 32] {
    blake3::derive_key(CTX_ENC, m.expose())
}

/// The two blobs of blob.json: `(name, kind, plaintext, nonce)`.
fn blob_inputs() -> Vec<(&'static str, Kind, Vec<u8>, [u8; 24])> {
    let mut n1 = [0u8; 24];
    let mut n2 = [0u8; 24];
    for i in 0..24 {
        n1[i] = i as u8;
        n2[i] = 0xa0 + i as u8;
    }
    vec![
        ("raw", Kind::Data, b"hello, coffer\n".to_vec(), n1),
        ("zstd", Kind::Tree, b"coffer ".repeat(40), n2),
    ]
}

fn build_blob() -> Value {
    let m = master();
    let keys = Keys::derive(&m);
    let mut sealer = Sealer::new(Settings::default().compression);
    let blobs: Vec<Value> = blob_inputs()
        .into_iter()
        .map(|(name, kind, plain, nonce)| {
            let id = keys.blob_id(&plain);
            let sealed = sealer.seal(&keys, kind, &id, &plain, &mut TestRng::fixed(&nonce));
            let inner = spec::SpecKeys::derive(m.expose()).open(kind, id.as_bytes(), &sealed);
            json!({
                "name": name,
                "kind": kind as u8,
                "kind_name": kind_name(kind),
                "id": id.to_hex(),
                "nonce": hex::encode(nonce),
                "associated_data": hex::encode(spec::aad(kind, id.as_bytes())),
                "plaintext": hex::encode(&plain),
                "flag": inner[0],
                "payload": hex::encode(&inner[1..]),
                "sealed": hex::encode(&sealed),
            })
        })
        .collect();
    json!({
        "description": "Sealed blobs: nonce || XChaCha20-Poly1305(flag || payload) || tag, zstd at the default level (1). See docs/format.md.",
        "master_key": hex::encode(m.expose()),
        "encryption_key": hex::encode(keys_enc(&m)),
        "blobs": blobs,
    })
}

/// The blobs of the example pack, in pack order: `(kind, plaintext)`. A
/// small, coherent repository: two data chunks, a chunk list and the root
/// tree that references them.
fn pack_blobs(keys: &Keys) -> Vec<(Kind, Vec<u8>)> {
    let d1 = b"hello, coffer\n".to_vec();
    let d2 = b"a line that compresses well. ".repeat(20);
    let (id1, id2) = (keys.blob_id(&d1), keys.blob_id(&d2));
    let r = |id: BlobId, d: &[u8]| ChunkRef {
        id,
        len: d.len() as u64,
    };
    let list = chunklist::encode(&[r(id2, &d2), ChunkRef::zeros(1 << 20)]);
    let list_id = keys.blob_id(&list);
    let base = |name: &str, kind: NodeKind| Node {
        name: ByteBuf::from(name.as_bytes().to_vec()),
        kind: Some(kind),
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        user: Some("alice".into()),
        group: Some("alice".into()),
        mtime_ns: 1_767_225_000_123_456_789,
        ctime_ns: 1_767_225_000_123_456_789,
        inode: 0,
        dev: 0,
        links: 1,
        ..Default::default()
    };
    let mut a = base("a.txt", NodeKind::File);
    a.size = (d1.len() + 4096 + d2.len()) as u64;
    a.inode = 11;
    a.chunks = Some(ByteBuf::from(chunklist::encode(&[
        r(id1, &d1),
        ChunkRef::zeros(4096),
        r(id2, &d2),
    ])));
    let mut b = base("b.img", NodeKind::File);
    b.size = (d2.len() + (1 << 20)) as u64;
    b.inode = 12;
    b.lists = Some(vec![list_id]);
    let mut l = base("link", NodeKind::Symlink);
    l.mode = 0o777;
    l.size = 5;
    l.inode = 13;
    l.target = Some(ByteBuf::from(b"a.txt".to_vec()));
    let mut tree = Tree {
        nodes: vec![l, b, a],
    };
    let tree = tree.encode();
    vec![
        (Kind::Data, d1),
        (Kind::Data, d2),
        (Kind::ChunkList, list),
        (Kind::Tree, tree),
    ]
}

struct BuiltPack {
    name: PackId,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
    tree: BlobId,
}

fn make_pack(keys: &Keys) -> BuiltPack {
    let mut rng = TestRng::labelled("coffer vectors pack");
    let mut sealer = Sealer::new(Settings::default().compression);
    let mut w = PackWriter::new(Vec::new()).unwrap();
    let mut tree = BlobId::default();
    for (kind, plain) in pack_blobs(keys) {
        let id = keys.blob_id(&plain);
        if kind == Kind::Tree {
            tree = id;
        }
        let sealed = sealer.seal(keys, kind, &id, &plain, &mut rng);
        w.add(kind, id, &sealed, plain.len() as u32).unwrap();
    }
    let (name, bytes, entries, size) = w.finish(keys, &mut rng).unwrap();
    assert_eq!(size, bytes.len() as u64);
    BuiltPack {
        name,
        bytes,
        entries,
        tree,
    }
}

fn build_pack() -> Value {
    let m = master();
    let keys = Keys::derive(&m);
    let p = make_pack(&keys);
    let hlen = u32::from_le_bytes(p.bytes[p.bytes.len() - 4..].try_into().unwrap()) as usize;
    let header = &p.bytes[p.bytes.len() - 4 - hlen..p.bytes.len() - 4];
    let blob_end = p
        .entries
        .iter()
        .map(|e| e.offset + e.sealed_len as u64)
        .max()
        .unwrap();
    let blobs: Vec<Value> = pack_blobs(&keys)
        .iter()
        .map(|(k, plain)| {
            json!({ "kind": *k as u8, "kind_name": kind_name(*k), "id": keys.blob_id(plain).to_hex(), "plaintext": hex::encode(plain) })
        })
        .collect();
    let entries: Vec<Value> = p
        .entries
        .iter()
        .map(|e| {
            json!({
                "kind": e.kind as u8,
                "id": e.id.to_hex(),
                "offset": e.offset,
                "sealed_len": e.sealed_len,
                "plain_len": e.plain_len,
            })
        })
        .collect();
    let padme: Vec<Value> = [
        0u64,
        1,
        2,
        9,
        100,
        1000,
        1234,
        12345,
        1 << 20,
        (1 << 20) + 1,
        16_777_217,
        123_456_789,
    ]
    .iter()
    .map(|&n| json!([n, pack::padme(n)]))
    .collect();
    json!({
        "description": "A complete pack: two data blobs (raw and zstd), a chunk list and a tree. See docs/format.md.",
        "master_key": hex::encode(m.expose()),
        "rng": "BLAKE3 XOF of \"coffer vectors pack\": one 24-byte nonce per blob in pack order, then the header nonce",
        "compression_level": Settings::default().compression,
        "blobs": blobs,
        "name": p.name.to_hex(),
        "size": p.bytes.len(),
        "blob_end": blob_end,
        "padding": p.bytes.len() as u64 - blob_end - 4 - hlen as u64,
        "header_len": hlen,
        "header_plaintext": hex::encode(spec::SpecKeys::derive(m.expose()).open(Kind::PackHeader, &[0; 32], header)),
        "entries": entries,
        "pack": hex::encode(&p.bytes),
        "padme": padme,
    })
}

fn record(tree: BlobId) -> SnapshotRecord {
    SnapshotRecord {
        version: RECORD_VERSION,
        time_ns: 1_767_225_600_000_000_000,
        host: "vps-042".into(),
        user: "root".into(),
        source: SourceKind::Tree,
        paths: vec!["/srv".into()],
        tags: vec!["nightly".into()],
        tree,
        stats: SnapshotStats {
            files: 2,
            dirs: 1,
            others: 1,
            bytes: 1_049_738,
            files_unchanged: 0,
            new_blobs: 4,
            new_bytes: 1234,
            new_pack_bytes: 1000,
            new_packs: 1,
        },
        image: None,
    }
}

fn build_snapshot() -> Value {
    let m = master();
    let keys = Keys::derive(&m);
    let p = make_pack(&keys);
    let rec = record(p.tree);
    let (id, bytes) = snapshot::encode(
        &keys,
        vec![p.name],
        &rec,
        &mut TestRng::labelled("coffer vectors snapshot"),
    );
    let plain_len = 12 + 32;
    let plain_hash = blake3::hash(&bytes[..plain_len]);
    let sealed = &bytes[plain_len..];
    json!({
        "description": "A snapshot file referencing the pack of pack.json; its root tree is that pack's tree blob. See docs/format.md.",
        "master_key": hex::encode(m.expose()),
        "rng": "BLAKE3 XOF of \"coffer vectors snapshot\": nonce (24)",
        "packs": [p.name.to_hex()],
        "record": serde_json::to_value(&rec).unwrap(),
        "record_cbor": hex::encode(spec::SpecKeys::derive(m.expose()).open(Kind::Snapshot, plain_hash.as_bytes(), sealed)),
        "plain_part": hex::encode(&bytes[..plain_len]),
        "plain_hash": plain_hash.to_hex().to_string(),
        "sealed_record": hex::encode(sealed),
        "file": hex::encode(&bytes),
        "id": id.to_hex(),
    })
}

/// Builds the contents of one vector file.
type Builder = fn() -> Value;

const FILES: [(&str, Builder); 4] = [
    ("keys.json", build_keys),
    ("blob.json", build_blob),
    ("pack.json", build_pack),
    ("snapshot.json", build_snapshot),
];

#[test]
#[ignore = "writes docs/vectors/*.json; run after a deliberate format change"]
fn regenerate_vectors() {
    std::fs::create_dir_all(path("")).unwrap();
    for (name, build) in FILES {
        let mut s = serde_json::to_string_pretty(&build()).unwrap();
        s.push('\n');
        std::fs::write(path(name), s).unwrap();
    }
}

// ------------------------------------------------- rebuilt == stored

#[test]
fn keys_vectors_match() {
    assert_same("keys.json", &build_keys());
}

#[test]
fn blob_vectors_match() {
    assert_same("blob.json", &build_blob());
}

#[test]
fn pack_vectors_match() {
    assert_same("pack.json", &build_pack());
}

#[test]
fn snapshot_vectors_match() {
    assert_same("snapshot.json", &build_snapshot());
}

// ------------------------------------------- stored bytes read back

#[test]
fn stored_keys_open() {
    let v = load("keys.json");
    let m = MasterKey::from_bytes(id_of(&v["master_key"]));
    let keys = Keys::derive(&m);
    // subkeys by the documented context strings
    for (name, ctx) in [("id", CTX_ID), ("gear", CTX_GEAR), ("encryption", CTX_ENC)] {
        assert_eq!(v["subkeys"][name]["context"], ctx);
        assert_eq!(
            id_of(&v["subkeys"][name]["key"]),
            blake3::derive_key(ctx, m.expose())
        );
    }
    let id_key = id_of(&v["subkeys"]["id"]["key"]);
    for e in v["blob_ids"].as_array().unwrap() {
        let p = hex_of(&e["plaintext"]);
        let want = id_of(&e["id"]);
        assert_eq!(keys.blob_id(&p).0, want);
        assert_eq!(*blake3::keyed_hash(&id_key, &p).as_bytes(), want);
    }
    // gear table: u64 little-endian from the XOF of the keyed hash of nothing
    let mut xof = blake3::Hasher::new_keyed(&id_of(&v["subkeys"]["gear"]["key"])).finalize_xof();
    let lib = keys.gear_table();
    for (i, e) in v["gear_table_first4"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let mut b = [0u8; 8];
        xof.fill(&mut b);
        let want = u64::from_str_radix(e.as_str().unwrap(), 16).unwrap();
        assert_eq!(u64::from_le_bytes(b), want);
        assert_eq!(lib[i], want);
    }
    for (name, magic) in [
        ("pack", pack::MAGIC_PACK),
        ("snapshot", snapshot::MAGIC_SNAPSHOT),
    ] {
        let e = &v["magics"][name];
        let label = e["label"].as_str().unwrap();
        assert_eq!(
            hex_of(&e["bytes"]),
            &blake3::hash(label.as_bytes()).as_bytes()[..8]
        );
        assert_eq!(hex_of(&e["bytes"]), magic);
    }
    // chunk cuts cover the input
    let c = &v["chunking"];
    let input = xof_bytes("coffer vectors chunker input", 262_144);
    assert_eq!(
        blake3::hash(&input).to_hex().as_str(),
        c["input_blake3"].as_str().unwrap()
    );
    let lens: Vec<u64> = c["lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(u64_of)
        .collect();
    assert_eq!(lens.iter().sum::<u64>(), input.len() as u64);
    // the key file opens with its passphrase and gives the master key
    let kf: KeyFile = serde_json::from_value(v["keyfile"]["document"].clone()).unwrap();
    let kf = KeyFile::decode(&serde_json::to_vec(&kf).unwrap()).unwrap();
    let pw = v["keyfile"]["passphrase"].as_str().unwrap();
    assert_eq!(kf.open(pw.as_bytes()).unwrap().expose(), m.expose());
    assert!(kf.open(b"wrong").is_err());
    // the config opens to its settings
    let cfg: ConfigFile = serde_json::from_value(v["config"]["document"].clone()).unwrap();
    let want: Settings = serde_json::from_value(v["config"]["settings"].clone()).unwrap();
    assert_eq!(cfg.open(&keys).unwrap(), want);
    let sealed = hex::decode(&cfg.settings).unwrap();
    let sk = spec::SpecKeys::derive(m.expose());
    assert_eq!(
        sk.open(Kind::Config, cfg.id.as_bytes(), &sealed),
        hex_of(&v["config"]["settings_cbor"])
    );
}

#[test]
fn stored_blobs_open() {
    let v = load("blob.json");
    let m = MasterKey::from_bytes(id_of(&v["master_key"]));
    let keys = Keys::derive(&m);
    let sk = spec::SpecKeys::derive(m.expose());
    assert_eq!(sk.enc, id_of(&v["encryption_key"]));
    let mut flags = Vec::new();
    for b in v["blobs"].as_array().unwrap() {
        let kind = Kind::from_u8(u64_of(&b["kind"]) as u8).unwrap();
        let id = id_of(&b["id"]);
        let sealed = hex_of(&b["sealed"]);
        let plain = hex_of(&b["plaintext"]);
        assert_eq!(hex_of(&b["nonce"]), &sealed[..24]);
        assert_eq!(hex_of(&b["associated_data"]), spec::aad(kind, &id));
        // the library
        assert_eq!(
            blob::open(&keys, kind, &BlobId(id), &sealed).unwrap(),
            plain
        );
        assert!(blob::open(&keys, Kind::ChunkList, &BlobId(id), &sealed).is_err());
        // the reader from the document
        assert_eq!(sk.open_blob(kind, &id, &sealed), plain);
        let inner = sk.open(kind, &id, &sealed);
        assert_eq!(u64::from(inner[0]), u64_of(&b["flag"]));
        assert_eq!(inner[1..], hex_of(&b["payload"]));
        flags.push(inner[0]);
    }
    assert_eq!(flags, [0, 1], "one raw and one zstd blob");
}

#[test]
fn stored_pack_opens() {
    let v = load("pack.json");
    let m = MasterKey::from_bytes(id_of(&v["master_key"]));
    let keys = Keys::derive(&m);
    let bytes = hex_of(&v["pack"]);
    assert_eq!(PackId::of(&bytes).0, id_of(&v["name"]));
    assert_eq!(bytes.len() as u64, u64_of(&v["size"]));
    assert_eq!(pack::padme(bytes.len() as u64), bytes.len() as u64);
    let want: Vec<PackEntry> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| PackEntry {
            kind: Kind::from_u8(u64_of(&e["kind"]) as u8).unwrap(),
            id: BlobId(id_of(&e["id"])),
            offset: u64_of(&e["offset"]),
            sealed_len: u64_of(&e["sealed_len"]) as u32,
            plain_len: u64_of(&e["plain_len"]) as u32,
        })
        .collect();
    // the library
    assert_eq!(pack::decode(&keys, &bytes).unwrap(), want);
    // the reader from the document
    let sk = spec::SpecKeys::derive(m.expose());
    let (entries, header_plain) = sk.read_pack(&bytes);
    assert_eq!(entries, want);
    assert_eq!(header_plain, hex_of(&v["header_plaintext"]));
    let blobs = v["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), want.len());
    for (e, b) in want.iter().zip(blobs) {
        assert_eq!(e.id.0, id_of(&b["id"]));
        let sealed = &bytes[e.offset as usize..(e.offset + e.sealed_len as u64) as usize];
        let plain = hex_of(&b["plaintext"]);
        assert_eq!(blob::open(&keys, e.kind, &e.id, sealed).unwrap(), plain);
        assert_eq!(sk.open_blob(e.kind, &e.id.0, sealed), plain);
        assert_eq!(e.plain_len as usize, plain.len());
        match e.kind {
            Kind::Tree => {
                let t = Tree::decode(&plain).unwrap();
                let names: Vec<&[u8]> = t.nodes.iter().map(|n| n.name.as_ref()).collect();
                assert_eq!(names, [&b"a.txt"[..], b"b.img", b"link"]);
            }
            Kind::ChunkList => {
                let refs = chunklist::decode(&plain).unwrap();
                assert!(refs.last().unwrap().is_zero());
            }
            _ => {}
        }
    }
    for pair in v["padme"].as_array().unwrap() {
        assert_eq!(pack::padme(u64_of(&pair[0])), u64_of(&pair[1]));
    }
}

#[test]
fn stored_snapshot_opens() {
    let v = load("snapshot.json");
    let m = MasterKey::from_bytes(id_of(&v["master_key"]));
    let keys = Keys::derive(&m);
    let bytes = hex_of(&v["file"]);
    assert_eq!(SnapshotId::of(&bytes).0, id_of(&v["id"]));
    let f = snapshot::decode(&bytes).unwrap();
    let packs: Vec<[u8; 32]> = v["packs"].as_array().unwrap().iter().map(id_of).collect();
    assert_eq!(f.packs.iter().map(|p| p.0).collect::<Vec<_>>(), packs);
    assert_eq!(f.plain_hash, id_of(&v["plain_hash"]));
    assert_eq!(f.sealed, hex_of(&v["sealed_record"]));
    let want: SnapshotRecord = serde_json::from_value(v["record"].clone()).unwrap();
    assert_eq!(snapshot::open_record(&keys, &f).unwrap(), want);
    // the reader from the document
    let (plain_packs, cbor) = spec::SpecKeys::derive(m.expose()).read_snapshot(&bytes);
    assert_eq!(plain_packs, packs);
    assert_eq!(cbor, hex_of(&v["record_cbor"]));
    // the root tree is the tree blob of pack.json
    let p = load("pack.json");
    assert_eq!(v["packs"][0], p["name"]);
    assert!(p["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == 2 && e["id"] == v["record"]["tree"]));
}

/// A reader written from `docs/format.md` alone: no coffer code but the
/// `Kind` and `PackEntry` types to compare results with.
mod spec {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};
    use coffer::crypto::Kind;
    use coffer::format::pack::PackEntry;
    use coffer::id::BlobId;

    /// The subkeys a reader needs.
    pub struct SpecKeys {
        pub id: [u8; 32],
        pub enc: [u8; 32],
    }

    /// `"coffer" || 0x01 || kind || id`.
    pub fn aad(kind: Kind, id: &[u8; 32]) -> Vec<u8> {
        let mut a = b"coffer".to_vec();
        a.push(1);
        a.push(kind as u8);
        a.extend_from_slice(id);
        a
    }

    fn le(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }

    impl SpecKeys {
        pub fn derive(master: &[u8; 32]) -> SpecKeys {
            SpecKeys {
                id: blake3::derive_key("coffer 2026-11 chunk id key v1", master),
                enc: blake3::derive_key("coffer 2026-11 object encryption key v1", master),
            }
        }

        /// Opens `nonce (24) || ciphertext || tag (16)`.
        pub fn open(&self, kind: Kind, id: &[u8; 32], sealed: &[u8]) -> Vec<u8> {
            let c = XChaCha20Poly1305::new((&self.enc).into());
            let aad = aad(kind, id);
            let payload = Payload {
                msg: &sealed[24..],
                aad: &aad,
            };
            c.decrypt(XNonce::from_slice(&sealed[..24]), payload)
                .expect("authentic")
        }

        /// Opens a blob, undoes its flag and checks its keyed id.
        pub fn open_blob(&self, kind: Kind, id: &[u8; 32], sealed: &[u8]) -> Vec<u8> {
            let inner = self.open(kind, id, sealed);
            let plain = match inner[0] {
                0 => inner[1..].to_vec(),
                1 => zstd::stream::decode_all(&inner[1..]).expect("one zstd frame"),
                f => panic!("unknown flag {f}"),
            };
            assert_eq!(
                blake3::keyed_hash(&self.id, &plain).as_bytes(),
                id,
                "keyed id"
            );
            plain
        }

        /// Reads a pack: magic, trailer, sealed header, entries.
        pub fn read_pack(&self, pack: &[u8]) -> (Vec<PackEntry>, Vec<u8>) {
            assert_eq!(pack[..8], blake3::hash(b"coffer pack v1").as_bytes()[..8]);
            let n = pack.len();
            let hlen = le(&pack[n - 4..]) as usize;
            let header = self.open(Kind::PackHeader, &[0; 32], &pack[n - 4 - hlen..n - 4]);
            assert_eq!(header.len() % 512, 0);
            assert_eq!(header[0], 1, "header version");
            let count = le(&header[1..5]) as usize;
            let entries = header[5..5 + count * 49]
                .chunks_exact(49)
                .map(|e| PackEntry {
                    kind: Kind::from_u8(e[0]).expect("kind"),
                    id: BlobId(e[1..33].try_into().unwrap()),
                    offset: le(&e[33..41]),
                    sealed_len: le(&e[41..45]) as u32,
                    plain_len: le(&e[45..49]) as u32,
                })
                .collect();
            assert!(
                header[5 + count * 49..].iter().all(|&b| b == 0),
                "header padding is zero"
            );
            (entries, header)
        }

        /// Reads a snapshot file: its pack list and its record's CBOR.
        pub fn read_snapshot(&self, file: &[u8]) -> (Vec<[u8; 32]>, Vec<u8>) {
            assert_eq!(
                file[..8],
                blake3::hash(b"coffer snapshot v1").as_bytes()[..8]
            );
            let count = le(&file[8..12]) as usize;
            let plain = &file[..12 + 32 * count];
            let packs = plain[12..]
                .chunks_exact(32)
                .map(|p| p.try_into().unwrap())
                .collect();
            let hash = blake3::hash(plain);
            (
                packs,
                self.open(Kind::Snapshot, hash.as_bytes(), &file[plain.len()..]),
            )
        }
    }
}
