//! Pacing a byte stream to a rate, as pure arithmetic over instants the
//! caller supplies: the shell sleeps for what it is told. Used by
//! `--limit-download`; a transfer may go at line speed, then waits until
//! its bytes fit the rate, and idle time earns no credit for a later burst.

use std::time::{Duration, Instant};

/// The pacing state of one limited stream (all its readers together).
#[derive(Debug)]
pub struct RatePacer {
    bytes_per_sec: u64,
    /// When the bytes accounted so far have fitted the rate.
    next: Option<Instant>,
}

impl RatePacer {
    /// A pacer for `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> RatePacer {
        RatePacer {
            bytes_per_sec: bytes_per_sec.max(1),
            next: None,
        }
    }

    /// Accounts `bytes` whose transfer began at `started` and is over at
    /// `now`; returns how long to wait so that everything so far fits the
    /// rate (the transfer's own time counts toward it).
    pub fn after(&mut self, bytes: u64, started: Instant, now: Instant) -> Duration {
        let from = match self.next {
            Some(n) if n > started => n,
            _ => started,
        };
        let next = from + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        self.next = Some(next);
        next.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_wait_their_time_and_idle_time_earns_no_burst() {
        let t0 = Instant::now();
        let mut p = RatePacer::new(1000);
        // 500 bytes at 1000 B/s: half a second.
        assert_eq!(p.after(500, t0, t0), Duration::from_millis(500));
        // Another 500 arriving at once queue behind the first.
        assert_eq!(p.after(500, t0, t0), Duration::from_millis(1000));
        // Ten idle seconds later: no credit, 250 bytes wait 250 ms.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(p.after(250, later, later), Duration::from_millis(250));
        // A transfer that took its own time waits only for the rest.
        let t1 = later + Duration::from_secs(5);
        assert_eq!(
            p.after(1000, t1, t1 + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        // A zero rate is taken as 1 B/s, never a division by zero.
        assert_eq!(RatePacer::new(0).after(2, t0, t0), Duration::from_secs(2));
    }
}
