//! The object store seam: a client built from Strata's settings, every call instrumented.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use strata_telemetry::TierMetrics;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::{Result, TierError};
use parking_lot::Mutex;

/// Where objects live, as the operator configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `file:///absolute/dir` or `s3://bucket/optional/prefix`.
    pub url: String,
    /// S3 endpoint for S3-compatible stores (MinIO, Ceph RGW, ...); AWS if unset.
    pub s3_endpoint: Option<String>,
    /// S3 region; `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Allow `http://` endpoints.
    pub s3_allow_http: bool,
    /// Path-style addressing (`endpoint/bucket/key`), as most S3-compatible stores want.
    pub s3_path_style: bool,
    /// Longest one request may take before it counts as failed (plus a second for each
    /// MiB it carries), so a hung store shows within seconds.
    pub request_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
            s3_path_style: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Default of [`StoreConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variables the S3 client reads (`AWS_*`, and `HOME` for the shared
/// credentials file): the process's own, or a map a test makes.
pub type Env = BTreeMap<String, String>;

/// The `AWS_*` and `HOME` variables of this process.
pub fn process_env() -> Env {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_") || k == "HOME")
        .collect()
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key relative to the store's prefix.
    pub key: String,
    pub size: u64,
    pub last_modified_ms: i64,
}

/// Names a topic by its id, for the per-topic cost metrics: keys carry topic ids, and
/// the broker, which knows the names, installs one with [`Store::set_topic_namer`].
pub type TopicNamer = Arc<dyn Fn(Uuid) -> Option<String> + Send + Sync>;

/// An object store with a key prefix, instrumented.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    description: String,
    /// Where the S3 client gets its credentials, for explaining a refusal.
    credentials: Credentials,
    request_timeout: Duration,
    health: Arc<Health>,
    metrics: TierMetrics,
    topic_namer: Arc<OnceLock<TopicNamer>>,
    /// Names the namer gave, by topic id: the namer looks through the metadata, and
    /// every request asks. Entries of deleted topics go with their series
    /// ([`Store::forget_topics_except`]).
    topic_names: Arc<Mutex<HashMap<Uuid, String>>>,
}

/// Every operation an attempt is counted under: the `op` label values of the
/// per-topic request series, removed with their topic.
const OPS: [&str; 9] = [
    "put",
    "put_multipart",
    "upload_part",
    "complete_multipart",
    "get",
    "get_range",
    "delete",
    "list",
    "head",
];
/// The `direction` label values of the per-topic byte series.
const DIRECTIONS: [&str; 2] = ["upload", "download"];

/// Where the S3 client's credentials come from, in the order the AWS SDKs look.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Credentials {
    /// A local directory needs none.
    None,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    Environment,
    /// Static keys of a profile in the shared credentials file.
    Profile { profile: String, file: PathBuf },
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` (IRSA on EKS).
    WebIdentity,
    /// The ECS/EKS container credentials endpoint.
    Container,
    /// Nothing configured: the instance metadata service is the last resort.
    InstanceMetadata { endpoint: String },
    /// `AWS_SKIP_SIGNATURE`: anonymous requests.
    Anonymous,
}

/// A profile's key id, secret key and session token.
type ProfileKeys = (String, String, Option<String>);

/// Static credentials of `AWS_PROFILE` (else the `default` profile) from the shared
/// credentials file, for when no keys are in the environment (object_store reads only
/// environment variables, web identity and instance metadata), in the AWS SDKs' order.
/// SSO, assume-role and `credential_process` profiles are not supported.
/// Returns the profile, the file and the keys found (`None` if the file or the keys are
/// missing).
fn profile_credentials(env: &Env) -> (String, PathBuf, Option<ProfileKeys>) {
    let profile = env
        .get("AWS_PROFILE")
        .cloned()
        .unwrap_or_else(|| "default".to_string());
    let file = env
        .get("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| {
            env.get("HOME")
                .map(|h| PathBuf::from(h).join(".aws/credentials"))
        })
        .unwrap_or_else(|| PathBuf::from("~/.aws/credentials"));
    let Ok(text) = std::fs::read_to_string(&file) else {
        return (profile, file, None);
    };
    let mut in_section = false;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_section = name.trim() == profile;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    let found = key.zip(secret).map(|(k, s)| (k, s, token));
    (profile, file, found)
}

