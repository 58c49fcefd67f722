//! Fills a local repository with COUNT small blobs, so that its cache holds
//! an index as large as a big repository's, for `benches/large_index.sh`.
//!
//! `COFFER_PASSWORD=… COFFER_CACHE_DIR=… cargo run --release --example
//! fill_cache -- REPO COUNT [BLOBS_PER_PACK]` (default 512 blobs per pack:
//! 16 MiB packs of 32 KiB image blocks hold that many, so 10 M blobs make
//! about 20 k packs, as a 320 GB image repository would).
//!
//! Every blob is real, only small: 16 bytes of plaintext (a random prefix
//! of the run and a counter), its keyed id, sealed as the engine seals,
//! written in real packs through the store and entered into the cache with
//! `Cache::add_pack` (valid row checksums), then protected by parity as a
//! backup would; the repository still checks and the next backup's cache
//! sync finds every pack known. Prints what it wrote and how long it took.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coffer::crypto::Kind;
use coffer::format::blob::Sealer;
use coffer::format::pack::PackWriter;
use coffer::repo::{default_cache_dir, Repository};
use coffer::store::{LocalStore, Store};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Threads writing packs.
const WRITERS: usize = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: fill_cache REPO COUNT [BLOBS_PER_PACK]".into());
    }
    let root = Path::new(&args[1]);
    let count: u64 = args[2].parse()?;
    let per_pack: u64 = args.get(3).map_or(Ok(512), |s| s.parse())?;
    let pass = std::env::var("COFFER_PASSWORD").map_err(|_| "COFFER_PASSWORD is not set")?;
    let local = Arc::new(LocalStore::open(root)?);
    let store: Arc<dyn Store> = local.clone();
    let repo = Repository::open_store(store.clone(), pass.as_bytes(), &default_cache_dir())?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let run = StdRng::from_entropy().next_u64();
    let packs = count.div_ceil(per_pack);
    let t0 = Instant::now();
    // Packs are written and made durable by several threads (each commit
    // waits for the disk), and entered into the cache here, in one thread,
    // as a backup enters them.
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let next = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (store, keys, next, tx) =
                (store.clone(), repo.keys().clone(), next.clone(), tx.clone());
            std::thread::spawn(move || -> coffer::Result<()> {
                let mut rng = StdRng::from_entropy();
                let mut sealer = Sealer::new(0);
                loop {
                    let p = next.fetch_add(1, Ordering::SeqCst);
                    if p >= packs {
                        return Ok(());
                    }
                    let mut w = PackWriter::new(store.upload_pack()?)?;
                    for n in p * per_pack..((p + 1) * per_pack).min(count) {
                        let mut plain = [0u8; 16];
                        plain[..8].copy_from_slice(&run.to_le_bytes());
                        plain[8..].copy_from_slice(&n.to_le_bytes());
                        let id = keys.blob_id(&plain);
                        let sealed = sealer.seal(&keys, Kind::Data, &id, &plain, &mut rng);
                        w.add(Kind::Data, id, &sealed, plain.len() as u32)?;
                    }
                    let (id, upload, entries, size) = w.finish(&keys, &mut rng)?;
                    upload.commit(id)?;
                    if tx.send((id, size, entries)).is_err() {
                        return Ok(());
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let (mut done, mut written, mut pack_bytes) = (0u64, 0u64, 0u64);
    for (id, size, entries) in rx {
        cache.add_pack(&id, size, &entries)?;
        done += entries.len() as u64;
        written += 1;
        pack_bytes += size;
        if written % 2000 == 0 {
            eprintln!(
                "{done} blobs, {written} packs, {:.0} s",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    for w in writers {
        w.join().map_err(|_| "a pack writer panicked")??;
    }
    let filled = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    coffer::scrub::protect(&local, local.parity())?;
    println!(
        "{done} blobs in {written} packs ({:.0} MB) in {filled:.1} s, parity {:.1} s",
        pack_bytes as f64 / 1e6,
        t1.elapsed().as_secs_f64()
    );
    Ok(())
}
