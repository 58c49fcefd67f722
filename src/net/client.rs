//! The remote store: implements [`Store`] by speaking the protocol to a
//! `coffer serve`, so the engine runs unchanged against a server. Owns a small
//! tokio runtime and one QUIC connection; every call is one bi-directional
//! stream. A connection that is lost (a server restarting) is made anew
//! and the requests it interrupted repeated (see `reconnect`).

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quinn::RecvStream;

use super::reconnect::{self, Fail, ReconnectEvent, ReconnectReport, Reconnecting, Resume, Tries};
use super::{provider, tls_err, transport, Fingerprint, Identity, PinnedServer};
use crate::error::{Error, Result};
use crate::id::{PackId, SnapshotGroup, SnapshotId};
use crate::limits::{MAX_PACK_BYTES, MAX_SMALL_FILE_BYTES};
use crate::proto::{self, ErrorCode, Request, Response, HEAD_LEN, PROTOCOL_VERSION};
use crate::retention::Stamp;
use crate::store::{PackUpload, Store};

/// A parsed `quic://HOST:PORT/NAMESPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    /// Host name or address.
    pub host: String,
    /// UDP port.
    pub port: u16,
    /// The namespace on the server.
    pub namespace: String,
}

impl RemoteUrl {
    /// Parses a repository URL.
    pub fn parse(s: &str) -> Result<RemoteUrl> {
        let bad = || Error::Denied(format!("{s:?} is not quic://HOST:PORT/NAMESPACE"));
        let rest = s.strip_prefix("quic://").ok_or_else(bad)?;
        let (hostport, ns) = rest.split_once('/').ok_or_else(bad)?;
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || !super::config::valid_namespace(ns) {
            return Err(bad());
        }
        Ok(RemoteUrl {
            host,
            port,
            namespace: ns.to_string(),
        })
    }
}

/// A repository on a server.
pub struct RemoteStore {
    rt: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    /// The handshake's settings, kept to reconnect.
    tls: quinn::ClientConfig,
    url: RemoteUrl,
    /// How long a connection attempt waits for the server.
    connect_timeout: Duration,
    /// The connection in use; replaced by a reconnect.
    link: RwLock<Link>,
    /// Held by the one thread that reconnects; the others wait for it.
    redial: Mutex<()>,
    /// How long to keep trying to reconnect after a loss (zero: never).
    reconnect_for: Duration,
    report: Option<ReconnectReport>,
    /// `--limit-download`: pack bytes read are paced to this rate.
    download: Option<Mutex<crate::pace::RatePacer>>,
}

/// The connection and its generation (one more at each reconnect).
struct Link {
    conn: quinn::Connection,
    generation: u64,
    /// Set when reconnecting failed for good: every request fails so.
    gave_up: Option<(bool, String)>,
}

fn net_err(url: &RemoteUrl, e: impl std::fmt::Display) -> Error {
    Error::RawIo(std::io::Error::other(format!(
        "server {}: {e}",
        server_of(url)
    )))
}

fn server_of(url: &RemoteUrl) -> String {
    format!("quic://{}:{}", url.host, url.port)
}

fn from_code(code: ErrorCode, message: String) -> Error {
    match code {
        ErrorCode::NotFound => Error::NotFound(message),
        ErrorCode::Conflict => Error::Conflict(message),
        ErrorCode::Invalid => Error::Corrupt(format!("server refused: {message}")),
        ErrorCode::Internal => {
            Error::RawIo(std::io::Error::other(format!("server error: {message}")))
        }
        ErrorCode::Denied | ErrorCode::TooLarge | ErrorCode::Protocol => {
            Error::Denied(format!("server refused: {message}"))
        }
    }
}

