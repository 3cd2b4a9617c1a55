//! Starting and stopping a broker: metadata registration, log recovery, the accept loop,
//! and the orderly shutdown Kubernetes relies on at every rolling upgrade.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use strata_log::{LogManager, TailCache};
use strata_meta::{Command, CommandResult, MetaNode, RemoteSegmentMeta};
use strata_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::broker::{Broker, Endpoint};
use crate::clock::Clock;
use crate::config::BrokerConfig;
use crate::groups::coordinator::{GroupConfig, GroupCoordinator};
use crate::groups::offsets::OffsetWriter;
use crate::session::ListenerInfo;
use crate::tiering::{Tier, TierHandles};
use strata_meta::ListenerEndpoint;
use strata_security::SecurityProtocol;
use strata_security::tls::TlsServer;
use strata_security::transport::Transport;
use strata_tier::{BlockCache, CacheConfig, Store, StoreConfig};

/// One bound Kafka listener (Kafka's `listeners` entry).
pub struct KafkaListener {
    pub socket: TcpListener,
    /// Upper case, as in `listener.security.protocol.map`.
    pub name: String,
    pub protocol: SecurityProtocol,
    /// What its clients are told to connect to; defaults to the bound address.
    pub advertised: Option<Endpoint>,
}

/// Everything a broker needs besides its metadata node and listeners.
pub struct BrokerOptions {
    pub node_id: i32,
    /// Root of the partition logs (`<data-dir>/log`).
    pub log_dir: PathBuf,
    /// The listener other brokers use (`inter.broker.listener.name`).
    pub inter_broker_listener: String,
    /// The certificate of SSL and SASL_SSL listeners (the `ssl.*` settings).
    pub tls: Option<TlsServer>,
    /// OAUTHBEARER's token validator (the `sasl.oauthbearer.*` settings).
    pub oauth: Option<Arc<strata_security::oauth::JwtValidator>>,
    pub config: BrokerConfig,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Where sealed segments go.
    pub object_store: StoreConfig,
    /// The disk tier of the remote-read cache.
    pub cache_dir: PathBuf,
    /// This broker's rack (`--rack`).
    pub rack: Option<String>,
}

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("metadata: {0}")]
    Meta(#[from] strata_meta::MetaError),
    #[error("partition logs: {0}")]
    Log(#[from] strata_log::LogError),
    #[error("kafka listener: {0}")]
    Listener(std::io::Error),
    #[error("listener or security settings: {0}")]
    Security(String),
    #[error("metadata returned {0:?} when initialising the cluster id")]
    ClusterId(CommandResult),
    #[error("tiered storage: {0}")]
    Tier(#[from] strata_tier::TierError),
    #[error(
        "the object store {store} belongs to cluster {owner}, not to this node's cluster {ours}: every node of a cluster uses its own bucket prefix (point --object-store elsewhere, or give this node the data directory of that cluster)"
    )]
    ForeignStore {
        store: String,
        owner: String,
        ours: String,
    },
}

/// Creates the `strata.scram.bootstrap` users if the cluster never had any: applied
/// once, as Kafka's `kafka-storage format --add-scram` is.
async fn bootstrap_users(meta: &MetaNode, config: &BrokerConfig) -> Result<(), StartError> {
    let users = config.scram_bootstrap().map_err(StartError::Security)?;
    if users.is_empty() || meta.read(|s| s.scram_bootstrapped) {
        return Ok(());
    }
    let mut upserts = Vec::new();
    for u in users {
        let credential =
            strata_security::scram::Credential::from_password(u.hash, &u.password, u.iterations)
                .map_err(|e| {
                    StartError::Security(format!("scram.bootstrap user {}: {e}", u.name))
                })?;
        upserts.push((
            u.name,
            u.hash.mechanism().to_string(),
            crate::handlers::sasl::stored(credential),
        ));
    }
    let count = upserts.len();
    meta.write(Command::AlterScram {
        upserts,
        deletions: Vec::new(),
        bootstrap: true,
    })
    .await?;
    info!(
        users = count,
        "scram.bootstrap applied (if no credential existed yet)"
    );
    Ok(())
}

