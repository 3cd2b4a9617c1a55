//! Fetch: whole stored batches, long-polling until `min_bytes` are ready or `max_wait_ms`
//! passes. Records are never decoded: a fetch is a set of slices of segment files.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::select_all;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId, TopicName};
use strata_log::{LogError, Partition, PartitionKey, Upto};
use strata_protocol::batch::HeaderIter;
use strata_protocol::vectored::FileRecords;
use tokio::time::Instant;
use tracing::{Instrument, warn};
use uuid::Uuid;

use crate::broker::Broker;
use crate::errors;
use crate::fetch_sessions::Begin;

/// One requested partition, resolved once per request.
struct Target {
    topic: usize,
    partition: i32,
    key: PartitionKey,
    offset: i64,
    max_bytes: usize,
    log: Result<Arc<Partition>, ResponseError>,
    /// The in-sync replica a consumer should fetch this partition from instead (KIP-392).
    preferred: Option<i32>,
}

/// What one read pass found for a partition.
enum Found {
    Data(strata_log::ReadResult),
    Error(ResponseError),
    /// The offset is only in the object store.
    Remote(strata_log::Offsets),
}

/// A partition to read: its log, where it lives, and the request's offset and limit.
#[derive(Clone)]
struct Readable {
    log: Arc<Partition>,
    key: PartitionKey,
    offset: i64,
    max_bytes: usize,
    /// A follower copying the log (reads up to the durable end, not the high watermark).
    replica: bool,
    /// A read_committed consumer (reads up to the last stable offset).
    committed: bool,
    /// Batches may be left in their segment files, for `sendfile` (a plaintext
    /// connection).
    files: bool,
}

/// The broker that sent a replica fetch, if this is one.
fn replica_of(req: &FetchRequest, version: i16) -> Option<i32> {
    let id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    (id >= 0).then_some(id)
}

fn resolve(
    broker: &Broker,
    req: &FetchRequest,
    version: i16,
) -> (Vec<(TopicName, Uuid)>, Vec<Target>) {
    let replica = replica_of(req, version);
    let consumer_rack = (version >= 11 && replica.is_none() && !req.rack_id.is_empty())
        .then(|| req.rack_id.to_string());
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut targets = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let (meta, missing) = if version >= 13 {
            (
                broker.topic_by_id(t.topic_id),
                ResponseError::UnknownTopicId,
            )
        } else {
            (
                broker.topic(&t.topic),
                ResponseError::UnknownTopicOrPartition,
            )
        };
        topics.push((t.topic.clone(), t.topic_id));
        for p in &t.partitions {
            let key = PartitionKey {
                topic_id: meta.as_ref().map_or(Uuid::nil(), |m| m.id),
                partition: p.partition,
            };
            let placement = meta.as_ref().and_then(|topic| {
                usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| topic.partitions.get(i))
            });
            let log = match (&meta, replica) {
                (None, _) => Err(missing),
                // A follower copies from the leader only, at the leader's epoch.
                (Some(topic), Some(follower)) => broker
                    .partition_log(topic, p.partition)
                    .map_err(|e| e.code)
                    .and_then(|log| {
                        broker
                            .replication
                            .replica_fetched(key, follower, p.fetch_offset, p.current_leader_epoch)
                            .map_err(|r| match r {
                                strata_replication::Refusal::NotLeader => {
                                    ResponseError::NotLeaderOrFollower
                                }
                                strata_replication::Refusal::FencedLeaderEpoch => {
                                    ResponseError::FencedLeaderEpoch
                                }
                                strata_replication::Refusal::UnknownLeaderEpoch => {
                                    ResponseError::UnknownLeaderEpoch
                                }
                            })
                            .map(|()| log)
                    }),
                // Consumers read from the leader, or (Fetch v11+, KIP-392) any replica,
                // up to its high watermark.
                (Some(topic), None) => {
                    let log = if version >= 11 {
                        broker.replica_log(topic, p.partition)
                    } else {
                        broker.partition_log(topic, p.partition)
                    };
                    log.map_err(|e| e.code).and_then(|log| {
                        let ours = placement.map_or(0, |m| m.leader_epoch);
                        match p.current_leader_epoch {
                            e if e < 0 || e == ours => Ok(log),
                            e if e < ours => Err(ResponseError::FencedLeaderEpoch),
                            _ => Err(ResponseError::UnknownLeaderEpoch),
                        }
                    })
                }
            };
            let preferred = match (&consumer_rack, placement) {
                (Some(rack), Some(pm)) if pm.leader == broker.node_id => {
                    broker.preferred_replica(pm, rack)
                }
                _ => None,
            };
            targets.push(Target {
                topic: ti,
                partition: p.partition,
                key,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                log,
                preferred,
            });
        }
    }
    (topics, targets)
}

