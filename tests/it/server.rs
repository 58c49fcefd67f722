//! The repository server: the real `coffer serve` on 127.0.0.1 over QUIC
//! with generated identities. Round trips, and every refusal the
//! append-only, namespaced, pinned design promises.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer::id::PackId;
use coffer::net::client::{Remote, RemoteStore, RemoteUrl};
use coffer::net::{Fingerprint, Identity};
use coffer::store::Store;

use crate::util::*;
use crate::weed::Weed;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub port: u16,
    pub fingerprint: String,
    pub clients: Vec<(PathBuf, String, String)>,
    /// The metrics endpoint's port, when the config has `[metrics]`.
    pub metrics_port: Option<u16>,
    stderr: PathBuf,
    env: Vec<(String, String)>,
    /// Arguments of `coffer serve` after its config, from the next start.
    pub args: Vec<String>,
}

pub(crate) fn identity(path: &Path) -> String {
    let out = clean_command()
        .args(["identity", "new", "--out", path.to_str().unwrap()])
        .output()
        .unwrap();
    let out = Run { out }.ok().out;
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl TestServer {
    /// A server with `n` clients, client i in namespace `ns-i`.
    pub fn start(n: usize) -> TestServer {
        Self::start_with(n, "")
    }

    /// Like `start`; `extra` is a line `[[client]] key = value` added to
    /// every client entry.
    pub fn start_with(n: usize, extra: &str) -> TestServer {
        Self::start_full(n, extra, "", &[])
    }

    /// Like `start_with`; `top` goes before the client tables (top-level
    /// keys, `[metrics]`, `[alerts]`), `env` is set for the server.
    pub fn start_full(n: usize, extra: &str, top: &str, env: &[(&str, &str)]) -> TestServer {
        let extra = extra.trim_start_matches("[[client]]").trim();
        let dir = tempfile::tempdir().unwrap();
        let fingerprint = identity(&dir.path().join("server.id"));
        let mut cfg = format!(
            "listen = \"127.0.0.1:0\"\ndata = \"{}\"\nidentity = \"{}\"\n{top}\n",
            dir.path().join("data").display(),
            dir.path().join("server.id").display()
        );
        let mut clients = Vec::new();
        for i in 0..n {
            let p = dir.path().join(format!("client{i}.id"));
            let fp = identity(&p);
            cfg.push_str(&format!(
                "[[client]]\nfingerprint = \"{fp}\"\nnamespace = \"ns-{i}\"\n{extra}\n"
            ));
            clients.push((p, fp, format!("ns-{i}")));
        }
        fs::write(dir.path().join("server.toml"), cfg).unwrap();
        let stderr = dir.path().join("server.log");
        fs::File::create(&stderr).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, port, metrics_port) = spawn(dir.path(), &stderr, &env, &[]);
        TestServer {
            dir,
            child,
            port,
            fingerprint,
            clients,
            metrics_port,
            stderr,
            env,
            args: Vec::new(),
        }
    }

    /// Stops the server and starts it again on the same config and data
    /// (new ports); its log goes on in the same file.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops the server (until [`TestServer::start_again`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sets `key=value` in the server's environment from its next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts a stopped server again, like [`TestServer::restart`].
    pub fn start_again(&mut self) {
        let (child, port, metrics_port) =
            spawn(self.dir.path(), &self.stderr, &self.env, &self.args);
        self.child = child;
        self.port = port;
        self.metrics_port = metrics_port;
    }

    pub fn url(&self, ns: &str) -> String {
        format!("quic://127.0.0.1:{}/{ns}", self.port)
    }

    /// A command for client `i`, with its identity, the pin and its namespace.
    pub fn client(&self, i: usize, cache: &Path) -> Command {
        let (id, _, ns) = &self.clients[i];
        self.client_as(id, ns, cache)
    }

    /// A command for the identity file `id` in namespace `ns`, with the pin.
    pub fn client_as(&self, id: &Path, ns: &str, cache: &Path) -> Command {
        let mut c = clean_command();
        c.env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_CACHE_DIR", cache)
            .env("COFFER_IDENTITY", id)
            .env("COFFER_SERVER_FINGERPRINT", &self.fingerprint)
            .env("COFFER_REPO", self.url(ns));
        c
    }

    /// The operator's `coffer ARGS --allow-root --config SERVER_CONFIG`.
    pub fn operator(&self, args: &[&str]) -> std::process::Output {
        clean_command()
            .args(args)
            .args(["--allow-root", "--config"])
            .arg(self.dir.path().join("server.toml"))
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn namespace_dir(&self, ns: &str) -> PathBuf {
        self.dir.path().join("data/namespaces").join(ns)
    }

    /// A library-level connection as client `i` (for requests the CLI never makes).
    pub fn store(&self, i: usize, ns: &str) -> coffer::Result<Remote> {
        let id = Identity::load(&self.clients[i].0)?;
        let url = RemoteUrl::parse(&self.url(ns))?;
        let fp = Fingerprint::parse(&self.fingerprint)?;
        Ok(Remote(Arc::new(RemoteStore::connect(&url, id, fp)?)))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `coffer serve` on `dir/server.toml`, appending to `stderr`, and
/// reads the ports it prints: QUIC, then metrics when configured.
fn spawn(
    dir: &Path,
    stderr: &Path,
    env: &[(String, String)],
    args: &[String],
) -> (Child, u16, Option<u16>) {
    let log = fs::OpenOptions::new().append(true).open(stderr).unwrap();
    let mut child = clean_command()
        .args(["serve", "--allow-root", "--config"])
        .arg(dir.join("server.toml"))
        .args(args)
        .envs(env.iter().map(|(k, v)| match v.as_str() {
            "@stderr" => (k.clone(), crate::monitor::journal_stream(stderr)),
            _ => (k.clone(), v.clone()),
        }))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut port_of = |what: &str| -> u16 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains(what), "{line:?}");
        line.trim()
            .trim_end_matches("/metrics")
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .expect(&line)
    };
    let port = port_of("listening on");
    let cfg = fs::read_to_string(dir.join("server.toml")).unwrap();
    let metrics = cfg.contains("[metrics]").then(|| port_of("metrics on"));
    (child, port, metrics)
}

/// Writes `config` to `path` and runs `coffer serve` on it, which must
/// refuse to start; returns its standard error.
pub(crate) fn serve_refuses(path: &Path, config: &str) -> String {
    fs::write(path, config).unwrap();
    let out = clean_command()
        .args(["serve", "--allow-root", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `test` on a server of `n` clients whose namespaces live in a new
/// locked bucket of a SeaweedFS of its own (skipped where weed is missing,
/// outside CI), then checks that the bucket holds every object each
/// namespace holds on the server's disk, and nothing more.
fn on_a_bucket(n: usize, test: fn(&TestServer)) {
    let Some(weed) = Weed::start() else { return };
    let (srv, b) = crate::bucket::server_on(&weed, "coffer", n, "lock_days = 1");
    test(&srv);
    for i in 0..n {
        crate::bucket::assert_mirrored(&srv, &b, &format!("ns-{i}"));
    }
}

pub(crate) fn run(mut c: Command, args: &[&str]) -> Run {
    Run {
        out: c.args(args).stdin(Stdio::null()).output().unwrap(),
    }
}

pub(crate) fn init_args() -> Vec<&'static str> {
    vec![
        "init",
        "--kdf-memory-kib",
        "19456",
        "--kdf-iterations",
        "2",
        "--pack-size",
        "1048576",
    ]
}

#[test]
fn round_trip_through_the_server() {
    round_trip(&TestServer::start(1));
}

#[test]
fn round_trip_through_the_server_on_a_bucket() {
    on_a_bucket(1, round_trip);
}

fn round_trip(srv: &TestServer) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // Before init, the namespace is named as holding no repository.
    let r = run(srv.client(0, &cache), &["snapshots"]).fails();
    assert!(
        r.stderr().contains("no repository at quic://") && r.stderr().contains("coffer init"),
        "{}",
        r.stderr()
    );
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.path().join("src");
    crate::backup::make_tree(&src);
    let first = run(
        srv.client(0, &cache),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json();
    let second = run(
        srv.client(0, &cache),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json();
    assert!(second["new_bytes"].as_u64().unwrap() < 4096, "{second}");
    let data = text_bytes(3, 3 << 20);
    let mut c = srv.client(0, &cache);
    let mut child = c
        .args(["backup", "--stdin", "--stdin-name", "db.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &data).unwrap();
    assert!(child.wait().unwrap().success());
    let target = work.path().join("out");
    run(
        srv.client(0, &cache),
        &[
            "restore",
            first["id"].as_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
    )
    .ok();
    assert_same_tree(&src, &restored(&target, &src));
    assert!(
        run(srv.client(0, &cache), &["dump", "latest", "db.sql"])
            .ok()
            .out
            .stdout
            == data
    );
    run(srv.client(0, &cache), &["check", "--read-data"]).ok();
    // a new machine (no cache) restores through the server too
    let fresh = work.path().join("fresh-cache");
    let t2 = work.path().join("out2");
    run(
        srv.client(0, &fresh),
        &[
            "restore",
            first["id"].as_str().unwrap(),
            "--target",
            t2.to_str().unwrap(),
        ],
    )
    .ok();
    assert_same_tree(&src, &restored(&t2, &src));
    // the server holds the same layout as a local repository, and no plaintext
    let ns = srv.namespace_dir("ns-0");
    assert!(ns.join("config").is_file());
    let snaps = walk(&ns.join("snapshots"));
    assert_eq!(snaps.iter().filter(|p| p.extension().is_none()).count(), 3);
    for f in walk(&ns) {
        let b = fs::read(&f).unwrap();
        assert!(
            !b.windows(12).any(|w| w == b"hello coffer"),
            "plaintext in {}",
            f.display()
        );
    }
}

#[test]
fn handshake_refusals() {
    let srv = TestServer::start(1);
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    // an unknown client certificate
    let stranger = work.path().join("stranger.id");
    identity(&stranger);
    let mut c = srv.client(0, &cache);
    c.env("COFFER_IDENTITY", &stranger);
    let r = run(c, &["snapshots"]).fails();
    assert!(
        r.stderr().contains("refused the connection"),
        "{}",
        r.stderr()
    );
    // a wrong server pin
    let mut c = srv.client(0, &cache);
    c.env("COFFER_SERVER_FINGERPRINT", "ab".repeat(32));
    let r = run(c, &["snapshots"]).fails();
    assert!(r.stderr().contains("handshake failed"), "{}", r.stderr());
    // no client certificate at all: a raw TLS client without one
    assert!(connect_without_certificate(srv.port, &srv.fingerprint).is_err());
    // the server logged the refused certificate and still serves
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        srv.log().contains("unknown client certificate"),
        "{}",
        srv.log()
    );
    run(srv.client(0, &cache), &init_args()).ok();
}

/// A raw test client's server check: the pin, then any signature (the
/// tests probe the server, not the client's TLS).
#[derive(Debug)]
pub(crate) struct TestVerifier(pub(crate) Fingerprint);

impl rustls::client::danger::ServerCertVerifier for TestVerifier {
    fn verify_server_cert(
        &self,
        c: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        assert_eq!(Fingerprint::of(c), self.0);
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 QUIC client config for the raw tests: the server pinned by
/// `pin`, `id` presented as the client certificate when given.
pub(crate) fn raw_config(pin: Fingerprint, id: Option<Identity>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TestVerifier(pin)));
    let mut tls = match id {
        Some(id) => tls.with_client_auth_cert(vec![id.cert], id.key).unwrap(),
        None => tls.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![coffer::proto::ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(qc))
}

/// Connects to the server on 127.0.0.1:`port` and sends a Hello for ns-0 on
/// a first stream; returns the endpoint (kept alive), the connection and the
/// Hello's answer stream.
pub(crate) async fn raw_hello(
    port: u16,
    cfg: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection, quinn::RecvStream), String> {
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(cfg, ([127, 0, 0, 1], port).into(), "coffer")
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let (mut s, r) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = coffer::proto::Request::Hello {
        version: 1,
        namespace: "ns-0".into(),
    };
    s.write_all(&hello.encode())
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.finish();
    Ok((ep, conn, r))
}

pub(crate) fn connect_without_certificate(port: u16, pin: &str) -> Result<(), String> {
    let pin = Fingerprint::parse(pin).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Some stacks finish the handshake before the server's verdict
        // arrives: any request must then fail.
        let (_ep, _conn, mut r) = raw_hello(port, raw_config(pin, None)).await?;
        let mut head = [0u8; 6];
        r.read_exact(&mut head).await.map_err(|e| e.to_string())?;
        Ok(())
    })
}

#[test]
fn namespaces_are_invisible_to_other_clients() {
    namespaces_are_invisible(&TestServer::start(2));
}

#[test]
fn namespaces_are_invisible_to_other_clients_on_a_bucket() {
    on_a_bucket(2, namespaces_are_invisible);
}

fn namespaces_are_invisible(srv: &TestServer) {
    let work = tempfile::tempdir().unwrap();
    run(srv.client(0, &work.path().join("c0")), &init_args()).ok();
    run(srv.client(1, &work.path().join("c1")), &init_args()).ok();
    // client 0 naming client 1's namespace, and one that does not exist: same answer
    for ns in ["ns-1", "nobody"] {
        let mut c = srv.client(0, &work.path().join("c0"));
        c.env("COFFER_REPO", srv.url(ns));
        let r = run(c, &["snapshots"]).fails();
        assert!(
            r.stderr().contains("is not available to this client"),
            "{}",
            r.stderr()
        );
    }
    let e = srv.store(0, "ns-1").err().unwrap().to_string();
    assert!(e.contains("not available"), "{e}");
    assert!(srv.log().contains("refused Hello"), "{}", srv.log());
}

#[test]
fn append_only_refusals() {
    refuses_what_append_only_forbids(&TestServer::start(1));
}

#[test]
fn append_only_refusals_on_a_bucket() {
    on_a_bucket(1, refuses_what_append_only_forbids);
}

fn refuses_what_append_only_forbids(srv: &TestServer) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(1, 500_000)).unwrap();
    run(srv.client(0, &cache), &["backup", src.to_str().unwrap()]).ok();
    let store = srv.store(0, "ns-0").unwrap();
    let mut packs = Vec::new();
    store
        .for_each_pack(&mut |id, size| {
            packs.push((id, size));
            Ok(())
        })
        .unwrap();
    let (id, size) = packs[0];
    let original = store.read_pack(&id, 0, size as usize).unwrap();
    // other bytes under an existing name: refused, the stored pack unchanged
    let mut up = store.upload_pack().unwrap();
    std::io::Write::write_all(&mut up, b"other bytes").unwrap();
    let e = up.commit(id).unwrap_err().to_string();
    assert!(e.contains("hashes to"), "{e}");
    // the same bytes again: kept, not replaced
    let mut up = store.upload_pack().unwrap();
    std::io::Write::write_all(&mut up, &original).unwrap();
    assert!(!up.commit(id).unwrap());
    assert!(store.read_pack(&id, 0, size as usize).unwrap() == original);
    // no delete: removing a key file is refused (there is no other delete request)
    let keys = store.list_keys().unwrap();
    let e = store.remove_key(&keys[0]).unwrap_err().to_string();
    assert!(e.contains("append-only"), "{e}");
    assert_eq!(store.list_keys().unwrap(), keys);
    // a config cannot be replaced, a key file name cannot be reused
    assert!(store.write_config(b"{}").is_err());
    assert!(store.write_key(&keys[0], b"{}").is_err());
    // a snapshot referencing a missing pack is refused
    let keys_ = coffer::crypto::Keys::derive(&coffer::crypto::MasterKey::from_bytes([1; 32]));
    let rec = coffer::format::snapshot::SnapshotRecord {
        version: 1,
        time_ns: 0,
        host: "h".into(),
        user: "u".into(),
        source: coffer::format::snapshot::SourceKind::Tree,
        paths: vec![],
        tags: vec![],
        tree: coffer::id::BlobId([0; 32]),
        stats: Default::default(),
        image: None,
    };
    let (_, bytes) = coffer::format::snapshot::encode(
        &keys_,
        vec![PackId([9; 32])],
        &rec,
        &mut rand::rngs::OsRng,
    );
    let e = store.write_snapshot(&bytes, None).unwrap_err().to_string();
    assert!(e.contains("does not hold"), "{e}");
    // garbage as a snapshot is refused too
    assert!(store.write_snapshot(b"not a snapshot", None).is_err());
    run(srv.client(0, &cache), &["check", "--read-data"]).ok();
    assert!(srv.log().contains("refused"), "{}", srv.log());
}

/// Sizes, not contents, are what a listing reports: sparse files will do.
fn fake_packs(packs: &Path, n: u64) -> Vec<(PackId, u64)> {
    let mut v: Vec<(PackId, u64)> = (0..n)
        .map(|i| (PackId::of(&i.to_le_bytes()), i % 997))
        .collect();
    for (id, size) in &v {
        let hex = id.to_hex();
        let shard = packs.join(&hex[..2]);
        fs::create_dir_all(&shard).unwrap();
        fs::File::create(shard.join(&hex))
            .unwrap()
            .set_len(*size)
            .unwrap();
    }
    v.sort();
    v
}

#[test]
fn listing_many_packs_streams_in_order_and_fails_whole() {
    let srv = TestServer::start(1);
    let packs = srv.namespace_dir("ns-0").join("packs");
    let want = fake_packs(&packs, 20_000);
    let store = srv.store(0, "ns-0").unwrap();
    let list = |got: &mut Vec<(PackId, u64)>| {
        store.for_each_pack(&mut |id, size| {
            got.push((id, size));
            Ok(())
        })
    };
    let mut got = Vec::new();
    list(&mut got).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "listing differs from the packs on disk");

    // A client that stops early stops the stream; the connection goes on.
    let mut n = 0;
    let e = store
        .for_each_pack(&mut |_, _| {
            n += 1;
            match n {
                10 => Err(coffer::Error::Denied("enough".into())),
                _ => Ok(()),
            }
        })
        .unwrap_err();
    assert!(e.to_string().contains("enough"), "{e}");
    assert_eq!(store.pack_size(&want[0].0).unwrap(), Some(want[0].1));

    // A shard that cannot be read, three quarters in: the batches before it
    // arrive, then the error, never a short listing that looks whole.
    let broken = packs.join("c0");
    if is_root() {
        fs::rename(&broken, packs.join("c0.away")).unwrap();
        std::os::unix::fs::symlink("c0", &broken).unwrap();
    } else {
        fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    }
    let before = want
        .iter()
        .filter(|(id, _)| id.to_hex().as_str() < "c0")
        .count();
    let mut got = Vec::new();
    let e = list(&mut got).unwrap_err().to_string();
    assert!(e.contains("storage error"), "{e}");
    // whole batches only: the one being filled when the walk failed is not sent
    let batch = coffer::proto::LIST_BATCH;
    assert!(before > batch);
    assert_eq!(got.len(), before / batch * batch);
    assert!(got[..] == want[..got.len()]);
    if !is_root() {
        fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // the connection still serves
    assert_eq!(store.list_snapshots().unwrap(), vec![]);
}

#[test]
fn malformed_input_closes_only_that_connection() {
    malformed_input_closes_only_its_connection(&TestServer::start(1));
}

#[test]
fn malformed_input_closes_only_that_connection_on_a_bucket() {
    on_a_bucket(1, malformed_input_closes_only_its_connection);
}

fn malformed_input_closes_only_its_connection(srv: &TestServer) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    // garbage datagrams on the port
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u64 {
        let junk = random_bytes(i, 1 + (i as usize * 37) % 1400);
        sock.send_to(&junk, ("127.0.0.1", srv.port)).unwrap();
    }
    // an oversized frame and an unknown tag on authenticated connections
    for frame in [
        {
            let mut f = ((coffer::proto::MAX_FRAME_BYTES + 10) as u32)
                .to_le_bytes()
                .to_vec();
            f.extend_from_slice(&[1, 0]);
            f
        },
        vec![2, 0, 0, 0, 0x77, 0x77],
    ] {
        let err = raw_request(srv, &frame);
        assert!(err.is_err(), "server answered a malformed frame");
    }
    // the server keeps serving
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"still fine").unwrap();
    run(srv.client(0, &cache), &["backup", src.to_str().unwrap()]).ok();
    assert!(srv.log().contains("protocol violation"), "{}", srv.log());
}

/// Sends raw bytes as a request after a proper Hello, as client 0.
pub(crate) fn raw_request(srv: &TestServer, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let id = Identity::load(&srv.clients[0].0).unwrap();
    let pin = Fingerprint::parse(&srv.fingerprint).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_ep, conn, mut r) = raw_hello(srv.port, raw_config(pin, Some(id))).await?;
        r.read_to_end(1 << 16).await.map_err(|e| e.to_string())?;
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        s.write_all(bytes).await.map_err(|e| e.to_string())?;
        let _ = s.finish();
        let got = r.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
        if got.is_empty() {
            return Err("no answer".into());
        }
        Ok(got)
    })
}

