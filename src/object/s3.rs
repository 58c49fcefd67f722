//! The [`ObjectBackend`] on an S3-compatible bucket with Object Lock.
//!
//! This module owns the S3 requests, the credentials file and the startup
//! checks of a bucket; it speaks through `aws-sdk-s3` on a small tokio
//! runtime of its own (two worker threads) and never lets tokio out: every
//! method blocks its caller. Call it from a plain thread or from tokio's
//! `spawn_blocking`, never from inside an async task (blocking there panics).
//!
//! ## Requests
//!
//! | trait method | request |
//! |---|---|
//! | `put_once` | `PutObject` with `If-None-Match: *`, `x-amz-checksum-sha256`, `x-amz-object-lock-mode` / `-retain-until-date` |
//! | `get_range` | `GetObject` with `Range: bytes=a-b` (and `versionId`) |
//! | `head` | `HeadObject` (its answer carries the lock headers) |
//! | `list` | `ListObjectsV2`, one page at a time |
//! | `extend_retention` | `HeadObject`, then `PutObjectRetention` only if it lengthens |
//! | `set_legal_hold` | `PutObjectLegalHold` |
//! | `delete` | `DeleteObject` without a version: a delete marker |
//! | `list_versions` | `ListObjectVersions` for the one key |
//! | `delete_version` | `DeleteObject` with `versionId`, never with a governance bypass |
//! | `clock` | `HeadBucket`, reading the answer's `Date` |
//!
//! ## Provider quirks
//!
//! - **Ceph RGW** (16 at least) ignores `If-None-Match: *` on `PutObject`
//!   and overwrites, making a new version. Set [`S3Config::head_before_put`]:
//!   a `HEAD` runs first and an existing key answers
//!   [`PutOutcome::Exists`]. That leaves a race between two writers of the
//!   same key; the store above serialises its writers (one server per
//!   namespace), and both racers wrote the same bytes (a pack is named by
//!   its hash), so the cost is one extra version, never lost data.
//! - **SeaweedFS** enforces the lock only in its S3 gateway: its filer and
//!   volume ports write and delete behind the gateway's back and must stay
//!   private (`docs/operations.md`).
//! - **AWS S3** refuses an Object Lock `PutObject` without a checksum; the
//!   SHA-256 sent with every put satisfies it.

use std::future::Future;
use std::ops::{ControlFlow, Range};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_s3::error::{BoxError, DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, ObjectLockEnabled, ObjectLockLegalHold,
    ObjectLockLegalHoldStatus, ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode,
};
use aws_sdk_s3::Client;
use zeroize::Zeroizing;

use super::{
    check_prefix, check_range_len, ListEntry, LockMode, ObjectBackend, ObjectError, ObjectHead,
    ObjectKey, ObjectVersion, PutOutcome, Retention, VersionId, MAX_VERSIONS_PER_KEY,
};
use crate::error::Result;

/// Where a bucket is and how to reach it: the `[storage]` table of a server
/// config with `kind = "s3"`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `https://host:port` (or `http://` on loopback for tests).
    pub endpoint: String,
    /// The bucket; it must exist with Object Lock and versioning enabled.
    pub bucket: String,
    /// Prepended to every key (`site-a/`); empty or ending in `/`.
    #[serde(default)]
    pub prefix: String,
    /// The region to sign for (`us-east-1` for most non-AWS stores).
    pub region: String,
    /// An AWS shared-credentials file, mode 0600: refused if group or
    /// others have any access to it.
    pub credentials_file: PathBuf,
    /// The profile of that file to use (`default`).
    #[serde(default = "default_profile")]
    pub profile: String,
    /// `https://host/bucket/key` (true, the default: every store takes it)
    /// or `https://bucket.host/key` (false: what AWS S3 prefers).
    #[serde(default = "yes")]
    pub path_style: bool,
    /// The mode of the retention coffer asks for. Governance is weaker:
    /// anyone holding a bypass permission can purge early.
    #[serde(default = "compliance")]
    pub lock_mode: LockMode,
    /// For stores that ignore `If-None-Match` (Ceph RGW): `HEAD` first.
    #[serde(default)]
    pub head_before_put: bool,
    /// How long a server's lease on each of its namespaces lasts
    /// (`"2m"`, the default): another server configured for one waits
    /// this long after the first stopped (see `net::lease`).
    #[serde(default)]
    pub lease: Option<String>,
}

