//! # coffer
//!
//! An encrypted, deduplicating backup engine. A client cuts files, streams and
//! disk images into chunks with keyed FastCDC, names each chunk by its keyed
//! BLAKE3 hash, compresses it with zstd, seals it with XChaCha20-Poly1305 and
//! packs many chunks into padded pack files named by their plain BLAKE3. A
//! repository stores only packs, snapshot files and key files; it never sees
//! a chunk's size, id or plaintext.
//!
//! ## Layers (each only points down)
//!
//! | layer | modules | what it may touch |
//! |---|---|---|
//! | vocabulary | [`id`], [`error`], [`limits`], `aligned` | nothing |
//! | pure core | [`chunk`], [`crypto`], [`format`] | bytes in, values out; no files, clock or sockets |
//! | store | [`store`], [`operator`], [`clock_guard`] | one repository directory: write-once objects; the operator's logged overrides; whether its clock may delete |
//! | object backends | [`object`] | a directory or an S3 bucket: put-once, ranges, retention (not wired in yet) |
//! | monitoring | [`monitor`] | figures in, metrics text and alert decisions out |
//! | engine | [`repo`], [`cache`], [`cache_trust`], [`source`], [`job`] | files being backed up, the SQLite cache, a store |
//!
//! The on-disk formats are documented in `docs/format.md`.
//!
//! ## Example
//!
//! ```no_run
//! use coffer::repo::{Repository, InitOptions};
//! # fn main() -> coffer::Result<()> {
//! let dir = std::path::Path::new("/tmp/repo");
//! Repository::init(dir, b"passphrase", &InitOptions::default())?;
//! let repo = Repository::open(dir, b"passphrase")?;
//! for snap in repo.snapshots()?.good {
//!     println!("{} {}", snap.id.short(), snap.record.host);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod aligned;
pub mod cache;
pub mod cache_trust;
pub mod calendar;
pub mod chunk;
pub mod clock_guard;
pub mod commits;
pub mod crypto;
pub mod durable;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod id;
pub mod job;
pub mod keep;
pub mod limits;
pub mod monitor;
pub mod mount;
#[cfg(feature = "net")]
pub mod net;
pub mod object;
pub mod operator;
pub mod pace;
pub mod parity;
pub(crate) mod partial;
pub mod priority;
pub mod proto;
pub(crate) mod referenced;
pub mod replicate;
pub mod repo;
pub mod retention;
pub mod scrub;
pub mod source;
pub mod store;
pub mod stripe_index;

pub use error::{Error, ErrorKind, Result};
