//! End-to-end benchmarks: backup of a generated directory tree and of a
//! sparse disk image into a fresh local repository, and restore of each.
//!
//! Every iteration backs up into a new repository with a new cache, so
//! deduplication never makes a later iteration trivial; restore uses a fresh
//! cache and target each time. Repository creation and unlocking (Argon2)
//! stay outside the timed region. Throughput is in bytes of source (the
//! image's logical size, holes included). Inputs are generated from fixed
//! seeds into temporary directories; nothing touches the network.
//!
//! Everything lives under the system temporary directory, so `TMPDIR` picks
//! the file system: `TMPDIR=/dev/shm cargo bench --bench pipeline` measures
//! the engine without the disk (fsync is free on tmpfs). On ext4 that has
//! seen many files deleted (as repeated runs of this bench do), creating
//! inodes can cost more than the restore itself.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tempfile::TempDir;

use coffer::format::keyfile::KdfParams;
use coffer::repo::backup::{backup, BackupOptions, BackupSource};
use coffer::repo::restore::{restore, RestoreOptions};
use coffer::repo::{InitOptions, Repository, Snapshot};
use coffer::store::LocalStore;

mod data;
use data::{random_bytes, text_bytes};

const MIB: usize = 1 << 20;
const PASS: &[u8] = b"bench passphrase";
/// Logical size of the image.
const IMAGE_BYTES: u64 = 64 << 20;

/// Writes the source tree (64 MiB): 6 text files of 4 MiB, 8 random files
/// of 4 MiB and 512 small text files of 16 KiB in 16 directories. Returns
/// the bytes written.
fn make_tree(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut put = |path: PathBuf, bytes: &[u8]| {
        fs::write(path, bytes).unwrap();
        total += bytes.len() as u64;
    };
    fs::create_dir_all(root.join("text")).unwrap();
    fs::create_dir_all(root.join("random")).unwrap();
    for i in 0..6u64 {
        put(
            root.join(format!("text/log{i}.txt")),
            &text_bytes(4 * MIB, 10 + i),
        );
    }
    for i in 0..8u8 {
        put(
            root.join(format!("random/blob{i}.bin")),
            &random_bytes(4 * MIB, 20 + i),
        );
    }
    for d in 0..16u64 {
        let dir = root.join(format!("small/d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..32u64 {
            put(
                dir.join(format!("f{f:02}.txt")),
                &text_bytes(16 << 10, 1000 + d * 32 + f),
            );
        }
    }
    total
}

/// Writes a 64 MiB sparse image: 8 MiB of random data at 0, 8 MiB of text at
/// 16 MiB, 4 MiB of random data at 40 MiB and scattered 64 KiB runs; the rest
/// is holes.
fn make_image(path: &Path) {
    let mut f = File::create(path).unwrap();
    f.set_len(IMAGE_BYTES).unwrap();
    let mut put = |at: u64, bytes: &[u8]| {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(bytes).unwrap();
    };
    put(0, &random_bytes(8 * MIB, 40));
    put(16 << 20, &text_bytes(8 * MIB, 41));
    put(40 << 20, &random_bytes(4 * MIB, 42));
    for i in 0..16u64 {
        put(
            (48 << 20) + i * (MIB as u64),
            &random_bytes(64 << 10, 50 + i as u8),
        );
    }
}

/// A new, empty repository opened with its own cache.
struct FreshRepo {
    repo: Repository,
    dir: TempDir,
    _cache: TempDir,
}

fn fresh_repo() -> FreshRepo {
    let dir = TempDir::new().unwrap();
    let opts = InitOptions {
        kdf: KdfParams::FLOOR,
        ..Default::default()
    };
    Repository::init(dir.path(), PASS, &opts).unwrap();
    let cache = TempDir::new().unwrap();
    let repo = open(dir.path(), cache.path());
    FreshRepo {
        repo,
        dir,
        _cache: cache,
    }
}

fn open(repo: &Path, cache: &Path) -> Repository {
    Repository::open_store(Arc::new(LocalStore::open(repo).unwrap()), PASS, cache).unwrap()
}

/// What the timed backups and restores work on.
struct Inputs {
    _src: TempDir,
    tree: PathBuf,
    tree_bytes: u64,
    image: PathBuf,
}

fn inputs() -> Inputs {
    let src = TempDir::new().unwrap();
    let tree = src.path().join("tree");
    let tree_bytes = make_tree(&tree);
    let image = src.path().join("disk.img");
    make_image(&image);
    Inputs {
        tree,
        tree_bytes,
        image,
        _src: src,
    }
}

fn source(inp: &Inputs, image: bool) -> BackupSource {
    if image {
        BackupSource::Image {
            path: inp.image.clone(),
            name: None,
        }
    } else {
        BackupSource::paths(vec![inp.tree.clone()])
    }
}

/// Times `backup` only: the repository is created and unlocked untimed.
fn time_backup(inp: &Inputs, image: bool, expect: u64, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let fresh = fresh_repo();
        let start = Instant::now();
        let out = backup(
            &fresh.repo,
            vec![source(inp, image)],
            BackupOptions::default(),
        )
        .unwrap();
        total += start.elapsed();
        assert_eq!(out.stats.bytes, expect);
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }
    total
}

/// Times `restore` only, each time into a new target with a new cache.
fn time_restore(repo_dir: &Path, snap_id: &str, expect: u64, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let cache = TempDir::new().unwrap();
        let target = TempDir::new().unwrap();
        let repo = open(repo_dir, cache.path());
        let snap: Snapshot = repo.find_snapshot(snap_id).unwrap();
        let opts = RestoreOptions::new(target.path().to_path_buf());
        let start = Instant::now();
        let stats = restore(&repo, &snap, &opts).unwrap();
        total += start.elapsed();
        assert!(stats.errors.is_empty(), "{:?}", stats.errors);
        assert_eq!(stats.bytes, expect);
    }
    total
}

fn pipeline(c: &mut Criterion) {
    let inp = inputs();
    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5));

    for (name, image, bytes) in [
        ("tree", false, inp.tree_bytes),
        ("image", true, IMAGE_BYTES),
    ] {
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(format!("backup/{name}"), |b| {
            b.iter_custom(|iters| time_backup(&inp, image, bytes, iters))
        });

        // One repository holding the snapshot, restored from repeatedly.
        let fresh = fresh_repo();
        let out = backup(
            &fresh.repo,
            vec![source(&inp, image)],
            BackupOptions::default(),
        )
        .unwrap();
        let repo_dir = fresh.dir.path().to_path_buf();
        let snap_id = out.id.to_hex();
        g.bench_function(format!("restore/{name}"), |b| {
            b.iter_custom(|iters| time_restore(&repo_dir, &snap_id, bytes, iters))
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
