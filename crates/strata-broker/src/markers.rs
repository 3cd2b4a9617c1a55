//! Writing transaction markers on partition leaders (the partition side of Kafka's
//! WriteTxnMarkers): this broker's partitions directly, other brokers' with a
//! WriteTxnMarkers request to their leader. The coordinator (`txn`) decides what to
//! write and when; this module only writes it, acknowledged as acks=all data is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use kafka_protocol::messages::{
    ApiKey, ProducerId, ResponseKind, TopicName, WriteTxnMarkersRequest,
};
use kafka_protocol::protocol::StrBytes;
use strata_meta::TxnState;
use strata_protocol::batch::ControlType;

use crate::broker::{Broker, too_few_in_sync};
use crate::errors;
use crate::txn::{Marker, MarkerWriter};

/// The client id of a coordinator's WriteTxnMarkers requests.
const MARKER_CLIENT_ID: &str = "strata-txn-markers";

/// How long a leader waits for the coordinator's decision to reach its metadata.
const DECISION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Broker {
    /// Appends `marker` to `topic`'s `partitions`, which this broker must lead, and
    /// waits until each is durable on every in-sync replica. One result per partition.
    pub(crate) async fn write_local_markers(
        &self,
        marker: Marker,
        topic: &str,
        partitions: &[i32],
    ) -> Vec<(i32, Result<(), ResponseError>)> {
        let control = if marker.commit {
            ControlType::Commit
        } else {
            ControlType::Abort
        };
        self.await_decision(marker).await;
        let meta = self.topic(topic);
        let writes = partitions.iter().map(|&p| {
            let meta = meta.clone();
            async move {
                let Some(meta) = meta else {
                    return (p, Err(ResponseError::UnknownTopicOrPartition));
                };
                let log = match self.partition_log(&meta, p) {
                    Ok(log) => log,
                    Err(e) => return (p, Err(e.code)),
                };
                let placement = usize::try_from(p).ok().and_then(|i| meta.partitions.get(i));
                let leader_epoch = placement.map_or(0, |pm| pm.leader_epoch);
                let replicated = placement.is_some_and(|pm| pm.replicas.len() > 1);
                // As for produce: a replicated partition takes writes once this broker
                // acts as its leader (tracks its followers).
                let key = strata_log::PartitionKey {
                    topic_id: meta.id,
                    partition: p,
                };
                if replicated && self.replication.isr(key).is_none() {
                    return (p, Err(ResponseError::NotLeaderOrFollower));
                }
                // Markers are written as acks=all data is: not while fewer replicas are
                // in sync than the topic's min.insync.replicas (the coordinator retries).
                if too_few_in_sync(placement, &self.topic_config(&meta)).is_some() {
                    return (p, Err(ResponseError::NotEnoughReplicas));
                }
                let written = log.append_marker(
                    marker.producer_id,
                    marker.producer_epoch,
                    control,
                    0,
                    leader_epoch,
                    self.now_ms(),
                );
                let end = match written {
                    Ok(info) => info.last_offset + 1,
                    Err(e) => return (p, Err(errors::log_error(&e))),
                };
                let mut acked = log.wait_durable(end).await;
                if acked.is_ok() && replicated {
                    acked = log.wait_high_watermark(end, leader_epoch).await;
                }
                (p, acked.map_err(|e| errors::log_error(&e)))
            }
        });
        join_all(writes).await
    }

    /// Waits (briefly) until this broker's copy of metadata shows the decision behind
    /// `marker`: the coordinator committed it before sending the marker, and from then on
    /// produce here refuses the producer's batches at that epoch. Without the wait, a
    /// late batch of the ended transaction could open a transaction no marker would end.
    async fn await_decision(&self, marker: Marker) {
        let decided = || {
            self.meta.read(|s| {
                !s.transaction_of(marker.producer_id).is_some_and(|(_, t)| {
                    t.state == TxnState::Ongoing && t.producer_epoch == marker.producer_epoch
                })
            })
        };
        self.await_metadata(DECISION_WAIT, decided).await;
    }

    /// Sends `marker` for `partitions` to broker `leader` (WriteTxnMarkers).
    async fn write_remote_markers(
        &self,
        leader: i32,
        marker: Marker,
        partitions: &BTreeMap<String, Vec<i32>>,
    ) -> Result<(), String> {
        let addr = self
            .meta
            .read(|s| {
                s.brokers
                    .get(&leader)
                    .map(|b| format!("{}:{}", b.host, b.port))
            })
            .ok_or_else(|| format!("broker {leader} is not registered"))?;
        let source = self.endpoint.host.parse().ok();
        let mut conn = strata_replication::client::KafkaConn::connect_from(
            &addr,
            source,
            MARKER_CLIENT_ID,
            &self.inter_broker,
        )
        .await
        .map_err(|e| e.to_string())?;
        let req = WriteTxnMarkersRequest::default().with_markers(vec![
            WritableTxnMarker::default()
                .with_producer_id(ProducerId(marker.producer_id))
                .with_producer_epoch(marker.producer_epoch)
                .with_transaction_result(marker.commit)
                .with_coordinator_epoch(0)
                .with_topics(
                    partitions
                        .iter()
                        .map(|(t, ps)| {
                            WritableTxnMarkerTopic::default()
                                .with_name(TopicName(StrBytes::from_string(t.clone())))
                                .with_partition_indexes(ps.clone())
                        })
                        .collect(),
                ),
        ]);
        let resp = conn
            .call(ApiKey::WriteTxnMarkers, 1, &req)
            .await
            .map_err(|e| e.to_string())?;
        let ResponseKind::WriteTxnMarkers(resp) = resp else {
            return Err(format!("broker {leader} answered something else"));
        };
        let failed: Vec<String> = resp
            .markers
            .iter()
            .flat_map(|m| m.topics.iter())
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .filter(|p| p.error_code != 0)
                    .map(move |p| {
                        format!("{}-{}: error {}", t.name.0, p.partition_index, p.error_code)
                    })
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("broker {leader}: {}", failed.join(", ")))
        }
    }
}

