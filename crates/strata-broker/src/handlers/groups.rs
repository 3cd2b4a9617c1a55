//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, OffsetDelete, ListGroups, DescribeGroups, DeleteGroups.
//! Wire structs are converted to the coordinator's own types here.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use strata_meta::{Command, CommittedOffset, OffsetCommit};
use tokio::sync::oneshot;

use super::RequestCtx;
use crate::broker::Broker;
use crate::errors;
use crate::groups::coordinator::{JoinRequest, JoinResponse, Reply, SyncRequest, SyncResponse};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
}

/// Waits for a coordinator reply, giving up with COORDINATOR_NOT_AVAILABLE at shutdown.
async fn wait<T>(broker: &Broker, reply: Reply<T>, on_shutdown: impl FnOnce() -> T) -> T {
    match reply {
        Reply::Now(r) => r,
        Reply::Later(rx) => {
            let rx: oneshot::Receiver<T> = rx;
            tokio::select! {
                r = rx => r.unwrap_or_else(|_| on_shutdown()),
                () = broker.shutdown.cancelled() => on_shutdown(),
            }
        }
    }
}

pub(super) fn find_coordinator(
    broker: &Arc<Broker>,
    req: FindCoordinatorRequest,
    version: i16,
    ctx: &RequestCtx,
) -> FindCoordinatorResponse {
    // Key type 0 is a consumer group, 1 a transactional id (both placed by the same hash
    // over the live brokers); share groups (2) do not exist here.
    let answer = |key: &StrBytes| -> Coordinator {
        let c = Coordinator::default().with_key(key.clone());
        if req.key_type == 0 || req.key_type == 1 {
            let found = broker
                .coordinator_of(key, |b| {
                    let (host, port) = b.endpoint_for(&ctx.listener.name)?;
                    Some((b.node_id, host.to_string(), port))
                })
                .flatten();
            match found {
                Some((id, host, port)) => c
                    .with_node_id(BrokerId(id))
                    .with_host(s(&host))
                    .with_port(i32::from(port)),
                None => c
                    .with_node_id(BrokerId(-1))
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
            }
        } else {
            c.with_node_id(BrokerId(-1))
                .with_error_code(ResponseError::InvalidRequest.code())
                .with_error_message(Some(s(
                    "only consumer-group and transaction coordinators exist",
                )))
        }
    };
    if version >= 4 {
        return FindCoordinatorResponse::default()
            .with_coordinators(req.coordinator_keys.iter().map(answer).collect());
    }
    let c = answer(&req.key);
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(c.error_message)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}

pub(super) async fn join(
    broker: &Arc<Broker>,
    req: JoinGroupRequest,
    version: i16,
    ctx: &RequestCtx,
) -> JoinGroupResponse {
    let join = JoinRequest {
        group_id: req.group_id.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = join.member_id.clone();
    if let Some(e) = broker.not_coordinator(&join.group_id) {
        return JoinGroupResponse::default()
            .with_error_code(e.code())
            .with_member_id(req.member_id);
    }
    let reply = broker.groups.join(join, broker.now_ms());
    let r: JoinResponse = wait(broker, reply, || JoinResponse {
        error: Some(ResponseError::CoordinatorNotAvailable),
        generation: -1,
        protocol_type: None,
        protocol_name: None,
        leader: String::new(),
        member_id,
        members: Vec::new(),
        skip_assignment: false,
    })
    .await;
    broker.publish_group_metrics();
    JoinGroupResponse::default()
        .with_error_code(code(r.error))
        .with_generation_id(r.generation)
        .with_protocol_type(r.protocol_type.as_deref().map(s))
        .with_protocol_name(
            r.protocol_name
                .as_deref()
                .map(s)
                .or_else(|| (version < 7).then(StrBytes::new)),
        )
        .with_leader(s(&r.leader))
        .with_skip_assignment(r.skip_assignment && version >= 9)
        .with_member_id(s(&r.member_id))
        .with_members(
            r.members
                .iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(&m.member_id))
                        .with_group_instance_id(m.instance_id.as_deref().map(s))
                        .with_metadata(m.metadata.clone())
                })
                .collect(),
        )
}