/// Reads every target once, within the request's total byte budget. The first
/// partition with data may exceed the budget by one batch so consumers make progress.
fn read_all(targets: &[Readable], max_bytes: usize) -> (Vec<Found>, usize) {
    let mut total = 0usize;
    let mut found = Vec::with_capacity(targets.len());
    for t in targets {
        let budget = t.max_bytes.min(max_bytes.saturating_sub(total));
        let read = if t.replica {
            t.log
                .read_with(t.offset, budget, true, Upto::Durable, t.files)
        } else {
            let upto = match t.committed {
                true => Upto::LastStable,
                false => Upto::HighWatermark,
            };
            t.log.read_with(t.offset, budget, total == 0, upto, t.files)
        };
        match read {
            Ok(r) => {
                total += r.size();
                found.push(Found::Data(r));
            }
            Err(LogError::NotLocal { .. }) => found.push(Found::Remote(t.log.offsets())),
            Err(e) => found.push(Found::Error(errors::log_error(&e))),
        }
    }
    (found, total)
}

/// Serves the partitions whose offsets are only in the object store, concurrently, then
/// keeps their data in request order within the response's byte budget.
async fn read_remote_all(
    broker: &Broker,
    targets: &[Readable],
    found: &mut [Found],
    total: &mut usize,
    max_bytes: usize,
) {
    let first_empty = *total == 0;
    let remaining = max_bytes.saturating_sub(*total).max(1);
    let timeout = broker.config.remote_fetch_timeout();
    let reads = found
        .iter()
        .zip(targets)
        .enumerate()
        .filter_map(|(i, (f, t))| match f {
            Found::Remote(_) => Some(async move {
                let budget = t.max_bytes.min(remaining);
                let span = broker.tier.tier_span("remote.read", t.key, t.offset);
                let read = broker
                    .tier
                    .read_remote(
                        t.key.topic_id,
                        t.key.partition,
                        t.offset,
                        budget,
                        first_empty,
                    )
                    .instrument(span.clone());
                // The cache's GETs run as tasks of their own: on a timeout they go on, and
                // the client's retry finds their blocks.
                let result = tokio::time::timeout(timeout, read)
                    .await
                    .unwrap_or_else(|_| {
                        warn!(
                            topic_id = %t.key.topic_id,
                            partition = t.key.partition,
                            offset = t.offset,
                            timeout_ms = timeout.as_millis() as u64,
                            "remote read timed out"
                        );
                        Err(ResponseError::KafkaStorageError)
                    });
                if let Ok(records) = &result {
                    span.record("strata.bytes", records.len() as i64);
                }
                (i, result)
            }),
            _ => None,
        });
    let results = futures::future::join_all(reads).await;
    for (i, result) in results {
        let Found::Remote(offsets) = found[i] else {
            continue;
        };
        found[i] = match result {
            Ok(records) if *total > 0 && *total + records.len() > max_bytes => Found::Data(
                strata_log::ReadResult::in_memory(Bytes::new(), offsets, false),
            ),
            Ok(records) => {
                // Tiered data lies below the last stable offset but for a transaction
                // left open since: read_committed stops there too.
                let records = if targets[i].committed {
                    below(records, offsets.last_stable)
                } else {
                    records
                };
                *total += records.len();
                Found::Data(strata_log::ReadResult::in_memory(records, offsets, false))
            }
            Err(code) => Found::Error(code),
        };
    }
}

/// The whole batches at the start of `records` that end at or before `end`.
fn below(records: Bytes, end: i64) -> Bytes {
    let keep = HeaderIter::new(&records)
        .take_while(|(_, h)| h.next_offset() <= end)
        .last()
        .map_or(0, |(at, h)| at + h.total_len());
    records.slice(..keep)
}

