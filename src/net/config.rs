//! The server's configuration file (TOML). Unknown keys and bad values are
//! refused with a message that names them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// The client may list, read and restore, never write (default: no):
    /// for restores from a replica, or an auditor.
    #[serde(default)]
    pub read_only: bool,
    /// This namespace's lock window in days (default: the server's).
    pub lock_days: Option<u32>,
    /// This namespace's retention in days (default: the server's).
    pub retention_days: Option<u32>,
    /// This namespace's `keep_last` (default: the server's).
    pub keep_last: Option<u32>,
    /// This namespace's `keep_daily` (default: the server's).
    pub keep_daily: Option<u32>,
    /// This namespace's `keep_weekly` (default: the server's).
    pub keep_weekly: Option<u32>,
    /// This namespace's `keep_monthly` (default: the server's).
    pub keep_monthly: Option<u32>,
    /// This namespace's `keep_yearly` (default: the server's).
    pub keep_yearly: Option<u32>,
    /// Most bytes of packs this namespace may hold (default: no limit).
    pub quota_bytes: Option<u64>,
    /// This namespace's `[alerts] stale_after` (e.g. "8d" for a weekly job).
    pub stale_after: Option<String>,
}

/// `[storage]`: where a server keeps its namespaces' bytes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Storage {
    /// Under `data/namespaces/` only (the default).
    #[default]
    Dir,
    /// In an S3 bucket with Object Lock; `data` holds caches, locks and
    /// work files (see `store::Bucket`).
    #[cfg(feature = "s3")]
    S3(crate::object::s3::S3Config),
}

/// An object backend opened from `[storage]`, shared by clones.
#[derive(Clone, Default)]
pub struct OpenedBackend(
    Arc<
        std::sync::OnceLock<(
            Arc<dyn crate::object::ObjectBackend>,
            crate::object::LockMode,
        )>,
    >,
);

impl std::fmt::Debug for OpenedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0.get() {
            Some(_) => "OpenedBackend(open)",
            None => "OpenedBackend(not open)",
        })
    }
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
    /// The newest snapshots of each backup job that time alone never
    /// removes (1; at least 1).
    #[serde(default = "one")]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N days (0).
    #[serde(default)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks (0).
    #[serde(default)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months (0).
    #[serde(default)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years (0).
    #[serde(default)]
    pub keep_yearly: u32,
    /// Unreferenced packs younger than this survive a collection (48 hours).
    #[serde(default = "grace")]
    pub gc_grace_hours: u32,
    /// How often the retention sweep and collection run (60 minutes).
    #[serde(default = "sixty")]
    pub prune_interval_minutes: u32,
    /// The same as a humantime duration ("90s", "2h"); replaces
    /// `prune_interval_minutes` when given (tests sweep every few seconds).
    pub prune_interval: Option<String>,
    /// Parity shape of every namespace, `K+M` (default `10+2`).
    #[serde(default = "parity_default")]
    pub parity: String,
    /// How often every pack is scrubbed (168 hours: weekly).
    #[serde(default = "week")]
    pub scrub_interval_hours: u32,
    /// Where the namespaces' bytes live (`[storage]`): a directory under
    /// `data` (the default) or an S3 bucket with Object Lock.
    #[serde(default)]
    pub storage: Storage,
    /// The object store of `storage`, opened (and checked) once per
    /// process and shared by every copy of this config.
    #[serde(skip)]
    pub opened: OpenedBackend,
    /// Accepted clients.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientEntry>,
    /// Replica servers that may read namespaces to copy them (`[[replica]]`).
    #[serde(default, rename = "replica")]
    pub replicas: Vec<super::replica::ReplicaEntry>,
    /// Namespaces this server copies from a primary (`[[replicate]]`).
    #[serde(default)]
    pub replicate: Vec<super::replica::ReplicateEntry>,
    /// The Prometheus endpoint (none without this section).
    pub metrics: Option<MetricsConfig>,
    /// Alerts (none without this section).
    pub alerts: Option<AlertsConfig>,
    /// What one client certificate, and all of them together, may hold
    /// (defaults without this section).
    pub limits: Option<LimitsConfig>,
}