async fn read_frame(recv: &mut RecvStream, url: &RemoteUrl) -> std::result::Result<Response, Fail> {
    let lost = |e| reconnect::on_read(e, |m| net_err(url, m));
    let bad = |e: crate::format::FormatError| Fail::Final(net_err(url, e));
    let mut head = [0u8; HEAD_LEN];
    recv.read_exact(&mut head).await.map_err(lost)?;
    let (tag, len) = proto::decode_head(&head).map_err(bad)?;
    let mut p = vec![0u8; len];
    recv.read_exact(&mut p).await.map_err(lost)?;
    Response::decode(tag, &p).map_err(bad)
}

/// How long a connection attempt waits for the server by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the request frame and `body` on a new stream of `conn`; returns
/// the stream to read the answer from.
async fn open_on(
    conn: &quinn::Connection,
    url: &RemoteUrl,
    req: &Request,
    body: &[u8],
) -> std::result::Result<RecvStream, Fail> {
    let what = |m| net_err(url, m);
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| reconnect::on_connection(e, what))?;
    send.write_all(&req.encode())
        .await
        .map_err(|e| reconnect::on_write(e, what))?;
    // A server that refuses a request stops reading its body: the
    // answer it sent says why, so read it before reporting the write.
    let sent = if body.is_empty() {
        Ok(())
    } else {
        send.write_all(body).await
    };
    let _ = send.finish();
    if let Err(e) = sent {
        return match read_frame(&mut recv, url).await {
            Ok(Response::Error { code, message }) => Err(Fail::Final(from_code(code, message))),
            _ => Err(reconnect::on_write(e, what)),
        };
    }
    Ok(recv)
}

/// Reads the next frame of an answer, and the bytes after a `Bytes`
/// frame (at most `max_body`); an `Error` frame is returned as the error.
async fn answer_on(
    recv: &mut RecvStream,
    url: &RemoteUrl,
    max_body: u64,
) -> std::result::Result<(Response, Vec<u8>), Fail> {
    match read_frame(recv, url).await? {
        Response::Error { code, message } => Err(Fail::Final(from_code(code, message))),
        Response::Bytes { len } if len > max_body => Err(Fail::Final(net_err(
            url,
            format!("answer of {len} bytes is larger than expected"),
        ))),
        r @ Response::Bytes { len } => {
            let mut b = vec![0u8; len as usize];
            recv.read_exact(&mut b)
                .await
                .map_err(|e| reconnect::on_read(e, |m| net_err(url, m)))?;
            Ok((r, b))
        }
        r => Ok((r, Vec::new())),
    }
}

/// A listing's callback: a batch, or word that the listing starts over
/// (after a reconnect) and batches already seen will come again.
enum Listed {
    Batch(Response),
    Again,
}

/// A failed connection attempt: whether trying again may help (the server
/// did not answer, or went away) or not (it refused this client).
struct DialError {
    error: Error,
    retry: bool,
}

impl RemoteStore {
    /// Paces the pack bytes this store reads to `bytes_per_sec` (all
    /// readers together; a reader waits after its read for the bytes to fit
    /// the rate, and idle time earns no burst).
    pub fn with_download_limit(mut self, bytes_per_sec: u64) -> RemoteStore {
        self.download = Some(Mutex::new(crate::pace::RatePacer::new(bytes_per_sec)));
        self
    }

    /// Reconnects when the connection is lost (the server restarted, the
    /// network dropped it), trying for at most `window` with a backoff of
    /// [`reconnect::BACKOFF_START`] doubling to [`reconnect::BACKOFF_MAX`],
    /// and repeats the requests the loss interrupted. `report` hears of
    /// each attempt. Without this (or with a zero window) a lost connection
    /// fails the request.
    pub fn with_reconnect(mut self, window: Duration, report: Option<ReconnectReport>) -> Self {
        self.reconnect_for = window;
        self.report = report;
        self
    }

    /// Connects, checks the server against `pin`, and says hello.
    pub fn connect(url: &RemoteUrl, identity: Identity, pin: Fingerprint) -> Result<RemoteStore> {
        Self::connect_within(url, identity, pin, DEFAULT_CONNECT_TIMEOUT)
    }

