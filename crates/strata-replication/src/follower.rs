//! Followers: one fetcher per leader broker copies the batches of every partition this
//! broker follows from that leader, with Kafka's replica Fetch (replica id = this
//! broker). A partition whose leader or leader epoch changed is first cut back to where
//! its latest epoch ended on the new leader (OffsetForLeaderEpoch), so records a former
//! leader wrote that the new one never had do not survive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, OffsetForLeaderEpochRequest, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strata_log::{Partition, PartitionKey, wait_durable_all};
use strata_protocol::batch;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client::KafkaConn;
use crate::{Assignment, Shared};

/// The client id followers fetch with (the leader sees it in its logs).
pub const FOLLOWER_CLIENT_ID: &str = "strata-replica";
/// Wait between attempts when the leader cannot be reached.
const RETRY: Duration = Duration::from_millis(200);
/// How soon a partition the leader could not align yet (it is still taking over) is
/// tried again: fetches of the others long-poll no longer than this meanwhile.
const ALIGN_RETRY: Duration = Duration::from_millis(50);

/// A partition this broker follows.
#[derive(Clone)]
pub(crate) struct Follow {
    pub(crate) topic: String,
    pub(crate) log: Arc<Partition>,
    pub(crate) leader: i32,
    pub(crate) leader_epoch: i32,
    pub(crate) leader_addr: String,
    /// Not cut back to the leader's log yet (a new leader or epoch).
    pub(crate) unaligned: bool,
}

impl Follow {
    pub(crate) fn new(a: &Assignment, leader_addr: String) -> Self {
        info!(topic = %a.topic, partition = a.key.partition, leader = a.leader, leader_epoch = a.leader_epoch, "following partition");
        Self {
            topic: a.topic.clone(),
            log: a.log.clone(),
            leader: a.leader,
            leader_epoch: a.leader_epoch,
            leader_addr,
            unaligned: true,
        }
    }
}

/// The task that follows one leader.
pub(crate) struct Fetcher {
    wake: Arc<Notify>,
    stop: CancellationToken,
}

impl Fetcher {
    pub(crate) fn start(s: Arc<Shared>, leader: i32) -> Self {
        let wake = Arc::new(Notify::new());
        let stop = s.stop.child_token();
        tokio::spawn(run(s, leader, wake.clone(), stop.clone()));
        Self { wake, stop }
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.stop.is_cancelled()
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// `items` grouped by their topic, topics in the order they first appear, each group
/// made into a request's topic entry by `entry` (requests name each topic once, with
/// its partitions).
fn by_topic<'a, T, E>(
    items: impl IntoIterator<Item = (&'a str, T)>,
    entry: impl Fn(TopicName, Vec<T>) -> E,
) -> Vec<E> {
    let mut groups: Vec<(&'a str, Vec<T>)> = Vec::new();
    for (topic, item) in items {
        match groups.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, list)) => list.push(item),
            None => groups.push((topic, vec![item])),
        }
    }
    groups
        .into_iter()
        .map(|(topic, list)| entry(name(topic), list))
        .collect()
}

/// The partitions followed from `leader`, as they are now.
fn followed_from(s: &Shared, leader: i32) -> Vec<(PartitionKey, Follow)> {
    s.followed
        .lock()
        .iter()
        .filter(|(_, f)| f.leader == leader)
        .map(|(k, f)| (*k, f.clone()))
        .collect()
}

async fn run(s: Arc<Shared>, leader: i32, wake: Arc<Notify>, stop: CancellationToken) {
    let mut conn: Option<KafkaConn> = None;
    let mut session = Session::default();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let parts = followed_from(&s, leader);
        let Some(addr) = parts.first().map(|(_, f)| f.leader_addr.clone()) else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = wake.notified() => continue,
            }
        };
        if conn.as_ref().is_none_or(|c| c.addr() != addr) {
            match KafkaConn::connect_from(&addr, s.cfg.source, FOLLOWER_CLIENT_ID, &s.cfg.transport)
                .await
            {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    debug!(leader, error = %e, "cannot reach the leader");
                    pause(&stop, &wake).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let round = async {
            align(&s, c, &parts).await?;
            // As aligned now.
            fetch(&s, c, &followed_from(&s, leader), &mut session).await
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = round => r,
            // A partition joined or changed leader epoch: do not let it wait for the
            // long poll in flight. Its answer is abandoned with the connection.
            () = wake.notified() => {
                conn = None;
                continue;
            }
        };
        if let Err(e) = result {
            debug!(leader, error = %e, "fetching from the leader failed");
            conn = None;
            pause(&stop, &wake).await;
        }
    }
}

async fn pause(stop: &CancellationToken, wake: &Notify) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = wake.notified() => {}
        () = tokio::time::sleep(RETRY) => {}
    }
}

