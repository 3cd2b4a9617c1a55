//! Conformance checks of the object-store seam, run against both kinds of store Strata
//! supports: a local directory (`file://`) and a real S3 server (a throw-away Ceph
//! radosgw started by `scripts/rgw.sh`, one per test, stopped when the test ends).
//!
//! Every check is an `async fn(Backend)`; `on_both_backends!` turns each into a
//! `file::<name>` and an `rgw::<name>` test. Checks that only make sense against S3
//! (start-up diagnosis of a missing bucket, refused credentials, an unreachable endpoint)
//! are plain tests below.
//!
//! radosgw needs `radosgw`, `ceph-mon` and `ceph-osd`, and the bucket is created with the
//! `aws` CLI of the repository's `.venv` (both installed by `scripts/install-test-deps.sh`).
//! A missing tool fails the test, it never skips it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_log::{LogConfig, LogManager, PartitionKey, SealedSegment, TailCache};
use strata_protocol::batch::test_util::{TestRecord, build_batch};
use strata_protocol::batch::{BatchHeader, HeaderIter, validate_all};
use strata_telemetry::Metrics;
use tempfile::TempDir;
use uuid::Uuid;

use crate::{
    BlockCache, CacheConfig, MAX_BLOCK_BYTES, RemoteSegment, Store, StoreConfig, TierError, layout,
};

// --- harness ----------------------------------------------------------------------------

const RGW_BUCKET: &str = "conformance";
/// Segment-sized multipart parts must be at least 5 MiB on S3 (all but the last).
const PART: usize = 5 * 1024 * 1024;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A throw-away Ceph radosgw (`scripts/rgw.sh`), stopped on drop.
struct Rgw {
    dir: TempDir,
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
}

impl Rgw {
    fn start() -> Self {
        // A start that fails is tried again on a fresh directory (a daemon can lose a race
        // for a port with a parallel test); every failure is reported on stderr.
        let mut failures = Vec::new();
        for _attempt in 0..3 {
            match Self::try_start() {
                Ok(rgw) => return rgw,
                Err(e) => {
                    eprintln!("{e}");
                    failures.push(e);
                }
            }
        }
        panic!(
            "scripts/rgw.sh start failed 3 times; radosgw, ceph-mon and ceph-osd come from \
             scripts/install-test-deps.sh:\n{}",
            failures.join("\n\n")
        );
    }

    fn try_start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("strata-tier-rgw")
            .tempdir()
            .unwrap();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/rgw.sh"))
            .arg("start")
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("running scripts/rgw.sh");
        if !out.status.success() {
            let mut logs = String::new();
            for name in [
                "ceph-cli.out",
                "osd-mkfs.out",
                "mon.out",
                "osd.out",
                "radosgw.out",
            ] {
                if let Ok(text) = std::fs::read_to_string(dir.path().join("log").join(name)) {
                    logs.push_str(&format!("--- {name}\n{text}\n"));
                }
            }
            // Stop whatever half-started (idempotent).
            let _ = Command::new("bash")
                .arg(repo_root().join("scripts/rgw.sh"))
                .arg("stop")
                .arg(dir.path())
                .status();
            return Err(format!(
                "scripts/rgw.sh start failed ({}):\n{}\n{logs}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let vars: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("rgw.sh start printed no {k}: {vars:?}"))
        };
        Ok(Self {
            endpoint: get("RGW_ENDPOINT"),
            access_key: get("AWS_ACCESS_KEY_ID"),
            secret_key: get("AWS_SECRET_ACCESS_KEY"),
            region: get("AWS_REGION"),
            dir,
        })
    }

    /// Creates a bucket with the `aws` CLI (object_store cannot create buckets).
    fn create_bucket(&self, bucket: &str) {
        let venv_aws = repo_root().join(".venv/bin/aws");
        let aws = if venv_aws.exists() {
            venv_aws
        } else {
            PathBuf::from("aws")
        };
        let out = Command::new(&aws)
            .args(["--endpoint-url", &self.endpoint, "s3", "mb"])
            .arg(format!("s3://{bucket}"))
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running {} (install it with scripts/install-test-deps.sh): {e}",
                    aws.display()
                )
            });
        assert!(
            out.status.success(),
            "aws s3 mb s3://{bucket} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn config(&self, url: &str) -> StoreConfig {
        StoreConfig {
            url: url.to_string(),
            s3_endpoint: Some(self.endpoint.clone()),
            s3_region: Some(self.region.clone()),
            s3_allow_http: true,
            s3_path_style: true,
            ..StoreConfig::default()
        }
    }

    fn open(&self, url: &str, metrics: &Metrics) -> Result<Store, TierError> {
        open_s3(
            &self.config(url),
            &self.access_key,
            &self.secret_key,
            metrics,
        )
    }
}

impl Drop for Rgw {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/rgw.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .output();
    }
}

/// Opens an S3 store with these credentials (as `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` in the environment it is given, nothing else).
fn open_s3(
    cfg: &StoreConfig,
    access_key: &str,
    secret_key: &str,
    metrics: &Metrics,
) -> Result<Store, TierError> {
    let env = BTreeMap::from([
        ("AWS_ACCESS_KEY_ID".to_string(), access_key.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), secret_key.to_string()),
    ]);
    Store::open_with_env(cfg, &env, metrics.tier.clone())
}

/// One store under test, with its own metrics registry.
struct Backend {
    kind: &'static str,
    store: Store,
    metrics: Metrics,
    /// The directory of a `file://` store (objects are files under it).
    dir: Option<PathBuf>,
    _tmp: TempDir,
    rgw: Option<Rgw>,
}

