//! Simulates nightly backups with daily churn under retention, and reports
//! the bytes a repository stores against the live data, with and without
//! rewriting chunks out of mostly dead packs.
//!
//! `cargo run --release --example space -- [DAYS] [CHURN_PERCENT] [MIB]`
//! (defaults: 60 days, 1 % churn, 64 MiB). Runs the real engine on real
//! files with the store's clock moved one day per backup.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use coffer::format::config::Settings;
use coffer::format::keyfile::KdfParams;
use coffer::repo::backup::{self, BackupOptions, BackupSource};
use coffer::repo::{InitOptions, Repository};
use coffer::retention::DAY_SECS;
use coffer::store::{LocalStore, Store};

const FILE_BYTES: usize = 128 << 10;
const T0: i64 = 1_800_000_000;

fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn stored(store: &LocalStore) -> u64 {
    let mut total = 0;
    store
        .for_each_pack(&mut |_, size| {
            total += size;
            Ok(())
        })
        .unwrap();
    total
}

fn run(days: i64, churn: f64, mib: usize, rewrite_below: f64) -> (f64, f64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let files = (mib << 20) / FILE_BYTES;
    for i in 0..files {
        std::fs::write(data.join(format!("f{i:05}")), random(i as u64, FILE_BYTES)).unwrap();
    }
    let now = Arc::new(AtomicI64::new(T0));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let root = dir.path().join("repo");
    let settings = Settings {
        chunker: coffer::chunk::ChunkerParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        },
        pack_size: 1 << 20,
        ..Settings::default()
    };
    let init = InitOptions {
        kdf: KdfParams::FLOOR,
        settings,
        ..InitOptions::default()
    };
    Repository::init(&root, b"pw", &init).unwrap();
    let cache = dir.path().join("cache");
    let (mut worst, mut last, mut uploaded) = (0f64, 0f64, 0u64);
    let mut seed = 1_000_000u64;
    for day in 0..days {
        now.store(T0 + day * DAY_SECS, Ordering::SeqCst);
        if day > 0 {
            // churn: replace whole files, about `churn` of the data
            let n = ((files as f64) * churn).round().max(1.0) as usize;
            for k in 0..n {
                seed += 1;
                let i = (seed as usize * 7919 + k * 104729) % files;
                std::fs::write(data.join(format!("f{i:05}")), random(seed, FILE_BYTES)).unwrap();
            }
        }
        let store = Arc::new(LocalStore::open(&root).unwrap().with_clock(clock.clone()));
        let repo = Repository::open_store(store.clone(), b"pw", &cache).unwrap();
        let opts = BackupOptions {
            time_ns: (T0 + day * DAY_SECS) * 1_000_000_000,
            rewrite_below,
            ..BackupOptions::default()
        };
        let out =
            backup::backup(&repo, vec![BackupSource::paths(vec![data.clone()])], opts).unwrap();
        uploaded += out.stats.new_pack_bytes;
        store.prune().unwrap();
        let live = (files * FILE_BYTES) as f64;
        let ratio = stored(&store) as f64 / live;
        worst = worst.max(ratio);
        last = ratio;
        if day % 10 == 9 || day == days - 1 {
            println!(
                "  day {:>3}: stored/live {:.2}  snapshots {:>2}",
                day + 1,
                ratio,
                store.list_snapshots().unwrap().len()
            );
        }
    }
    (worst, last, uploaded)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let days: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    let churn: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1.0) / 100.0;
    let mib: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(64);
    let live = (mib << 20) as f64;
    println!(
        "{days} nightly backups, {:.1}% daily churn, {mib} MiB live, 30-day retention",
        churn * 100.0
    );
    for (name, t) in [
        ("never rewrite", 0.0),
        ("rewrite packs below 50% live", 0.5),
    ] {
        println!("{name}:");
        let (worst, last, up) = run(days, churn, mib, t);
        println!(
            "  => stored/live: worst {worst:.2}, at the end {last:.2}; uploaded {:.2}x the live data in total",
            up as f64 / live
        );
    }
}