/// Cuts each unaligned partition back to where its latest epoch ends on the leader.
async fn align(
    s: &Shared,
    c: &mut KafkaConn,
    parts: &[(PartitionKey, Follow)],
) -> Result<(), String> {
    let unaligned: Vec<&(PartitionKey, Follow)> =
        parts.iter().filter(|(_, f)| f.unaligned).collect();
    if unaligned.is_empty() {
        return Ok(());
    }
    let asked = unaligned.into_iter().map(|(k, f)| {
        let partition = OffsetForLeaderPartition::default()
            .with_partition(k.partition)
            .with_current_leader_epoch(f.leader_epoch)
            .with_leader_epoch(f.log.latest_epoch().map_or(-1, |(e, _)| e));
        (f.topic.as_str(), partition)
    });
    let topics = by_topic(asked, |topic, partitions| {
        OffsetForLeaderTopic::default()
            .with_topic(topic)
            .with_partitions(partitions)
    });
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(s.me))
        .with_topics(topics);
    let resp = match c
        .call(ApiKey::OffsetForLeaderEpoch, 4, &req)
        .await
        .map_err(|e| e.to_string())?
    {
        ResponseKind::OffsetForLeaderEpoch(r) => r,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    for t in resp.topics {
        for p in t.partitions {
            let Some((key, f)) = parts
                .iter()
                .find(|(k, f)| f.topic == t.topic.as_str() && k.partition == p.partition)
            else {
                continue;
            };
            if p.error_code != 0 {
                debug!(topic = %f.topic, partition = p.partition, code = p.error_code, "leader cannot answer for its epochs yet");
                continue;
            }
            let end = f.log.offsets().log_end;
            // The leader knows no epoch of ours (-1): ours are all older than its
            // history; keep what is below its answer, if anything.
            if p.end_offset >= 0 && p.end_offset < end {
                let (log, off, now) = (f.log.clone(), p.end_offset, (s.now_ms)());
                tokio::task::spawn_blocking(move || log.truncate_to(off, now))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                warn!(topic = %f.topic, partition = p.partition, from = end, to = p.end_offset, "cut back records the leader does not have");
            }
            if let Some(entry) = s.followed.lock().get_mut(key)
                && entry.leader_epoch == f.leader_epoch
            {
                entry.unaligned = false;
            }
        }
    }
    Ok(())
}

/// The follower's side of a fetch session (KIP-227) with the leader: after a full fetch
/// opens it, each fetch sends only the partitions whose position moved (and the ones
/// no longer followed), and the leader answers only partitions with news.
#[derive(Debug, Default)]
struct Session {
    id: i32,
    /// The epoch of the next incremental fetch; 0: the next fetch is a full one (none
    /// open yet, or the state of the last one is unknown: an abandoned or failed fetch).
    epoch: i32,
    sent: HashMap<(String, i32), FetchPartition>,
}

