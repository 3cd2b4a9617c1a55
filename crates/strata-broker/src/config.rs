//! Kafka configuration, by Kafka's names: the broker-level settings a Strata broker
//! honours, the topic-level settings a topic may override, and how the two resolve.
//!
//! Each setting is declared once in a table ([`BROKER_CONFIGS`], [`TOPIC_CONFIGS`]) with
//! its type, default, validation and documentation; DescribeConfigs, CreateTopics
//! validation and the config file all read the same table. A setting a Kafka user might
//! expect but Strata does not implement is absent, so setting it is an error rather
//! than a silent no-op.

use std::collections::BTreeMap;

use strata_log::LogConfig;

/// Kafka's config types, with the codes DescribeConfigs v3+ uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Short = 4,
    Long = 5,
    List = 7,
}

/// What values a setting accepts beyond its type.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    Any,
    AtLeast(i64),
    Range(i64, i64),
    OneOf(&'static [&'static str]),
}

/// One declared setting.
#[derive(Debug)]
pub struct ConfigDef {
    pub name: &'static str,
    pub ty: ConfigType,
    pub default: &'static str,
    pub check: Check,
    pub doc: &'static str,
}

/// A value that does not fit its setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown config {0:?}{hint}", hint = did_you_mean(.0))]
    Unknown(String),
    #[error("config {name:?} is not supported: {reason}")]
    Refused { name: String, reason: &'static str },
    #[error("invalid value {value:?} for config {name:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

/// ", did you mean X?" for a name close to a known broker or topic setting.
fn did_you_mean(name: &str) -> String {
    let known = BROKER_CONFIGS
        .iter()
        .chain(TOPIC_CONFIGS.iter().map(|(d, _)| d))
        .map(|d| d.name);
    closest(name, known).map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"))
}

const fn def(
    name: &'static str,
    ty: ConfigType,
    default: &'static str,
    check: Check,
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        ty,
        default,
        check,
        doc,
    }
}

/// Kafka's `compression.type` values.
const COMPRESSION_TYPES: &[&str] = &["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"];