/// The object that names the cluster a bucket prefix belongs to.
const CLUSTER_ID_KEY: &str = "_strata/cluster-id";

/// Makes sure the object store holds this cluster's data and no other's: the first
/// node writes the cluster id there; every later start compares. Two clusters racing
/// to claim an empty prefix both read back what was written last, so one of them stops.
async fn claim_store(store: &Store, cluster_id: &str) -> Result<(), StartError> {
    let owner = match store.get(CLUSTER_ID_KEY).await {
        Ok(found) => found,
        Err(e) if e.is_not_found() => {
            store
                .put(CLUSTER_ID_KEY, bytes::Bytes::from(cluster_id.to_string()))
                .await?;
            store.get(CLUSTER_ID_KEY).await?
        }
        Err(e) => return Err(e.into()),
    };
    let owner = String::from_utf8_lossy(&owner).trim().to_string();
    if owner != cluster_id {
        return Err(StartError::ForeignStore {
            store: store.description().to_string(),
            owner,
            ours: cluster_id.to_string(),
        });
    }
    Ok(())
}

/// A running broker.
pub struct RunningBroker {
    pub(crate) broker: Arc<Broker>,
    health: Health,
    kafka_addr: SocketAddr,
    connections: TaskTracker,
    accept: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

/// A partition's log bounds as the admin API shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub topic_id: String,
    pub partition: i32,
    /// First readable offset (locally or from the object store).
    pub log_start_offset: i64,
    /// First offset on local disk.
    pub local_log_start_offset: i64,
    /// End of the data in the object store (start of the remote log if `None`).
    pub remote_log_start_offset: Option<i64>,
    pub remote_log_end_offset: Option<i64>,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub local_size_bytes: u64,
    pub remote_size_bytes: u64,
    pub remote_segments: usize,
    pub unuploaded_bytes: u64,
}

/// Read-only access to the broker for the admin API.
#[derive(Clone)]
pub struct BrokerView(Arc<Broker>);

