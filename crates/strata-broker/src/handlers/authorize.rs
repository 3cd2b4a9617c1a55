//! Which ACL each Kafka API checks, as Kafka's broker does, applied around the
//! handlers so they stay unaware of it: a request is refused whole (its API's error for
//! the whole request), or the resources the principal may not touch are taken out of it
//! before it is handled and answered with TOPIC_AUTHORIZATION_FAILED (and friends)
//! afterwards, or, for APIs that only read, what the principal may not see is replaced
//! or left out of the response.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_security::acl::{Operation, ResourceType};

use std::sync::Arc;

use crate::authz::Authz;
use crate::broker::Broker;

/// Work left for after the handler: merge refused entries into, or filter, its response.
pub(super) type After = Box<dyn FnOnce(&mut ResponseKind) + Send>;

/// A request the principal may not make at all.
pub(super) enum Refused {
    /// Answer with this instead of handling it.
    Respond(Box<ResponseKind>),
    /// Close the connection (acks=0 produce: the only signal such a producer gets).
    Close(String),
}

const TOPIC_DENIED: i16 = 29;
const GROUP_DENIED: i16 = 30;
const CLUSTER_DENIED: i16 = 31;
const TXN_DENIED: i16 = 53;

/// Takes the entries `keep` refuses out of `items`.
fn split_off<T>(items: &mut Vec<T>, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
    let (kept, refused): (Vec<T>, Vec<T>) =
        std::mem::take(items).into_iter().partition(|t| keep(t));
    *items = kept;
    refused
}

/// An `After` that runs `f` on the response if it is of the expected kind.
macro_rules! after {
    ($kind:ident, |$r:ident| $body:block) => {
        Some(Box::new(move |resp: &mut ResponseKind| {
            if let ResponseKind::$kind($r) = resp $body
        }) as After)
    };
}