    /// Like [`RemoteStore::connect`]; gives up when the server has not
    /// answered the handshake within `timeout` (a server that is down or
    /// a dropped UDP port would otherwise hold a nightly job for the
    /// transport's idle timeout).
    pub fn connect_within(
        url: &RemoteUrl,
        identity: Identity,
        pin: Fingerprint,
        timeout: Duration,
    ) -> Result<RemoteStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::RawIo)?;
        let addr = resolve(url)?;
        let provider = provider();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer { pin, provider }))
            .with_client_auth_cert(vec![identity.cert], identity.key)
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![proto::ALPN.to_vec()];
        tls.enable_early_data = false;
        let qc = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
        let mut cc = quinn::ClientConfig::new(Arc::new(qc));
        cc.transport_config(Arc::new(transport()));
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .expect("valid bind address");
        let endpoint = rt.block_on(async { quinn::Endpoint::client(bind) });
        let endpoint = endpoint.map_err(|e| net_err(url, e))?;
        let conn = dial(&rt, &endpoint, &cc, url, timeout).map_err(|d| d.error)?;
        Ok(RemoteStore {
            rt,
            endpoint,
            tls: cc,
            url: url.clone(),
            connect_timeout: timeout,
            link: RwLock::new(Link {
                conn,
                generation: 0,
                gave_up: None,
            }),
            redial: Mutex::new(()),
            reconnect_for: Duration::ZERO,
            report: None,
            download: None,
        })
    }

    /// The connection in use and its generation, or the error reconnecting
    /// ended with.
    fn current(&self) -> Result<(quinn::Connection, u64)> {
        let l = self.link.read().unwrap_or_else(|e| e.into_inner());
        match &l.gave_up {
            Some((denied, why)) => Err(self.gave_up_error(*denied, why)),
            None => Ok((l.conn.clone(), l.generation)),
        }
    }

    fn gave_up_error(&self, denied: bool, why: &str) -> Error {
        if denied {
            Error::Denied(why.to_string())
        } else {
            net_err(&self.url, why)
        }
    }

    /// After `conn` (generation `generation`) lost a request with `why`:
    /// waits until the request may be repeated, on a new connection when
    /// this one is gone (made by this thread, or by another that got there
    /// first). Fails when reconnecting is off, refused, or out of time.
    fn recover(
        &self,
        conn: &quinn::Connection,
        generation: u64,
        why: String,
        tries: &mut Tries,
    ) -> Result<()> {
        if self.reconnect_for.is_zero() {
            return Err(net_err(&self.url, why));
        }
        let deadline = tries.lost(self.reconnect_for);
        if conn.close_reason().is_none() {
            // Only the stream failed: the connection stands.
            let wait = tries.pause();
            if Instant::now() + wait > deadline {
                return Err(net_err(&self.url, why));
            }
            std::thread::sleep(wait);
            return Ok(());
        }
        let _one = self.redial.lock().unwrap_or_else(|e| e.into_inner());
        if self.current()?.1 != generation {
            return Ok(());
        }
        let server = server_of(&self.url);
        let mut reason = format!("connection lost: {why}");
        for attempt in 1.. {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = reconnect::backoff(attempt).min(left);
            if left.is_zero() {
                return Err(self.give_up(
                    false,
                    format!(
                        "gave up reconnecting after {} (last: {reason})",
                        humantime::format_duration(self.reconnect_for)
                    ),
                ));
            }
            self.tell(ReconnectEvent::Attempt(Reconnecting {
                server: server.clone(),
                reason: reason.clone(),
                attempt,
                wait,
                left,
            }));
            std::thread::sleep(wait);
            let left = deadline.saturating_duration_since(Instant::now());
            let left = Duration::from_millis(left.as_millis() as u64);
            let timeout = self
                .connect_timeout
                .min(left)
                .max(Duration::from_millis(100));
            match dial(&self.rt, &self.endpoint, &self.tls, &self.url, timeout) {
                Ok(new) => {
                    let mut l = self.link.write().unwrap_or_else(|e| e.into_inner());
                    l.conn = new;
                    l.generation += 1;
                    drop(l);
                    self.tell(ReconnectEvent::Reconnected {
                        server,
                        attempts: attempt,
                    });
                    return Ok(());
                }
                Err(DialError { error, retry: true }) => {
                    let e = error.to_string();
                    let prefix = format!("server {server}: ");
                    reason = e.strip_prefix(&prefix).unwrap_or(&e).to_string();
                }
                Err(DialError { error, .. }) => {
                    let denied = matches!(error, Error::Denied(_));
                    return Err(self.give_up(denied, error.to_string()));
                }
            }
        }
        unreachable!("the attempts end at the deadline")
    }

    /// Records that reconnecting failed for good; returns the error.
    fn give_up(&self, denied: bool, why: String) -> Error {
        let e = self.gave_up_error(denied, &why);
        self.link.write().unwrap_or_else(|e| e.into_inner()).gave_up = Some((denied, why));
        e
    }

    fn tell(&self, e: ReconnectEvent) {
        if let Some(r) = &self.report {
            r(&e);
        }
    }

    /// One request: sends the frame and `body`, returns the answer and the
    /// bytes that follow it (at most `max_body`).
    fn call(&self, req: &Request, body: &[u8], max_body: u64) -> Result<(Response, Vec<u8>)> {
        self.call_again(req, body, max_body).0
    }

    /// Like [`RemoteStore::call`], repeating the request after a lost
    /// connection; also says whether it went out more than once (an
    /// earlier attempt may then have taken effect: see `docs/protocol.md`).
    fn call_again(
        &self,
        req: &Request,
        body: &[u8],
        max_body: u64,
    ) -> (Result<(Response, Vec<u8>)>, bool) {
        let mut tries = Tries::default();
        loop {
            let (conn, generation) = match self.current() {
                Ok(c) => c,
                Err(e) => return (Err(e), tries.repeated()),
            };
            let url = &self.url;
            let r = self.rt.block_on(async {
                let mut recv = open_on(&conn, url, req, body).await?;
                answer_on(&mut recv, url, max_body).await
            });
            match r {
                Ok(a) => return (Ok(a), tries.repeated()),
                Err(Fail::Final(e)) => return (Err(e), tries.repeated()),
                Err(Fail::Lost(why)) => {
                    if let Err(e) = self.recover(&conn, generation, why, &mut tries) {
                        return (Err(e), tries.repeated());
                    }
                }
            }
        }
    }

    /// A listing: calls `f` with each batch frame as it arrives, until
    /// `End`. Holds one batch at a time, and `f` runs outside the runtime,
    /// so it may make requests of its own meanwhile. An `Error` after some
    /// batches fails the listing: what `f` saw was not all. Dropping the
    /// stream when `f` fails stops the server's walk. After a reconnect the
    /// listing starts over, and `f` hears [`Listed::Again`] first.
    fn call_list(&self, req: &Request, f: &mut dyn FnMut(Listed) -> Result<()>) -> Result<()> {
        let mut tries = Tries::default();
        loop {
            let (conn, generation) = self.current()?;
            if tries.repeated() {
                f(Listed::Again)?;
            }
            let url = &self.url;
            let mut pass = || -> std::result::Result<(), Fail> {
                let mut recv = self.rt.block_on(open_on(&conn, url, req, &[]))?;
                loop {
                    match self.rt.block_on(answer_on(&mut recv, url, 0))? {
                        (Response::End, _) => return Ok(()),
                        (r, _) => f(Listed::Batch(r)).map_err(Fail::Final)?,
                    }
                }
            };
            match pass() {
                Ok(()) => return Ok(()),
                Err(Fail::Final(e)) => return Err(e),
                Err(Fail::Lost(why)) => self.recover(&conn, generation, why, &mut tries)?,
            }
        }
    }

    fn unexpected(&self, r: Response) -> Error {
        net_err(&self.url, format!("unexpected answer {r:?}"))
    }

    fn bytes(&self, req: &Request, max: u64) -> Result<Vec<u8>> {
        match self.call(req, &[], max)? {
            (Response::Bytes { .. }, b) => Ok(b),
            (r, _) => Err(self.unexpected(r)),
        }
    }

    /// A write of a name that is written once (`WriteConfig`, `WriteKey`):
    /// when a repeat of it finds the name taken, the first attempt may have
    /// written it; `held` reads what the name holds, and the same bytes
    /// mean it did.
    fn write_once(
        &self,
        req: &Request,
        bytes: &[u8],
        held: impl Fn() -> Result<Vec<u8>>,
    ) -> Result<()> {
        match self.call_again(req, bytes, 0) {
            (Ok((Response::Ok, _)), _) => Ok(()),
            (Ok((r, _)), _) => Err(self.unexpected(r)),
            (Err(Error::Conflict(m)), true) => match held() {
                Ok(b) if b == bytes => Ok(()),
                _ => Err(Error::Conflict(m)),
            },
            (Err(e), _) => Err(e),
        }
    }

    /// A removal: when a repeat of it finds the object gone, the first
    /// attempt removed it.
    fn remove(&self, req: &Request) -> Result<()> {
        match self.call_again(req, &[], 0) {
            (Ok((Response::Ok, _)), _) | (Err(Error::NotFound(_)), true) => Ok(()),
            (Ok((r, _)), _) => Err(self.unexpected(r)),
            (Err(e), _) => Err(e),
        }
    }
}

