//! The replicated cluster metadata and the commands that change it.
//!
//! Everything in this module is plain data: it knows nothing about Raft, disks or the
//! broker. [`ClusterState::apply`] is the single, deterministic state transition that every
//! replica runs for every committed [`Command`], in log order.
//!
//! # Compatibility
//!
//! Commands are stored in the Raft log and the state is stored in snapshots, both as
//! `serde_json`. Variant and field names are therefore part of the on-disk format: add new
//! variants and new `#[serde(default)]` fields freely, but never rename or remove existing
//! ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;
use uuid::Uuid;

/// Identifier of a metadata (Raft) node. Independent of the Kafka broker id.
pub type NodeId = u64;

/// The whole replicated metadata state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    /// The cluster id, set once by [`Command::InitCluster`] and never changed afterwards.
    pub cluster_id: Option<String>,
    /// Registered brokers by Kafka broker id.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Bumped by every command that changes brokers or topics (not by offset commits or
    /// producer-id allocation), so that watchers can skip work when only offsets moved.
    #[serde(default)]
    pub topics_epoch: u64,
    /// Committed consumer-group offsets: group, then topic name, then partition.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeMap<String, BTreeMap<i32, CommittedOffset>>>,
    /// The next producer id [`Command::AllocateProducerIds`] hands out.
    #[serde(default)]
    pub next_producer_id: i64,
    /// The protocol type (`consumer`, `connect`, ...) of groups with committed offsets, as
    /// their members last committed under, so an empty group still reports it.
    #[serde(default)]
    pub group_protocol_types: BTreeMap<String, String>,
    /// The incarnation (a random id made when its data directory was created) of each
    /// metadata voter that has caught up once: a voter that comes back with another one
    /// lost its disk and must be re-added rather than counted as it was.
    #[serde(default)]
    pub voter_incarnations: BTreeMap<NodeId, String>,
    /// Transactional producers by `transactional.id` (see the `txn` module).
    #[serde(default)]
    pub transactions: BTreeMap<String, crate::txn::TxnMeta>,
    /// SCRAM credentials: user, then mechanism (`SCRAM-SHA-256`, `SCRAM-SHA-512`).
    #[serde(default)]
    pub scram: BTreeMap<String, BTreeMap<String, ScramCredential>>,
    /// Whether `scram.bootstrap` was applied (or credentials were managed otherwise), so
    /// that it is applied once, when the cluster is formed.
    #[serde(default)]
    pub scram_bootstrapped: bool,
    /// ACL bindings (CreateAcls, DeleteAcls), shared so a request's authorization reads
    /// them without copying.
    #[serde(default)]
    pub acls: std::sync::Arc<Vec<strata_security::acl::Acl>>,
}

/// What is kept of a SCRAM user's password: the salt, the iteration count and the two
/// keys derived from the salted password (the password itself never is).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

/// The keys stay out of logs (commands are logged at trace level): with them a user can
/// be impersonated.
impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A listener of a broker as clients of that listener are told to reach it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ListenerEndpoint {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A consumer group's committed position in one partition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One offset to commit, as carried by [`Command::CommitOffsets`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OffsetCommit {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: CommittedOffset,
    /// The committing group's protocol type; empty for commits outside group management.
    #[serde(default)]
    pub protocol_type: String,
}

/// A broker as advertised to Kafka clients.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Bumped by every registration: a decision about an earlier incarnation of the
    /// broker (fencing it) does not apply to a later one.
    #[serde(default)]
    pub epoch: i64,
    /// Not alive (its lease expired, or it shut down): it leads nothing and is in no ISR
    /// it could be removed from, until it registers again.
    #[serde(default)]
    pub fenced: bool,
    /// The highest Kafka `transaction.version` the broker's software supports (0: a
    /// version from before the field). The cluster finalizes the lowest of its brokers'.
    #[serde(default)]
    pub transaction_version: i16,
    /// The newest [`crate::METADATA_VERSION`] the broker's software applies (0: a
    /// version from before the field). A command new in version N is proposed only once
    /// every registered broker has N, so no node of a rolling upgrade meets a command it
    /// cannot decode.
    #[serde(default)]
    pub metadata_version: u16,
    /// Every listener's advertised address; `host`/`port` above are the inter-broker
    /// listener's. Empty in registrations from before listeners were named: then
    /// `host`/`port` serve every client.
    #[serde(default)]
    pub listeners: Vec<ListenerEndpoint>,
}