/// The endpoint of virtual-hosted-style requests to `bucket`: object_store expects the
/// bucket in the host (`http://bucket.minio:9000`), so a custom endpoint given without
/// it gets it, and the bucket is not lost from every request.
fn bucket_endpoint(endpoint: &str, bucket: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) if !rest.starts_with(&format!("{bucket}.")) => {
            format!("{scheme}://{bucket}.{rest}")
        }
        _ => endpoint.to_string(),
    }
}

fn bad_url(url: &str, reason: impl Into<String>) -> TierError {
    TierError::BadUrl {
        url: url.to_string(),
        reason: reason.into(),
    }
}

fn bad_setting(reason: impl Into<String>) -> TierError {
    TierError::BadSetting(reason.into())
}

/// Whether `value` can go into an HTTP header as it is (visible ASCII and spaces), as
/// the S3 client puts keys, tokens and the region into signed headers.
fn header_safe(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
}

/// An S3 region name: letters, digits and '-' (`us-east-1`, `eu-central-2`; MinIO and
/// Ceph accept any such name).
fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A bucket name that can go into a URL path, and into a host name when `in_host`.
fn check_bucket(url: &str, bucket: &str, in_host: bool) -> Result<()> {
    if bucket.is_empty() {
        return Err(bad_url(url, "no bucket name"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    {
        return Err(bad_url(
            url,
            format!("bucket name {bucket:?} may contain only letters, digits, '.', '-' and '_'"),
        ));
    }
    if in_host
        && (bucket.bytes().any(|b| b.is_ascii_uppercase() || b == b'_')
            || bucket.starts_with(['.', '-'])
            || bucket.ends_with(['.', '-']))
    {
        return Err(bad_url(
            url,
            format!(
                "bucket name {bucket:?} cannot be part of a host name (virtual-hosted \
                 requests put it there): use --s3-path-style, or a lower-case bucket name"
            ),
        ));
    }
    Ok(())
}

/// An S3 client's settings, checked: everything the client would otherwise reject with
/// an unhelpful message, or panic on, is refused here with one that names the flag.
struct S3Settings {
    builder: AmazonS3Builder,
    prefix: String,
    description: String,
    credentials: Credentials,
}

impl StoreConfig {
    /// Checks the settings without touching the disk or the network.
    pub fn validate(&self) -> Result<()> {
        if self.url.starts_with("file://") {
            return self.local_dir().map(|_| ());
        }
        self.s3_settings(&process_env())?
            .builder
            .build()
            .map(|_| ())
            .map_err(|e| bad_url(&self.url, e.to_string()))
    }

    fn local_dir(&self) -> Result<PathBuf> {
        let url = self.url.as_str();
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        if !dir.is_absolute() {
            return Err(bad_url(
                url,
                "a file:// URL needs an absolute path, as in file:///var/lib/strata/objects",
            ));
        }
        Ok(dir)
    }

    fn s3_settings(&self, env: &Env) -> Result<S3Settings> {
        let url = self.url.as_str();
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad_url(url, "expected file:///path or s3://bucket/prefix"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let region = self
            .s3_region
            .clone()
            .or_else(|| env.get("AWS_REGION").cloned())
            .or_else(|| env.get("AWS_DEFAULT_REGION").cloned())
            .unwrap_or_else(|| "us-east-1".to_string());
        if !valid_region(&region) {
            return Err(bad_setting(format!(
                "S3 region {region:?} is not a region name (letters, digits and '-', as in \
                 us-east-1); set --s3-region"
            )));
        }
        let mut builder = AmazonS3Builder::new();
        for (k, v) in env {
            if k.starts_with("AWS_")
                && let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                builder = builder.with_config(key, v);
            }
        }
        // The endpoint in force: ours, else AWS_ENDPOINT(_URL) from the environment.
        let endpoint = match &self.s3_endpoint {
            Some(e) => Some(e.clone()),
            None => builder
                .get_config_value(&AmazonS3ConfigKey::S3Endpoint)
                .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::Endpoint)),
        };
        let mut path_style = self.s3_path_style;
        let mut notes = Vec::new();
        if let Some(endpoint) = &endpoint {
            let parsed = url::Url::parse(endpoint).map_err(|e| {
                bad_setting(format!(
                    "S3 endpoint {endpoint:?} is not a URL ({e}); write it as \
                     http://HOST:PORT or https://HOST"
                ))
            })?;
            let host = match parsed.host() {
                Some(h) if matches!(parsed.scheme(), "http" | "https") => h,
                _ => {
                    return Err(bad_setting(format!(
                        "S3 endpoint {endpoint:?} needs http:// or https:// and a host, \
                         as in http://minio:9000"
                    )));
                }
            };
            if parsed.scheme() == "http" && !self.s3_allow_http {
                return Err(bad_setting(format!(
                    "S3 endpoint {endpoint:?} is plain HTTP, which is refused unless you \
                     allow it: add --s3-allow-http (STRATA_S3_ALLOW_HTTP=true, or \
                     s3_allow_http = true in the config file), or use an https:// endpoint"
                )));
            }
            if !path_style && matches!(host, url::Host::Ipv4(_) | url::Host::Ipv6(_)) {
                // The bucket cannot go into an IP address: only path style can work.
                path_style = true;
                notes.push(format!(
                    "endpoint {endpoint} is an IP address, so requests use path-style \
                     addressing (endpoint/bucket/key) as if --s3-path-style were given"
                ));
            }
        }
        check_bucket(url, bucket, !path_style)?;
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
        ] {
            if env.get(var).is_some_and(|v| !header_safe(v)) {
                return Err(bad_setting(format!(
                    "{var} contains characters that cannot be sent in an HTTP header \
                     (a line break, or non-ASCII text): check how it was set"
                )));
            }
        }
        builder = builder
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_allow_http(self.s3_allow_http)
            .with_virtual_hosted_style_request(!path_style)
            // Strata retries requests itself (see `Store::call`), so that every failed
            // attempt is counted and an outage shows at once instead of after retries.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: Duration::from_secs(1),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(self.request_timeout)
                    // A backstop only: each attempt has its own, shorter, deadline.
                    .with_timeout(Duration::from_secs(600))
                    .with_allow_http(self.s3_allow_http),
            );
        // Over TLS, signing each upload's payload only hashes every byte once more
        // (SHA-256 was a quarter of the broker's CPU while producing to a tiered topic):
        // TLS already protects the bytes in transit, and every batch carries its CRC.
        // Over plain HTTP the signature is the only integrity check, so it stays. An
        // explicit AWS_UNSIGNED_PAYLOAD wins.
        let over_tls = endpoint
            .as_deref()
            .is_none_or(|e| e.starts_with("https://"));
        if over_tls && !env.contains_key("AWS_UNSIGNED_PAYLOAD") {
            builder = builder.with_unsigned_payload(true);
        }
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(if path_style {
                endpoint.clone()
            } else {
                bucket_endpoint(endpoint, bucket)
            });
        }
        let var = |k: &str| env.get(k).filter(|v| !v.is_empty());
        let credentials = if var("AWS_SKIP_SIGNATURE").is_some_and(|v| v == "true") {
            Credentials::Anonymous
        } else if var("AWS_ACCESS_KEY_ID").is_some() {
            Credentials::Environment
        } else {
            match profile_credentials(env) {
                (profile, file, Some((key, secret, token))) => {
                    for (what, v) in [("key id", &key), ("secret key", &secret)] {
                        if !header_safe(v) {
                            return Err(bad_setting(format!(
                                "the {what} of profile {profile:?} in {} contains characters \
                                 that cannot be sent in an HTTP header",
                                file.display()
                            )));
                        }
                    }
                    builder = builder
                        .with_access_key_id(key)
                        .with_secret_access_key(secret);
                    if let Some(t) = token {
                        builder = builder.with_token(t);
                    }
                    Credentials::Profile { profile, file }
                }
                _ if var("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
                    && var("AWS_ROLE_ARN").is_some() =>
                {
                    Credentials::WebIdentity
                }
                _ if var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
                    || var("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some() =>
                {
                    Credentials::Container
                }
                _ => Credentials::InstanceMetadata {
                    endpoint: var("AWS_METADATA_ENDPOINT")
                        .cloned()
                        .unwrap_or_else(|| "http://169.254.169.254".to_string()),
                },
            }
        };
        for note in notes {
            info!(store = url, "{note}");
        }
        Ok(S3Settings {
            builder,
            prefix: prefix.trim_matches('/').to_string(),
            description: match &endpoint {
                Some(e) => format!("{url} at {e}"),
                None => url.to_string(),
            },
            credentials,
        })
    }
}