/// Broker-level Kafka settings Strata honours.
pub static BROKER_CONFIGS: &[ConfigDef] = &[
    def(
        "num.partitions",
        ConfigType::Int,
        "1",
        Check::AtLeast(1),
        "Partitions of an auto-created topic, or of a CreateTopics request that asks for the default (-1).",
    ),
    def(
        "default.replication.factor",
        ConfigType::Short,
        "1",
        Check::AtLeast(1),
        "Replication factor of auto-created topics. A single-node cluster accepts only 1.",
    ),
    def(
        "auto.create.topics.enable",
        ConfigType::Boolean,
        "true",
        Check::Any,
        "Create a topic when a client asks for its metadata and it does not exist.",
    ),
    def(
        "message.max.bytes",
        ConfigType::Int,
        "1048588",
        Check::AtLeast(0),
        "Largest record batch the broker accepts (default for the topic's max.message.bytes).",
    ),
    def(
        "socket.request.max.bytes",
        ConfigType::Int,
        "104857600",
        Check::AtLeast(1),
        "Largest request frame a client may send; larger frames close the connection.",
    ),
    def(
        "queued.max.request.bytes",
        ConfigType::Long,
        "268435456",
        Check::AtLeast(-1),
        "Bytes of request frames all connections together may hold in memory; a connection whose next frame does not fit waits (and stops reading its socket) until others are handled. -1: no limit (Kafka's default; Strata's is 256 MiB).",
    ),
    def(
        "listeners",
        ConfigType::List,
        "",
        Check::Any,
        "Listeners as NAME://HOST:PORT (e.g. INTERNAL://0.0.0.0:9092,EXTERNAL://0.0.0.0:9094); empty: the one PLAINTEXT listener of kafka_listen. Read at start-up.",
    ),
    def(
        "advertised.listeners",
        ConfigType::List,
        "",
        Check::Any,
        "Addresses clients of each listener are told to use, as NAME://HOST:PORT; a listener not named here advertises its bound address. Read at start-up.",
    ),
    def(
        "listener.security.protocol.map",
        ConfigType::List,
        strata_security::listeners::DEFAULT_PROTOCOL_MAP,
        Check::Any,
        "Each listener's security protocol, NAME:PROTOCOL with PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. Read at start-up.",
    ),
    def(
        "inter.broker.listener.name",
        ConfigType::String,
        "",
        Check::Any,
        "The listener other brokers reach this one on (replication, transaction markers); empty: the first of listeners. Read at start-up.",
    ),
    def(
        "sasl.enabled.mechanisms",
        ConfigType::List,
        "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
        Check::OneOf(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]),
        "SASL mechanisms SASL listeners offer. PLAIN checks the password against the user's SCRAM credential, so one set of users serves PLAIN and SCRAM; OAUTHBEARER needs sasl.oauthbearer.jwks.endpoint.url.",
    ),
    def(
        "sasl.oauthbearer.jwks.endpoint.url",
        ConfigType::String,
        "",
        Check::Any,
        "The JWKS OAUTHBEARER tokens are checked against: an http(s) URL, a file:// URL or a path, read again every sasl.oauthbearer.jwks.endpoint.refresh.ms.",
    ),
    def(
        "sasl.oauthbearer.jwks.endpoint.refresh.ms",
        ConfigType::Long,
        "3600000",
        Check::AtLeast(100),
        "How often the JWKS is read again for rotated keys.",
    ),
    def(
        "sasl.oauthbearer.expected.issuer",
        ConfigType::String,
        "",
        Check::Any,
        "The iss claim OAUTHBEARER tokens must carry; empty: not checked.",
    ),
    def(
        "sasl.oauthbearer.expected.audience",
        ConfigType::List,
        "",
        Check::Any,
        "Audiences of which a token's aud claim must name one; empty: not checked.",
    ),
    def(
        "sasl.oauthbearer.sub.claim.name",
        ConfigType::String,
        "sub",
        Check::Any,
        "The claim that names the principal (User:<claim>).",
    ),
    def(
        "sasl.oauthbearer.clock.skew.seconds",
        ConfigType::Int,
        "30",
        Check::AtLeast(0),
        "Leeway for the exp and nbf claims.",
    ),
    def(
        "ssl.keystore.type",
        ConfigType::String,
        "PEM",
        Check::OneOf(&["PEM"]),
        "Format of ssl.keystore.location: PEM only (Kafka's PEM keystore).",
    ),
    def(
        "ssl.keystore.location",
        ConfigType::String,
        "",
        Check::Any,
        "PEM file with the private key (unencrypted) and the certificate chain of SSL and SASL_SSL listeners; re-read when it changes.",
    ),
    def(
        "ssl.truststore.type",
        ConfigType::String,
        "PEM",
        Check::OneOf(&["PEM"]),
        "Format of ssl.truststore.location: PEM only.",
    ),
    def(
        "ssl.truststore.location",
        ConfigType::String,
        "",
        Check::Any,
        "PEM bundle of the CA certificates client certificates are checked against (ssl.client.auth).",
    ),
    def(
        "ssl.client.auth",
        ConfigType::String,
        "none",
        Check::OneOf(&[
            "none",
            "requested",
            "required",
            "NONE",
            "REQUESTED",
            "REQUIRED",
        ]),
        "Client certificates on SSL listeners: none, requested or required. A verified certificate's subject is the connection's principal (User:CN=...,O=...).",
    ),
    def(
        "connections.max.reauth.ms",
        ConfigType::Long,
        "0",
        Check::AtLeast(0),
        "Longest a SASL session lasts before the client must re-authenticate (KIP-368); a request after it closes the connection. 0: sessions do not expire.",
    ),
    def(
        "authorizer.class.name",
        ConfigType::String,
        "",
        Check::Any,
        "Any non-empty value (Kafka's org.apache.kafka.metadata.authorizer.StandardAuthorizer included) turns on ACL authorization of every request.",
    ),
    def(
        "super.users",
        ConfigType::String,
        "",
        Check::Any,
        "Principals allowed everything whatever the ACLs say, separated by semicolons: User:admin;User:CN=broker,O=Example.",
    ),
    def(
        "allow.everyone.if.no.acl.found",
        ConfigType::Boolean,
        "false",
        Check::Any,
        "With the authorizer on: whether a resource no ACL names is open to everyone (Kafka's default, false: closed).",
    ),
    def(
        "strata.meta.tls",
        ConfigType::Boolean,
        "false",
        Check::Any,
        "The metadata quorum's RPCs over mTLS: each node presents ssl.keystore.location and accepts only peers whose certificates chain to ssl.truststore.location. Every node of the cluster must agree. Read at start-up.",
    ),
    def(
        "strata.meta.tls-peers",
        ConfigType::String,
        "",
        Check::Any,
        "With strata.meta.tls: the certificate subjects (User:CN=...,O=..., separated by semicolons) accepted as quorum peers; empty: this node's own subject. Clients' certificates from the same CA never reach the quorum.",
    ),
    def(
        "strata.ssl.reload-interval-ms",
        ConfigType::Long,
        "5000",
        Check::AtLeast(100),
        "How often ssl.keystore.location is checked for a new certificate. Read at start-up.",
    ),
    def(
        "strata.http.tls",
        ConfigType::Boolean,
        "false",
        Check::Any,
        "Serve the HTTP port (health, readiness, metrics, /api/v1) over TLS with ssl.keystore.location. Read at start-up.",
    ),
    def(
        "strata.http.admin-token",
        ConfigType::String,
        "",
        Check::Any,
        "Bearer token of the HTTP port's /api/v1 routes, which are closed without it once any listener uses TLS or SASL or the authorizer is on. Sensitive: never shown.",
    ),
    def(
        "strata.http.probes-require-token",
        ConfigType::Boolean,
        "false",
        Check::Any,
        "Close /healthz, /readyz and /metrics to requests without strata.http.admin-token too (with security on).",
    ),
    def(
        "strata.scram.bootstrap",
        ConfigType::List,
        "",
        Check::Any,
        "SCRAM users created when the cluster is formed, in kafka-storage format --add-scram syntax: SCRAM-SHA-512=[name=admin,password=admin-secret]. Applied once; later changes of users go through AlterUserScramCredentials. Sensitive: never shown.",
    ),
    def(
        "connections.max.idle.ms",
        ConfigType::Long,
        "600000",
        Check::AtLeast(-1),
        "A connection that sends no request for this long is closed (-1: never).",
    ),
    def(
        "max.incremental.fetch.session.cache.slots",
        ConfigType::Int,
        "1000",
        Check::AtLeast(0),
        "Fetch sessions (KIP-227) the broker keeps; 0 turns incremental fetches off (every fetch is a full one).",
    ),
    def(
        "fetch.max.bytes",
        ConfigType::Int,
        "57671680",
        Check::AtLeast(1024),
        "Most record bytes one Fetch response carries, whatever the client asks for.",
    ),
    def(
        "log.segment.bytes",
        ConfigType::Int,
        "1073741824",
        Check::AtLeast(14),
        "Size at which a segment is rolled (default for segment.bytes).",
    ),
    def(
        "log.roll.ms",
        ConfigType::Long,
        "604800000",
        Check::AtLeast(1),
        "Age at which a segment is rolled (default for segment.ms).",
    ),
    def(
        "log.roll.hours",
        ConfigType::Int,
        "168",
        Check::AtLeast(1),
        "log.roll.ms in hours, used when log.roll.ms is not set.",
    ),
    def(
        "log.retention.ms",
        ConfigType::Long,
        "604800000",
        Check::AtLeast(-1),
        "How long to keep a segment after its newest record (default for retention.ms; -1 keeps forever).",
    ),
    def(
        "log.retention.minutes",
        ConfigType::Int,
        "10080",
        Check::AtLeast(-1),
        "log.retention.ms in minutes, used when log.retention.ms is not set.",
    ),
    def(
        "log.retention.hours",
        ConfigType::Int,
        "168",
        Check::AtLeast(-1),
        "log.retention.ms in hours, used when neither log.retention.ms nor log.retention.minutes is set.",
    ),
    def(
        "log.retention.bytes",
        ConfigType::Long,
        "-1",
        Check::AtLeast(-1),
        "Size above which old segments are deleted (default for retention.bytes; -1 means no limit).",
    ),
    def(
        "log.retention.check.interval.ms",
        ConfigType::Long,
        "300000",
        Check::AtLeast(1),
        "How often retention runs.",
    ),
    def(
        "log.index.interval.bytes",
        ConfigType::Int,
        "4096",
        Check::AtLeast(0),
        "Bytes of log between offset index entries (default for index.interval.bytes).",
    ),
    def(
        "log.cleanup.policy",
        ConfigType::List,
        "delete",
        Check::OneOf(&["delete"]),
        "Default cleanup.policy. Only delete is implemented.",
    ),
    def(
        "min.insync.replicas",
        ConfigType::Int,
        "1",
        Check::AtLeast(1),
        "Default min.insync.replicas.",
    ),
    def(
        "unclean.leader.election.enable",
        ConfigType::Boolean,
        "false",
        Check::Any,
        "Default unclean.leader.election.enable: whether a partition with no live in-sync replica may be led by a replica outside the ISR (losing acknowledged records).",
    ),
    def(
        "replica.lag.time.max.ms",
        ConfigType::Long,
        "30000",
        Check::AtLeast(1),
        "A follower that has not caught up with its leader for this long leaves the ISR.",
    ),
    def(
        "replica.fetch.max.bytes",
        ConfigType::Int,
        "1048576",
        Check::AtLeast(1024),
        "Bytes a follower fetches per partition per request.",
    ),
    def(
        "replica.fetch.response.max.bytes",
        ConfigType::Int,
        "10485760",
        Check::AtLeast(1024),
        "Bytes a follower fetches per request.",
    ),
    def(
        "replica.fetch.wait.max.ms",
        ConfigType::Int,
        "500",
        Check::AtLeast(0),
        "Longest a follower's fetch waits at the leader for new data.",
    ),
    def(
        "replica.selector.class",
        ConfigType::String,
        "org.apache.kafka.common.replica.RackAwareReplicaSelector",
        Check::OneOf(&[
            "",
            "org.apache.kafka.common.replica.RackAwareReplicaSelector",
        ]),
        "Which replica a consumer should fetch from: the rack-aware selector sends a consumer with client.rack to an in-sync replica in its rack (KIP-392); empty: always the leader. (Kafka's default is empty.)",
    ),
    def(
        "transaction.max.timeout.ms",
        ConfigType::Int,
        "900000",
        Check::AtLeast(1),
        "The longest transaction.timeout.ms a transactional producer may ask for; longer requests get INVALID_TRANSACTION_TIMEOUT.",
    ),
    def(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        ConfigType::Int,
        "10000",
        Check::AtLeast(1),
        "How often the transaction coordinator aborts transactions past their timeout and finishes transactions whose markers a failed coordinator left unwritten.",
    ),
    def(
        "transactional.id.expiration.ms",
        ConfigType::Int,
        "604800000",
        Check::AtLeast(1),
        "A transactional id with no transaction open and no request for this long is forgotten: its producer gets INVALID_PRODUCER_ID_MAPPING if it comes back, and InitProducerId starts it afresh.",
    ),
    def(
        "transaction.remove.expired.transaction.cleanup.interval.ms",
        ConfigType::Int,
        "3600000",
        Check::AtLeast(1),
        "How often the transaction coordinator looks for transactional ids past transactional.id.expiration.ms (checked on its transaction.abort.timed.out.transaction.cleanup.interval.ms tick).",
    ),
    def(
        "broker.session.timeout.ms",
        ConfigType::Int,
        "9000",
        Check::AtLeast(100),
        "A broker not heard of by the controller for this long is fenced and its partitions get new leaders.",
    ),
    def(
        "broker.heartbeat.interval.ms",
        ConfigType::Int,
        "2000",
        Check::AtLeast(10),
        "How often a broker renews its lease with the controller.",
    ),
    def(
        "auto.leader.rebalance.enable",
        ConfigType::Boolean,
        "true",
        Check::Any,
        "Move leadership back to each partition's preferred replica once it is in sync again.",
    ),
    def(
        "leader.imbalance.check.interval.seconds",
        ConfigType::Long,
        "300",
        Check::AtLeast(1),
        "How often the controller restores preferred leaders (with auto.leader.rebalance.enable).",
    ),
    def(
        "controlled.shutdown.enable",
        ConfigType::Boolean,
        "true",
        Check::Any,
        "On SIGTERM, move this broker's leadership to other in-sync replicas before stopping.",
    ),
    def(
        "compression.type",
        ConfigType::String,
        "producer",
        Check::OneOf(COMPRESSION_TYPES),
        "Default compression.type.",
    ),
    def(
        "compression.gzip.level",
        ConfigType::Int,
        "-1",
        Check::Range(-1, 9),
        "Default compression.gzip.level.",
    ),
    def(
        "compression.lz4.level",
        ConfigType::Int,
        "9",
        Check::Range(1, 17),
        "Default compression.lz4.level.",
    ),
    def(
        "compression.zstd.level",
        ConfigType::Int,
        "3",
        Check::Range(-131072, 22),
        "Default compression.zstd.level.",
    ),
    def(
        "log.message.timestamp.type",
        ConfigType::String,
        "CreateTime",
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
        "Default message.timestamp.type.",
    ),
    def(
        "log.message.timestamp.before.max.ms",
        ConfigType::Long,
        "9223372036854775807",
        Check::AtLeast(0),
        "Default message.timestamp.before.max.ms.",
    ),
    def(
        "log.message.timestamp.after.max.ms",
        ConfigType::Long,
        "3600000",
        Check::AtLeast(0),
        "Default message.timestamp.after.max.ms.",
    ),
    def(
        "log.message.timestamp.difference.max.ms",
        ConfigType::Long,
        "9223372036854775807",
        Check::AtLeast(0),
        "Default message.timestamp.difference.max.ms (deprecated by Kafka 3.6, removed in 4.0).",
    ),
    def(
        "delete.topic.enable",
        ConfigType::Boolean,
        "true",
        Check::Any,
        "Whether DeleteTopics may delete topics; false answers TOPIC_DELETION_DISABLED.",
    ),
    def(
        "group.max.size",
        ConfigType::Int,
        "2147483647",
        Check::AtLeast(1),
        "Most members one consumer group may have; a member joining a full group gets GROUP_MAX_SIZE_REACHED.",
    ),
    def(
        "group.min.session.timeout.ms",
        ConfigType::Int,
        "6000",
        Check::AtLeast(1),
        "Shortest session timeout a group member may ask for.",
    ),
    def(
        "group.max.session.timeout.ms",
        ConfigType::Int,
        "1800000",
        Check::AtLeast(1),
        "Longest session timeout a group member may ask for.",
    ),
    def(
        "group.initial.rebalance.delay.ms",
        ConfigType::Int,
        "3000",
        Check::AtLeast(0),
        "How long a new group's first rebalance waits for more members to join.",
    ),
    def(
        "offsets.retention.minutes",
        ConfigType::Int,
        "10080",
        Check::AtLeast(1),
        "How long committed offsets of a group without members are kept.",
    ),
    def(
        "offsets.retention.check.interval.ms",
        ConfigType::Long,
        "600000",
        Check::AtLeast(1),
        "How often expired committed offsets are removed.",
    ),
    def(
        "offset.metadata.max.bytes",
        ConfigType::Int,
        "4096",
        Check::AtLeast(0),
        "Largest metadata string an OffsetCommit may attach to an offset.",
    ),
    def(
        "log.local.retention.ms",
        ConfigType::Long,
        "3600000",
        Check::AtLeast(-2),
        "Default local.retention.ms (Kafka's default is -2; Strata keeps one hour of uploaded data on local disk, the object store holds the rest).",
    ),
    def(
        "log.local.retention.bytes",
        ConfigType::Long,
        "-2",
        Check::AtLeast(-2),
        "Default local.retention.bytes.",
    ),
    def(
        "strata.wal.max-unuploaded-bytes",
        ConfigType::Long,
        "4294967296",
        Check::AtLeast(1),
        "Local bytes not yet in the object store above which produce requests are delayed, then refused with a retriable error.",
    ),
    def(
        "strata.kafka.request-read-timeout-ms",
        ConfigType::Long,
        "30000",
        Check::AtLeast(1),
        "Longest a request may take to arrive once its size has: a client that stalls mid-frame is disconnected, and the memory its frame holds freed.",
    ),
    def(
        "strata.log.scrub-bytes-per-second",
        ConfigType::Long,
        "33554432",
        Check::AtLeast(0),
        "How fast the scrubber reads sealed segments found on disk at start-up to check their batch CRCs (until checked, reads check the batches they serve); 0 turns it off. Read at start-up.",
    ),
    def(
        "strata.wal.disk-reserve-bytes",
        ConfigType::Long,
        "-1",
        Check::AtLeast(-1),
        "Room on the data directory's file system kept for the metadata log, indexes and segment rolls: the unuploaded-bytes cap shrinks so that producing to tiered topics stops (with a retriable error) before the disk would fill. -1: a tenth of the file system, at most 1 GiB.",
    ),
    def(
        "strata.wal.cache-bytes",
        ConfigType::Long,
        "134217728",
        Check::AtLeast(0),
        "Memory for the newest appends of all partitions, from which consumers at the tail are served without reading segment files (0: none). Read at start-up.",
    ),
    def(
        "strata.meta.write-timeout-ms",
        ConfigType::Long,
        "10000",
        Check::AtLeast(100),
        "Longest a metadata write (topic changes, offset commits, manifest entries) waits to be committed; then the request gets the retriable REQUEST_TIMED_OUT. Read at start-up.",
    ),
    def(
        "strata.meta.snapshot-every",
        ConfigType::Long,
        "10000",
        Check::AtLeast(10),
        "The metadata node snapshots its state every this many log entries and drops the log behind the snapshot, keeping up to 1000 entries (fewer if this is smaller) for a node that was away briefly; one that was away longer, or comes back with an empty disk, gets the snapshot. Read at start-up.",
    ),
    def(
        "strata.tier.upload-concurrency",
        ConfigType::Int,
        "4",
        Check::AtLeast(1),
        "Segments uploaded at the same time (one per partition at a time).",
    ),
    def(
        "strata.tier.multipart-part-bytes",
        ConfigType::Int,
        "8388608",
        Check::AtLeast(5242880),
        "Segments larger than this are uploaded in parts of this size, several in flight.",
    ),
    def(
        "strata.tier.gc-interval-ms",
        ConfigType::Long,
        "600000",
        Check::AtLeast(1000),
        "How often the object store is listed for objects no manifest names (orphans of crashed or failed uploads, of deleted topics). Read at start-up.",
    ),
    def(
        "strata.tier.gc-grace-ms",
        ConfigType::Long,
        "900000",
        Check::AtLeast(1000),
        "Age an unnamed object must reach before the garbage collector deletes it; must exceed the longest upload. Read at start-up.",
    ),
    def(
        "strata.tier.remote-fetch-timeout-ms",
        ConfigType::Long,
        "5000",
        Check::AtLeast(1),
        "Longest a fetch waits for the object store; a partition whose remote read takes longer is answered with the retriable KAFKA_STORAGE_ERROR (the read goes on and fills the cache), so a hung store does not hold up the fetch's other partitions.",
    ),
    def(
        "strata.tier.request-timeout-ms",
        ConfigType::Long,
        "5000",
        Check::AtLeast(100),
        "Longest one object-store request may take, plus one second per MiB it carries, before it counts as failed (and is tried again if it can be): a hung store shows in the metrics and the log within seconds.",
    ),
    def(
        "strata.tier.cache.memory-bytes",
        ConfigType::Long,
        "268435456",
        Check::AtLeast(1048576),
        "Memory tier of the remote-read block cache.",
    ),
    def(
        "strata.tier.cache.disk-bytes",
        ConfigType::Long,
        "2147483648",
        Check::AtLeast(16777216),
        "Local-disk tier of the remote-read block cache (under <data-dir>/cache); at most half of the room its file system has. Read at start-up.",
    ),
    def(
        "strata.tier.cache.block-bytes",
        ConfigType::Int,
        "4194304",
        Check::Range(4096, strata_tier::MAX_BLOCK_BYTES as i64),
        "Size of one cached block, and of one ranged GET; at most 8 MiB (the disk tier stores nothing larger).",
    ),
    def(
        "strata.tier.cache.readahead-blocks",
        ConfigType::Int,
        "4",
        Check::AtLeast(0),
        "Blocks fetched ahead of a consumer replaying from the object store.",
    ),
    def(
        "producer.id.expiration.ms",
        ConfigType::Int,
        "86400000",
        Check::AtLeast(1),
        "How long a partition remembers an idle idempotent producer's sequence numbers.",
    ),
];

