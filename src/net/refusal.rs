//! The server's log of connections it refused before any request: a
//! handshake that failed (no client certificate, an unknown one, a known
//! certificate whose private key the peer does not hold, a wrong ALPN), a
//! certificate over its connection limit, a handshake not finished in time,
//! and an address with too many handshakes in progress. Each line names the
//! peer's address and, when there is one, the certificate's fingerprint. Lines are
//! rate-limited, so a flood of refusals cannot flood the journal: past
//! [`LINES_PER_MINUTE`] in a minute they are counted, and the count is
//! logged when the next line may be.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

use super::Fingerprint;

/// Refusal lines logged per minute at most.
pub const LINES_PER_MINUTE: u32 = 30;
const WINDOW: Duration = Duration::from_secs(60);

/// A window of [`WINDOW`]: when it started, lines logged in it, and lines
/// suppressed since the last one logged.
struct Rate(Mutex<Option<(Instant, u32, u64)>>);

static RATE: Rate = Rate(Mutex::new(None));

impl Rate {
    /// Whether a line may be logged at `now`, and how many were suppressed
    /// before it.
    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (start, logged, suppressed) = r.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= WINDOW {
            (*start, *logged) = (now, 0);
        }
        if *logged >= LINES_PER_MINUTE {
            *suppressed += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(suppressed))
    }
}

fn admit() -> Option<u64> {
    RATE.admit_at(Instant::now())
}

/// Logs a handshake that failed.
pub fn handshake_failed(from: SocketAddr, e: &quinn::ConnectionError) {
    let Some(suppressed) = admit() else { return };
    // rustls' reason comes in the error text; the verifier puts the
    // certificate's fingerprint into it when there was one.
    let why = e.to_string();
    let fingerprint = why
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .unwrap_or("none");
    warn!(
        peer = %from,
        fingerprint,
        suppressed,
        "refused connection: handshake failed: {why}"
    );
}

/// Logs a handshake that did not finish within `limit`.
pub fn handshake_timed_out(from: SocketAddr, limit: Duration) {
    let Some(suppressed) = admit() else { return };
    warn!(
        peer = %from,
        suppressed,
        "refused connection: handshake not finished within {} (limit handshake_timeout)",
        humantime::format_duration(limit)
    );
}

/// Logs the first handshake refused because its address has `cap` in
/// progress (later ones are not logged until it is under the cap again).
pub fn too_many_handshakes(from: SocketAddr, cap: usize) {
    let Some(suppressed) = admit() else { return };
    warn!(
        peer = %from,
        suppressed,
        "refused connection: too many handshakes in progress from this address (limit handshakes_per_address = {cap}); refusing more until they finish"
    );
}

/// Logs a connection refused after the handshake because its certificate
/// is over a limit.
pub fn over_limit(from: SocketAddr, fp: &Fingerprint, why: &str) {
    let Some(suppressed) = admit() else { return };
    warn!(peer = %from, fingerprint = %fp, suppressed, "refused connection: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_rate_are_counted_and_reported_with_the_next() {
        let r = Rate(Mutex::new(None));
        let t0 = Instant::now();
        for _ in 0..LINES_PER_MINUTE {
            assert_eq!(r.admit_at(t0), Some(0));
        }
        for i in 0..5 {
            assert_eq!(r.admit_at(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(r.admit_at(t0 + WINDOW), Some(5));
        assert_eq!(r.admit_at(t0 + WINDOW), Some(0));
    }
}
