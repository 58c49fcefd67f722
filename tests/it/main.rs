//! Integration tests: the real `coffer` binary on real files, a real SQLite
//! cache and a real repository directory. One test binary, one module per
//! story. `util` holds the harness.

mod admission;
mod backup;
mod cache_trust;
mod clock;
mod crash;
mod filters;
mod hardening;
mod job;
mod keep;
mod keys;
mod monitor;
mod object;
mod operator;
mod parity_sectors;
mod restore;
mod retention;
mod rollback;
mod scrub;
mod server;
mod stale;
mod store_loss;
mod tamper;
mod util;
mod weed;
