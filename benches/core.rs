//! Micro-benchmarks of the pure core: chunking, ids, sealing, compression and
//! pack writing, next to a baseline (memcpy, plain BLAKE3) of the same buffers
//! so the figures read as ratios.
//!
//! Every input is generated from a fixed seed; nothing touches the network or
//! the file system. Run with `cargo bench --bench core`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::SeedableRng;

use coffer::chunk::{Chunker, ChunkerParams};
use coffer::crypto::{Keys, Kind, MasterKey};
use coffer::format::blob::{self, Sealer, Verifier};
use coffer::format::pack::PackWriter;

mod data;
use data::{random_bytes, text_bytes};

const MIB: usize = 1 << 20;
/// Size of the chunking input.
const CHUNK_INPUT: usize = 64 * MIB;
/// Size of one blob, as the default chunker averages.
const BLOB: usize = MIB;
/// Bytes of sealed blobs per pack, as the default pack size.
const PACK: usize = 16 * MIB;

fn keys() -> Keys {
    Keys::derive(&MasterKey::from_bytes([7u8; 32]))
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

/// memcpy and plain BLAKE3 of the buffers the other groups use.
fn baseline(c: &mut Criterion) {
    let big = random_bytes(CHUNK_INPUT, 1);
    let small = random_bytes(BLOB, 2);
    let mut g = c.benchmark_group("baseline");

    g.throughput(Throughput::Bytes(BLOB as u64));
    let mut dst = vec![0u8; BLOB];
    g.bench_function("memcpy/1MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&small));
            black_box(&mut dst);
        })
    });
    g.bench_function("blake3/1MiB", |b| {
        b.iter(|| blake3::hash(black_box(&small)))
    });

    g.throughput(Throughput::Bytes(CHUNK_INPUT as u64));
    let mut dst = vec![0u8; CHUNK_INPUT];
    g.bench_function("memcpy/64MiB", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&big));
            black_box(&mut dst);
        })
    });
    g.bench_function("blake3/64MiB", |b| b.iter(|| blake3::hash(black_box(&big))));
    g.finish();
}

/// FastCDC over 64 MiB with the keyed gear table and default sizes.
fn chunking(c: &mut Criterion) {
    let data = random_bytes(CHUNK_INPUT, 3);
    let k = keys();
    let chunker = Chunker::new(ChunkerParams::default(), k.gear_table());
    let max = ChunkerParams::default().max as usize;
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(CHUNK_INPUT as u64));
    g.bench_function("split/64MiB", |b| {
        b.iter(|| chunker.split(black_box(&data)))
    });
    // As the backup reader calls it: a window of at least `max` bytes until
    // the end of the stream.
    g.bench_function("next_len/64MiB", |b| {
        b.iter(|| {
            let (mut pos, mut n) = (0usize, 0usize);
            loop {
                let end = (pos + max + MIB).min(data.len());
                let at_end = end == data.len();
                match chunker.next_len(black_box(&data[pos..end]), at_end) {
                    Some(len) => {
                        pos += len;
                        n += 1;
                    }
                    None => break,
                }
            }
            n
        })
    });
    g.finish();
}

/// Keyed BLAKE3 blob ids, and the AEAD alone, over 1 MiB.
fn ids_and_aead(c: &mut Criterion) {
    let data = random_bytes(BLOB, 4);
    let k = keys();
    let id = k.blob_id(&data);
    let mut g = c.benchmark_group("crypto");
    g.throughput(Throughput::Bytes(BLOB as u64));
    g.bench_function("blob_id/1MiB", |b| b.iter(|| k.blob_id(black_box(&data))));
    let mut r = rng();
    g.bench_function("xchacha20poly1305_seal/1MiB", |b| {
        b.iter(|| k.seal(Kind::Data, id.as_bytes(), black_box(&data), &mut r))
    });
    let sealed = k.seal(Kind::Data, id.as_bytes(), &data, &mut rng());
    g.bench_function("xchacha20poly1305_open/1MiB", |b| {
        b.iter(|| {
            k.open(Kind::Data, id.as_bytes(), black_box(&sealed))
                .unwrap()
        })
    });
    g.finish();
}