#[test]
fn killed_mid_upload_leaves_nothing_partial() {
    client_killed_mid_upload(&TestServer::start(1));
}

#[test]
fn killed_mid_upload_leaves_nothing_partial_on_a_bucket() {
    on_a_bucket(1, client_killed_mid_upload);
}

fn client_killed_mid_upload(srv: &TestServer) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    run(srv.client(0, &cache), &init_args()).ok();
    let src = work.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("f{i}")), random_bytes(i, 3 << 20)).unwrap();
    }
    for delay in [150u64, 400] {
        let mut child = srv
            .client(0, &cache)
            .args(["backup", src.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
    }
    std::thread::sleep(Duration::from_millis(300));
    // every visible pack is whole: its name is the hash of its bytes
    let ns = srv.namespace_dir("ns-0");
    for p in walk(&ns.join("packs")) {
        let b = fs::read(&p).unwrap();
        assert_eq!(
            PackId::of(&b).to_hex(),
            p.file_name().unwrap().to_str().unwrap()
        );
    }
    let last = run(
        srv.client(0, &cache),
        &["--json", "backup", src.to_str().unwrap()],
    )
    .ok()
    .json();
    // Nothing is stored twice: what the killed runs made durable is reused
    // (how much that is depends on how far they got, which a loaded machine
    // moves), and the rest is stored once, with its few trees.
    assert!(last["new_bytes"].as_u64().unwrap() <= (24 << 20) + (1 << 20));
    run(srv.client(0, &cache), &["check", "--read-data"]).ok();
    // (an abandoned upload's temporary file under tmp/ is never listed, and
    // goes when the server drops the dead connection at its idle timeout)
}

#[test]
fn thirty_two_concurrent_backups() {
    concurrent_backups(&TestServer::start(32));
}

#[test]
fn thirty_two_concurrent_backups_on_a_bucket() {
    on_a_bucket(32, concurrent_backups);
}

/// Every client of `srv` inits and backs up at once, then restores.
fn concurrent_backups(srv: &TestServer) {
    let n = srv.clients.len();
    let work = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for i in 0..n {
        let src = work.path().join(format!("src{i}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("own"), random_bytes(1000 + i as u64, 300_000)).unwrap();
        fs::write(src.join("common"), text_bytes(7, 200_000)).unwrap();
        let cache = work.path().join(format!("cache{i}"));
        let mut c = srv.client(i, &cache);
        // init then backup, all clients at once
        let script = format!(
            "{bin} init --kdf-memory-kib 19456 --kdf-iterations 2 && {bin} backup {src}",
            bin = bin(),
            src = src.display()
        );
        c.args(["--version"]); // keeps the env; the script runs the real commands
        let mut sh = Command::new("sh");
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        children.push(
            sh.args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for (i, ch) in children.into_iter().enumerate() {
        let out = ch.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "client {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..n {
        let src = work.path().join(format!("src{i}"));
        let out = work.path().join(format!("out{i}"));
        run(
            srv.client(i, &work.path().join(format!("cache{i}"))),
            &["restore", "latest", "--target", out.to_str().unwrap()],
        )
        .ok();
        assert!(
            fs::read(restored(&out, &src).join("own")).unwrap()
                == random_bytes(1000 + i as u64, 300_000)
        );
    }
}

#[test]
fn server_refuses_root_and_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    assert!(serve_refuses(
        &cfg,
        "data = \"/tmp/x\"\nidentity = \"/tmp/none\"\nlisten = \"127.0.0.1:0\"\nbogus_key = 1\n"
    )
    .contains("bogus_key"));
    if is_root() {
        let out = clean_command()
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run as root"));
    }
    // identity files are private and never overwritten
    let id = dir.path().join("id");
    let fp = identity(&id);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&id).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = clean_command()
        .args(["identity", "new", "--out", id.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let shown = clean_command()
        .args(["--json", "identity", "show", id.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(v["fingerprint"], fp.as_str());
}
