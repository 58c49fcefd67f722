//! `coffer serve`: accepts QUIC connections from pinned clients and serves
//! each one its own namespace, a [`LocalStore`] under the data directory, so
//! every rule of the store holds on the server too. The API is append-only:
//! there is no request that deletes, overwrites, truncates or renames.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quinn::{RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tracing::{error, info, warn};

use super::admission::{self, Admitted, ReadError, Reservation};
use super::config::{Client, ServerConfig};
use super::{provider, tls_err, transport, Fingerprint, Identity, PinnedClients};
use crate::error::{Error, ErrorKind, Result};
use crate::id::SnapshotId;
use crate::limits::{MAX_PACK_BYTES, MAX_SMALL_FILE_BYTES};
use crate::proto::{self, ErrorCode, Request, Response, HEAD_LEN, LIST_BATCH, PROTOCOL_VERSION};
use crate::store::{LocalStore, Store};

pub(super) use super::state::State;
pub use super::state::{namespace_store, Backend};

/// Largest range one `ReadPack` may ask for.
pub const MAX_READ_BYTES: u64 = 256 << 20;
/// Largest snapshot file accepted over the wire.
pub const MAX_WIRE_SNAPSHOT_BYTES: u64 = 256 << 20;

/// Builds the QUIC endpoint from a config: TLS 1.3 only, client
/// certificates required and pinned, 0-RTT off.
pub fn endpoint(cfg: &ServerConfig) -> Result<(quinn::Endpoint, SocketAddr)> {
    let sc = quic_config(cfg)?;
    let addr = cfg.listen_addr()?;
    let refused = |e: std::io::Error| Error::Denied(format!("cannot listen on {addr}: {e}"));
    let socket = std::net::UdpSocket::bind(addr).map_err(refused)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| refused(std::io::Error::other("no async runtime")))?;
    let ec = super::stateless::endpoint_config(&Identity::load(&cfg.identity)?);
    let ep = quinn::Endpoint::new(ec, Some(sc), socket, runtime).map_err(refused)?;
    let local = ep.local_addr().map_err(Error::RawIo)?;
    Ok((ep, local))
}