/// Topic-level settings and the broker setting each one defaults to.
pub static TOPIC_CONFIGS: &[(ConfigDef, Option<&str>)] = &[
    (
        def(
            "cleanup.policy",
            ConfigType::List,
            "delete",
            Check::OneOf(&["delete"]),
            "Only delete is implemented: whole segments are deleted by retention.",
        ),
        Some("log.cleanup.policy"),
    ),
    (
        def(
            "retention.ms",
            ConfigType::Long,
            "604800000",
            Check::AtLeast(-1),
            "How long to keep a segment after its newest record; -1 keeps forever.",
        ),
        Some("log.retention.ms"),
    ),
    (
        def(
            "retention.bytes",
            ConfigType::Long,
            "-1",
            Check::AtLeast(-1),
            "Size above which a partition's oldest segments are deleted; -1 means no limit.",
        ),
        Some("log.retention.bytes"),
    ),
    (
        def(
            "segment.bytes",
            ConfigType::Int,
            "1073741824",
            Check::AtLeast(14),
            "Size at which a segment is rolled.",
        ),
        Some("log.segment.bytes"),
    ),
    (
        def(
            "segment.ms",
            ConfigType::Long,
            "604800000",
            Check::AtLeast(1),
            "Age at which a segment is rolled.",
        ),
        Some("log.roll.ms"),
    ),
    (
        def(
            "max.message.bytes",
            ConfigType::Int,
            "1048588",
            Check::AtLeast(0),
            "Largest record batch accepted.",
        ),
        Some("message.max.bytes"),
    ),
    (
        def(
            "index.interval.bytes",
            ConfigType::Int,
            "4096",
            Check::AtLeast(0),
            "Bytes of log between offset index entries.",
        ),
        Some("log.index.interval.bytes"),
    ),
    (
        def(
            "min.insync.replicas",
            ConfigType::Int,
            "1",
            Check::AtLeast(1),
            "Replicas that must have a write before acks=all succeeds.",
        ),
        Some("min.insync.replicas"),
    ),
    (
        def(
            "unclean.leader.election.enable",
            ConfigType::Boolean,
            "false",
            Check::Any,
            "Whether a replica outside the ISR may become leader (losing acknowledged records).",
        ),
        Some("unclean.leader.election.enable"),
    ),
    (
        def(
            "compression.type",
            ConfigType::String,
            "producer",
            Check::OneOf(COMPRESSION_TYPES),
            "Codec of stored batches: producer keeps what the producer sent; any other value recompresses batches that arrive in another codec.",
        ),
        Some("compression.type"),
    ),
    (
        def(
            "compression.gzip.level",
            ConfigType::Int,
            "-1",
            Check::Range(-1, 9),
            "gzip level when batches are recompressed to gzip (-1: the codec's default).",
        ),
        Some("compression.gzip.level"),
    ),
    (
        def(
            "compression.lz4.level",
            ConfigType::Int,
            "9",
            Check::Range(1, 17),
            "lz4 level when batches are recompressed to lz4.",
        ),
        Some("compression.lz4.level"),
    ),
    (
        def(
            "compression.zstd.level",
            ConfigType::Int,
            "3",
            Check::Range(-131072, 22),
            "zstd level when batches are recompressed to zstd.",
        ),
        Some("compression.zstd.level"),
    ),
    (
        def(
            "message.timestamp.type",
            ConfigType::String,
            "CreateTime",
            Check::OneOf(&["CreateTime", "LogAppendTime"]),
            "CreateTime keeps the producer's timestamps; LogAppendTime stamps each batch with the broker's time.",
        ),
        Some("log.message.timestamp.type"),
    ),
    (
        def(
            "message.timestamp.before.max.ms",
            ConfigType::Long,
            "9223372036854775807",
            Check::AtLeast(0),
            "With CreateTime, a batch with a record older than this (by the broker's clock) is refused with INVALID_TIMESTAMP.",
        ),
        Some("log.message.timestamp.before.max.ms"),
    ),
    (
        def(
            "message.timestamp.after.max.ms",
            ConfigType::Long,
            "3600000",
            Check::AtLeast(0),
            "With CreateTime, a batch with a record further than this in the future is refused with INVALID_TIMESTAMP.",
        ),
        Some("log.message.timestamp.after.max.ms"),
    ),
    (
        def(
            "message.timestamp.difference.max.ms",
            ConfigType::Long,
            "9223372036854775807",
            Check::AtLeast(0),
            "Deprecated (Kafka 3.6): a bound in both directions, applied with the two above.",
        ),
        Some("log.message.timestamp.difference.max.ms"),
    ),
    (
        def(
            "remote.log.copy.disable",
            ConfigType::Boolean,
            "false",
            Check::Any,
            "Stop uploading new segments of a tiered topic; what is in the object store stays readable.",
        ),
        None,
    ),
    (
        def(
            "remote.storage.enable",
            ConfigType::Boolean,
            "true",
            Check::Any,
            "Upload sealed segments to the object store and serve old offsets from there.",
        ),
        None,
    ),
    (
        def(
            "local.retention.ms",
            ConfigType::Long,
            "3600000",
            Check::AtLeast(-2),
            "How long uploaded segments stay on local disk too; -2 follows retention.ms, -1 keeps them.",
        ),
        Some("log.local.retention.ms"),
    ),
    (
        def(
            "local.retention.bytes",
            ConfigType::Long,
            "-2",
            Check::AtLeast(-2),
            "Local bytes above which uploaded segments are deleted locally; -2 follows retention.bytes, -1 no limit.",
        ),
        Some("log.local.retention.bytes"),
    ),
];

