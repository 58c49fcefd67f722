//! Alert webhooks over HTTPS: a receiver on 127.0.0.1 with a self-signed
//! certificate gets the alert when the config trusts that certificate
//! (`webhook_ca`), and a server that trusts only the system's roots refuses
//! to deliver to it (the failure logged, nothing sent in the clear).

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::TestServer;

/// An HTTPS receiver with a new self-signed certificate for 127.0.0.1;
/// returns its port, the certificate (PEM) and the alerts it got.
fn tls_receiver() -> (u16, String, Arc<Mutex<Vec<Value>>>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let pem = ck.cert.pem();
    let cert = rustls::pki_types::CertificateDer::from(ck.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let Ok(conn) = rustls::ServerConnection::new(cfg.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            if let Some(v) = crate::monitor::receive_post(&mut tls) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    (port, pem, got)
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(40), "no {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn server(port: u16, ca: Option<&std::path::Path>) -> TestServer {
    let ca = ca
        .map(|p| format!("webhook_ca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    TestServer::start_full(
        1,
        "",
        &format!(
            "[alerts]\ncheck_interval = \"1s\"\nstale_after = \"2s\"\n\
             webhook = \"https://127.0.0.1:{port}/hook\"\n{ca}timeout = \"10s\"\n"
        ),
        &[],
    )
}

#[test]
fn an_https_webhook_gets_the_alert_when_its_certificate_is_trusted() {
    let (port, pem, got) = tls_receiver();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hook.pem");
    std::fs::write(&ca, pem).unwrap();
    let srv = server(port, Some(&ca));
    wait("stale alert over HTTPS", || !got.lock().unwrap().is_empty());
    let a = got.lock().unwrap()[0].clone();
    assert_eq!(a["kind"], "stale", "{a}");
    assert_eq!(a["namespace"], "ns-0", "{a}");
    drop(srv);

    // Without webhook_ca the system's roots do not know this certificate:
    // the delivery fails, loudly.
    let (port, _, got) = tls_receiver();
    let srv = server(port, None);
    wait("a failed delivery in the log", || {
        srv.log().contains("alert webhook failed")
    });
    assert!(
        got.lock().unwrap().is_empty(),
        "delivered to an untrusted certificate"
    );
}