impl BrokerInfo {
    /// Where a client that came in on `listener` reaches this broker; `None` if the
    /// broker has no such listener (Kafka leaves it out of that client's metadata).
    pub fn endpoint_for(&self, listener: &str) -> Option<(&str, u16)> {
        if self.listeners.is_empty() {
            return Some((&self.host, self.port));
        }
        self.listeners
            .iter()
            .find(|l| l.name == listener)
            .map(|l| (l.host.as_str(), l.port))
    }
}

/// A broker's liveness lease renewal, sent to the controller.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BrokerHeartbeat {
    pub node_id: i32,
    pub epoch: i64,
    /// The broker is shutting down: move its leadership away now.
    pub shutting_down: bool,
}

/// The controller's answer to a heartbeat.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatReply {
    /// The broker is fenced (or its epoch is stale): it must register again.
    pub fenced: bool,
}

/// A topic and its partitions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    /// Partition `i` is `partitions[i]`.
    pub partitions: Vec<PartitionMeta>,
    /// Topic-level config overrides (Kafka config names to values).
    pub configs: BTreeMap<String, String>,
}

/// Placement and log bounds of one partition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartitionMeta {
    /// The leader's broker id; -1 while no in-sync replica is alive (offline).
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Bumped by every change of leader or ISR, so that a change based on an older view
    /// is refused (Kafka's partition epoch).
    #[serde(default)]
    pub partition_epoch: i32,
    /// The earliest offset still readable; only ever moves forward.
    pub log_start_offset: i64,
    /// Segments in the object store, oldest first. Shared (copied on write), so that
    /// copying a topic's metadata on a request path does not copy manifests that grow
    /// with retention; serialized as a plain list.
    #[serde(default)]
    pub remote_segments: Arc<Vec<RemoteSegmentMeta>>,
}

impl PartitionMeta {
    /// The answer to a change made on an outdated view of this partition.
    fn stale(&self) -> CommandResult {
        CommandResult::StalePartition {
            leader: self.leader,
            leader_epoch: self.leader_epoch,
            partition_epoch: self.partition_epoch,
        }
    }

    /// Records a committed change of leader or ISR: the next partition epoch.
    fn changed(&mut self) -> i32 {
        self.partition_epoch += 1;
        self.partition_epoch
    }
}

/// A segment uploaded to the object store: the manifest entry that makes it exist.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RemoteSegmentMeta {
    pub base_offset: i64,
    /// Offset after its last record.
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub size: u64,
    pub leader_epoch: i32,
    /// Object key of the segment data (relative to the store's prefix).
    pub key: String,
    /// Object key of its offset and time indexes.
    pub index_key: String,
    /// The transactions an abort marker in this segment ended, so that read_committed
    /// replays from the object store skip their records on any broker, also one that never
    /// held the segment (Kafka's aborted-transaction index, kept with the segment's entry).
    #[serde(default)]
    pub aborted: Vec<RemoteAbortedTxn>,
}