/// Which table of Kafka's a setting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Broker,
    Topic,
}

/// What Strata does with a setting Kafka accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Implemented: in [`BROKER_CONFIGS`] or [`TOPIC_CONFIGS`].
    Honoured,
    /// Accepted with a logged warning: it has no meaning in Strata (`why` says why).
    Ignored,
    /// Refused with `why`: accepting it would quietly drop something it asks for.
    Refused,
}

/// One of Kafka's documented settings (Kafka 3.x and 4.x), and what Strata does with it.
#[derive(Debug)]
pub struct KafkaName {
    pub scope: Scope,
    pub name: &'static str,
    /// Kafka's type name (`long`, `list`, ...).
    pub kafka_type: &'static str,
    pub support: Support,
    pub why: &'static str,
}

/// Every broker and topic setting Kafka 3.x and 4.x document, with Strata's answer to
/// each: one row per name, columns scope, name, Kafka's type, default and versions,
/// then `honoured`/`ignored`/`refused` and why.
const KAFKA_CONFIGS_TSV: &str = include_str!("../kafka-configs.tsv");

fn parse_kafka_names(text: &'static str) -> Vec<KafkaName> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&'static str> = line.split('\t').collect();
            let [scope, name, kafka_type, _default, _versions, support, why] = f[..] else {
                return None;
            };
            Some(KafkaName {
                scope: match scope {
                    "broker" => Scope::Broker,
                    "topic" => Scope::Topic,
                    _ => return None,
                },
                name,
                kafka_type,
                support: match support {
                    "honoured" => Support::Honoured,
                    "ignored" => Support::Ignored,
                    "refused" => Support::Refused,
                    _ => return None,
                },
                why,
            })
        })
        .collect()
}