impl Store {
    /// Builds the client for `cfg`, with credentials from this process's environment. A
    /// `file://` directory is created if missing.
    pub fn open(cfg: &StoreConfig, metrics: TierMetrics) -> Result<Self> {
        Self::open_with_env(cfg, &process_env(), metrics)
    }

    /// [`Store::open`] with the `AWS_*` variables (and `HOME`) taken from `env`.
    pub fn open_with_env(cfg: &StoreConfig, env: &Env, metrics: TierMetrics) -> Result<Self> {
        let url = cfg.url.as_str();
        let request_timeout = if cfg.request_timeout.is_zero() {
            DEFAULT_REQUEST_TIMEOUT
        } else {
            cfg.request_timeout
        };
        let health = Arc::new(Health::new(url, metrics.clone()));
        if url.starts_with("file://") {
            let dir = cfg.local_dir()?;
            std::fs::create_dir_all(&dir).map_err(|e| TierError::Io {
                op: "create",
                path: dir.clone(),
                source: e,
            })?;
            let local =
                LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad_url(url, e.to_string()))?;
            return Ok(Self {
                inner: Arc::new(local),
                prefix: None,
                description: url.to_string(),
                credentials: Credentials::None,
                request_timeout,
                health,
                metrics,
                topic_namer: Arc::default(),
                topic_names: Arc::default(),
            });
        }
        let settings = cfg.s3_settings(env)?;
        let s3 = settings
            .builder
            .build()
            .map_err(|e| bad_url(url, e.to_string()))?;
        Ok(Self {
            inner: Arc::new(s3),
            prefix: (!settings.prefix.is_empty()).then(|| Path::from(settings.prefix.as_str())),
            description: settings.description,
            credentials: settings.credentials,
            request_timeout,
            health,
            metrics,
            topic_namer: Arc::default(),
            topic_names: Arc::default(),
        })
    }

    /// Installs the names the per-topic metrics use (once; later calls are ignored).
    /// Without it, a topic is labelled by its id; with it, a topic the namer does not
    /// know (deleted, or not in this broker's metadata yet) only counts in the totals.
    pub fn set_topic_namer(&self, namer: TopicNamer) {
        let _ = self.topic_namer.set(namer);
    }

    /// The `topic` label of a key under a topic's directory (`<topic-id>/...`).
    fn topic_label(&self, key: &str) -> Option<String> {
        let id = Uuid::try_parse(key.split('/').next()?).ok()?;
        if let Some(name) = self.topic_names.lock().get(&id) {
            return Some(name.clone());
        }
        let Some(namer) = self.topic_namer.get() else {
            return Some(id.to_string());
        };
        let name = namer(id)?;
        self.topic_names.lock().insert(id, name.clone());
        Some(name)
    }

    /// Removes the per-topic series of every topic not in `live` (the ids the metadata
    /// has now), so deleted topics do not stay in the metrics for good. A name that a
    /// live topic has too (deleted and created again) keeps its series.
    pub fn forget_topics_except(&self, live: &BTreeSet<Uuid>) {
        let gone: Vec<String> = {
            let mut names = self.topic_names.lock();
            let dead: Vec<String> = names
                .iter()
                .filter(|(id, _)| !live.contains(id))
                .map(|(_, name)| name.clone())
                .collect();
            names.retain(|id, _| live.contains(id));
            let kept: HashSet<&String> = names.values().collect();
            dead.into_iter().filter(|n| !kept.contains(n)).collect()
        };
        for name in &gone {
            for op in OPS {
                let _ = self
                    .metrics
                    .objstore_topic_requests_total
                    .remove_label_values(&[name.as_str(), op]);
            }
            for direction in DIRECTIONS {
                let _ = self
                    .metrics
                    .objstore_topic_bytes_total
                    .remove_label_values(&[name.as_str(), direction]);
            }
        }
    }

    /// Counts `bytes` moved in `direction` for the topic `key` belongs to.
    fn count_topic_bytes(&self, key: &str, direction: &str, bytes: usize) {
        debug_assert!(
            DIRECTIONS.contains(&direction),
            "{direction} is missing from DIRECTIONS"
        );
        if let Some(topic) = self.topic_label(key) {
            self.metrics
                .objstore_topic_bytes_total
                .with_label_values(&[topic.as_str(), direction])
                .inc_by(bytes as u64);
        }
    }

    /// How the store was configured, for logs and errors.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The full object path of `key` (whose `/`s separate path parts).
    fn path(&self, key: &str) -> Path {
        match &self.prefix {
            Some(p) => Path::from(format!("{p}/{key}")),
            None => Path::from(key),
        }
    }

    /// The deadline of one attempt that carries `bytes`: the request timeout plus a
    /// second per MiB (a store slower than 1 MiB/s counts as failing).
    fn deadline(&self, bytes: u64) -> Duration {
        self.request_timeout + Duration::from_secs(bytes >> 20)
    }

    /// One attempt of operation `op` on `key`, carrying `bytes`, under its deadline:
    /// counted by outcome, timed, and reported to the store's health.
    async fn attempt<T>(
        &self,
        op: &'static str,
        key: &str,
        bytes: u64,
        call: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        debug_assert!(OPS.contains(&op), "{op} is missing from OPS");
        let started = Instant::now();
        let deadline = self.deadline(bytes);
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(r) => r.map_err(|source| TierError::Store {
                op,
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(TierError::Timeout {
                op,
                key: key.to_string(),
                after: deadline,
            }),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.is_not_found() => "not_found",
            Err(TierError::Timeout { .. }) => "timeout",
            Err(_) => "error",
        };
        self.metrics
            .objstore_requests_total
            .with_label_values(&[op, outcome])
            .inc();
        if let Some(topic) = self.topic_label(key) {
            self.metrics
                .objstore_topic_requests_total
                .with_label_values(&[topic.as_str(), op])
                .inc();
        }
        self.metrics
            .objstore_request_duration_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Err(e) if e.is_store_failure() => self.health.failed(op, key, e),
            _ => self.health.answered(),
        }
        result
    }

    /// An idempotent request, tried up to [`ATTEMPTS`] times while it fails in a way
    /// that may pass (a timeout, a connection error, a 5xx), with backoff in between.
    /// Every attempt is counted (see [`Store::attempt`]).
    async fn call<T, F, Fut>(&self, op: &'static str, key: &str, bytes: u64, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut backoff = RETRY_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.attempt(op, key, bytes, f()).await {
                Err(e) if attempt < ATTEMPTS && e.is_transient() => {
                    debug!(op, key, attempt, error = %e, "object store request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key);
        let bytes = data.len() as u64;
        self.call("put", key, bytes, || {
            self.inner.put(&path, PutPayload::from(data.clone()))
        })
        .await?;
        self.count_topic_bytes(key, "upload", data.len());
        Ok(())
    }

    /// Uploads `size` bytes of `file`: one PUT up to `part_size`, otherwise a multipart
    /// upload with up to `concurrency` parts in flight. A failed part fails the upload
    /// (a part cannot be sent again under the same number); the caller tries again.
    pub async fn put_file(
        &self,
        key: &str,
        file: Arc<File>,
        source: &FsPath,
        size: u64,
        part_size: usize,
        concurrency: usize,
    ) -> Result<()> {
        let read = |at: u64, len: usize| {
            let file = file.clone();
            let source = source.to_path_buf();
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, at)
                        .map(|()| Bytes::from(buf))
                        .map_err(|e| TierError::Io {
                            op: "read",
                            path: source,
                            source: e,
                        })
                })
                .await
                .map_err(|e| TierError::Cache(format!("read task failed: {e}")))?
            }
        };
        if size <= part_size as u64 {
            let data = read(0, size as usize).await?;
            return self.put(key, data).await;
        }
        let path = self.path(key);
        let mut upload = self
            .attempt("put_multipart", key, 0, self.inner.put_multipart(&path))
            .await?;
        let mut in_flight = FuturesUnordered::new();
        let sent = async {
            let mut at = 0u64;
            while at < size {
                let len = (size - at).min(part_size as u64) as usize;
                let chunk = read(at, len).await?;
                let part = upload.put_part(PutPayload::from(chunk));
                in_flight.push(self.attempt("upload_part", key, len as u64, part));
                at += len as u64;
                while in_flight.len() >= concurrency.max(1) {
                    in_flight.next().await.transpose()?;
                }
            }
            while in_flight.next().await.transpose()?.is_some() {}
            self.attempt("complete_multipart", key, 0, upload.complete())
                .await?;
            self.count_topic_bytes(key, "upload", size as usize);
            Ok(())
        }
        .await;
        if sent.is_err() {
            // Parts of an unfinished upload are invisible to listings (and so to the
            // garbage collector) but still stored: abort it.
            drop(in_flight);
            if let Err(abort) = upload.abort().await {
                warn!(key, error = %abort, "could not abort a failed multipart upload");
            }
        }
        sent
    }

    /// A whole (small) object: an index file, a probe.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let data = self
            .call("get", key, WHOLE_GET_BYTES, || async {
                self.inner.get(&path).await?.bytes().await
            })
            .await?;
        self.count_topic_bytes(key, "download", data.len());
        Ok(data)
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key);
        let bytes = range.end.saturating_sub(range.start);
        let data = self
            .call("get_range", key, bytes, || {
                self.inner.get_range(&path, range.clone())
            })
            .await?;
        self.count_topic_bytes(key, "download", data.len());
        Ok(data)
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match self
            .call("delete", key, 0, || self.inner.delete(&path))
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Every object whose key starts with `under` (keys relative to the prefix).
    pub async fn list(&self, under: &str) -> Result<Vec<ObjectInfo>> {
        let path = self.path(under.trim_end_matches('/'));
        let base = self
            .prefix
            .as_ref()
            .map(|p| format!("{p}/"))
            .unwrap_or_default();
        let listed: Vec<object_store::ObjectMeta> = self
            .call("list", under, WHOLE_GET_BYTES, || {
                self.inner.list(Some(&path)).try_collect()
            })
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let full = m.location.to_string();
                let key = full.strip_prefix(&base).unwrap_or(&full).to_string();
                key.starts_with(under).then(|| ObjectInfo {
                    key,
                    size: m.size,
                    last_modified_ms: m.last_modified.timestamp_millis(),
                })
            })
            .collect())
    }

    /// The key as a user sees it in the bucket: with the store's prefix.
    pub fn full_key(&self, key: &str) -> String {
        self.path(key).to_string()
    }

    /// Writes, reads back and deletes a probe object, and explains what is wrong if any
    /// step fails (bucket missing, credentials missing or refused, endpoint unreachable).
    pub async fn check(&self) -> Result<()> {
        let key = format!("_strata/probe-{}", uuid::Uuid::new_v4());
        let payload = Bytes::from_static(b"strata start-up check");
        let explain = |e: TierError| TierError::Check {
            store: self.description.clone(),
            reason: diagnose(&e, &self.credentials),
        };
        self.put(&key, payload.clone()).await.map_err(explain)?;
        let back = self.get(&key).await.map_err(explain)?;
        if back != payload {
            return Err(TierError::Check {
                store: self.description.clone(),
                reason: "an object read back differs from what was written".into(),
            });
        }
        self.delete(&key).await.map_err(explain)?;
        info!(store = %self.description, "object store is reachable and writable");
        Ok(())
    }

    /// The store's state as requests found it.
    pub fn status(&self) -> StoreStatus {
        self.health.status()
    }

    /// Until `stop`, asks the store a cheap question (a HEAD of a key that need not
    /// exist) whenever it has answered nothing for [`PROBE_IDLE`], so an outage shows
    /// (and its end is noticed) even while no upload or remote read is running.
    pub async fn run_probe(self, stop: tokio_util::sync::CancellationToken) {
        let key = "_strata/health";
        let path = self.path(key);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROBE_TICK) => {}
            }
            if self.health.idle_for() >= PROBE_IDLE {
                let _ = self.attempt("head", key, 0, self.inner.head(&path)).await;
            }
        }
    }
}

