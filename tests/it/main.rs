//! Integration tests: the real `coffer` binary on real files, a real SQLite
//! cache and a real repository directory. One test binary, one module per
//! story. `util` holds the harness.

mod admission;
mod backup;
mod bucket;
mod cache_trust;
mod clock;
mod crash;
mod docs;
mod dry_run;
mod excludes;
mod filters;
mod find;
mod hardening;
mod job;
mod keep;
mod keys;
mod libvirt;
mod monitor;
mod mount;
mod nbd;
mod object;
mod operator;
mod parity_rows;
mod parity_sectors;
mod profile;
mod reconnect;
mod reload;
mod replication;
mod replreview;
mod restore;
mod restore_opts;
mod retention;
mod rollback;
mod scripting;
mod scrub;
mod secrets;
mod server;
mod stale;
mod store_loss;
mod tamper;
mod util;
mod webhook_tls;
mod weed;
