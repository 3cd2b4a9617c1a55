//! Logging setup and the broker's metric registry.
//!
//! This crate owns the names, labels and buckets of every Prometheus metric Strata exports
//! (`strata_<subsystem>_<name>_<unit>`) and the `tracing` subscriber setup. Other crates
//! record into the handles of [`Metrics`]; they never register metrics of their own, so
//! the full list lives in one place (and in `docs/metrics.md`). It must not depend on
//! any other Strata crate.

mod otel;

pub use otel::{Otel, tracing_enabled};
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label names, shared so that dashboards and code agree.
pub mod labels {
    pub const API: &str = "api";
    pub const REASON: &str = "reason";
    pub const TOPIC: &str = "topic";
    pub const PARTITION: &str = "partition";
    pub const ERROR: &str = "error";
    pub const OP: &str = "op";
    pub const OUTCOME: &str = "outcome";
    pub const SOURCE: &str = "source";
    pub const RESULT: &str = "result";
    pub const DIRECTION: &str = "direction";
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level or filter {filter:?}: {reason}")]
    LogFilter { filter: String, reason: String },
    #[error("metric registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("OpenTelemetry export: {0}")]
    Otlp(String),
}

/// Request latency buckets: 100 µs to 30 s (long-polling fetches sit at the top).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];
/// fdatasync latency buckets: 50 µs to 5 s.
const SYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Kafka listener metrics.
#[derive(Clone)]
pub struct KafkaMetrics {
    pub requests_total: IntCounterVec,
    pub request_duration_seconds: HistogramVec,
    pub request_errors_total: IntCounterVec,
    pub bytes_in_total: IntCounter,
    pub bytes_out_total: IntCounter,
    pub connections_active: IntGauge,
    pub connections_total: IntCounter,
    pub connection_errors_total: IntCounterVec,
    pub request_bytes_in_memory: IntGauge,
    pub produce_records_bytes_total: IntCounter,
    pub fetch_records_bytes_total: IntCounter,
    /// Of those, the bytes sent from segment files with `sendfile`.
    pub fetch_sendfile_bytes_total: IntCounter,
    pub fetch_sessions: IntGauge,
    pub fetch_session_partitions: IntGauge,
    pub fetch_session_evictions_total: IntCounter,
    pub incremental_fetches_total: IntCounter,
    pub authentications_total: IntCounterVec,
    pub tls_reloads_total: IntCounterVec,
    pub authorization_denied_total: IntCounterVec,
}

/// Partition log metrics.
#[derive(Clone)]
pub struct LogMetrics {
    pub end_offset: IntGaugeVec,
    pub start_offset: IntGaugeVec,
    pub size_bytes: IntGaugeVec,
    pub sync_duration_seconds: Histogram,
    pub syncs_total: IntCounter,
    pub segments_rolled_total: IntCounter,
    pub segments_deleted_total: IntCounter,
    pub recovery_truncated_bytes_total: IntCounter,
    pub damaged_segments_total: IntCounter,
    pub verified_bytes_total: IntCounter,
    pub io_errors_total: IntCounterVec,
    pub tail_cache_bytes: IntGauge,
}

/// Consumer group coordinator metrics.
#[derive(Clone)]
pub struct GroupMetrics {
    pub members: IntGauge,
    pub rebalances_total: IntCounter,
    pub expired_members_total: IntCounter,
    pub offset_commits_total: IntCounter,
    pub offset_commit_writes_total: IntCounter,
    pub expired_offsets_total: IntCounter,
}

/// Transaction coordinator metrics (of the transactional ids this broker coordinates).
#[derive(Clone)]
pub struct TxnMetrics {
    pub completed_total: IntCounterVec,
    pub timed_out_total: IntCounter,
    pub expired_ids_total: IntCounter,
    pub open: IntGauge,
    pub oldest_open_seconds: IntGauge,
}