/// The endpoint's handshake rules from a config: its identity and the
/// pinned client certificates. A reload swaps them in for new handshakes.
pub(super) fn quic_config(cfg: &ServerConfig) -> Result<quinn::ServerConfig> {
    let id = Identity::load(&cfg.identity)?;
    let clients = cfg.validated_clients()?;
    let replicas = cfg.validated_replicas()?;
    let provider = provider();
    let verifier = PinnedClients {
        allowed: clients
            .iter()
            .map(|c| c.fingerprint)
            .chain(replicas.iter().map(|r| r.fingerprint))
            .collect(),
        provider: provider.clone(),
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![id.cert], id.key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![proto::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let qc = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
    sc.transport_config(Arc::new(transport()));
    Ok(sc)
}

/// Serves until `shutdown` resolves; `metrics` is the listener of
/// [`super::watch::bind_metrics`], when the config has `[metrics]`. The
/// namespaces in `refused` (their counter went back) are not served. Each
/// config that arrives on `reloads` (read and checked by the caller, on
/// SIGHUP) replaces the clients and limits, see `net::reload`.
pub async fn serve(
    cfg: ServerConfig,
    ep: quinn::Endpoint,
    metrics: Option<tokio::net::TcpListener>,
    refused: &[super::rollback::RolledBack],
    mut reloads: tokio::sync::mpsc::Receiver<ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    std::fs::create_dir_all(cfg.data.join("namespaces")).map_err(|e| Error::io(&cfg.data, e))?;
    // Opened before a client is heard (`cmd_serve` opened it already,
    // before its runtime, so this only takes it).
    let backend = tokio::task::block_in_place(|| cfg.object_backend())?;
    let leases = match &backend {
        Some((b, _)) => Some(Arc::new(super::lease::Leases::new(
            b.clone(),
            &cfg.data,
            cfg.lease_length()?,
        )?)),
        None => None,
    };
    let watch = Arc::new(super::watch::Watch::new(&cfg)?);
    watch.clone().start(metrics);
    let state = Arc::new(State {
        backend,
        leases,
        data: cfg.data.clone(),
        live: std::sync::RwLock::new(Arc::new(super::reload::Live::new(&cfg)?)),
        stores: Mutex::new(HashMap::new()),
        quotas: Default::default(),
        parity: cfg.parity_config(),
        watch,
        refused: std::sync::RwLock::new(
            refused
                .iter()
                .map(|r| (r.namespace.clone(), r.refusal()))
                .collect(),
        ),
    });
    if state.leases.is_some() {
        // The first round before a client is heard: namespaces another
        // server holds are refused, those taken over are rebuilt first.
        let (s, c) = (state.clone(), cfg.clone());
        tokio::task::block_in_place(|| super::jobs::renew_leases(&s, &c));
        super::jobs::hold_leases(state.clone(), cfg.clone());
    }
    let mut cfg = cfg;
    super::jobs::start(&state);
    let limit = Arc::new(tokio::sync::Semaphore::new(1024));
    // Unauthenticated peers hold slots only briefly and only a few each.
    let handshakes =
        super::handshake::Handshakes::new(state.live().admission.limits().handshakes_per_address);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(new) = reloads.recv() => {
                if let Some(now) = super::reload::apply(&state, &ep, &cfg, new) {
                    cfg = now;
                }
            }
            inc = ep.accept() => {
                let Some(inc) = inc else { break };
                let from = inc.remote_address();
                let pending = match handshakes.begin(from.ip()) {
                    Ok(p) => p,
                    Err(first) => {
                        if first {
                            super::refusal::too_many_handshakes(from, handshakes.cap());
                        }
                        inc.refuse();
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    inc.refuse();
                    continue;
                };
                let state = state.clone();
                let limits = state.live().admission.limits();
                tokio::spawn(async move {
                    let _permit = permit;
                    // Dropped unfinished, the handshake is abandoned.
                    let done = tokio::time::timeout(limits.handshake, inc).await;
                    drop(pending);
                    match done {
                        Ok(Ok(conn)) => connection(state, conn).await,
                        Ok(Err(e)) => super::refusal::handshake_failed(from, &e),
                        Err(_) => super::refusal::handshake_timed_out(from, limits.handshake),
                    }
                });
            }
        }
    }
    ep.close(0u32.into(), b"server shutting down");
    ep.wait_idle().await;
    Ok(())
}

fn peer(conn: &quinn::Connection) -> Option<Fingerprint> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| Fingerprint::of(c))
}

/// Bytes of request and answer bodies one connection may hold in memory at
/// once, in MiB; streams beyond it wait.
const CONN_BUDGET_MIB: u32 = 64;

struct Conn {
    state: Arc<State>,
    /// The peer's certificate.
    fingerprint: Fingerprint,
    /// What its Hello was granted: set once, by the first Hello.
    client: std::sync::OnceLock<Client>,
    conn: quinn::Connection,
    budget: Arc<tokio::sync::Semaphore>,
    /// This connection, counted against its certificate.
    admitted: Admitted,
}

/// Memory held for one stream's frame or body until its answer is sent.
type Held = (tokio::sync::OwnedSemaphorePermit, Reservation);

impl Conn {
    /// Reserves memory for a frame or body of `len` bytes: the connection's
    /// budget is waited for (its own streams queue), the certificate's and
    /// the server's are taken at once or refused, naming the limit.
    async fn reserve(&self, len: u64) -> std::result::Result<Held, Reply> {
        let mib = len.div_ceil(1 << 20).clamp(1, CONN_BUDGET_MIB as u64) as u32;
        // unwrap: the semaphore is never closed
        let own = self
            .budget
            .clone()
            .acquire_many_owned(mib)
            .await
            .expect("budget semaphore open");
        let shared = self
            .admitted
            .admission()
            .reserve(&self.admitted, len)
            .await
            .map_err(|why| Reply::err(ErrorCode::TooLarge, why))?;
        Ok((own, shared))
    }

