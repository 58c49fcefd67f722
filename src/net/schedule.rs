//! The server's scrub schedule, kept across restarts: `DATA/scrub.last`
//! holds the time (seconds since the epoch, by the server's clock) the last
//! scheduled scrub began, so a server restarted more often than its scrub
//! interval still scrubs once per interval. Before the first scrub the file
//! holds the time the schedule started (the server's first start).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file under the data directory.
pub const SCRUB_LAST: &str = "scrub.last";

/// When the next scrub is due, from the last one's start (if known), the
/// time now and the interval, all in seconds. A last time in the future by
/// more than one interval (the clock went back) counts from now instead,
/// so a clock that jumped back cannot put scrubbing off for that long.
pub fn next_due(last: Option<i64>, now: i64, every: i64) -> i64 {
    match last {
        Some(l) if l <= now + every => l + every,
        _ => now + every,
    }
}

fn path(data: &Path) -> PathBuf {
    data.join(SCRUB_LAST)
}

/// The recorded start of the last scrub; `None` when absent or unreadable
/// (the schedule then starts over from now, and says so by recording it).
pub fn read_last(data: &Path) -> Option<i64> {
    std::fs::read_to_string(path(data))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Records `t` as the start of the last scrub (atomically: a torn write
/// never leaves a time that was not written).
pub fn write_last(data: &Path, t: i64) -> std::io::Result<()> {
    let tmp = data.join(format!("{SCRUB_LAST}.new"));
    std::fs::write(&tmp, format!("{t}\n"))?;
    std::fs::rename(&tmp, path(data))
}

/// How long to sleep before looking again: until `due`, but at most a
/// minute, so a reload's new interval or a clock step is seen soon.
pub fn nap(due: i64, now: i64) -> Duration {
    Duration::from_secs(due.saturating_sub(now).clamp(1, 60) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_counts_from_the_last_scrub_not_from_the_start() {
        let h = 3600;
        // Restarted 30 min after a scrub: due 30 min from now, not 1 h.
        assert_eq!(next_due(Some(1000), 1000 + h / 2, h), 1000 + h);
        // Down for longer than the interval: due at once.
        assert!(next_due(Some(1000), 1000 + 3 * h, h) <= 1000 + 3 * h);
        // Never scrubbed, nothing recorded: one interval from now.
        assert_eq!(next_due(None, 5000, h), 5000 + h);
        // The clock went back a day: not a day's delay.
        assert_eq!(next_due(Some(100 * h), 75 * h, h), 76 * h);
    }

    #[test]
    fn the_record_survives_a_round_trip_and_garbage_reads_as_none() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_last(d.path()), None);
        write_last(d.path(), 1_700_000_000).unwrap();
        assert_eq!(read_last(d.path()), Some(1_700_000_000));
        std::fs::write(d.path().join(SCRUB_LAST), "yesterday").unwrap();
        assert_eq!(read_last(d.path()), None);
        assert_eq!(nap(100, 50), Duration::from_secs(50));
        assert_eq!(nap(100, 500), Duration::from_secs(1));
        assert_eq!(nap(10_000, 0), Duration::from_secs(60));
    }
}
