//! What lets a client tell at once that the server it spoke to restarted.
//! A server process that crashed cannot close its connections; its
//! clients' next packets reach the new process, which knows none of them
//! and answers with a QUIC stateless reset. A client believes a reset only
//! when its token is the one the old process announced, so both processes
//! derive the tokens from the same secret, itself derived from the
//! server's private key (stable across restarts, unforgeable without it).
//! And the new process must answer packets for connection ids it did not
//! make: quinn's default generator answers only its own process's ids,
//! so the server makes plain random ids, which any process answers (resets
//! are rate-limited and smaller than the packet that caused them). Without
//! this a client waits for its idle timeout (a minute) before reconnecting.

use std::sync::Arc;
use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator, EndpointConfig};
use rand::RngCore;

use super::Identity;

/// Bytes of a connection id.
const CID_LEN: usize = 8;

/// The server endpoint's config: stateless reset tokens keyed by the
/// server's identity, random connection ids.
pub(super) fn endpoint_config(id: &Identity) -> EndpointConfig {
    let reset = blake3::derive_key(
        "coffer 2026-12 QUIC stateless reset key",
        id.key.secret_der(),
    );
    let mut ec = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &reset,
    )));
    ec.cid_generator(|| Box::new(RandomCids));
    ec
}

/// Random connection ids, recognised (as possibly ours) by any process.
struct RandomCids;

impl ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        rand::thread_rng().fill_bytes(&mut b);
        ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}