    /// Reads exactly `buf.len()` bytes of a frame or body. A stall closes
    /// the connection: it holds memory and a stream for nothing.
    async fn read_exact(
        &self,
        recv: &mut RecvStream,
        buf: &mut [u8],
    ) -> std::result::Result<(), ReadError> {
        let r = admission::read_exact(recv, buf, self.admitted.limits().stall).await;
        if let Err(e @ ReadError::Stalled(_)) = &r {
            log(self, "a stalled stream", &e.to_string());
            self.conn.close(4u32.into(), b"stalled mid-frame");
        }
        r
    }
}

async fn connection(state: Arc<State>, conn: quinn::Connection) {
    // The handshake already refused unknown certificates; this is the map to a namespace.
    let live = state.live();
    let Some(fingerprint) = peer(&conn).filter(|fp| live.knows(fp)) else {
        conn.close(2u32.into(), b"unknown client");
        return;
    };
    let admitted = match live.admission.admit(fingerprint) {
        Ok(a) => a,
        Err(why) => {
            super::refusal::over_limit(conn.remote_address(), &fingerprint, &why);
            conn.close(3u32.into(), why.as_bytes());
            return;
        }
    };
    let ctx = Arc::new(Conn {
        state,
        fingerprint,
        client: std::sync::OnceLock::new(),
        conn: conn.clone(),
        budget: Arc::new(tokio::sync::Semaphore::new(CONN_BUDGET_MIB as usize)),
        admitted,
    });
    while let Ok((send, recv)) = conn.accept_bi().await {
        // A reload may have removed this client or moved it elsewhere: it
        // keeps nothing it was given at its handshake.
        if !super::reload::still_served(&ctx.state, &ctx.fingerprint, ctx.client.get()) {
            log(
                &ctx,
                "a request",
                "the client is no longer in the server's config",
            );
            ctx.conn
                .close(2u32.into(), b"client removed from the server's config");
            break;
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(why) = stream(&ctx, send, recv).await {
                // A malformed frame closes this connection only.
                log(&ctx, "protocol violation", &why);
                ctx.conn.close(1u32.into(), b"protocol violation");
            }
        });
    }
}

fn log(ctx: &Conn, what: &str, msg: &str) {
    // Before a Hello is granted: the client's own namespace, if it has one.
    let ns = match ctx.client.get() {
        Some(c) => c.namespace.clone(),
        None => ctx
            .state
            .live()
            .clients
            .get(&ctx.fingerprint)
            .map_or_else(|| "-".to_string(), |c| c.namespace.clone()),
    };
    warn!(
        namespace = %ns,
        fingerprint = %ctx.fingerprint,
        "refused {what}: {msg}"
    );
}

/// Why a request's frame was not read.
enum FrameError {
    /// Malformed or cut off: closes the connection.
    Violation(String),
    /// Refused by a memory limit: answered on the stream.
    Refused(Reply),
}

/// Reads a request frame; its memory is reserved (and held in `held`)
/// before the payload is allocated.
async fn read_frame(
    ctx: &Conn,
    recv: &mut RecvStream,
    held: &mut Option<Held>,
) -> std::result::Result<(u16, Vec<u8>), FrameError> {
    let violation = |e: ReadError| FrameError::Violation(format!("reading a frame: {e}"));
    let mut head = [0u8; HEAD_LEN];
    ctx.read_exact(recv, &mut head).await.map_err(violation)?;
    let (tag, len) = proto::decode_head(&head).map_err(|e| FrameError::Violation(e.to_string()))?;
    *held = Some(ctx.reserve(len as u64).await.map_err(FrameError::Refused)?);
    let mut p = vec![0u8; len];
    ctx.read_exact(recv, &mut p).await.map_err(violation)?;
    Ok((tag, p))
}