/// An aborted transaction of a remote segment: the producer's records from
/// `first_offset` up to the abort marker at `last_offset` are not for read_committed
/// consumers.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteAbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// A change to the cluster metadata, proposed through Raft.
///
/// Applying a command never fails at the Raft level: business-level refusals (unknown topic,
/// duplicate name, ...) are reported through [`CommandResult`] and leave the state unchanged.
///
/// To extend (consumer-group offsets, producer ids, remote segment manifests, ...): add a
/// variant here, a result variant in [`CommandResult`] if needed, and a match arm in
/// [`ClusterState::apply`]. Keep the arm deterministic: no clocks, no randomness, no I/O —
/// every input must be in the command itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Command {
    /// Sets the cluster id if none is set yet. Result: [`CommandResult::ClusterId`] with the
    /// id now in force (which is the earlier one if the cluster was already initialized).
    InitCluster { cluster_id: String },
    /// Inserts or replaces a broker registration. Result: [`CommandResult::Ok`].
    RegisterBroker(BrokerInfo),
    /// Creates a topic. Result: [`CommandResult::TopicAlreadyExists`] if a topic with this
    /// name (or, defensively, this id) exists, else [`CommandResult::Ok`].
    CreateTopic {
        name: String,
        id: Uuid,
        partitions: Vec<PartitionMeta>,
        configs: BTreeMap<String, String>,
    },
    /// Removes a topic. Result: [`CommandResult::Deleted`] with the removed topic, or
    /// [`CommandResult::UnknownTopic`].
    DeleteTopic { name: String },
    /// Replaces the topic's config overrides. Result: [`CommandResult::Ok`] or
    /// [`CommandResult::UnknownTopic`].
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Appends partitions to a topic. Result: [`CommandResult::Ok`] or
    /// [`CommandResult::UnknownTopic`].
    AddPartitions {
        name: String,
        partitions: Vec<PartitionMeta>,
    },
    /// Sets `log_start_offset = max(current, offset)`. Result: [`CommandResult::Ok`],
    /// [`CommandResult::UnknownTopic`] or [`CommandResult::UnknownPartition`].
    AdvanceLogStartOffset {
        topic_id: Uuid,
        partition: i32,
        offset: i64,
    },
    /// Stores committed offsets, many groups' at once (the broker batches commits so that
    /// thousands of commits a second are a few Raft entries). Entries for topics that no
    /// longer exist are skipped. Result: [`CommandResult::Ok`].
    CommitOffsets { commits: Vec<OffsetCommit> },
    /// Removes some of a group's committed offsets (OffsetDelete, expiry). Result:
    /// [`CommandResult::Ok`].
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
    },
    /// Removes every committed offset of a group (DeleteGroups). Result:
    /// [`CommandResult::Ok`] or [`CommandResult::UnknownGroup`].
    DeleteGroupOffsets { group: String },
    /// Reserves `count` consecutive producer ids. Result:
    /// [`CommandResult::ProducerIds`] with the first one.
    AllocateProducerIds { count: u32 },
    /// Records an uploaded segment in the partition's manifest. A segment that does not
    /// extend the manifest (a retried commit) leaves it unchanged. Result:
    /// [`CommandResult::Ok`], [`CommandResult::UnknownTopic`] or
    /// [`CommandResult::UnknownPartition`].
    AddRemoteSegment {
        topic_id: Uuid,
        partition: i32,
        segment: RemoteSegmentMeta,
    },
    /// Removes manifest entries that end at or below `below` (their objects may then be
    /// deleted). Result: [`CommandResult::RemoteSegmentsRemoved`] with them.
    RemoveRemoteSegments {
        topic_id: Uuid,
        partition: i32,
        below: i64,
    },
    /// Records the incarnation of a metadata voter. Result: [`CommandResult::Ok`].
    RegisterVoter {
        node_id: NodeId,
        incarnation: String,
    },
    /// A broker's lease ended (or it shut down) in its incarnation `epoch`: it is fenced,
    /// leaves every ISR it can leave, and each partition it led gets a new leader from the
    /// rest of its ISR (or none: offline). Result: [`CommandResult::Ok`], or
    /// [`CommandResult::StaleBrokerEpoch`] if the broker registered again meanwhile.
    FenceBroker { node_id: i32, epoch: i64 },
    /// The leader of a partition changes its ISR (Kafka's AlterPartition), as of the
    /// leader and partition epochs it knows. Result: [`CommandResult::PartitionEpoch`]
    /// with the new partition epoch, or [`CommandResult::StalePartition`].
    AlterIsr {
        topic_id: Uuid,
        partition: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    },
    /// Makes `leader` the partition's leader, as of the partition epoch the decision was
    /// made on (preferred-leader elections, unclean elections of offline partitions).
    /// `unclean` allows a replica outside the ISR (which then is the whole ISR). Result:
    /// [`CommandResult::PartitionEpoch`] or [`CommandResult::StalePartition`].
    ElectLeader {
        topic_id: Uuid,
        partition: i32,
        partition_epoch: i32,
        leader: i32,
        unclean: bool,
    },
    /// A step of a transaction (see the `txn` module). Result:
    /// [`CommandResult::Transaction`] with the new state, or
    /// [`CommandResult::TransactionRefused`].
    Transaction(crate::txn::TxnCommand),
    /// Sets and removes SCRAM credentials (AlterUserScramCredentials), as
    /// `(user, mechanism, credential)` and `(user, mechanism)`. With `bootstrap`, only if
    /// no credential was ever set (`scram.bootstrap` at the first start). Result:
    /// [`CommandResult::Ok`].
    AlterScram {
        upserts: Vec<(String, String, ScramCredential)>,
        deletions: Vec<(String, String)>,
        #[serde(default)]
        bootstrap: bool,
    },
    /// Adds ACL bindings (one already present is not added twice). Result:
    /// [`CommandResult::Ok`].
    CreateAcls {
        acls: Vec<strata_security::acl::Acl>,
    },
    /// Removes exactly these ACL bindings (DeleteAcls resolves its filters first).
    /// Result: [`CommandResult::Ok`].
    DeleteAcls {
        acls: Vec<strata_security::acl::Acl>,
    },
}

