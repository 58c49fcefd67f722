//! Deterministic inputs shared by the benchmarks: incompressible bytes and
//! text that compresses about like logs or source code.

/// Pseudo-random bytes from the BLAKE3 XOF keyed by `seed`.
pub fn random_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut xof = blake3::Hasher::new_keyed(&[seed; 32]).finalize_xof();
    let mut v = vec![0u8; len];
    xof.fill(&mut v);
    v
}

/// SplitMix64: a tiny deterministic generator for the text model.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "backup",
    "repository",
    "snapshot",
    "chunk",
    "encrypted",
    "deduplicating",
    "pack",
    "header",
    "config",
    "restore",
    "server",
    "client",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "response",
    "timeout",
    "connection",
    "user",
    "file",
    "directory",
    "system",
    "process",
    "thread",
    "memory",
    "disk",
    "network",
    "value",
    "index",
    "table",
    "query",
    "result",
    "status",
    "started",
    "finished",
    "failed",
    "retry",
    "version",
    "update",
    "install",
    "package",
    "module",
    "function",
    "return",
];

/// Text-like bytes: log-ish lines of words and numbers, compressible about
/// as well as source code or logs.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut r = SplitMix(seed);
    let mut out = Vec::with_capacity(len + 256);
    while out.len() < len {
        let line = r.next() % 1_000_000;
        out.extend_from_slice(format!("{line:06} ").as_bytes());
        let level = ["INFO", "WARN", "DEBUG", "ERROR"][r.below(4) as usize];
        out.extend_from_slice(level.as_bytes());
        for _ in 0..4 + r.below(12) {
            out.push(b' ');
            out.extend_from_slice(WORDS[r.below(WORDS.len() as u64) as usize].as_bytes());
            if r.below(10) == 0 {
                out.extend_from_slice(format!("={}", r.below(100_000)).as_bytes());
            }
        }
        out.extend_from_slice(b".\n");
    }
    out.truncate(len);
    out
}