/// One replica fetch of every aligned partition, and the append of what came back.
async fn fetch(
    s: &Shared,
    c: &mut KafkaConn,
    parts: &[(PartitionKey, Follow)],
    session: &mut Session,
) -> Result<(), String> {
    let aligned: Vec<&(PartitionKey, Follow)> =
        parts.iter().filter(|(_, f)| !f.unaligned).collect();
    if aligned.is_empty() {
        tokio::time::sleep(ALIGN_RETRY).await;
        return Ok(());
    }
    let wait = match aligned.len() < parts.len() {
        true => ALIGN_RETRY,
        false => s.cfg.fetch_wait,
    };
    let wanted: Vec<(String, FetchPartition)> = aligned
        .iter()
        .map(|(k, f)| {
            let o = f.log.offsets();
            // The leader counts this offset as durable here (its high watermark follows
            // it): the durable end, which lags the log end only if an earlier round
            // appended and then failed or was abandoned before its sync. Batches the
            // log already has are skipped when they come again.
            let part = FetchPartition::default()
                .with_partition(k.partition)
                .with_current_leader_epoch(f.leader_epoch)
                .with_fetch_offset(o.durable_end)
                .with_log_start_offset(o.log_start)
                .with_partition_max_bytes(s.cfg.fetch_partition_bytes);
            (f.topic.clone(), part)
        })
        .collect();
    // Until this fetch is answered, the session's state is unknown.
    let epoch = std::mem::take(&mut session.epoch);
    let full = epoch == 0;
    let changed = wanted.iter().filter(|(topic, part)| {
        full || session.sent.get(&(topic.clone(), part.partition)) != Some(part)
    });
    let topics = by_topic(
        changed.map(|(topic, part)| (topic.as_str(), part.clone())),
        |topic, parts| {
            FetchTopic::default()
                .with_topic(topic)
                .with_partitions(parts)
        },
    );
    let dropped = session.sent.keys().filter(|(topic, partition)| {
        !full
            && !wanted
                .iter()
                .any(|(t, p)| t == topic && p.partition == *partition)
    });
    let forgotten = by_topic(
        dropped.map(|(topic, partition)| (topic.as_str(), *partition)),
        |topic, parts| {
            ForgottenTopic::default()
                .with_topic(topic)
                .with_partitions(parts)
        },
    );
    // A full fetch names the session it replaces, so the leader drops it at once.
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(s.me))
        .with_max_wait_ms(wait.as_millis() as i32)
        .with_min_bytes(1)
        .with_max_bytes(s.cfg.fetch_response_bytes)
        .with_session_id(session.id)
        .with_session_epoch(epoch)
        .with_topics(topics)
        .with_forgotten_topics_data(forgotten);
    let resp = match c
        .call(ApiKey::Fetch, 12, &req)
        .await
        .map_err(|e| e.to_string())?
    {
        ResponseKind::Fetch(r) => r,
        other => return Err(format!("unexpected answer {other:?}")),
    };
    match ResponseError::try_from_code(resp.error_code) {
        None => {}
        // The leader lost the session (evicted, or restarted): start a new one.
        Some(ResponseError::FetchSessionIdNotFound | ResponseError::InvalidFetchSessionEpoch) => {
            session.id = 0;
            return Ok(());
        }
        Some(code) => return Err(format!("the leader refused the fetch: {code:?}")),
    }
    if full {
        session.id = resp.session_id;
    }
    if session.id != 0 {
        session.epoch = if full {
            1
        } else {
            epoch.checked_add(1).unwrap_or(1)
        };
        session.sent = wanted
            .into_iter()
            .map(|(topic, part)| ((topic, part.partition), part))
            .collect();
    }
    let mut appended: Vec<(&Follow, i64)> = Vec::new();
    for t in resp.responses {
        for p in t.partitions {
            let Some((key, f)) = aligned
                .iter()
                .find(|(k, f)| f.topic == t.topic.as_str() && k.partition == p.partition_index)
            else {
                continue;
            };
            match ResponseError::try_from_code(p.error_code) {
                None => {
                    let records = p.records.unwrap_or_default();
                    match append(s, f, &records) {
                        Ok(()) => appended.push((f, p.high_watermark)),
                        // This partition only: the others of the response go on.
                        Err(e) => {
                            warn!(topic = %f.topic, partition = p.partition_index, error = %e, "could not append what the leader sent");
                            mark_unaligned(s, key);
                        }
                    }
                }
                Some(ResponseError::OffsetOutOfRange) => {
                    // Behind the leader's log start (its retention moved on): start again
                    // where its log starts now; ahead of its end: cut back.
                    let o = f.log.offsets();
                    if p.log_start_offset > o.log_end {
                        let (log, start, now) = (f.log.clone(), p.log_start_offset, (s.now_ms)());
                        tokio::task::spawn_blocking(move || log.advance_log_start(start, now))
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| e.to_string())?;
                        info!(topic = %f.topic, partition = p.partition_index, offset = p.log_start_offset, "the leader's log starts after ours ends: following from its start");
                    } else {
                        mark_unaligned(s, key);
                    }
                }
                Some(code) => {
                    debug!(topic = %f.topic, partition = p.partition_index, error = ?code, "replica fetch refused");
                    mark_unaligned(s, key);
                }
            }
        }
    }
    // Synced together; the next fetch tells the leader how far (the durable end).
    let waits: Vec<(&Partition, i64)> = appended
        .iter()
        .map(|(f, _)| (f.log.as_ref(), f.log.offsets().log_end))
        .collect();
    for (synced, (f, _)) in wait_durable_all(&waits).await.into_iter().zip(&appended) {
        if let Err(e) = synced {
            warn!(topic = %f.topic, error = %e, "could not sync what the leader sent");
        }
    }
    for (f, leader_hw) in appended {
        // Consumers of this replica see up to the leader's high watermark.
        let end = f.log.offsets().durable_end;
        f.log.set_replicated_hw(Some(leader_hw.min(end)));
    }
    Ok(())
}

fn mark_unaligned(s: &Shared, key: &PartitionKey) {
    if let Some(f) = s.followed.lock().get_mut(key) {
        f.unaligned = true;
    }
}

/// Appends fetched batches to the follower's log, on this task as the leader's produce
/// path does (a write to the page cache, plus the sealing syncs when the segment rolls;
/// the sync that makes the batches durable comes after, for the whole response).
fn append(s: &Shared, f: &Follow, records: &Bytes) -> Result<(), String> {
    if records.is_empty() {
        return Ok(());
    }
    let headers = batch::validate_log(records)
        .map_err(|e| format!("the leader sent a bad batch for {}: {e}", f.topic))?;
    f.log
        .append_replicated(records, &headers, (s.now_ms)())
        .map_err(|e| e.to_string())?;
    s.metrics.fetched_bytes_total.inc_by(records.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::TopicName;

    use super::by_topic;

    #[test]
    fn by_topic_groups_in_order_of_first_appearance() {
        let entry = |topic: TopicName, items: Vec<i32>| (topic.0.to_string(), items);
        let items = [("b", 0), ("a", 1), ("b", 2), ("c", 3), ("a", 4)];
        assert_eq!(
            by_topic(items, entry),
            vec![
                ("b".to_string(), vec![0, 2]),
                ("a".to_string(), vec![1, 4]),
                ("c".to_string(), vec![3])
            ]
        );
        assert!(by_topic(Vec::<(&str, i32)>::new(), entry).is_empty());
    }
}
