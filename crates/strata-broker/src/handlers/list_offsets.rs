//! ListOffsets: earliest, latest, max-timestamp and by-timestamp lookups.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use strata_log::{Partition, PartitionKey};

use crate::broker::Broker;
use crate::errors;

/// Kafka's special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// (offset, timestamp) of the first record at or after `timestamp`, looking in the
/// remote-only segments first (they are older), then in the local log.
async fn by_timestamp(
    broker: &Broker,
    key: PartitionKey,
    log: &Arc<Partition>,
    timestamp: i64,
) -> Result<(i64, i64), ResponseError> {
    let o = log.offsets();
    if o.log_start < o.local_start
        && let Some(found) = broker
            .tier
            .remote_offset_for_timestamp(
                key.topic_id,
                key.partition,
                timestamp,
                o.log_start,
                o.local_start,
            )
            .await?
    {
        return Ok(found);
    }
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.offset_for_timestamp(timestamp))
        .await
        .unwrap_or_else(|e| {
            Err(strata_log::LogError::Offline {
                path: Default::default(),
                reason: e.to_string(),
            })
        })
        .map(|found| found.unwrap_or((-1, -1)))
        .map_err(|e| errors::log_error(&e))
}

/// (offset, timestamp) for one lookup.
async fn lookup(
    broker: &Broker,
    key: PartitionKey,
    log: &Arc<Partition>,
    timestamp: i64,
    version: i16,
    read_committed: bool,
) -> Result<(i64, i64), ResponseError> {
    let o = log.offsets();
    match timestamp {
        // A read_committed consumer starts at (and lags by) the last stable offset.
        LATEST if read_committed => Ok((o.last_stable, -1)),
        LATEST => Ok((o.high_watermark, -1)),
        EARLIEST => Ok((o.log_start, -1)),
        EARLIEST_LOCAL if version >= 8 => Ok((o.local_start, -1)),
        MAX_TIMESTAMP if version >= 7 => {
            let local = log
                .segments()
                .iter()
                .map(|s| s.max_timestamp)
                .max()
                .unwrap_or(-1);
            let remote = broker.tier.remote_max_timestamp(key, o.local_start);
            let max = local.max(remote);
            if max < 0 {
                return Ok((-1, -1));
            }
            by_timestamp(broker, key, log, max).await
        }
        t if t >= 0 => by_timestamp(broker, key, log, t).await,
        _ => Err(ResponseError::InvalidRequest),
    }
}

pub(super) async fn handle(
    broker: &Arc<Broker>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let meta = broker.topic(&t.name);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let resp =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let log = match &meta {
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(topic) => broker
                    .partition_log(topic, p.partition_index)
                    .map_err(|e| e.code),
            };
            let epoch = meta
                .as_ref()
                .and_then(|m| {
                    usize::try_from(p.partition_index)
                        .ok()
                        .and_then(|i| m.partitions.get(i))
                })
                .map_or(-1, |m| m.leader_epoch);
            let result = match log {
                Err(code) => Err(code),
                Ok(_) if p.current_leader_epoch >= 0 && p.current_leader_epoch < epoch => {
                    Err(ResponseError::FencedLeaderEpoch)
                }
                Ok(_) if p.current_leader_epoch > epoch => Err(ResponseError::UnknownLeaderEpoch),
                Ok(log) => {
                    let key = PartitionKey {
                        topic_id: meta.as_ref().map_or(uuid::Uuid::nil(), |m| m.id),
                        partition: p.partition_index,
                    };
                    let committed = version >= 2 && req.isolation_level == 1;
                    lookup(broker, key, &log, p.timestamp, version, committed).await
                }
            };
            parts.push(match result {
                Ok((offset, timestamp)) => {
                    let resp = resp.with_offset(offset).with_timestamp(timestamp);
                    // The field exists from v4; older versions refuse a non-default value.
                    if version >= 4 {
                        resp.with_leader_epoch(epoch)
                    } else {
                        resp
                    }
                }
                Err(code) => resp
                    .with_error_code(code.code())
                    .with_offset(-1)
                    .with_timestamp(-1),
            });
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