impl Backend {
    async fn file() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("objects");
        let metrics = Metrics::new().unwrap();
        let cfg = StoreConfig {
            url: format!("file://{}", dir.display()),
            ..StoreConfig::default()
        };
        let store = Store::open(&cfg, metrics.tier.clone()).unwrap();
        Self {
            kind: "file",
            store,
            metrics,
            dir: Some(dir),
            _tmp: tmp,
            rgw: None,
        }
    }

    /// A radosgw with a fresh bucket; the store has a key prefix, so every check also
    /// checks that keys come back relative to it.
    async fn rgw() -> Self {
        let rgw = Rgw::start();
        rgw.create_bucket(RGW_BUCKET);
        let metrics = Metrics::new().unwrap();
        let store = rgw
            .open(&format!("s3://{RGW_BUCKET}/strata/cluster-1"), &metrics)
            .unwrap();
        Self {
            kind: "rgw",
            store,
            metrics,
            dir: None,
            _tmp: tempfile::tempdir().unwrap(),
            rgw: Some(rgw),
        }
    }

    /// A scratch directory (block cache, segment files).
    fn scratch(&self, name: &str) -> PathBuf {
        let p = self._tmp.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `strata_objstore_requests_total{op, outcome}`.
    /// Blocks the cache's disk tier dropped, for any reason.
    fn disk_dropped(&self) -> u64 {
        let d = &self.metrics.tier.cache_disk_dropped_blocks_total;
        d.with_label_values(&["queue_full"]).get() + d.with_label_values(&["buffer_full"]).get()
    }

    /// Stores `size` bytes of `pattern(_, seed)` as `key` and returns them.
    async fn put_pattern(&self, key: &str, size: u64, seed: u64) -> Vec<u8> {
        let data = pattern(size as usize, seed);
        self.store
            .put(key, Bytes::from(data.clone()))
            .await
            .unwrap();
        data
    }

    fn requests(&self, op: &str, outcome: &str) -> u64 {
        self.metrics
            .tier
            .objstore_requests_total
            .with_label_values(&[op, outcome])
            .get()
    }

    fn read_bytes(&self, source: &str) -> u64 {
        self.metrics
            .tier
            .read_bytes_total
            .with_label_values(&[source])
            .get()
    }

    fn cache_requests(&self, result: &str) -> u64 {
        self.metrics
            .tier
            .cache_requests_total
            .with_label_values(&[result])
            .get()
    }

    async fn cache(&self, block_bytes: u64, readahead_blocks: u64) -> BlockCache {
        let dir = self.scratch(&format!("cache-{}", Uuid::new_v4()));
        self.cache_at(dir, block_bytes, readahead_blocks).await
    }

    /// A cache whose disk tier is in `dir` (which a later cache may open again).
    async fn cache_at(&self, dir: PathBuf, block_bytes: u64, readahead_blocks: u64) -> BlockCache {
        self.cache_sized(dir, 64 << 20, block_bytes, readahead_blocks)
            .await
    }

    async fn cache_sized(
        &self,
        dir: PathBuf,
        disk_bytes: usize,
        block_bytes: u64,
        readahead_blocks: u64,
    ) -> BlockCache {
        BlockCache::open(
            CacheConfig {
                dir,
                memory_bytes: 64 << 20,
                disk_bytes,
                block_bytes,
                readahead_blocks,
            },
            self.store.clone(),
            self.metrics.tier.clone(),
        )
        .await
        .unwrap()
    }

    /// The keys that really exist under the store's root, bypassing `Store::list`: files
    /// under the directory, or a listing of the whole bucket through an unprefixed store.
    async fn raw_keys(&self) -> Vec<String> {
        match (&self.dir, &self.rgw) {
            (Some(dir), _) => {
                let mut out = Vec::new();
                let mut stack = vec![dir.clone()];
                while let Some(d) = stack.pop() {
                    for e in std::fs::read_dir(&d).unwrap() {
                        let p = e.unwrap().path();
                        if p.is_dir() {
                            stack.push(p);
                        } else {
                            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
                            out.push(rel);
                        }
                    }
                }
                out.sort();
                out
            }
            (None, Some(rgw)) => {
                let m = Metrics::new().unwrap();
                let root = rgw.open(&format!("s3://{RGW_BUCKET}"), &m).unwrap();
                let mut keys: Vec<String> = root
                    .list("")
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|o| o.key)
                    .collect();
                keys.sort();
                keys
            }
            _ => unreachable!(),
        }
    }

    /// Where a key of the store under test really lives (see `raw_keys`).
    fn raw_key(&self, key: &str) -> String {
        match self.kind {
            "rgw" => format!("strata/cluster-1/{key}"),
            _ => key.to_string(),
        }
    }
}