/// Reads a request's body of `len` bytes, at most `max`, its memory
/// reserved in `held` first.
async fn read_body(
    ctx: &Conn,
    recv: &mut RecvStream,
    len: u64,
    max: u64,
    held: &mut Option<Held>,
) -> std::result::Result<Vec<u8>, Reply> {
    if len > max {
        return Err(Reply::err(
            ErrorCode::TooLarge,
            format!("{len} bytes exceeds the limit of {max}"),
        ));
    }
    *held = Some(ctx.reserve(len).await?);
    let mut b = vec![0u8; len as usize];
    ctx.read_exact(recv, &mut b).await.map_err(|e| {
        Reply::err(
            ErrorCode::Invalid,
            format!("body shorter than announced: {e}"),
        )
    })?;
    Ok(b)
}

/// What to send back: a frame and maybe raw bytes after it.
struct Reply {
    head: Response,
    body: Vec<u8>,
}

impl Reply {
    fn of(r: Response) -> Reply {
        Reply {
            head: r,
            body: Vec::new(),
        }
    }
    fn bytes(b: Vec<u8>) -> Reply {
        Reply {
            head: Response::Bytes {
                len: b.len() as u64,
            },
            body: b,
        }
    }
    fn err(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::of(Response::Error {
            code,
            message: message.into(),
        })
    }
}

impl From<Error> for Reply {
    fn from(e: Error) -> Reply {
        let code = match e.kind() {
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::Conflict => ErrorCode::Conflict,
            ErrorKind::Denied => ErrorCode::Denied,
            ErrorKind::Corrupt => ErrorCode::Invalid,
            _ => ErrorCode::Internal,
        };
        // Never leak server paths: say what happened, not where.
        let message = match &e {
            Error::Io { err, .. } => format!("storage error: {}", err.kind()),
            Error::NotFound(_) => "the requested object".to_string(),
            Error::Conflict(_) => {
                "an object of that name exists already; nothing was replaced".to_string()
            }
            other => other.to_string(),
        };
        Reply::err(code, message)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::RawIo(std::io::Error::other(e.to_string())))?
}

async fn stream(
    ctx: &Arc<Conn>,
    mut send: SendStream,
    mut recv: RecvStream,
) -> std::result::Result<(), String> {
    let mut frame_held = None;
    let (tag, payload) = match read_frame(ctx, &mut recv, &mut frame_held).await {
        Ok(f) => f,
        Err(FrameError::Violation(why)) => return Err(why),
        Err(FrameError::Refused(r)) => {
            log(ctx, "a frame", &message_of(&r));
            let _ = send.write_all(&r.head.encode()).await;
            let _ = send.finish();
            return Ok(());
        }
    };
    let req = Request::decode(tag, &payload).map_err(|e| e.to_string())?;
    drop((payload, frame_held));
    // Which failures monitoring counts: commits and uploads.
    let counted = match &req {
        Request::WriteSnapshot { .. } => Some(true),
        Request::PutPack { .. } => Some(false),
        _ => None,
    };
    let name = format!("{req:?}")
        .split([' ', '{', '('])
        .next()
        .unwrap_or("request")
        .to_string();
    // Hold this stream's memory reservation until its answer is sent.
    let mut permit: Option<Held> = None;
    let answer = match handle(ctx, req, &mut recv, &mut permit).await {
        Ok(a) => a,
        Err(r) => Answer::One(r),
    };
    let r = match answer {
        Answer::One(r) => r,
        // Batches as the walk goes; a failure after some of them is
        // answered with `Error` in place of `End`.
        Answer::Packs(store) => match send_packs(&mut send, store).await {
            Ok(()) => Reply::of(Response::End),
            Err(Sent::Failed(r)) => r,
            // The client went away (or stopped the stream): nothing to finish.
            Err(Sent::Gone) => return Ok(()),
        },
        Answer::Snapshots(ids) => {
            for c in ids.chunks(LIST_BATCH) {
                let batch = Response::Snapshots { ids: c.to_vec() };
                if write_frame(&mut send, &batch).await.is_err() {
                    return Ok(());
                }
            }
            Reply::of(Response::End)
        }
    };
    if let Response::Error { code, message } = &r.head {
        // An existing snapshot or pack is not a failure: nothing was lost.
        if let (Some(commit), false) = (counted, *code == ErrorCode::Conflict) {
            if let Some(c) = ctx.client.get() {
                ctx.state.watch.failed(&c.namespace, commit);
            }
        }
        if matches!(
            code,
            ErrorCode::Denied | ErrorCode::Protocol | ErrorCode::TooLarge | ErrorCode::Invalid
        ) {
            log(ctx, &name, message);
        }
    }
    let _ = send.write_all(&r.head.encode()).await;
    if !r.body.is_empty() {
        let _ = send.write_all(&r.body).await;
    }
    let _ = send.finish();
    Ok(())
}

