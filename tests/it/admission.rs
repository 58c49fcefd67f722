//! What one client certificate may take from a server: connection slots
//! and memory are limited per certificate, a stalled frame closes its
//! connection, and every refused connection is logged with the peer's
//! address and certificate. See issue 18, items 7 and 10.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::net::{Fingerprint, Identity};

use crate::server::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (bounded) until the server's log holds `what`.
fn wait_for_log(srv: &TestServer, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = srv.log();
        if log.contains(what) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_certificate_cannot_take_every_connection_slot() {
    let srv = TestServer::start_full(2, "", "[limits]\nconnections_per_client = 3", &[]);
    let work = tempfile::tempdir().unwrap();
    let pin = Fingerprint::parse(&srv.fingerprint).unwrap();
    let id0 = || Identity::load(&srv.clients[0].0).unwrap();
    rt().block_on(async {
        let mut held = Vec::new();
        for _ in 0..3 {
            let (ep, conn, mut r) = raw_hello(srv.port, raw_config(pin, Some(id0())))
                .await
                .unwrap();
            r.read_to_end(1 << 16).await.unwrap();
            held.push((ep, conn));
        }
        // The fourth is closed, naming the limit.
        let e = match raw_hello(srv.port, raw_config(pin, Some(id0()))).await {
            Ok((_ep, c, _r)) => c.closed().await.to_string(),
            Err(e) => e,
        };
        assert!(
            e.contains("too many connections") && e.contains("limit 3"),
            "{e}"
        );
        // Another certificate still gets in while those are held, and the
        // same one is told which limit it hit.
        run(srv.client(1, &work.path().join("c1")), &init_args()).ok();
        let r = run(srv.client(0, &work.path().join("c0")), &init_args()).fails();
        assert!(r.stderr().contains("(limit 3)"), "{}", r.stderr());
        for (ep, conn) in held {
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
        }
    });
    let fp0 = &srv.clients[0].1;
    let log = wait_for_log(&srv, "too many connections");
    assert!(
        log.lines().any(|l| l.contains("too many connections")
            && l.contains(fp0.as_str())
            && l.contains("127.0.0.1")),
        "{log}"
    );
    // Once its connections are gone, the certificate is served again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = run(srv.client(0, &work.path().join("c0")), &init_args());
        if r.code() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn stalled_frames_are_refused_past_the_budget_and_close_their_connection() {
    let top = "[limits]\nclient_memory_mib = 4\nmemory_mib = 8\nstall_timeout = \"2s\"";
    let srv = TestServer::start_full(1, "", top, &[]);
    let work = tempfile::tempdir().unwrap();
    let pin = Fingerprint::parse(&srv.fingerprint).unwrap();
    let id0 = Identity::load(&srv.clients[0].0).unwrap();
    let started = Instant::now();
    let (refused, closed_after) = rt().block_on(async {
        let (_ep, conn, mut r) = raw_hello(srv.port, raw_config(pin, Some(id0)))
            .await
            .unwrap();
        r.read_to_end(1 << 16).await.unwrap();
        // Frames that announce almost 1 MiB each, send a few bytes and stall.
        let len = (coffer::proto::MAX_FRAME_BYTES - 16) as u32;
        let mut head = len.to_le_bytes().to_vec();
        head.extend_from_slice(&[0x05, 0x00]);
        head.extend_from_slice(&[0u8; 10]);
        let mut streams = Vec::new();
        for _ in 0..6 {
            let (mut s, r) = conn.open_bi().await.unwrap();
            s.write_all(&head).await.unwrap();
            streams.push((s, r));
        }
        // Two of them are past the certificate's 4 MiB: answered at once,
        // before the stall limit; the other four get no answer.
        // The send sides stay open: a dropped one would finish its stream.
        let mut answers = Vec::new();
        let mut sends = Vec::new();
        for (s, mut r) in streams {
            sends.push(s);
            answers.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(1500), r.read_to_end(1 << 16))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
            }));
        }
        let mut refused = Vec::new();
        for a in answers {
            if let Some(got) = a.await.unwrap() {
                refused.push(String::from_utf8_lossy(&got).into_owned());
            }
        }
        // The stalled ones close the connection after the stall limit.
        let why = tokio::time::timeout(Duration::from_secs(15), conn.closed())
            .await
            .expect("closed within a bounded time");
        (refused, (started.elapsed(), why.to_string()))
    });
    assert_eq!(refused.len(), 2, "{refused:?}");
    for r in &refused {
        assert!(r.contains("budget of 4 MiB"), "{r}");
    }
    assert!(closed_after.0 >= Duration::from_secs(2), "{closed_after:?}");
    assert!(closed_after.1.contains("stalled"), "{closed_after:?}");
    let log = wait_for_log(&srv, "stalled mid-frame");
    assert!(log.contains("stalled mid-frame"), "{log}");
    // Its memory came back: the same client is served.
    run(srv.client(0, &work.path().join("c0")), &init_args()).ok();
}

