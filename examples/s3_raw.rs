//! Raw PUT/GET throughput of 16 MiB objects against an S3 store, beside
//! the same objects through coffer's `ObjectBackend` (put-once with a
//! COMPLIANCE retention, range reads): the baseline of issue 20's ratios.
//! `benches/s3_raw.sh` starts a local SeaweedFS and runs this.
//!
//! `cargo run --example s3_raw -- ENDPOINT BUCKET CREDENTIALS_FILE [OBJECTS] [STREAMS]`
//! (defaults: 16 objects, streams 1 and 4; STREAMS is one count or several,
//! comma-separated: `1,6`). The bucket is created with Object Lock if it
//! does not exist. `benches/s3.sh` runs it too, beside coffer's backup and
//! restore through a server on the same bucket.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use coffer::object::s3::{S3Backend, S3Config};
use coffer::object::{LockMode, ObjectBackend, ObjectKey, Retention};

const OBJECT_BYTES: usize = 16 << 20;

fn object(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(OBJECT_BYTES + 8);
    while v.len() < OBJECT_BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(OBJECT_BYTES);
    v
}

/// Runs `op(i)` for i in 0..n on `streams` threads; returns MiB/s.
fn rate(n: usize, streams: usize, op: impl Fn(usize) + Sync) -> f64 {
    let next = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..streams {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                op(i);
            });
        }
    });
    (n * OBJECT_BYTES) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: s3_raw ENDPOINT BUCKET CREDENTIALS_FILE [OBJECTS] [STREAMS[,STREAMS…]]");
        std::process::exit(2);
    }
    let n: usize = args.get(4).map_or(16, |s| s.parse().expect("OBJECTS"));
    let stream_counts: Vec<usize> = match args.get(5) {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().parse().expect("STREAMS"))
            .collect(),
        None => vec![1, 4],
    };
    let bucket = args[2].clone();
    let b = S3Backend::connect(S3Config {
        endpoint: args[1].clone(),
        bucket: bucket.clone(),
        prefix: String::new(),
        region: "us-east-1".into(),
        credentials_file: args[3].clone().into(),
        profile: "default".into(),
        path_style: true,
        lock_mode: LockMode::Compliance,
        head_before_put: false,
        lease: None,
    })
    .expect("connect");
    let bk = bucket.clone();
    let _ = b.raw(|c| async move {
        c.create_bucket()
            .bucket(bk)
            .object_lock_enabled_for_bucket(true)
            .send()
            .await
    });
    b.check().expect("startup checks");
    let data: Vec<Vec<u8>> = (0..4).map(|i| object(i + 1)).collect();
    let body = |i: usize| &data[i % data.len()];
    println!("{n} objects of 16 MiB each run; MiB/s");
    println!(
        "{:8} {:>10} {:>10} {:>12} {:>12}",
        "streams", "raw PUT", "raw GET", "trait PUT", "trait GET"
    );
    for (run, &streams) in stream_counts.iter().enumerate() {
        let raw_key = |i: usize| format!("raw-{run}/{i}");
        let put = rate(n, streams, |i| {
            let (bk, key, bytes) = (bucket.clone(), raw_key(i), body(i).clone());
            b.raw(|c| async move {
                c.put_object()
                    .bucket(bk)
                    .key(key)
                    .body(bytes.into())
                    .send()
                    .await
                    .expect("raw put")
            });
        });
        let get = rate(n, streams, |i| {
            let (bk, key) = (bucket.clone(), raw_key(i));
            let got = b.raw(|c| async move {
                let out = c
                    .get_object()
                    .bucket(bk)
                    .key(key)
                    .send()
                    .await
                    .expect("raw get");
                out.body.collect().await.expect("raw body").into_bytes()
            });
            assert_eq!(got.len(), OBJECT_BYTES);
        });
        let key = |i: usize| ObjectKey::new(format!("trait-{run}/{i}")).expect("key");
        let until = SystemTime::now() + Duration::from_secs(60);
        let tput = rate(n, streams, |i| {
            b.put_once(
                &key(i),
                body(i),
                Some(Retention::new(LockMode::Compliance, until)),
            )
            .expect("put once");
        });
        let tget = rate(n, streams, |i| {
            let got = b
                .get_range(&key(i), None, 0..OBJECT_BYTES as u64)
                .expect("get range");
            assert!(got == *body(i), "object {i} read back differs");
        });
        println!("{streams:8} {put:10.1} {get:10.1} {tput:12.1} {tget:12.1}");
    }
}
