//! ElectLeaders: preferred and unclean leader elections asked for by Kafka admin tools
//! (`kafka-leader-election.sh`, `AdminClient.elect_leaders`). Which leader a partition
//! gets is the controller's decision ([`strata_meta::election`]); this handler only
//! names the partitions and reports each outcome with Kafka's error codes.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use strata_meta::{CommandResult, Election, NoElection};
use uuid::Uuid;

use crate::broker::Broker;
use crate::errors;

/// A decision made on a partition epoch that changed before it was committed is made
/// again on the new state, this many times.
const ATTEMPTS: usize = 3;

pub(super) async fn elect_leaders(
    broker: &Arc<Broker>,
    req: ElectLeadersRequest,
    version: i16,
) -> ElectLeadersResponse {
    let kind = match (version, req.election_type) {
        (0, _) | (_, 0) => Election::Preferred,
        (_, 1) => Election::Unclean,
        (_, other) => {
            tracing::debug!(
                election_type = other,
                "ElectLeaders with an unknown election type"
            );
            return ElectLeadersResponse::default()
                .with_error_code(ResponseError::InvalidRequest.code());
        }
    };
    // No list: every partition (Kafka then reports only those it elected for).
    let all = req.topic_partitions.is_none();
    let wanted: Vec<(String, Vec<i32>)> = match req.topic_partitions {
        Some(list) => list
            .into_iter()
            .map(|t| (t.topic.to_string(), t.partitions))
            .collect(),
        None => broker.meta.read(|s| {
            s.topics
                .values()
                .map(|t| (t.name.clone(), (0..t.partitions.len() as i32).collect()))
                .collect()
        }),
    };
    let mut results = Vec::with_capacity(wanted.len());
    for (topic, partitions) in wanted {
        let id = broker.meta.read(|s| s.topics.get(&topic).map(|t| t.id));
        let mut out = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let outcome = match id {
                Some(id) => elect(broker, id, partition, kind).await,
                None => Err((
                    ResponseError::UnknownTopicOrPartition,
                    "unknown topic".into(),
                )),
            };
            let result = PartitionResult::default().with_partition_id(partition);
            match outcome {
                Ok(()) => out.push(result),
                Err((ResponseError::ElectionNotNeeded, _)) if all => {}
                Err((code, message)) => out.push(
                    result
                        .with_error_code(code.code())
                        .with_error_message(Some(StrBytes::from_string(message))),
                ),
            }
        }
        if !out.is_empty() {
            results.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(StrBytes::from_string(topic)))
                    .with_partition_result(out),
            );
        }
    }
    ElectLeadersResponse::default().with_replica_election_results(results)
}

async fn elect(
    broker: &Broker,
    topic_id: Uuid,
    partition: i32,
    kind: Election,
) -> Result<(), (ResponseError, String)> {
    for _ in 0..ATTEMPTS {
        let cmd = broker
            .meta
            .read(|s| strata_meta::election(s, topic_id, partition, kind))
            .map_err(refused)?;
        match broker.meta.write(cmd).await {
            Ok(CommandResult::PartitionEpoch(_)) => return Ok(()),
            Ok(CommandResult::StalePartition { .. }) => continue,
            Ok(other) => {
                return Err((
                    ResponseError::UnknownServerError,
                    format!("unexpected result {other:?}"),
                ));
            }
            Err(e) => return Err((errors::meta_error(&e), e.to_string())),
        }
    }
    Err((
        ResponseError::PreferredLeaderNotAvailable,
        "the partition's leadership kept changing; try again".into(),
    ))
}

fn refused(why: NoElection) -> (ResponseError, String) {
    let (code, message) = match why {
        NoElection::UnknownPartition => {
            (ResponseError::UnknownTopicOrPartition, "unknown partition")
        }
        NoElection::NotNeeded => (
            ResponseError::ElectionNotNeeded,
            "the partition already has that leader",
        ),
        NoElection::PreferredNotAvailable => (
            ResponseError::PreferredLeaderNotAvailable,
            "the preferred replica is not alive or not in sync",
        ),
        NoElection::NoEligibleLeader => (
            ResponseError::EligibleLeadersNotAvailable,
            "no replica of the partition is alive",
        ),
    };
    (code, message.to_string())
}