/// The message of an error reply, for the log.
fn message_of(r: &Reply) -> String {
    match &r.head {
        Response::Error { message, .. } => message.clone(),
        other => format!("{other:?}"),
    }
}

/// What `handle` answers: one reply, or a listing sent while it is read.
enum Answer {
    /// One frame (and maybe raw bytes after it).
    One(Reply),
    /// Every pack of the store, in `Packs` batches, then `End`.
    Packs(Arc<LocalStore>),
    /// These snapshots, in `Snapshots` batches, then `End`.
    Snapshots(Vec<SnapshotId>),
}

/// Why [`send_packs`] stopped early.
enum Sent {
    /// The walk failed: this goes out after the batches already sent.
    Failed(Reply),
    /// Writing failed: the peer is gone or stopped reading the stream.
    Gone,
}

impl From<Error> for Sent {
    fn from(e: Error) -> Sent {
        Sent::Failed(e.into())
    }
}

/// Sends the packs of `store` in `Packs` batches of [`LIST_BATCH`] as it
/// walks the shards, one shard read (on the blocking pool) at a time.
/// Memory stays at one shard and one batch, whatever the repository holds:
/// each write waits for QUIC flow control, so a slow client slows the
/// walk, and waiting holds no thread. The caller sends `End`.
async fn send_packs(
    send: &mut SendStream,
    store: Arc<LocalStore>,
) -> std::result::Result<(), Sent> {
    let s = store.clone();
    let shards = blocking(move || s.pack_shards()).await?;
    let mut batch = Vec::with_capacity(LIST_BATCH);
    for shard in shards {
        let s = store.clone();
        for p in blocking(move || s.shard_packs(&shard)).await? {
            batch.push(p);
            if batch.len() == LIST_BATCH {
                let packs = std::mem::replace(&mut batch, Vec::with_capacity(LIST_BATCH));
                write_frame(send, &Response::Packs { packs }).await?;
            }
        }
    }
    if !batch.is_empty() {
        write_frame(send, &Response::Packs { packs: batch }).await?;
    }
    Ok(())
}

/// Writes one frame of a listing; waits while the client's window is full.
async fn write_frame(send: &mut SendStream, r: &Response) -> std::result::Result<(), Sent> {
    send.write_all(&r.encode()).await.map_err(|_| Sent::Gone)
}