/// The server's address, looked up again at each connection attempt.
fn resolve(url: &RemoteUrl) -> Result<SocketAddr> {
    (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| net_err(url, e))?
        .next()
        .ok_or_else(|| net_err(url, "no address"))
}

/// One connection attempt: the handshake within `timeout`, then `Hello`.
fn dial(
    rt: &tokio::runtime::Runtime,
    ep: &quinn::Endpoint,
    cc: &quinn::ClientConfig,
    url: &RemoteUrl,
    timeout: Duration,
) -> std::result::Result<quinn::Connection, DialError> {
    let retry = |error| DialError { error, retry: true };
    let fatal = |error| DialError {
        error,
        retry: false,
    };
    let addr = resolve(url).map_err(retry)?;
    let conn = rt.block_on(async {
        let connecting = ep
            .connect_with(cc.clone(), addr, "coffer")
            .map_err(|e| fatal(net_err(url, e)))?;
        match tokio::time::timeout(timeout, connecting).await {
            Err(_) => Err(retry(net_err(
                url,
                format!(
                    "no answer within {} (is the server up, and UDP port {} open?)",
                    humantime::format_duration(timeout),
                    url.port
                ),
            ))),
            Ok(Err(e)) => Err(DialError {
                retry: reconnect::connection_lost(&e),
                error: net_err(url, format!("handshake failed: {e}")),
            }),
            Ok(Ok(c)) => Ok(c),
        }
    })?;
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        namespace: url.namespace.clone(),
    };
    let answer = rt.block_on(async {
        let mut recv = open_on(&conn, url, &hello, &[]).await?;
        answer_on(&mut recv, url, 0).await
    });
    let e = match answer {
        Ok((Response::Hello { .. }, _)) => return Ok(conn),
        Ok((r, _)) => {
            return Err(fatal(net_err(
                url,
                format!("unexpected answer to Hello: {r:?}"),
            )))
        }
        Err(f) => f,
    };
    // TLS 1.3 lets a client finish its handshake before the server has
    // judged its certificate: a refusal shows up here.
    let server = server_of(url);
    match (conn.close_reason(), e) {
        // The server went away meanwhile: worth another attempt.
        (Some(reason), _) if reconnect::connection_lost(&reason) => {
            Err(retry(net_err(url, reason)))
        }
        // Admitted, but over a limit of the server's: the reason says
        // which. A reconnect may meet the old connection still counted.
        (Some(reason), _) if reason.to_string().contains("(limit ") => Err(DialError {
            error: Error::Denied(format!("server {server} refused the connection: {reason}")),
            retry: true,
        }),
        (Some(reason), _) => Err(fatal(Error::Denied(format!(
            "server {server} refused the connection ({reason}); is this client's certificate listed in the server's config?"
        )))),
        (None, Fail::Lost(why)) => Err(retry(net_err(url, why))),
        (None, Fail::Final(e)) => Err(fatal(e)),
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        let l = self.link.read().unwrap_or_else(|e| e.into_inner());
        l.conn.close(0u32.into(), b"done");
        drop(l);
        let ep = self.endpoint.clone();
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        });
    }
}

