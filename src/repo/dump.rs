//! `dump` of a file: its content to a writer, in order, read ahead in
//! parallel by the restore's readers.

use std::collections::BTreeMap;
use std::io::Write;

use crossbeam_channel::bounded;

use super::restore::{BlobReader, RESTORE_READERS};
use super::Repository;
use crate::cache::{BlobLocation, Cache};
use crate::crypto::Kind;
use crate::error::{Error, Result};
use crate::format::blob::Plain;
use crate::format::chunklist::ChunkRef;
use crate::format::tree::{Node, NodeKind};

/// Writes a file's content to `out` in order, reading ahead in parallel.
/// Stops at the first damaged chunk: what was written is correct, nothing
/// wrong is ever emitted.
pub fn dump(repo: &Repository, cache: &Cache, node: &Node, out: &mut dyn Write) -> Result<u64> {
    if node.kind != Some(NodeKind::File) {
        return Err(Error::Denied(
            "dump needs a file (use restore for directories)".into(),
        ));
    }
    let reader = BlobReader {
        store: repo.store().clone(),
        keys: repo.keys().clone(),
    };
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
        // More readers than cores: a remote store's round trips overlap.
        .max(RESTORE_READERS);
    let window = workers * 4;
    let (job_tx, job_rx) = bounded::<(u64, ChunkRef, BlobLocation)>(window);
    let (res_tx, res_rx) = bounded::<(u64, Result<Plain>)>(window);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (rx, tx, reader) = (job_rx.clone(), res_tx.clone(), reader.clone());
        handles.push(std::thread::spawn(move || {
            for (seq, chunk, loc) in rx {
                let r = reader.read(&loc, Kind::Data, &chunk.id).and_then(|d| {
                    if d.len() as u64 == chunk.len {
                        Ok(d)
                    } else {
                        Err(Error::Corrupt(format!(
                            "chunk {} has the wrong length",
                            chunk.id.short()
                        )))
                    }
                });
                if tx.send((seq, r)).is_err() {
                    return;
                }
            }
        }));
    }
    drop(res_tx);
    drop(job_rx);
    let mut written = 0u64;
    let mut next_out = 0u64;
    let mut sent = 0u64;
    let mut ready: BTreeMap<u64, Result<Plain>> = BTreeMap::new();
    let zeros = vec![0u8; 1 << 20];
    let mut pending_zero: BTreeMap<u64, u64> = BTreeMap::new();
    let mut emit = |seq_ready: &mut BTreeMap<u64, Result<Plain>>,
                    zeros_at: &mut BTreeMap<u64, u64>,
                    next: &mut u64,
                    upto: u64,
                    block: bool|
     -> Result<()> {
        while *next < upto {
            if let Some(len) = zeros_at.remove(next) {
                let mut left = len;
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    out.write_all(&zeros[..n]).map_err(Error::RawIo)?;
                    left -= n as u64;
                }
                written += len;
                *next += 1;
                continue;
            }
            let data = match seq_ready.remove(next) {
                Some(d) => d?,
                None if block => match res_rx.recv() {
                    Ok((s, d)) => {
                        seq_ready.insert(s, d);
                        continue;
                    }
                    Err(_) => return Err(Error::Corrupt("dump workers stopped".into())),
                },
                None => return Ok(()),
            };
            out.write_all(&data).map_err(Error::RawIo)?;
            written += data.len() as u64;
            *next += 1;
        }
        Ok(())
    };
    let res = repo.for_each_chunk(cache, node, &mut |chunk| {
        let seq = sent;
        sent += 1;
        if chunk.is_zero() {
            pending_zero.insert(seq, chunk.len);
        } else {
            let loc = cache.lookup(&chunk.id)?.ok_or_else(|| {
                Error::Corrupt(format!(
                    "chunk {} is in no pack of the repository",
                    chunk.id
                ))
            })?;
            while let Ok((s, d)) = res_rx.try_recv() {
                ready.insert(s, d);
            }
            // Keep at most `window` chunks in flight or waiting.
            if seq - next_out >= window as u64 {
                emit(
                    &mut ready,
                    &mut pending_zero,
                    &mut next_out,
                    seq + 1 - window as u64,
                    true,
                )?;
            }
            job_tx
                .send((seq, chunk, loc))
                .map_err(|_| Error::Corrupt("dump workers stopped".into()))?;
        }
        Ok(())
    });
    drop(job_tx);
    let res = res.and_then(|_| emit(&mut ready, &mut pending_zero, &mut next_out, sent, true));
    drop(res_rx);
    for h in handles {
        let _ = h.join();
    }
    res?;
    out.flush().map_err(Error::RawIo)?;
    Ok(written)
}