/// Kafka's settings, from [`KAFKA_CONFIGS_TSV`].
pub fn kafka_names() -> &'static [KafkaName] {
    static NAMES: std::sync::LazyLock<Vec<KafkaName>> =
        std::sync::LazyLock::new(|| parse_kafka_names(KAFKA_CONFIGS_TSV));
    &NAMES
}

/// The Kafka setting `name` of `scope`, if Kafka has one.
pub fn kafka_name(scope: Scope, name: &str) -> Option<&'static KafkaName> {
    kafka_names()
        .iter()
        .find(|k| k.scope == scope && k.name == name)
}

/// Checks a setting Strata does not implement against Kafka's names: `Ok(why)` if Kafka
/// has it and it means nothing here (accept it, warn with `why`), else the error.
fn unimplemented(scope: Scope, name: &str) -> Result<&'static str, ConfigError> {
    match kafka_name(scope, name) {
        Some(k) if k.support == Support::Ignored => Ok(k.why),
        Some(k) if k.support == Support::Refused => Err(ConfigError::Refused {
            name: name.to_string(),
            reason: k.why,
        }),
        _ => Err(ConfigError::Unknown(name.to_string())),
    }
}

/// The topic setting `name` if Strata accepts it but it does nothing here.
pub fn ignored_topic_config(name: &str) -> Option<&'static KafkaName> {
    kafka_name(Scope::Topic, name).filter(|k| k.support == Support::Ignored)
}

/// Edit distance (insertions, deletions, substitutions) between two names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate closest to `name`, if it is close enough to be a likely typo (at most
/// a third of the name's length in edits).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, _)| *d <= (name.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn find_broker(name: &str) -> Option<&'static ConfigDef> {
    BROKER_CONFIGS.iter().find(|d| d.name == name)
}

pub fn find_topic(name: &str) -> Option<&'static (ConfigDef, Option<&'static str>)> {
    TOPIC_CONFIGS.iter().find(|(d, _)| d.name == name)
}

impl KafkaName {
    /// Kafka's type as DescribeConfigs codes it.
    pub fn config_type(&self) -> ConfigType {
        match self.kafka_type {
            "boolean" => ConfigType::Boolean,
            "int" => ConfigType::Int,
            "short" => ConfigType::Short,
            "long" => ConfigType::Long,
            "list" => ConfigType::List,
            _ => ConfigType::String,
        }
    }
}

impl ConfigDef {
    /// Whether the value is a secret: never shown by DescribeConfigs or logged.
    pub fn is_sensitive(&self) -> bool {
        self.name == "strata.scram.bootstrap"
            || self.name.contains("password")
            || self.name.ends_with("token")
    }

    /// Checks `value` against the type and constraint; returns it normalised.
    pub fn validate(&self, value: &str) -> Result<String, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            name: self.name.to_string(),
            value: value.to_string(),
            reason,
        };
        let v = value.trim();
        let number = match self.ty {
            ConfigType::Boolean => {
                return match v.to_ascii_lowercase().as_str() {
                    b @ ("true" | "false") => Ok(b.to_string()),
                    _ => Err(invalid("expected true or false".into())),
                };
            }
            ConfigType::Short => Some(
                v.parse::<i16>()
                    .map(i64::from)
                    .map_err(|e| invalid(e.to_string()))?,
            ),
            ConfigType::Int => Some(
                v.parse::<i32>()
                    .map(i64::from)
                    .map_err(|e| invalid(e.to_string()))?,
            ),
            ConfigType::Long => Some(v.parse::<i64>().map_err(|e| invalid(e.to_string()))?),
            ConfigType::String | ConfigType::List => None,
        };
        match (self.check, number) {
            (Check::AtLeast(min), Some(n)) if n < min => {
                Err(invalid(format!("must be at least {min}")))
            }
            (Check::Range(min, max), Some(n)) if n < min || n > max => {
                Err(invalid(format!("must be between {min} and {max}")))
            }
            (Check::OneOf(allowed), _) => {
                let items: Vec<&str> = v.split(',').map(str::trim).collect();
                match items.iter().find(|i| !allowed.contains(i)) {
                    Some(bad) => Err(invalid(format!(
                        "{bad:?} is not supported; allowed: {}",
                        allowed.join(", ")
                    ))),
                    None => Ok(items.join(",")),
                }
            }
            _ => Ok(number.map_or_else(|| v.to_string(), |n| n.to_string())),
        }
    }
}

/// Where a config value came from, with DescribeConfigs' source codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    TopicConfig = 1,
    StaticBroker = 4,
    Default = 5,
}

/// The broker-level Kafka settings in force, with which ones were set explicitly.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    explicit: BTreeMap<&'static str, String>,
    /// Kafka settings given that mean nothing here: (name, value, why).
    ignored: Vec<(String, String, &'static str)>,
}