pub(super) async fn sync(
    broker: &Arc<Broker>,
    req: SyncGroupRequest,
    _version: i16,
) -> SyncGroupResponse {
    let sync = SyncRequest {
        group_id: req.group_id.to_string(),
        generation: req.generation_id,
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|i| i.to_string()),
        protocol_type: req.protocol_type.as_ref().map(|p| p.to_string()),
        protocol_name: req.protocol_name.as_ref().map(|p| p.to_string()),
        assignments: req
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    if let Some(e) = broker.not_coordinator(&sync.group_id) {
        return SyncGroupResponse::default().with_error_code(e.code());
    }
    let reply = broker.groups.sync(sync, broker.now_ms());
    let r: SyncResponse = wait(broker, reply, || SyncResponse {
        error: Some(ResponseError::CoordinatorNotAvailable),
        protocol_type: None,
        protocol_name: None,
        assignment: Default::default(),
    })
    .await;
    SyncGroupResponse::default()
        .with_error_code(code(r.error))
        .with_protocol_type(r.protocol_type.as_deref().map(s))
        .with_protocol_name(r.protocol_name.as_deref().map(s))
        .with_assignment(r.assignment)
}

pub(super) fn heartbeat(broker: &Arc<Broker>, req: HeartbeatRequest) -> HeartbeatResponse {
    if let Some(e) = broker.not_coordinator(&req.group_id) {
        return HeartbeatResponse::default().with_error_code(e.code());
    }
    let e = broker.groups.heartbeat(
        &req.group_id,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
        broker.now_ms(),
    );
    HeartbeatResponse::default().with_error_code(code(e))
}

pub(super) fn leave(
    broker: &Arc<Broker>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|i| i.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    if let Some(e) = broker.not_coordinator(&req.group_id) {
        return LeaveGroupResponse::default().with_error_code(e.code());
    }
    let result = broker
        .groups
        .leave(&req.group_id, &members, broker.now_ms());
    broker.publish_group_metrics();
    match result {
        Err(e) => LeaveGroupResponse::default().with_error_code(e.code()),
        Ok(results) if version < 3 => {
            LeaveGroupResponse::default().with_error_code(code(results.first().copied().flatten()))
        }
        Ok(results) => LeaveGroupResponse::default().with_members(
            members
                .iter()
                .zip(results)
                .map(|((id, instance), e)| {
                    MemberResponse::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(instance.as_deref().map(s))
                        .with_error_code(code(e))
                })
                .collect(),
        ),
    }
}

