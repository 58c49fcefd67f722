//! Integration tests: the real `coffer` binary on real files, a real SQLite
//! cache and a real repository directory. One test binary, one module per
//! story. `util` holds the harness.

mod backup;
mod cache_trust;
mod crash;
mod job;
mod keys;
mod monitor;
mod restore;
mod retention;
mod scrub;
mod server;
mod tamper;
mod util;