impl MarkerWriter for Arc<Broker> {
    fn write_markers<'a>(
        &'a self,
        marker: Marker,
        partitions: &'a BTreeMap<String, BTreeSet<i32>>,
    ) -> BoxFuture<'a, Result<(), String>> {
        async move {
            // Partitions by leader, as metadata here says; a deleted topic needs nothing.
            let mut by_leader: BTreeMap<i32, BTreeMap<String, Vec<i32>>> = BTreeMap::new();
            let mut leaderless = Vec::new();
            self.meta.read(|s| {
                for (topic, parts) in partitions {
                    let Some(meta) = s.topics.get(topic) else {
                        continue;
                    };
                    for &p in parts {
                        let leader = usize::try_from(p)
                            .ok()
                            .and_then(|i| meta.partitions.get(i))
                            .map_or(-1, |pm| pm.leader);
                        if leader < 0 {
                            leaderless.push(format!("{topic}-{p}"));
                        } else {
                            by_leader
                                .entry(leader)
                                .or_default()
                                .entry(topic.clone())
                                .or_default()
                                .push(p);
                        }
                    }
                }
            });
            if !leaderless.is_empty() {
                return Err(format!("no leader for {}", leaderless.join(", ")));
            }
            let writes = by_leader.iter().map(|(&leader, parts)| async move {
                if leader != self.node_id {
                    return self.write_remote_markers(leader, marker, parts).await;
                }
                let mut failed = Vec::new();
                for (topic, ps) in parts {
                    for (p, r) in self.write_local_markers(marker, topic, ps).await {
                        if let Err(code) = r {
                            failed.push(format!("{topic}-{p}: {code:?}"));
                        }
                    }
                }
                match failed.is_empty() {
                    true => Ok(()),
                    false => Err(failed.join(", ")),
                }
            });
            let failed: Vec<String> = join_all(writes)
                .await
                .into_iter()
                .filter_map(Result::err)
                .collect();
            match failed.is_empty() {
                true => Ok(()),
                false => Err(failed.join("; ")),
            }
        }
        .boxed()
    }
}