impl BrokerConfig {
    /// Builds the broker config from `name = value` pairs (config file, environment).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut explicit = BTreeMap::new();
        let mut ignored = Vec::new();
        for (name, value) in pairs {
            match find_broker(name) {
                Some(d) => {
                    explicit.insert(d.name, d.validate(value)?);
                }
                None => {
                    let why = unimplemented(Scope::Broker, name)?;
                    ignored.push((name.to_string(), value.to_string(), why));
                }
            }
        }
        // Kafka's coarser synonyms apply when the finer setting is not given.
        let synonyms: [(&str, &[(&str, i64)]); 2] = [
            (
                "log.retention.ms",
                &[
                    ("log.retention.minutes", 60_000),
                    ("log.retention.hours", 3_600_000),
                ],
            ),
            ("log.roll.ms", &[("log.roll.hours", 3_600_000)]),
        ];
        for (ms, coarser) in synonyms {
            if explicit.contains_key(ms) {
                continue;
            }
            let derived = coarser.iter().find_map(|(name, unit)| {
                let v: i64 = explicit.get(name)?.parse().ok()?;
                Some(if v < 0 { v } else { v.saturating_mul(*unit) })
            });
            if let (Some(v), Some(d)) = (derived, find_broker(ms)) {
                explicit.insert(d.name, d.validate(&v.to_string())?);
            }
        }
        Ok(Self { explicit, ignored })
    }

    /// Kafka settings that were given but mean nothing here: (name, value, why), to be
    /// logged when the broker starts.
    pub fn ignored(&self) -> &[(String, String, &'static str)] {
        &self.ignored
    }

    /// Every declared broker setting: (definition, value, source).
    pub fn entries(&self) -> impl Iterator<Item = (&'static ConfigDef, &str, ConfigSource)> {
        BROKER_CONFIGS.iter().map(|d| {
            let (v, s) = self.value_of(d);
            (d, v, s)
        })
    }

    fn value_of(&self, d: &'static ConfigDef) -> (&str, ConfigSource) {
        match self.explicit.get(d.name) {
            Some(v) => (v.as_str(), ConfigSource::StaticBroker),
            None => (d.default, ConfigSource::Default),
        }
    }

    /// The value and source of one broker setting.
    pub fn get(&self, name: &str) -> Option<(&str, ConfigSource)> {
        // One map lookup, not one per setting before it (this runs for every topic
        // setting of every produce and fetch).
        BROKER_CONFIGS
            .iter()
            .find(|d| d.name == name)
            .map(|d| self.value_of(d))
    }

    fn number(&self, name: &str) -> i64 {
        // Values were validated on the way in, and defaults are valid by construction.
        self.get(name)
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(0)
    }

    /// A boolean setting's value.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|(v, _)| v == "true")
    }

    pub fn num_partitions(&self) -> i32 {
        self.number("num.partitions") as i32
    }

    pub fn default_replication_factor(&self) -> i16 {
        self.number("default.replication.factor") as i16
    }

    pub fn auto_create_topics(&self) -> bool {
        self.flag("auto.create.topics.enable")
    }

    pub fn socket_request_max_bytes(&self) -> usize {
        self.number("socket.request.max.bytes") as usize
    }

    /// `queued.max.request.bytes`, `None` for no limit.
    pub fn queued_max_request_bytes(&self) -> Option<usize> {
        usize::try_from(self.number("queued.max.request.bytes")).ok()
    }

    /// `sasl.enabled.mechanisms`.
    pub fn sasl_enabled_mechanisms(&self) -> Vec<strata_security::Mechanism> {
        self.text("sasl.enabled.mechanisms")
            .split(',')
            .filter_map(|m| strata_security::Mechanism::parse(m.trim()))
            .collect()
    }

    /// `connections.max.reauth.ms`, `None` when sessions do not expire.
    pub fn connections_max_reauth(&self) -> Option<std::time::Duration> {
        match self.number("connections.max.reauth.ms") {
            n if n > 0 => Some(std::time::Duration::from_millis(n as u64)),
            _ => None,
        }
    }

    /// `strata.ssl.reload-interval-ms`.
    pub fn ssl_reload_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.number("strata.ssl.reload-interval-ms").max(100) as u64
        )
    }

    /// The ACL authorizer, if `authorizer.class.name` turns it on.
    pub fn authorizer(&self) -> Option<strata_security::acl::Authorizer> {
        (!self.text("authorizer.class.name").trim().is_empty()).then(|| {
            strata_security::acl::Authorizer::new(
                self.text("super.users"),
                self.flag("allow.everyone.if.no.acl.found"),
            )
        })
    }

    /// OAUTHBEARER's token checks, if `sasl.oauthbearer.jwks.endpoint.url` is set.
    pub fn oauth(&self) -> Result<Option<strata_security::oauth::OauthSettings>, String> {
        let url = self.text("sasl.oauthbearer.jwks.endpoint.url").trim();
        if url.is_empty() {
            return Ok(None);
        }
        let issuer = self.text("sasl.oauthbearer.expected.issuer").trim();
        Ok(Some(strata_security::oauth::OauthSettings {
            jwks: strata_security::oauth::JwksSource::parse(url).map_err(|e| e.to_string())?,
            issuer: (!issuer.is_empty()).then(|| issuer.to_string()),
            audience: strata_security::list_entries(
                self.text("sasl.oauthbearer.expected.audience"),
                ',',
            )
            .map(str::to_string)
            .collect(),
            subject_claim: self.text("sasl.oauthbearer.sub.claim.name").to_string(),
            clock_skew_s: self.number("sasl.oauthbearer.clock.skew.seconds"),
        }))
    }

    /// `sasl.oauthbearer.jwks.endpoint.refresh.ms`.
    pub fn jwks_refresh(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.number("sasl.oauthbearer.jwks.endpoint.refresh.ms")
                .max(100) as u64,
        )
    }

    /// `strata.scram.bootstrap`, parsed (errors never repeat a password).
    pub fn scram_bootstrap(&self) -> Result<Vec<strata_security::scram::BootstrapUser>, String> {
        strata_security::scram::parse_bootstrap(self.text("strata.scram.bootstrap"))
    }

    /// A string setting's value.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).map_or("", |(v, _)| v)
    }

    /// `connections.max.idle.ms`, `None` for never.
    pub fn connections_max_idle(&self) -> Option<std::time::Duration> {
        u64::try_from(self.number("connections.max.idle.ms"))
            .ok()
            .map(std::time::Duration::from_millis)
    }

    pub fn request_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("strata.kafka.request-read-timeout-ms") as u64)
    }

    pub fn fetch_session_slots(&self) -> usize {
        self.number("max.incremental.fetch.session.cache.slots") as usize
    }

    pub fn fetch_max_bytes(&self) -> usize {
        self.number("fetch.max.bytes") as usize
    }

    pub fn group_min_session_timeout_ms(&self) -> i32 {
        self.number("group.min.session.timeout.ms") as i32
    }

    pub fn group_max_session_timeout_ms(&self) -> i32 {
        self.number("group.max.session.timeout.ms") as i32
    }

    pub fn group_initial_rebalance_delay_ms(&self) -> i32 {
        self.number("group.initial.rebalance.delay.ms") as i32
    }

    pub fn offsets_retention_ms(&self) -> i64 {
        self.number("offsets.retention.minutes") * 60_000
    }

    pub fn offsets_retention_check_interval_ms(&self) -> u64 {
        self.number("offsets.retention.check.interval.ms") as u64
    }

    pub fn offset_metadata_max_bytes(&self) -> usize {
        self.number("offset.metadata.max.bytes") as usize
    }

    pub fn max_unuploaded_bytes(&self) -> u64 {
        self.number("strata.wal.max-unuploaded-bytes").max(1) as u64
    }

    pub fn scrub_bytes_per_second(&self) -> u64 {
        self.number("strata.log.scrub-bytes-per-second").max(0) as u64
    }

    /// `strata.wal.disk-reserve-bytes` for a file system of `fs_size` bytes.
    pub fn disk_reserve_bytes(&self, fs_size: u64) -> u64 {
        match self.number("strata.wal.disk-reserve-bytes") {
            -1 => (fs_size / 10).min(1 << 30),
            n => n.max(0) as u64,
        }
    }

    pub fn wal_cache_bytes(&self) -> u64 {
        self.number("strata.wal.cache-bytes").max(0) as u64
    }

    pub fn upload_concurrency(&self) -> usize {
        self.number("strata.tier.upload-concurrency").max(1) as usize
    }

    pub fn multipart_part_bytes(&self) -> usize {
        self.number("strata.tier.multipart-part-bytes") as usize
    }

    pub fn gc_interval_ms(&self) -> u64 {
        self.number("strata.tier.gc-interval-ms") as u64
    }

    pub fn gc_grace_ms(&self) -> i64 {
        self.number("strata.tier.gc-grace-ms")
    }

    pub fn remote_fetch_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("strata.tier.remote-fetch-timeout-ms") as u64)
    }

    pub fn meta_write_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("strata.meta.write-timeout-ms") as u64)
    }

    pub fn meta_snapshot_every(&self) -> u64 {
        self.number("strata.meta.snapshot-every") as u64
    }

    pub fn tier_request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("strata.tier.request-timeout-ms") as u64)
    }

    pub fn cache_memory_bytes(&self) -> usize {
        self.number("strata.tier.cache.memory-bytes") as usize
    }

    pub fn cache_disk_bytes(&self) -> usize {
        self.number("strata.tier.cache.disk-bytes") as usize
    }

    pub fn cache_block_bytes(&self) -> u64 {
        self.number("strata.tier.cache.block-bytes") as u64
    }

    pub fn cache_readahead_blocks(&self) -> u64 {
        self.number("strata.tier.cache.readahead-blocks") as u64
    }

    pub fn unclean_leader_election(&self) -> bool {
        self.flag("unclean.leader.election.enable")
    }

    pub fn replica_lag_max(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("replica.lag.time.max.ms") as u64)
    }

    pub fn replica_fetch_bytes(&self) -> (i32, i32) {
        (
            self.number("replica.fetch.max.bytes") as i32,
            self.number("replica.fetch.response.max.bytes") as i32,
        )
    }

    pub fn replica_fetch_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("replica.fetch.wait.max.ms") as u64)
    }

    /// Whether consumers are sent to an in-sync replica in their rack (KIP-392).
    pub fn rack_aware_fetch(&self) -> bool {
        self.get("replica.selector.class")
            .is_some_and(|(v, _)| !v.is_empty())
    }

    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask.
    pub fn transaction_max_timeout_ms(&self) -> i32 {
        i32::try_from(self.number("transaction.max.timeout.ms")).unwrap_or(i32::MAX)
    }

    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often the
    /// coordinator looks for transactions to abort or finish.
    pub fn transaction_check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.number("transaction.abort.timed.out.transaction.cleanup.interval.ms") as u64,
        )
    }

    /// `transactional.id.expiration.ms`: how long an idle transactional id is kept.
    pub fn transactional_id_expiration_ms(&self) -> i64 {
        self.number("transactional.id.expiration.ms")
    }

    /// `transaction.remove.expired.transaction.cleanup.interval.ms`.
    pub fn transactional_id_expiry_interval_ms(&self) -> i64 {
        self.number("transaction.remove.expired.transaction.cleanup.interval.ms")
    }

    pub fn broker_session_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("broker.session.timeout.ms") as u64)
    }

    pub fn broker_heartbeat_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.number("broker.heartbeat.interval.ms") as u64)
    }

    pub fn auto_leader_rebalance(&self) -> bool {
        self.flag("auto.leader.rebalance.enable")
    }

    pub fn leader_imbalance_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.number("leader.imbalance.check.interval.seconds") as u64)
    }

    pub fn controlled_shutdown(&self) -> bool {
        self.flag("controlled.shutdown.enable")
    }

    pub fn delete_topic_enable(&self) -> bool {
        self.flag("delete.topic.enable")
    }

    pub fn group_max_size(&self) -> usize {
        self.number("group.max.size").max(1) as usize
    }

    pub fn producer_id_expiration_ms(&self) -> i64 {
        self.number("producer.id.expiration.ms")
    }

    pub fn retention_check_interval_ms(&self) -> u64 {
        self.number("log.retention.check.interval.ms") as u64
    }
}