/// Serves a Fetch: a full fetch (which may open a fetch session, KIP-227), or an
/// incremental one of a session, answered with only the partitions that have news.
/// With `files` (a plaintext connection), batches may stay in their segment files: the
/// response's records are then markers of the returned [`FileRecords`].
pub(super) async fn handle(
    broker: &Arc<Broker>,
    req: FetchRequest,
    version: i16,
    span: &tracing::Span,
    files: bool,
) -> (FetchResponse, FileRecords) {
    let sessions = &broker.fetch_sessions;
    let now = broker.clock.now_ms();
    let slots = broker.config.fetch_session_slots();
    let begin = match sessions.begin(&req, version, now) {
        Ok(b) => b,
        Err(code) => {
            let resp = FetchResponse::default().with_error_code(code.code());
            return (resp, FileRecords::default());
        }
    };
    match begin {
        Begin::Sessionless => {
            serve(broker, &req, version, files)
                .instrument(span.clone())
                .await
        }
        Begin::New => {
            let (resp, in_files) = serve(broker, &req, version, files)
                .instrument(span.clone())
                .await;
            let wants = slots > 0 && resp.error_code == 0;
            let id = if wants {
                let follower = replica_of(&req, version).is_some();
                sessions.create(&req, &resp, follower, slots, now)
            } else {
                0
            };
            (resp.with_session_id(id), in_files)
        }
        Begin::Incremental { id, request } => {
            let (resp, in_files) = serve(broker, &request, version, files)
                .instrument(span.clone())
                .await;
            (sessions.filter(id, resp), in_files)
        }
    }
}

/// Answers a full fetch of the partitions `req` names.
async fn serve(
    broker: &Arc<Broker>,
    req: &FetchRequest,
    version: i16,
    files: bool,
) -> (FetchResponse, FileRecords) {
    let (topics, targets) = resolve(broker, req, version);
    let replica = replica_of(req, version).is_some();
    let committed = !replica && req.isolation_level == 1;
    // A partition whose consumer is sent to another replica is answered without data.
    let readable: Vec<Readable> = targets
        .iter()
        .filter(|t| t.preferred.is_none())
        .filter_map(|t| {
            t.log.as_ref().ok().map(|l| Readable {
                log: l.clone(),
                key: t.key,
                offset: t.offset,
                max_bytes: t.max_bytes,
                replica,
                committed,
                files,
            })
        })
        .collect();
    let has_resolve_error = targets.iter().any(|t| t.log.is_err());
    let max_bytes = (req.max_bytes.max(0) as usize).min(broker.config.fetch_max_bytes());
    let min_bytes = req.min_bytes.max(0) as usize;
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let found = loop {
        // Subscribe before reading so that an append between the read and the wait
        // still wakes us.
        let mut watchers: Vec<_> = readable
            .iter()
            .map(|r| {
                if r.replica {
                    r.log.subscribe_durable()
                } else {
                    r.log.subscribe()
                }
            })
            .collect();
        // Consumers at the tail are answered from memory on this thread; anything that
        // may read a segment file goes to a blocking thread.
        let from_memory = |r: &Readable| match r.replica {
            true => r.log.replica_reads_from_memory(r.offset),
            false => r.log.reads_from_memory(r.offset),
        };
        let (mut found, mut total) = if readable.iter().all(from_memory) {
            read_all(&readable, max_bytes)
        } else {
            let work = readable.clone();
            match tokio::task::spawn_blocking(move || read_all(&work, max_bytes)).await {
                Ok(x) => x,
                Err(_) => (
                    readable
                        .iter()
                        .map(|_| Found::Error(ResponseError::KafkaStorageError))
                        .collect(),
                    0,
                ),
            }
        };
        let in_memory: usize = found
            .iter()
            .map(|f| match f {
                Found::Data(r) if r.from_memory => r.size(),
                _ => 0,
            })
            .sum();
        let read_bytes = &broker.metrics.tier.read_bytes_total;
        read_bytes
            .with_label_values(&["memory"])
            .inc_by(in_memory as u64);
        read_bytes
            .with_label_values(&["local"])
            .inc_by((total - in_memory) as u64);
        if found.iter().any(|f| matches!(f, Found::Remote(_))) {
            read_remote_all(broker, &readable, &mut found, &mut total, max_bytes).await;
        }
        let any_error = has_resolve_error || found.iter().any(|f| matches!(f, Found::Error(_)));
        if total >= min_bytes || any_error || readable.is_empty() || Instant::now() >= deadline {
            break found;
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = changed => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = broker.shutdown.cancelled() => {}
        }
        if broker.shutdown.is_cancelled() {
            break found;
        }
    };
    build(broker, topics, targets, found, req.isolation_level)
}

