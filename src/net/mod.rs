//! QUIC transport: identities (self-signed certificates pinned by
//! fingerprint), TLS 1.3 setup for both ends, the server and the remote
//! store. Mutual TLS always; there is no plaintext mode, not even on
//! localhost. The messages themselves are in [`crate::proto`].

pub mod admission;
pub mod client;
pub mod config;
pub mod handshake;
pub mod http;
pub mod jobs;
pub mod lease;
pub mod log;
pub mod quota;
pub mod reconnect;
pub mod refusal;
pub mod reload;
pub mod replica;
pub mod rollback;
pub mod schedule;
pub mod server;
mod state;
mod stateless;
pub mod watch;
pub mod webhook;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// SHA-256 of a certificate's DER bytes: how clients and servers pin each
/// other (the same value `openssl x509 -noout -fingerprint -sha256` shows).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
    /// Parses 64 hex digits, with or without `sha256:` and colons.
    pub fn parse(s: &str) -> Result<Fingerprint> {
        let t: String = s
            .trim()
            .trim_start_matches("sha256:")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&t, &mut out).map_err(|_| {
            Error::Denied(format!("invalid fingerprint {s:?}: expected 64 hex digits"))
        })?;
        Ok(Fingerprint(out))
    }
    /// The first 8 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// A private key and its self-signed certificate.
pub struct Identity {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Generates a new ECDSA P-256 key and self-signed certificate.
    pub fn generate() -> Result<(Identity, String)> {
        let ck = rcgen::generate_simple_self_signed(vec!["coffer".to_string()])
            .map_err(|e| Error::Denied(format!("generating a certificate: {e}")))?;
        let pem = format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem());
        Ok((Identity::from_pem(pem.as_bytes())?, pem))
    }

    /// Parses a PEM file holding one certificate and one private key.
    pub fn from_pem(pem: &[u8]) -> Result<Identity> {
        let cert = CertificateDer::from_pem_slice(pem)
            .map_err(|e| Error::Denied(format!("identity file: no certificate ({e})")))?;
        let key = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| Error::Denied(format!("identity file: no private key ({e})")))?;
        Ok(Identity { cert, key })
    }

    /// Reads an identity file.
    pub fn load(path: &Path) -> Result<Identity> {
        let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_pem(&pem).map_err(|e| Error::Denied(format!("{}: {e}", path.display())))
    }

    /// This identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn tls_err(e: impl fmt::Display) -> Error {
    Error::Denied(format!("TLS setup: {e}"))
}

/// TLS 1.3 handshake signature check by the provider, shared by both verifiers.
fn tls13(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

fn no_tls12() -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
}

/// Checks a server certificate against the pinned fingerprint; signatures
/// are verified by the crypto provider as usual.
#[derive(Debug)]
pub(crate) struct PinnedServer {
    pub pin: Fingerprint,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate {got} does not match the pinned fingerprint {}",
                self.pin
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Accepts exactly the client certificates whose fingerprints the server's
/// config lists; any other is refused during the handshake.
#[derive(Debug)]
pub(crate) struct PinnedClients {
    pub allowed: Vec<Fingerprint>,
    pub provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let fp = Fingerprint::of(end_entity);
        if self.allowed.contains(&fp) {
            Ok(ClientCertVerified::assertion())
        } else {
            // Logged with the peer's address by `refusal`, from this text.
            Err(rustls::Error::General(format!(
                "unknown client certificate {fp}"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        // A known certificate whose key the peer does not hold (a copied
        // or stolen certificate): name it, for the log.
        tls13(&self.provider, message, cert, dss).map_err(|e| {
            rustls::Error::General(format!(
                "client certificate {} presented without its private key ({e})",
                Fingerprint::of(cert)
            ))
        })
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Transport limits shared by both ends.
pub(crate) fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(64u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            std::time::Duration::from_secs(60)
                .try_into()
                .expect("60 s is a valid idle timeout"),
        ))
        .keep_alive_interval(Some(std::time::Duration::from_secs(15)))
        .stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20);
    t
}