/// Validates a topic's config overrides (CreateTopics, and later AlterConfigs).
pub fn validate_topic_configs(
    configs: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    configs
        .iter()
        .map(|(name, value)| match find_topic(name) {
            Some((d, _)) => Ok((name.clone(), d.validate(value)?)),
            None => unimplemented(Scope::Topic, name).map(|_| (name.clone(), value.clone())),
        })
        .collect()
}

/// A topic's effective settings: its overrides over the broker's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    values: BTreeMap<&'static str, (String, ConfigSource)>,
}

impl TopicConfig {
    pub fn resolve(overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> Self {
        let values = TOPIC_CONFIGS
            .iter()
            .map(|(d, synonym)| {
                let value = match overrides.get(d.name) {
                    Some(v) => (v.clone(), ConfigSource::TopicConfig),
                    None => synonym
                        .and_then(|name| broker.get(name))
                        .map_or((d.default.to_string(), ConfigSource::Default), |(v, s)| {
                            (v.to_string(), s)
                        }),
                };
                (d.name, value)
            })
            .collect();
        Self { values }
    }

    /// (definition, broker synonym, value, source) of every topic setting.
    pub fn entries(
        &self,
    ) -> impl Iterator<Item = (&'static ConfigDef, Option<&'static str>, &str, ConfigSource)> {
        TOPIC_CONFIGS.iter().filter_map(|(d, synonym)| {
            self.values
                .get(d.name)
                .map(|(v, s)| (d, *synonym, v.as_str(), *s))
        })
    }

    fn number(&self, name: &str) -> i64 {
        self.values
            .get(name)
            .and_then(|(v, _)| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn retention_ms(&self) -> i64 {
        self.number("retention.ms")
    }

    pub fn retention_bytes(&self) -> i64 {
        self.number("retention.bytes")
    }

    pub fn max_message_bytes(&self) -> usize {
        self.number("max.message.bytes").max(0) as usize
    }

    /// Whether sealed segments go to the object store.
    pub fn remote_storage(&self) -> bool {
        self.values
            .get("remote.storage.enable")
            .is_some_and(|(v, _)| v == "true")
    }

    /// `local.retention.ms` with -2 resolved to `retention.ms`.
    pub fn local_retention_ms(&self) -> i64 {
        match self.number("local.retention.ms") {
            -2 => self.retention_ms(),
            v => v,
        }
    }

    /// `local.retention.bytes` with -2 resolved to `retention.bytes`.
    pub fn local_retention_bytes(&self) -> i64 {
        match self.number("local.retention.bytes") {
            -2 => self.retention_bytes(),
            v => v,
        }
    }

    fn text(&self, name: &str) -> &str {
        self.values.get(name).map_or("", |(v, _)| v.as_str())
    }

    /// The codec batches are stored in: `None` keeps what the producer sent, else the
    /// codec and its level (`None`: the codec's default).
    pub fn compression(&self) -> Option<(strata_protocol::Compression, Option<i32>)> {
        use strata_protocol::Compression;
        let codec = Compression::from_name(self.text("compression.type"))?;
        let level = match codec {
            Compression::Gzip => Some(self.number("compression.gzip.level")).filter(|l| *l > 0),
            Compression::Lz4 => Some(self.number("compression.lz4.level")),
            Compression::Zstd => Some(self.number("compression.zstd.level")),
            Compression::None | Compression::Snappy => None,
        };
        Some((codec, level.map(|l| l as i32)))
    }

    /// Whether batches are stamped with the broker's time (`LogAppendTime`).
    pub fn log_append_time(&self) -> bool {
        self.text("message.timestamp.type") == "LogAppendTime"
    }

    /// How far (ms) a record's timestamp may lie before and after the broker's clock.
    pub fn timestamp_bounds(&self) -> (i64, i64) {
        let difference = self.number("message.timestamp.difference.max.ms");
        (
            self.number("message.timestamp.before.max.ms")
                .min(difference),
            self.number("message.timestamp.after.max.ms")
                .min(difference),
        )
    }

    /// Whether new segments are uploaded (a tiered topic with remote.log.copy.disable
    /// off).
    pub fn uploads(&self) -> bool {
        self.remote_storage() && self.text("remote.log.copy.disable") != "true"
    }

    pub fn min_insync_replicas(&self) -> usize {
        self.number("min.insync.replicas").max(1) as usize
    }

    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.number("segment.bytes").max(14) as u64,
            segment_ms: self.number("segment.ms").max(1),
            index_interval_bytes: self.number("index.interval.bytes").max(0) as u64,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_values() {
        for d in BROKER_CONFIGS
            .iter()
            .chain(TOPIC_CONFIGS.iter().map(|(d, _)| d))
        {
            assert_eq!(d.validate(d.default).unwrap(), d.default, "{}", d.name);
        }
        for (d, synonym) in TOPIC_CONFIGS {
            let Some(synonym) = synonym else { continue };
            let b = find_broker(synonym).unwrap();
            assert_eq!(b.default, d.default, "{} and {synonym} agree", d.name);
        }
    }

    #[test]
    fn every_setting_is_documented() {
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ))
        .unwrap();
        for name in BROKER_CONFIGS
            .iter()
            .chain(TOPIC_CONFIGS.iter().map(|(d, _)| d))
            .map(|d| d.name)
        {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is missing from docs/configuration.md"
            );
        }
    }

