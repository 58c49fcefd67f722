//! The remote store: implements [`Store`] by speaking the protocol to a
//! `coffer serve`, so the engine runs unchanged against a server. Owns a small
//! tokio runtime and one QUIC connection; every call is one bi-directional
//! stream.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use quinn::RecvStream;

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
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    url: RemoteUrl,
    /// `--limit-download`: pack bytes read are paced to this rate.
    download: Option<std::sync::Mutex<crate::pace::RatePacer>>,
}

fn net_err(url: &RemoteUrl, e: impl std::fmt::Display) -> Error {
    Error::RawIo(std::io::Error::other(format!(
        "server quic://{}:{}: {e}",
        url.host, url.port
    )))
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

async fn read_frame(recv: &mut RecvStream) -> std::result::Result<Response, String> {
    let mut head = [0u8; HEAD_LEN];
    recv.read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let (tag, len) = proto::decode_head(&head).map_err(|e| e.to_string())?;
    let mut p = vec![0u8; len];
    recv.read_exact(&mut p).await.map_err(|e| e.to_string())?;
    Response::decode(tag, &p).map_err(|e| e.to_string())
}

/// How long a connection attempt waits for the server by default.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl RemoteStore {
    /// Paces the pack bytes this store reads to `bytes_per_sec` (all
    /// readers together; a reader waits after its read for the bytes to fit
    /// the rate, and idle time earns no burst).
    pub fn with_download_limit(mut self, bytes_per_sec: u64) -> RemoteStore {
        self.download = Some(std::sync::Mutex::new(crate::pace::RatePacer::new(
            bytes_per_sec,
        )));
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
        timeout: std::time::Duration,
    ) -> Result<RemoteStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::RawIo)?;
        let addr: SocketAddr = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| net_err(url, e))?
            .next()
            .ok_or_else(|| net_err(url, "no address"))?;
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
        let (endpoint, conn) = rt.block_on(async {
            let ep = quinn::Endpoint::client(bind).map_err(|e| net_err(url, e))?;
            let connecting = ep
                .connect_with(cc, addr, "coffer")
                .map_err(|e| net_err(url, e))?;
            let conn = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| {
                    net_err(
                        url,
                        format!(
                            "no answer within {} (is the server up, and UDP port {} open?)",
                            humantime::format_duration(timeout),
                            url.port
                        ),
                    )
                })?
                .map_err(|e| net_err(url, format!("handshake failed: {e}")))?;
            Ok::<_, Error>((ep, conn))
        })?;
        let s = RemoteStore {
            rt,
            conn,
            _endpoint: endpoint,
            url: url.clone(),
            download: None,
        };
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            namespace: url.namespace.clone(),
        };
        match s.call(&hello, &[], 0) {
            Ok((Response::Hello { .. }, _)) => Ok(s),
            Ok((r, _)) => Err(net_err(url, format!("unexpected answer to Hello: {r:?}"))),
            // TLS 1.3 lets a client finish its handshake before the server
            // has judged its certificate: a refusal shows up here.
            Err(e) => match s.conn.close_reason() {
                // Admitted, but over a limit of the server's: the reason says which.
                Some(reason) if reason.to_string().contains("(limit ") => {
                    Err(Error::Denied(format!(
                        "server quic://{}:{} refused the connection: {reason}",
                        url.host, url.port
                    )))
                }
                Some(reason) => Err(Error::Denied(format!(
                    "server quic://{}:{} refused the connection ({reason}); is this client's certificate listed in the server's config?",
                    url.host, url.port
                ))),
                None => Err(e),
            },
        }
    }

    /// One request: sends the frame and `body`, returns the answer and the
    /// bytes that follow it (at most `max_body`).
    fn call(&self, req: &Request, body: &[u8], max_body: u64) -> Result<(Response, Vec<u8>)> {
        let mut recv = self.open(req, body)?;
        self.answer(&mut recv, max_body)
    }

    /// A listing: calls `f` with each batch frame as it arrives, until
    /// `End`. Holds one batch at a time, and `f` runs outside the runtime,
    /// so it may make requests of its own meanwhile. An `Error` after some
    /// batches fails the listing: what `f` saw was not all. Dropping the
    /// stream when `f` fails stops the server's walk.
    fn call_list(&self, req: &Request, f: &mut dyn FnMut(Response) -> Result<()>) -> Result<()> {
        let mut recv = self.open(req, &[])?;
        loop {
            match self.answer(&mut recv, 0)? {
                (Response::End, _) => return Ok(()),
                (r, _) => f(r)?,
            }
        }
    }

    fn unexpected(&self, r: Response) -> Error {
        net_err(&self.url, format!("unexpected answer {r:?}"))
    }

    /// Opens a stream and sends the request frame and `body`; returns the
    /// stream to read the answer from.
    fn open(&self, req: &Request, body: &[u8]) -> Result<RecvStream> {
        let url = &self.url;
        self.rt.block_on(async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| net_err(url, e))?;
            send.write_all(&req.encode())
                .await
                .map_err(|e| net_err(url, e))?;
            // A server that refuses a request stops reading its body: the
            // answer it sent says why, so read it before reporting the write.
            let sent = if body.is_empty() {
                Ok(())
            } else {
                send.write_all(body).await.map_err(|e| net_err(url, e))
            };
            let _ = send.finish();
            if let Err(e) = sent {
                return match read_frame(&mut recv).await {
                    Ok(Response::Error { code, message }) => Err(from_code(code, message)),
                    _ => Err(e),
                };
            }
            Ok(recv)
        })
    }

    /// Reads the next frame of an answer, and the bytes after a `Bytes`
    /// frame (at most `max_body`); an `Error` frame is returned as the error.
    fn answer(&self, recv: &mut RecvStream, max_body: u64) -> Result<(Response, Vec<u8>)> {
        let url = &self.url;
        self.rt.block_on(async {
            match read_frame(recv).await.map_err(|e| net_err(url, e))? {
                Response::Error { code, message } => Err(from_code(code, message)),
                Response::Bytes { len } if len > max_body => Err(net_err(
                    url,
                    format!("answer of {len} bytes is larger than expected"),
                )),
                r @ Response::Bytes { len } => {
                    let mut b = vec![0u8; len as usize];
                    recv.read_exact(&mut b).await.map_err(|e| net_err(url, e))?;
                    Ok((r, b))
                }
                r => Ok((r, Vec::new())),
            }
        })
    }

    fn bytes(&self, req: &Request, max: u64) -> Result<Vec<u8>> {
        match self.call(req, &[], max)? {
            (Response::Bytes { .. }, b) => Ok(b),
            (r, _) => Err(self.unexpected(r)),
        }
    }

    fn ok(&self, req: &Request, body: &[u8]) -> Result<()> {
        match self.call(req, body, 0)? {
            (Response::Ok, _) => Ok(()),
            (r, _) => Err(self.unexpected(r)),
        }
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"done");
        let ep = self._endpoint.clone();
        self.rt.block_on(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ep.wait_idle()).await;
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
        self.0.ok(
            &Request::WriteConfig {
                len: bytes.len() as u64,
            },
            bytes,
        )
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
        self.0.ok(
            &Request::WriteKey {
                name: name.into(),
                len: bytes.len() as u64,
            },
            bytes,
        )
    }
    fn remove_key(&self, name: &str) -> Result<()> {
        self.0.ok(&Request::RemoveKey { name: name.into() }, &[])
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
        let started = std::time::Instant::now();
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
                std::time::Instant::now(),
            );
            std::thread::sleep(wait);
        }
        Ok(b)
    }
    fn for_each_pack(&self, f: &mut dyn FnMut(PackId, u64) -> Result<()>) -> Result<()> {
        self.0.call_list(&Request::ListPacks, &mut |r| match r {
            Response::Packs { packs } => packs.into_iter().try_for_each(|(id, size)| f(id, size)),
            r => Err(self.0.unexpected(r)),
        })
    }
    fn write_snapshot(&self, bytes: &[u8], group: Option<SnapshotGroup>) -> Result<SnapshotId> {
        match self.0.call(
            &Request::WriteSnapshot {
                len: bytes.len() as u64,
                group,
            },
            bytes,
            0,
        )? {
            (Response::Committed { id }, _) => Ok(id),
            (r, _) => Err(self.0.unexpected(r)),
        }
    }
    fn list_snapshots(&self) -> Result<Vec<SnapshotId>> {
        let mut out = Vec::new();
        self.0
            .call_list(&Request::ListSnapshots, &mut |r| match r {
                Response::Snapshots { ids } => {
                    out.extend(ids);
                    Ok(())
                }
                r => Err(self.0.unexpected(r)),
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
        self.0.ok(&Request::Forget { id: *id }, &[])
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
