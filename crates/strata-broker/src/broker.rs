//! The broker's shared state and its background work: what every connection handler
//! reaches through `Arc<Broker>`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use strata_log::{LogManager, Partition, PartitionKey};
use strata_meta::{BrokerInfo, Command, CommandResult, MetaNode, PartitionMeta, TopicMeta};
use strata_telemetry::Metrics;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::clock::Clock;
use crate::config::{BrokerConfig, ConfigError, TopicConfig, validate_topic_configs};
use crate::errors;
use crate::groups::coordinator::GroupCoordinator;
use crate::groups::offsets::OffsetWriter;

/// Largest partition count one CreateTopics request may ask for.
pub const MAX_PARTITIONS: i32 = 100_000;
/// How often partitions are reconciled with metadata even without a change notice.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
/// How often the scrubber looks for segments to check when it has none.
const SCRUB_IDLE: Duration = Duration::from_secs(10);
/// How often group session and rebalance timers are checked.
const GROUP_TICK: Duration = Duration::from_millis(100);

/// Where clients should connect to this broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

pub struct Broker {
    pub(crate) node_id: i32,
    /// The inter-broker listener's advertised address.
    pub(crate) endpoint: Endpoint,
    /// Every listener's advertised address (registered with the controller).
    pub(crate) listeners: Vec<strata_meta::ListenerEndpoint>,
    /// How this broker connects to others (the inter-broker listener's protocol).
    pub(crate) inter_broker: strata_security::transport::Transport,
    pub(crate) cluster_id: String,
    pub(crate) config: BrokerConfig,
    /// The ACL authorizer (`authorizer.class.name`), if on.
    pub(crate) authorizer: Option<Arc<strata_security::acl::Authorizer>>,
    /// OAUTHBEARER's token validator, if configured.
    pub(crate) oauth: Option<Arc<strata_security::oauth::JwtValidator>>,
    pub(crate) meta: MetaNode,
    pub(crate) logs: Arc<LogManager>,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) groups: GroupCoordinator,
    pub(crate) offsets: OffsetWriter,
    pub(crate) producer_ids: Arc<crate::producer_ids::ProducerIds>,
    /// The transaction coordinator of the transactional ids this broker coordinates.
    pub(crate) txn: crate::txn::TxnCoordinator,
    pub(crate) tier: Arc<crate::tiering::Tier>,
    /// The topics epoch of metadata the local logs were last reconciled with.
    pub(crate) reconciled_epoch: std::sync::atomic::AtomicU64,
    /// When this broker started: the age of an empty group's offsets counts from here at
    /// the latest, since group membership is not kept across restarts.
    pub(crate) started_ms: i64,
    /// `queued.max.request.bytes` as a semaphore of bytes, with its size; `None` for no
    /// limit.
    pub(crate) request_budget: Option<(Arc<tokio::sync::Semaphore>, usize)>,
    /// Holds back repeated log lines a misbehaving client can cause.
    pub(crate) log_throttle: strata_telemetry::LogThrottle,
    /// This broker's rack (`--rack`, Kafka's `broker.rack`).
    pub(crate) rack: Option<String>,
    /// The epoch of this broker's current registration (-1 before it registered).
    pub(crate) epoch: std::sync::atomic::AtomicI64,
    /// How long the controller cannot have fenced this broker, by its heartbeats.
    pub(crate) lease: Arc<crate::lease::Lease>,
    /// The partitions' replication (leaders tracking followers, followers fetching).
    pub(crate) replication: strata_replication::Replication,
    /// Fetch sessions (KIP-227) of consumers and followers.
    pub(crate) fetch_sessions: crate::fetch_sessions::FetchSessions,
}

/// Why a broker whose lease lapsed refuses to lead.
pub(crate) const LEASE_LAPSED: &str = "this broker has not reached the controller within broker.session.timeout.ms and acts as fenced: its leadership may have moved";

/// Why a topic could not be created.
#[derive(Debug)]
pub(crate) struct TopicError {
    pub code: ResponseError,
    pub message: String,
}