/// Attempts of an idempotent request before its error is returned.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each next one.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Bytes a whole-object GET or a listing is given time for (its size is not known).
const WHOLE_GET_BYTES: u64 = 16 << 20;
/// How long the store may go without answering a request before the probe asks it.
pub const PROBE_IDLE: Duration = Duration::from_secs(2);
/// How often the probe looks.
const PROBE_TICK: Duration = Duration::from_secs(1);

/// The object store's state as requests found it, for health endpoints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    pub store: String,
    /// False from a failed request until one succeeds.
    pub available: bool,
    /// How long requests have been failing.
    pub unavailable_for_ms: Option<u64>,
    /// Failed requests since it became unavailable.
    pub failed_requests: u64,
    pub last_error: Option<String>,
}

/// Tracks outages: the first failed request of an outage and the first success after it
/// are logged (the requests in between only counted), and `strata_objstore_up` says
/// which state the store is in.
struct Health {
    store: String,
    state: Mutex<HealthState>,
    metrics: TierMetrics,
}

struct HealthState {
    failing_since: Option<Instant>,
    failures: u64,
    last_error: Option<String>,
    last_answer: Instant,
}

impl Health {
    fn new(store: &str, metrics: TierMetrics) -> Self {
        metrics.objstore_up.set(1);
        Self {
            store: store.to_string(),
            state: Mutex::new(HealthState {
                failing_since: None,
                failures: 0,
                last_error: None,
                last_answer: Instant::now(),
            }),
            metrics,
        }
    }