/// Checks `req` before it is handled. `Ok` carries the request to handle (perhaps with
/// resources taken out) and what to do to its response.
pub(super) fn gate(
    broker: &Arc<Broker>,
    authz: &Authz,
    req: RequestKind,
    version: i16,
) -> Result<(RequestKind, Option<After>), Refused> {
    if !authz.enabled() {
        return Ok((req, None));
    }
    let topic_name = |id: &uuid::Uuid| broker.topic_by_id(*id).map(|t| t.name);
    let a = authz.clone();
    Ok(match req {
        RequestKind::Produce(mut r) => {
            if let Some(id) = &r.transactional_id
                && !authz.txn(Operation::Write, id)
            {
                let all = split_off(&mut r.topic_data, |_| false);
                return refuse_produce(r.acks, all, TXN_DENIED);
            }
            let refused = split_off(&mut r.topic_data, |t| {
                let name = match t.name.is_empty() {
                    true => topic_name(&t.topic_id),
                    false => Some(t.name.to_string()),
                };
                // An unknown topic id is the handler's to answer (UNKNOWN_TOPIC_ID).
                name.is_none_or(|n| authz.topic(Operation::Write, &n))
            });
            if refused.is_empty() {
                (RequestKind::Produce(r), None)
            } else if r.acks == 0 {
                return Err(Refused::Close(
                    "acks=0 produce to a topic the principal may not write".into(),
                ));
            } else {
                let entries = produce_errors(refused, TOPIC_DENIED);
                (
                    RequestKind::Produce(r),
                    after!(Produce, |resp| { resp.responses.extend(entries) }),
                )
            }
        }
        RequestKind::Fetch(r) => {
            let follower = r.replica_id.0 >= 0 || r.replica_state.replica_id.0 >= 0;
            // A follower's fetch moves the leader's view of it (ISR, high watermark):
            // refused before it is handled, never after.
            if follower && !authz.cluster(Operation::ClusterAction) {
                let topics = r
                    .topics
                    .iter()
                    .map(|t| {
                        fetch_response::FetchableTopicResponse::default()
                            .with_topic(t.topic.clone())
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(TOPIC_DENIED)
                                            .with_high_watermark(-1)
                                            .with_last_stable_offset(-1)
                                            .with_log_start_offset(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return refuse(ResponseKind::Fetch(
                    FetchResponse::default().with_responses(topics),
                ));
            }
            // Fetch v13+ names topics by id (a session's may not be in this request).
            let b = broker.clone();
            (
                RequestKind::Fetch(r),
                after!(Fetch, |resp| {
                    for t in &mut resp.responses {
                        let name = match t.topic.is_empty() {
                            true => b.topic_by_id(t.topic_id).map(|t| t.name),
                            false => Some(t.topic.to_string()),
                        };
                        let allowed = follower || name.is_none_or(|n| a.topic(Operation::Read, &n));
                        if !allowed {
                            for p in &mut t.partitions {
                                *p = fetch_response::PartitionData::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(TOPIC_DENIED)
                                    .with_high_watermark(-1)
                                    .with_last_stable_offset(-1)
                                    .with_log_start_offset(-1);
                            }
                        }
                    }
                }),
            )
        }
        RequestKind::ListOffsets(r) => (
            RequestKind::ListOffsets(r),
            after!(ListOffsets, |resp| {
                for t in &mut resp.topics {
                    if !a.topic(Operation::Describe, &t.name) {
                        for p in &mut t.partitions {
                            p.error_code = TOPIC_DENIED;
                            p.offset = -1;
                            p.timestamp = -1;
                        }
                    }
                }
            }),
        ),
        RequestKind::Metadata(mut r) => {
            let auto_create = version < 4 || r.allow_auto_topic_creation;
            let mut refused = Vec::new();
            let specific = r.topics.as_ref().is_some_and(|t| !t.is_empty());
            if let Some(topics) = r.topics.as_mut() {
                refused = split_off(topics, |t| {
                    let name = match &t.name {
                        Some(n) => n.to_string(),
                        None => match topic_name(&t.topic_id) {
                            Some(n) => n,
                            None => return true,
                        },
                    };
                    if !authz.topic(Operation::Describe, &name) {
                        return false;
                    }
                    let exists = broker.meta.read(|st| st.topics.contains_key(&name));
                    exists
                        || !auto_create
                        || authz.sees(
                            Operation::Create,
                            ResourceType::Cluster,
                            strata_security::acl::CLUSTER_NAME,
                        )
                        || authz.topic(Operation::Create, &name)
                });
            }
            let all_refused = specific && r.topics.as_ref().is_some_and(Vec::is_empty);
            let topic_ops = r.include_topic_authorized_operations;
            let cluster_ops = r.include_cluster_authorized_operations;
            (
                RequestKind::Metadata(r),
                after!(Metadata, |resp| {
                    if all_refused {
                        resp.topics.clear();
                    }
                    resp.topics.retain(|t| {
                        t.name
                            .as_ref()
                            .is_none_or(|n| a.sees(Operation::Describe, ResourceType::Topic, n))
                    });
                    if topic_ops {
                        for t in &mut resp.topics {
                            if let Some(n) = &t.name {
                                t.topic_authorized_operations =
                                    operations(&a, ResourceType::Topic, n);
                            }
                        }
                    }
                    if cluster_ops {
                        resp.cluster_authorized_operations = operations(
                            &a,
                            ResourceType::Cluster,
                            strata_security::acl::CLUSTER_NAME,
                        );
                    }
                    resp.topics.extend(refused.into_iter().map(|t| {
                        metadata_response::MetadataResponseTopic::default()
                            .with_name(t.name)
                            .with_topic_id(t.topic_id)
                            .with_error_code(TOPIC_DENIED)
                    }));
                }),
            )
        }
        RequestKind::CreateTopics(mut r) => {
            let cluster = authz.sees(
                Operation::Create,
                ResourceType::Cluster,
                strata_security::acl::CLUSTER_NAME,
            );
            let refused = split_off(&mut r.topics, |t| {
                cluster || authz.topic(Operation::Create, &t.name)
            });
            (
                RequestKind::CreateTopics(r),
                after!(CreateTopics, |resp| {
                    // A created topic's configs are shown only to who may describe them.
                    for t in &mut resp.topics {
                        if t.configs.is_some()
                            && !a.sees(Operation::DescribeConfigs, ResourceType::Topic, &t.name)
                        {
                            t.configs = None;
                            t.topic_config_error_code = TOPIC_DENIED;
                        }
                    }
                    resp.topics.extend(refused.into_iter().map(|t| {
                        create_topics_response::CreatableTopicResult::default()
                            .with_name(t.name)
                            .with_error_code(TOPIC_DENIED)
                            .with_num_partitions(-1)
                            .with_replication_factor(-1)
                    }))
                }),
            )
        }
        RequestKind::DeleteTopics(mut r) => {
            let refused_names =
                split_off(&mut r.topic_names, |n| authz.topic(Operation::Delete, n));
            let refused = split_off(&mut r.topics, |t| {
                let name = t
                    .name
                    .as_ref()
                    .map(|n| n.0.to_string())
                    .or_else(|| topic_name(&t.topic_id));
                name.is_none_or(|n| authz.topic(Operation::Delete, &n))
            });
            (
                RequestKind::DeleteTopics(r),
                after!(DeleteTopics, |resp| {
                    let entry = |name: Option<TopicName>, id: uuid::Uuid| {
                        delete_topics_response::DeletableTopicResult::default()
                            .with_name(name)
                            .with_topic_id(id)
                            .with_error_code(TOPIC_DENIED)
                    };
                    resp.responses.extend(
                        refused_names
                            .into_iter()
                            .map(|n| entry(Some(n), uuid::Uuid::nil())),
                    );
                    resp.responses
                        .extend(refused.into_iter().map(|t| entry(t.name, t.topic_id)));
                }),
            )
        }
        RequestKind::CreatePartitions(mut r) => {
            let refused = split_off(&mut r.topics, |t| authz.topic(Operation::Alter, &t.name));
            (
                RequestKind::CreatePartitions(r),
                after!(CreatePartitions, |resp| {
                    resp.results.extend(refused.into_iter().map(|t| {
                        create_partitions_response::CreatePartitionsTopicResult::default()
                            .with_name(t.name)
                            .with_error_code(TOPIC_DENIED)
                    }))
                }),
            )
        }
        RequestKind::DeleteRecords(mut r) => {
            let refused = split_off(&mut r.topics, |t| authz.topic(Operation::Delete, &t.name));
            (
                RequestKind::DeleteRecords(r),
                after!(DeleteRecords, |resp| {
                    resp.topics.extend(refused.into_iter().map(|t| {
                        delete_records_response::DeleteRecordsTopicResult::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        delete_records_response::DeleteRecordsPartitionResult::default()
                                            .with_partition_index(p.partition_index)
                                            .with_low_watermark(-1)
                                            .with_error_code(TOPIC_DENIED)
                                    })
                                    .collect(),
                            )
                    }))
                }),
            )
        }
        RequestKind::DescribeConfigs(r) => (
            RequestKind::DescribeConfigs(r),
            after!(DescribeConfigs, |resp| {
                for res in &mut resp.results {
                    if let Some(code) = config_refusal(
                        &a,
                        res.resource_type,
                        &res.resource_name,
                        Operation::DescribeConfigs,
                    ) {
                        res.error_code = code;
                        res.error_message = None;
                        res.configs.clear();
                    }
                }
            }),
        ),
        RequestKind::AlterConfigs(mut r) => {
            let refused = refused_configs(authz, &mut r.resources, |res| {
                (res.resource_type, res.resource_name.clone())
            });
            (
                RequestKind::AlterConfigs(r),
                after!(AlterConfigs, |resp| {
                    resp.responses
                        .extend(config_errors!(alter_configs_response, refused))
                }),
            )
        }
        RequestKind::IncrementalAlterConfigs(mut r) => {
            let refused = refused_configs(authz, &mut r.resources, |res| {
                (res.resource_type, res.resource_name.clone())
            });
            (
                RequestKind::IncrementalAlterConfigs(r),
                after!(IncrementalAlterConfigs, |resp| {
                    resp.responses
                        .extend(config_errors!(incremental_alter_configs_response, refused))
                }),
            )
        }
        RequestKind::FindCoordinator(r) => {
            let key_type = r.key_type;
            let single = r.key.clone();
            (
                RequestKind::FindCoordinator(r),
                after!(FindCoordinator, |resp| {
                    let refusal = |key: &str| match key_type {
                        0 if !a.group(Operation::Describe, key) => Some(GROUP_DENIED),
                        1 if !a.txn(Operation::Describe, key) => Some(TXN_DENIED),
                        _ => None,
                    };
                    if version < 4
                        && let Some(code) = refusal(&single)
                    {
                        resp.error_code = code;
                        resp.error_message = None;
                        resp.node_id = BrokerId(-1);
                        resp.host = StrBytes::default();
                        resp.port = -1;
                    }
                    for c in &mut resp.coordinators {
                        if let Some(code) = refusal(&c.key) {
                            c.error_code = code;
                            c.error_message = None;
                            c.node_id = BrokerId(-1);
                            c.host = StrBytes::default();
                            c.port = -1;
                        }
                    }
                }),
            )
        }
        RequestKind::JoinGroup(r) => {
            if !authz.group(Operation::Read, &r.group_id) {
                return refuse(ResponseKind::JoinGroup(
                    JoinGroupResponse::default()
                        .with_error_code(GROUP_DENIED)
                        .with_generation_id(-1),
                ));
            }
            (RequestKind::JoinGroup(r), None)
        }
        RequestKind::SyncGroup(r) => {
            if !authz.group(Operation::Read, &r.group_id) {
                return refuse(ResponseKind::SyncGroup(
                    SyncGroupResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            (RequestKind::SyncGroup(r), None)
        }
        RequestKind::Heartbeat(r) => {
            if !authz.group(Operation::Read, &r.group_id) {
                return refuse(ResponseKind::Heartbeat(
                    HeartbeatResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            (RequestKind::Heartbeat(r), None)
        }
        RequestKind::LeaveGroup(r) => {
            if !authz.group(Operation::Read, &r.group_id) {
                return refuse(ResponseKind::LeaveGroup(
                    LeaveGroupResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            (RequestKind::LeaveGroup(r), None)
        }
        RequestKind::OffsetCommit(mut r) => {
            if !authz.group(Operation::Read, &r.group_id) {
                let all = split_off(&mut r.topics, |_| false);
                return refuse(ResponseKind::OffsetCommit(
                    OffsetCommitResponse::default().with_topics(
                        all.into_iter()
                            .map(|t| {
                                offset_commit_topic(
                                    t.name,
                                    t.topic_id,
                                    t.partitions.iter().map(|p| p.partition_index),
                                    GROUP_DENIED,
                                )
                            })
                            .collect(),
                    ),
                ));
            }
            let refused = split_off(&mut r.topics, |t| {
                let name = match t.name.is_empty() {
                    true => topic_name(&t.topic_id),
                    false => Some(t.name.to_string()),
                };
                name.is_none_or(|n| authz.topic(Operation::Read, &n))
            });
            (
                RequestKind::OffsetCommit(r),
                after!(OffsetCommit, |resp| {
                    resp.topics.extend(refused.into_iter().map(|t| {
                        offset_commit_topic(
                            t.name,
                            t.topic_id,
                            t.partitions.iter().map(|p| p.partition_index),
                            TOPIC_DENIED,
                        )
                    }))
                }),
            )
        }
        RequestKind::OffsetFetch(mut r) => {
            if version < 8 {
                if !authz.group(Operation::Describe, &r.group_id) {
                    let partitions = r.topics.clone().unwrap_or_default();
                    return refuse(ResponseKind::OffsetFetch(
                        OffsetFetchResponse::default()
                            .with_error_code(GROUP_DENIED)
                            .with_topics(
                                partitions
                                    .into_iter()
                                    .map(|t| {
                                        offset_fetch_response::OffsetFetchResponseTopic::default()
                                            .with_name(t.name)
                                            .with_partitions(
                                                t.partition_indexes
                                                    .iter()
                                                    .map(|&p| {
                                                        offset_fetch_response::OffsetFetchResponsePartition::default()
                                                            .with_partition_index(p)
                                                            .with_committed_offset(-1)
                                                            .with_error_code(GROUP_DENIED)
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            ),
                    ));
                }
                let listed = r.topics.is_none();
                (
                    RequestKind::OffsetFetch(r),
                    after!(OffsetFetch, |resp| {
                        if listed {
                            resp.topics.retain(|t| {
                                a.sees(Operation::Describe, ResourceType::Topic, &t.name)
                            });
                        }
                        for t in &mut resp.topics {
                            if !a.topic(Operation::Describe, &t.name) {
                                for p in &mut t.partitions {
                                    p.error_code = TOPIC_DENIED;
                                    p.committed_offset = -1;
                                }
                            }
                        }
                    }),
                )
            } else {
                let refused = split_off(&mut r.groups, |g| {
                    authz.group(Operation::Describe, &g.group_id)
                });
                let listed: std::collections::HashSet<String> = r
                    .groups
                    .iter()
                    .filter(|g| g.topics.is_none())
                    .map(|g| g.group_id.to_string())
                    .collect();
                (
                    RequestKind::OffsetFetch(r),
                    after!(OffsetFetch, |resp| {
                        for g in &mut resp.groups {
                            if listed.contains(g.group_id.as_str()) {
                                g.topics.retain(|t| {
                                    a.sees(Operation::Describe, ResourceType::Topic, &t.name)
                                });
                            }
                            for t in &mut g.topics {
                                if !a.topic(Operation::Describe, &t.name) {
                                    for p in &mut t.partitions {
                                        p.error_code = TOPIC_DENIED;
                                        p.committed_offset = -1;
                                    }
                                }
                            }
                        }
                        resp.groups.extend(refused.into_iter().map(|g| {
                            offset_fetch_response::OffsetFetchResponseGroup::default()
                                .with_group_id(g.group_id)
                                .with_error_code(GROUP_DENIED)
                        }));
                    }),
                )
            }
        }
        RequestKind::OffsetDelete(mut r) => {
            if !authz.group(Operation::Delete, &r.group_id) {
                return refuse(ResponseKind::OffsetDelete(
                    OffsetDeleteResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            let refused = split_off(&mut r.topics, |t| authz.topic(Operation::Read, &t.name));
            (
                RequestKind::OffsetDelete(r),
                after!(OffsetDelete, |resp| {
                    resp.topics.extend(refused.into_iter().map(|t| {
                        offset_delete_response::OffsetDeleteResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_delete_response::OffsetDeleteResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(TOPIC_DENIED)
                                    })
                                    .collect(),
                            )
                    }))
                }),
            )
        }
        RequestKind::ListGroups(r) => (
            RequestKind::ListGroups(r),
            after!(ListGroups, |resp| {
                if !a.sees(
                    Operation::Describe,
                    ResourceType::Cluster,
                    strata_security::acl::CLUSTER_NAME,
                ) {
                    resp.groups
                        .retain(|g| a.sees(Operation::Describe, ResourceType::Group, &g.group_id));
                }
            }),
        ),
        RequestKind::DescribeGroups(r) => (
            RequestKind::DescribeGroups(r),
            after!(DescribeGroups, |resp| {
                for g in &mut resp.groups {
                    if !a.group(Operation::Describe, &g.group_id) {
                        *g = describe_groups_response::DescribedGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(GROUP_DENIED)
                            .with_authorized_operations(i32::MIN);
                    }
                }
            }),
        ),
        RequestKind::DeleteGroups(mut r) => {
            let refused = split_off(&mut r.groups_names, |g| authz.group(Operation::Delete, g));
            (
                RequestKind::DeleteGroups(r),
                after!(DeleteGroups, |resp| {
                    resp.results.extend(refused.into_iter().map(|g| {
                        delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(g)
                            .with_error_code(GROUP_DENIED)
                    }))
                }),
            )
        }
        RequestKind::InitProducerId(r) => {
            // An empty transactional id is an idempotent producer's (as the handler
            // treats it), checked as one.
            let txn_id = r.transactional_id.as_ref().filter(|id| !id.is_empty());
            let allowed = match txn_id {
                Some(id) => authz.txn(Operation::Write, id),
                None => {
                    authz.sees(
                        Operation::IdempotentWrite,
                        ResourceType::Cluster,
                        strata_security::acl::CLUSTER_NAME,
                    ) || authz.any_topic(Operation::Write)
                        || authz.cluster(Operation::IdempotentWrite)
                }
            };
            if !allowed {
                let code = if txn_id.is_some() {
                    TXN_DENIED
                } else {
                    CLUSTER_DENIED
                };
                return refuse(ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ));
            }
            (RequestKind::InitProducerId(r), None)
        }
        RequestKind::DescribeProducers(r) => (
            RequestKind::DescribeProducers(r),
            after!(DescribeProducers, |resp| {
                for t in &mut resp.topics {
                    if !a.topic(Operation::Read, &t.name) {
                        for p in &mut t.partitions {
                            p.error_code = TOPIC_DENIED;
                            p.error_message = None;
                            p.active_producers.clear();
                        }
                    }
                }
            }),
        ),
        RequestKind::AddPartitionsToTxn(r) => {
            if version >= 4 {
                if !authz.cluster(Operation::ClusterAction) {
                    return refuse(ResponseKind::AddPartitionsToTxn(
                        AddPartitionsToTxnResponse::default().with_error_code(CLUSTER_DENIED),
                    ));
                }
                return Ok((RequestKind::AddPartitionsToTxn(r), None));
            }
            let txn_ok = authz.txn(Operation::Write, &r.v3_and_below_transactional_id);
            let denied: Vec<bool> = r
                .v3_and_below_topics
                .iter()
                .map(|t| !txn_ok || !authz.topic(Operation::Write, &t.name))
                .collect();
            if !txn_ok || denied.iter().any(|d| *d) {
                // As Kafka: nothing is added; refused partitions say why, the others
                // OPERATION_NOT_ATTEMPTED.
                let results = r
                    .v3_and_below_topics
                    .iter()
                    .zip(&denied)
                    .map(|(t, &d)| {
                        let code = match (txn_ok, d) {
                            (false, _) => TXN_DENIED,
                            (true, true) => TOPIC_DENIED,
                            (true, false) => ResponseError::OperationNotAttempted.code(),
                        };
                        add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                            .with_name(t.name.clone())
                            .with_results_by_partition(
                                t.partitions
                                    .iter()
                                    .map(|&p| {
                                        add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                            .with_partition_index(p)
                                            .with_partition_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return refuse(ResponseKind::AddPartitionsToTxn(
                    AddPartitionsToTxnResponse::default()
                        .with_results_by_topic_v3_and_below(results),
                ));
            }
            (RequestKind::AddPartitionsToTxn(r), None)
        }
        RequestKind::AddOffsetsToTxn(r) => {
            let code = if !authz.txn(Operation::Write, &r.transactional_id) {
                Some(TXN_DENIED)
            } else if !authz.group(Operation::Read, &r.group_id) {
                Some(GROUP_DENIED)
            } else {
                None
            };
            if let Some(code) = code {
                return refuse(ResponseKind::AddOffsetsToTxn(
                    AddOffsetsToTxnResponse::default().with_error_code(code),
                ));
            }
            (RequestKind::AddOffsetsToTxn(r), None)
        }
        RequestKind::TxnOffsetCommit(mut r) => {
            let whole = if !authz.txn(Operation::Write, &r.transactional_id) {
                Some(TXN_DENIED)
            } else if !authz.group(Operation::Read, &r.group_id) {
                Some(GROUP_DENIED)
            } else {
                None
            };
            let refused = match whole {
                Some(_) => split_off(&mut r.topics, |_| false),
                None => split_off(&mut r.topics, |t| authz.topic(Operation::Read, &t.name)),
            };
            let entries: Vec<_> = refused
                .into_iter()
                .map(|t| {
                    txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(whole.unwrap_or(TOPIC_DENIED))
                                })
                                .collect(),
                        )
                })
                .collect();
            if whole.is_some() {
                return refuse(ResponseKind::TxnOffsetCommit(
                    TxnOffsetCommitResponse::default().with_topics(entries),
                ));
            }
            (
                RequestKind::TxnOffsetCommit(r),
                after!(TxnOffsetCommit, |resp| { resp.topics.extend(entries) }),
            )
        }
        RequestKind::EndTxn(r) => {
            if !authz.txn(Operation::Write, &r.transactional_id) {
                return refuse(ResponseKind::EndTxn(
                    EndTxnResponse::default()
                        .with_error_code(TXN_DENIED)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ));
            }
            (RequestKind::EndTxn(r), None)
        }
        RequestKind::WriteTxnMarkers(r) => {
            if !authz.cluster(Operation::ClusterAction) {
                let markers = r
                    .markers
                    .iter()
                    .map(|m| {
                        write_txn_markers_response::WritableTxnMarkerResult::default()
                            .with_producer_id(m.producer_id)
                            .with_topics(
                                m.topics
                                    .iter()
                                    .map(|t| {
                                        write_txn_markers_response::WritableTxnMarkerTopicResult::default()
                                            .with_name(t.name.clone())
                                            .with_partitions(
                                                t.partition_indexes
                                                    .iter()
                                                    .map(|&p| {
                                                        write_txn_markers_response::WritableTxnMarkerPartitionResult::default()
                                                            .with_partition_index(p)
                                                            .with_error_code(CLUSTER_DENIED)
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return refuse(ResponseKind::WriteTxnMarkers(
                    WriteTxnMarkersResponse::default().with_markers(markers),
                ));
            }
            (RequestKind::WriteTxnMarkers(r), None)
        }
        RequestKind::DescribeTransactions(r) => (
            RequestKind::DescribeTransactions(r),
            after!(DescribeTransactions, |resp| {
                for t in &mut resp.transaction_states {
                    t.topics
                        .retain(|d| a.sees(Operation::Describe, ResourceType::Topic, &d.topic));
                    if !a.txn(Operation::Describe, &t.transactional_id) {
                        *t = describe_transactions_response::TransactionState::default()
                            .with_transactional_id(t.transactional_id.clone())
                            .with_error_code(TXN_DENIED)
                            .with_producer_id(ProducerId(-1))
                            .with_producer_epoch(-1);
                    }
                }
            }),
        ),
        RequestKind::ListTransactions(r) => (
            RequestKind::ListTransactions(r),
            after!(ListTransactions, |resp| {
                resp.transaction_states.retain(|t| {
                    a.sees(
                        Operation::Describe,
                        ResourceType::TransactionalId,
                        &t.transactional_id,
                    )
                });
            }),
        ),
        RequestKind::DescribeCluster(r) => {
            if !authz.cluster(Operation::Describe) {
                return refuse(ResponseKind::DescribeCluster(
                    DescribeClusterResponse::default()
                        .with_error_code(CLUSTER_DENIED)
                        .with_controller_id(BrokerId(-1)),
                ));
            }
            (RequestKind::DescribeCluster(r), None)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            let follower = r.replica_id.0 >= 0;
            let cluster = !follower || authz.cluster(Operation::ClusterAction);
            (
                RequestKind::OffsetForLeaderEpoch(r),
                after!(OffsetForLeaderEpoch, |resp| {
                    for t in &mut resp.topics {
                        let code = match (cluster, follower) {
                            (false, _) => Some(CLUSTER_DENIED),
                            (true, false) if !a.topic(Operation::Describe, &t.topic) => {
                                Some(TOPIC_DENIED)
                            }
                            _ => None,
                        };
                        if let Some(code) = code {
                            for p in &mut t.partitions {
                                p.error_code = code;
                                p.leader_epoch = -1;
                                p.end_offset = -1;
                            }
                        }
                    }
                }),
            )
        }
        RequestKind::DescribeLogDirs(r) => {
            if !authz.cluster(Operation::Describe) {
                return refuse(ResponseKind::DescribeLogDirs(
                    DescribeLogDirsResponse::default().with_error_code(CLUSTER_DENIED),
                ));
            }
            (RequestKind::DescribeLogDirs(r), None)
        }
        RequestKind::ElectLeaders(r) => {
            if !authz.cluster(Operation::Alter) {
                return refuse(ResponseKind::ElectLeaders(
                    ElectLeadersResponse::default().with_error_code(CLUSTER_DENIED),
                ));
            }
            (RequestKind::ElectLeaders(r), None)
        }
        RequestKind::DescribeUserScramCredentials(r) => {
            if !authz.cluster(Operation::Describe) {
                return refuse(ResponseKind::DescribeUserScramCredentials(
                    DescribeUserScramCredentialsResponse::default().with_error_code(CLUSTER_DENIED),
                ));
            }
            (RequestKind::DescribeUserScramCredentials(r), None)
        }
        RequestKind::AlterUserScramCredentials(r) => {
            if !authz.cluster(Operation::Alter) {
                let users: std::collections::BTreeSet<StrBytes> = r
                    .deletions
                    .iter()
                    .map(|d| d.name.clone())
                    .chain(r.upsertions.iter().map(|u| u.name.clone()))
                    .collect();
                return refuse(ResponseKind::AlterUserScramCredentials(
                    AlterUserScramCredentialsResponse::default().with_results(
                        users
                            .into_iter()
                            .map(|u| {
                                alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                                    .with_user(u)
                                    .with_error_code(CLUSTER_DENIED)
                            })
                            .collect(),
                    ),
                ));
            }
            (RequestKind::AlterUserScramCredentials(r), None)
        }
        // ApiVersions, the SASL APIs and the ACL APIs (which check for themselves).
        other => (other, None),
    })
}

fn refuse<T>(resp: ResponseKind) -> Result<T, Refused> {
    Err(Refused::Respond(Box::new(resp)))
}

fn refuse_produce(
    acks: i16,
    topics: Vec<produce_request::TopicProduceData>,
    code: i16,
) -> Result<(RequestKind, Option<After>), Refused> {
    if acks == 0 {
        return Err(Refused::Close(
            "acks=0 transactional produce the principal may not make".into(),
        ));
    }
    refuse(ResponseKind::Produce(
        ProduceResponse::default().with_responses(produce_errors(topics, code)),
    ))
}

fn produce_errors(
    topics: Vec<produce_request::TopicProduceData>,
    code: i16,
) -> Vec<produce_response::TopicProduceResponse> {
    topics
        .into_iter()
        .map(|t| {
            produce_response::TopicProduceResponse::default()
                .with_name(t.name)
                .with_topic_id(t.topic_id)
                .with_partition_responses(
                    t.partition_data
                        .iter()
                        .map(|p| {
                            produce_response::PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(code)
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1)
                        })
                        .collect(),
                )
        })
        .collect()
}

fn offset_commit_topic(
    name: TopicName,
    id: uuid::Uuid,
    partitions: impl Iterator<Item = i32>,
    code: i16,
) -> offset_commit_response::OffsetCommitResponseTopic {
    offset_commit_response::OffsetCommitResponseTopic::default()
        .with_name(name)
        .with_topic_id(id)
        .with_partitions(
            partitions
                .map(|p| {
                    offset_commit_response::OffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(code)
                })
                .collect(),
        )
}

/// DescribeConfigs' and AlterConfigs' resource types: 2 topic, 4 broker, 8 broker logger.
fn config_refusal(authz: &Authz, resource_type: i8, name: &str, op: Operation) -> Option<i16> {
    match resource_type {
        2 if !authz.topic(op, name) => Some(TOPIC_DENIED),
        4 | 8 if !authz.cluster(op) => Some(CLUSTER_DENIED),
        _ => None,
    }
}

/// Takes the resources the principal may not alter out of an (Incremental)AlterConfigs
/// request: their (type, name).
fn refused_configs<R>(
    authz: &Authz,
    resources: &mut Vec<R>,
    key: impl Fn(&R) -> (i8, StrBytes),
) -> Vec<(i8, StrBytes)> {
    split_off(resources, |res| {
        let (t, n) = key(res);
        config_refusal(authz, t, &n, Operation::AlterConfigs).is_none()
    })
    .iter()
    .map(key)
    .collect()
}

/// The response entries of refused configs, in the response module `$m`.
macro_rules! config_errors {
    ($m:ident, $refused:expr) => {
        $refused.into_iter().map(|(t, n)| {
            $m::AlterConfigsResourceResponse::default()
                .with_error_code(refusal_code(t))
                .with_resource_type(t)
                .with_resource_name(n)
        })
    };
}
use config_errors;

fn refusal_code(resource_type: i8) -> i16 {
    match resource_type {
        2 => TOPIC_DENIED,
        _ => CLUSTER_DENIED,
    }
}

/// The bit field of operations the principal may do on a resource (Metadata's
/// `*_authorized_operations`): bit N set for the operation with code N.
fn operations(authz: &Authz, rt: ResourceType, name: &str) -> i32 {
    let ops: &[Operation] = match rt {
        ResourceType::Topic => &[
            Operation::Read,
            Operation::Write,
            Operation::Create,
            Operation::Delete,
            Operation::Alter,
            Operation::Describe,
            Operation::DescribeConfigs,
            Operation::AlterConfigs,
        ],
        _ => &[
            Operation::Create,
            Operation::Alter,
            Operation::Describe,
            Operation::ClusterAction,
            Operation::DescribeConfigs,
            Operation::AlterConfigs,
            Operation::IdempotentWrite,
        ],
    };
    ops.iter()
        .filter(|op| authz.sees(**op, rt, name))
        .fold(0, |bits, op| bits | (1 << op.code()))
}
