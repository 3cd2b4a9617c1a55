//! CreateTopics and DeleteTopics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strata_meta::{Command, CommandResult};
use tracing::{info, warn};
use uuid::Uuid;

use crate::broker::{Broker, TopicError};
use crate::config::TopicConfig;
use crate::errors;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn failed(name: &TopicName, e: TopicError) -> CreatableTopicResult {
    CreatableTopicResult::default()
        .with_name(name.clone())
        .with_error_code(e.code.code())
        .with_error_message(Some(str_bytes(&e.message)))
        .with_num_partitions(-1)
        .with_replication_factor(-1)
}

fn config_entries(cfg: &TopicConfig) -> Vec<CreatableTopicConfigs> {
    cfg.entries()
        .map(|(d, _, value, source)| {
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(d.name))
                .with_value(Some(str_bytes(value)))
                .with_config_source(source as i8)
        })
        .collect()
}

pub(super) async fn create(
    broker: &Arc<Broker>,
    req: CreateTopicsRequest,
    _version: i16,
) -> CreateTopicsResponse {
    let mut seen: HashMap<TopicName, usize> = HashMap::new();
    for t in &req.topics {
        *seen.entry(t.name.clone()).or_default() += 1;
    }
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        if seen.get(&t.name).copied().unwrap_or(0) > 1 {
            results.push(failed(
                &t.name,
                TopicError {
                    code: ResponseError::InvalidRequest,
                    message: format!(
                        "topic {:?} appears more than once in the request",
                        t.name.0.as_str()
                    ),
                },
            ));
            continue;
        }
        let mut configs = BTreeMap::new();
        for c in &t.configs {
            // A null value asks for the default, which is what leaving it out does.
            if let Some(v) = &c.value {
                configs.insert(c.name.to_string(), v.to_string());
            }
        }
        let (partitions, replication_factor, assignment) = if t.assignments.is_empty() {
            (t.num_partitions, t.replication_factor, None)
        } else {
            match manual_assignment(broker, &t) {
                Ok(a) => (a.len() as i32, a[0].len() as i16, Some(a)),
                Err(e) => {
                    results.push(failed(&t.name, e));
                    continue;
                }
            }
        };
        let checked = broker
            .check_new_topic(&t.name, partitions, replication_factor, &configs)
            .map(|new| crate::broker::NewTopic { assignment, ..new });
        let outcome = match checked {
            Err(e) => Err(e),
            Ok(_) if broker.topic(&t.name).is_some() => Err(TopicError {
                code: ResponseError::TopicAlreadyExists,
                message: format!("topic {:?} already exists", t.name.0.as_str()),
            }),
            Ok(_)
                if let Some(other) = broker
                    .meta
                    .read(|s| s.colliding_topic(&t.name).map(str::to_string)) =>
            {
                Err(TopicError {
                    code: ResponseError::InvalidTopicException,
                    message: format!(
                        "topic {:?} collides with existing topic {other:?}",
                        t.name.0.as_str()
                    ),
                })
            }
            Ok(new) if req.validate_only => Ok((
                new.partitions,
                new.replication_factor,
                new.configs,
                Uuid::nil(),
            )),
            Ok(new) => {
                let (p, rf) = (new.partitions, new.replication_factor);
                broker
                    .create_topic(new)
                    .await
                    .map(|topic| (p, rf, topic.configs, topic.id))
            }
        };
        results.push(match outcome {
            Ok((partitions, rf, overrides, id)) => {
                let cfg = TopicConfig::resolve(&overrides, &broker.config);
                CreatableTopicResult::default()
                    .with_name(t.name)
                    .with_topic_id(id)
                    .with_num_partitions(partitions)
                    .with_replication_factor(rf)
                    .with_configs(Some(config_entries(&cfg)))
            }
            Err(e) => failed(&t.name, e),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// Validates an explicit replica assignment; returns the partition count and replication
/// factor it implies.
fn manual_assignment(
    broker: &Broker,
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<Vec<Vec<i32>>, TopicError> {
    let invalid = |message: String| TopicError {
        code: ResponseError::InvalidReplicaAssignment,
        message,
    };
    if t.num_partitions != -1 || t.replication_factor != -1 {
        return Err(TopicError {
            code: ResponseError::InvalidRequest,
            message:
                "both a replica assignment and a partition count or replication factor were given"
                    .into(),
        });
    }
    let brokers = broker
        .meta
        .read(|s| s.brokers.keys().copied().collect::<Vec<i32>>());
    let mut indexes: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
    indexes.sort_unstable();
    if indexes.iter().enumerate().any(|(i, &p)| p != i as i32) {
        return Err(invalid(
            "partition indexes must be 0..n without gaps".into(),
        ));
    }
    let rf = t.assignments[0].broker_ids.len();
    for a in &t.assignments {
        if a.broker_ids.len() != rf || a.broker_ids.is_empty() {
            return Err(invalid(
                "every partition must have the same, non-zero number of replicas".into(),
            ));
        }
        if let Some(b) = a.broker_ids.iter().find(|b| !brokers.contains(&b.0)) {
            return Err(invalid(format!("broker {} does not exist", b.0)));
        }
    }
    let mut assignment = vec![Vec::new(); t.assignments.len()];
    for a in &t.assignments {
        assignment[a.partition_index as usize] = a.broker_ids.iter().map(|b| b.0).collect();
    }
    Ok(assignment)
}

pub(super) async fn delete(
    broker: &Arc<Broker>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6 names topics in `topics` (by name or id); older versions in `topic_names`.
    let targets: Vec<(Option<TopicName>, Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()))
            .collect()
    };
    let mut responses = Vec::with_capacity(targets.len());
    for (name, id) in targets {
        let topic = match &name {
            Some(n) => broker.topic(n),
            None => broker.topic_by_id(id),
        };
        let result = DeletableTopicResult::default()
            .with_name(name.clone())
            .with_topic_id(id);
        let Some(topic) = topic else {
            let code = if name.is_some() {
                ResponseError::UnknownTopicOrPartition
            } else {
                ResponseError::UnknownTopicId
            };
            responses.push(result.with_error_code(code.code()));
            continue;
        };
        let result = result
            .with_name(Some(TopicName(str_bytes(&topic.name))))
            .with_topic_id(topic.id);
        if !broker.config.delete_topic_enable() {
            responses.push(
                result
                    .with_error_code(ResponseError::TopicDeletionDisabled.code())
                    .with_error_message(Some(str_bytes(
                        "topic deletion is disabled (delete.topic.enable=false)",
                    ))),
            );
            continue;
        }
        match broker
            .meta
            .write(Command::DeleteTopic {
                name: topic.name.clone(),
            })
            .await
        {
            Ok(CommandResult::Deleted(gone)) => {
                info!(topic = %gone.name, topic_id = %gone.id, "deleted topic");
                if let Err(e) = broker.logs.remove_topic(gone.id) {
                    // The reconciler retries: metadata no longer names this topic id.
                    warn!(topic = %gone.name, error = %e, "could not delete topic data yet");
                }
                let b = broker.clone();
                tokio::spawn(async move { b.tier.purge_topic_objects(gone.id).await });
                responses.push(result);
            }
            Ok(_) => responses
                .push(result.with_error_code(ResponseError::UnknownTopicOrPartition.code())),
            Err(e) => responses.push(
                result
                    .with_error_code(errors::meta_error(&e).code())
                    .with_error_message(Some(str_bytes(&e.to_string()))),
            ),
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}