/// `Sealer::seal` (zstd 3 + AEAD) and `blob::open` (AEAD + zstd + id check)
/// on text-like and random 1 MiB blobs, and the upload worker's per-blob
/// work (seal, then open and compare).
fn blobs(c: &mut Criterion) {
    let k = keys();
    let inputs = [
        ("text", text_bytes(BLOB, 5)),
        ("random", random_bytes(BLOB, 6)),
    ];
    let mut g = c.benchmark_group("blob");
    g.throughput(Throughput::Bytes(BLOB as u64));
    for (name, data) in &inputs {
        let id = k.blob_id(data);
        let mut sealer = Sealer::new(3);
        let mut r = rng();
        let sealed = sealer.seal(&k, Kind::Data, &id, data, &mut r);
        eprintln!(
            "blob/{name}: 1 MiB seals to {} bytes (ratio {:.2})",
            sealed.len(),
            data.len() as f64 / sealed.len() as f64
        );
        g.bench_function(format!("seal_zstd3/{name}"), |b| {
            b.iter(|| sealer.seal(&k, Kind::Data, &id, black_box(data), &mut r))
        });
        if *name == "text" {
            // For comparison: the fastest regular level.
            let mut fast = Sealer::new(1);
            g.bench_function("seal_zstd1/text", |b| {
                b.iter(|| fast.seal(&k, Kind::Data, &id, black_box(data), &mut r))
            });
        }
        g.bench_function(format!("open/{name}"), |b| {
            b.iter(|| blob::open(&k, Kind::Data, &id, black_box(&sealed)).unwrap())
        });
        // The upload worker's way: the opened blob is compared with the
        // plaintext in hand (reused buffers, no second id hash).
        for level in [1, 3] {
            let mut sealer = Sealer::new(level);
            let mut verifier = Verifier::new();
            g.bench_function(format!("seal_and_verify_zstd{level}/{name}"), |b| {
                b.iter(|| {
                    let s = sealer.seal(&k, Kind::Data, &id, black_box(data), &mut r);
                    assert!(verifier.verify(&k, Kind::Data, &id, &s, data));
                    s
                })
            });
        }
        // Before: a new buffer per step and an id check on top.
        g.bench_function(format!("seal_and_open_alloc/{name}"), |b| {
            b.iter(|| {
                let s = sealer.seal(&k, Kind::Data, &id, black_box(data), &mut r);
                let p = blob::open(&k, Kind::Data, &id, &s).unwrap();
                assert!(p == *data);
                s
            })
        });
    }
    g.finish();
}

/// `PackWriter` writing 16 MiB of sealed 1 MiB blobs into a `Vec`, with the
/// padding, sealed header and trailer.
fn packs(c: &mut Criterion) {
    let k = keys();
    let mut sealer = Sealer::new(3);
    let mut r = rng();
    let blobs: Vec<_> = (0..PACK / BLOB)
        .map(|i| {
            let data = random_bytes(BLOB, 100 + i as u8);
            let id = k.blob_id(&data);
            (id, sealer.seal(&k, Kind::Data, &id, &data, &mut r))
        })
        .collect();
    let total: usize = blobs.iter().map(|(_, s)| s.len()).sum();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("write/16MiB", |b| {
        b.iter_batched(
            || Vec::with_capacity(total + total / 8 + MIB),
            |out| {
                let mut w = PackWriter::new(out).unwrap();
                for (id, s) in &blobs {
                    w.add(Kind::Data, *id, s, BLOB as u32).unwrap();
                }
                w.finish(&k, &mut r).unwrap()
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = baseline, chunking, ids_and_aead, blobs, packs
}
criterion_main!(benches);