    fn answered(&self) {
        let mut s = self.state.lock();
        s.last_answer = Instant::now();
        if let Some(since) = s.failing_since.take() {
            info!(
                store = %self.store,
                after_ms = since.elapsed().as_millis() as u64,
                failed_requests = s.failures,
                "object store is answering again"
            );
            s.failures = 0;
            s.last_error = None;
            self.metrics.objstore_up.set(1);
        }
    }

    fn failed(&self, op: &str, key: &str, e: &TierError) {
        let mut s = self.state.lock();
        s.failures += 1;
        s.last_error = Some(e.to_string());
        if s.failing_since.is_none() {
            s.failing_since = Some(Instant::now());
            self.metrics.objstore_up.set(0);
            warn!(
                store = %self.store, op, key, error = %e,
                "object store request failed; until it answers again further failures are \
                 only counted (strata_objstore_requests_total)"
            );
        } else {
            debug!(store = %self.store, op, key, error = %e, "object store request failed");
        }
    }

    fn idle_for(&self) -> Duration {
        self.state.lock().last_answer.elapsed()
    }

    fn status(&self) -> StoreStatus {
        let s = self.state.lock();
        StoreStatus {
            store: self.store.clone(),
            available: s.failing_since.is_none(),
            unavailable_for_ms: s.failing_since.map(|t| t.elapsed().as_millis() as u64),
            failed_requests: s.failures,
            last_error: s.last_error.clone(),
        }
    }
}

