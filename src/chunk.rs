//! Content-defined chunking with FastCDC under a secret gear table. Owns the
//! choice of cut points over a byte buffer; it never reads files.

use fastcdc::v2020::{cut_gear, MASKS};

/// Chunk sizes, fixed when a repository is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChunkerParams {
    /// No chunk is shorter, except the last one of a stream.
    pub min: u32,
    /// The expected chunk size; a power of two.
    pub avg: u32,
    /// No chunk is longer.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: 256 << 10,
            avg: 1 << 20,
            max: 4 << 20,
        }
    }
}

impl ChunkerParams {
    /// Checks the sizes an untrusted config asks for.
    pub fn validate(&self) -> Result<(), String> {
        let ok = self.min >= crate::limits::MIN_CHUNK_BYTES
            && self.min < self.avg
            && self.avg < self.max
            && self.max <= crate::limits::MAX_CHUNK_BYTES
            && self.avg.is_power_of_two();
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes min {} avg {} max {} must satisfy {} <= min < avg < max <= {} with avg a power of two",
                self.min,
                self.avg,
                self.max,
                crate::limits::MIN_CHUNK_BYTES,
                crate::limits::MAX_CHUNK_BYTES
            ))
        }
    }
}

/// Finds chunk boundaries. Normalization level 1, as FastCDC recommends.
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker with the given sizes and secret gear table. `params` must
    /// have passed [`ChunkerParams::validate`].
    pub fn new(params: ChunkerParams, gear: Box<[u64; 256]>) -> Self {
        let mut gear_ls = Box::new([0u64; 256]);
        for (d, s) in gear_ls.iter_mut().zip(gear.iter()) {
            *d = s << 1;
        }
        let bits = params.avg.trailing_zeros() as usize;
        Chunker {
            params,
            gear,
            gear_ls,
            mask_s: MASKS[bits + 1],
            mask_l: MASKS[bits - 1],
        }
    }

    /// The sizes this chunker cuts at.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// The length of the next chunk at the start of `buf`, or `None` when more
    /// data is needed to decide. At the end of the stream, returns what is
    /// left; `None` when empty.
    ///
    /// Short of `max` bytes, a cut is still certain when one is found within
    /// what is there and at least `avg` bytes are: the gear hash only looks
    /// back, and from `avg` on the masks no longer depend on the length. A
    /// reader then refills its buffer only when no cut is in sight, instead
    /// of keeping `max` bytes ahead (which moved 3.5 bytes in memory for
    /// every byte of a dump).
    pub fn next_len(&self, buf: &[u8], at_end: bool) -> Option<usize> {
        let (avg, max) = (self.params.avg as usize, self.params.max as usize);
        if buf.is_empty() || (!at_end && buf.len() < avg) {
            return None;
        }
        let len = self.cut(buf);
        if !at_end && buf.len() < max && len >= buf.len() {
            return None;
        }
        Some(len)
    }

    fn cut(&self, buf: &[u8]) -> usize {
        let (_, len) = cut_gear(
            buf,
            self.params.min as usize,
            self.params.avg as usize,
            self.params.max as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len.max(1)
    }

    /// Splits a whole buffer into chunk lengths (for tests and small inputs).
    pub fn split(&self, data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(n) = self.next_len(&data[pos..], true) {
            out.push(n);
            pos += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        }
    }

    fn gear(seed: u8) -> Box<[u64; 256]> {
        let mut xof = blake3::Hasher::new_keyed(&[seed; 32]).finalize_xof();
        let mut g = Box::new([0u64; 256]);
        for v in g.iter_mut() {
            let mut b = [0u8; 8];
            xof.fill(&mut b);
            *v = u64::from_le_bytes(b);
        }
        g
    }

    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut xof = blake3::Hasher::new_keyed(&[seed as u8; 32]).finalize_xof();
        let mut v = vec![0u8; len];
        xof.fill(&mut v);
        v
    }

    #[test]
    fn defaults_validate() {
        ChunkerParams::default().validate().unwrap();
        assert!(ChunkerParams {
            min: 10,
            avg: 16,
            max: 20
        }
        .validate()
        .is_err());
    }

    #[test]
    fn different_keys_cut_differently() {
        let d = data(1 << 20, 1);
        let a = Chunker::new(small(), gear(1)).split(&d);
        let b = Chunker::new(small(), gear(2)).split(&d);
        assert_ne!(a, b);
    }

    #[test]
    fn boundaries_survive_a_prefix_insert() {
        let c = Chunker::new(small(), gear(3));
        let d = data(1 << 20, 2);
        let mut d2 = b"inserted bytes".to_vec();
        d2.extend_from_slice(&d);
        let ends = |lens: Vec<usize>, shift: usize| -> std::collections::HashSet<usize> {
            let mut pos = 0;
            lens.into_iter()
                .map(|l| {
                    pos += l;
                    pos - shift
                })
                .collect()
        };
        let a = ends(c.split(&d), 0);
        let b = ends(c.split(&d2), 14);
        let common = a.intersection(&b).count();
        assert!(common + 3 >= a.len(), "{common} of {}", a.len());
    }

    proptest! {
        /// A reader that cuts as soon as `next_len` is sure, from whatever
        /// it has buffered, gets exactly the chunks of the whole input.
        #[test]
        fn early_cuts_match_cuts_of_the_whole(
            len in 0usize..400_000,
            seed in 0u64..50,
            steps in proptest::collection::vec(1usize..70_000, 1..64),
        ) {
            let c = Chunker::new(small(), gear(seed as u8));
            let d = data(len, seed);
            let want = c.split(&d);
            let (mut got, mut start, mut end) = (Vec::new(), 0usize, 0usize);
            let mut step = steps.iter().cycle();
            loop {
                let at_end = end == len;
                match c.next_len(&d[start..end], at_end) {
                    Some(n) => {
                        got.push(n);
                        start += n;
                    }
                    None if at_end => break,
                    // unwrap: `steps` is never empty
                    None => end = (end + step.next().unwrap()).min(len),
                }
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn chunks_cover_input_within_bounds(len in 0usize..300_000, seed in 0u64..50) {
            let c = Chunker::new(small(), gear(seed as u8));
            let d = data(len, seed);
            let lens = c.split(&d);
            prop_assert_eq!(lens.iter().sum::<usize>(), len);
            for (i, l) in lens.iter().enumerate() {
                prop_assert!(*l <= 65536);
                if i + 1 < lens.len() {
                    prop_assert!(*l >= 4096);
                }
            }
        }
    }
}
