//! Admin APIs that Kafka tools call: CreatePartitions, DeleteRecords, AlterConfigs,
//! IncrementalAlterConfigs, DescribeCluster, OffsetForLeaderEpoch, DescribeLogDirs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_log::PartitionKey;
use strata_meta::{Command, CommandResult, TopicMeta};
use tracing::info;

use crate::broker::{Broker, MAX_PARTITIONS, TopicError};
use crate::config::{ConfigType, find_topic, validate_topic_configs};
use crate::errors;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn topic_error(code: ResponseError, message: impl Into<String>) -> TopicError {
    TopicError {
        code,
        message: message.into(),
    }
}

pub(super) async fn create_partitions(
    broker: &Arc<Broker>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut seen: HashMap<&TopicName, usize> = HashMap::new();
    for t in &req.topics {
        *seen.entry(&t.name).or_default() += 1;
    }
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let outcome = if seen.get(&t.name).copied().unwrap_or(0) > 1 {
            Err(topic_error(
                ResponseError::InvalidRequest,
                "topic named more than once",
            ))
        } else {
            add_partitions(broker, t, req.validate_only).await
        };
        let r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        results.push(match outcome {
            Ok(()) => r,
            Err(e) => r
                .with_error_code(e.code.code())
                .with_error_message(Some(s(&e.message))),
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn add_partitions(
    broker: &Broker,
    t: &kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), TopicError> {
    let topic = broker.topic(&t.name).ok_or_else(|| {
        topic_error(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {:?} does not exist", t.name.as_str()),
        )
    })?;
    let current = topic.partitions.len() as i32;
    if t.count <= current {
        return Err(topic_error(
            ResponseError::InvalidPartitions,
            format!(
                "topic currently has {current} partitions, which is not fewer than the requested {}",
                t.count
            ),
        ));
    }
    if t.count > MAX_PARTITIONS {
        return Err(topic_error(
            ResponseError::InvalidPartitions,
            format!("at most {MAX_PARTITIONS} partitions"),
        ));
    }
    let new = (t.count - current) as usize;
    let brokers = broker
        .meta
        .read(|st| st.brokers.keys().copied().collect::<Vec<i32>>());
    let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
    // Null (or an empty list) leaves placement to the broker.
    let replicas: Vec<Vec<i32>> = match t.assignments.as_ref().filter(|a| !a.is_empty()) {
        None => broker.place(new, rf, current as usize)?,
        Some(a) => {
            if a.len() != new {
                return Err(topic_error(
                    ResponseError::InvalidReplicaAssignment,
                    format!("{} assignments given for {new} new partitions", a.len()),
                ));
            }
            let mut out = Vec::with_capacity(new);
            for x in a {
                let ids: Vec<i32> = x.broker_ids.iter().map(|b| b.0).collect();
                if ids.len() != rf {
                    return Err(topic_error(
                        ResponseError::InvalidReplicaAssignment,
                        format!(
                            "the topic's replication factor is {rf}, an assignment has {}",
                            ids.len()
                        ),
                    ));
                }
                if let Some(b) = ids.iter().find(|b| !brokers.contains(b)) {
                    return Err(topic_error(
                        ResponseError::InvalidReplicaAssignment,
                        format!("broker {b} does not exist"),
                    ));
                }
                out.push(ids);
            }
            out
        }
    };
    if validate_only {
        return Ok(());
    }
    let partitions = replicas
        .into_iter()
        .map(crate::broker::new_partition)
        .collect();
    match broker
        .meta
        .write(Command::AddPartitions {
            name: topic.name.clone(),
            partitions,
        })
        .await
    {
        Ok(CommandResult::Ok) => {
            info!(topic = %topic.name, from = current, to = t.count, "added partitions");
            Ok(())
        }
        Ok(_) => Err(topic_error(
            ResponseError::UnknownTopicOrPartition,
            "topic vanished",
        )),
        Err(e) => Err(topic_error(errors::meta_error(&e), e.to_string())),
    }
}

pub(super) async fn delete_records(
    broker: &Arc<Broker>,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let meta = broker.topic(&t.name);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let r = DeleteRecordsPartitionResult::default().with_partition_index(p.partition_index);
            let outcome = match &meta {
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(topic) => match broker.partition_log(topic, p.partition_index) {
                    Err(e) => Err(e.code),
                    Ok(log) => {
                        let o = log.offsets();
                        // -1 means "up to the high watermark".
                        let target = if p.offset == -1 {
                            o.high_watermark
                        } else {
                            p.offset
                        };
                        if target < 0 || target > o.high_watermark {
                            Err(ResponseError::OffsetOutOfRange)
                        } else if target <= o.log_start {
                            Ok(o.log_start)
                        } else {
                            let key = PartitionKey {
                                topic_id: topic.id,
                                partition: p.partition_index,
                            };
                            match broker.move_log_start(key, &log, target).await {
                                Ok(()) => Ok(log.offsets().log_start),
                                Err(e) => {
                                    tracing::warn!(topic = %topic.name, partition = p.partition_index, error = %e, "DeleteRecords failed");
                                    Err(ResponseError::KafkaStorageError)
                                }
                            }
                        }
                    }
                },
            };
            parts.push(match outcome {
                Ok(low) => r.with_low_watermark(low),
                Err(e) => r.with_low_watermark(-1).with_error_code(e.code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// How an IncrementalAlterConfigs entry changes one setting.
enum Op {
    Set(String),
    Delete,
    Append(String),
    Subtract(String),
}

/// Computes a topic's new overrides from `ops` and validates them.
fn apply_ops(
    current: &BTreeMap<String, String>,
    effective: impl Fn(&str) -> String,
    ops: Vec<(String, Op)>,
) -> Result<BTreeMap<String, String>, TopicError> {
    let mut next = current.clone();
    let mut names = std::collections::HashSet::new();
    for (name, op) in ops {
        if !names.insert(name.clone()) {
            return Err(topic_error(
                ResponseError::InvalidRequest,
                format!("config {name:?} appears more than once"),
            ));
        }
        let def = find_topic(&name).map(|(d, _)| d);
        let is_list = def.is_some_and(|d| d.ty == ConfigType::List);
        match op {
            Op::Set(v) => {
                next.insert(name, v);
            }
            Op::Delete => {
                next.remove(&name);
            }
            Op::Append(_) | Op::Subtract(_) if !is_list => {
                return Err(topic_error(
                    ResponseError::InvalidConfig,
                    format!("config {name:?} is not a list: APPEND and SUBTRACT do not apply"),
                ));
            }
            Op::Append(v) => {
                let mut items: Vec<String> = split_list(&effective(&name));
                for item in split_list(&v) {
                    if !items.contains(&item) {
                        items.push(item);
                    }
                }
                next.insert(name, items.join(","));
            }
            Op::Subtract(v) => {
                let gone = split_list(&v);
                let items: Vec<String> = split_list(&effective(&name))
                    .into_iter()
                    .filter(|i| !gone.contains(i))
                    .collect();
                next.insert(name, items.join(","));
            }
        }
    }
    validate_topic_configs(&next).map_err(TopicError::from)
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Commits a topic's new overrides (unless only validating).
async fn store_topic_configs(
    broker: &Broker,
    name: &str,
    configs: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), TopicError> {
    if validate_only {
        return Ok(());
    }
    match broker
        .meta
        .write(Command::SetTopicConfigs {
            name: name.to_string(),
            configs: configs.clone(),
        })
        .await
    {
        Ok(CommandResult::Ok) => {
            info!(topic = %name, configs = ?configs, "topic configs changed");
            crate::broker::warn_ignored(name, &configs);
            Ok(())
        }
        Ok(_) => Err(topic_error(
            ResponseError::UnknownTopicOrPartition,
            format!("topic {name:?} does not exist"),
        )),
        Err(e) => Err(topic_error(errors::meta_error(&e), e.to_string())),
    }
}

/// The error a config change on a resource other than a topic gets.
fn not_a_topic(resource_type: i8) -> TopicError {
    if resource_type == BROKER {
        topic_error(
            ResponseError::InvalidConfig,
            "broker settings are static in Strata: change them in the config file or environment and restart",
        )
    } else {
        topic_error(
            ResponseError::InvalidRequest,
            format!("resource type {resource_type} cannot be configured"),
        )
    }
}

fn alter_result(
    resource_type: i8,
    name: &StrBytes,
    outcome: Result<(), TopicError>,
) -> AlterConfigsResourceResponse {
    let r = AlterConfigsResourceResponse::default()
        .with_resource_type(resource_type)
        .with_resource_name(name.clone());
    match outcome {
        Ok(()) => r,
        Err(e) => r
            .with_error_code(e.code.code())
            .with_error_message(Some(s(&e.message))),
    }
}

/// Changes one resource's config: refuses anything but a topic, looks the topic up,
/// computes its new overrides with `next`, then validates and stores them.
async fn alter_resource(
    broker: &Broker,
    resource_type: i8,
    name: &StrBytes,
    validate_only: bool,
    next: impl FnOnce(&TopicMeta) -> Result<BTreeMap<String, String>, TopicError>,
) -> AlterConfigsResourceResponse {
    let outcome = if resource_type != TOPIC {
        Err(not_a_topic(resource_type))
    } else {
        match broker.topic(name) {
            None => Err(topic_error(
                ResponseError::UnknownTopicOrPartition,
                "topic does not exist",
            )),
            Some(topic) => match next(&topic) {
                Ok(configs) => {
                    store_topic_configs(broker, &topic.name, configs, validate_only).await
                }
                Err(e) => Err(e),
            },
        }
    };
    alter_result(resource_type, name, outcome)
}

pub(super) async fn alter_configs(
    broker: &Arc<Broker>,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        // AlterConfigs replaces every override with the given set.
        let ops: Vec<(String, Op)> = r
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), Op::Set(v.to_string())))
            })
            .collect();
        let next = |_: &TopicMeta| apply_ops(&BTreeMap::new(), |_| String::new(), ops);
        responses.push(
            alter_resource(
                broker,
                r.resource_type,
                &r.resource_name,
                req.validate_only,
                next,
            )
            .await,
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// The operations of one IncrementalAlterConfigs resource.
fn incremental_ops(
    configs: &[kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig],
) -> Result<Vec<(String, Op)>, TopicError> {
    configs
        .iter()
        .map(|c| {
            let name = c.name.to_string();
            let value = c.value.as_ref().map(|v| v.to_string());
            let op = match (c.config_operation, value) {
                (0, Some(v)) => Op::Set(v),
                (1, _) => Op::Delete,
                (2, Some(v)) => Op::Append(v),
                (3, Some(v)) => Op::Subtract(v),
                (0 | 2 | 3, None) => {
                    return Err(topic_error(
                        ResponseError::InvalidRequest,
                        format!("config {name:?} needs a value"),
                    ));
                }
                (other, _) => {
                    return Err(topic_error(
                        ResponseError::InvalidRequest,
                        format!("unknown config operation {other}"),
                    ));
                }
            };
            Ok((name, op))
        })
        .collect()
}

pub(super) async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as Resp;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let next = |topic: &TopicMeta| {
            let ops = incremental_ops(&r.configs)?;
            let cfg = broker.topic_config(topic);
            let effective = |name: &str| {
                cfg.entries()
                    .find(|(d, _, _, _)| d.name == name)
                    .map(|(_, _, v, _)| v.to_string())
                    .unwrap_or_default()
            };
            apply_ops(&topic.configs, effective, ops)
        };
        let a = alter_resource(
            broker,
            r.resource_type,
            &r.resource_name,
            req.validate_only,
            next,
        )
        .await;
        responses.push(
            Resp::default()
                .with_resource_type(a.resource_type)
                .with_resource_name(a.resource_name)
                .with_error_code(a.error_code)
                .with_error_message(a.error_message),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

pub(super) fn describe_cluster(
    broker: &Arc<Broker>,
    req: DescribeClusterRequest,
    version: i16,
    ctx: &super::RequestCtx,
) -> DescribeClusterResponse {
    // Endpoint type 2 asks for controllers; Strata's metadata nodes are not Kafka endpoints.
    if version >= 1 && req.endpoint_type != 1 {
        return DescribeClusterResponse::default()
            .with_endpoint_type(req.endpoint_type)
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(s("only broker endpoints (type 1) are served")));
    }
    let brokers = broker.meta.read(|st| {
        st.live_brokers()
            .filter_map(|b| {
                let (host, port) = b.endpoint_for(&ctx.listener.name)?;
                Some(
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(b.node_id))
                        .with_host(s(host))
                        .with_port(i32::from(port))
                        .with_rack(b.rack.as_deref().map(s)),
                )
            })
            .collect()
    });
    DescribeClusterResponse::default()
        .with_cluster_id(s(&broker.cluster_id))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_brokers(brokers)
}

pub(super) fn offset_for_leader_epoch(
    broker: &Arc<Broker>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let meta = broker.topic(&t.topic);
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let r = EpochEndOffset::default().with_partition(p.partition);
                    let found = meta
                        .as_ref()
                        .ok_or(ResponseError::UnknownTopicOrPartition)
                        .and_then(|topic| {
                            let pm = usize::try_from(p.partition)
                                .ok()
                                .and_then(|i| topic.partitions.get(i))
                                .ok_or(ResponseError::UnknownTopicOrPartition)?;
                            let log = broker
                                .partition_log(topic, p.partition)
                                .map_err(|e| e.code)?;
                            Ok((pm.leader_epoch, log))
                        });
                    match found {
                        Err(e) => r
                            .with_error_code(e.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                        Ok((epoch, _))
                            if p.current_leader_epoch >= 0 && p.current_leader_epoch < epoch =>
                        {
                            r.with_error_code(ResponseError::FencedLeaderEpoch.code())
                                .with_leader_epoch(-1)
                                .with_end_offset(-1)
                        }
                        Ok((epoch, _)) if p.current_leader_epoch > epoch => r
                            .with_error_code(ResponseError::UnknownLeaderEpoch.code())
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                        // The largest epoch of the log at or below the one asked for, and
                        // where it ended: a follower cuts its log back to there.
                        Ok((_, log)) => match log.epoch_end(p.leader_epoch) {
                            Some((e, end)) => r.with_leader_epoch(e).with_end_offset(end),
                            None => r.with_leader_epoch(-1).with_end_offset(-1),
                        },
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

pub(super) fn describe_log_dirs(
    broker: &Arc<Broker>,
    req: DescribeLogDirsRequest,
    version: i16,
) -> DescribeLogDirsResponse {
    let root = broker.logs.root().to_path_buf();
    let wanted: Option<HashMap<String, Vec<i32>>> = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect()
    });
    let mut by_topic: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for (key, log) in broker.logs.partitions() {
        let Some(topic) = broker.topic_by_id(key.topic_id) else {
            continue;
        };
        if let Some(w) = &wanted
            && !w
                .get(&topic.name)
                .is_some_and(|ps| ps.contains(&key.partition))
        {
            continue;
        }
        by_topic.entry(topic.name.clone()).or_default().push(
            DescribeLogDirsPartition::default()
                .with_partition_index(key.partition)
                .with_partition_size(log.size_bytes() as i64),
        );
    }
    let mut result = DescribeLogDirsResult::default()
        .with_log_dir(s(&root.display().to_string()))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(name, mut parts)| {
                    parts.sort_by_key(|p| p.partition_index);
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(s(&name)))
                        .with_partitions(parts)
                })
                .collect(),
        );
    if version >= 4 {
        let (total, usable) = rustix::fs::statvfs(&root)
            .map(|st| {
                (
                    (st.f_blocks * st.f_frsize) as i64,
                    (st.f_bavail * st.f_frsize) as i64,
                )
            })
            .unwrap_or((-1, -1));
        result = result.with_total_bytes(total).with_usable_bytes(usable);
    }
    DescribeLogDirsResponse::default().with_results(vec![result])
}
