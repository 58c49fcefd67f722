//! What the server admits from one client certificate: how many connections
//! it may hold, and how much memory the frames and bodies it has in flight
//! may take, beside a budget for every client together. A certificate that
//! is taken over keeps working, so nothing it does may cost other clients
//! their service or the server its memory: past a limit it is refused with
//! a message that names the limit. Also owns reads that must keep making
//! progress: a stream that stalls mid-frame closes its connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::RecvStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Fingerprint;

/// The limits, from the server config's `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one certificate may hold at once.
    pub connections_per_client: usize,
    /// MiB of frames and bodies in flight for one certificate, all its
    /// connections together.
    pub client_memory_mib: u32,
    /// MiB of frames and bodies in flight for every client together.
    pub memory_mib: u32,
    /// How long a read in the middle of a frame or body may wait for the
    /// next byte before the connection is closed.
    pub stall: Duration,
    /// How long a handshake may take (see `net::handshake`).
    pub handshake: Duration,
    /// Handshakes one address may have in progress at once.
    pub handshakes_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_client: 16,
            client_memory_mib: 256,
            memory_mib: 1024,
            stall: Duration::from_secs(60),
            handshake: Duration::from_secs(10),
            handshakes_per_address: 32,
        }
    }
}

/// One certificate's share: its live connections and its memory budget.
struct Share {
    connections: usize,
    memory: Arc<Semaphore>,
}

/// The server's admission state, shared by every connection.
pub struct Admission {
    limits: Limits,
    memory: Arc<Semaphore>,
    clients: Mutex<HashMap<Fingerprint, Share>>,
}

/// A connection counted against its certificate; uncounted when dropped.
pub struct Admitted {
    adm: Arc<Admission>,
    fp: Fingerprint,
    /// The certificate's memory budget.
    memory: Arc<Semaphore>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // unwrap-free: a poisoned map still counts.
        let mut m = self.adm.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get_mut(&self.fp) {
            s.connections -= 1;
            if s.connections == 0 {
                m.remove(&self.fp);
            }
        }
    }
}

impl Admitted {
    /// The admission that counted this connection: a connection open at a
    /// reload keeps the limits it was admitted under until it closes.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.adm
    }

    /// The limits this connection was admitted under.
    pub fn limits(&self) -> Limits {
        self.adm.limits
    }
}

/// Memory reserved for one stream's frame or body, given back when dropped.
pub struct Reservation {
    _permits: [OwnedSemaphorePermit; 2],
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            memory: Arc::new(Semaphore::new(limits.memory_mib as usize)),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counts a new connection of `fp`; refused past the limit, with the
    /// reason to close it with.
    pub fn admit(self: &Arc<Self>, fp: Fingerprint) -> Result<Admitted, String> {
        let mut m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let share = m.entry(fp).or_insert_with(|| Share {
            connections: 0,
            memory: Arc::new(Semaphore::new(self.limits.client_memory_mib as usize)),
        });
        if share.connections >= self.limits.connections_per_client {
            return Err(format!(
                "too many connections from this client certificate (limit {})",
                self.limits.connections_per_client
            ));
        }
        share.connections += 1;
        Ok(Admitted {
            adm: self.clone(),
            fp,
            memory: share.memory.clone(),
        })
    }

