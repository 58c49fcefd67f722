//! Lists every pack of a namespace on a `coffer serve` through the library
//! client, for measuring what a listing costs each end (see
//! `scripts/list-rss.sh`, which runs it under `/usr/bin/time -v`).
//!
//! `cargo run --example list_packs -- quic://HOST:PORT/NS IDENTITY SERVER_FINGERPRINT`
//!
//! Prints the number of packs and their total size.

use std::sync::Arc;

use coffer::net::client::{Remote, RemoteStore, RemoteUrl};
use coffer::net::{Fingerprint, Identity};
use coffer::store::Store;

fn main() -> coffer::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, id, pin] = args.as_slice() else {
        eprintln!("usage: list_packs quic://HOST:PORT/NS IDENTITY SERVER_FINGERPRINT");
        std::process::exit(2);
    };
    let url = RemoteUrl::parse(url)?;
    let store = Remote(Arc::new(RemoteStore::connect(
        &url,
        Identity::load(std::path::Path::new(id))?,
        Fingerprint::parse(pin)?,
    )?));
    let (mut n, mut bytes) = (0u64, 0u64);
    store.for_each_pack(&mut |_, size| {
        n += 1;
        bytes += size;
        Ok(())
    })?;
    println!("{n} packs, {bytes} bytes");
    Ok(())
}