/// Bytes that differ at every position, so a misplaced slice is caught.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `f` until it returns true, for at most `timeout`.
async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Backend::file().await).await;
                }
            )*
        }
        mod rgw {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::$check(super::Backend::rgw().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    put_get_and_ranges,
    missing_objects,
    delete_and_list,
    put_file_single_part,
    put_file_multipart,
    check_passes_and_leaves_nothing,
    cache_reads_equal_object_bytes,
    cache_second_read_issues_no_get,
    cache_concurrent_readers_share_one_get,
    cache_reads_ahead,
    cache_forget_and_errors,
    cache_reopened_with_another_block_size_reads_right,
    cache_survives_a_reopen,
    cache_shrunk_on_a_reopen_keeps_no_unused_files,
    cache_drops_corrupt_blocks_after_a_reopen,
    read_batches_of_uploaded_segment,
    read_batches_counts_the_bytes_it_serves,
    offset_for_timestamp_in_uploaded_segment,
);

// --- the store --------------------------------------------------------------------------

async fn put_get_and_ranges(b: Backend) {
    let s = &b.store;
    let data = pattern(10_000, 1);
    s.put("obj/a", Bytes::from(data.clone())).await.unwrap();
    assert_eq!(s.get("obj/a").await.unwrap(), data, "{}: get", b.kind);
    for r in [0..1, 0..10_000, 4090..4100, 9_999..10_000, 1234..5678] {
        let got = s.get_range("obj/a", r.clone()).await.unwrap();
        assert_eq!(
            got,
            data[r.start as usize..r.end as usize],
            "{}: get_range {r:?}",
            b.kind
        );
    }
    // An empty range (which S3 cannot express) reads nothing: no bytes, or an
    // invalid-range error, the same on every store; never "not found".
    let empty = s.get_range("obj/a", 5..5).await;
    assert!(
        match &empty {
            Ok(d) => d.is_empty(),
            Err(e) => !e.is_not_found() && format!("{e:?}").contains("Inconsistent"),
        },
        "{}: empty range: {empty:?}",
        b.kind
    );
    // A range reaching past the end: the bytes that exist (as S3 answers), on every store.
    let past = s.get_range("obj/a", 9_990..10_100).await;
    assert!(
        matches!(&past, Ok(d) if d[..] == data[9_990..]),
        "{}: range past the end: {past:?}",
        b.kind
    );
    // A range starting at or after the end is an error, never data.
    for r in [10_000..10_001, 20_000..20_010] {
        let got = s.get_range("obj/a", r.clone()).await;
        assert!(
            got.is_err(),
            "{}: range {r:?} after the end: {got:?}",
            b.kind
        );
    }
    // Empty objects, overwrites, and keys with several levels.
    s.put("obj/empty", Bytes::new()).await.unwrap();
    assert!(s.get("obj/empty").await.unwrap().is_empty(), "{}", b.kind);
    s.put("obj/a", Bytes::from_static(b"second")).await.unwrap();
    let gets = b.requests("get", "ok");
    assert_eq!(&s.get("obj/a").await.unwrap()[..], b"second", "{}", b.kind);
    assert_eq!(
        b.requests("get", "ok") - gets,
        1,
        "{}: one GET, counted once",
        b.kind
    );
    let deep =
        "0b5c8f5e-8d33-4f44-9c1b-7d5c2a3b4c5d/12/00000000000000001234-7-00000000000000ab.seg";
    s.put(deep, Bytes::from_static(b"deep")).await.unwrap();
    assert_eq!(&s.get(deep).await.unwrap()[..], b"deep", "{}", b.kind);
    assert!(
        b.raw_keys().await.contains(&b.raw_key(deep)),
        "{}: {deep} is not where it should be: {:?}",
        b.kind,
        b.raw_keys().await
    );
    assert!(b.requests("put", "ok") >= 4, "{}: puts are counted", b.kind);
    assert!(
        b.requests("get_range", "ok") >= 6,
        "{}: ranged gets are counted",
        b.kind
    );
}

async fn missing_objects(b: Backend) {
    let s = &b.store;
    let e = s.get("no/such/key").await.unwrap_err();
    assert!(e.is_not_found(), "{}: get of a missing key: {e:?}", b.kind);
    let e = s.get_range("no/such/key", 0..10).await.unwrap_err();
    assert!(
        e.is_not_found(),
        "{}: get_range of a missing key: {e:?}",
        b.kind
    );
    assert!(
        e.to_string().contains("no/such/key"),
        "{}: the error names the key: {e}",
        b.kind
    );
    assert!(
        b.requests("get", "not_found") >= 1 && b.requests("get_range", "not_found") >= 1,
        "{}: a missing object is counted as not_found, not as an error: {}",
        b.kind,
        b.metrics.render()
    );
    assert_eq!(b.requests("get", "error"), 0, "{}", b.kind);
}

async fn delete_and_list(b: Backend) {
    let s = &b.store;
    let before = now_ms();
    let objects = [
        ("t1/0/a.seg", 3usize),
        ("t1/0/a.idx", 5),
        ("t1/1/b.seg", 7),
        ("t10/0/c.seg", 11),
        ("other/x", 13),
    ];
    for (k, n) in objects {
        s.put(k, Bytes::from(pattern(n, 2))).await.unwrap();
    }
    let listed = |under: &'static str| async move {
        let mut v: Vec<(String, u64)> = s
            .list(under)
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        v.sort();
        v
    };
    let owned = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    };
    assert_eq!(
        listed("t1/").await,
        owned(&[("t1/0/a.idx", 5), ("t1/0/a.seg", 3), ("t1/1/b.seg", 7)]),
        "{}: list t1/ (t10/ must not match)",
        b.kind
    );
    assert_eq!(
        listed("t1/0/").await,
        owned(&[("t1/0/a.idx", 5), ("t1/0/a.seg", 3)]),
        "{}",
        b.kind
    );
    assert_eq!(listed("nothing/").await, vec![], "{}", b.kind);
    let all = listed("").await;
    assert_eq!(
        all,
        owned(&[
            ("other/x", 13),
            ("t1/0/a.idx", 5),
            ("t1/0/a.seg", 3),
            ("t1/1/b.seg", 7),
            ("t10/0/c.seg", 11),
        ]),
        "{}: list everything, keys relative to the store's root",
        b.kind
    );
    // The garbage collector compares these times with the clock: they must be real.
    let after = now_ms();
    for o in s.list("").await.unwrap() {
        assert!(
            o.last_modified_ms >= before - 5_000 && o.last_modified_ms <= after + 5_000,
            "{}: {} last modified at {} ms, written between {before} and {after}",
            b.kind,
            o.key,
            o.last_modified_ms
        );
    }

    // Deleting: a missing key is fine, an existing one goes away.
    s.delete("t1/0/never-existed").await.unwrap();
    s.delete("no/such/dir/key").await.unwrap();
    s.delete("t1/0/a.seg").await.unwrap();
    s.delete("t1/0/a.seg").await.unwrap();
    assert!(
        s.get("t1/0/a.seg").await.unwrap_err().is_not_found(),
        "{}",
        b.kind
    );
    assert_eq!(
        listed("t1/").await,
        owned(&[("t1/0/a.idx", 5), ("t1/1/b.seg", 7)]),
        "{}: after delete",
        b.kind
    );
    assert_eq!(b.requests("delete", "error"), 0, "{}", b.kind);
    assert!(b.requests("list", "ok") >= 5, "{}", b.kind);
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> (Arc<File>, PathBuf) {
    let path = dir.join(name);
    let mut f = File::create(&path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    (Arc::new(File::open(&path).unwrap()), path)
}

async fn put_file_single_part(b: Backend) {
    let dir = b.scratch("files");
    for (name, len) in [("small", 100_000usize), ("exact", PART), ("empty", 0)] {
        let data = pattern(len, 3);
        let (file, path) = write_file(&dir, name, &data);
        let (puts, multis) = (b.requests("put", "ok"), b.requests("put_multipart", "ok"));
        b.store
            .put_file(&format!("files/{name}"), file, &path, len as u64, PART, 4)
            .await
            .unwrap();
        assert_eq!(
            b.requests("put", "ok"),
            puts + 1,
            "{}: {name}: one PUT",
            b.kind
        );
        assert_eq!(
            b.requests("put_multipart", "ok"),
            multis,
            "{}: {name}: no multipart upload up to the part size",
            b.kind
        );
        let back = b.store.get(&format!("files/{name}")).await.unwrap();
        assert!(back[..] == data[..], "{}: {name}: content differs", b.kind);
    }
    // Only `size` bytes are uploaded, whatever the file holds beyond.
    let data = pattern(50_000, 4);
    let (file, path) = write_file(&dir, "longer", &data);
    b.store
        .put_file("files/prefix", file, &path, 30_000, PART, 4)
        .await
        .unwrap();
    let back = b.store.get("files/prefix").await.unwrap();
    assert!(back[..] == data[..30_000], "{}: prefix upload", b.kind);
}

async fn put_file_multipart(b: Backend) {
    let dir = b.scratch("files");
    // Three full parts and a short last one, four in flight at most.
    let len = 3 * PART + 12_345;
    let data = pattern(len, 5);
    let (file, path) = write_file(&dir, "big", &data);
    let puts = b.requests("put", "ok");
    b.store
        .put_file("segments/big.seg", file, &path, len as u64, PART, 2)
        .await
        .unwrap();
    assert_eq!(
        b.requests("put_multipart", "ok"),
        1,
        "{}: one multipart upload",
        b.kind
    );
    assert_eq!(
        b.requests("complete_multipart", "ok"),
        1,
        "{}: completed once",
        b.kind
    );
    assert_eq!(
        b.requests("upload_part", "ok"),
        4,
        "{}: one request per part",
        b.kind
    );
    assert_eq!(b.requests("put", "ok"), puts, "{}: no plain PUT", b.kind);
    let back = b.store.get("segments/big.seg").await.unwrap();
    assert_eq!(back.len(), len, "{}: size of the multipart object", b.kind);
    let first_diff = back.iter().zip(&data).position(|(x, y)| x != y);
    assert_eq!(first_diff, None, "{}: multipart content differs", b.kind);
    let listed = b.store.list("segments/").await.unwrap();
    assert_eq!(listed.len(), 1, "{}: {listed:?}", b.kind);
    assert_eq!(listed[0].size, len as u64, "{}", b.kind);
    // A part boundary read back exactly.
    let r = (PART as u64 - 3)..(PART as u64 + 3);
    let got = b
        .store
        .get_range("segments/big.seg", r.clone())
        .await
        .unwrap();
    assert_eq!(got, data[r.start as usize..r.end as usize], "{}", b.kind);
}

/// The per-topic series (`strata_objstore_topic_*`) as (topic, op or direction).
fn topic_series(b: &Backend) -> Vec<(String, String)> {
    use prometheus::core::Collector;
    let t = &b.metrics.tier;
    let mut out: Vec<(String, String)> = t
        .objstore_topic_requests_total
        .collect()
        .into_iter()
        .chain(t.objstore_topic_bytes_total.collect())
        .flat_map(|family| family.get_metric().to_vec())
        .map(|m| {
            let label = |name: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            let topic = label("topic").unwrap_or_default();
            (
                topic,
                label("op").or(label("direction")).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn per_topic_series_go_with_their_topic() {
    let b = Backend::file().await;
    let (orders, payments, payments_again) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let metadata: Arc<parking_lot::Mutex<BTreeMap<Uuid, String>>> = Arc::default();
    metadata.lock().extend([
        (orders, "orders".to_string()),
        (payments, "payments".to_string()),
    ]);
    let names = metadata.clone();
    b.store
        .set_topic_namer(Arc::new(move |id| names.lock().get(&id).cloned()));
    let s = &b.store;
    s.put(&format!("{orders}/a"), Bytes::from_static(b"12345"))
        .await
        .unwrap();
    s.get(&format!("{orders}/a")).await.unwrap();
    s.put(&format!("{payments}/b"), Bytes::from_static(b"678"))
        .await
        .unwrap();
    let pair = |t: &str, o: &str| (t.to_string(), o.to_string());
    assert_eq!(
        topic_series(&b),
        vec![
            pair("orders", "download"),
            pair("orders", "get"),
            pair("orders", "put"),
            pair("orders", "upload"),
            pair("payments", "put"),
            pair("payments", "upload"),
        ]
    );

    // "orders" is deleted: its series go; deleting its objects afterwards counts in the
    // totals only, under neither its name nor its id.
    metadata.lock().remove(&orders);
    s.forget_topics_except(&metadata.lock().keys().copied().collect());
    let deletes = b.requests("delete", "ok");
    s.delete(&format!("{orders}/a")).await.unwrap();
    assert_eq!(b.requests("delete", "ok"), deletes + 1);
    assert_eq!(
        topic_series(&b),
        vec![pair("payments", "put"), pair("payments", "upload")]
    );

    // "payments" deleted and created again under a new id: the name's series stay.
    metadata.lock().remove(&payments);
    metadata
        .lock()
        .insert(payments_again, "payments".to_string());
    s.put(&format!("{payments_again}/c"), Bytes::from_static(b"9"))
        .await
        .unwrap();
    s.forget_topics_except(&metadata.lock().keys().copied().collect());
    assert_eq!(
        topic_series(&b),
        vec![pair("payments", "put"), pair("payments", "upload")]
    );
    let puts = b
        .metrics
        .tier
        .objstore_topic_requests_total
        .with_label_values(&["payments", "put"])
        .get();
    assert_eq!(puts, 2);
}

async fn check_passes_and_leaves_nothing(b: Backend) {
    b.store.check().await.unwrap();
    b.store.check().await.unwrap();
    assert!(
        b.store.list("_strata/").await.unwrap().is_empty(),
        "{}: the probe object is deleted",
        b.kind
    );
    assert!(
        b.raw_keys().await.is_empty(),
        "{}: {:?}",
        b.kind,
        b.raw_keys().await
    );
}

#[tokio::test]
async fn open_refuses_bad_urls() {
    let m = Metrics::new().unwrap();
    for (url, says) in [
        ("file://relative/dir", "absolute path"),
        (
            "http://example.com/bucket",
            "expected file:///path or s3://bucket/prefix",
        ),
        ("s3://", "no bucket"),
        ("s3:///prefix", "no bucket"),
    ] {
        let cfg = StoreConfig {
            url: url.into(),
            ..StoreConfig::default()
        };
        match Store::open(&cfg, m.tier.clone()) {
            Err(e @ TierError::BadUrl { .. }) => {
                let text = e.to_string();
                assert!(text.contains(says) && text.contains(url), "{url}: {text}");
            }
            Err(e) => panic!("{url}: not a BadUrl error: {e}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }
}

/// `check()` of a store that must fail: it fails within `limit`, with an error naming the
/// store and containing `says`.
async fn check_fails(store: &Store, says: &str, limit: Duration) -> String {
    let started = Instant::now();
    let result = store.check().await;
    let took = started.elapsed();
    let err = match result {
        Ok(()) => panic!("check() of {} passed", store.description()),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        matches!(err, TierError::Check { .. }),
        "not a Check error: {text}"
    );
    assert!(text.contains(says), "the error should say {says:?}: {text}");
    assert!(
        text.contains(store.description()),
        "the error should name the store ({}): {text}",
        store.description()
    );
    assert!(took < limit, "check() took {took:?} to fail: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_for_missing_bucket() {
    let rgw = Rgw::start();
    let m = Metrics::new().unwrap();
    let store = rgw.open("s3://no-such-bucket/prefix", &m).unwrap();
    let text = check_fails(&store, "bucket does not exist", Duration::from_secs(20)).await;
    assert!(text.contains("no-such-bucket"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_for_wrong_credentials() {
    let rgw = Rgw::start();
    rgw.create_bucket("creds");
    let m = Metrics::new().unwrap();
    let cfg = rgw.config("s3://creds");
    let wrong_secret = open_s3(&cfg, &rgw.access_key, "not-the-secret", &m).unwrap();
    check_fails(
        &wrong_secret,
        "credentials were refused",
        Duration::from_secs(20),
    )
    .await;
    let unknown_key = open_s3(&cfg, "nobody", "whatever", &m).unwrap();
    check_fails(
        &unknown_key,
        "credentials were refused",
        Duration::from_secs(20),
    )
    .await;
    // The same bucket with the right credentials passes: the failures were about them.
    rgw.open("s3://creds", &m).unwrap().check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_for_unreachable_endpoint() {
    // A port nothing listens on: bind one, note it, close it. One with "403" in it: the
    // error quotes the URL, and a port is not an HTTP status (it once read as refused
    // credentials).
    let port = [4030u16, 14030, 24030, 4039]
        .into_iter()
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port with 403 in it");
    let m = Metrics::new().unwrap();
    let cfg = StoreConfig {
        url: "s3://bucket/prefix".into(),
        s3_endpoint: Some(format!("http://127.0.0.1:{port}")),
        s3_region: Some("us-east-1".into()),
        s3_allow_http: true,
        s3_path_style: true,
        ..StoreConfig::default()
    };
    let store = open_s3(&cfg, "key", "secret", &m).unwrap();
    let text = check_fails(&store, "cannot be reached", Duration::from_secs(30)).await;
    assert!(text.contains(&port.to_string()), "{text}");
}

// --- the block cache --------------------------------------------------------------------

const BLOCK: u64 = 4096;

async fn cache_reads_equal_object_bytes(b: Backend) {
    let cache = b.cache(BLOCK, 0).await;
    let size = 5 * BLOCK as usize + 123;
    let data = pattern(size, 6);
    b.store
        .put("c/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let s = size as u64;
    let ranges = [
        0..1,
        0..BLOCK,
        BLOCK - 1..BLOCK + 1,
        100..3 * BLOCK + 7,
        0..s,
        s - 1..s,
        5 * BLOCK..s,
        2 * BLOCK..2 * BLOCK,
        s - 10..s + 1000,
        s..s + 10,
    ];
    for r in ranges {
        let got = cache.read("c/obj", s, r.clone()).await.unwrap();
        let end = r.end.min(s) as usize;
        let want = if (r.start as usize) < end {
            &data[r.start as usize..end]
        } else {
            &[][..]
        };
        assert!(
            got[..] == *want,
            "{}: read {r:?}: {} bytes",
            b.kind,
            got.len()
        );
    }
    // The same reads again, now from the cache.
    let gets = b.requests("get_range", "ok");
    for r in [0..s, 3..BLOCK * 4 + 5, s - 1..s] {
        let got = cache.read("c/obj", s, r.clone()).await.unwrap();
        assert!(
            got[..] == data[r.start as usize..r.end as usize],
            "{}: cached read {r:?}",
            b.kind
        );
    }
    assert_eq!(b.requests("get_range", "ok"), gets, "{}", b.kind);
    assert_eq!(
        b.requests("get_range", "ok"),
        6,
        "{}: one GET per block of a 6-block object",
        b.kind
    );
    // A small whole object (an index).
    b.store
        .put("c/idx", Bytes::from_static(b"index!"))
        .await
        .unwrap();
    assert_eq!(&cache.whole("c/idx").await.unwrap()[..], b"index!");
    let gets = b.requests("get", "ok");
    assert_eq!(&cache.whole("c/idx").await.unwrap()[..], b"index!");
    assert_eq!(b.requests("get", "ok"), gets, "{}: a cached index", b.kind);
    cache.close().await;
}

async fn cache_second_read_issues_no_get(b: Backend) {
    let cache = b.cache(BLOCK, 0).await;
    let size = 8 * BLOCK;
    let data = pattern(size as usize, 7);
    b.store
        .put("c/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let r = BLOCK / 2..3 * BLOCK + 10; // blocks 0, 1, 2 and 3
    let (gets, misses, hits) = (
        b.requests("get_range", "ok"),
        b.cache_requests("miss"),
        b.cache_requests("hit"),
    );
    let first = cache.read("c/obj", size, r.clone()).await.unwrap();
    assert_eq!(first, data[r.start as usize..r.end as usize], "{}", b.kind);
    assert_eq!(
        b.requests("get_range", "ok") - gets,
        4,
        "{}: 4 blocks, 4 GETs",
        b.kind
    );
    assert_eq!(b.cache_requests("miss") - misses, 4, "{}", b.kind);
    assert_eq!(b.cache_requests("hit") - hits, 0, "{}", b.kind);
    let from_store = b.read_bytes("object_store");
    let second = cache.read("c/obj", size, r.clone()).await.unwrap();
    assert_eq!(second, first, "{}", b.kind);
    assert_eq!(
        b.requests("get_range", "ok") - gets,
        4,
        "{}: the second read issued GETs",
        b.kind
    );
    assert_eq!(b.cache_requests("hit") - hits, 4, "{}", b.kind);
    assert_eq!(b.cache_requests("miss") - misses, 4, "{}", b.kind);
    // The second read's bytes came from the cache, none from the object store.
    assert_eq!(b.read_bytes("object_store"), from_store, "{}", b.kind);
    cache.close().await;
}

async fn cache_concurrent_readers_share_one_get(b: Backend) {
    let cache = b.cache(BLOCK, 0).await;
    let size = 4 * BLOCK;
    let data = Bytes::from(pattern(size as usize, 8));
    b.store.put("c/obj", data.clone()).await.unwrap();
    let gets = b.requests("get_range", "ok");
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let (cache, barrier) = (cache.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = BLOCK + i..BLOCK + 100 + i; // all inside block 1
            (r.clone(), cache.read("c/obj", size, r).await)
        }));
    }
    for t in tasks {
        let (r, got) = t.await.unwrap();
        assert_eq!(
            got.unwrap(),
            data.slice(r.start as usize..r.end as usize),
            "{}",
            b.kind
        );
    }
    assert_eq!(
        b.requests("get_range", "ok") - gets,
        1,
        "{}: 32 concurrent readers of one block, one GET",
        b.kind
    );
    // Readers of overlapping multi-block ranges: one GET per block.
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (cache, barrier) = (cache.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            cache
                .read("c/obj", size, 2 * BLOCK + i..4 * BLOCK - i)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        b.requests("get_range", "ok") - gets,
        3,
        "{}: blocks 2 and 3 fetched once each",
        b.kind
    );
    cache.close().await;
}

async fn cache_reads_ahead(b: Backend) {
    let cache = b.cache(BLOCK, 2).await;
    let size = 4 * BLOCK;
    let data = pattern(size as usize, 9);
    b.store
        .put("c/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let gets = b.requests("get_range", "ok");
    cache.read("c/obj", size, 0..10).await.unwrap();
    // Block 0 for the reader, blocks 1 and 2 ahead of it in the background.
    eventually(Duration::from_secs(10), "read-ahead of 2 blocks", || {
        b.requests("get_range", "ok") - gets >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.requests("get_range", "ok") - gets, 3, "{}", b.kind);
    let hits = b.cache_requests("hit");
    let got = cache.read("c/obj", size, BLOCK..3 * BLOCK).await.unwrap();
    assert_eq!(got, data[BLOCK as usize..3 * BLOCK as usize], "{}", b.kind);
    assert_eq!(
        b.cache_requests("hit") - hits,
        2,
        "{}: read-ahead blocks hit",
        b.kind
    );
    // Reading block 2 asks for block 3 (the last); nothing past the end is fetched.
    eventually(
        Duration::from_secs(10),
        "read-ahead of the last block",
        || b.requests("get_range", "ok") - gets >= 4,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.requests("get_range", "ok") - gets, 4, "{}", b.kind);
    assert_eq!(b.requests("get_range", "error"), 0, "{}", b.kind);
    assert_eq!(b.requests("get_range", "not_found"), 0, "{}", b.kind);
    cache.close().await;
}

async fn cache_forget_and_errors(b: Backend) {
    let cache = b.cache(BLOCK, 0).await;
    // A read of a missing object fails, and the failure is not cached.
    let err = cache.read("c/late", 100, 0..100).await;
    assert!(
        err.is_err(),
        "{}: read of a missing object: {err:?}",
        b.kind
    );
    let data = pattern(100, 10);
    b.store
        .put("c/late", Bytes::from(data.clone()))
        .await
        .unwrap();
    let got = cache.read("c/late", 100, 0..100).await.unwrap();
    assert_eq!(got, data, "{}: the object once it exists", b.kind);
    // forget() drops an object's blocks: the next read fetches again.
    let gets = b.requests("get_range", "ok");
    cache.read("c/late", 100, 0..100).await.unwrap();
    assert_eq!(b.requests("get_range", "ok"), gets, "{}", b.kind);
    cache.forget("c/late", 100).await;
    b.store.delete("c/late").await.unwrap();
    let after = cache.read("c/late", 100, 0..100).await;
    assert!(
        after.is_err(),
        "{}: a forgotten, deleted object still reads: {after:?}",
        b.kind
    );
    cache.close().await;
}

// --- remote segments ----------------------------------------------------------------------

/// A real sealed segment, written by `strata-log` and uploaded as the broker does.
struct Uploaded {
    seg: RemoteSegment,
    /// The segment file's bytes, and (position, header) of each batch in it.
    bytes: Vec<u8>,
    batches: Vec<(usize, BatchHeader)>,
    /// Every record's (offset, timestamp) in the segment.
    records: Vec<(i64, i64)>,
    _logs: LogManager,
}

const TS0: i64 = 1_700_000_000_000;

fn ts_of(offset: i64) -> i64 {
    // Increasing, with equal timestamps in places (offsets 3k, 3k+1, 3k+2 share one).
    TS0 + (offset / 3) * 10
}

async fn upload_segment(b: &Backend) -> Uploaded {
    let metrics = Metrics::new().unwrap();
    let logs =
        LogManager::open(b.scratch("log"), metrics.log.clone(), TailCache::new(0), 0).unwrap();
    let key = PartitionKey {
        topic_id: Uuid::new_v4(),
        partition: 3,
    };
    let config = LogConfig {
        segment_bytes: 48 * 1024,
        segment_ms: 1 << 50,
        index_interval_bytes: 700,
    };
    let log = logs.get_or_create(key, "tiered", config, 0).unwrap();
    let mut sealed: Vec<SealedSegment> = Vec::new();
    let mut i = 0u64;
    while sealed.len() < 2 {
        // Batches of 1 to 25 records of 0 to 400 bytes.
        let next = log.offsets().log_end;
        let n = 1 + (i * 7 % 25) as usize;
        let values: Vec<Vec<u8>> = (0..n)
            .map(|j| pattern((i as usize * 13 + j * 31) % 400, i * 100 + j as u64))
            .collect();
        let keys: Vec<String> = (0..n).map(|j| format!("k{}", next + j as i64)).collect();
        let records: Vec<TestRecord<'_>> = (0..n)
            .map(|j| TestRecord {
                key: Some(keys[j].as_bytes()),
                value: (j % 11 != 5).then_some(&values[j][..]),
                timestamp: ts_of(next + j as i64),
            })
            .collect();
        let batch = build_batch(&records);
        let headers = validate_all(&batch).unwrap();
        let info = log.append(&batch, &headers, 0, 0).unwrap();
        log.wait_durable(info.last_offset + 1).await.unwrap();
        sealed = log.upload_candidates(usize::MAX);
        i += 1;
    }
    // The second segment: its base offset is not 0.
    let s = &sealed[1];
    assert!(s.base_offset > 0);
    let name = layout::ObjectName::new_upload(key.topic_id, key.partition, s.base_offset, 4);
    let seg_key = name.key();
    let idx_key = name.with_kind(layout::Kind::Index).key();
    b.store
        .put_file(&seg_key, s.file.clone(), &s.path, s.size, PART, 4)
        .await
        .unwrap();
    b.store
        .put(&idx_key, Bytes::from(s.index.to_bytes()))
        .await
        .unwrap();
    let mut bytes = vec![0u8; s.size as usize];
    s.file.read_exact_at(&mut bytes, 0).unwrap();
    let mut it = HeaderIter::new(&bytes);
    let batches: Vec<(usize, BatchHeader)> = it.by_ref().collect();
    assert_eq!(it.position(), bytes.len(), "the segment is whole batches");
    assert!(
        batches.len() > 10,
        "a segment of many batches: {}",
        batches.len()
    );
    let records = (s.base_offset..s.next_offset)
        .map(|o| (o, ts_of(o)))
        .collect();
    Uploaded {
        seg: RemoteSegment {
            key: seg_key,
            index_key: idx_key,
            base_offset: s.base_offset,
            next_offset: s.next_offset,
            size: s.size,
            max_timestamp: s.max_timestamp,
        },
        bytes,
        batches,
        records,
        _logs: logs,
    }
}

impl Uploaded {
    /// What `read_batches` must return: whole batches from the one holding `offset`,
    /// within `max_bytes` (at least one with `min_one`).
    fn expected(&self, offset: i64, max_bytes: usize, min_one: bool) -> &[u8] {
        let Some(i) = self
            .batches
            .iter()
            .position(|(_, h)| h.last_offset() >= offset)
        else {
            return &[];
        };
        let start = self.batches[i].0;
        let mut end = start;
        for (j, (pos, h)) in self.batches.iter().enumerate().skip(i) {
            let batch_end = pos + h.total_len();
            if batch_end - start <= max_bytes || (j == i && min_one) {
                end = batch_end;
            } else {
                break;
            }
        }
        &self.bytes[start..end]
    }
}

async fn read_batches_of_uploaded_segment(b: Backend) {
    let up = upload_segment(&b).await;
    let seg = &up.seg;
    let cache = b.cache(BLOCK, 1).await;
    let first = seg.base_offset;
    let last = seg.next_offset - 1;
    let mut offsets: Vec<i64> = vec![first, first + 1, last, last - 1, (first + last) / 2];
    // Every batch's first and last offset, and an offset inside it.
    for (_, h) in &up.batches {
        offsets.extend([
            h.base_offset,
            h.last_offset(),
            (h.base_offset + h.last_offset()) / 2,
        ]);
    }
    for &offset in &offsets {
        for (max_bytes, min_one) in [
            (1 << 20, true),
            (1, true),
            (1, false),
            (10_000, false),
            (5_000, true),
        ] {
            let got = cache
                .read_batches(seg, offset, max_bytes, min_one)
                .await
                .unwrap();
            let want = up.expected(offset, max_bytes, min_one);
            assert!(
                got[..] == *want,
                "{}: read_batches(offset {offset}, max {max_bytes}, min_one {min_one}): \
                 {} bytes, want {} (segment {}..{})",
                b.kind,
                got.len(),
                want.len(),
                seg.base_offset,
                seg.next_offset
            );
            if min_one {
                let h = BatchHeader::parse(&got).unwrap();
                assert!(
                    h.base_offset <= offset && offset <= h.last_offset(),
                    "{}",
                    b.kind
                );
            }
        }
    }
    // Below the segment: from its first batch; past its end: nothing.
    let got = cache.read_batches(seg, 0, 1 << 20, true).await.unwrap();
    assert_eq!(got[..], *up.expected(first, 1 << 20, true), "{}", b.kind);
    let past = cache
        .read_batches(seg, seg.next_offset, 1 << 20, true)
        .await
        .unwrap();
    assert!(
        past.is_empty(),
        "{}: read past the segment: {} bytes",
        b.kind,
        past.len()
    );

    cache.close().await;
}

/// `strata_tier_read_bytes_total{source}` counts record bytes served to fetches
/// (docs/metrics.md), once each: not whole blocks, not header re-reads, not read-ahead.
async fn read_batches_counts_the_bytes_it_serves(b: Backend) {
    let up = upload_segment(&b).await;
    let seg = &up.seg;
    let first = seg.base_offset;
    // strata_tier_read_bytes_total counts what was served, once: one read of the whole
    // segment through a cold cache serves the segment's bytes from the object store.
    let cold = b.cache(BLOCK, 1).await;
    let (from_store, from_cache) = (b.read_bytes("object_store"), b.read_bytes("cache"));
    let all = cold
        .read_batches(seg, first, up.bytes.len(), true)
        .await
        .unwrap();
    assert_eq!(all.len(), up.bytes.len(), "{}", b.kind);
    let counted =
        (b.read_bytes("object_store") - from_store) + (b.read_bytes("cache") - from_cache);
    assert_eq!(
        counted,
        all.len() as u64,
        "{}: strata_tier_read_bytes_total grew by {counted} for {} bytes served \
         (object_store +{}, cache +{})",
        b.kind,
        all.len(),
        b.read_bytes("object_store") - from_store,
        b.read_bytes("cache") - from_cache
    );
    assert_eq!(
        b.read_bytes("cache"),
        from_cache,
        "{}: nothing of a first read comes from the cache",
        b.kind
    );
    // Two fetches splitting a block between them: the second one's bytes of that block
    // were fetched from the store for it too, not served before.
    let split = b.cache(BLOCK, 0).await;
    let (from_store, from_cache) = (b.read_bytes("object_store"), b.read_bytes("cache"));
    let half = split
        .read_batches(seg, first, up.bytes.len() / 2, true)
        .await
        .unwrap();
    let next = up.batches[HeaderIter::new(&half).count()].1.base_offset;
    let rest = split
        .read_batches(seg, next, up.bytes.len(), true)
        .await
        .unwrap();
    assert_eq!(half.len() + rest.len(), up.bytes.len(), "{}", b.kind);
    assert_ne!(
        half.len() as u64 % BLOCK,
        0,
        "the split falls inside a block"
    );
    assert_eq!(
        b.read_bytes("object_store") - from_store,
        up.bytes.len() as u64,
        "{}",
        b.kind
    );
    assert_eq!(b.read_bytes("cache"), from_cache, "{}", b.kind);
    split.close().await;
    // A fetch of one small batch through a cold cache that reads 4 blocks ahead: what
    // was served is that batch, whatever was fetched ahead of the reader.
    let ahead = b.cache(BLOCK, 4).await;
    let gets = b.requests("get_range", "ok");
    let (from_store, from_cache) = (b.read_bytes("object_store"), b.read_bytes("cache"));
    let one = ahead.read_batches(seg, first, 1, true).await.unwrap();
    assert_eq!(one[..], *up.expected(first, 1, true), "{}", b.kind);
    eventually(Duration::from_secs(10), "read-ahead of 4 blocks", || {
        b.requests("get_range", "ok") - gets >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counted =
        (b.read_bytes("object_store") - from_store) + (b.read_bytes("cache") - from_cache);
    assert_eq!(
        counted,
        one.len() as u64,
        "{}: strata_tier_read_bytes_total grew by {counted} for one batch of {} bytes served \
         (object_store +{}, cache +{})",
        b.kind,
        one.len(),
        b.read_bytes("object_store") - from_store,
        b.read_bytes("cache") - from_cache
    );
    // Reading on: blocks fetched ahead count as object-store bytes the first time they
    // are read (the GETs were made for this reader), and as cache bytes after that.
    let (from_store, from_cache) = (b.read_bytes("object_store"), b.read_bytes("cache"));
    let whole = ahead
        .read_batches(seg, first, up.bytes.len(), true)
        .await
        .unwrap();
    assert_eq!(whole.len(), up.bytes.len(), "{}", b.kind);
    let new_from_store = b.read_bytes("object_store") - from_store;
    assert_eq!(
        new_from_store + (b.read_bytes("cache") - from_cache),
        whole.len() as u64,
        "{}",
        b.kind
    );
    assert!(
        new_from_store >= whole.len() as u64 - BLOCK,
        "{}: only {new_from_store} of {} bytes read for the first time counted as \
         object-store bytes (all but the first block came from read-ahead)",
        b.kind,
        whole.len()
    );
    let from_store = b.read_bytes("object_store");
    let again = ahead
        .read_batches(seg, first, up.bytes.len(), true)
        .await
        .unwrap();
    assert_eq!(again, whole, "{}", b.kind);
    assert_eq!(
        b.read_bytes("object_store"),
        from_store,
        "{}: a re-read is served by the cache",
        b.kind
    );
    cold.close().await;
    ahead.close().await;
}

async fn offset_for_timestamp_in_uploaded_segment(b: Backend) {
    let up = upload_segment(&b).await;
    let seg = &up.seg;
    let cache = b.cache(BLOCK, 0).await;
    let (first_ts, last_ts) = (up.records[0].1, up.records[up.records.len() - 1].1);
    let mut probes = vec![
        0,
        first_ts - 1,
        first_ts,
        first_ts + 1,
        last_ts,
        last_ts + 1,
    ];
    for (i, (_, ts)) in up.records.iter().enumerate().step_by(17) {
        probes.extend([*ts, ts + 5, ts - 1 - (i as i64 % 3)]);
    }
    for ts in probes {
        let want = up.records.iter().find(|(_, t)| *t >= ts).copied();
        let got = cache
            .offset_for_timestamp(seg, ts, seg.base_offset)
            .await
            .unwrap();
        assert_eq!(got, want, "{}: offset for timestamp {ts}", b.kind);
    }
    // min_offset: records below it do not count.
    let mid = up.records[up.records.len() / 2];
    let got = cache.offset_for_timestamp(seg, 0, mid.0).await.unwrap();
    assert_eq!(
        got,
        Some(mid),
        "{}: first record at or after {}",
        b.kind,
        mid.0
    );
    cache.close().await;
}

/// The disk tier outlives the process; a restart with another block size must not read
/// blocks cached at the old size as if they were of the new one.
/// Blocks read before the cache is closed are served from its disk tier after it is
/// opened again (a broker restart): no GET.
async fn cache_survives_a_reopen(b: Backend) {
    let dir = b.scratch("cache-survives");
    let size = 12 * BLOCK + 5;
    let data = pattern(size as usize, 11);
    b.store
        .put("s/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let cache = b.cache_at(dir.clone(), BLOCK, 0).await;
    assert_eq!(cache.read("s/obj", size, 0..size).await.unwrap(), data);
    cache.close().await;
    drop(cache);
    let (gets, hits) = (b.requests("get_range", "ok"), b.cache_requests("hit"));
    let cache = b.cache_at(dir, BLOCK, 0).await;
    assert_eq!(cache.read("s/obj", size, 0..size).await.unwrap(), data);
    assert_eq!(
        b.requests("get_range", "ok") - gets,
        0,
        "{}: the reopened cache fetched blocks again",
        b.kind
    );
    assert_eq!(b.cache_requests("hit") - hits, 13, "{}", b.kind);
    cache.close().await;
}

/// A block of the largest size the configuration allows reaches the disk tier (the
/// reopened cache serves it without a GET); a larger one is refused when the cache
/// opens, as foyer would only ever keep it in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn largest_blocks_reach_the_disk_tier_and_larger_are_refused() {
    let b = Backend::file().await;
    let (dir, size) = (b.scratch("largest"), MAX_BLOCK_BYTES);
    let data = pattern(size as usize, 17);
    b.store
        .put("largest/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let open = || b.cache_sized(dir.clone(), 256 << 20, MAX_BLOCK_BYTES, 0);
    let cache = open().await;
    assert_eq!(
        cache.read("largest/obj", size, 0..size).await.unwrap(),
        data
    );
    eventually(Duration::from_secs(10), "the block to be written", || {
        b.metrics.tier.cache_disk_pending_blocks.get() == 0
    })
    .await;
    cache.close().await;
    let gets = b.requests("get_range", "ok");
    let cache = open().await;
    assert_eq!(
        cache.read("largest/obj", size, 0..size).await.unwrap(),
        data
    );
    cache.close().await;
    assert_eq!(
        b.requests("get_range", "ok"),
        gets,
        "a block of the largest size was not on disk"
    );
    let refused = BlockCache::open(
        CacheConfig {
            dir: b.scratch("too-large"),
            memory_bytes: 64 << 20,
            disk_bytes: 64 << 20,
            block_bytes: MAX_BLOCK_BYTES + 1,
            readahead_blocks: 0,
        },
        b.store.clone(),
        b.metrics.tier.clone(),
    )
    .await;
    assert!(
        matches!(&refused, Err(TierError::Cache(e)) if e.contains("larger than the disk tier stores")),
        "a block larger than the disk tier stores was accepted"
    );
}

/// Blocks foyer drops instead of writing to the disk tier (a burst four times its write
/// queue) are counted, and they are exactly the blocks fetched again after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_dropped_before_the_disk_are_counted() {
    let b = Backend::file().await;
    let dir = b.scratch("burst");
    let (block, blocks) = (4u64 << 20, 16u64);
    let size = block * blocks;
    let data = b.put_pattern("burst/obj", size, 19).await;
    let open = || b.cache_sized(dir.clone(), 256 << 20, block, 0);
    let cache = open().await;
    // One read of every block: all fetched at once.
    assert_eq!(cache.read("burst/obj", size, 0..size).await.unwrap(), data);
    eventually(
        Duration::from_secs(20),
        "every fetched block written or given up on",
        || b.metrics.tier.cache_disk_pending_blocks.get() == 0,
    )
    .await;
    cache.close().await;
    let (gets, dropped) = (b.requests("get_range", "ok"), b.disk_dropped());
    let cache = open().await;
    assert_eq!(cache.read("burst/obj", size, 0..size).await.unwrap(), data);
    cache.close().await;
    let refetched = b.requests("get_range", "ok") - gets;
    assert!(dropped > 0, "a burst of {blocks} blocks dropped none");
    assert_eq!(
        refetched, dropped,
        "blocks fetched again after the reopen against blocks counted as dropped"
    );
}

/// Cache hits write nothing to the disk tier: a block read over and over (from memory,
/// and after a reopen from disk) is queued for the disk once, when it is fetched. foyer's
/// `get_or_fetch` queued a rewrite on every hit, which filled its write queue (drops).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_do_not_rewrite_blocks() {
    let b = Backend::file().await;
    let dir = b.scratch("hits");
    let block = 4u64 << 20;
    let size = 2 * block;
    let data = b.put_pattern("hits/obj", size, 23).await;
    let open = || b.cache_sized(dir.clone(), 256 << 20, block, 0);
    let data = &data;
    let reads = |cache: BlockCache| async move {
        for i in 0..40 {
            let at = (i % 2) * block + i;
            let got = cache.read("hits/obj", size, at..at + 100).await.unwrap();
            assert_eq!(got, data[at as usize..at as usize + 100]);
        }
        cache
    };
    let cache = reads(open().await).await;
    eventually(Duration::from_secs(20), "both blocks written", || {
        b.metrics.tier.cache_disk_pending_blocks.get() == 0
    })
    .await;
    cache.close().await;
    let gets = b.requests("get_range", "ok");
    reads(open().await).await.close().await;
    assert_eq!(
        b.requests("get_range", "ok"),
        gets,
        "blocks were not on disk"
    );
    assert_eq!(
        b.disk_dropped(),
        0,
        "hits queued disk writes (and some were dropped)"
    );
}

/// A disk tier opened again with less room keeps no files of the regions it lost (they
/// would hold their disk space for good), and still serves reads.
async fn cache_shrunk_on_a_reopen_keeps_no_unused_files(b: Backend) {
    let dir = b.scratch("cache-shrunk");
    let files = |dir: &std::path::Path| std::fs::read_dir(dir).unwrap().count();
    let size = 3 * BLOCK;
    let data = pattern(size as usize, 13);
    b.store
        .put("s/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let cache = b.cache_sized(dir.clone(), 64 << 20, BLOCK, 0).await;
    assert_eq!(cache.read("s/obj", size, 0..size).await.unwrap(), data);
    cache.close().await;
    drop(cache);
    assert_eq!(files(&dir), 4, "{}: one file per 16 MiB region", b.kind);
    let cache = b.cache_sized(dir.clone(), 32 << 20, BLOCK, 0).await;
    assert_eq!(files(&dir), 2, "{}", b.kind);
    assert_eq!(cache.read("s/obj", size, 0..size).await.unwrap(), data);
    cache.close().await;
}

/// A damaged disk tier (bytes overwritten in its files while closed) is never served:
/// damaged blocks are fetched again and every read returns the object's bytes.
async fn cache_drops_corrupt_blocks_after_a_reopen(b: Backend) {
    let dir = b.scratch("cache-corrupt");
    let size = 12 * BLOCK + 5;
    let data = pattern(size as usize, 12);
    b.store
        .put("x/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let cache = b.cache_at(dir.clone(), BLOCK, 0).await;
    assert_eq!(cache.read("x/obj", size, 0..size).await.unwrap(), data);
    cache.close().await;
    drop(cache);
    // Flip every byte of the files' non-zero regions (the stored blocks).
    let mut damaged = 0usize;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        for byte in bytes.iter_mut().filter(|b| **b != 0) {
            *byte = !*byte;
            damaged += 1;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    assert!(
        damaged > size as usize,
        "{}: nothing cached on disk to damage",
        b.kind
    );
    let gets = b.requests("get_range", "ok");
    let cache = b.cache_at(dir, BLOCK, 0).await;
    for r in [0..size, BLOCK + 3..4 * BLOCK, size - 2..size] {
        let got = cache.read("x/obj", size, r.clone()).await.unwrap();
        assert!(
            got[..] == data[r.start as usize..r.end as usize],
            "{}: read {r:?} of a damaged cache returned other bytes",
            b.kind
        );
    }
    assert!(
        b.requests("get_range", "ok") - gets >= 13,
        "{}: damaged blocks were not fetched again",
        b.kind
    );
    cache.close().await;
}

async fn cache_reopened_with_another_block_size_reads_right(b: Backend) {
    let dir = b.scratch("cache-reopened");
    let size = 16 * BLOCK + 77;
    let data = pattern(size as usize, 9);
    b.store
        .put("c/obj", Bytes::from(data.clone()))
        .await
        .unwrap();
    let cache = b.cache_at(dir.clone(), 4 * BLOCK, 0).await;
    assert_eq!(cache.read("c/obj", size, 0..size).await.unwrap(), data);
    cache.close().await;
    drop(cache);
    let gets = b.requests("get_range", "ok");
    let cache = b.cache_at(dir, BLOCK, 0).await;
    for r in [0..size, BLOCK + 5..3 * BLOCK, size - 3..size] {
        let got = cache.read("c/obj", size, r.clone()).await.unwrap();
        assert!(
            got[..] == data[r.start as usize..r.end as usize],
            "{}: read {r:?} after reopening at another block size",
            b.kind
        );
    }
    assert_eq!(
        b.requests("get_range", "ok") - gets,
        17,
        "{}: every block fetched again at the new size",
        b.kind
    );
    cache.close().await;
}
