//! InitProducerId (idempotent producers) and DescribeProducers.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_meta::{Command, CommandResult};
use tracing::info;

use crate::broker::Broker;
use crate::errors;

/// Producer ids reserved from metadata at a time: one Raft write per block, not per
/// producer.
const PRODUCER_ID_BLOCK: u32 = 1000;

/// Hands out producer ids from blocks reserved in metadata.
#[derive(Default)]
pub(crate) struct ProducerIds {
    /// The next id to hand out and the end of the current block.
    block: tokio::sync::Mutex<(i64, i64)>,
}

impl ProducerIds {
    async fn next(&self, broker: &Broker) -> Result<i64, ResponseError> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            match broker
                .meta
                .write(Command::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })
                .await
            {
                Ok(CommandResult::ProducerIds { first }) => {
                    info!(
                        first,
                        count = PRODUCER_ID_BLOCK,
                        "reserved a block of producer ids"
                    );
                    *block = (first, first + i64::from(PRODUCER_ID_BLOCK));
                }
                Ok(other) => {
                    tracing::error!(result = ?other, "unexpected answer to a producer id allocation");
                    return Err(ResponseError::UnknownServerError);
                }
                Err(e) => return Err(errors::meta_error(&e)),
            }
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }
}

pub(super) async fn init_producer_id(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let fail = |e: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if req.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
        return fail(ResponseError::InvalidRequest);
    }
    if (req.producer_id.0 < 0) != (req.producer_epoch < 0) {
        return fail(ResponseError::InvalidRequest);
    }
    // An idempotent (non-transactional) producer always gets a fresh id with epoch 0,
    // also when it asks to bump the epoch of its old one (Kafka does the same).
    match broker.producer_ids.next(broker).await {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => fail(e),
    }
}

pub(super) fn describe_producers(
    broker: &Arc<Broker>,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let meta = broker.topic(&t.name);
            let partitions = t
                .partition_indexes
                .into_iter()
                .map(|p| {
                    let r = PartitionResponse::default().with_partition_index(p);
                    let log = match &meta {
                        None => Err((
                            ResponseError::UnknownTopicOrPartition,
                            "unknown topic".to_string(),
                        )),
                        Some(topic) => broker
                            .partition_log(topic, p)
                            .map_err(|e| (e.code, e.message)),
                    };
                    match log {
                        Err((code, message)) => r
                            .with_error_code(code.code())
                            .with_error_message(Some(StrBytes::from_string(message))),
                        Ok(log) => r.with_active_producers(
                            log.producers()
                                .into_iter()
                                .map(|p| {
                                    ProducerState::default()
                                        .with_producer_id(ProducerId(p.producer_id))
                                        .with_producer_epoch(i32::from(p.epoch))
                                        .with_last_sequence(p.last_sequence)
                                        .with_last_timestamp(p.last_timestamp)
                                        .with_coordinator_epoch(-1)
                                        .with_current_txn_start_offset(-1)
                                })
                                .collect(),
                        ),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
