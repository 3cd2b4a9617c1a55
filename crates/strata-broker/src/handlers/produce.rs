//! Produce: validate each partition's batch, append it, and answer once it is durable.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{self, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use strata_log::{Partition, PartitionKey};
use strata_meta::{TopicMeta, TxnState};
use strata_protocol::batch::{self, BatchHeader};
use tracing::warn;

use crate::broker::{Broker, LEASE_LAPSED, too_few_in_sync};
use crate::config::TopicConfig;
use crate::errors;

/// A partition-level failure: the code and a message for the client (v8+) and the log.
#[derive(Clone)]
struct Failure(ResponseError, String);

/// An append that must become durable (for acks=all: on every in-sync replica) before
/// the partition is acknowledged.
struct Pending {
    topic: usize,
    partition: usize,
    log: Arc<Partition>,
    end: i64,
    /// The leader epoch the batch was appended in.
    leader_epoch: i32,
    /// For acks=all: the ISR size the topic needs (`min.insync.replicas`), checked again
    /// once the write is replicated.
    min_isr: Option<(Arc<Broker>, PartitionKey, usize)>,
}

/// Waits until `p` may be acknowledged: durable here, and for acks=all on every in-sync
/// replica, which must still number `min.insync.replicas`.
async fn acknowledged(p: Pending) -> Result<(), Failure> {
    p.log
        .wait_durable(p.end)
        .await
        .map_err(|e| Failure(errors::log_error(&e), e.to_string()))?;
    let Some((broker, key, min)) = p.min_isr else {
        return Ok(());
    };
    // A broker cut off from the controller cannot have its ISR shrunk: once its lease
    // lapses the write may never be acknowledged here, and the client should find the
    // partition's new leader instead of waiting out its timeout.
    tokio::select! {
        replicated = p.log.wait_high_watermark(p.end, p.leader_epoch) => {
            replicated.map_err(|e| Failure(errors::log_error(&e), e.to_string()))?;
        }
        () = broker.lease.fenced(&broker.meta, broker.node_id) => {
            return Err(Failure(ResponseError::NotLeaderOrFollower, LEASE_LAPSED.into()));
        }
    }
    let isr = broker.replication.isr(key).map_or(1, |isr| isr.len());
    if isr < min {
        return Err(Failure(
            ResponseError::NotEnoughReplicasAfterAppend,
            format!(
                "written, but the ISR shrank to {isr} replica(s) below min.insync.replicas {min}"
            ),
        ));
    }
    Ok(())
}

fn append(
    broker: &Broker,
    topic: Option<&TopicMeta>,
    data: &PartitionProduceData,
    acks: i16,
    txn_failure: Option<&Failure>,
) -> Result<Appended, Failure> {
    if !matches!(acks, -1..=1) {
        return Err(Failure(
            ResponseError::InvalidRequiredAcks,
            format!("acks must be -1, 0 or 1, not {acks}"),
        ));
    }
    let Some(topic) = topic else {
        return Err(Failure(
            ResponseError::UnknownTopicOrPartition,
            "unknown topic".into(),
        ));
    };
    let log = broker
        .partition_log(topic, data.index)
        .map_err(|e| Failure(e.code, e.message))?;
    let records = data.records.as_deref().unwrap_or_default();
    let headers = batch::validate_all(records)
        .map_err(|e| Failure(errors::batch_error(&e), e.to_string()))?;
    let [header] = headers.as_slice() else {
        return Err(Failure(
            ResponseError::InvalidRecord,
            format!(
                "a produce request must carry exactly one record batch per partition, not {}",
                headers.len()
            ),
        ));
    };
    if header.is_transactional()
        && let Some(refused) = txn_failure
            .cloned()
            .or_else(|| txn_refusal(broker, &topic.name, data.index, header))
    {
        return Err(refused);
    }
    let config = broker.topic_config(topic);
    let placement = usize::try_from(data.index)
        .ok()
        .and_then(|i| topic.partitions.get(i));
    if acks == -1
        && let Some((in_sync, min)) = too_few_in_sync(placement, &config)
    {
        return Err(Failure(
            ResponseError::NotEnoughReplicas,
            format!("{in_sync} in-sync replica(s), min.insync.replicas is {min}"),
        ));
    }
    let now = broker.now_ms();
    let (records, append_time) = prepare(&config, records, header, now)?;
    let headers = match &records {
        Cow::Borrowed(_) => headers,
        Cow::Owned(rewritten) => batch::validate_all(rewritten)
            .map_err(|e| Failure(ResponseError::CorruptMessage, e.to_string()))?,
    };
    let max = config.max_message_bytes();
    if records.len() > max {
        return Err(Failure(
            ResponseError::MessageTooLarge,
            format!(
                "record batch of {} bytes exceeds max.message.bytes {max}",
                records.len()
            ),
        ));
    }
    let key = PartitionKey {
        topic_id: topic.id,
        partition: data.index,
    };
    // A replicated partition takes writes once this broker acts as its leader (tracks
    // its followers); until then, the client retries.
    if placement.is_some_and(|p| p.replicas.len() > 1) && broker.replication.isr(key).is_none() {
        return Err(Failure(
            ResponseError::NotLeaderOrFollower,
            "this broker is becoming the partition's leader; retry".into(),
        ));
    }
    let leader_epoch = placement.map_or(0, |p| p.leader_epoch);
    let info = log
        .append(&records, &headers, leader_epoch, now)
        .map_err(|e| Failure(errors::log_error(&e), e.to_string()))?;
    if config.uploads() {
        broker.tier.note_unuploaded(records.len() as u64);
    }
    broker
        .metrics
        .kafka
        .produce_records_bytes_total
        .inc_by(records.len() as u64);
    Ok(Appended {
        key,
        leader_epoch,
        min_isr: config.min_insync_replicas(),
        log,
        base_offset: info.base_offset,
        last_offset: info.last_offset,
        log_start: info.log_start,
        append_time,
    })
}

