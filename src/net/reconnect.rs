//! Riding out a lost connection: which failures of a request are the
//! transport's (the connection or stream went away: the request may be
//! repeated on a new connection) and which are answers (final), the
//! backoff between reconnect attempts, and how a listing that starts over
//! delivers nothing twice. The remote store (`client`) applies them; the
//! rule per request is in `docs/protocol.md`.

use std::time::{Duration, Instant};

use quinn::{ConnectionError, ReadError, ReadExactError, WriteError};

use crate::error::Error;

/// The first wait before a reconnect attempt; each failed attempt doubles it.
pub const BACKOFF_START: Duration = Duration::from_millis(500);
/// The longest wait between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a client keeps trying to reconnect by default (`--reconnect-for`).
pub const DEFAULT_RECONNECT_FOR: Duration = Duration::from_secs(300);

/// How one attempt at a request failed.
#[derive(Debug)]
pub(super) enum Fail {
    /// The connection or the stream went away before the whole answer
    /// came: the request may or may not have taken effect.
    Lost(String),
    /// The server answered (an `Error` frame, a refusal), or the answer
    /// was malformed: repeating the request would not change it.
    Final(Error),
}

/// What the server's application close codes mean to a client (see
/// `server.rs`): 0 the server is shutting down, 4 a stream stalled: a
/// new connection may succeed. The others (a protocol violation, an
/// unknown or removed client, a limit) are refusals.
fn closed_for_now(code: quinn::VarInt) -> bool {
    matches!(code.into_inner(), 0 | 4)
}

/// Whether a connection error is the transport's: the peer went away (its
/// idle timeout, a reset, a server shutting down), not a refusal.
pub(super) fn connection_lost(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::TimedOut | ConnectionError::Reset | ConnectionError::CidsExhausted => true,
        ConnectionError::ApplicationClosed(c) => closed_for_now(c.error_code),
        ConnectionError::ConnectionClosed(_)
        | ConnectionError::TransportError(_)
        | ConnectionError::VersionMismatch
        | ConnectionError::LocallyClosed => false,
    }
}

/// Sorts a connection error into [`Fail`], with `what` for the message.
pub(super) fn on_connection(e: ConnectionError, what: impl Fn(String) -> Error) -> Fail {
    if connection_lost(&e) {
        Fail::Lost(e.to_string())
    } else {
        Fail::Final(what(e.to_string()))
    }
}

/// Sorts a failed write of a request.
pub(super) fn on_write(e: WriteError, what: impl Fn(String) -> Error) -> Fail {
    match e {
        WriteError::ConnectionLost(c) => on_connection(c, what),
        // The server reset the stream without an answer.
        WriteError::Stopped(_) => Fail::Lost(e.to_string()),
        WriteError::ClosedStream | WriteError::ZeroRttRejected => Fail::Final(what(e.to_string())),
    }
}

/// Sorts a failed read of an answer.
pub(super) fn on_read(e: ReadExactError, what: impl Fn(String) -> Error) -> Fail {
    match e {
        // The stream ended or was reset before the whole answer came.
        ReadExactError::FinishedEarly(_) | ReadExactError::ReadError(ReadError::Reset(_)) => {
            Fail::Lost(e.to_string())
        }
        ReadExactError::ReadError(ReadError::ConnectionLost(c)) => on_connection(c, what),
        ReadExactError::ReadError(_) => Fail::Final(what(e.to_string())),
    }
}

/// One reconnect attempt about to be made, for the operator's log.
#[derive(Debug, Clone)]
pub struct Reconnecting {
    /// `quic://HOST:PORT`.
    pub server: String,
    /// Why: what the lost connection or the last attempt said.
    pub reason: String,
    /// 1 for the first attempt after a loss.
    pub attempt: u32,
    /// How long until this attempt.
    pub wait: Duration,
    /// How long until the client gives up.
    pub left: Duration,
}

/// What the remote store tells the operator about reconnects.
#[derive(Debug, Clone)]
pub enum ReconnectEvent {
    /// An attempt is about to be made.
    Attempt(Reconnecting),
    /// A new connection stands after `attempts` attempts.
    Reconnected {
        /// `quic://HOST:PORT`.
        server: String,
        /// How many attempts it took.
        attempts: u32,
    },
}