/// What applying a [`Command`] produced; returned to the writer once committed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum CommandResult {
    /// The command was applied.
    Ok,
    /// The cluster id in force after [`Command::InitCluster`].
    ClusterId(String),
    /// [`Command::CreateTopic`] was refused: the name (or id) is taken.
    TopicAlreadyExists,
    /// [`Command::CreateTopic`] was refused: the name differs from this existing topic's
    /// only by `.` versus `_`, which Kafka forbids because metric names would collide.
    TopicNameCollision(String),
    /// The named topic (or topic id) does not exist.
    UnknownTopic,
    /// The topic exists but has no such partition.
    UnknownPartition,
    /// The topic removed by [`Command::DeleteTopic`], so its data can be deleted.
    Deleted(TopicMeta),
    /// The group has no committed offsets.
    UnknownGroup,
    /// The first of the producer ids reserved by [`Command::AllocateProducerIds`].
    ProducerIds { first: i64 },
    /// The manifest entries [`Command::RemoveRemoteSegments`] removed.
    RemoteSegmentsRemoved(Vec<RemoteSegmentMeta>),
    /// [`Command::AddRemoteSegment`] was refused: the segment was uploaded under an
    /// older leader epoch than the partition's (a deposed leader's upload).
    StaleLeaderEpoch { current: i32 },
    /// The broker's epoch after [`Command::RegisterBroker`].
    BrokerEpoch(i64),
    /// [`Command::FenceBroker`] was about an earlier incarnation of the broker.
    StaleBrokerEpoch { current: i64 },
    /// A partition's epoch after a change of its leader or ISR.
    PartitionEpoch(i32),
    /// A change of a partition based on an outdated view (or not allowed: the new leader
    /// is not in the ISR, or fenced).
    StalePartition {
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
    },
    /// A transaction's state after a [`Command::Transaction`].
    Transaction(Box<crate::txn::TxnMeta>),
    /// Why a [`Command::Transaction`] was not applied.
    TransactionRefused(crate::txn::TxnRefusal),
}