impl BrokerView {
    pub fn partitions(&self) -> Vec<PartitionStatus> {
        let mut out: Vec<PartitionStatus> = self
            .0
            .logs
            .partitions()
            .into_iter()
            .filter_map(|(key, log)| {
                let topic = self.0.topic_by_id(key.topic_id)?;
                let pm = usize::try_from(key.partition)
                    .ok()
                    .and_then(|i| topic.partitions.get(i))?
                    .clone();
                let o = log.offsets();
                Some(PartitionStatus {
                    topic: topic.name.clone(),
                    topic_id: key.topic_id.to_string(),
                    partition: key.partition,
                    log_start_offset: o.log_start,
                    local_log_start_offset: o.local_start,
                    remote_log_start_offset: pm
                        .remote_segments
                        .first()
                        .map(|s| s.base_offset.max(o.log_start)),
                    remote_log_end_offset: pm.remote_segments.last().map(|s| s.next_offset),
                    high_watermark: o.high_watermark,
                    log_end_offset: o.log_end,
                    local_size_bytes: log.size_bytes(),
                    remote_size_bytes: pm.remote_segments.iter().map(|s| s.size).sum(),
                    remote_segments: pm.remote_segments.len(),
                    unuploaded_bytes: log.unuploaded().0,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }

    /// The object store's state as the broker's requests found it.
    pub fn object_store(&self) -> strata_tier::StoreStatus {
        self.0.tier.store.status()
    }

    /// A partition's manifest: its segments in the object store, oldest first, with
    /// keys as they are in the bucket (the store's prefix included).
    pub fn remote_segments(&self, topic: &str, partition: i32) -> Option<Vec<RemoteSegmentMeta>> {
        let topic = self.0.topic(topic)?;
        let pm = usize::try_from(partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))?;
        let store = &self.0.tier.store;
        Some(
            pm.remote_segments
                .iter()
                .map(|seg| RemoteSegmentMeta {
                    key: store.full_key(&seg.key),
                    index_key: store.full_key(&seg.index_key),
                    ..seg.clone()
                })
                .collect(),
        )
    }
}

/// Answers readiness probes: ready while the listener accepts, the metadata node takes
/// writes, this broker is registered and not fenced, every background task runs, and no
/// shutdown began.
#[derive(Clone)]
pub struct Health {
    node_id: i32,
    shutdown: CancellationToken,
    listening: Arc<AtomicBool>,
    meta: MetaNode,
    lease: Arc<crate::lease::Lease>,
    failed: Arc<watch::Sender<Option<String>>>,
}

impl Health {
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(reason) = self.failed.borrow().as_ref() {
            return Err(reason.clone());
        }
        if self.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        if !self.listening.load(Ordering::SeqCst) {
            return Err("the Kafka listener stopped".into());
        }
        if let Some(problem) = self.meta.problem() {
            return Err(problem);
        }
        match self
            .meta
            .read(|s| s.brokers.get(&self.node_id).map(|b| b.fenced))
        {
            None => Err("not registered with the controller".into()),
            Some(true) => {
                Err("fenced by the controller (its lease ran out): registering again".into())
            }
            Some(false) if self.lease.acts_fenced(&self.meta, self.node_id) => {
                Err(crate::broker::LEASE_LAPSED.into())
            }
            Some(false) => Ok(()),
        }
    }
}

/// Runs one of the broker's background tasks. Such a task only ends at shutdown: if it
/// ends before (it returned, or panicked), that is recorded in `failed`, which makes the
/// broker unready and the process exit non-zero, instead of the work stopping silently.
fn supervise(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
    shutdown: CancellationToken,
    failed: Arc<watch::Sender<Option<String>>>,
) -> JoinHandle<()> {
    use futures::FutureExt;
    tokio::spawn(async move {
        let outcome = std::panic::AssertUnwindSafe(task).catch_unwind().await;
        if shutdown.is_cancelled() {
            return;
        }
        let reason = match outcome {
            Ok(()) => format!("the {name} task stopped unexpectedly"),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("the {name} task panicked: {what}")
            }
        };
        tracing::error!(task = name, reason = %reason, "background task died");
        failed.send_if_modified(|f| {
            let first = f.is_none();
            f.get_or_insert(reason);
            first
        });
    })
}

/// A Kafka cluster id: 16 random bytes in URL-safe base64 without padding, as Kafka
/// writes them.
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = String::with_capacity(22);
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}