    /// Reserves `len` bytes (rounded up to MiB) against the certificate's
    /// budget and the server's. The certificate's is taken at once or
    /// refused: a client that holds its own budget in stalled frames waits
    /// for nothing. The server's is waited for, up to the stall limit: a
    /// busy night of many honest clients queues instead of failing, while
    /// a few hostile certificates cannot hold everyone else's requests for
    /// longer than that.
    pub async fn reserve(&self, who: &Admitted, len: u64) -> Result<Reservation, String> {
        let mib = len.div_ceil(1 << 20).max(1);
        let want = |cap: u32| u32::try_from(mib).unwrap_or(u32::MAX).min(cap);
        let cap = self.limits.client_memory_mib;
        let client = who
            .memory
            .clone()
            .try_acquire_many_owned(want(cap))
            .map_err(|_| {
                format!(
                    "this client certificate's budget of {cap} MiB for data in flight is in use; {mib} MiB more refused, retry later"
                )
            })?;
        let cap = self.limits.memory_mib;
        let all = tokio::time::timeout(
            self.limits.stall,
            self.memory.clone().acquire_many_owned(want(cap)),
        )
        .await;
        match all {
            // unwrap-free: the semaphore is never closed.
            Ok(Ok(all)) => Ok(Reservation {
                _permits: [client, all],
            }),
            _ => Err(format!(
                "the server's budget of {cap} MiB for data in flight stayed in use for {}; {mib} MiB more refused, retry later",
                humantime::format_duration(self.limits.stall)
            )),
        }
    }
}

/// Fills `buf` from `recv`; fails when the stream ends first, or when no
/// byte arrives for `stall` (a slow but moving upload is fine, a silent
/// one is not).
pub async fn read_exact(
    recv: &mut RecvStream,
    buf: &mut [u8],
    stall: Duration,
) -> Result<(), ReadError> {
    let mut got = 0;
    while got < buf.len() {
        match tokio::time::timeout(stall, recv.read(&mut buf[got..])).await {
            Err(_) => return Err(ReadError::Stalled(stall)),
            Ok(Ok(Some(n))) => got += n,
            Ok(Ok(None)) => return Err(ReadError::Short),
            Ok(Err(e)) => return Err(ReadError::Stream(e.to_string())),
        }
    }
    Ok(())
}

/// Why [`read_exact`] stopped.
#[derive(Debug)]
pub enum ReadError {
    /// No byte for this long.
    Stalled(Duration),
    /// The stream finished early.
    Short,
    /// The stream failed.
    Stream(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Stalled(d) => write!(
                f,
                "stalled mid-frame: no byte for {} (limit stall_timeout)",
                humantime::format_duration(*d)
            ),
            ReadError::Short => f.write_str("stream ended before the announced length"),
            ReadError::Stream(e) => write!(f, "stream failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint([b; 32])
    }

    #[test]
    fn connections_are_counted_per_certificate_and_released() {
        let adm = Admission::new(Limits {
            connections_per_client: 2,
            ..Limits::default()
        });
        let a = adm.admit(fp(1)).unwrap();
        let _b = adm.admit(fp(1)).unwrap();
        let e = adm.admit(fp(1)).err().unwrap();
        assert!(e.contains("limit 2"), "{e}");
        // Another certificate is not affected.
        let _c = adm.admit(fp(2)).unwrap();
        drop(a);
        adm.admit(fp(1)).unwrap();
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn memory_past_the_certificates_budget_is_refused_and_the_servers_waited_for() {
        let adm = Admission::new(Limits {
            client_memory_mib: 4,
            memory_mib: 6,
            stall: Duration::from_secs(5),
            ..Limits::default()
        });
        let (a, b) = (adm.admit(fp(1)).unwrap(), adm.admit(fp(2)).unwrap());
        let r1 = adm.reserve(&a, 3 << 20).await.unwrap();
        let e = adm.reserve(&a, 2 << 20).await.err().unwrap();
        assert!(e.contains("client certificate's budget of 4 MiB"), "{e}");
        let r2 = adm.reserve(&b, 3 << 20).await.unwrap();
        // The server's budget is full: waited for up to the stall limit ...
        let e = adm.reserve(&b, 1).await.err().unwrap();
        assert!(e.contains("server's budget of 6 MiB"), "{e}");
        // ... and granted as soon as some comes back.
        let waiting = adm.reserve(&b, 1);
        let release = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(r1);
        };
        let (got, ()) = tokio::join!(waiting, release);
        assert!(got.is_ok());
        drop((got, r2));
        // A body larger than a budget takes all of it, not more.
        assert!(adm.reserve(&b, 100 << 20).await.is_ok());
    }
}