impl ClusterState {
    /// The topic with this id, if any.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicMeta> {
        self.topics.values().find(|t| t.id == id)
    }

    /// An existing topic whose name differs from `name` only by `.` versus `_` (Kafka
    /// refuses such a pair because their metric names would be the same).
    pub fn colliding_topic(&self, name: &str) -> Option<&str> {
        let unified = |n: &str| n.replace('.', "_");
        let want = unified(name);
        self.topics
            .keys()
            .find(|t| t.as_str() != name && unified(t) == want)
            .map(String::as_str)
    }

    fn partition_mut(
        &mut self,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<&mut PartitionMeta, CommandResult> {
        let topic = self
            .topic_by_id_mut(topic_id)
            .ok_or(CommandResult::UnknownTopic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| topic.partitions.get_mut(p))
            .ok_or(CommandResult::UnknownPartition)
    }

    fn partitions_mut(&mut self) -> impl Iterator<Item = &mut PartitionMeta> {
        self.topics
            .values_mut()
            .flat_map(|t| t.partitions.iter_mut())
    }

    /// The metadata version every registered broker applies (0 with none registered):
    /// commands newer than it must not be proposed yet.
    pub fn metadata_version(&self) -> u16 {
        self.brokers
            .values()
            .map(|b| b.metadata_version)
            .min()
            .unwrap_or(0)
    }

    /// Brokers that are registered and not fenced, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerInfo> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// Stores committed offsets; those of topics that no longer exist are skipped.
    pub(crate) fn commit_offsets(&mut self, commits: Vec<OffsetCommit>) {
        for c in commits {
            if !self.topics.contains_key(&c.topic) {
                continue;
            }
            if !c.protocol_type.is_empty() {
                self.group_protocol_types
                    .insert(c.group.clone(), c.protocol_type);
            }
            self.groups
                .entry(c.group)
                .or_default()
                .entry(c.topic)
                .or_default()
                .insert(c.partition, c.committed);
        }
    }

    fn forget_groups_without_offsets(&mut self) {
        let groups = &self.groups;
        self.group_protocol_types
            .retain(|g, _| groups.contains_key(g));
    }

    fn topic_by_id_mut(&mut self, id: Uuid) -> Option<&mut TopicMeta> {
        self.topics.values_mut().find(|t| t.id == id)
    }

    /// Applies one command. Deterministic and infallible: this is the replicated state
    /// transition every replica runs in log order.
    pub fn apply(&mut self, cmd: Command) -> CommandResult {
        match cmd {
            Command::InitCluster { cluster_id } => {
                let id = self.cluster_id.get_or_insert(cluster_id);
                CommandResult::ClusterId(id.clone())
            }
            Command::RegisterBroker(mut info) => {
                let id = info.node_id;
                info.epoch = self.brokers.get(&id).map_or(0, |b| b.epoch) + 1;
                info.fenced = false;
                let epoch = info.epoch;
                self.brokers.insert(id, info);
                // Offline partitions whose ISR holds it have their leader back.
                for p in self.partitions_mut() {
                    if p.leader < 0 && p.isr.contains(&id) {
                        p.leader = id;
                        p.leader_epoch += 1;
                        p.partition_epoch += 1;
                    }
                }
                self.topics_epoch += 1;
                CommandResult::BrokerEpoch(epoch)
            }
            Command::AlterScram {
                upserts,
                deletions,
                bootstrap,
            } => {
                if bootstrap && self.scram_bootstrapped {
                    return CommandResult::Ok;
                }
                self.scram_bootstrapped = true;
                for (user, mechanism) in deletions {
                    if let Some(creds) = self.scram.get_mut(&user) {
                        creds.remove(&mechanism);
                        if creds.is_empty() {
                            self.scram.remove(&user);
                        }
                    }
                }
                for (user, mechanism, credential) in upserts {
                    self.scram
                        .entry(user)
                        .or_default()
                        .insert(mechanism, credential);
                }
                CommandResult::Ok
            }
            Command::CreateAcls { acls } => {
                let all = std::sync::Arc::make_mut(&mut self.acls);
                for acl in acls {
                    if !all.contains(&acl) {
                        all.push(acl);
                    }
                }
                CommandResult::Ok
            }
            Command::DeleteAcls { acls } => {
                std::sync::Arc::make_mut(&mut self.acls).retain(|a| !acls.contains(a));
                CommandResult::Ok
            }
            Command::RegisterVoter {
                node_id,
                incarnation,
            } => {
                self.voter_incarnations.insert(node_id, incarnation);
                CommandResult::Ok
            }
            Command::FenceBroker { node_id, epoch } => {
                let fenced: Vec<i32> = self
                    .brokers
                    .values()
                    .filter(|b| b.fenced || b.node_id == node_id)
                    .map(|b| b.node_id)
                    .collect();
                match self.brokers.get_mut(&node_id) {
                    Some(b) if b.epoch == epoch => b.fenced = true,
                    Some(b) => {
                        return CommandResult::StaleBrokerEpoch { current: b.epoch };
                    }
                    None => return CommandResult::StaleBrokerEpoch { current: -1 },
                }
                for p in self.partitions_mut() {
                    if !p.isr.contains(&node_id) && p.leader != node_id {
                        continue;
                    }
                    let rest: Vec<i32> = p.isr.iter().copied().filter(|r| *r != node_id).collect();
                    if p.leader == node_id {
                        let next = p
                            .replicas
                            .iter()
                            .copied()
                            .find(|r| rest.contains(r) && !fenced.contains(r));
                        p.leader = next.unwrap_or(-1);
                        p.leader_epoch += 1;
                    }
                    // The last in-sync replica stays in the ISR: when it comes back, it
                    // is the one that has everything.
                    if !rest.is_empty() {
                        p.isr = rest;
                    }
                    p.partition_epoch += 1;
                }
                self.topics_epoch += 1;
                CommandResult::Ok
            }
            Command::AlterIsr {
                topic_id,
                partition,
                leader_epoch,
                partition_epoch,
                isr,
            } => match self.partition_mut(topic_id, partition) {
                Err(e) => e,
                Ok(p)
                    if p.leader_epoch != leader_epoch
                        || p.partition_epoch != partition_epoch
                        || !isr.contains(&p.leader) =>
                {
                    p.stale()
                }
                Ok(p) => {
                    p.isr = isr;
                    let epoch = p.changed();
                    self.topics_epoch += 1;
                    CommandResult::PartitionEpoch(epoch)
                }
            },
            Command::ElectLeader {
                topic_id,
                partition,
                partition_epoch,
                leader,
                unclean,
            } => {
                let alive = self.brokers.get(&leader).is_some_and(|b| !b.fenced);
                match self.partition_mut(topic_id, partition) {
                    Err(e) => e,
                    Ok(p)
                        if p.partition_epoch != partition_epoch
                            || !alive
                            || !p.replicas.contains(&leader)
                            || !(unclean || p.isr.contains(&leader)) =>
                    {
                        p.stale()
                    }
                    Ok(p) => {
                        if !p.isr.contains(&leader) {
                            p.isr = vec![leader];
                        }
                        p.leader = leader;
                        p.leader_epoch += 1;
                        let epoch = p.changed();
                        self.topics_epoch += 1;
                        CommandResult::PartitionEpoch(epoch)
                    }
                }
            }
            Command::CreateTopic {
                name,
                id,
                partitions,
                configs,
            } => {
                if self.topics.contains_key(&name) || self.topic_by_id(id).is_some() {
                    return CommandResult::TopicAlreadyExists;
                }
                if let Some(other) = self.colliding_topic(&name) {
                    return CommandResult::TopicNameCollision(other.to_string());
                }
                let topic = TopicMeta {
                    name: name.clone(),
                    id,
                    partitions,
                    configs,
                };
                self.topics.insert(name, topic);
                self.topics_epoch += 1;
                CommandResult::Ok
            }
            Command::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(topic) => {
                    // Kafka forgets committed offsets of a deleted topic.
                    for offsets in self.groups.values_mut() {
                        offsets.remove(&name);
                    }
                    self.groups.retain(|_, offsets| !offsets.is_empty());
                    self.forget_groups_without_offsets();
                    self.topics_epoch += 1;
                    CommandResult::Deleted(topic)
                }
                None => CommandResult::UnknownTopic,
            },
            Command::SetTopicConfigs { name, configs } => match self.topics.get_mut(&name) {
                Some(topic) => {
                    topic.configs = configs;
                    self.topics_epoch += 1;
                    CommandResult::Ok
                }
                None => CommandResult::UnknownTopic,
            },
            Command::AddPartitions { name, partitions } => match self.topics.get_mut(&name) {
                Some(topic) => {
                    topic.partitions.extend(partitions);
                    self.topics_epoch += 1;
                    CommandResult::Ok
                }
                None => CommandResult::UnknownTopic,
            },
            Command::AdvanceLogStartOffset {
                topic_id,
                partition,
                offset,
            } => match self.partition_mut(topic_id, partition) {
                Err(e) => e,
                Ok(p) => {
                    p.log_start_offset = p.log_start_offset.max(offset);
                    self.topics_epoch += 1;
                    CommandResult::Ok
                }
            },
            Command::CommitOffsets { commits } => {
                self.commit_offsets(commits);
                CommandResult::Ok
            }
            Command::Transaction(cmd) => self.apply_txn(cmd),
            Command::DeleteOffsets { group, partitions } => {
                if let Some(offsets) = self.groups.get_mut(&group) {
                    for (topic, partition) in partitions {
                        if let Some(parts) = offsets.get_mut(&topic) {
                            parts.remove(&partition);
                            if parts.is_empty() {
                                offsets.remove(&topic);
                            }
                        }
                    }
                    if offsets.is_empty() {
                        self.groups.remove(&group);
                    }
                }
                self.forget_groups_without_offsets();
                CommandResult::Ok
            }
            Command::DeleteGroupOffsets { group } => match self.groups.remove(&group) {
                Some(_) => {
                    self.forget_groups_without_offsets();
                    CommandResult::Ok
                }
                None => CommandResult::UnknownGroup,
            },
            Command::AllocateProducerIds { count } => {
                let first = self.next_producer_id;
                self.next_producer_id = first.saturating_add(i64::from(count));
                CommandResult::ProducerIds { first }
            }
            Command::AddRemoteSegment {
                topic_id,
                partition,
                segment,
            } => match self.partition_mut(topic_id, partition) {
                Err(e) => e,
                Ok(p) if segment.leader_epoch < p.leader_epoch => CommandResult::StaleLeaderEpoch {
                    current: p.leader_epoch,
                },
                Ok(p) => {
                    let end = p.remote_segments.last().map_or(i64::MIN, |s| s.next_offset);
                    if segment.next_offset > end {
                        Arc::make_mut(&mut p.remote_segments).push(segment);
                    }
                    CommandResult::Ok
                }
            },
            Command::RemoveRemoteSegments {
                topic_id,
                partition,
                below,
            } => match self.partition_mut(topic_id, partition) {
                Err(e) => e,
                Ok(p) => {
                    let (gone, kept) = std::mem::take(Arc::make_mut(&mut p.remote_segments))
                        .into_iter()
                        .partition(|s| s.next_offset <= below);
                    p.remote_segments = Arc::new(kept);
                    CommandResult::RemoteSegmentsRemoved(gone)
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn partition() -> PartitionMeta {
        PartitionMeta {
            leader: 1,
            leader_epoch: 0,
            replicas: vec![1],
            isr: vec![1],
            partition_epoch: 0,
            log_start_offset: 0,
            remote_segments: Arc::default(),
        }
    }

    #[test]
    fn apply_is_deterministic_and_guards_inputs() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(Command::InitCluster {
                cluster_id: "a".into()
            }),
            CommandResult::ClusterId("a".into())
        );
        assert_eq!(
            s.apply(Command::InitCluster {
                cluster_id: "b".into()
            }),
            CommandResult::ClusterId("a".into())
        );
        let id = Uuid::from_u128(7);
        let create = Command::CreateTopic {
            name: "t".into(),
            id,
            partitions: vec![partition()],
            configs: BTreeMap::new(),
        };
        assert_eq!(s.apply(create.clone()), CommandResult::Ok);
        assert_eq!(s.apply(create), CommandResult::TopicAlreadyExists);
        // "t.x" and "t_x" would share metric names: Kafka refuses the second one.
        let collide = |name: &str| Command::CreateTopic {
            name: name.into(),
            id: Uuid::new_v4(),
            partitions: vec![],
            configs: BTreeMap::new(),
        };
        assert_eq!(s.apply(collide("t.x")), CommandResult::Ok);
        assert_eq!(
            s.apply(collide("t_x")),
            CommandResult::TopicNameCollision("t.x".into())
        );
        // Same id under another name is refused too: ids must stay unique.
        assert_eq!(
            s.apply(Command::CreateTopic {
                name: "u".into(),
                id,
                partitions: vec![],
                configs: BTreeMap::new(),
            }),
            CommandResult::TopicAlreadyExists
        );
        for (partition, want) in [
            (-1, CommandResult::UnknownPartition),
            (1, CommandResult::UnknownPartition),
            (0, CommandResult::Ok),
        ] {
            assert_eq!(
                s.apply(Command::AdvanceLogStartOffset {
                    topic_id: id,
                    partition,
                    offset: 5
                }),
                want
            );
        }
        assert_eq!(
            s.apply(Command::AdvanceLogStartOffset {
                topic_id: id,
                partition: 0,
                offset: 3
            }),
            CommandResult::Ok
        );
        assert_eq!(s.topic_by_id(id).unwrap().partitions[0].log_start_offset, 5);
        assert_eq!(
            s.apply(Command::AdvanceLogStartOffset {
                topic_id: Uuid::from_u128(8),
                partition: 0,
                offset: 3
            }),
            CommandResult::UnknownTopic
        );
        assert_eq!(
            s.apply(Command::AddPartitions {
                name: "t".into(),
                partitions: vec![partition()]
            }),
            CommandResult::Ok
        );
        assert_eq!(s.topics["t"].partitions.len(), 2);
        let deleted = s.apply(Command::DeleteTopic { name: "t".into() });
        assert!(matches!(deleted, CommandResult::Deleted(t) if t.id == id));
        assert_eq!(
            s.apply(Command::SetTopicConfigs {
                name: "t".into(),
                configs: BTreeMap::new()
            }),
            CommandResult::UnknownTopic
        );
    }

    fn commit(group: &str, topic: &str, partition: i32, offset: i64) -> OffsetCommit {
        OffsetCommit {
            group: group.into(),
            topic: topic.into(),
            partition,
            committed: CommittedOffset {
                offset,
                leader_epoch: 0,
                metadata: format!("m{offset}"),
                commit_timestamp_ms: 5,
            },
            protocol_type: "consumer".into(),
        }
    }

    #[test]
    fn offsets_are_stored_deleted_and_follow_their_topic() {
        let mut s = ClusterState::default();
        for name in ["a", "b"] {
            s.apply(Command::CreateTopic {
                name: name.into(),
                id: Uuid::new_v4(),
                partitions: vec![partition(), partition()],
                configs: BTreeMap::new(),
            });
        }
        let epoch = s.topics_epoch;
        s.apply(Command::CommitOffsets {
            commits: vec![
                commit("g", "a", 0, 10),
                commit("g", "a", 1, 11),
                commit("g", "b", 0, 12),
                commit("h", "a", 0, 1),
                commit("g", "gone", 0, 9),
            ],
        });
        assert_eq!(
            s.topics_epoch, epoch,
            "offset commits are not topic changes"
        );
        assert_eq!(s.groups["g"]["a"][&1].offset, 11);
        assert!(
            !s.groups["g"].contains_key("gone"),
            "unknown topics are skipped"
        );
        // A later commit replaces the earlier one.
        s.apply(Command::CommitOffsets {
            commits: vec![commit("g", "a", 1, 20)],
        });
        assert_eq!(s.groups["g"]["a"][&1].metadata, "m20");

        s.apply(Command::DeleteOffsets {
            group: "g".into(),
            partitions: vec![("a".into(), 0), ("a".into(), 1)],
        });
        assert!(!s.groups["g"].contains_key("a"));
        assert!(s.groups["g"].contains_key("b"));
        // Deleting a topic forgets its offsets; a group left with none disappears.
        assert!(matches!(
            s.apply(Command::DeleteTopic { name: "a".into() }),
            CommandResult::Deleted(_)
        ));
        assert!(!s.groups.contains_key("h"));
        assert_eq!(
            s.apply(Command::DeleteGroupOffsets { group: "g".into() }),
            CommandResult::Ok
        );
        assert_eq!(
            s.apply(Command::DeleteGroupOffsets { group: "g".into() }),
            CommandResult::UnknownGroup
        );
        assert!(s.groups.is_empty());
        assert!(
            s.group_protocol_types.is_empty(),
            "forgotten with the offsets"
        );
    }

    #[test]
    fn producer_ids_come_in_disjoint_blocks() {
        let mut s = ClusterState::default();
        assert_eq!(
            s.apply(Command::AllocateProducerIds { count: 1000 }),
            CommandResult::ProducerIds { first: 0 }
        );
        assert_eq!(
            s.apply(Command::AllocateProducerIds { count: 10 }),
            CommandResult::ProducerIds { first: 1000 }
        );
        assert_eq!(s.next_producer_id, 1010);
    }

    #[test]
    fn the_manifest_grows_in_order_and_refuses_deposed_leaders() {
        let mut s = ClusterState::default();
        let id = Uuid::from_u128(9);
        s.apply(Command::CreateTopic {
            name: "t".into(),
            id,
            partitions: vec![PartitionMeta {
                leader_epoch: 3,
                ..partition()
            }],
            configs: BTreeMap::new(),
        });
        let seg = |base: i64, next: i64, epoch: i32| Command::AddRemoteSegment {
            topic_id: id,
            partition: 0,
            segment: RemoteSegmentMeta {
                base_offset: base,
                next_offset: next,
                max_timestamp: 0,
                size: 10,
                leader_epoch: epoch,
                key: format!("{base}-{epoch}.seg"),
                index_key: format!("{base}-{epoch}.idx"),
                aborted: Vec::new(),
            },
        };
        assert_eq!(s.apply(seg(0, 10, 3)), CommandResult::Ok);
        assert_eq!(s.apply(seg(10, 20, 4)), CommandResult::Ok);
        // A retried commit of a segment already there changes nothing.
        assert_eq!(s.apply(seg(10, 20, 4)), CommandResult::Ok);
        assert_eq!(
            s.apply(seg(20, 30, 2)),
            CommandResult::StaleLeaderEpoch { current: 3 }
        );
        let manifest: Vec<(i64, String)> = s.topics["t"].partitions[0]
            .remote_segments
            .iter()
            .map(|r| (r.base_offset, r.key.clone()))
            .collect();
        assert_eq!(
            manifest,
            vec![(0, "0-3.seg".to_string()), (10, "10-4.seg".to_string())]
        );
    }

    #[test]
    fn scram_bootstrap_applies_once_and_alterations_replace_and_delete() {
        let cred = |n: u8| ScramCredential {
            salt: vec![n],
            stored_key: vec![n; 32],
            server_key: vec![n; 32],
            iterations: 4096,
        };
        let alter = |upserts: Vec<(&str, &str, ScramCredential)>,
                     deletions: Vec<(&str, &str)>,
                     bootstrap| {
            Command::AlterScram {
                upserts: upserts
                    .into_iter()
                    .map(|(u, m, c)| (u.to_string(), m.to_string(), c))
                    .collect(),
                deletions: deletions
                    .into_iter()
                    .map(|(u, m)| (u.to_string(), m.to_string()))
                    .collect(),
                bootstrap,
            }
        };
        let mut s = ClusterState::default();
        s.apply(alter(
            vec![("admin", "SCRAM-SHA-512", cred(1))],
            vec![],
            true,
        ));
        // A second bootstrap (every later start of a node with scram.bootstrap) changes nothing.
        s.apply(alter(
            vec![("admin", "SCRAM-SHA-512", cred(2))],
            vec![],
            true,
        ));
        assert_eq!(s.scram["admin"]["SCRAM-SHA-512"], cred(1));
        s.apply(alter(
            vec![
                ("admin", "SCRAM-SHA-512", cred(3)),
                ("bob", "SCRAM-SHA-256", cred(4)),
            ],
            vec![],
            false,
        ));
        assert_eq!(s.scram["admin"]["SCRAM-SHA-512"], cred(3));
        s.apply(alter(
            vec![],
            vec![("bob", "SCRAM-SHA-256"), ("nobody", "SCRAM-SHA-256")],
            false,
        ));
        assert!(
            !s.scram.contains_key("bob"),
            "a user with no credential left is gone"
        );
        // Managing users before any bootstrap also counts as formed.
        let mut t = ClusterState::default();
        t.apply(alter(
            vec![("carol", "SCRAM-SHA-256", cred(5))],
            vec![],
            false,
        ));
        t.apply(alter(
            vec![("admin", "SCRAM-SHA-512", cred(6))],
            vec![],
            true,
        ));
        assert!(!t.scram.contains_key("admin"));
    }
}