fn default_profile() -> String {
    "default".into()
}
fn yes() -> bool {
    true
}
fn compliance() -> LockMode {
    LockMode::Compliance
}

/// Keys per `ListObjectsV2` page (S3's maximum): the most a listing holds.
pub const LIST_PAGE: i32 = 1000;

/// Key of the object whose conditional re-put proves the credentials can
/// write. Its first segment starts with `.`, so it is never a coffer key
/// and never listed.
const WRITE_PROBE: &str = ".coffer-write-probe";

/// An S3 bucket as an [`ObjectBackend`].
pub struct S3Backend {
    /// Always `Some` until dropped (taken by `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    cfg: S3Config,
    page: i32,
}

/// Access key, secret and optional session token of one profile.
#[derive(Clone)]
pub struct SharedCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedCredentials({}, ..)", self.access_key_id)
    }
}

/// Parses one profile of an AWS shared-credentials file (INI: `[profile]`
/// sections of `key = value` lines, `#` and `;` comments).
pub fn parse_credentials(text: &str, profile: &str) -> Result<SharedCredentials, String> {
    let mut in_profile = false;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            found |= in_profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("profile [{profile}]: a line is not `key = value`"));
        };
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(Zeroizing::new(v)),
            "aws_session_token" => token = Some(Zeroizing::new(v)),
            _ => {}
        }
    }
    if !found {
        return Err(format!("no profile [{profile}]"));
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key))
            if !access_key_id.is_empty() && !secret_access_key.is_empty() =>
        {
            Ok(SharedCredentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            })
        }
        _ => Err(format!(
            "profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        )),
    }
}

/// Reads the credentials file, refusing it if group or others have any
/// access (the secret would be one `cat` away from every local user).
pub fn load_credentials(path: &Path, profile: &str) -> Result<SharedCredentials, ObjectError> {
    let setup =
        |what: String| ObjectError::Setup(format!("credentials file {}: {what}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| setup(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(setup(format!(
            "readable by group or others (mode {mode:04o}); run chmod 600 on it"
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| setup(e.to_string()))?);
    parse_credentials(&text, profile).map_err(setup)
}

/// Records the `Date` header of the answer it sees.
#[derive(Debug, Default, Clone)]
struct DateCapture(Arc<Mutex<Option<String>>>);

impl Intercept for DateCapture {
    fn name(&self) -> &'static str {
        "coffer::DateCapture"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(d) = context.response().headers().get("date") {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(d.to_string());
        }
        Ok(())
    }
}

/// The HTTP status of a failed request, if an answer came back.
fn status<E, R>(err: &SdkError<E, R>) -> Option<u16>
where
    R: HttpStatus,
{
    err.raw_response().map(HttpStatus::status_code)
}

/// What [`status`] needs of a raw response.
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Sorts a failed request into the trait's error kinds: not found, refused
/// by the store (4xx: a lock, a missing permission, a bad request), or not
/// reachable (transport failures and 5xx, already retried by the SDK).
fn classify<E>(
    op: &'static str,
    key: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default().to_string();
    let message = err.message().unwrap_or_default().to_string();
    let key = key.to_string();
    match status(&err) {
        Some(404) => ObjectError::NotFound { op, key },
        Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => ObjectError::Refused {
            op,
            key,
            reason: format!("HTTP {s} {code} {message}").trim_end().to_string(),
        },
        _ => ObjectError::Unavailable {
            op,
            key,
            reason: DisplayErrorContext(&err).to_string(),
        },
    }
}

/// The base64 SHA-256 of a file, as `x-amz-checksum-sha256` wants it.
fn file_sha256(path: &Path) -> Result<String> {
    use base64::Engine as _;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| crate::error::Error::io(path, e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => ctx.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::error::Error::io(path, e)),
        }
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(ctx.finish().as_ref()))
}

fn to_datetime(t: SystemTime) -> DateTime {
    DateTime::from(super::round_up_to_second(t))
}

fn from_datetime(d: &DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*d).ok()
}

fn lock_mode(m: LockMode) -> (ObjectLockMode, ObjectLockRetentionMode) {
    match m {
        LockMode::Compliance => (
            ObjectLockMode::Compliance,
            ObjectLockRetentionMode::Compliance,
        ),
        LockMode::Governance => (
            ObjectLockMode::Governance,
            ObjectLockRetentionMode::Governance,
        ),
    }
}