/// The aborted transactions a read_committed consumer needs to skip in what it read from
/// `offset` up to `end` (Kafka lists those that overlap the fetched range): those the log knows,
/// and those the manifest records for uploaded segments (which this broker may never have
/// held, or whose local copies and snapshots are gone).
fn aborted_in(
    broker: &Broker,
    key: PartitionKey,
    log: &Partition,
    offset: i64,
    end: Option<i64>,
) -> Vec<AbortedTransaction> {
    let Some(end) = end else {
        return Vec::new();
    };
    let mut found: Vec<(i64, i64)> = log
        .aborted_transactions(offset, end)
        .into_iter()
        .map(|a| (a.producer_id, a.first_offset))
        .collect();
    if offset < log.offsets().remote_end {
        found.extend(broker.tier.remote_aborted(key, offset, end));
        found.sort_unstable();
        found.dedup();
    }
    found
        .into_iter()
        .map(|(producer_id, first_offset)| {
            AbortedTransaction::default()
                .with_producer_id(ProducerId(producer_id))
                .with_first_offset(first_offset)
        })
        .collect()
}

fn build(
    broker: &Broker,
    topics: Vec<(TopicName, Uuid)>,
    targets: Vec<Target>,
    found: Vec<Found>,
    isolation_level: i8,
) -> (FetchResponse, FileRecords) {
    let mut in_files = FileRecords::default();
    let mut responses: Vec<FetchableTopicResponse> = topics
        .into_iter()
        .map(|(name, id)| {
            FetchableTopicResponse::default()
                .with_topic(name)
                .with_topic_id(id)
        })
        .collect();
    let mut found = found.into_iter();
    let committed = isolation_level == 1;
    for t in targets {
        let part = PartitionData::default()
            .with_partition_index(t.partition)
            .with_aborted_transactions(committed.then(Vec::new));
        if let (Some(preferred), Ok(log)) = (t.preferred, &t.log) {
            let o = log.offsets();
            if let Some(topic) = responses.get_mut(t.topic) {
                topic.partitions.push(
                    part.with_preferred_read_replica(BrokerId(preferred))
                        .with_high_watermark(o.high_watermark)
                        .with_last_stable_offset(o.last_stable)
                        .with_log_start_offset(o.log_start)
                        .with_records(Some(Bytes::new())),
                );
            }
            continue;
        }
        let outcome = match &t.log {
            Err(code) => Found::Error(*code),
            Ok(_) => found
                .next()
                .unwrap_or(Found::Error(ResponseError::KafkaStorageError)),
        };
        // A replica fetching out of range needs the log start to start again from it.
        let log_start = match (&outcome, &t.log) {
            (Found::Error(ResponseError::OffsetOutOfRange), Ok(log)) => log.offsets().log_start,
            _ => -1,
        };
        let part = match outcome {
            Found::Data(r) => {
                let m = &broker.metrics.kafka;
                m.fetch_records_bytes_total.inc_by(r.size() as u64);
                let part = match &t.log {
                    Ok(log) if committed => {
                        let aborted = aborted_in(broker, t.key, log, t.offset, r.next_offset());
                        part.with_aborted_transactions(Some(aborted))
                    }
                    _ => part,
                };
                let records = if r.files.is_empty() {
                    r.records
                } else {
                    m.fetch_sendfile_bytes_total.inc_by(r.size() as u64);
                    in_files.add(r.files)
                };
                part.with_high_watermark(r.offsets.high_watermark)
                    .with_last_stable_offset(r.offsets.last_stable)
                    .with_log_start_offset(r.offsets.log_start)
                    .with_records(Some(records))
            }
            Found::Remote(_) => part.with_error_code(ResponseError::KafkaStorageError.code()),
            Found::Error(code) => part
                .with_error_code(code.code())
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(log_start)
                .with_records(Some(Bytes::new())),
        };
        if let Some(topic) = responses.get_mut(t.topic) {
            topic.partitions.push(part);
        }
    }
    (FetchResponse::default().with_responses(responses), in_files)
}