/// A batch appended to a partition's log.
struct Appended {
    key: PartitionKey,
    leader_epoch: i32,
    min_isr: usize,
    log: Arc<Partition>,
    base_offset: i64,
    last_offset: i64,
    log_start: i64,
    /// The broker time stamped on the batch (`LogAppendTime` topics).
    append_time: Option<i64>,
}

/// The batch as the topic stores it: with `LogAppendTime` stamped with the broker's
/// time, else its timestamps checked against `message.timestamp.{before,after}.max.ms`;
/// its records recompressed when the topic's `compression.type` names another codec.
/// Returns the bytes to append and the append time, if stamped.
fn prepare<'a>(
    config: &TopicConfig,
    records: &'a [u8],
    header: &BatchHeader,
    now: i64,
) -> Result<(Cow<'a, [u8]>, Option<i64>), Failure> {
    let mut out = Cow::Borrowed(records);
    if let Some((codec, level)) = config.compression()
        && header.compression().ok() != Some(codec)
    {
        let rewritten = strata_protocol::records::recompress(records, codec, level)
            .map_err(|e| Failure(ResponseError::CorruptMessage, e.to_string()))?;
        out = Cow::Owned(rewritten);
    }
    if config.log_append_time() {
        batch::set_log_append_time(out.to_mut(), now);
        return Ok((out, Some(now)));
    }
    let (before, after) = config.timestamp_bounds();
    if header.max_timestamp > now.saturating_add(after) {
        return Err(Failure(
            ResponseError::InvalidTimestamp,
            format!(
                "a record's timestamp {} is more than message.timestamp.after.max.ms ({after} ms) ahead of the broker's clock ({now})",
                header.max_timestamp
            ),
        ));
    }
    let oldest_allowed = now.saturating_sub(before);
    // The base timestamp is the smallest unless a record has a negative delta: walk the
    // records only when the cheap answer is not enough.
    if header.base_timestamp < oldest_allowed || header.max_timestamp < oldest_allowed {
        let min = strata_protocol::records::min_timestamp(&out)
            .map_err(|e| Failure(ResponseError::CorruptMessage, e.to_string()))?;
        if min < oldest_allowed {
            return Err(Failure(
                ResponseError::InvalidTimestamp,
                format!(
                    "a record's timestamp {min} is more than message.timestamp.before.max.ms ({before} ms) behind the broker's clock ({now})"
                ),
            ));
        }
    }
    Ok((out, None))
}

/// Why a transactional batch may not be written to `topic`-`partition`: its producer
/// must be the current one of a transactional id whose open transaction added this
/// partition (KIP-890's check, made against the state the coordinator committed).
fn txn_refusal(broker: &Broker, topic: &str, partition: i32, h: &BatchHeader) -> Option<Failure> {
    broker.meta.read(|s| match s.transaction_of(h.producer_id) {
        None => Some(Failure(
            ResponseError::InvalidTxnState,
            format!("producer {} has no transactional id", h.producer_id),
        )),
        Some((id, t)) if h.producer_epoch < t.producer_epoch => Some(Failure(
            ResponseError::ProducerFenced,
            format!(
                "epoch {} of transactional id {id:?} is fenced by epoch {}",
                h.producer_epoch, t.producer_epoch
            ),
        )),
        Some((id, t))
            if t.state != TxnState::Ongoing
                || t.producer_epoch != h.producer_epoch
                || !t.has_partition(topic, partition) =>
        {
            Some(Failure(
                ResponseError::InvalidTxnState,
                format!("{topic}-{partition} is not part of an open transaction of {id:?}"),
            ))
        }
        Some(_) => None,
    })
}

