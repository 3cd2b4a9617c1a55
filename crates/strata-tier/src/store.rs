//! The object store seam: a client built from Strata's settings, every call instrumented.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use strata_telemetry::TierMetrics;
use tracing::{debug, info, warn};

use crate::error::{Result, TierError};

/// Where objects live, as the operator configured it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key relative to the store's prefix.
    pub key: String,
    pub size: u64,
    pub last_modified_ms: i64,
}

/// An object store with a key prefix, instrumented.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    description: String,
    metrics: TierMetrics,
}

/// Static credentials of `AWS_PROFILE` (else the `default` profile) from the shared
/// credentials file, for when no keys are in the environment (object_store reads only
/// environment variables, web identity and instance metadata), in the AWS SDKs' order.
/// SSO, assume-role and `credential_process` profiles are not supported.
fn profile_credentials() -> Option<(String, String, Option<String>)> {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
        return None;
    }
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(file).ok()?;
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
    Some((key?, secret?, token))
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

impl Store {
    /// Builds the client for `cfg`. A `file://` directory is created if missing.
    pub fn open(cfg: &StoreConfig, metrics: TierMetrics) -> Result<Self> {
        let url = cfg.url.as_str();
        if let Some(dir) = url.strip_prefix("file://") {
            let dir = PathBuf::from(dir);
            if !dir.is_absolute() {
                return Err(bad_url(
                    url,
                    "a file:// URL needs an absolute path, as in file:///var/lib/strata/objects",
                ));
            }
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
                metrics,
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad_url(url, "expected file:///path or s3://bucket/prefix"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad_url(url, "no bucket name"));
        }
        let region = cfg
            .s3_region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&region)
            .with_allow_http(cfg.s3_allow_http)
            .with_virtual_hosted_style_request(!cfg.s3_path_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(15),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60))
                    .with_allow_http(cfg.s3_allow_http),
            );
        if let Some(endpoint) = &cfg.s3_endpoint {
            b = b.with_endpoint(if cfg.s3_path_style {
                endpoint.clone()
            } else {
                bucket_endpoint(endpoint, bucket)
            });
        }
        if let Some((key, secret, token)) = profile_credentials() {
            b = b.with_access_key_id(key).with_secret_access_key(secret);
            if let Some(t) = token {
                b = b.with_token(t);
            }
        }
        let s3 = b.build().map_err(|e| bad_url(url, e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        Ok(Self {
            inner: Arc::new(s3),
            prefix: (!prefix.is_empty()).then(|| Path::from(prefix)),
            description: match &cfg.s3_endpoint {
                Some(e) => format!("{url} at {e}"),
                None => url.to_string(),
            },
            metrics,
        })
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

    /// Runs `call` as operation `op` on `key`, counting it by outcome and timing it.
    async fn instrumented<T>(
        &self,
        op: &'static str,
        key: &str,
        call: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(object_store::Error::NotFound { .. }) => "not_found",
            Err(_) => "error",
        };
        self.metrics
            .objstore_requests_total
            .with_label_values(&[op, outcome])
            .inc();
        self.metrics
            .objstore_request_duration_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(|source| TierError::Store {
            op,
            key: key.to_string(),
            source,
        })
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key);
        self.instrumented("put", key, self.inner.put(&path, PutPayload::from(data)))
            .await
            .map(|_| ())
    }

    /// Uploads `size` bytes of `file`: one PUT up to `part_size`, otherwise a multipart
    /// upload with up to `concurrency` parts in flight.
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
            .instrumented("put_multipart", key, self.inner.put_multipart(&path))
            .await?;
        let mut in_flight = FuturesUnordered::new();
        let sent = async {
            let mut at = 0u64;
            while at < size {
                let len = (size - at).min(part_size as u64) as usize;
                let chunk = read(at, len).await?;
                let part = upload.put_part(PutPayload::from(chunk));
                in_flight.push(self.instrumented("upload_part", key, part));
                at += len as u64;
                while in_flight.len() >= concurrency.max(1) {
                    in_flight.next().await.transpose()?;
                }
            }
            while in_flight.next().await.transpose()?.is_some() {}
            self.instrumented("complete_multipart", key, upload.complete())
                .await
                .map(|_| ())
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

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let whole = async { self.inner.get(&path).await?.bytes().await };
        self.instrumented("get", key, whole).await
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key);
        self.instrumented("get_range", key, self.inner.get_range(&path, range))
            .await
    }

    /// Deletes an object; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match self
            .instrumented("delete", key, self.inner.delete(&path))
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
            .instrumented("list", under, self.inner.list(Some(&path)).try_collect())
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

    /// Writes, reads back and deletes a probe object, and explains what is wrong if any
    /// step fails (bucket missing, credentials refused, endpoint unreachable).
    pub async fn check(&self) -> Result<()> {
        let key = format!("_strata/probe-{}", uuid::Uuid::new_v4());
        let payload = Bytes::from_static(b"strata start-up check");
        let explain = |e: TierError| TierError::Check {
            store: self.description.clone(),
            reason: diagnose(&e),
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
}

/// Turns an object-store failure into the operator's next step.
fn diagnose(e: &TierError) -> String {
    let text = format!("{e}");
    let chain = match e {
        TierError::Store { source, .. } => format!("{source:?}"),
        _ => String::new(),
    };
    let all = format!("{text} {chain}");
    let hint = if all.contains("NoSuchBucket") || all.contains("bucket does not exist") {
        "the bucket does not exist: create it, or fix the bucket name in --object-store"
    } else if all.contains("InvalidAccessKeyId")
        || all.contains("SignatureDoesNotMatch")
        || all.contains("403")
        || all.contains("AccessDenied")
    {
        "the credentials were refused: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, web identity) and the bucket policy"
    } else if all.contains("Connection refused")
        || all.contains("dns error")
        || all.contains("error sending request")
        || all.contains("timed out")
    {
        "the endpoint cannot be reached: check --s3-endpoint, --s3-allow-http and the network"
    } else {
        "see the error above"
    };
    debug!(error = %all, "object store check failed");
    format!("{text} ({hint})")
}

#[cfg(test)]
mod tests {
    use super::bucket_endpoint;

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