/// This host's name, for advertising a listener bound to all interfaces.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl RunningBroker {
    /// Recovers the logs, registers with metadata and starts serving `listener`.
    pub async fn start(
        opts: BrokerOptions,
        meta: MetaNode,
        listeners: Vec<KafkaListener>,
    ) -> Result<Self, StartError> {
        let mut bound = Vec::new();
        for l in listeners {
            let addr = l.socket.local_addr().map_err(StartError::Listener)?;
            let advertised = l.advertised.clone().unwrap_or_else(|| Endpoint {
                host: if addr.ip().is_unspecified() {
                    host_name()
                } else {
                    addr.ip().to_string()
                },
                port: addr.port(),
            });
            let tls = match (l.protocol.tls(), &opts.tls) {
                (false, _) => None,
                (true, Some(tls)) => Some(tls.acceptor(!l.protocol.sasl())),
                (true, None) => {
                    return Err(StartError::Security(format!(
                        "listener {} is {} but ssl.keystore.location is not set",
                        l.name,
                        l.protocol.name()
                    )));
                }
            };
            bound.push((l, addr, advertised, tls));
        }
        let Some((kafka_addr, endpoint, inter_protocol)) = bound
            .iter()
            .find(|(l, ..)| l.name == opts.inter_broker_listener)
            .map(|(l, addr, advertised, _)| (*addr, advertised.clone(), l.protocol))
        else {
            return Err(StartError::Security(format!(
                "inter.broker.listener.name {} is not one of the listeners",
                opts.inter_broker_listener
            )));
        };
        // Brokers reach each other as the inter-broker listener expects: plain, or mTLS
        // with this broker's own certificate. (SASL there cannot be spoken by brokers
        // yet; the command line refuses it in a cluster, and a single node never dials
        // itself; nor does it need the truststore, which the command line requires in a
        // cluster with an SSL inter-broker listener.)
        let inter_broker = match (inter_protocol.tls(), &opts.tls) {
            (true, Some(tls)) if tls.has_truststore() => Transport::tls(tls, Vec::new())
                .map_err(|e| StartError::Security(format!("inter-broker TLS: {e}")))?,
            _ => Transport::Plain,
        };
        let advertised_listeners: Vec<ListenerEndpoint> = bound
            .iter()
            .map(|(l, _, a, _)| ListenerEndpoint {
                name: l.name.clone(),
                host: a.host.clone(),
                port: a.port,
            })
            .collect();
        // The object store first: a store that cannot be used fails the start at once,
        // before a possibly long log recovery.
        let store = Store::open(&opts.object_store, opts.metrics.tier.clone())?;
        {
            let meta = meta.clone();
            store.set_topic_namer(Arc::new(move |id| {
                meta.read(|s| s.topic_by_id(id).map(|t| t.name.clone()))
            }));
        }
        store.check().await?;
        let cluster_id = match meta
            .write(Command::InitCluster {
                cluster_id: new_cluster_id(),
            })
            .await?
        {
            CommandResult::ClusterId(id) => id,
            other => return Err(StartError::ClusterId(other)),
        };
        claim_store(&store, &cluster_id).await?;
        bootstrap_users(&meta, &opts.config).await?;
        let now = opts.clock.now_ms();
        let log_dir = opts.log_dir.clone();
        let metrics = opts.metrics.log.clone();
        let tail = TailCache::new(opts.config.wal_cache_bytes());
        let logs = Arc::new(
            tokio::task::spawn_blocking(move || LogManager::open(log_dir, metrics, tail, now))
                .await
                .map_err(|e| StartError::Listener(std::io::Error::other(e)))??,
        );
        let registering = tokio::time::Instant::now();
        let epoch = Broker::register(
            &meta,
            opts.node_id,
            &endpoint,
            &advertised_listeners,
            opts.rack.clone(),
        )
        .await?;
        let lease = Arc::new(crate::lease::Lease::new(
            opts.config.broker_session_timeout(),
            registering,
        ));
        let commit_time = opts
            .metrics
            .replication
            .meta_commit_duration_seconds
            .clone();
        meta.observe_writes(Arc::new(move |d| commit_time.observe(d.as_secs_f64())));
        let groups = GroupCoordinator::new(GroupConfig {
            min_session_timeout_ms: opts.config.group_min_session_timeout_ms(),
            max_session_timeout_ms: opts.config.group_max_session_timeout_ms(),
            initial_rebalance_delay_ms: opts.config.group_initial_rebalance_delay_ms(),
            max_size: opts.config.group_max_size(),
        });
        let offsets = OffsetWriter::start(meta.clone(), opts.metrics.group.clone());
        let cache_bytes = crate::tiering::cache_disk_bytes(
            opts.config.cache_disk_bytes() as u64,
            &opts.cache_dir,
            logs.root(),
        );
        let cache = BlockCache::open(
            CacheConfig {
                dir: opts.cache_dir.clone(),
                memory_bytes: opts.config.cache_memory_bytes(),
                disk_bytes: cache_bytes as usize,
                block_bytes: opts.config.cache_block_bytes(),
                readahead_blocks: opts.config.cache_readahead_blocks(),
            },
            store.clone(),
            opts.metrics.tier.clone(),
        )
        .await?;
        let tier = Arc::new(Tier::new(
            store,
            cache,
            TierHandles {
                node_id: opts.node_id,
                meta: meta.clone(),
                logs: logs.clone(),
                config: opts.config.clone(),
                clock: opts.clock.clone(),
                metrics: opts.metrics.tier.clone(),
                cache_dir: opts.cache_dir.clone(),
                cache_bytes,
            },
        ));
        let replication = {
            let clock = opts.clock.clone();
            let (partition_bytes, response_bytes) = opts.config.replica_fetch_bytes();
            strata_replication::Replication::new(
                opts.node_id,
                meta.clone(),
                strata_replication::ReplicationConfig {
                    lag_max: opts.config.replica_lag_max(),
                    fetch_partition_bytes: partition_bytes,
                    fetch_response_bytes: response_bytes,
                    fetch_wait: opts.config.replica_fetch_wait(),
                    source: (!kafka_addr.ip().is_unspecified()).then_some(kafka_addr.ip()),
                    transport: inter_broker.clone(),
                },
                opts.metrics.replication.clone(),
                Arc::new(move || clock.now_ms()),
            )
        };
        let request_budget = opts.config.queued_max_request_bytes().map(|bytes| {
            // The semaphore takes at most u32::MAX permits at once; frames are smaller.
            let bytes = bytes.min(tokio::sync::Semaphore::MAX_PERMITS);
            (Arc::new(tokio::sync::Semaphore::new(bytes)), bytes)
        });
        let fetch_sessions = crate::fetch_sessions::FetchSessions::new(opts.metrics.kafka.clone());
        let producer_ids = Arc::new(crate::producer_ids::ProducerIds::default());
        let txn = crate::txn::TxnCoordinator::new(
            meta.clone(),
            producer_ids.clone(),
            crate::txn::TxnConfig {
                max_timeout_ms: opts.config.transaction_max_timeout_ms(),
                id_expiration_ms: opts.config.transactional_id_expiration_ms(),
                expiry_interval_ms: opts.config.transactional_id_expiry_interval_ms(),
            },
            opts.metrics.txn.clone(),
        );
        let broker = Arc::new(Broker {
            node_id: opts.node_id,
            endpoint,
            listeners: advertised_listeners,
            inter_broker,
            cluster_id,
            authorizer: opts.config.authorizer().map(Arc::new),
            oauth: opts.oauth.clone(),
            config: opts.config,
            meta,
            logs,
            metrics: opts.metrics,
            started_ms: opts.clock.now_ms(),
            clock: opts.clock,
            shutdown: CancellationToken::new(),
            groups,
            offsets,
            producer_ids: producer_ids.clone(),
            txn,
            tier,
            reconciled_epoch: std::sync::atomic::AtomicU64::new(0),
            request_budget,
            log_throttle: strata_telemetry::LogThrottle::new(Duration::from_secs(1)),
            rack: opts.rack,
            epoch: std::sync::atomic::AtomicI64::new(epoch),
            lease: lease.clone(),
            replication,
            fetch_sessions,
        });
        {
            let b = broker.clone();
            tokio::task::spawn_blocking(move || b.reconcile())
                .await
                .map_err(|e| StartError::Listener(std::io::Error::other(e)))?;
        }
        let failed = Arc::new(watch::Sender::new(None));
        type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
        let spawn = |name: &'static str, task: Task| {
            supervise(name, task, broker.shutdown.clone(), failed.clone())
        };
        let meta_watch = {
            let meta = broker.meta.clone();
            let failed = failed.clone();
            let stop = broker.shutdown.clone();
            async move {
                tokio::select! {
                    reason = meta.failed() => {
                        failed.send_if_modified(|f| {
                            f.get_or_insert(format!("the metadata node stopped: {reason}"));
                            true
                        });
                        // The failure is recorded; this task's end is not a second one.
                        stop.cancelled().await;
                    }
                    () = stop.cancelled() => {}
                }
            }
        };
        let background = vec![
            spawn("metadata watch", Box::pin(broker.clone().run_background())),
            spawn(
                "uploader",
                Box::pin(broker.tier.clone().run_uploads(broker.shutdown.clone())),
            ),
            spawn(
                "garbage collector",
                Box::pin(broker.tier.clone().run_gc(broker.shutdown.clone())),
            ),
            spawn("scrubber", Box::pin(broker.clone().run_scrub())),
            spawn("heartbeat", Box::pin(broker.clone().run_heartbeats())),
            spawn(
                "transaction coordinator",
                Box::pin(broker.clone().run_transactions()),
            ),
            spawn(
                "replication",
                Box::pin(broker.replication.clone().run(broker.shutdown.clone())),
            ),
            spawn(
                "object store probe",
                Box::pin(broker.tier.store.clone().run_probe(broker.shutdown.clone())),
            ),
            spawn("metadata node watch", Box::pin(meta_watch)),
        ];
        let mut background = background;
        if let Some(oauth) = opts.oauth {
            let every = broker.config.jwks_refresh();
            let stop = broker.shutdown.clone();
            background.push(spawn(
                "JWKS watch",
                Box::pin(async move { oauth.watch(every, stop).await }),
            ));
        }
        let connections = TaskTracker::new();
        let health = Health {
            node_id: broker.node_id,
            shutdown: broker.shutdown.clone(),
            listening: Arc::new(AtomicBool::new(true)),
            meta: broker.meta.clone(),
            lease: broker.lease.clone(),
            failed,
        };
        let mut accept = Vec::new();
        for (l, addr, advertised, tls) in bound {
            let info = Arc::new(ListenerInfo {
                name: l.name,
                protocol: l.protocol,
            });
            info!(
                addr = %addr,
                listener = %info.name,
                protocol = info.protocol.name(),
                advertised = %format!("{}:{}", advertised.host, advertised.port),
                node_id = broker.node_id,
                cluster_id = %broker.cluster_id,
                "kafka listener ready"
            );
            accept.push(tokio::spawn(accept_loop(
                broker.clone(),
                l.socket,
                info,
                tls,
                connections.clone(),
                health.listening.clone(),
            )));
        }
        info!(object_store = %broker.tier.store.description(), "tiered storage ready");
        Ok(Self {
            broker,
            health,
            kafka_addr,
            connections,
            accept,
            background,
        })
    }

    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    /// A handle that answers readiness probes for as long as anyone holds it.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Resolves, with the reason, when the broker cannot go on: a background task or the
    /// metadata node stopped. The process should then shut down and exit non-zero.
    pub fn failed(&self) -> impl Future<Output = String> + use<> {
        let mut rx = self.health.failed.subscribe();
        async move {
            loop {
                if let Some(reason) = rx.borrow_and_update().clone() {
                    return reason;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// A read-only view of the broker's partitions, for the admin API.
    pub fn view(&self) -> BrokerView {
        BrokerView(self.broker.clone())
    }

    /// Stops accepting, lets in-flight requests finish (cutting long-poll waits short),
    /// syncs every log and stops the metadata node. Connections still busy after
    /// `grace` are abandoned.
    pub async fn shutdown(self, grace: Duration) {
        info!(
            "shutting down: moving leadership away, then no new connections, finishing in-flight requests"
        );
        self.broker.hand_off_leadership().await;
        self.broker.shutdown.cancel();
        for accept in self.accept {
            let _ = accept.await;
        }
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait())
            .await
            .is_err()
        {
            warn!(
                open = self.connections.len(),
                "connections still busy after the grace period"
            );
        }
        for task in self.background {
            let _ = task.await;
        }
        self.broker.tier.cache.close().await;
        let broker = self.broker.clone();
        match tokio::task::spawn_blocking(move || broker.logs.sync_all()).await {
            Ok(Ok(())) => info!("partition logs synced"),
            Ok(Err(e)) => warn!(error = %e, "syncing partition logs failed"),
            Err(e) => warn!(error = %e, "syncing partition logs failed"),
        }
        if let Err(e) = self.broker.meta.shutdown().await {
            warn!(error = %e, "metadata node did not shut down cleanly");
        }
        info!("shutdown complete");
    }
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: TcpListener,
    info: Arc<ListenerInfo>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: TaskTracker,
    listening: Arc<AtomicBool>,
) {
    // Clears the readiness flag however the loop ends.
    struct Stopped(Arc<AtomicBool>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let _stopped = Stopped(listening);
    loop {
        let accepted = tokio::select! {
            () = broker.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(crate::connection::serve(
                    broker.clone(),
                    stream,
                    peer,
                    info.clone(),
                    tls.clone(),
                ));
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning (and log once a second).
                if let Some(held_back) = broker.log_throttle.allow("accept_error") {
                    warn!(error = %e, held_back, "accept failed");
                }
                broker
                    .metrics
                    .kafka
                    .connection_errors_total
                    .with_label_values(&["accept_error"])
                    .inc();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        let a = new_cluster_id();
        assert_eq!(a.len(), 22);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(a, new_cluster_id());
    }
}