/// Replication and cluster metrics.
#[derive(Clone)]
pub struct ReplicationMetrics {
    pub leader_partitions: IntGauge,
    pub under_replicated_partitions: IntGauge,
    pub offline_partitions: IntGauge,
    pub isr_shrinks_total: IntCounter,
    pub isr_expands_total: IntCounter,
    pub lag_records: IntGaugeVec,
    pub lag_bytes: IntGaugeVec,
    pub leaderships_total: IntCounter,
    pub fetched_bytes_total: IntCounter,
    pub meta_leader: IntGauge,
    pub meta_term: IntGauge,
    pub meta_elections_total: IntCounter,
    pub meta_commit_duration_seconds: Histogram,
    pub brokers_alive: IntGauge,
}

/// Tiered storage and object store metrics.
#[derive(Clone)]
pub struct TierMetrics {
    pub objstore_requests_total: IntCounterVec,
    pub objstore_request_duration_seconds: HistogramVec,
    pub objstore_up: IntGauge,
    /// Object store requests by topic and operation: what each topic costs in requests.
    pub objstore_topic_requests_total: IntCounterVec,
    /// Object store bytes by topic and direction (`upload`, `download`).
    pub objstore_topic_bytes_total: IntCounterVec,
    pub unuploaded_bytes: IntGauge,
    pub unuploaded_segments: IntGauge,
    pub uploads_total: IntCounter,
    pub upload_errors_total: IntCounter,
    pub uploaded_bytes_total: IntCounter,
    pub upload_duration_seconds: Histogram,
    pub read_bytes_total: IntCounterVec,
    pub cache_requests_total: IntCounterVec,
    /// Blocks being fetched from the store or not yet in the cache's disk tier.
    pub cache_disk_pending_blocks: IntGauge,
    /// Blocks the cache's disk tier dropped instead of writing, by reason.
    pub cache_disk_dropped_blocks_total: IntCounterVec,
    pub remote_segments_deleted_total: IntCounter,
    pub gc_deleted_objects_total: IntCounter,
    pub produce_throttled_total: IntCounter,
}

/// Lets a log line through at most once per `every` for each key, and says how many were
/// held back in between: for events a misbehaving peer can cause thousands of times a
/// second (each is still counted in a metric).
#[derive(Debug)]
pub struct LogThrottle {
    every: std::time::Duration,
    seen: std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

impl LogThrottle {
    pub fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            seen: Default::default(),
        }
    }

    /// `Some(n)` if a line for `key` may be logged now (`n` lines were held back since
    /// the last one), `None` if it is to be held back.
    pub fn allow(&self, key: &'static str) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(key) {
            Some((last, held)) if now.duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Every metric the broker exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    names: Vec<(String, MetricType)>,
    pub kafka: KafkaMetrics,
    pub log: LogMetrics,
    pub group: GroupMetrics,
    pub tier: TierMetrics,
    pub replication: ReplicationMetrics,
    pub txn: TxnMetrics,
}

/// Creates and registers metrics, remembering their names.
struct Registrar {
    registry: Registry,
    names: Vec<(String, MetricType)>,
}

impl Registrar {
    fn add<C: prometheus::core::Collector + Clone + 'static>(
        &mut self,
        name: &str,
        kind: MetricType,
        c: C,
    ) -> Result<C, prometheus::Error> {
        self.registry.register(Box::new(c.clone()))?;
        self.names.push((name.to_string(), kind));
        Ok(c)
    }

    fn counter(&mut self, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
        self.add(name, MetricType::COUNTER, IntCounter::new(name, help)?)
    }

    fn counter_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, prometheus::Error> {
        self.add(
            name,
            MetricType::COUNTER,
            IntCounterVec::new(Opts::new(name, help), labels)?,
        )
    }

    fn gauge(&mut self, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
        self.add(name, MetricType::GAUGE, IntGauge::new(name, help)?)
    }

    fn gauge_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, prometheus::Error> {
        self.add(
            name,
            MetricType::GAUGE,
            IntGaugeVec::new(Opts::new(name, help), labels)?,
        )
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, prometheus::Error> {
        self.add(
            name,
            MetricType::HISTOGRAM,
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?,
        )
    }

    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> Result<HistogramVec, prometheus::Error> {
        self.add(
            name,
            MetricType::HISTOGRAM,
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?,
        )
    }
}