/// `[limits]`: connections per client certificate and memory for data in
/// flight (see `net::admission`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections one certificate may hold at once (16).
    pub connections_per_client: Option<usize>,
    /// MiB of frames and bodies in flight per certificate (256).
    pub client_memory_mib: Option<u32>,
    /// MiB of frames and bodies in flight for all clients together (1024).
    pub memory_mib: Option<u32>,
    /// How long a frame or body may stall before its connection is closed
    /// (default "60s").
    pub stall_timeout: Option<String>,
    /// How long a handshake may take (default "10s").
    pub handshake_timeout: Option<String>,
    /// Handshakes one address may have in progress at once (32).
    pub handshakes_per_address: Option<usize>,
}

/// `[metrics]`: where to serve `GET /metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// TCP address, `IP:PORT`; loopback unless `allow_remote`.
    pub listen: String,
    /// Allows a non-loopback `listen`: the metrics name every namespace.
    #[serde(default)]
    pub allow_remote: bool,
    /// How often a namespace's packs are walked again, at most (default
    /// "30s"); a commit refreshes its namespace's snapshot figures about a
    /// second later.
    #[serde(default = "thirty_s")]
    pub refresh_interval: String,
}

/// `[alerts]`: thresholds and where alerts go. Durations are humantime
/// strings ("26h", "90s").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A namespace without a snapshot for this long is stale (default "2d").
    #[serde(default = "stale_default")]
    pub stale_after: String,
    /// How often conditions are evaluated (default "60s").
    #[serde(default = "sixty_s")]
    pub check_interval: String,
    /// The same alert is not delivered again within this (default "24h").
    #[serde(default = "day")]
    pub repeat_after: String,
    /// Warn at this share of a namespace's quota (default 0.9).
    #[serde(default = "quota_warn")]
    pub quota_warn: f64,
    /// A snapshot with this many times the usual new bytes is an anomaly (10).
    #[serde(default = "factor")]
    pub anomaly_factor: f64,
    /// ... when it has at least this many new bytes (64 MiB).
    #[serde(default = "min_bytes")]
    pub anomaly_min_bytes: u64,
    /// How many earlier snapshots make the usual (10, at least 3).
    #[serde(default = "window")]
    pub anomaly_window: usize,
    /// A program (argv) that gets each alert as JSON on its standard input.
    pub command: Option<Vec<String>>,
    /// An `http://` or `https://` URL that gets each alert as JSON in a POST.
    pub webhook: Option<String>,
    /// A PEM file of certificates that HTTPS webhooks trust instead of the
    /// system's roots (a private CA, or a self-signed receiver's own).
    pub webhook_ca: Option<PathBuf>,
    /// How long the command and the webhook may take (default "10s").
    #[serde(default = "ten_s")]
    pub timeout: String,
}

/// `[alerts]`, validated.
#[derive(Debug, Clone)]
pub struct Alerting {
    /// The thresholds.
    pub rules: crate::monitor::alert::AlertRules,
    /// Evaluation period.
    pub check_interval: Duration,
    /// Repeat window, seconds.
    pub repeat_after: i64,
    /// Command argv.
    pub command: Option<Vec<String>>,
    /// Webhook.
    pub webhook: Option<super::webhook::Webhook>,
    /// Delivery timeout.
    pub timeout: Duration,
    /// Without `[alerts]`: only the `stale` and `clock` conditions are
    /// judged, and only logged (the others need the section).
    pub stale_only: bool,
}

fn thirty_s() -> String {
    "30s".into()
}
fn sixty_s() -> String {
    "60s".into()
}
fn ten_s() -> String {
    "10s".into()
}
fn one() -> u32 {
    1
}

fn stale_default() -> String {
    "2d".into()
}
fn day() -> String {
    "24h".into()
}
fn quota_warn() -> f64 {
    0.9
}
fn factor() -> f64 {
    10.0
}
fn min_bytes() -> u64 {
    64 << 20
}
fn window() -> usize {
    10
}

/// The longest duration a key accepts: ten years (seconds then fit an
/// `i64` and a timer's deadline with room to spare).
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses a humantime duration of at least one second and at most
/// [`MAX_DURATION`], naming the key.
pub(super) fn duration(section: &str, key: &str, v: &str) -> Result<Duration> {
    let d = humantime::parse_duration(v).map_err(|e| {
        Error::Denied(format!(
            "[{section}] {key} = {v:?}: {e} (write e.g. \"90s\", \"26h\")"
        ))
    })?;
    if d < Duration::from_secs(1) || d > MAX_DURATION {
        return Err(Error::Denied(format!(
            "[{section}] {key} = {v:?} must be at least 1s and at most {}",
            humantime::format_duration(MAX_DURATION)
        )));
    }
    Ok(d)
}