/// Waits (briefly) until every transactional batch of `req` is allowed by this broker's
/// copy of metadata: the coordinator committed the partition to the transaction before
/// it answered the producer, but the commit may reach this broker a moment later. From
/// v12 (KIP-890 transaction version 2) the producer sends no AddPartitionsToTxn: the
/// batches add their partitions here, and a refusal (CONCURRENT_TRANSACTIONS while the
/// previous transaction's markers are written, a fenced epoch) is every one's answer.
async fn await_txn_partitions(
    broker: &Broker,
    req: &ProduceRequest,
    topics: &[Option<TopicMeta>],
    version: i16,
) -> Option<Failure> {
    let checks: Vec<(&str, i32, BatchHeader)> =
        req.topic_data
            .iter()
            .zip(topics)
            .filter_map(|(t, meta)| meta.as_ref().map(|m| (t, m)))
            .flat_map(|(t, meta)| {
                t.partition_data.iter().filter_map(move |d| {
                    let h = BatchHeader::parse(d.records.as_deref()?).ok()?;
                    // Only where this broker leads: elsewhere the append fails at once.
                    (h.is_transactional() && broker.partition_log(meta, d.index).is_ok())
                        .then_some((meta.name.as_str(), d.index, h))
                })
            })
            .collect();
    if checks.is_empty() {
        return None;
    }
    if version >= 12 {
        let missing: Vec<(String, i32)> = checks
            .iter()
            .filter(|(t, p, h)| txn_refusal(broker, t, *p, h).is_some())
            .map(|(t, p, _)| (t.to_string(), *p))
            .collect();
        let h = &checks[0].2;
        if let Err(f) =
            add_partitions(broker, req, (h.producer_id, h.producer_epoch), missing).await
        {
            return Some(f);
        }
    }
    let allowed = || {
        checks
            .iter()
            .all(|(t, p, h)| txn_refusal(broker, t, *p, h).is_none())
    };
    broker.await_metadata(TXN_METADATA_WAIT, allowed).await;
    None
}

/// Adds `partitions` to the open transaction of `req`'s transactional id (opening one).
async fn add_partitions(
    broker: &Broker,
    req: &ProduceRequest,
    (producer_id, epoch): (i64, i16),
    partitions: Vec<(String, i32)>,
) -> Result<(), Failure> {
    if partitions.is_empty() {
        return Ok(());
    }
    let Some(id) = req.transactional_id.as_ref().map(|t| t.0.to_string()) else {
        return Err(Failure(
            ResponseError::InvalidTxnState,
            "a transactional batch in a request without a transactional id".into(),
        ));
    };
    let now = broker.now_ms();
    let added = broker
        .txn
        .add(&id, producer_id, epoch, partitions, Vec::new(), now)
        .await;
    added.map_err(|code| {
        // As Kafka answers a version-2 producer: an old epoch's batch is an abortable
        // error (its EndTxn from that epoch then learns the current one), not a fatal one.
        let code = match code {
            ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
            other => other,
        };
        Failure(code, format!("adding to the transaction of {id:?}: {code}"))
    })
}

/// How long a transactional batch waits for its partition's addition to arrive here.
const TXN_METADATA_WAIT: Duration = Duration::from_secs(2);

fn failed(index: i32, f: Failure) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(f.0.code())
        .with_error_message(Some(StrBytes::from_string(f.1)))
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}

/// The answer to a produce request whose batches are appended: it resolves once they
/// may be acknowledged. Its connection meanwhile goes on reading (and appending) the
/// requests behind it, so they share the next sync.
pub(super) type Answer = BoxFuture<'static, ProduceResponse>;