impl Metrics {
    pub fn new() -> Result<Self, TelemetryError> {
        use labels::*;
        let mut r = Registrar {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let kafka = KafkaMetrics {
            requests_total: r.counter_vec(
                "strata_kafka_requests_total",
                "Kafka requests handled, by API",
                &[API],
            )?,
            request_duration_seconds: r.histogram_vec(
                "strata_kafka_request_duration_seconds",
                "Time from a request's arrival to its response being queued, by API",
                LATENCY_BUCKETS,
                &[API],
            )?,
            request_errors_total: r.counter_vec(
                "strata_kafka_request_errors_total",
                "Error codes returned in responses, by API and Kafka error name",
                &[API, ERROR],
            )?,
            bytes_in_total: r.counter(
                "strata_kafka_network_in_bytes_total",
                "Bytes received from Kafka clients",
            )?,
            bytes_out_total: r.counter(
                "strata_kafka_network_out_bytes_total",
                "Bytes sent to Kafka clients",
            )?,
            connections_active: r.gauge(
                "strata_kafka_connections_active",
                "Open Kafka client connections",
            )?,
            connections_total: r.counter(
                "strata_kafka_connections_total",
                "Kafka client connections accepted",
            )?,
            connection_errors_total: r.counter_vec(
                "strata_kafka_connection_errors_total",
                "Connections closed because of a protocol or I/O error, or a timeout, by reason (each logged at most once a second per reason)",
                &[REASON],
            )?,
            request_bytes_in_memory: r.gauge(
                "strata_kafka_request_bytes_in_memory",
                "Bytes of request frames being received or handled, bounded by queued.max.request.bytes",
            )?,
            produce_records_bytes_total: r.counter(
                "strata_kafka_produce_bytes_total",
                "Record-batch bytes appended by Produce requests",
            )?,
            fetch_records_bytes_total: r.counter(
                "strata_kafka_fetch_bytes_total",
                "Record-batch bytes returned by Fetch requests",
            )?,
            fetch_sendfile_bytes_total: r.counter(
                "strata_kafka_fetch_sendfile_bytes_total",
                "Record-batch bytes of Fetch responses sent straight from segment files with sendfile (plaintext listeners), not copied through the broker",
            )?,
            fetch_sessions: r.gauge(
                "strata_kafka_fetch_sessions",
                "Fetch sessions (KIP-227) this broker keeps",
            )?,
            fetch_session_partitions: r.gauge(
                "strata_kafka_fetch_session_partitions",
                "Partitions in all fetch sessions together",
            )?,
            fetch_session_evictions_total: r.counter(
                "strata_kafka_fetch_session_evictions_total",
                "Fetch sessions evicted to make room for new ones",
            )?,
            incremental_fetches_total: r.counter(
                "strata_kafka_incremental_fetches_total",
                "Fetch requests served incrementally, from a fetch session",
            )?,
            authentications_total: r.counter_vec(
                "strata_kafka_authentications_total",
                "SASL authentications (re-authentications included) by mechanism and result (success, failure)",
                &["mechanism", "result"],
            )?,
            tls_reloads_total: r.counter_vec(
                "strata_kafka_tls_reloads_total",
                "Changes of the TLS keystore file on disk, by result (reloaded, failed: the previous certificate stays)",
                &["result"],
            )?,
            authorization_denied_total: r.counter_vec(
                "strata_kafka_authorization_denied_total",
                "Authorization checks an ACL denied, by API, operation and resource type (each also logged under the strata::audit target)",
                &["api", "operation", "resource_type"],
            )?,
        };
        let log = LogMetrics {
            end_offset: r.gauge_vec("strata_log_end_offset", "Next offset to be written, by partition", &[TOPIC, PARTITION])?,
            start_offset: r.gauge_vec(
                "strata_log_start_offset",
                "First offset still readable, by partition",
                &[TOPIC, PARTITION],
            )?,
            size_bytes: r.gauge_vec(
                "strata_log_size_bytes",
                "Bytes of segment files on local disk, by partition",
                &[TOPIC, PARTITION],
            )?,
            sync_duration_seconds: r.histogram(
                "strata_log_sync_duration_seconds",
                "fdatasync latency of a partition's active segment (one sync covers many produce requests)",
                SYNC_BUCKETS,
            )?,
            syncs_total: r.counter("strata_log_syncs_total", "fdatasync calls on segments")?,
            segments_rolled_total: r.counter(
                "strata_log_segments_rolled_total",
                "Segments sealed because of segment.bytes or segment.ms",
            )?,
            segments_deleted_total: r.counter(
                "strata_log_segments_deleted_total",
                "Segments deleted by retention or log start offset moves",
            )?,
            damaged_segments_total: r.counter(
                "strata_log_damaged_segments_total",
                "Sealed segments found damaged (a batch failing its CRC, or data missing), by start-up checks, reads, uploads or the scrubber; never served",
            )?,
            verified_bytes_total: r.counter(
                "strata_log_verified_bytes_total",
                "Bytes of sealed segments whose batch CRCs were checked in full (before upload, or by the scrubber)",
            )?,
            recovery_truncated_bytes_total: r.counter(
                "strata_log_recovery_truncated_bytes_total",
                "Bytes of torn or corrupt segment tails cut off during recovery",
            )?,
            io_errors_total: r.counter_vec(
                "strata_log_io_errors_total",
                "Disk errors in the partition log, by operation",
                &[REASON],
            )?,
            tail_cache_bytes: r.gauge(
                "strata_log_tail_cache_bytes",
                "Newest appends of all partitions held in memory (strata.wal.cache-bytes)",
            )?,
        };
        let group = GroupMetrics {
            members: r.gauge(
                "strata_group_members",
                "Members of consumer groups coordinated here",
            )?,
            rebalances_total: r.counter("strata_group_rebalances_total", "Rebalances started")?,
            expired_members_total: r.counter(
                "strata_group_expired_members_total",
                "Members removed because their session timed out",
            )?,
            offset_commits_total: r.counter(
                "strata_group_offset_commits_total",
                "Partition offsets committed",
            )?,
            offset_commit_writes_total: r.counter(
                "strata_group_offset_commit_writes_total",
                "Metadata (Raft) writes carrying committed offsets; commits are batched into them",
            )?,
            expired_offsets_total: r.counter(
                "strata_group_expired_offsets_total",
                "Committed offsets removed by offsets.retention.minutes",
            )?,
        };
        let replication = ReplicationMetrics {
            leader_partitions: r.gauge(
                "strata_replication_leader_partitions",
                "Partitions this broker leads",
            )?,
            under_replicated_partitions: r.gauge(
                "strata_replication_under_replicated_partitions",
                "Partitions led here whose ISR is smaller than their replica set",
            )?,
            offline_partitions: r.gauge(
                "strata_replication_offline_partitions",
                "Partitions with no leader (no live in-sync replica), cluster-wide",
            )?,
            isr_shrinks_total: r.counter(
                "strata_replication_isr_shrinks_total",
                "ISR changes committed that removed a follower, of partitions led here",
            )?,
            isr_expands_total: r.counter(
                "strata_replication_isr_expands_total",
                "ISR changes committed that added a follower, of partitions led here",
            )?,
            lag_records: r.gauge_vec(
                "strata_replication_lag_records",
                "Records each follower lacks of the partitions led here, by follower broker id",
                &["follower"],
            )?,
            lag_bytes: r.gauge_vec(
                "strata_replication_lag_bytes",
                "Bytes each follower lacks of the partitions led here, by follower broker id (estimated from each partition's average record size)",
                &["follower"],
            )?,
            leaderships_total: r.counter(
                "strata_replication_leaderships_total",
                "Times this broker became a partition's leader (topic creation, failover, preferred-leader moves)",
            )?,
            fetched_bytes_total: r.counter(
                "strata_replication_fetched_bytes_total",
                "Record bytes this broker copied from leaders as a follower",
            )?,
            meta_leader: r.gauge(
                "strata_meta_leader",
                "Node id of the metadata quorum's leader (the controller), -1 if none is known",
            )?,
            meta_term: r.gauge(
                "strata_meta_term",
                "The metadata quorum's current Raft term",
            )?,
            meta_elections_total: r.counter(
                "strata_meta_elections_total",
                "Changes of the metadata leader seen by this node",
            )?,
            meta_commit_duration_seconds: r.histogram(
                "strata_meta_commit_duration_seconds",
                "Time to commit a metadata write through the quorum, as this node's broker waited",
                LATENCY_BUCKETS,
            )?,
            brokers_alive: r.gauge(
                "strata_cluster_brokers_alive",
                "Registered brokers that are not fenced",
            )?,
        };
        let tier = TierMetrics {
            objstore_requests_total: r.counter_vec(
                "strata_objstore_requests_total",
                "Object store requests, every attempt counted, by operation and outcome (ok, not_found, error, timeout)",
                &[OP, OUTCOME],
            )?,
            objstore_request_duration_seconds: r.histogram_vec(
                "strata_objstore_request_duration_seconds",
                "Object store request latency, by operation",
                LATENCY_BUCKETS,
                &[OP],
            )?,
            objstore_up: r.gauge(
                "strata_objstore_up",
                "1 while the object store answers requests, 0 from a failed request (an error or a timeout) until one succeeds",
            )?,
            objstore_topic_requests_total: r.counter_vec(
                "strata_objstore_topic_requests_total",
                "Object store requests for a topic's objects, every attempt counted, by topic and operation",
                &[TOPIC, OP],
            )?,
            objstore_topic_bytes_total: r.counter_vec(
                "strata_objstore_topic_bytes_total",
                "Object store bytes of a topic's objects, by topic and direction (upload, download)",
                &[TOPIC, DIRECTION],
            )?,
            unuploaded_bytes: r.gauge(
                "strata_unuploaded_bytes",
                "Bytes on local disk not yet in the object store: what a lost disk would take with it",
            )?,
            unuploaded_segments: r.gauge(
                "strata_unuploaded_segments",
                "Segments (the active ones included) with data not yet in the object store",
            )?,
            uploads_total: r.counter("strata_tier_uploads_total", "Segments uploaded and recorded in the manifest")?,
            upload_errors_total: r.counter("strata_tier_upload_errors_total", "Segment uploads that failed (and will be retried)")?,
            uploaded_bytes_total: r.counter("strata_tier_uploaded_bytes_total", "Segment bytes uploaded")?,
            upload_duration_seconds: r.histogram(
                "strata_tier_upload_duration_seconds",
                "Time to upload a segment and its index and commit it to the manifest",
                LATENCY_BUCKETS,
            )?,
            read_bytes_total: r.counter_vec(
                "strata_tier_read_bytes_total",
                "Record bytes served to fetches, by source (local, cache, object_store)",
                &[SOURCE],
            )?,
            cache_requests_total: r.counter_vec(
                "strata_tier_cache_requests_total",
                "Block reads of remote data, by result (hit: served by the cache; miss: needed a GET)",
                &[RESULT],
            )?,
            cache_disk_pending_blocks: r.gauge(
                "strata_tier_cache_disk_pending_blocks",
                "Blocks being fetched from the object store, or fetched and not yet in the cache's disk tier (a crash now means a GET for them after the restart)",
            )?,
            cache_disk_dropped_blocks_total: r.counter_vec(
                "strata_tier_cache_disk_dropped_blocks_total",
                "Blocks the cache's disk tier dropped instead of writing, by reason (queue_full, buffer_full): kept in memory only, they cost a GET again once evicted or after a restart",
                &[REASON],
            )?,
            remote_segments_deleted_total: r.counter(
                "strata_tier_remote_segments_deleted_total",
                "Remote segments deleted by retention, DeleteRecords or topic deletion",
            )?,
            gc_deleted_objects_total: r.counter(
                "strata_tier_gc_deleted_objects_total",
                "Objects no manifest names (left by a crash between upload and commit), deleted",
            )?,
            produce_throttled_total: r.counter(
                "strata_tier_produce_throttled_total",
                "Produce requests refused because strata.wal.max-unuploaded-bytes was reached",
            )?,
        };
        let txn = TxnMetrics {
            completed_total: r.counter_vec(
                "strata_txn_completed_total",
                "Transactions completed by this coordinator, by result (commit, abort)",
                &[RESULT],
            )?,
            timed_out_total: r.counter(
                "strata_txn_timed_out_total",
                "Transactions this coordinator aborted because they outlived transaction.timeout.ms",
            )?,
            expired_ids_total: r.counter(
                "strata_txn_expired_ids_total",
                "Transactional ids this coordinator forgot after transactional.id.expiration.ms without use",
            )?,
            open: r.gauge(
                "strata_txn_open",
                "Open transactions of the transactional ids this broker coordinates",
            )?,
            oldest_open_seconds: r.gauge(
                "strata_txn_oldest_open_seconds",
                "Age of the oldest open transaction this broker coordinates (0: none)",
            )?,
        };
        Ok(Self {
            registry: r.registry,
            names: r.names,
            kafka,
            log,
            group,
            tier,
            replication,
            txn,
        })
    }

    /// Names of every registered metric.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|(n, _)| n.as_str())
    }