impl TopicError {
    fn new(code: ResponseError, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for TopicError {
    fn from(e: ConfigError) -> Self {
        Self::new(ResponseError::InvalidConfig, e.to_string())
    }
}

/// Logs each of a topic's settings that Kafka has but that mean nothing here.
pub(crate) fn warn_ignored(topic: &str, configs: &BTreeMap<String, String>) {
    for (name, value) in configs {
        if let Some(k) = crate::config::ignored_topic_config(name) {
            warn!(topic, config = %name, value = %value, why = k.why, "topic setting accepted but has no effect");
        }
    }
}

/// Kafka's rule for topic names.
pub(crate) fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let bad = |why: &str| {
        Err(TopicError::new(
            ResponseError::InvalidTopicException,
            format!("topic name {name:?} {why}"),
        ))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("may not be \".\" or \"..\"");
    }
    if name.len() > 249 {
        return bad("is longer than 249 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// A topic creation as validated, ready to commit.
pub(crate) struct NewTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
    /// Replicas chosen by the client (CreateTopics with assignments), by partition.
    pub assignment: Option<Vec<Vec<i32>>>,
}

/// A new partition on `replicas`, led by the first.
pub(crate) fn new_partition(replicas: Vec<i32>) -> PartitionMeta {
    PartitionMeta {
        leader: replicas.first().copied().unwrap_or(-1),
        leader_epoch: 0,
        isr: replicas.clone(),
        replicas,
        partition_epoch: 0,
        log_start_offset: 0,
        remote_segments: Default::default(),
    }
}

/// For an acks=all write to a partition placed as `placement` (records, or a transaction
/// marker): `(in sync, min.insync.replicas)` when fewer replicas are in sync than the
/// topic needs, so that it must be refused with NOT_ENOUGH_REPLICAS.
pub(crate) fn too_few_in_sync(
    placement: Option<&PartitionMeta>,
    config: &TopicConfig,
) -> Option<(usize, usize)> {
    let (in_sync, min) = (
        placement.map_or(0, |p| p.isr.len()),
        config.min_insync_replicas(),
    );
    (in_sync < min).then_some((in_sync, min))
}

impl Broker {
    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Kafka's `transaction.version` finalized for the cluster: the lowest any registered
    /// broker supports, so that no client speaks version 2 to a broker (or a metadata
    /// state machine) from before it during a rolling upgrade.
    pub(crate) fn transaction_version(&self) -> i16 {
        self.meta.read(|s| {
            s.brokers
                .values()
                .map(|b| b.transaction_version)
                .min()
                .unwrap_or(0)
        })
    }

    /// The coordinator of consumer group `group`: one of the live brokers, by a hash of
    /// the group id, so groups spread over brokers and move when one dies (their
    /// committed offsets are in the metadata service, so the new one has them at once).
    /// `f` sees it under the metadata read lock (nothing is copied out but what it returns).
    pub(crate) fn coordinator_of<T>(
        &self,
        group: &str,
        f: impl FnOnce(&strata_meta::BrokerInfo) -> T,
    ) -> Option<T> {
        self.meta.read(|s| {
            let live: Vec<&strata_meta::BrokerInfo> = s.live_brokers().collect();
            if live.is_empty() {
                return None;
            }
            Some(f(
                live[crc32c::crc32c(group.as_bytes()) as usize % live.len()]
            ))
        })
    }

    /// `NOT_COORDINATOR` if another broker coordinates `group`.
    pub(crate) fn not_coordinator(&self, group: &str) -> Option<ResponseError> {
        match self.coordinator_of(group, |b| b.node_id) {
            Some(id) if id != self.node_id => Some(ResponseError::NotCoordinator),
            _ => None,
        }
    }

    /// The id clients are given as the controller: the metadata leader when it is a
    /// live broker (combined mode), else this broker, which forwards what it is asked.
    pub(crate) fn controller_id(&self) -> i32 {
        let leader = self.meta.leader().and_then(|l| i32::try_from(l).ok());
        match leader {
            Some(l)
                if self
                    .meta
                    .read(|s| s.brokers.get(&l).is_some_and(|b| !b.fenced)) =>
            {
                l
            }
            _ => self.node_id,
        }
    }

    pub(crate) fn topic(&self, name: &str) -> Option<TopicMeta> {
        self.meta.read(|s| s.topics.get(name).cloned())
    }

    pub(crate) fn topic_by_id(&self, id: Uuid) -> Option<TopicMeta> {
        self.meta.read(|s| s.topic_by_id(id).cloned())
    }

    pub(crate) fn topic_config(&self, topic: &TopicMeta) -> TopicConfig {
        TopicConfig::resolve(&topic.configs, &self.config)
    }

    /// Checks a creation request against names, sizes and configs (not existence).
    pub(crate) fn check_new_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &BTreeMap<String, String>,
    ) -> Result<NewTopic, TopicError> {
        validate_topic_name(name)?;
        let partitions = match partitions {
            -1 => self.config.num_partitions(),
            n if (1..=MAX_PARTITIONS).contains(&n) => n,
            n => {
                return Err(TopicError::new(
                    ResponseError::InvalidPartitions,
                    format!("number of partitions must be between 1 and {MAX_PARTITIONS}, got {n}"),
                ));
            }
        };
        let brokers = self.meta.read(|s| s.live_brokers().count()).max(1);
        let replication_factor = match replication_factor {
            -1 => self.config.default_replication_factor(),
            n => n,
        };
        if replication_factor < 1 || replication_factor as usize > brokers {
            return Err(TopicError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} is not possible with {brokers} live broker(s)"
                ),
            ));
        }
        let configs = validate_topic_configs(configs)?;
        warn_ignored(name, &configs);
        Ok(NewTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
            assignment: None,
        })
    }

    /// Replicas for `count` new partitions starting at index `first`, over the live
    /// brokers and their racks (see `strata_meta::place_replicas`).
    pub(crate) fn place(
        &self,
        count: usize,
        replication_factor: usize,
        first: usize,
    ) -> Result<Vec<Vec<i32>>, TopicError> {
        let live: Vec<(i32, Option<String>)> = self.meta.read(|s| {
            s.live_brokers()
                .map(|b| (b.node_id, b.rack.clone()))
                .collect()
        });
        strata_meta::place_replicas(&live, count, replication_factor, first).ok_or_else(|| {
            TopicError::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {replication_factor} is not possible with {} live broker(s)",
                    live.len()
                ),
            )
        })
    }

    /// Commits a new topic through the metadata service and creates its local logs.
    pub(crate) async fn create_topic(&self, t: NewTopic) -> Result<TopicMeta, TopicError> {
        let replicas = match t.assignment {
            Some(a) => a,
            None => self.place(t.partitions as usize, t.replication_factor as usize, 0)?,
        };
        let partitions = replicas.into_iter().map(new_partition).collect();
        let id = Uuid::new_v4();
        let cmd = Command::CreateTopic {
            name: t.name.clone(),
            id,
            partitions,
            configs: t.configs,
        };
        match self.meta.write(cmd).await {
            Ok(CommandResult::TopicAlreadyExists) => Err(TopicError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic {:?} already exists", t.name),
            )),
            Ok(CommandResult::TopicNameCollision(other)) => Err(TopicError::new(
                ResponseError::InvalidTopicException,
                format!(
                    "topic {:?} collides with existing topic {other:?}: names may not differ only by '.' and '_'",
                    t.name
                ),
            )),
            Ok(_) => {
                let topic = self.topic(&t.name).ok_or_else(|| {
                    TopicError::new(
                        ResponseError::UnknownTopicOrPartition,
                        "topic vanished while being created",
                    )
                })?;
                // The partitions' logs are created by the reconciler, which every metadata
                // change wakes, or on first use, whichever comes first.
                info!(topic = %topic.name, topic_id = %topic.id, partitions = topic.partitions.len(), "created topic");
                Ok(topic)
            }
            Err(e) => Err(TopicError::new(errors::meta_error(&e), e.to_string())),
        }
    }

    /// The local log of a partition this broker leads, created on first use.
    pub(crate) fn partition_log(
        &self,
        topic: &TopicMeta,
        partition: i32,
    ) -> Result<Arc<Partition>, TopicError> {
        let meta = Self::placement(topic, partition)?;
        if meta.leader != self.node_id {
            return Err(self.not_leader(topic, partition));
        }
        if self.lease_lapsed() {
            return Err(TopicError::new(
                ResponseError::NotLeaderOrFollower,
                LEASE_LAPSED.to_string(),
            ));
        }
        self.replica_log(topic, partition)
    }

    /// Waits until `done` holds on this broker's copy of metadata, looking again as each
    /// commit is applied, for at most `within` (then it returns all the same: the caller
    /// checks again and answers with what it finds).
    pub(crate) async fn await_metadata(&self, within: Duration, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + within;
        let mut applied = self.meta.subscribe();
        while !done() {
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    }

    /// Whether the controller may have fenced this broker and moved its leadership,
    /// though metadata here still says otherwise (see [`crate::lease`]). The controller
    /// never fences the last live broker, so neither does this.
    pub(crate) fn lease_lapsed(&self) -> bool {
        self.lease.acts_fenced(&self.meta, self.node_id)
    }

    fn placement(topic: &TopicMeta, partition: i32) -> Result<&PartitionMeta, TopicError> {
        usize::try_from(partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .ok_or_else(|| {
                TopicError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("topic {:?} has no partition {partition}", topic.name),
                )
            })
    }

    fn not_leader(&self, topic: &TopicMeta, partition: i32) -> TopicError {
        TopicError::new(
            ResponseError::NotLeaderOrFollower,
            format!(
                "broker {} does not lead {}-{partition}",
                self.node_id, topic.name
            ),
        )
    }

    /// The in-sync replica in `rack` a consumer there should fetch from instead of this
    /// leader (KIP-392, Kafka's rack-aware replica selector), if another one is.
    pub(crate) fn preferred_replica(&self, pm: &PartitionMeta, rack: &str) -> Option<i32> {
        if !self.config.rack_aware_fetch() || self.rack.as_deref() == Some(rack) {
            return None;
        }
        self.meta.read(|s| {
            pm.isr.iter().copied().find(|r| {
                *r != self.node_id
                    && s.brokers
                        .get(r)
                        .is_some_and(|b| !b.fenced && b.rack.as_deref() == Some(rack))
            })
        })
    }

    /// The local log of a partition this broker holds a replica of (leader or
    /// follower), created on first use.
    pub(crate) fn replica_log(
        &self,
        topic: &TopicMeta,
        partition: i32,
    ) -> Result<Arc<Partition>, TopicError> {
        let meta = Self::placement(topic, partition)?;
        if !meta.replicas.contains(&self.node_id) {
            return Err(self.not_leader(topic, partition));
        }
        let key = PartitionKey {
            topic_id: topic.id,
            partition,
        };
        let log = match self.logs.get(key) {
            Some(log) => log,
            None => {
                let config = self.topic_config(topic).log_config();
                self.logs
                    .get_or_create(key, &topic.name, config, self.now_ms())
                    .map_err(|e| TopicError::new(errors::log_error(&e), e.to_string()))?
            }
        };
        if meta.replicas.len() > 1 {
            log.expect_replication();
        }
        // Metadata is the truth about where the log starts (retention, DeleteRecords).
        if meta.log_start_offset > log.offsets().log_start {
            log.advance_log_start(meta.log_start_offset, self.now_ms())
                .map_err(|e| TopicError::new(errors::log_error(&e), e.to_string()))?;
        }
        Ok(log)
    }

    /// Brings local logs in line with metadata: logs for every partition led here (with
    /// the topic's current settings and log start offset), and no data for topics that
    /// no longer exist.
    pub(crate) fn reconcile(&self) {
        let topics: Vec<TopicMeta> = self.meta.read(|s| s.topics.values().cloned().collect());
        let live: std::collections::BTreeSet<Uuid> = topics.iter().map(|t| t.id).collect();
        self.tier.store.forget_topics_except(&live);
        let endpoints: std::collections::HashMap<i32, String> = self.meta.read(|s| {
            s.brokers
                .values()
                .map(|b| (b.node_id, format!("{}:{}", b.host, b.port)))
                .collect()
        });
        let mut assignments = Vec::new();
        for topic in &topics {
            let config = self.topic_config(topic).log_config();
            for (i, pm) in topic.partitions.iter().enumerate() {
                if !pm.replicas.contains(&self.node_id) {
                    continue;
                }
                match self.replica_log(topic, i as i32) {
                    Ok(log) => {
                        log.set_config(config.clone());
                        if let Some(end) = crate::tiering::remote_end(pm)
                            && let Err(e) =
                                log.restore_tiered(pm.log_start_offset, end, self.now_ms())
                        {
                            warn!(topic = %topic.name, partition = i, error = %e, "could not align the log with the object store");
                        }
                        assignments.push(strata_replication::Assignment {
                            key: PartitionKey {
                                topic_id: topic.id,
                                partition: i as i32,
                            },
                            topic: topic.name.clone(),
                            log,
                            leader: pm.leader,
                            leader_epoch: pm.leader_epoch,
                            partition_epoch: pm.partition_epoch,
                            replicas: pm.replicas.clone(),
                            isr: pm.isr.clone(),
                            leader_addr: endpoints.get(&pm.leader).cloned(),
                        });
                    }
                    Err(e) => {
                        warn!(topic = %topic.name, partition = i, error = %e.message, "could not open partition log")
                    }
                }
            }
        }
        self.replication.reconcile(assignments);
        for id in self.logs.topic_ids() {
            if !live.contains(&id)
                && let Err(e) = self.logs.remove_topic(id)
            {
                warn!(topic_id = %id, error = %e, "could not delete data of a deleted topic");
            }
        }
    }

    /// One retention pass: for each partition led here with segments past its topic's
    /// `retention.ms`/`retention.bytes`, commit the new log start offset to metadata,
    /// then delete the segments; every replica deletes local segments that local
    /// retention lets go and that are in the object store. Idle idempotent producers are forgotten after
    /// `producer.id.expiration.ms` on the same pass.
    pub(crate) async fn enforce_retention(&self) {
        let now = self.now_ms();
        for (key, log) in self.logs.partitions() {
            let Some(topic) = self.topic_by_id(key.topic_id) else {
                continue;
            };
            let expired = log.expire_producers(now, self.config.producer_id_expiration_ms());
            if expired > 0 {
                debug!(topic = %topic.name, partition = key.partition, producers = expired, "forgot idle producers");
            }
            let cfg = self.topic_config(&topic);
            let tiered = cfg.remote_storage();
            // Where the log starts is the leader's decision, committed to metadata;
            // followers apply it from there (`replica_log`).
            let leads = usize::try_from(key.partition)
                .ok()
                .and_then(|i| topic.partitions.get(i))
                .is_some_and(|p| p.leader == self.node_id);
            let target = if !leads {
                None
            } else if tiered {
                self.tier.tiered_retention_target(
                    key,
                    &log,
                    now,
                    cfg.retention_ms(),
                    cfg.retention_bytes(),
                )
            } else {
                log.retention_target(now, cfg.retention_ms(), cfg.retention_bytes())
            };
            if let Some(target) = target
                && let Err(e) = self.move_log_start(key, &log, target).await
            {
                warn!(topic = %topic.name, partition = key.partition, error = %e, "retention could not move the log start offset");
            }
            if tiered
                && let Some(local) = log.local_retention_target(
                    now,
                    cfg.local_retention_ms(),
                    cfg.local_retention_bytes(),
                )
            {
                log.delete_local_below(local);
            }
        }
    }

    /// Moves a partition's log start offset to `target`: committed to metadata first,
    /// then remote segments below it are removed from the manifest and deleted, then
    /// local segments. (Retention and DeleteRecords.)
    pub(crate) async fn move_log_start(
        &self,
        key: PartitionKey,
        log: &Partition,
        target: i64,
    ) -> Result<(), String> {
        let cmd = Command::AdvanceLogStartOffset {
            topic_id: key.topic_id,
            partition: key.partition,
            offset: target,
        };
        match self.meta.write(cmd).await {
            Ok(CommandResult::Ok) => {}
            Ok(other) => return Err(format!("metadata answered {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
        self.tier
            .remove_remote_below(key.topic_id, key.partition, target)
            .await;
        log.advance_log_start(target, self.now_ms())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Runs reconciliation when topics change in metadata (and periodically), retention
    /// every `log.retention.check.interval.ms`, the group coordinator's timers, and
    /// committed-offset expiry, until shutdown.
    pub(crate) async fn run_background(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        let mut changes = self.meta.subscribe();
        let mut reconcile_tick = tokio::time::interval(RECONCILE_INTERVAL);
        let mut retention_tick = tokio::time::interval(Duration::from_millis(
            self.config.retention_check_interval_ms(),
        ));
        retention_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut group_tick = tokio::time::interval(GROUP_TICK);
        group_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut offsets_tick = tokio::time::interval(Duration::from_millis(
            self.config.offsets_retention_check_interval_ms(),
        ));
        let mut cluster_tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_leader = None;
        offsets_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Offset commits change metadata too; only topic changes need the logs.
                    let epoch = self.meta.read(|s| s.topics_epoch);
                    if self.reconciled_epoch.swap(epoch, Ordering::SeqCst) != epoch {
                        tokio::task::block_in_place(|| self.reconcile());
                    }
                }
                _ = reconcile_tick.tick() => tokio::task::block_in_place(|| self.reconcile()),
                _ = retention_tick.tick() => self.enforce_retention().await,
                _ = group_tick.tick() => {
                    self.groups.tick(self.now_ms());
                    self.publish_group_metrics();
                }
                _ = offsets_tick.tick() => self.expire_offsets().await,
                _ = cluster_tick.tick() => self.publish_cluster_metrics(&mut last_leader),
            }
        }
    }

    /// Checks the batch CRCs of sealed segments found on disk at start-up (which reads
    /// trust only after such a check) at `strata.log.scrub-bytes-per-second`, so damage
    /// is found before a consumer or the uploader meets it. Damage is handled by the log
    /// (logged, counted, and the object store's copy used when there is one).
    pub(crate) async fn run_scrub(self: Arc<Self>) {
        let rate = self.config.scrub_bytes_per_second();
        if rate == 0 {
            return self.shutdown.cancelled().await;
        }
        loop {
            let work: Vec<(Arc<Partition>, i64, u64)> = self
                .logs
                .partitions()
                .into_iter()
                .flat_map(|(_, log)| {
                    log.unverified_segments()
                        .into_iter()
                        .map(move |(base, size)| (log.clone(), base, size))
                })
                .collect();
            for (log, base, size) in work {
                let started = tokio::time::Instant::now();
                let checker = log.clone();
                let checked =
                    tokio::task::spawn_blocking(move || checker.verify_segment(base)).await;
                if let Ok(Err(e)) = checked {
                    debug!(topic = log.topic(), partition = log.partition(), base, error = %e, "scrubber found a damaged segment");
                }
                let pace = started + Duration::from_secs_f64(size as f64 / rate as f64);
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(pace) => {}
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(SCRUB_IDLE) => {}
            }
        }
    }

    /// Publishes the cluster's state as this broker's metadata shows it (the metadata
    /// leader and term, elections seen, live brokers, offline partitions).
    pub(crate) fn publish_cluster_metrics(&self, last_leader: &mut Option<u64>) {
        let m = &self.metrics.replication;
        let leader = self.meta.leader();
        if leader.is_some() && leader != *last_leader {
            m.meta_elections_total.inc();
        }
        *last_leader = leader;
        m.meta_leader.set(leader.map_or(-1, |l| l as i64));
        m.meta_term.set(self.meta.term() as i64);
        let (alive, offline) = self.meta.read(|s| {
            (
                s.live_brokers().count(),
                s.topics
                    .values()
                    .flat_map(|t| t.partitions.iter())
                    .filter(|p| p.leader < 0)
                    .count(),
            )
        });
        m.brokers_alive.set(alive as i64);
        m.offline_partitions.set(offline as i64);
    }

    /// Updates the group gauges and counters from the coordinator.
    pub(crate) fn publish_group_metrics(&self) {
        let m = &self.metrics.group;
        let events = self.groups.take_events();
        m.rebalances_total.inc_by(events.rebalances);
        m.expired_members_total.inc_by(events.expired_members);
        m.members.set(self.groups.member_count() as i64);
    }

    /// Removes committed offsets of groups that have had no members for
    /// `offsets.retention.minutes` (counting from the later of the last commit and the
    /// moment the group became empty, as Kafka does), and forgets such groups.
    pub(crate) async fn expire_offsets(&self) {
        let now = self.now_ms();
        let retention = self.config.offsets_retention_ms();
        // Per group: (topic, partition, commit time) of every committed offset.
        type Committed = Vec<(String, Vec<(String, i32, i64)>)>;
        let committed: Committed = self.meta.read(|s| {
            s.groups
                .iter()
                .map(|(g, topics)| {
                    let parts = topics
                        .iter()
                        .flat_map(|(t, ps)| {
                            ps.iter()
                                .map(move |(p, c)| (t.clone(), *p, c.commit_timestamp_ms))
                        })
                        .collect();
                    (g.clone(), parts)
                })
                .collect()
        });
        for (group, parts) in committed {
            if self.groups.is_active(&group) {
                continue;
            }
            let empty_since = self.groups.empty_since(&group).unwrap_or(self.started_ms);
            let doomed: Vec<(String, i32)> = parts
                .into_iter()
                .filter(|(_, _, ts)| (*ts).max(empty_since) + retention < now)
                .map(|(t, p, _)| (t, p))
                .collect();
            if doomed.is_empty() {
                continue;
            }
            let n = doomed.len() as u64;
            match self
                .meta
                .write(Command::DeleteOffsets {
                    group: group.clone(),
                    partitions: doomed,
                })
                .await
            {
                Ok(_) => {
                    info!(group = %group, offsets = n, "expired committed offsets");
                    self.metrics.group.expired_offsets_total.inc_by(n);
                }
                Err(e) => warn!(group = %group, error = %e, "could not expire committed offsets"),
            }
        }
        self.groups
            .forget_empty(|g| self.meta.read(|s| s.groups.contains_key(g)));
    }

    /// Registers this broker (endpoint, rack) with the controller: it is live and may
    /// lead. Returns the registration's epoch.
    pub(crate) async fn register(
        meta: &MetaNode,
        node_id: i32,
        endpoint: &Endpoint,
        listeners: &[strata_meta::ListenerEndpoint],
        rack: Option<String>,
    ) -> Result<i64, strata_meta::MetaError> {
        match meta
            .write(Command::RegisterBroker(BrokerInfo {
                node_id,
                host: endpoint.host.clone(),
                port: endpoint.port,
                rack,
                epoch: 0,
                fenced: false,
                transaction_version: crate::txn::TRANSACTION_VERSION,
                metadata_version: strata_meta::METADATA_VERSION,
                listeners: listeners.to_vec(),
            }))
            .await?
        {
            CommandResult::BrokerEpoch(epoch) => Ok(epoch),
            other => Err(strata_meta::MetaError::Fatal {
                node_id: node_id as u64,
                reason: format!("registration answered {other:?}"),
            }),
        }
    }

    /// Renews this broker's lease with the controller every
    /// `broker.heartbeat.interval.ms`, registering again if the controller fenced it
    /// (its lease had run out: a pause, a network partition).
    pub(crate) async fn run_heartbeats(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        let mut tick = tokio::time::interval(self.config.broker_heartbeat_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let hb = strata_meta::BrokerHeartbeat {
                node_id: self.node_id,
                epoch: self.epoch.load(Ordering::SeqCst),
                shutting_down: false,
            };
            let sent = tokio::time::Instant::now();
            match self.meta.heartbeat(hb).await {
                Ok(reply) if reply.fenced => {
                    self.lease.revoked();
                    warn!(
                        node_id = self.node_id,
                        "the controller fenced this broker (its lease ran out): registering again"
                    );
                    let sent = tokio::time::Instant::now();
                    match Self::register(
                        &self.meta,
                        self.node_id,
                        &self.endpoint,
                        &self.listeners,
                        self.rack.clone(),
                    )
                    .await
                    {
                        Ok(epoch) => {
                            self.epoch.store(epoch, Ordering::SeqCst);
                            self.lease.renewed(sent);
                            info!(node_id = self.node_id, epoch, "registered again");
                        }
                        Err(e) => warn!(error = %e, "could not register again yet"),
                    }
                }
                Ok(_) => self.lease.renewed(sent),
                Err(e) => debug!(error = %e, "heartbeat not answered"),
            }
        }
    }

    /// The transaction coordinator's background work (see [`crate::txn`]) for the ids
    /// this broker coordinates, every
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`.
    pub(crate) async fn run_transactions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.transaction_check_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mine = |id: &str| self.not_coordinator(id).is_none();
            self.txn.tick(&mine, &self, self.now_ms()).await;
        }
    }

    /// Controlled shutdown: asks the controller to move this broker's leadership to
    /// other in-sync replicas (and waits for that to be committed), so clients move on
    /// before the broker stops. Nothing to do when no other broker is alive.
    pub(crate) async fn hand_off_leadership(&self) {
        use std::sync::atomic::Ordering;
        let others = self.meta.read(|s| {
            s.live_brokers()
                .filter(|b| b.node_id != self.node_id)
                .count()
        });
        if !self.config.controlled_shutdown() || others == 0 {
            return;
        }
        let hb = strata_meta::BrokerHeartbeat {
            node_id: self.node_id,
            epoch: self.epoch.load(Ordering::SeqCst),
            shutting_down: true,
        };
        let started = std::time::Instant::now();
        match self.meta.heartbeat(hb).await {
            Ok(_) => info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "controlled shutdown: leadership moved to other replicas"
            ),
            Err(e) => {
                warn!(error = %e, "controlled shutdown: the controller did not answer; stopping anyway")
            }
        }
    }
}