/// Validates and appends every partition's batch, in the order of the request, and
/// returns the answer that waits for their durability. `Ok(None)`: acks=0, nothing to
/// send. `Err`: acks=0 and something failed, so the connection must be closed (Kafka's
/// only way to tell such a producer).
pub(super) async fn handle(
    broker: &Arc<Broker>,
    req: ProduceRequest,
    version: i16,
) -> Result<Option<Answer>, String> {
    let acks = req.acks;
    let topics: Vec<Option<TopicMeta>> = req
        .topic_data
        .iter()
        .map(|t| {
            if version >= 13 {
                broker.topic_by_id(t.topic_id)
            } else {
                broker.topic(&t.name)
            }
        })
        .collect();
    // Too much data waiting for the object store: hold the request, then refuse it
    // (only requests that write to a tiered topic: the others do not add to the backlog).
    let tiered = topics
        .iter()
        .flatten()
        .any(|tm| broker.topic_config(tm).uploads());
    let wait = Duration::from_millis((req.timeout_ms.max(0) as u64 / 2).min(10_000));
    let admitted = match tiered {
        true => broker.tier.admit_produce(wait).await,
        false => Ok(()),
    };
    if let Err(reason) = admitted {
        warn!(reason = %reason, "produce refused: local tail full");
        if acks == 0 {
            return Err(reason);
        }
        let responses = req
            .topic_data
            .into_iter()
            .map(|t| {
                let parts = t
                    .partition_data
                    .iter()
                    .map(|d| {
                        failed(
                            d.index,
                            Failure(ResponseError::KafkaStorageError, reason.clone()),
                        )
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(t.name)
                    .with_topic_id(t.topic_id)
                    .with_partition_responses(parts)
            })
            .collect();
        let refused = ProduceResponse::default().with_responses(responses);
        return Ok(Some(future::ready(refused).boxed()));
    }
    let txn_failure = await_txn_partitions(broker, &req, &topics, version).await;
    let mut responses = Vec::with_capacity(req.topic_data.len());
    let mut pending = Vec::new();
    let mut first_error = None;
    for (ti, (t, topic)) in req.topic_data.into_iter().zip(topics).enumerate() {
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for (pi, data) in t.partition_data.iter().enumerate() {
            match append(broker, topic.as_ref(), data, acks, txn_failure.as_ref()) {
                Ok(a) => {
                    pending.push(Pending {
                        topic: ti,
                        partition: pi,
                        log: a.log,
                        end: a.last_offset + 1,
                        leader_epoch: a.leader_epoch,
                        min_isr: (acks == -1).then(|| (broker.clone(), a.key, a.min_isr)),
                    });
                    parts.push(
                        PartitionProduceResponse::default()
                            .with_index(data.index)
                            .with_base_offset(a.base_offset)
                            .with_log_append_time_ms(a.append_time.unwrap_or(-1))
                            .with_log_start_offset(a.log_start),
                    );
                }
                Err(f) => {
                    warn!(topic = %t.name.0, partition = data.index, error = %f.0, reason = %f.1, "produce rejected");
                    first_error.get_or_insert_with(|| format!("{}: {}", f.0, f.1));
                    parts.push(failed(data.index, f));
                }
            }
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(t.name)
                .with_topic_id(t.topic_id)
                .with_partition_responses(parts),
        );
    }
    // The partitions' waits run together in the answer (a task per partition would add
    // a hand-off to every acknowledgement); whatever is left when the answer times out
    // carries on in the background, so the data still becomes durable and visible.
    let slots: Vec<(usize, usize)> = pending.iter().map(|p| (p.topic, p.partition)).collect();
    let mut durable: FuturesUnordered<_> = pending
        .into_iter()
        .enumerate()
        .map(|(k, p)| async move { (k, acknowledged(p).await) })
        .collect();
    if acks == 0 {
        // Nobody waits for the answer, but the data must still reach the disk so that
        // consumers can see it.
        tokio::spawn(async move {
            while let Some((_, result)) = durable.next().await {
                if let Err(Failure(_, e)) = result {
                    warn!(error = %e, "acks=0 produce could not be synced");
                }
            }
        });
        return match first_error {
            Some(e) => Err(e),
            None => Ok(None),
        };
    }
    // timeout_ms bounds the wait for acks=all only, as in Kafka; acks=1 is answered once
    // the leader's write is done, which for Strata includes its fsync.
    let timeout = (acks == -1).then(|| Duration::from_millis(req.timeout_ms.max(0) as u64));
    Ok(Some(answer(durable, slots, responses, timeout).boxed()))
}

/// Waits for the appended partitions in `durable` (at most `timeout`) and fills their
/// outcomes into `responses`.
async fn answer(
    mut durable: FuturesUnordered<
        impl Future<Output = (usize, Result<(), Failure>)> + Send + 'static,
    >,
    slots: Vec<(usize, usize)>,
    mut responses: Vec<TopicProduceResponse>,
    timeout: Option<Duration>,
) -> ProduceResponse {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut confirmed = vec![false; slots.len()];
    loop {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, durable.next())
                .await
                .unwrap_or(None),
            None => durable.next().await,
        };
        let Some((k, result)) = next else { break };
        confirmed[k] = true;
        if let Err(f) = result {
            let (ti, pi) = slots[k];
            let part = &mut responses[ti].partition_responses[pi];
            *part = failed(part.index, f);
        }
    }
    if !durable.is_empty() {
        tokio::spawn(async move { while durable.next().await.is_some() {} });
    }
    // Whatever is unconfirmed at the deadline times out.
    for (k, &(ti, pi)) in slots.iter().enumerate() {
        if !confirmed[k] {
            let part = &mut responses[ti].partition_responses[pi];
            *part = failed(
                part.index,
                Failure(
                    ResponseError::RequestTimedOut,
                    "timed out waiting for the write to be durable on every in-sync replica".into(),
                ),
            );
        }
    }
    ProduceResponse::default().with_responses(responses)
}
