//! Metadata: brokers, topics and partition leaders, with auto topic creation.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use strata_meta::TopicMeta;
use uuid::Uuid;

use crate::broker::{Broker, validate_topic_name};

pub(super) fn topic_entry(topic: &TopicMeta) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id)
        .with_partitions(
            topic
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    // No live in-sync replica: clients wait for a leader (retriable).
                    let code = if p.leader < 0 {
                        ResponseError::LeaderNotAvailable.code()
                    } else {
                        0
                    };
                    MetadataResponsePartition::default()
                        .with_error_code(code)
                        .with_partition_index(i as i32)
                        .with_leader_id(BrokerId(p.leader))
                        .with_leader_epoch(p.leader_epoch)
                        .with_replica_nodes(p.replicas.iter().copied().map(BrokerId).collect())
                        .with_isr_nodes(p.isr.iter().copied().map(BrokerId).collect())
                })
                .collect(),
        )
}

fn error_entry(name: Option<&str>, id: Uuid, code: ResponseError) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n.to_string()))))
        .with_topic_id(id)
        .with_error_code(code.code())
}

/// Looks a topic up by name, creating it if the request and the broker allow that.
async fn resolve_or_create(
    broker: &Arc<Broker>,
    name: &str,
    allow_create: bool,
) -> MetadataResponseTopic {
    if let Some(t) = broker.topic(name) {
        return topic_entry(&t);
    }
    if let Err(e) = validate_topic_name(name) {
        return error_entry(Some(name), Uuid::nil(), e.code);
    }
    if !(allow_create && broker.config.auto_create_topics()) {
        return error_entry(
            Some(name),
            Uuid::nil(),
            ResponseError::UnknownTopicOrPartition,
        );
    }
    let created = match broker.check_new_topic(name, -1, -1, &BTreeMap::new()) {
        Ok(t) => broker.create_topic(t).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(t) => topic_entry(&t),
        // Another request created it first.
        Err(e) if e.code == ResponseError::TopicAlreadyExists => match broker.topic(name) {
            Some(t) => topic_entry(&t),
            None => error_entry(Some(name), Uuid::nil(), ResponseError::LeaderNotAvailable),
        },
        Err(e) => error_entry(Some(name), Uuid::nil(), e.code),
    }
}

pub(super) async fn handle(
    broker: &Arc<Broker>,
    req: MetadataRequest,
    version: i16,
    ctx: &super::RequestCtx,
) -> MetadataResponse {
    // Live brokers only: a fenced one leads nothing, and clients should not wait on it.
    // That includes this broker once its lease lapsed (see `crate::lease`): metadata here
    // may be stale, and clients must ask another broker where its partitions went.
    let fenced = broker.lease_lapsed();
    let brokers = broker.meta.read(|s| {
        s.live_brokers()
            .filter(|b| !(fenced && b.node_id == broker.node_id))
            .filter_map(|b| {
                let (host, port) = b.endpoint_for(&ctx.listener.name)?;
                Some(
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(b.node_id))
                        .with_host(StrBytes::from_string(host.to_string()))
                        .with_port(i32::from(port))
                        .with_rack(b.rack.clone().map(StrBytes::from_string)),
                )
            })
            .collect::<Vec<_>>()
    });
    // Before v4 every Metadata request may create topics.
    let allow_create = version < 4 || req.allow_auto_topic_creation;
    let all = match &req.topics {
        None => true,
        Some(list) => list.is_empty() && version == 0,
    };
    let mut topics = if all {
        broker
            .meta
            .read(|s| s.topics.values().map(topic_entry).collect())
    } else {
        let mut out = Vec::new();
        for t in req.topics.unwrap_or_default() {
            let entry = match t.name {
                Some(name) => resolve_or_create(broker, &name, allow_create).await,
                None => match broker.topic_by_id(t.topic_id) {
                    Some(topic) => topic_entry(&topic),
                    None => error_entry(None, t.topic_id, ResponseError::UnknownTopicId),
                },
            };
            out.push(entry);
        }
        out
    };
    if fenced {
        for p in topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
            if p.leader_id.0 == broker.node_id {
                p.leader_id = BrokerId(-1);
                p.error_code = ResponseError::LeaderNotAvailable.code();
            }
        }
    }
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.clone())))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_topics(topics)
}