struct RemoteUpload {
    store: Arc<RemoteStore>,
    buf: Vec<u8>,
}

impl Write for RemoteUpload {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() as u64 + b.len() as u64 > MAX_PACK_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "pack larger than allowed",
            ));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PackUpload for RemoteUpload {
    fn commit(self: Box<Self>, id: PackId) -> Result<bool> {
        let req = Request::PutPack {
            id,
            len: self.buf.len() as u64,
        };
        // Repeated after a lost connection, the upload may find the pack
        // its first attempt stored: `created` is then false (first writer
        // wins, with the same bytes, since the name is their hash).
        match self.store.call(&req, &self.buf, 0)? {
            (Response::Stored { created }, _) => Ok(created),
            (r, _) => Err(self.store.unexpected(r)),
        }
    }
}

/// A [`RemoteStore`] shared by the engine's threads.
#[derive(Clone)]
pub struct Remote(pub Arc<RemoteStore>);

impl Store for Remote {
    fn read_config(&self) -> Result<Vec<u8>> {
        self.0
            .bytes(&Request::ReadConfig, MAX_SMALL_FILE_BYTES as u64)
    }
    fn write_config(&self, bytes: &[u8]) -> Result<()> {
        let req = Request::WriteConfig {
            len: bytes.len() as u64,
        };
        self.0.write_once(&req, bytes, || self.read_config())
    }
    fn list_keys(&self) -> Result<Vec<String>> {
        match self.0.call(&Request::ListKeys, &[], 0)? {
            (Response::Names { names }, _) => Ok(names),
            (r, _) => Err(self.0.unexpected(r)),
        }
    }
    fn read_key(&self, name: &str) -> Result<Vec<u8>> {
        self.0.bytes(
            &Request::ReadKey { name: name.into() },
            MAX_SMALL_FILE_BYTES as u64,
        )
    }
    fn write_key(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let req = Request::WriteKey {
            name: name.into(),
            len: bytes.len() as u64,
        };
        self.0.write_once(&req, bytes, || self.read_key(name))
    }
    fn remove_key(&self, name: &str) -> Result<()> {
        self.0.remove(&Request::RemoveKey { name: name.into() })
    }
    fn upload_pack(&self) -> Result<Box<dyn PackUpload>> {
        Ok(Box::new(RemoteUpload {
            store: self.0.clone(),
            buf: Vec::with_capacity(16 << 20),
        }))
    }
    fn pack_size(&self, id: &PackId) -> Result<Option<u64>> {
        match self.0.call(&Request::PackSize { id: *id }, &[], 0)? {
            (Response::Size { size }, _) => Ok(size),
            (r, _) => Err(self.0.unexpected(r)),
        }
    }
    fn read_pack(&self, id: &PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        let started = Instant::now();
        let b = self.0.bytes(
            &Request::ReadPack {
                id: *id,
                offset,
                len: len as u64,
            },
            len as u64,
        )?;
        if b.len() != len {
            return Err(Error::Corrupt(format!(
                "pack {id}: short read from the server"
            )));
        }
        if let Some(p) = &self.0.download {
            // unwrap-free: a poisoned pacer still paces.
            let wait = p.lock().unwrap_or_else(|e| e.into_inner()).after(
                b.len() as u64,
                started,
                Instant::now(),
            );
            std::thread::sleep(wait);
        }
        Ok(b)
    }
    fn for_each_pack(&self, f: &mut dyn FnMut(PackId, u64) -> Result<()>) -> Result<()> {
        let mut resume = Resume::default();
        self.0.call_list(&Request::ListPacks, &mut |l| match l {
            Listed::Again => resume.again(),
            Listed::Batch(Response::Packs { packs }) => packs
                .into_iter()
                .filter(|(id, _)| resume.fresh(*id))
                .try_for_each(|(id, size)| f(id, size)),
            Listed::Batch(r) => Err(self.0.unexpected(r)),
        })
    }
    fn write_snapshot(&self, bytes: &[u8], group: Option<SnapshotGroup>) -> Result<SnapshotId> {
        let req = Request::WriteSnapshot {
            len: bytes.len() as u64,
            group,
        };
        match self.0.call_again(&req, bytes, 0) {
            (Ok((Response::Committed { id }, _)), _) => Ok(id),
            (Ok((r, _)), _) => Err(self.0.unexpected(r)),
            // A snapshot's id is the hash of its bytes, which hold a random
            // nonce: the one that exists is this one, committed by the
            // attempt whose answer the lost connection took.
            (Err(Error::Conflict(m)), true) => {
                let id = SnapshotId::of(bytes);
                match self.read_snapshot(&id) {
                    Ok(b) if b == bytes => Ok(id),
                    _ => Err(Error::Conflict(m)),
                }
            }
            (Err(e), _) => Err(e),
        }
    }
    fn list_snapshots(&self) -> Result<Vec<SnapshotId>> {
        let mut out = Vec::new();
        let mut resume = Resume::default();
        self.0
            .call_list(&Request::ListSnapshots, &mut |l| match l {
                Listed::Again => resume.again(),
                Listed::Batch(Response::Snapshots { ids }) => {
                    out.extend(ids.into_iter().filter(|id| resume.fresh(*id)));
                    Ok(())
                }
                Listed::Batch(r) => Err(self.0.unexpected(r)),
            })?;
        Ok(out)
    }
    fn stamp(&self, id: &SnapshotId) -> Result<Stamp> {
        match self.0.call(&Request::Stamp { id: *id }, &[], 0)? {
            (Response::Stamped { stamp }, _) => Ok(stamp),
            (r, _) => Err(self.0.unexpected(r)),
        }
    }
    fn repair(&self, id: &PackId) -> Result<bool> {
        match self.0.call(&Request::Repair { id: *id }, &[], 0)? {
            (Response::Repaired { ok }, _) => Ok(ok),
            (r, _) => Err(self.0.unexpected(r)),
        }
    }
    fn forget(&self, id: &SnapshotId) -> Result<()> {
        self.0.remove(&Request::Forget { id: *id })
    }
    fn lock(&self, id: &SnapshotId, until: i64, hold: bool) -> Result<Stamp> {
        match self.0.call(
            &Request::Lock {
                id: *id,
                until,
                hold,
            },
            &[],
            0,
        )? {
            (Response::Stamped { stamp }, _) => Ok(stamp),
            (r, _) => Err(self.0.unexpected(r)),
        }
    }
    fn read_snapshot(&self, id: &SnapshotId) -> Result<Vec<u8>> {
        self.0.bytes(
            &Request::ReadSnapshot { id: *id },
            super::server::MAX_WIRE_SNAPSHOT_BYTES,
        )
    }
}
