//! A file's content by offset: its chunk list with the offset where each
//! piece starts, so a read at any offset touches only the chunks under it
//! (a binary search, never a walk from the start of the file).

use std::ops::Range;
use std::sync::Arc;

use crate::format::chunklist::ChunkRef;
use crate::{Error, Result};

/// A file's pieces in order, each with the offset it starts at.
#[derive(Debug, Default)]
pub struct ChunkIndex {
    starts: Vec<u64>,
    refs: Vec<ChunkRef>,
    size: u64,
}

impl ChunkIndex {
    /// The index of pieces given in order.
    pub fn new(refs: Vec<ChunkRef>) -> Self {
        let mut starts = Vec::with_capacity(refs.len());
        let mut at = 0u64;
        for r in &refs {
            starts.push(at);
            at = at.saturating_add(r.len);
        }
        ChunkIndex {
            starts,
            refs,
            size: at,
        }
    }

    /// The content's length: the sum of its pieces.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes this index holds in memory, for a cache's budget.
    pub fn weight(&self) -> usize {
        self.refs.len() * (std::mem::size_of::<ChunkRef>() + 8) + 64
    }

    /// The pieces that hold bytes `off..off + len` (clipped to the end).
    fn covering(&self, off: u64, len: u64) -> Range<usize> {
        let end = off.saturating_add(len).min(self.size);
        if off >= end {
            return 0..0;
        }
        // The last piece starting at or before `off`; empty pieces before it
        // are skipped by the partition point.
        let first = self.starts.partition_point(|&s| s <= off) - 1;
        let last = self.starts.partition_point(|&s| s < end);
        first..last
    }

    /// Bytes `off..off + len` of the content (fewer at the end), reading
    /// each piece under them through `fetch` (zero runs are not read).
    pub fn read(
        &self,
        off: u64,
        len: u64,
        fetch: &mut dyn FnMut(&ChunkRef) -> Result<Arc<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        let end = off.saturating_add(len).min(self.size);
        let mut out = Vec::with_capacity(end.saturating_sub(off) as usize);
        for i in self.covering(off, len) {
            let (start, r) = (self.starts[i], &self.refs[i]);
            let from = off.max(start) - start;
            let to = end.min(start + r.len) - start;
            if to <= from {
                continue;
            }
            if r.is_zero() {
                out.resize(out.len() + (to - from) as usize, 0);
                continue;
            }
            let data = fetch(r)?;
            if data.len() as u64 != r.len {
                return Err(Error::Corrupt(format!(
                    "chunk {} has the wrong length",
                    r.id.short()
                )));
            }
            out.extend_from_slice(&data[from as usize..to as usize]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::BlobId;

    fn piece(n: u8, len: u64) -> ChunkRef {
        ChunkRef {
            id: BlobId([n; 32]),
            len,
        }
    }

    #[test]
    fn a_read_anywhere_equals_the_content_and_fetches_only_what_it_covers() {
        let lens = [5u64, 0, 7, 3, 0, 11, 1];
        let mut refs: Vec<ChunkRef> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| piece(i as u8 + 1, l))
            .collect();
        refs.insert(3, ChunkRef::zeros(4));
        let content: Vec<u8> = refs
            .iter()
            .flat_map(|r| vec![if r.is_zero() { 0 } else { r.id.0[0] }; r.len as usize])
            .collect();
        let idx = ChunkIndex::new(refs);
        assert_eq!(idx.size(), content.len() as u64);
        for off in 0..=content.len() as u64 + 2 {
            for len in 0..content.len() as u64 + 3 {
                let mut fetched = 0;
                let got = idx
                    .read(off, len, &mut |r| {
                        fetched += 1;
                        Ok(Arc::new(vec![r.id.0[0]; r.len as usize]))
                    })
                    .unwrap();
                let (a, b) = (
                    (off as usize).min(content.len()),
                    ((off + len) as usize).min(content.len()),
                );
                assert_eq!(got, content[a..b], "off {off} len {len}");
                let distinct = content[a..b]
                    .iter()
                    .fold((0, None), |(n, last), &c| match last == Some(c) {
                        true => (n, last),
                        false => (n + usize::from(c != 0), Some(c)),
                    })
                    .0;
                assert!(
                    fetched <= distinct,
                    "off {off} len {len}: {fetched} fetched"
                );
            }
        }
        let e = idx
            .read(0, 3, &mut |_| Ok(Arc::new(vec![0; 2])))
            .unwrap_err();
        assert!(format!("{e}").contains("wrong length"), "{e}");
    }
}