impl ServerConfig {
    /// The `[limits]`, validated: every limit at least 1 (memory at least
    /// what one frame and one read of a pack span take).
    pub fn limits(&self) -> Result<super::admission::Limits> {
        let d = super::admission::Limits::default();
        let Some(l) = &self.limits else {
            return Ok(d);
        };
        let out = super::admission::Limits {
            connections_per_client: l.connections_per_client.unwrap_or(d.connections_per_client),
            client_memory_mib: l.client_memory_mib.unwrap_or(d.client_memory_mib),
            memory_mib: l.memory_mib.unwrap_or(d.memory_mib),
            stall: match &l.stall_timeout {
                Some(v) => duration("limits", "stall_timeout", v)?,
                None => d.stall,
            },
            handshake: match &l.handshake_timeout {
                Some(v) => duration("limits", "handshake_timeout", v)?,
                None => d.handshake,
            },
            handshakes_per_address: l.handshakes_per_address.unwrap_or(d.handshakes_per_address),
        };
        for (name, n) in [
            ("connections_per_client", out.connections_per_client),
            ("handshakes_per_address", out.handshakes_per_address),
        ] {
            if n == 0 {
                return Err(Error::Denied(format!("[limits] {name} must be at least 1")));
            }
        }
        if out.client_memory_mib < 2 || out.memory_mib < out.client_memory_mib {
            return Err(Error::Denied(format!(
                "[limits] client_memory_mib = {} must be at least 2, and memory_mib = {} at least that",
                out.client_memory_mib, out.memory_mib
            )));
        }
        Ok(out)
    }
}

impl MetricsConfig {
    /// The address to bind, refused when not loopback unless allowed.
    pub fn listen_addr(&self) -> Result<SocketAddr> {
        let a: SocketAddr = self.listen.parse().map_err(|_| {
            Error::Denied(format!(
                "[metrics] listen = {:?} is not an IP address and port",
                self.listen
            ))
        })?;
        // The metrics name every namespace and its activity: local only,
        // unless the operator says otherwise in so many words.
        if !a.ip().is_loopback() && !self.allow_remote {
            return Err(Error::Denied(format!(
                "[metrics] listen = {:?} is not a loopback address; set allow_remote = true in [metrics] to serve metrics beyond this host",
                self.listen
            )));
        }
        Ok(a)
    }

    /// The refresh period.
    pub fn refresh(&self) -> Result<Duration> {
        duration("metrics", "refresh_interval", &self.refresh_interval)
    }
}

impl AlertsConfig {
    /// Checks every value and converts the durations.
    pub fn validated(&self) -> Result<Alerting> {
        let secs = |key: &str, v: &str| duration("alerts", key, v).map(|d| d.as_secs() as i64);
        if !(self.quota_warn > 0.0 && self.quota_warn <= 1.0) {
            return Err(Error::Denied(format!(
                "[alerts] quota_warn = {} must be above 0 and at most 1",
                self.quota_warn
            )));
        }
        if !(self.anomaly_factor >= 1.0 && self.anomaly_factor.is_finite()) {
            return Err(Error::Denied(format!(
                "[alerts] anomaly_factor = {} must be at least 1",
                self.anomaly_factor
            )));
        }
        if self.anomaly_window < crate::monitor::alert::MIN_HISTORY {
            return Err(Error::Denied(format!(
                "[alerts] anomaly_window = {} must be at least {}",
                self.anomaly_window,
                crate::monitor::alert::MIN_HISTORY
            )));
        }
        if let Some(c) = &self.command {
            if c.first().is_none_or(|p| p.is_empty()) {
                return Err(Error::Denied(
                    "[alerts] command must name a program: command = [\"/usr/local/bin/page-oncall\"]".into(),
                ));
            }
        }
        let timeout = duration("alerts", "timeout", &self.timeout)?;
        let webhook = match &self.webhook {
            Some(w) => Some(
                super::webhook::Webhook::new(w, self.webhook_ca.as_deref(), timeout)
                    .map_err(|e| Error::Denied(format!("[alerts] webhook = {w:?}: {e}")))?,
            ),
            None if self.webhook_ca.is_some() => {
                return Err(Error::Denied(
                    "[alerts] webhook_ca is set but there is no webhook".into(),
                ))
            }
            None => None,
        };
        Ok(Alerting {
            rules: crate::monitor::alert::AlertRules {
                stale_after: secs("stale_after", &self.stale_after)?,
                quota_warn: self.quota_warn,
                anomaly_factor: self.anomaly_factor,
                anomaly_min_bytes: self.anomaly_min_bytes,
                anomaly_window: self.anomaly_window,
            },
            check_interval: duration("alerts", "check_interval", &self.check_interval)?,
            repeat_after: secs("repeat_after", &self.repeat_after)?,
            command: self.command.clone(),
            webhook,
            timeout,
            stale_only: false,
        })
    }
}