pub(super) async fn offset_commit(
    broker: &Arc<Broker>,
    req: OffsetCommitRequest,
    _version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.to_string();
    let allowed = match broker.not_coordinator(&group) {
        Some(e) => Err(e),
        None => broker.groups.validate_commit(
            &group,
            req.generation_id_or_member_epoch,
            &req.member_id,
            req.group_instance_id.as_deref(),
        ),
    };
    let now = broker.now_ms();
    let max_metadata = broker.config.offset_metadata_max_bytes();
    let protocol_type = broker.groups.protocol_type(&group).unwrap_or_default();
    // Per partition: Ok(commit) to store, or the error to answer with.
    // Per topic, per partition: the offset to store, or the error to answer with.
    type Outcome = Vec<(TopicName, Vec<(i32, Result<OffsetCommit, ResponseError>)>)>;
    let mut outcome: Outcome = Vec::new();
    for t in &req.topics {
        let topic = broker.topic(&t.name);
        let parts = t
            .partitions
            .iter()
            .map(|p| {
                let metadata = p.committed_metadata.as_deref().unwrap_or_default();
                let r = match (&allowed, &topic) {
                    (Err(e), _) => Err(*e),
                    (_, None) => Err(ResponseError::UnknownTopicOrPartition),
                    (_, Some(tm))
                        if usize::try_from(p.partition_index)
                            .map_or(true, |i| i >= tm.partitions.len()) =>
                    {
                        Err(ResponseError::UnknownTopicOrPartition)
                    }
                    _ if metadata.len() > max_metadata => {
                        Err(ResponseError::OffsetMetadataTooLarge)
                    }
                    _ => Ok(OffsetCommit {
                        group: group.clone(),
                        topic: t.name.to_string(),
                        partition: p.partition_index,
                        committed: CommittedOffset {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: metadata.to_string(),
                            commit_timestamp_ms: now,
                        },
                        protocol_type: protocol_type.clone(),
                    }),
                };
                (p.partition_index, r)
            })
            .collect();
        outcome.push((t.name.clone(), parts));
    }
    let commits: Vec<OffsetCommit> = outcome
        .iter()
        .flat_map(|(_, parts)| parts.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()))
        .collect();
    let stored = if commits.is_empty() {
        Ok(())
    } else {
        broker.offsets.commit(commits).await
    };
    OffsetCommitResponse::default().with_topics(
        outcome
            .into_iter()
            .map(|(name, parts)| {
                OffsetCommitResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(index, r)| {
                                let e = match r {
                                    Ok(_) => stored.err(),
                                    Err(e) => Some(e),
                                };
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(code(e))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// The committed offsets of one group for the requested topics (all if `None`):
/// topic → [(partition, offset or -1, leader epoch, metadata)].
type Fetched = Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>;

fn fetch_offsets(broker: &Broker, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> Fetched {
    broker.meta.read(|st| {
        let committed = st.groups.get(group);
        match topics {
            Some(wanted) => wanted
                .into_iter()
                .map(|(topic, parts)| {
                    let have = committed.and_then(|g| g.get(&topic));
                    let rows = parts
                        .into_iter()
                        .map(|p| (p, have.and_then(|h| h.get(&p)).cloned()))
                        .collect();
                    (topic, rows)
                })
                .collect(),
            None => committed
                .map(|g| {
                    g.iter()
                        .map(|(topic, parts)| {
                            (
                                topic.clone(),
                                parts.iter().map(|(p, c)| (*p, Some(c.clone()))).collect(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    })
}

fn committed_fields(c: &Option<CommittedOffset>) -> (i64, i32, StrBytes) {
    match c {
        Some(c) => (c.offset, c.leader_epoch, s(&c.metadata)),
        None => (-1, -1, StrBytes::new()),
    }
}

/// For a fetch with `require_stable` (KIP-447): `UNSTABLE_OFFSET_COMMIT` while an open or
/// committing transaction holds an offset of `group` for `topic`-`partition`, which the
/// consumer retries until the transaction ends (else it would start from the offset the
/// transaction is replacing, and process its records again).
fn stability(broker: &Broker, required: bool, group: &str, topic: &str, partition: i32) -> i16 {
    use strata_meta::TxnState::{Ongoing, PrepareCommit};
    let pending = required
        && broker.meta.read(|s| {
            s.transactions.values().any(|t| {
                matches!(t.state, Ongoing | PrepareCommit)
                    && t.offsets
                        .iter()
                        .any(|o| o.group == group && o.topic == topic && o.partition == partition)
            })
        });
    if pending {
        ResponseError::UnstableOffsetCommit.code()
    } else {
        0
    }
}

pub(super) fn offset_fetch(
    broker: &Arc<Broker>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let stable = req.require_stable;
    if version >= 8 {
        let groups = req
            .groups
            .into_iter()
            .map(|g| {
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.to_string(), t.partition_indexes))
                        .collect()
                });
                let fetched = fetch_offsets(broker, &g.group_id, topics);
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(
                        fetched
                            .into_iter()
                            .map(|(topic, rows)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(s(&topic)))
                                    .with_partitions(
                                        rows.into_iter()
                                            .map(|(p, c)| {
                                                let (offset, epoch, metadata) =
                                                    committed_fields(&c);
                                                let code = stability(
                                                    broker,
                                                    stable,
                                                    &g.group_id,
                                                    &topic,
                                                    p,
                                                );
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_error_code(code)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(metadata))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.to_string(), t.partition_indexes))
            .collect()
    });
    let fetched = fetch_offsets(broker, &req.group_id, topics);
    OffsetFetchResponse::default().with_topics(
        fetched
            .into_iter()
            .map(|(topic, rows)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(s(&topic)))
                    .with_partitions(
                        rows.into_iter()
                            .map(|(p, c)| {
                                let (offset, epoch, metadata) = committed_fields(&c);
                                let code = stability(broker, stable, &req.group_id, &topic, p);
                                let part = OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                                    .with_committed_offset(offset)
                                    .with_metadata(Some(metadata));
                                if version >= 5 {
                                    part.with_committed_leader_epoch(epoch)
                                } else {
                                    part
                                }
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn has_offsets(broker: &Broker, group: &str) -> bool {
    broker.meta.read(|st| st.groups.contains_key(group))
}

pub(super) async fn offset_delete(
    broker: &Arc<Broker>,
    req: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group = req.group_id.to_string();
    if let Some(e) = broker.not_coordinator(&group) {
        return OffsetDeleteResponse::default().with_error_code(e.code());
    }
    if !broker.groups.is_active(&group) && !has_offsets(broker, &group) {
        return OffsetDeleteResponse::default()
            .with_error_code(ResponseError::GroupIdNotFound.code());
    }
    let subscribed = broker.groups.subscribed_topics(&group);
    if broker.groups.is_active(&group) && subscribed.is_none() {
        return OffsetDeleteResponse::default()
            .with_error_code(ResponseError::NonEmptyGroup.code());
    }
    let mut doomed = Vec::new();
    let mut topics = Vec::new();
    for t in &req.topics {
        let busy = subscribed
            .as_ref()
            .is_some_and(|s| s.contains(t.name.as_str()));
        let exists = broker.topic(&t.name).is_some();
        let parts = t
            .partitions
            .iter()
            .map(|p| {
                let e = if busy {
                    Some(ResponseError::GroupSubscribedToTopic)
                } else if !exists {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else {
                    doomed.push((t.name.to_string(), p.partition_index));
                    None
                };
                OffsetDeleteResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code(e))
            })
            .collect();
        topics.push(
            OffsetDeleteResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(parts),
        );
    }
    if !doomed.is_empty()
        && let Err(e) = broker
            .meta
            .write(Command::DeleteOffsets {
                group,
                partitions: doomed,
            })
            .await
    {
        return OffsetDeleteResponse::default().with_error_code(errors::meta_error(&e).code());
    }
    OffsetDeleteResponse::default().with_topics(topics)
}

/// Every group: those with members (from the coordinator) and those with only committed
/// offsets (`Empty`): (id, protocol type, state name).
fn all_groups(broker: &Broker) -> Vec<(String, String, &'static str)> {
    let mut out: BTreeMap<String, (String, &'static str)> = broker.meta.read(|st| {
        st.groups
            .keys()
            .map(|g| {
                let protocol_type = st.group_protocol_types.get(g).cloned().unwrap_or_default();
                (g.clone(), (protocol_type, "Empty"))
            })
            .collect()
    });
    for (id, protocol_type, state) in broker.groups.list() {
        out.insert(id, (protocol_type, state.name()));
    }
    out.into_iter().map(|(id, (t, st))| (id, t, st)).collect()
}

pub(super) fn list_groups(
    broker: &Arc<Broker>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = all_groups(broker)
        .into_iter()
        .filter(|(_, _, st)| states.is_empty() || states.contains(&st.to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, protocol_type, st)| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(s(&id)))
                .with_protocol_type(s(&protocol_type));
            let g = if version >= 4 {
                g.with_group_state(s(st))
            } else {
                g
            };
            if version >= 5 {
                g.with_group_type(s("classic"))
            } else {
                g
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub(super) fn describe_groups(
    broker: &Arc<Broker>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            let d = DescribedGroup::default().with_group_id(id.clone());
            match broker.groups.describe(&id) {
                Some(desc) => d
                    .with_group_state(s(desc.state.name()))
                    .with_protocol_type(s(&desc.protocol_type))
                    .with_protocol_data(s(&desc.protocol_name))
                    .with_members(
                        desc.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(&m.member_id))
                                    .with_group_instance_id(m.instance_id.as_deref().map(s))
                                    .with_client_id(s(&m.client_id))
                                    .with_client_host(s(&m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
                None if has_offsets(broker, &id) => d
                    .with_group_state(s("Empty"))
                    .with_protocol_type(s(&broker.meta.read(|st| {
                        st.group_protocol_types
                            .get(id.as_str())
                            .cloned()
                            .unwrap_or_default()
                    }))),
                None if version >= 6 => d
                    .with_group_state(s("Dead"))
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(Some(s(&format!(
                        "group {:?} does not exist",
                        id.as_str()
                    )))),
                None => d.with_group_state(s("Dead")),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(super) async fn delete_groups(
    broker: &Arc<Broker>,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for id in req.groups_names {
        let e = if broker.groups.is_active(&id) {
            Some(ResponseError::NonEmptyGroup)
        } else if !has_offsets(broker, &id) && broker.groups.describe(&id).is_none() {
            Some(ResponseError::GroupIdNotFound)
        } else {
            match broker
                .meta
                .write(Command::DeleteGroupOffsets {
                    group: id.to_string(),
                })
                .await
            {
                Ok(_) => broker.groups.delete(&id).err(),
                Err(e) => Some(errors::meta_error(&e)),
            }
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(code(e)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
