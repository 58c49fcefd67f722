//! Every size cap on untrusted input, in one place. Parsers check lengths
//! against these before they allocate.

/// Largest plaintext blob (a data chunk, tree, chunk list or record). Large
/// enough for a directory of a few hundred thousand entries.
pub const MAX_BLOB_BYTES: usize = 64 << 20;
/// Largest sealed blob: the plaintext plus flag, nonce and tag, plus zstd's
/// worst-case expansion is never stored (raw is chosen instead).
pub const MAX_SEALED_BLOB_BYTES: usize = MAX_BLOB_BYTES + 1 + 24 + 16;
/// Largest pack file accepted by readers and the store.
pub const MAX_PACK_BYTES: u64 = 1 << 30;
/// Largest sealed pack header.
pub const MAX_PACK_HEADER_BYTES: usize = 16 << 20;
/// Most blobs one pack may hold.
pub const MAX_PACK_ENTRIES: usize = 200_000;
/// Most packs one snapshot may reference.
pub const MAX_SNAPSHOT_PACKS: usize = 50_000_000;
/// Largest snapshot file.
pub const MAX_SNAPSHOT_BYTES: usize = 2 << 30;
/// Largest key or config file.
pub const MAX_SMALL_FILE_BYTES: usize = 64 << 10;
/// Largest chunker maximum chunk size a config may ask for.
pub const MAX_CHUNK_BYTES: u32 = 8 << 20;
/// Smallest chunker minimum chunk size a config may ask for.
pub const MIN_CHUNK_BYTES: u32 = 4 << 10;
