//! InitProducerId and DescribeProducers.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;

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
    if (req.producer_id.0 < 0) != (req.producer_epoch < 0) {
        return fail(ResponseError::InvalidRequest);
    }
    if let Some(id) = req.transactional_id.as_ref().filter(|t| !t.is_empty()) {
        return match super::txn::init_producer_id(broker, id, &req).await {
            Ok((producer_id, epoch)) => InitProducerIdResponse::default()
                .with_producer_id(ProducerId(producer_id))
                .with_producer_epoch(epoch),
            Err(code) => fail(code),
        };
    }
    // An idempotent (non-transactional) producer always gets a fresh id with epoch 0,
    // also when it asks to bump the epoch of its old one (Kafka does the same).
    match broker.producer_ids.next(&broker.meta).await {
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
                                        .with_current_txn_start_offset(p.txn_start_offset)
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
