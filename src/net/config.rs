//! The server's configuration file (TOML). Unknown keys and bad values are
//! refused with a message that names them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Fingerprint;
use crate::error::{Error, Result};
use crate::retention::{Policy, DAY_SECS};

/// One client the server accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// SHA-256 fingerprint of the client's certificate.
    pub fingerprint: String,
    /// The one namespace this client may use.
    pub namespace: String,
    /// Whether the client may remove key files (default: no).
    #[serde(default)]
    pub allow_remove_keys: bool,
    /// This namespace's lock window in days (default: the server's).
    pub lock_days: Option<u32>,
    /// This namespace's retention in days (default: the server's).
    pub retention_days: Option<u32>,
    /// Most bytes of packs this namespace may hold (default: no limit).
    pub quota_bytes: Option<u64>,
}

/// `coffer serve --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:7443`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Directory holding every namespace.
    pub data: PathBuf,
    /// The server's identity file.
    pub identity: PathBuf,
    /// Default lock window in days (30).
    #[serde(default = "thirty")]
    pub lock_days: u32,
    /// Default retention in days (30).
    #[serde(default = "thirty")]
    pub retention_days: u32,
    /// Unreferenced packs younger than this survive a collection (48 hours).
    #[serde(default = "grace")]
    pub gc_grace_hours: u32,
    /// How often the retention sweep and collection run (60 minutes).
    #[serde(default = "sixty")]
    pub prune_interval_minutes: u32,
    /// Parity shape of every namespace, `K+M` (default `10+2`).
    #[serde(default = "parity_default")]
    pub parity: String,
    /// How often every pack is scrubbed (168 hours: weekly).
    #[serde(default = "week")]
    pub scrub_interval_hours: u32,
    /// Accepted clients.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientEntry>,
}

fn thirty() -> u32 {
    30
}
fn grace() -> u32 {
    48
}
fn sixty() -> u32 {
    60
}
fn parity_default() -> String {
    "10+2".into()
}
fn week() -> u32 {
    168
}

fn default_listen() -> String {
    "127.0.0.1:7443".into()
}

/// A validated client.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
    /// Its namespace.
    pub namespace: String,
    /// May it remove key files.
    pub allow_remove_keys: bool,
    /// Its namespace's retention rules.
    pub policy: Policy,
    /// Its namespace's quota in bytes.
    pub quota: Option<u64>,
}

/// Whether a namespace name is safe as a directory name.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && !ns.starts_with('.')
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl ServerConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<ServerConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|e| Error::Denied(format!("{}: {e}", path.display())))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<ServerConfig> {
        let c: ServerConfig =
            toml::from_str(text).map_err(|e| Error::Denied(e.to_string().trim().to_string()))?;
        c.listen_addr()?;
        c.validated_clients()?;
        crate::scrub::ParityConfig::parse(&c.parity).map_err(Error::Denied)?;
        if c.scrub_interval_hours == 0 {
            return Err(Error::Denied(
                "scrub_interval_hours must be at least 1".into(),
            ));
        }
        if c.prune_interval_minutes == 0 {
            return Err(Error::Denied(
                "prune_interval_minutes must be at least 1".into(),
            ));
        }
        Ok(c)
    }

    /// The parity shape (validated at parse).
    pub fn parity_config(&self) -> crate::scrub::ParityConfig {
        crate::scrub::ParityConfig::parse(&self.parity).unwrap_or_default()
    }

    /// The address to bind.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        self.listen.parse().map_err(|_| {
            Error::Denied(format!(
                "listen = {:?} is not an IP address and port",
                self.listen
            ))
        })
    }

    /// The clients, with fingerprints parsed and namespaces checked.
    pub fn validated_clients(&self) -> Result<Vec<Client>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, c) in self.clients.iter().enumerate() {
            let fp = Fingerprint::parse(&c.fingerprint)
                .map_err(|e| Error::Denied(format!("client #{}: fingerprint: {e}", i + 1)))?;
            if !valid_namespace(&c.namespace) {
                return Err(Error::Denied(format!(
                    "client #{}: namespace {:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'",
                    i + 1,
                    c.namespace
                )));
            }
            if !seen.insert(fp) {
                return Err(Error::Denied(format!(
                    "client #{}: fingerprint {fp} is listed twice",
                    i + 1
                )));
            }
            let policy = Policy {
                lock_secs: c.lock_days.unwrap_or(self.lock_days) as i64 * DAY_SECS,
                retention_secs: c.retention_days.unwrap_or(self.retention_days) as i64 * DAY_SECS,
                grace_secs: self.gc_grace_hours as i64 * 3600,
            };
            policy.validate().map_err(|e| {
                Error::Denied(format!(
                    "client #{} (namespace {}): {e}",
                    i + 1,
                    c.namespace
                ))
            })?;
            if let Some(other) = out.iter().find(|o: &&Client| o.namespace == c.namespace) {
                if other.policy != policy || other.quota != c.quota_bytes {
                    return Err(Error::Denied(format!(
                        "client #{}: namespace {} is shared with different retention or quota settings",
                        i + 1,
                        c.namespace
                    )));
                }
            }
            out.push(Client {
                fingerprint: fp,
                namespace: c.namespace.clone(),
                allow_remove_keys: c.allow_remove_keys,
                policy,
                quota: c.quota_bytes,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn good_config() {
        let c = ServerConfig::parse(&format!(
            "data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"{FP}\"\nnamespace = \"vps-101\"\n"
        ))
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7443");
        assert_eq!(c.validated_clients().unwrap()[0].namespace, "vps-101");
    }

    #[test]
    fn refusals_name_the_problem() {
        let e = ServerConfig::parse("data = \"/d\"\nidentity = \"/i\"\nlisten_on = \"x\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
        let e = ServerConfig::parse("data = \"/d\"\nidentity = \"/i\"\nlisten = \"nope\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = ServerConfig::parse(&format!(
            "data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"{FP}\"\nnamespace = \"../x\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("namespace"), "{e}");
        let e = ServerConfig::parse("data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"zz\"\nnamespace = \"a\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("fingerprint"), "{e}");
    }
}