/// Turns an object-store failure into the operator's next step.
fn diagnose(e: &TierError, credentials: &Credentials) -> String {
    let text = format!("{e}");
    let chain = match e {
        TierError::Store { source, .. } => format!("{source:?}"),
        _ => String::new(),
    };
    let all = format!("{text} {chain}");
    let hint = if all.contains("NoSuchBucket") || all.contains("bucket does not exist") {
        "the bucket does not exist: create it (aws s3 mb s3://BUCKET, or mc mb for MinIO; \
         add --endpoint-url for an S3-compatible store), or fix the bucket name in \
         --object-store"
            .to_string()
    } else if let Credentials::InstanceMetadata { endpoint } = credentials
        && all.contains(endpoint.as_str())
    {
        format!(
            "no credentials were found. Strata looked in the environment \
             (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: not set), the shared credentials \
             file (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials: no keys), \
             web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN: not set), container \
             credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: not set) and last the \
             instance metadata service at {endpoint}, which gave none"
        )
    } else if all.contains("InvalidAccessKeyId")
        || all.contains("SignatureDoesNotMatch")
        // The status as object_store shows it (Display, Debug), not any "403" (a port).
        || all.contains("403 Forbidden")
        || all.contains("status: 403")
        || all.contains("AccessDenied")
    {
        let from = match credentials {
            Credentials::Environment => {
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment".to_string()
            }
            Credentials::Profile { profile, file } => {
                format!("the keys of profile {profile:?} in {}", file.display())
            }
            Credentials::WebIdentity => "the web identity role (AWS_ROLE_ARN)".to_string(),
            Credentials::Container => "the container credentials".to_string(),
            Credentials::InstanceMetadata { .. } => "the instance profile's role".to_string(),
            Credentials::Anonymous => "anonymous access (AWS_SKIP_SIGNATURE)".to_string(),
            Credentials::None => "no credentials".to_string(),
        };
        format!("the credentials were refused: check {from} and the bucket policy")
    } else if all.contains("Connection refused")
        || all.contains("dns error")
        || all.contains("error sending request")
        || all.contains("timed out")
        || matches!(e, TierError::Timeout { .. })
    {
        "the endpoint cannot be reached: check --s3-endpoint, --s3-allow-http and the network"
            .to_string()
    } else {
        "the store's answer is quoted above".to_string()
    };
    debug!(error = %all, "object store check failed");
    format!("{text} ({hint})")
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use object_store::aws::AmazonS3ConfigKey;

    use super::{Env, StoreConfig, bucket_endpoint};

    fn unsigned_payload(endpoint: Option<&str>, env: &[(&str, &str)]) -> Option<String> {
        let cfg = StoreConfig {
            url: "s3://bucket/prefix".into(),
            s3_endpoint: endpoint.map(str::to_string),
            s3_allow_http: true,
            ..StoreConfig::default()
        };
        let env: Env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = cfg.s3_settings(&env).expect("valid settings");
        settings
            .builder
            .get_config_value(&AmazonS3ConfigKey::UnsignedPayload)
    }

    #[test]
    fn uploads_are_signed_over_plain_http_only() {
        assert_eq!(unsigned_payload(None, &[]).as_deref(), Some("true"));
        let tls = Some("https://s3.example.com");
        assert_eq!(unsigned_payload(tls, &[]).as_deref(), Some("true"));
        let plain = Some("http://127.0.0.1:9000");
        assert_eq!(unsigned_payload(plain, &[]).as_deref(), Some("false"));
        // The operator's explicit choice wins either way.
        let signed = [("AWS_UNSIGNED_PAYLOAD", "false")];
        assert_eq!(unsigned_payload(tls, &signed).as_deref(), Some("false"));
        let unsigned = [("AWS_UNSIGNED_PAYLOAD", "true")];
        assert_eq!(unsigned_payload(plain, &unsigned).as_deref(), Some("true"));
    }

    #[test]
    fn virtual_hosted_endpoints_name_the_bucket_in_the_host() {
        assert_eq!(
            bucket_endpoint("http://minio:9000", "logs"),
            "http://logs.minio:9000"
        );
        assert_eq!(
            bucket_endpoint("https://logs.s3.example.com", "logs"),
            "https://logs.s3.example.com"
        );
        assert_eq!(
            bucket_endpoint("https://s3.eu-west-1.amazonaws.com/", "b"),
            "https://b.s3.eu-west-1.amazonaws.com/"
        );
    }
}