async fn handle(
    ctx: &Arc<Conn>,
    req: Request,
    recv: &mut RecvStream,
    permit: &mut Option<Held>,
) -> std::result::Result<Answer, Reply> {
    if let Request::Hello { version, namespace } = &req {
        if *version != PROTOCOL_VERSION {
            return Err(Reply::err(
                ErrorCode::Protocol,
                format!("client speaks protocol {version}, server speaks {PROTOCOL_VERSION}"),
            ));
        }
        // Other namespaces do not exist for this client: the same answer
        // whether or not the name is used by someone else.
        let granted = ctx.state.live().grant(&ctx.fingerprint, namespace);
        let Some(granted) = granted else {
            return Err(Reply::err(
                ErrorCode::Denied,
                format!("namespace {namespace:?} is not available to this client"),
            ));
        };
        if let Some(why) = ctx.state.refusal(namespace) {
            return Err(Reply::err(ErrorCode::Denied, why));
        }
        // One namespace per connection: the first Hello chose it.
        let client = ctx.client.get_or_init(|| granted);
        if client.namespace != *namespace {
            return Err(Reply::err(
                ErrorCode::Protocol,
                format!(
                    "this connection uses namespace {:?}; connect again for another",
                    client.namespace
                ),
            ));
        }
        // A session begins: what a killed server left in the namespace's
        // tmp/ goes now (a crash loop must not fill the disk); uploads that
        // live connections hold locked stay.
        let store = ctx.state.store(client)?;
        let ns = &client.namespace;
        match blocking(move || store.sweep_abandoned()).await {
            Ok((0, _)) => {}
            Ok((n, bytes)) => info!(
                namespace = %ns,
                "removed {n} partial files ({bytes} bytes) that interrupted uploads left in tmp/"
            ),
            Err(e) => warn!(namespace = %ns, "sweeping tmp/: {e}"),
        }
        return Ok(Answer::One(Reply::of(Response::Hello {
            version: PROTOCOL_VERSION,
            namespace: namespace.clone(),
        })));
    }
    let Some(client) = ctx.client.get() else {
        return Err(Reply::err(ErrorCode::Protocol, "send Hello first"));
    };
    if client.read_only {
        if let Some(what) = req.writes() {
            return Err(Reply::err(
                ErrorCode::Denied,
                format!(
                    "read-only: this identity may list and read namespace {}, not {what}",
                    client.namespace
                ),
            ));
        }
    }
    let store = ctx.state.store(client)?;
    let one = |r: Reply| Ok(Answer::One(r));
    match req {
        Request::Hello { .. } => unreachable!("handled above"),
        Request::ReadConfig => one(Reply::bytes(blocking(move || store.read_config()).await?)),
        Request::WriteConfig { len } => {
            let body = read_body(ctx, recv, len, MAX_SMALL_FILE_BYTES as u64, permit).await?;
            blocking(move || store.write_config(&body)).await?;
            one(Reply::of(Response::Ok))
        }
        Request::ListKeys => one(Reply::of(Response::Names {
            names: blocking(move || store.list_keys()).await?,
        })),
        Request::ReadKey { name } => {
            one(Reply::bytes(blocking(move || store.read_key(&name)).await?))
        }
        Request::WriteKey { name, len } => {
            let body = read_body(ctx, recv, len, MAX_SMALL_FILE_BYTES as u64, permit).await?;
            blocking(move || store.write_key(&name, &body)).await?;
            one(Reply::of(Response::Ok))
        }
        Request::RemoveKey { name } => {
            if !client.allow_remove_keys {
                return Err(Reply::err(
                    ErrorCode::Denied,
                    "append-only: this client may not remove key files",
                ));
            }
            blocking(move || store.remove_key(&name)).await?;
            one(Reply::of(Response::Ok))
        }
        Request::PutPack { id, len } => {
            if len > MAX_PACK_BYTES {
                return Err(Reply::err(
                    ErrorCode::TooLarge,
                    format!("pack of {len} bytes exceeds the limit"),
                ));
            }
            // Reserved under the check's lock until the upload ends (on
            // every path): uploads announced at once cannot pass the
            // quota together.
            let claim = match client.quota {
                None => None,
                Some(quota) => {
                    let ns = &client.namespace;
                    match super::quota::claim(&ctx.state.quotas, &store, ns, quota, len).await? {
                        Ok(c) => Some(c),
                        Err(over) => return Err(Reply::err(ErrorCode::TooLarge, over.message(ns))),
                    }
                }
            };
            *permit = Some(ctx.reserve(1 << 20).await?);
            let mut upload = store.upload_pack()?;
            let mut left = len;
            let mut buf = vec![0u8; 1 << 20];
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                // Cut off or stalled mid-upload: dropping the upload
                // removes its temporary file.
                ctx.read_exact(recv, &mut buf[..want]).await.map_err(|e| {
                    Reply::err(
                        ErrorCode::Invalid,
                        format!("pack body shorter than announced: {e}"),
                    )
                })?;
                tokio::task::block_in_place(|| upload.write_all(&buf[..want]))
                    .map_err(Error::RawIo)?;
                left -= want as u64;
            }
            let created = blocking(move || upload.commit(id)).await?;
            if let Some(c) = claim {
                c.commit(created);
            }
            one(Reply::of(Response::Stored { created }))
        }
        Request::PackSize { id } => one(Reply::of(Response::Size {
            size: blocking(move || store.pack_size(&id)).await?,
        })),
        Request::ReadPack { id, offset, len } => {
            if len > MAX_READ_BYTES {
                return Err(Reply::err(
                    ErrorCode::TooLarge,
                    format!("read of {len} bytes exceeds the limit"),
                ));
            }
            *permit = Some(ctx.reserve(len).await?);
            one(Reply::bytes(
                blocking(move || store.read_pack(&id, offset, len as usize)).await?,
            ))
        }
        Request::ListPacks => Ok(Answer::Packs(store)),
        Request::WriteSnapshot { len, group } => {
            let body = read_body(ctx, recv, len, MAX_WIRE_SNAPSHOT_BYTES, permit).await?;
            let st2 = store.clone();
            let (data, ns0) = (ctx.state.data.clone(), client.namespace.clone());
            let id = blocking(move || {
                let id = store.write_snapshot(&body, group)?;
                // The highest commit counter seen, kept outside the namespace.
                super::rollback::committed(&data, &ns0);
                Ok(id)
            })
            .await?;
            let (watch, ns) = (ctx.state.watch.clone(), client.namespace.clone());
            let fp = client.fingerprint.to_string();
            // The watcher first (log, figures, anomaly): parity below may
            // wait hours for a scrub's lock. Both off the reply path.
            let (st3, ns2) = (st2.clone(), ns.clone());
            tokio::task::spawn_blocking(move || watch.committed(&ns2, &st3, id, &fp));
            // Parity for the packs this snapshot brought, at once.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = crate::scrub::protect(&st2, st2.parity()) {
                    error!(namespace = %ns, "parity: {e}");
                }
            });
            one(Reply::of(Response::Committed { id }))
        }
        // Snapshots are few (retention expires them): read whole, then sent.
        Request::ListSnapshots => {
            // A replica's copy run starts with this listing: the primary's
            // sign that the offsite copy is kept up.
            if client.read_only && ctx.state.live().replicas.contains_key(&ctx.fingerprint) {
                let (w, ns, fp) = (
                    ctx.state.watch.clone(),
                    client.namespace.clone(),
                    ctx.fingerprint.to_string(),
                );
                let _ = blocking(move || {
                    w.pulled(&ns, &fp);
                    Ok(())
                })
                .await;
            }
            Ok(Answer::Snapshots(
                blocking(move || store.list_snapshots()).await?,
            ))
        }
        Request::Stamp { id } => one(Reply::of(Response::Stamped {
            stamp: blocking(move || store.stamp(&id)).await?,
        })),
        Request::Repair { id } => one(Reply::of(Response::Repaired {
            ok: blocking(move || store.repair(&id)).await?,
        })),
        Request::Forget { id } => {
            blocking(move || store.forget(&id)).await?;
            one(Reply::of(Response::Ok))
        }
        Request::Lock { id, until, hold } => one(Reply::of(Response::Stamped {
            stamp: blocking(move || store.lock(&id, until, hold)).await?,
        })),
        Request::ReadSnapshot { id } => one(Reply::bytes(
            blocking(move || store.read_snapshot(&id)).await?,
        )),
    }
}
