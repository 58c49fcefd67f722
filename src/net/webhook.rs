//! Alert webhooks: one POST of one alert's JSON to an `http://` or
//! `https://` URL, through `ureq` (rustls on ring). HTTPS trusts the
//! system's roots, or only the certificates of the `webhook_ca` file the
//! config names (a private CA, or a self-signed receiver's own
//! certificate). Redirects are not followed: an alert goes where the
//! operator said, or fails loudly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// A checked webhook and the HTTP agent that posts to it.
#[derive(Clone)]
pub struct Webhook {
    url: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Webhook({})", self.url)
    }
}

impl std::fmt::Display for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Checks a webhook URL: `http` or `https`, a host, no credentials (they
/// would be logged with every failed delivery).
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected https://HOST[:PORT]/PATH"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("expected an http:// or https:// URL".into()),
    }
    let authority = uri.authority().ok_or("the URL names no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL would be logged; put them in a relay".into());
    }
    if authority.host().is_empty() {
        return Err("the URL names no host".into());
    }
    Ok(())
}

/// The certificates of a PEM file, to trust instead of the system's roots.
fn load_roots(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(format!("{}: {e}", path.display()))),
        })
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

impl Webhook {
    /// A webhook to `url`, trusting the certificates in `ca` (PEM) for
    /// HTTPS when given, the system's otherwise; each POST takes at most
    /// `timeout` in all.
    pub fn new(url: &str, ca: Option<&Path>, timeout: Duration) -> Result<Webhook, String> {
        check_url(url)?;
        let roots = match ca {
            Some(p) => RootCerts::Specific(Arc::new(load_roots(p)?)),
            None => RootCerts::PlatformVerifier,
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("coffer/", env!("CARGO_PKG_VERSION")))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .new_agent();
        Ok(Webhook {
            url: url.to_string(),
            agent,
        })
    }

    /// POSTs `body` (JSON); `Ok` on a 2xx answer. Blocks: call it off the
    /// async runtime.
    pub fn post(&self, body: &[u8]) -> Result<(), String> {
        let r = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(body)
            .map_err(|e| e.to_string())?;
        let status = r.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_anything_is_sent() {
        for ok in [
            "http://127.0.0.1:9000/hook",
            "https://alerts.internal/coffer",
            "https://[::1]:8443/x?y=1",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("ftp://h/x", "http"),
            ("https://user:pw@h/x", "credentials"),
            ("alerts.internal/x", "http"),
            ("", "URL"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = Webhook::new("https://h/x", Some(&p), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = Webhook::new(
            "https://h/x",
            Some(&d.path().join("gone")),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("gone"), "{e}");
    }
}
