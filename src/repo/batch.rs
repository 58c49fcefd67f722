//! Work handed from one thread to others in batches: an image's 32 KiB
//! blocks would otherwise cost a thread hand-off each (measured on a
//! backup: 35k context switches a second, a third of both cores idle).
//! A batch of ordinary 1 MiB chunks is one chunk.

/// A batch is handed on once it holds this many bytes of work...
pub(crate) const BATCH_BYTES: u64 = 1 << 20;
/// ...or this many items.
pub(crate) const BATCH_ITEMS: usize = 64;

/// Items gathered for the next hand-off.
pub(crate) struct Batch<T> {
    items: Vec<T>,
    bytes: u64,
    /// Hand on at this many bytes.
    limit: u64,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Batch::with_bytes(BATCH_BYTES)
    }
}

impl<T> Batch<T> {
    /// A batch handed on at `limit` bytes (or [`BATCH_ITEMS`] items): where
    /// items are only descriptions of work, not its data, a larger one
    /// lets the producer run further ahead at no cost in memory.
    pub fn with_bytes(limit: u64) -> Self {
        Batch {
            items: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// Adds an item standing for `bytes` of work; returns the batch to hand
    /// on when it is full.
    pub fn push(&mut self, item: T, bytes: u64) -> Option<Vec<T>> {
        self.items.push(item);
        self.bytes += bytes;
        if self.bytes >= self.limit || self.items.len() >= BATCH_ITEMS {
            self.take()
        } else {
            None
        }
    }

    /// What was gathered so far, if anything.
    pub fn take(&mut self) -> Option<Vec<T>> {
        self.bytes = 0;
        (!self.items.is_empty()).then(|| std::mem::take(&mut self.items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_on_by_bytes_or_by_count() {
        let mut b = Batch::default();
        assert_eq!(b.push(1, BATCH_BYTES - 1), None);
        assert_eq!(b.push(2, 1), Some(vec![1, 2]));
        assert_eq!(b.take(), None);
        for i in 0..BATCH_ITEMS - 1 {
            assert_eq!(b.push(i, 1), None);
        }
        assert_eq!(b.push(99, 1).map(|v| v.len()), Some(BATCH_ITEMS));
        b.push(5, 1);
        assert_eq!(b.take(), Some(vec![5]));
    }
}