impl ServerConfig {
    /// The alerting in force: `[alerts]`, or without it the `stale` check
    /// alone with the defaults, logged. A client that stopped backing up is
    /// noticed either way.
    pub fn alerting(&self) -> Result<Alerting> {
        match &self.alerts {
            Some(a) => a.validated(),
            None => {
                // unwrap: every key of [alerts] has a default
                let a: AlertsConfig = toml::from_str("").expect("[alerts] defaults");
                Ok(Alerting {
                    stale_only: true,
                    ..a.validated()?
                })
            }
        }
    }
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
    /// May it only read (a `read_only` client, or a replica).
    pub read_only: bool,
    /// Its namespace's retention rules.
    pub policy: Policy,
    /// Its namespace's quota in bytes.
    pub quota: Option<u64>,
    /// Its namespace's own stale threshold in seconds (the server's when `None`).
    pub stale_after: Option<i64>,
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
        c.validated_replicas()?;
        c.validated_replications()?;
        c.limits()?;
        crate::parity::ParityConfig::parse(&c.parity).map_err(Error::Denied)?;
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
        c.prune_every()?;
        c.lease_length()?;
        if let Some(m) = &c.metrics {
            m.listen_addr()?;
            m.refresh()?;
        }
        if let Some(a) = &c.alerts {
            a.validated()?;
        }
        Ok(c)
    }

    /// How often the retention sweep runs.
    pub fn prune_every(&self) -> Result<Duration> {
        match &self.prune_interval {
            Some(v) => duration("top level", "prune_interval", v),
            None => Ok(Duration::from_secs(self.prune_interval_minutes as u64 * 60)),
        }
    }

    /// The parity shape (validated at parse).
    pub fn parity_config(&self) -> crate::parity::ParityConfig {
        crate::parity::ParityConfig::parse(&self.parity).unwrap_or_default()
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

    /// One client entry per namespace (the first that names it), in the
    /// config's order: clients sharing a namespace share its settings. A
    /// namespace this server replicates and no client names follows,
    /// with the server's rules, as a read-only entry under the primary's
    /// fingerprint: it is scrubbed, swept and watched like any other.
    pub fn namespaces(&self) -> Result<Vec<Client>> {
        let mut out: Vec<Client> = Vec::new();
        for c in self.validated_clients()? {
            if !out.iter().any(|o| o.namespace == c.namespace) {
                out.push(c);
            }
        }
        for r in self.validated_replications()? {
            if !out.iter().any(|o| o.namespace == r.namespace) {
                out.push(Client {
                    fingerprint: r.pin,
                    namespace: r.namespace,
                    allow_remove_keys: false,
                    read_only: true,
                    policy: self.policy_of(None),
                    quota: None,
                    stale_after: None,
                });
            }
        }
        Ok(out)
    }

    /// The retention rules of a namespace: `c`'s where it sets them, the
    /// server's otherwise.
    pub(super) fn policy_of(&self, c: Option<&ClientEntry>) -> Policy {
        Policy {
            lock_secs: c.and_then(|c| c.lock_days).unwrap_or(self.lock_days) as i64 * DAY_SECS,
            retention_secs: c
                .and_then(|c| c.retention_days)
                .unwrap_or(self.retention_days) as i64
                * DAY_SECS,
            grace_secs: self.gc_grace_hours as i64 * 3600,
            keep: crate::keep::KeepRules {
                last: c.and_then(|c| c.keep_last).unwrap_or(self.keep_last),
                daily: c.and_then(|c| c.keep_daily).unwrap_or(self.keep_daily),
                weekly: c.and_then(|c| c.keep_weekly).unwrap_or(self.keep_weekly),
                monthly: c.and_then(|c| c.keep_monthly).unwrap_or(self.keep_monthly),
                yearly: c.and_then(|c| c.keep_yearly).unwrap_or(self.keep_yearly),
            },
        }
    }

    /// The store of `client`'s namespace, with its retention and parity
    /// (and its bucket, on an object store).
    pub fn namespace_store(&self, client: &Client) -> Result<crate::store::LocalStore> {
        super::server::namespace_store(
            &self.data,
            &client.namespace,
            client.policy,
            self.parity_config(),
            self.object_backend()?,
        )
    }

    /// The length of a lease on a namespace in the bucket (`[storage]
    /// lease`, two minutes by default).
    pub fn lease_length(&self) -> Result<Duration> {
        match &self.storage {
            #[cfg(feature = "s3")]
            Storage::S3(s3) => match &s3.lease {
                Some(v) => duration("storage", "lease", v),
                None => Ok(super::lease::DEFAULT_LEASE),
            },
            _ => Ok(super::lease::DEFAULT_LEASE),
        }
    }

    /// The object store of `[storage]`, opened and checked on the first
    /// call (the bucket exists, has Object Lock and versioning, and these
    /// credentials can write); `None` for a directory. Call it outside an
    /// async task: it blocks.
    pub fn object_backend(
        &self,
    ) -> Result<
        Option<(
            Arc<dyn crate::object::ObjectBackend>,
            crate::object::LockMode,
        )>,
    > {
        match &self.storage {
            Storage::Dir => Ok(None),
            #[cfg(feature = "s3")]
            Storage::S3(s3) => {
                if let Some(b) = self.opened.0.get() {
                    return Ok(Some(b.clone()));
                }
                let b = crate::object::s3::S3Backend::open(s3.clone())?;
                let opened: Arc<dyn crate::object::ObjectBackend> = Arc::new(b);
                let _ = self.opened.0.set((opened, s3.lock_mode));
                Ok(self.opened.0.get().cloned())
            }
        }
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
            let policy = self.policy_of(Some(c));
            policy.validate().map_err(|e| {
                Error::Denied(format!(
                    "client #{} (namespace {}): {e}",
                    i + 1,
                    c.namespace
                ))
            })?;
            let stale_after = c
                .stale_after
                .as_deref()
                .map(|v| duration(&format!("client #{}", i + 1), "stale_after", v))
                .transpose()?
                .map(|d| d.as_secs() as i64);
            if let Some(other) = out.iter().find(|o: &&Client| o.namespace == c.namespace) {
                if other.policy != policy
                    || other.quota != c.quota_bytes
                    || other.stale_after != stale_after
                {
                    return Err(Error::Denied(format!(
                        "client #{}: namespace {} is shared with different retention, quota or stale_after settings",
                        i + 1,
                        c.namespace
                    )));
                }
            }
            out.push(Client {
                fingerprint: fp,
                namespace: c.namespace.clone(),
                allow_remove_keys: c.allow_remove_keys,
                read_only: c.read_only,
                policy,
                quota: c.quota_bytes,
                stale_after,
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
    fn a_client_stale_after_is_checked_and_must_agree_within_a_namespace() {
        let fp2 = "0000000000000000000000000000000000000000000000000000000000000002";
        let c = ServerConfig::parse(&format!(
            "data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"{FP}\"\nnamespace = \"w\"\nstale_after = \"8d\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.validated_clients().unwrap()[0].stale_after,
            Some(8 * 86400)
        );
        let e = ServerConfig::parse(&format!(
            "data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"{FP}\"\nnamespace = \"w\"\nstale_after = \"weekly\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("stale_after"), "{e}");
        let e = ServerConfig::parse(&format!(
            "data = \"/d\"\nidentity = \"/i\"\n[[client]]\nfingerprint = \"{FP}\"\nnamespace = \"w\"\nstale_after = \"8d\"\n[[client]]\nfingerprint = \"{fp2}\"\nnamespace = \"w\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("stale_after"), "{e}");
    }

    #[test]
    fn handshake_limits_are_read_and_checked() {
        let cfg = |limits: &str| {
            ServerConfig::parse(&format!(
                "data = \"/d\"\nidentity = \"/i\"\n[limits]\n{limits}\n[[client]]\nfingerprint = \"{FP}\"\nnamespace = \"w\"\n"
            ))
        };
        let l = cfg("").unwrap().limits().unwrap();
        assert_eq!((l.handshake.as_secs(), l.handshakes_per_address), (10, 32));
        let l = cfg("handshake_timeout = \"3s\"\nhandshakes_per_address = 4")
            .unwrap()
            .limits()
            .unwrap();
        assert_eq!((l.handshake.as_secs(), l.handshakes_per_address), (3, 4));
        let e = cfg("handshakes_per_address = 0").unwrap_err();
        assert!(e.to_string().contains("handshakes_per_address"), "{e}");
    }

    #[test]
    fn the_sweep_interval_may_be_a_duration() {
        let cfg =
            |top: &str| ServerConfig::parse(&format!("data = \"/d\"\nidentity = \"/i\"\n{top}\n"));
        assert_eq!(cfg("").unwrap().prune_every().unwrap().as_secs(), 3600);
        let c = cfg("prune_interval_minutes = 5\nprune_interval = \"2s\"").unwrap();
        assert_eq!(c.prune_every().unwrap().as_secs(), 2);
        let e = cfg("prune_interval = \"0s\"").unwrap_err();
        assert!(e.to_string().contains("prune_interval"), "{e}");
    }

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

    const BASE: &str = "data = \"/d\"\nidentity = \"/i\"\n";

    #[test]
    fn monitoring_sections() {
        let c = ServerConfig::parse(&format!(
            "{BASE}[metrics]\nlisten = \"127.0.0.1:9464\"\n[alerts]\nstale_after = \"2h\"\ncommand = [\"/bin/true\"]\nwebhook = \"http://127.0.0.1:9000/hook\"\n"
        ))
        .unwrap();
        let a = c.alerts.unwrap().validated().unwrap();
        assert_eq!(a.rules.stale_after, 7200);
        assert_eq!(a.repeat_after, 86_400);
        assert_eq!(a.check_interval, Duration::from_secs(60));
        assert_eq!(a.rules.anomaly_min_bytes, 64 << 20);
        assert_eq!(
            c.metrics.unwrap().refresh().unwrap(),
            Duration::from_secs(30)
        );
        let c = ServerConfig::parse(&format!(
            "{BASE}[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n"
        ))
        .unwrap();
        assert!(c.metrics.is_some());
    }

    #[test]
    fn the_stale_check_runs_without_an_alerts_section() {
        let a = ServerConfig::parse(BASE).unwrap().alerting().unwrap();
        assert!(a.stale_only);
        assert_eq!(a.rules.stale_after, 2 * 86_400);
        assert!(a.command.is_none() && a.webhook.is_none());
        let a = ServerConfig::parse(&format!("{BASE}[alerts]\nquota_warn = 0.5\n"))
            .unwrap()
            .alerting()
            .unwrap();
        assert!(!a.stale_only);
        assert_eq!(a.rules.stale_after, 2 * 86_400, "the default threshold");
    }

    #[test]
    fn monitoring_refusals_name_the_key() {
        for (section, want) in [
            ("[metrics]\nlisten = \"0.0.0.0:9464\"\n", "allow_remote"),
            ("[metrics]\nlisten = \"[::]:9464\"\n", "allow_remote"),
            ("[metrics]\nlisten = \"127.0.0.1:9464\"\nport = 1\n", "port"),
            (
                "[metrics]\nlisten = \"127.0.0.1:9464\"\nrefresh_interval = \"0s\"\n",
                "refresh_interval",
            ),
            ("[alerts]\nstale = \"1h\"\n", "stale"),
            ("[alerts]\nstale_after = \"soon\"\n", "stale_after"),
            (
                "[alerts]\nrepeat_after = \"400000000000years\"\n",
                "repeat_after",
            ),
            ("[alerts]\ncheck_interval = \"11years\"\n", "check_interval"),
            ("[alerts]\ntimeout = \"0s\"\n", "timeout"),
            ("[alerts]\nquota_warn = 1.5\n", "quota_warn"),
            ("[alerts]\nanomaly_window = 2\n", "anomaly_window"),
            ("[alerts]\ncommand = []\n", "command"),
            ("[alerts]\nwebhook = \"ftp://h/x\"\n", "webhook"),
        ] {
            let e = ServerConfig::parse(&format!("{BASE}{section}")).unwrap_err();
            assert!(e.to_string().contains(want), "{section}: {e}");
        }
    }
}