/// A raw client config with the server pinned, `alpn` offered and the
/// client's certificate chosen by `auth`.
fn client_config(
    pin: Fingerprint,
    alpn: &[u8],
    auth: impl FnOnce(
        rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    ) -> rustls::ClientConfig,
) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = auth(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TestVerifier(pin))),
    );
    tls.alpn_protocols = vec![alpn.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(qc))
}

/// Presents `cert` with a private key that is not its own, as a thief of
/// the certificate file alone would.
fn stolen_certificate(pin: Fingerprint, cert: Identity) -> quinn::ClientConfig {
    client_config(pin, coffer::proto::ALPN, |b| {
        let provider = rustls::crypto::ring::default_provider();
        let (other, _) = Identity::generate().unwrap();
        let key = provider.key_provider.load_private_key(other.key).unwrap();
        let ck = rustls::sign::CertifiedKey::new(vec![cert.cert], key);
        b.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)))
    })
}

#[test]
fn every_refused_handshake_is_logged_with_peer_and_certificate() {
    let srv = TestServer::start(1);
    let work = tempfile::tempdir().unwrap();
    let pin = Fingerprint::parse(&srv.fingerprint).unwrap();
    // No client certificate.
    assert!(connect_without_certificate(srv.port, &srv.fingerprint).is_err());
    // A known certificate without its key.
    let fp0 = srv.clients[0].1.clone();
    let stolen = stolen_certificate(pin, Identity::load(&srv.clients[0].0).unwrap());
    // A wrong ALPN.
    let id = Identity::load(&srv.clients[0].0).unwrap();
    let wrong = client_config(pin, b"not-coffer", |b| {
        b.with_client_auth_cert(vec![id.cert], id.key).unwrap()
    });
    rt().block_on(async {
        for cfg in [stolen, wrong] {
            let ok = match raw_hello(srv.port, cfg).await {
                Ok((_ep, _c, mut r)) => r.read_to_end(1 << 16).await.is_ok(),
                Err(_) => false,
            };
            assert!(!ok, "a refused handshake served a request");
        }
    });
    // An unknown certificate, through the CLI.
    let stranger = work.path().join("stranger.id");
    let fp_stranger = identity(&stranger);
    let mut c = srv.client(0, &work.path().join("cache"));
    c.env("COFFER_IDENTITY", &stranger);
    run(c, &["snapshots"]).fails();

    let log = wait_for_log(&srv, &fp_stranger);
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused connection") && l.contains("peer=127.0.0.1"))
        .collect();
    let has = |what: &str, fp: Option<&str>| {
        refusals
            .iter()
            .any(|l| l.contains(what) && fp.is_none_or(|f| l.contains(f)))
    };
    assert!(has("no certificates", None), "{log}");
    assert!(has("without its private key", Some(&fp0)), "{log}");
    assert!(has("support any known protocol", None), "{log}");
    assert!(
        has("unknown client certificate", Some(&fp_stranger)),
        "{log}"
    );

    // A flood of refusals is rate-limited: at most 30 lines a minute.
    for _ in 0..40 {
        let _ = connect_without_certificate(srv.port, &srv.fingerprint);
    }
    std::thread::sleep(Duration::from_millis(300));
    let n = srv
        .log()
        .lines()
        .filter(|l| l.contains("refused connection"))
        .count();
    assert_eq!(n, 30, "refusal lines logged for 44 refusals");
    // And the server still serves.
    run(srv.client(0, &work.path().join("cache")), &init_args()).ok();
}