/// Receives [`ReconnectEvent`]s (the CLI prints them on standard error).
pub type ReconnectReport = Box<dyn Fn(&ReconnectEvent) + Send + Sync>;

/// One request's retries: the window opens at its first loss.
#[derive(Debug, Default)]
pub(super) struct Tries {
    first_loss: Option<Instant>,
    /// Repeats so far.
    pub repeats: u32,
}

impl Tries {
    /// Notes a loss; returns when this request stops trying.
    pub fn lost(&mut self, window: Duration) -> Instant {
        self.repeats += 1;
        *self.first_loss.get_or_insert_with(Instant::now) + window
    }
    /// Whether the request was sent more than once: an earlier attempt may
    /// have taken effect.
    pub fn repeated(&self) -> bool {
        self.repeats > 0
    }
    /// The pause before repeating a request on a connection that stands
    /// (only its stream failed).
    pub fn pause(&self) -> Duration {
        backoff(self.repeats)
    }
}

/// The wait before attempt `n` (1-based): [`BACKOFF_START`] doubling up to
/// [`BACKOFF_MAX`].
pub fn backoff(n: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// Where a listing that starts over (after a reconnect) resumes. Listings
/// come sorted by name (`docs/protocol.md`): on a new pass, names up to the
/// last one delivered were delivered already and are skipped. A server
/// whose listing was not sorted cannot be resumed: the listing fails.
#[derive(Debug)]
pub(super) struct Resume<K> {
    last: Option<K>,
    sorted: bool,
    replay: bool,
}

impl<K> Default for Resume<K> {
    fn default() -> Self {
        Resume {
            last: None,
            sorted: true,
            replay: false,
        }
    }
}

impl<K: Ord + Copy> Resume<K> {
    /// Whether `k` is new to the caller (false: delivered on an earlier pass).
    pub fn fresh(&mut self, k: K) -> bool {
        match self.last {
            Some(l) if k <= l => {
                if !self.replay {
                    self.sorted = false;
                }
                !self.replay
            }
            _ => {
                self.last = Some(k);
                self.replay = false;
                true
            }
        }
    }

    /// The listing starts over; refused when it cannot resume.
    pub fn again(&mut self) -> crate::error::Result<()> {
        if !self.sorted {
            return Err(Error::Corrupt(
                "the connection was lost during a listing that came unsorted: it cannot resume"
                    .into(),
            ));
        }
        self.replay = self.last.is_some();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_thirty() {
        let w: Vec<u64> = (1..=9).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(w, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_listing_that_starts_over_delivers_nothing_twice() {
        let mut r = Resume::default();
        let first: Vec<u32> = [1, 3, 5].into_iter().filter(|k| r.fresh(*k)).collect();
        assert_eq!(first, [1, 3, 5]);
        r.again().unwrap();
        // the new pass holds a name added meanwhile (4) before the resume
        // point, which a pass taken then would have missed too
        let second: Vec<u32> = [1, 3, 4, 5, 7, 9]
            .into_iter()
            .filter(|k| r.fresh(*k))
            .collect();
        assert_eq!(second, [7, 9]);
        // and again, before anything new came
        r.again().unwrap();
        let third: Vec<u32> = [1, 9, 10].into_iter().filter(|k| r.fresh(*k)).collect();
        assert_eq!(third, [10]);
    }

    #[test]
    fn an_unsorted_listing_is_not_resumed() {
        let mut r = Resume::default();
        assert!([5, 2].into_iter().all(|k| r.fresh(k)));
        assert!(r.again().is_err());
        // before anything was delivered a listing may always start over
        let mut r = Resume::<u32>::default();
        r.again().unwrap();
        assert!(r.fresh(1));
    }

    #[test]
    fn a_shutdown_is_lost_a_refusal_is_final() {
        let closed = |code: u32| {
            ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: code.into(),
                reason: Default::default(),
            })
        };
        assert!(connection_lost(&closed(0)));
        assert!(connection_lost(&ConnectionError::TimedOut));
        assert!(connection_lost(&ConnectionError::Reset));
        for refused in [1, 2, 3] {
            assert!(!connection_lost(&closed(refused)), "code {refused}");
        }
        assert!(!connection_lost(&ConnectionError::LocallyClosed));
    }
}