    #[test]
    fn cache_blocks_the_disk_tier_cannot_store_are_refused() {
        let too_big = (strata_tier::MAX_BLOCK_BYTES + 1).to_string();
        let e = BrokerConfig::from_pairs([("strata.tier.cache.block-bytes", too_big.as_str())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be between 4096 and 8388608"), "{e}");
        let c = BrokerConfig::from_pairs([("strata.tier.cache.block-bytes", "8388608")]).unwrap();
        assert_eq!(c.cache_block_bytes(), strata_tier::MAX_BLOCK_BYTES);
    }

    #[test]
    fn broker_config_rejects_unknown_and_invalid() {
        assert_eq!(
            BrokerConfig::from_pairs([("num.partitionz", "3")]).unwrap_err(),
            ConfigError::Unknown("num.partitionz".into())
        );
        assert!(BrokerConfig::from_pairs([("num.partitions", "0")]).is_err());
        assert!(BrokerConfig::from_pairs([("auto.create.topics.enable", "yes")]).is_err());
        let c = BrokerConfig::from_pairs([
            ("num.partitions", "3"),
            ("auto.create.topics.enable", "FALSE"),
        ])
        .unwrap();
        assert_eq!(c.num_partitions(), 3);
        assert!(!c.auto_create_topics());
        assert_eq!(
            c.get("num.partitions"),
            Some(("3", ConfigSource::StaticBroker))
        );
        assert_eq!(
            c.get("message.max.bytes"),
            Some(("1048588", ConfigSource::Default))
        );
    }

    #[test]
    fn topic_config_resolves_overrides_then_broker_then_default() {
        let broker = BrokerConfig::from_pairs([("log.retention.ms", "1000")]).unwrap();
        let mut o = BTreeMap::new();
        o.insert("segment.bytes".to_string(), "4096".to_string());
        let t = TopicConfig::resolve(&o, &broker);
        assert_eq!(t.retention_ms(), 1000);
        assert_eq!(t.log_config().segment_bytes, 4096);
        assert_eq!(t.retention_bytes(), -1);
        let sources: BTreeMap<_, _> = t.entries().map(|(d, _, _, s)| (d.name, s)).collect();
        assert_eq!(sources["segment.bytes"], ConfigSource::TopicConfig);
        assert_eq!(sources["retention.ms"], ConfigSource::StaticBroker);
        assert_eq!(sources["retention.bytes"], ConfigSource::Default);
    }

    #[test]
    fn every_kafka_setting_has_an_answer() {
        let names = kafka_names();
        let rows = KAFKA_CONFIGS_TSV.lines().skip(1).count();
        assert_eq!(names.len(), rows, "every row of kafka-configs.tsv parses");
        assert!(
            rows > 350,
            "Kafka 3.x and 4.x document more than 350 settings"
        );
        let mut seen = std::collections::BTreeSet::new();
        for k in names {
            assert!(seen.insert((k.scope as u8, k.name)), "{} twice", k.name);
            let implemented = match k.scope {
                Scope::Broker => find_broker(k.name).is_some(),
                Scope::Topic => find_topic(k.name).is_some(),
            };
            assert_eq!(
                implemented,
                k.support == Support::Honoured,
                "{}: honoured in kafka-configs.tsv exactly when implemented",
                k.name
            );
            if k.support != Support::Honoured {
                assert!(k.why.len() > 20, "{} says why", k.name);
            }
        }
        // Every Kafka name Strata implements is in the table, so the table is complete
        // where it matters; Strata's own settings start with "strata.".
        for d in BROKER_CONFIGS
            .iter()
            .filter(|d| !d.name.starts_with("strata."))
        {
            assert!(
                kafka_name(Scope::Broker, d.name).is_some(),
                "{} is Kafka's",
                d.name
            );
        }
        for (d, _) in TOPIC_CONFIGS {
            assert!(
                kafka_name(Scope::Topic, d.name).is_some(),
                "{} is Kafka's",
                d.name
            );
        }
    }

    #[test]
    fn kafka_settings_without_meaning_are_accepted_and_the_rest_refused_with_a_reason() {
        let c = BrokerConfig::from_pairs([
            ("num.network.threads", "3"),
            ("transaction.state.log.replication.factor", "1"),
            ("log.retention.hours", "2"),
        ])
        .unwrap();
        let ignored: Vec<&str> = c.ignored().iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            ignored,
            [
                "num.network.threads",
                "transaction.state.log.replication.factor"
            ]
        );
        assert_eq!(c.get("log.retention.ms").unwrap().0, "7200000");
        let e = BrokerConfig::from_pairs([("zookeeper.connect", "zk:2181")]).unwrap_err();
        assert!(
            e.to_string().contains("ZooKeeper") && e.to_string().contains("zookeeper.connect"),
            "{e}"
        );
        // The finer setting wins over its coarser synonyms, as in Kafka.
        let c = BrokerConfig::from_pairs([
            ("log.retention.hours", "2"),
            ("log.retention.minutes", "3"),
        ])
        .unwrap();
        assert_eq!(c.get("log.retention.ms").unwrap().0, "180000");
        let c = BrokerConfig::from_pairs([("log.retention.hours", "-1"), ("log.roll.hours", "1")])
            .unwrap();
        assert_eq!(c.get("log.retention.ms").unwrap().0, "-1");
        assert_eq!(c.get("log.roll.ms").unwrap().0, "3600000");
        // Topic settings: message.format.version is accepted (and stored), flush.ms too.
        let mut o = BTreeMap::new();
        o.insert("message.format.version".to_string(), "2.8".to_string());
        o.insert("flush.ms".to_string(), "1000".to_string());
        o.insert("compression.type".to_string(), "zstd".to_string());
        assert_eq!(validate_topic_configs(&o).unwrap(), o);
        assert!(ignored_topic_config("message.format.version").is_some());
        assert!(ignored_topic_config("compression.type").is_none());
    }

    #[test]
    fn topic_codec_timestamps_and_uploads_resolve_from_broker_defaults() {
        let broker = BrokerConfig::from_pairs([
            ("compression.type", "lz4"),
            ("compression.lz4.level", "4"),
            ("log.message.timestamp.type", "LogAppendTime"),
        ])
        .unwrap();
        let t = TopicConfig::resolve(&BTreeMap::new(), &broker);
        assert_eq!(
            t.compression(),
            Some((strata_protocol::Compression::Lz4, Some(4)))
        );
        assert!(t.log_append_time());
        let mut o = BTreeMap::new();
        o.insert("compression.type".to_string(), "producer".to_string());
        o.insert(
            "message.timestamp.difference.max.ms".to_string(),
            "5000".to_string(),
        );
        o.insert("remote.log.copy.disable".to_string(), "true".to_string());
        let t = TopicConfig::resolve(&o, &BrokerConfig::default());
        assert_eq!(t.compression(), None);
        assert_eq!(t.timestamp_bounds(), (5000, 5000));
        assert!(t.remote_storage() && !t.uploads());
        let t = TopicConfig::resolve(&BTreeMap::new(), &BrokerConfig::default());
        assert_eq!(
            t.timestamp_bounds(),
            (i64::MAX, 3_600_000),
            "Kafka 4's defaults"
        );
    }

    #[test]
    fn topic_config_validation_names_the_problem() {
        let mut o = BTreeMap::new();
        o.insert("cleanup.policy".to_string(), "compact".to_string());
        assert!(
            matches!(validate_topic_configs(&o), Err(ConfigError::Invalid { name, .. }) if name == "cleanup.policy")
        );
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "-2".to_string());
        assert!(validate_topic_configs(&o).is_err());
        let mut o = BTreeMap::new();
        o.insert("flush.msx".to_string(), "1".to_string());
        assert_eq!(
            validate_topic_configs(&o),
            Err(ConfigError::Unknown("flush.msx".into()))
        );
    }
}