/// Files under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => files_under(&e.path()),
                    Ok(_) => 1,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn concurrent_uploads_cannot_pass_the_quota_together() {
    const LEN: usize = 100_000;
    const UPLOADS: usize = 8;
    // Room for three packs of LEN, not four.
    let srv = TestServer::start_with(1, "quota_bytes = 350000");
    let work = tempfile::tempdir().unwrap();
    run(srv.client(0, &work.path().join("c0")), &init_args()).ok();
    let pin = Fingerprint::parse(&srv.fingerprint).unwrap();
    let answers = rt().block_on(async {
        // Two connections, four streams each: every upload is announced
        // before any body byte is sent.
        let mut conns = Vec::new();
        for _ in 0..2 {
            let id = Identity::load(&srv.clients[0].0).unwrap();
            let (ep, conn, mut r) = raw_hello(srv.port, raw_config(pin, Some(id)))
                .await
                .unwrap();
            r.read_to_end(1 << 16).await.unwrap();
            conns.push((ep, conn));
        }
        let mut streams = Vec::new();
        for i in 0..UPLOADS {
            let body = vec![i as u8 + 1; LEN];
            let req = coffer::proto::Request::PutPack {
                id: coffer::id::PackId::of(&body),
                len: LEN as u64,
            };
            let (mut s, r) = conns[i % 2].1.open_bi().await.unwrap();
            s.write_all(&req.encode()).await.unwrap();
            streams.push((s, r, body));
        }
        // Every check has been made; now the bodies.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut tasks = Vec::new();
        for (mut s, mut r, body) in streams {
            tasks.push(tokio::spawn(async move {
                // A refused upload may stop its stream: write errors are fine.
                let _ = s.write_all(&body).await;
                let _ = s.finish();
                let got = tokio::time::timeout(Duration::from_secs(20), r.read_to_end(1 << 16))
                    .await
                    .expect("answered within a bounded time")
                    .unwrap_or_default();
                String::from_utf8_lossy(&got).into_owned()
            }));
        }
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        for (ep, conn) in conns {
            conn.close(0u32.into(), b"done");
            ep.wait_idle().await;
        }
        answers
    });
    let refused = answers
        .iter()
        .filter(|a| a.contains("over its quota"))
        .count();
    let stored = files_under(&srv.namespace_dir("ns-0").join("packs"));
    assert_eq!(stored, 3, "packs stored; answers: {answers:?}");
    assert_eq!(refused, UPLOADS - 3, "{answers:?}");
    // The reservations of refused and finished uploads are gone: the
    // stored packs are all that counts, so a pack that fits still fits.
    let body = vec![0xee; 40_000];
    let mut frame = coffer::proto::Request::PutPack {
        id: coffer::id::PackId::of(&body),
        len: body.len() as u64,
    }
    .encode();
    frame.extend_from_slice(&body);
    let got = raw_request(&srv, &frame).unwrap();
    assert!(
        !String::from_utf8_lossy(&got).contains("quota"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(files_under(&srv.namespace_dir("ns-0").join("packs")), 4);
}

/// The Destination Connection ID of a QUIC long-header packet.
fn initial_dcid(d: &[u8]) -> Option<Vec<u8>> {
    if d.first()? & 0x80 == 0 {
        return None;
    }
    let len = *d.get(5)? as usize;
    d.get(6..6 + len).map(<[u8]>::to_vec)
}

/// `n` distinct QUIC Initial datagrams (each a ClientHello under its own
/// connection ID), captured from a real client pointed at a socket that
/// never answers.
async fn capture_initials(n: usize, cfg: quinn::ClientConfig) -> Vec<Vec<u8>> {
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = sink.local_addr().unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut got = std::collections::HashMap::new();
    let mut pending = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // In batches, so the sink's buffer keeps up; a dropped Initial is sent
    // again under the same connection ID.
    while got.len() < n {
        assert!(Instant::now() < deadline, "captured {} Initials", got.len());
        if pending.len() < n && pending.len() <= got.len() + 50 {
            for _ in 0..50.min(n - pending.len()) {
                pending.push(ep.connect_with(cfg.clone(), to, "coffer").unwrap());
            }
        }
        let mut buf = vec![0u8; 2048];
        if let Ok(Ok(len)) =
            tokio::time::timeout(Duration::from_millis(200), sink.recv(&mut buf)).await
        {
            if let Some(dcid) = initial_dcid(&buf[..len]) {
                got.entry(dcid).or_insert_with(|| buf[..len].to_vec());
            }
        }
    }
    drop(pending);
    got.into_values().collect()
}

#[test]
fn handshakes_that_never_finish_cannot_lock_clients_out() {
    let srv = TestServer::start(1);
    let pin = Fingerprint::parse(&srv.fingerprint).unwrap();
    let id = || Identity::load(&srv.clients[0].0).unwrap();
    rt().block_on(async {
        // More than the server's 1024 connection slots, all from one
        // address, each started and then left silent.
        // Their Initials offer no idle timeout of their own: the server's
        // (60 s) is the one that would end them.
        let mut silent = raw_config(pin, Some(id()));
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(None);
        silent.transport_config(Arc::new(t));
        let initials = capture_initials(1100, silent).await;
        let flood = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for batch in initials.chunks(25) {
            for d in batch {
                flood.send_to(d, ("127.0.0.1", srv.port)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A client that finishes its handshake is served within a bounded
        // time (the handshake timeout), not after the idle timeout.
        let started = Instant::now();
        loop {
            let served = match raw_hello(srv.port, raw_config(pin, Some(id()))).await {
                Ok((_ep, _c, mut r)) => r.read_to_end(1 << 16).await.is_ok_and(|a| !a.is_empty()),
                Err(_) => false,
            };
            if served {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(25),
                "locked out for 25 s by handshakes that never finish"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let log = wait_for_log(&srv, "handshake not finished within");
    assert!(
        log.lines()
            .any(|l| l.contains("too many handshakes in progress")
                && l.contains("limit handshakes_per_address = 32")
                && l.contains("127.0.0.1")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("handshake not finished within 10s") && l.contains("127.0.0.1")),
        "{log}"
    );
}