    /// Every registered metric with its type.
    pub(crate) fn kinds(&self) -> &[(String, MetricType)] {
        &self.names
    }

    /// The registry's current samples.
    pub(crate) fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on a broken metric family, which registration prevents.
        if let Err(e) = TextEncoder::new().encode(&self.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Installs the global `tracing` subscriber: one line per event on stderr. `level` (from
/// `--log-level` or the config file) wins over `RUST_LOG`; with neither, `info` (and
/// `warn` for openraft). With `otel`, Strata's spans also go to its OTLP exporter,
/// whatever the log level.
pub fn init_logging(level: Option<&str>, otel: Option<&Otel>) -> Result<(), TelemetryError> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| TelemetryError::LogFilter {
            filter: l.to_string(),
            reason: e.to_string(),
        })?,
        // openraft narrates every election at info; its warnings are what operators need.
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true)
        .with_filter(filter);
    // Only Strata's own spans are exported (not the events inside them, which are logs).
    let spans = otel.and_then(|o| o.tracer.clone()).map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && m.target().starts_with("strata")
            }))
    });
    // A second initialisation (tests) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(spans)
        .try_init();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new().unwrap();
        m.kafka.requests_total.with_label_values(&["Produce"]).inc();
        m.log.end_offset.with_label_values(&["t", "0"]).set(42);
        let text = m.render();
        assert!(text.contains("strata_kafka_requests_total{api=\"Produce\"} 1"));
        assert!(text.contains("strata_log_end_offset{partition=\"0\",topic=\"t\"} 42"));
    }

    #[test]
    fn every_metric_is_documented() {
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/metrics.md"
        ))
        .unwrap();
        let m = Metrics::new().unwrap();
        assert!(m.names().count() > 15);
        for name in m.names() {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is missing from docs/metrics.md"
            );
        }
    }

    #[test]
    fn bad_log_filter_is_an_error() {
        assert!(init_logging(Some("info,[bad"), None).is_err());
    }
}