fn from_lock_mode(m: &str) -> Option<LockMode> {
    match m.to_ascii_uppercase().as_str() {
        "COMPLIANCE" => Some(LockMode::Compliance),
        "GOVERNANCE" => Some(LockMode::Governance),
        _ => None,
    }
}

impl S3Backend {
    /// Connects and runs the startup checks ([`S3Backend::check`]).
    pub fn open(cfg: S3Config) -> Result<Self> {
        let b = Self::connect(cfg)?;
        b.check()?;
        Ok(b)
    }

    /// Builds the client without a request: credentials read and checked,
    /// runtime started. [`S3Backend::check`] asks the bucket.
    pub fn connect(cfg: S3Config) -> Result<Self> {
        if !cfg.prefix.is_empty() && !cfg.prefix.ends_with('/') {
            return Err(
                ObjectError::Setup(format!("prefix {:?} must end with '/'", cfg.prefix)).into(),
            );
        }
        check_prefix(&cfg.prefix)?;
        let creds = load_credentials(&cfg.credentials_file, &cfg.profile)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coffer-s3")
            .enable_all()
            .build()?;
        // rustls on ring, as the QUIC side: no OpenSSL, no aws-lc
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .endpoint_url(&cfg.endpoint)
            .force_path_style(cfg.path_style)
            .credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                creds.secret_access_key.to_string(),
                creds.session_token.as_ref().map(|t| t.to_string()),
                None,
                "coffer-credentials-file",
            ))
            .http_client(http)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .build();
        Ok(S3Backend {
            rt: Some(rt),
            client: Client::from_conf(conf),
            cfg,
            page: LIST_PAGE,
        })
    }

    /// Sets the keys per listing page (1 to [`LIST_PAGE`]); tests use small
    /// pages to cross page boundaries with few objects.
    pub fn with_page_size(mut self, page: i32) -> Self {
        self.page = page.clamp(1, LIST_PAGE);
        self
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Runs `f` on this backend's runtime with its SDK client: for tests
    /// and benchmarks that must speak S3 directly (as an attacker holding
    /// the server's credentials would). Not for coffer's own requests.
    #[doc(hidden)]
    pub fn raw<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = T>,
    {
        self.block_on(f(self.client.clone()))
    }

    /// Runs one request to its end on the backend's runtime.
    fn block_on<F: Future>(&self, f: F) -> F::Output {
        // unwrap: only Drop takes the runtime
        self.rt.as_ref().expect("runtime until dropped").block_on(f)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.cfg.prefix)
    }

    fn setup(&self, what: impl std::fmt::Display) -> crate::Error {
        ObjectError::Setup(format!(
            "bucket {:?} at {}: {what}",
            self.cfg.bucket, self.cfg.endpoint
        ))
        .into()
    }

    /// A `PutObject` of `key` with its retention, without body or checksum.
    fn put_request(
        &self,
        key: &ObjectKey,
        retention: Option<Retention>,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let req = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(self.full(key.as_str()));
        match retention {
            Some(r) => req
                .object_lock_mode(lock_mode(r.mode).0)
                .object_lock_retain_until_date(to_datetime(r.until)),
            None => req,
        }
    }

    /// Sends the request `make` builds with `If-None-Match: *`: created,
    /// or [`PutOutcome::Exists`] when the key is live. A conditional write
    /// in progress elsewhere answers 409: the other writer decides, so it
    /// is asked again a few times.
    fn put_if_absent(
        &self,
        key: &ObjectKey,
        make: &dyn Fn() -> Result<
            aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
        >,
    ) -> Result<PutOutcome> {
        let full = self.full(key.as_str());
        for attempt in 0..4u32 {
            match self.block_on(make()?.if_none_match("*").send()) {
                Ok(out) => {
                    let v = out.version_id().unwrap_or("null");
                    return Ok(PutOutcome::Created(VersionId(v.to_string())));
                }
                // first writer wins: the key is live already
                Err(e) if status(&e) == Some(412) => return Ok(PutOutcome::Exists),
                Err(e) if status(&e) == Some(409) && attempt < 3 => {
                    std::thread::sleep(Duration::from_millis(100 << attempt));
                }
                Err(e) => return Err(classify("put", &full, e).into()),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The startup checks, in this order: the bucket exists, these
    /// credentials can write to it, its versioning is enabled (not
    /// suspended), and it has Object Lock enabled. Each failure is an
    /// [`ObjectError::Setup`] naming the problem.
    pub fn check(&self) -> Result<()> {
        let c = &self.client;
        let bucket = &self.cfg.bucket;
        match self.block_on(c.head_bucket().bucket(bucket).send()) {
            Ok(_) => {}
            Err(e) => match status(&e) {
                Some(404) => return Err(self.setup("the bucket does not exist")),
                Some(s @ (401 | 403)) => {
                    return Err(self.setup(format!(
                        "the credentials are refused (HTTP {s}): check the key and its policy"
                    )))
                }
                _ => {
                    return Err(self.setup(format!(
                        "cannot reach the store: {}",
                        DisplayErrorContext(&e)
                    )))
                }
            },
        }
        // A conditional put of the probe: 200 (first time) or 412 (it is
        // there) both prove the right to write, as the store checks
        // permissions before preconditions; nothing piles up across starts.
        let probe = self.full(WRITE_PROBE);
        let put = c
            .put_object()
            .bucket(bucket)
            .key(&probe)
            .if_none_match("*")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from_static(
                b"coffer checks it can write here\n",
            ))
            .send();
        match self.block_on(put) {
            Ok(_) => {}
            Err(e) if status(&e) == Some(412) => {}
            Err(e) => {
                return Err(self.setup(format!(
                    "the credentials cannot write: {}",
                    classify("put", &probe, e)
                )))
            }
        }
        let versioning = self
            .block_on(c.get_bucket_versioning().bucket(bucket).send())
            .map_err(|e| classify("bucket versioning", bucket, e))?;
        match versioning.status() {
            Some(BucketVersioningStatus::Enabled) => {}
            Some(BucketVersioningStatus::Suspended) => {
                return Err(self.setup("versioning is suspended; enable it again"))
            }
            _ => return Err(self.setup("versioning is not enabled; enable it")),
        }
        let lock = self.block_on(c.get_object_lock_configuration().bucket(bucket).send());
        let enabled = match lock {
            Ok(out) => {
                out.object_lock_configuration()
                    .and_then(|l| l.object_lock_enabled())
                    == Some(&ObjectLockEnabled::Enabled)
            }
            Err(e)
                if status(&e) == Some(404)
                    || e.code()
                        .is_some_and(|c| c.contains("ObjectLockConfigurationNotFound")) =>
            {
                false
            }
            // SeaweedFS grants this read only to the bucket's Admin action
            Err(e) if status(&e) == Some(403) => {
                return Err(self.setup(
                    "the credentials may not read the bucket's Object Lock configuration \
                     (s3:GetBucketObjectLockConfiguration; on SeaweedFS the bucket's Admin action)",
                ))
            }
            Err(e) => return Err(classify("object lock configuration", bucket, e).into()),
        };
        if !enabled {
            return Err(self.setup(
                "Object Lock is not enabled; create the bucket with Object Lock \
                 (most stores cannot turn it on later)",
            ));
        }
        Ok(())
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        // a runtime dropped the usual way blocks on its workers, which
        // panics inside an async context (a server shutting down)
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectBackend for S3Backend {
    fn versioned(&self) -> bool {
        true
    }

    fn put_once(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        retention: Option<Retention>,
    ) -> Result<PutOutcome> {
        // Ceph RGW ignores If-None-Match: ask first (see the module doc).
        if self.cfg.head_before_put && self.head(key, None)?.is_some() {
            return Ok(PutOutcome::Exists);
        }
        let body = ::bytes::Bytes::copy_from_slice(bytes);
        self.put_if_absent(key, &|| {
            Ok(self
                .put_request(key, retention)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .body(ByteStream::from(body.clone())))
        })
    }

    fn put_file_once(
        &self,
        key: &ObjectKey,
        path: &Path,
        retention: Option<Retention>,
    ) -> Result<PutOutcome> {
        if self.cfg.head_before_put && self.head(key, None)?.is_some() {
            return Ok(PutOutcome::Exists);
        }
        // The SHA-256 first, in one pass over the file, sent as a header:
        // the store checks it before it accepts the object, and the body
        // is read from the file again as it goes out (and on a retry).
        let sha = file_sha256(path)?;
        self.put_if_absent(key, &|| {
            let body = self
                .block_on(ByteStream::from_path(path))
                .map_err(|e| crate::error::Error::io(path, std::io::Error::other(e)))?;
            Ok(self
                .put_request(key, retention)
                .checksum_sha256(&sha)
                .body(body))
        })
    }

    fn put_version(
        &self,
        key: &ObjectKey,
        bytes: &[u8],
        retention: Option<Retention>,
    ) -> Result<VersionId> {
        let full = self.full(key.as_str());
        let req = self
            .put_request(key, retention)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .body(ByteStream::from(::bytes::Bytes::copy_from_slice(bytes)));
        let out = self
            .block_on(req.send())
            .map_err(|e| classify("put", &full, e))?;
        Ok(VersionId(out.version_id().unwrap_or("null").to_string()))
    }

    fn get_range(
        &self,
        key: &ObjectKey,
        version: Option<&VersionId>,
        range: Range<u64>,
    ) -> Result<Vec<u8>> {
        if range.start >= range.end {
            // an empty range has no HTTP form; it still names an object
            return match self.head(key, version)? {
                Some(h) if range.start <= h.size => Ok(Vec::new()),
                Some(_) => Err(check_range_len(key, &(range.start..range.start + 1), 0)
                    .unwrap_err()
                    .into()),
                None => Err(ObjectError::NotFound {
                    op: "get",
                    key: key.to_string(),
                }
                .into()),
            };
        }
        let full = self.full(key.as_str());
        let req = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .set_version_id(version.map(|v| v.0.clone()))
            .range(format!("bytes={}-{}", range.start, range.end - 1));
        let bytes = self.block_on(async {
            let out = req.send().await.map_err(|e| match status(&e) {
                // asked past the end: the caller knew a longer object
                Some(416) => ObjectError::Damaged {
                    op: "get",
                    key: full.clone(),
                    reason: format!("range {}..{} past its end", range.start, range.end),
                },
                _ => classify("get", &full, e),
            })?;
            // into one buffer of the size asked for, and never past it:
            // a store that sends more cannot make us hold more
            let want = (range.end - range.start) as usize;
            let mut buf = Vec::with_capacity(want);
            let mut body = out.body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ObjectError::Unavailable {
                    op: "get",
                    key: full.clone(),
                    reason: e.to_string(),
                })?;
                if buf.len() + chunk.len() > want {
                    return Err(ObjectError::Damaged {
                        op: "get",
                        key: full.clone(),
                        reason: format!("the store sent more than the {want} bytes asked for"),
                    });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(buf)
        })?;
        check_range_len(key, &range, bytes.len())?;
        Ok(bytes)
    }

    fn head(&self, key: &ObjectKey, version: Option<&VersionId>) -> Result<Option<ObjectHead>> {
        let full = self.full(key.as_str());
        let req = self
            .client
            .head_object()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .set_version_id(version.map(|v| v.0.clone()));
        let out = match self.block_on(req.send()) {
            Ok(out) => out,
            // absent, or its latest version is a delete marker
            Err(e) if status(&e) == Some(404) => return Ok(None),
            // HEAD of a marker by version id is 405 Method Not Allowed
            Err(e) if status(&e) == Some(405) => return Ok(None),
            Err(e) => return Err(classify("head", &full, e).into()),
        };
        if out.delete_marker() == Some(true) {
            return Ok(None);
        }
        let retention = match (
            out.object_lock_mode()
                .and_then(|m| from_lock_mode(m.as_str())),
            out.object_lock_retain_until_date().and_then(from_datetime),
        ) {
            (Some(mode), Some(until)) => Some(Retention { mode, until }),
            _ => None,
        };
        Ok(Some(ObjectHead {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            version: VersionId(out.version_id().unwrap_or("null").to_string()),
            retention,
            legal_hold: out.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On),
        }))
    }

    fn list(
        &self,
        prefix: &str,
        visit: &mut dyn FnMut(ListEntry) -> Result<ControlFlow<()>>,
    ) -> Result<()> {
        check_prefix(prefix)?;
        let full = self.full(prefix);
        let mut token: Option<String> = None;
        loop {
            let req = self
                .client
                .list_objects_v2()
                .bucket(&self.cfg.bucket)
                .prefix(&full)
                .max_keys(self.page)
                .set_continuation_token(token.take());
            let page = self
                .block_on(req.send())
                .map_err(|e| classify("list", &full, e))?;
            for obj in page.contents() {
                let Some(k) = obj.key().and_then(|k| k.strip_prefix(&self.cfg.prefix)) else {
                    continue;
                };
                // not a coffer key (the write probe, foreign objects)
                let Ok(key) = ObjectKey::new(k) else { continue };
                let size = obj.size().unwrap_or(0).max(0) as u64;
                if visit(ListEntry { key, size })?.is_break() {
                    return Ok(());
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(()),
            }
        }
    }

    fn extend_retention(
        &self,
        key: &ObjectKey,
        version: Option<&VersionId>,
        retention: Retention,
    ) -> Result<Retention> {
        let full = self.full(key.as_str());
        let wanted = Retention::new(retention.mode, retention.until);
        let head = self
            .head(key, version)?
            .ok_or_else(|| ObjectError::NotFound {
                op: "extend retention",
                key: full.clone(),
            })?;
        let mode = match head.retention {
            // never shortens: nothing to ask for
            Some(have) if have.until >= wanted.until => return Ok(have),
            // the mode stays: changing it needs a bypass coffer never holds
            Some(have) => have.mode,
            None => wanted.mode,
        };
        let target = Retention {
            mode,
            until: wanted.until,
        };
        let req = self
            .client
            .put_object_retention()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .version_id(head.version.0.clone())
            .retention(
                ObjectLockRetention::builder()
                    .mode(lock_mode(mode).1)
                    .retain_until_date(to_datetime(target.until))
                    .build(),
            );
        match self.block_on(req.send()) {
            Ok(_) => Ok(target),
            Err(e) => {
                let err = classify("extend retention", &full, e);
                // a racer may have extended it further meanwhile: that is
                // what was asked for
                if let Some(now) = self
                    .head(key, Some(&head.version))?
                    .and_then(|h| h.retention)
                {
                    if now.until >= wanted.until {
                        return Ok(now);
                    }
                }
                Err(err.into())
            }
        }
    }

    fn set_legal_hold(&self, key: &ObjectKey, version: Option<&VersionId>, on: bool) -> Result<()> {
        let full = self.full(key.as_str());
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        let req = self
            .client
            .put_object_legal_hold()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .set_version_id(version.map(|v| v.0.clone()))
            .legal_hold(ObjectLockLegalHold::builder().status(status).build());
        self.block_on(req.send())
            .map_err(|e| classify("legal hold", &full, e))?;
        Ok(())
    }

    fn delete(&self, key: &ObjectKey) -> Result<Option<VersionId>> {
        let full = self.full(key.as_str());
        let req = self
            .client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(&full);
        let out = self
            .block_on(req.send())
            .map_err(|e| classify("delete", &full, e))?;
        Ok(out.version_id().map(|v| VersionId(v.to_string())))
    }

    fn list_versions(&self, key: &ObjectKey) -> Result<Vec<ObjectVersion>> {
        let full = self.full(key.as_str());
        // (version, newest-first sort key)
        let mut found: Vec<(ObjectVersion, Option<SystemTime>)> = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let req = self
                .client
                .list_object_versions()
                .bucket(&self.cfg.bucket)
                .prefix(&full)
                .max_keys(self.page)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take());
            let page = self
                .block_on(req.send())
                .map_err(|e| classify("list versions", &full, e))?;
            // the prefix also matches longer keys; only this key counts
            for v in page.versions().iter().filter(|v| v.key() == Some(&full)) {
                found.push((
                    ObjectVersion {
                        version: VersionId(v.version_id().unwrap_or("null").to_string()),
                        is_latest: v.is_latest() == Some(true),
                        is_delete_marker: false,
                        size: v.size().unwrap_or(0).max(0) as u64,
                    },
                    v.last_modified().and_then(from_datetime),
                ));
            }
            for m in page
                .delete_markers()
                .iter()
                .filter(|m| m.key() == Some(&full))
            {
                found.push((
                    ObjectVersion {
                        version: VersionId(m.version_id().unwrap_or("null").to_string()),
                        is_latest: m.is_latest() == Some(true),
                        is_delete_marker: true,
                        size: 0,
                    },
                    m.last_modified().and_then(from_datetime),
                ));
            }
            if found.len() > MAX_VERSIONS_PER_KEY {
                return Err(ObjectError::Refused {
                    op: "list versions",
                    key: full,
                    reason: format!("more than {MAX_VERSIONS_PER_KEY} versions"),
                }
                .into());
            }
            // keys come in order: past this key, nothing more of it follows
            let past = page
                .versions()
                .iter()
                .filter_map(|v| v.key())
                .chain(page.delete_markers().iter().filter_map(|m| m.key()))
                .any(|k| k > full.as_str());
            if page.is_truncated() != Some(true) || past {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        found.sort_by(|a, b| b.0.is_latest.cmp(&a.0.is_latest).then(b.1.cmp(&a.1)));
        Ok(found.into_iter().map(|(v, _)| v).collect())
    }

    fn delete_version(&self, key: &ObjectKey, version: &VersionId) -> Result<()> {
        let full = self.full(key.as_str());
        // never .bypass_governance_retention(true): a governance lock binds
        // coffer as a compliance lock does
        let req = self
            .client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .version_id(version.0.clone());
        match self.block_on(req.send()) {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(classify("delete version", &full, e).into()),
        }
    }

    fn clock(&self) -> Result<SystemTime> {
        let capture = DateCapture::default();
        let req = self
            .client
            .head_bucket()
            .bucket(&self.cfg.bucket)
            .customize()
            .interceptor(capture.clone())
            .send();
        // an error answer carries a Date too; only no answer at all fails
        let sent = self.block_on(req);
        let date = capture.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let unavailable = |reason: String| ObjectError::Unavailable {
            op: "clock",
            key: self.cfg.bucket.clone(),
            reason,
        };
        let Some(date) = date else {
            return Err(unavailable(match sent {
                Err(e) => DisplayErrorContext(&e).to_string(),
                Ok(_) => "the answer has no Date header".into(),
            })
            .into());
        };
        DateTime::from_str(&date, DateTimeFormat::HttpDate)
            .ok()
            .and_then(|d| from_datetime(&d))
            .ok_or_else(|| unavailable(format!("Date header {date:?} is not an HTTP date")).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_profiles_parse() {
        let text = "# comment\n[default]\naws_access_key_id = AK\naws_secret_access_key=SK \n\n\
                    [other]\n; c\naws_access_key_id=A2\naws_secret_access_key=S2\naws_session_token = T\n";
        let c = parse_credentials(text, "default").unwrap();
        assert_eq!(c.access_key_id, "AK");
        assert_eq!(c.secret_access_key.as_str(), "SK");
        assert!(c.session_token.is_none());
        let c = parse_credentials(text, "other").unwrap();
        assert_eq!(c.session_token.as_deref().map(String::as_str), Some("T"));
        assert!(!format!("{c:?}").contains("S2"), "the secret never prints");
        assert!(parse_credentials(text, "none")
            .unwrap_err()
            .contains("no profile [none]"));
        let e = parse_credentials("[default]\naws_access_key_id = AK\n", "default").unwrap_err();
        assert!(e.contains("aws_secret_access_key"), "{e}");
        assert!(parse_credentials("[default]\ngarbage\n", "default").is_err());
    }

    /// A temporary credentials file of mode 0600.
    fn creds_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("creds");
        std::fs::write(
            &p,
            "[default]\naws_access_key_id=a\naws_secret_access_key=b\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, p)
    }

    #[test]
    fn a_credentials_file_others_can_read_is_refused() {
        let (_dir, p) = creds_file();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = load_credentials(&p, "default");
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("readable by group or others"), "{e}");
            }
        }
    }

    #[test]
    fn dropping_it_inside_an_async_task_does_not_panic() {
        let (_dir, creds) = creds_file();
        let b = S3Backend::connect(S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "b".into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            credentials_file: creds,
            profile: "default".into(),
            path_style: true,
            lock_mode: LockMode::Compliance,
            head_before_put: false,
            lease: None,
        })
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move { drop(b) });
    }

    #[test]
    fn lock_modes_round_trip() {
        for m in [LockMode::Compliance, LockMode::Governance] {
            assert_eq!(from_lock_mode(lock_mode(m).0.as_str()), Some(m));
            assert_eq!(from_lock_mode(lock_mode(m).1.as_str()), Some(m));
        }
        assert_eq!(from_lock_mode("OFF"), None);
    }

    #[test]
    fn config_defaults_are_the_strict_ones() {
        let c: S3Config = toml::from_str(
            "endpoint = \"http://127.0.0.1:8333\"\nbucket = \"b\"\nregion = \"us-east-1\"\n\
             credentials_file = \"/etc/coffer/s3.credentials\"\n",
        )
        .unwrap();
        assert_eq!(c.lock_mode, LockMode::Compliance);
        assert!(c.path_style && !c.head_before_put);
        assert_eq!(c.profile, "default");
        assert!(toml::from_str::<S3Config>("bucket = \"b\"\nunknown = 1\n").is_err());
    }
}
