//! Fetch sessions (KIP-227): a consumer or follower fetching many partitions sends them
//! all once (a full fetch at epoch 0 creates a session), then only what changed: the
//! partitions whose fetch position moved, and the ones it stopped fetching. The broker
//! keeps each session's partitions and answers an incremental fetch with only the
//! partitions that have something new (records, an error, a moved high watermark or log
//! start).
//!
//! This module owns the session cache (`max.incremental.fetch.session.cache.slots`
//! sessions, evicted as Kafka does: stale ones first, then the smallest ones by larger
//! or privileged newcomers) and the translation between a session and the full request
//! it stands for. It must not read logs: the Fetch handler serves the request it gets
//! from here, and hands the response back for filtering.

use std::collections::HashMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use parking_lot::Mutex;
use strata_telemetry::KafkaMetrics;
use uuid::Uuid;

/// A session not used for this long may be evicted by any new one
/// (Kafka's `min.incremental.fetch.session.eviction.ms`).
const EVICTION_MS: i64 = 120_000;

/// The first Fetch version with sessions.
const MIN_VERSION: i16 = 7;

/// A partition of a session, as the client names it (by topic name before Fetch v13, by
/// topic id from v13).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartKey {
    topic: TopicName,
    topic_id: Uuid,
    partition: i32,
}

/// What the session remembers of a partition: the client's latest fetch parameters and
/// what it was last told.
#[derive(Debug, Clone)]
struct Cached {
    fetch: FetchPartition,
    high_watermark: i64,
    log_start: i64,
    last_stable: i64,
}

#[derive(Debug)]
struct Session {
    /// The epoch the next incremental fetch must carry.
    epoch: i32,
    /// A follower's session: only other followers' sessions may evict it.
    privileged: bool,
    last_used_ms: i64,
    /// The partitions in the order they were added (the order responses list them in).
    partitions: Vec<(PartKey, Cached)>,
    index: HashMap<PartKey, usize>,
}

impl Session {
    fn reindex(&mut self) {
        self.index = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
    }

    fn upsert(&mut self, key: PartKey, fetch: FetchPartition) {
        match self.index.get(&key) {
            Some(&i) => self.partitions[i].1.fetch = fetch,
            None => {
                self.index.insert(key.clone(), self.partitions.len());
                self.partitions.push((
                    key,
                    Cached {
                        fetch,
                        high_watermark: -1,
                        log_start: -1,
                        last_stable: -1,
                    },
                ));
            }
        }
    }
}

/// How to serve one Fetch request.
#[derive(Debug)]
pub(crate) enum Begin {
    /// A full fetch without a session: answered with session id 0.
    Sessionless,
    /// A full fetch that asks for a new session (created when answered, if there is room).
    New,
    /// An incremental fetch of session `id`: `request` names every partition of the
    /// session with its latest fetch parameters.
    Incremental { id: i32, request: Box<FetchRequest> },
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<i32, Session>,
    next_id: i32,
}

/// The broker's fetch sessions.
pub(crate) struct FetchSessions {
    inner: Mutex<Inner>,
    metrics: KafkaMetrics,
}

impl FetchSessions {
    pub(crate) fn new(metrics: KafkaMetrics) -> Self {
        Self {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                // Ids are not secrets, but a fresh broker should not hand out 1, 2, 3 to
                // clients that still hold ids of its previous incarnation.
                next_id: rand::random::<i32>().max(1),
            }),
            metrics,
        }
    }

    /// Decides how to serve `req`: applies its session changes (for an incremental
    /// fetch: new fetch positions, added and forgotten partitions) and checks its epoch.
    pub(crate) fn begin(
        &self,
        req: &FetchRequest,
        version: i16,
        now_ms: i64,
    ) -> Result<Begin, ResponseError> {
        if version < MIN_VERSION {
            return Ok(Begin::Sessionless);
        }
        let mut inner = self.inner.lock();
        match req.session_epoch {
            // FINAL_EPOCH: close the session, if any, and fetch without one.
            -1 => {
                if req.session_id != 0 {
                    inner.sessions.remove(&req.session_id);
                }
                self.publish(&inner);
                Ok(Begin::Sessionless)
            }
            // INITIAL_EPOCH: a full fetch that replaces the session it names.
            0 => {
                if req.session_id != 0 {
                    inner.sessions.remove(&req.session_id);
                }
                self.publish(&inner);
                Ok(Begin::New)
            }
            epoch => {
                let session = inner
                    .sessions
                    .get_mut(&req.session_id)
                    .ok_or(ResponseError::FetchSessionIdNotFound)?;
                if session.epoch != epoch {
                    return Err(ResponseError::InvalidFetchSessionEpoch);
                }
                session.epoch = next_epoch(epoch);
                session.last_used_ms = now_ms;
                for t in &req.topics {
                    for p in &t.partitions {
                        session.upsert(key(&t.topic, t.topic_id, p.partition), p.clone());
                    }
                }
                let mut forgot = false;
                for t in &req.forgotten_topics_data {
                    for &p in &t.partitions {
                        let k = key(&t.topic, t.topic_id, p);
                        if session.index.contains_key(&k) {
                            session.partitions.retain(|(have, _)| *have != k);
                            forgot = true;
                        }
                    }
                }
                if forgot {
                    session.reindex();
                }
                let request = full_request(req, session);
                self.metrics.incremental_fetches_total.inc();
                self.publish(&inner);
                Ok(Begin::Incremental {
                    id: req.session_id,
                    request: Box::new(request),
                })
            }
        }
    }

    /// After a full fetch that asked for a session: creates it with the partitions of
    /// `req` and what `resp` told the client, if there is a free slot or one may be
    /// evicted (`slots` is `max.incremental.fetch.session.cache.slots`). Returns the new
    /// session's id, or 0 (the client then keeps sending full fetches).
    pub(crate) fn create(
        &self,
        req: &FetchRequest,
        resp: &FetchResponse,
        privileged: bool,
        slots: usize,
        now_ms: i64,
    ) -> i32 {
        let size: usize = req.topics.iter().map(|t| t.partitions.len()).sum();
        let mut inner = self.inner.lock();
        if inner.sessions.len() >= slots && !self.evict(&mut inner, privileged, size, now_ms) {
            return 0;
        }
        let mut session = Session {
            epoch: 1,
            privileged,
            last_used_ms: now_ms,
            partitions: Vec::with_capacity(size),
            index: HashMap::with_capacity(size),
        };
        for t in &req.topics {
            for p in &t.partitions {
                session.upsert(key(&t.topic, t.topic_id, p.partition), p.clone());
            }
        }
        remember(&mut session, resp);
        let id = loop {
            let id = inner.next_id;
            inner.next_id = inner.next_id.checked_add(1).unwrap_or(1);
            if id > 0 && !inner.sessions.contains_key(&id) {
                break id;
            }
        };
        inner.sessions.insert(id, session);
        self.publish(&inner);
        id
    }

    /// Keeps in the answer to an incremental fetch of session `id` only the partitions
    /// with news for the client, and remembers what it was told.
    pub(crate) fn filter(&self, id: i32, mut resp: FetchResponse) -> FetchResponse {
        let mut inner = self.inner.lock();
        let Some(session) = inner.sessions.get_mut(&id) else {
            // Evicted meanwhile: the client learns it at its next fetch.
            return resp;
        };
        for t in &mut resp.responses {
            t.partitions.retain(|p| {
                let k = key(&t.topic, t.topic_id, p.partition_index);
                let Some(&i) = session.index.get(&k) else {
                    return true;
                };
                let cached = &mut session.partitions[i].1;
                let mut news = p.error_code != 0
                    || p.records.as_ref().is_some_and(|r| !r.is_empty())
                    || p.preferred_read_replica.0 >= 0;
                if p.error_code == 0 {
                    news |= cached.high_watermark != p.high_watermark
                        || cached.log_start != p.log_start_offset
                        || cached.last_stable != p.last_stable_offset;
                    cached.high_watermark = p.high_watermark;
                    cached.log_start = p.log_start_offset;
                    cached.last_stable = p.last_stable_offset;
                }
                news
            });
        }
        resp.responses.retain(|t| !t.partitions.is_empty());
        resp.with_session_id(id)
    }

    /// Makes room for a new session of `size` partitions: a stale session goes first;
    /// else a privileged newcomer evicts the smallest unprivileged session, and any
    /// other the smallest unprivileged one smaller than itself.
    fn evict(&self, inner: &mut Inner, privileged: bool, size: usize, now_ms: i64) -> bool {
        let stale = inner
            .sessions
            .iter()
            .filter(|(_, s)| now_ms - s.last_used_ms >= EVICTION_MS)
            .min_by_key(|(id, s)| (s.last_used_ms, **id))
            .map(|(id, _)| *id);
        let victim = stale.or_else(|| {
            inner
                .sessions
                .iter()
                .filter(|(_, s)| !s.privileged && (privileged || s.partitions.len() < size))
                .min_by_key(|(id, s)| (s.partitions.len(), s.last_used_ms, **id))
                .map(|(id, _)| *id)
        });
        match victim {
            Some(id) => {
                inner.sessions.remove(&id);
                self.metrics.fetch_session_evictions_total.inc();
                true
            }
            None => false,
        }
    }

    fn publish(&self, inner: &Inner) {
        self.metrics.fetch_sessions.set(inner.sessions.len() as i64);
        self.metrics.fetch_session_partitions.set(
            inner
                .sessions
                .values()
                .map(|s| s.partitions.len() as i64)
                .sum(),
        );
    }
}

fn key(topic: &TopicName, topic_id: Uuid, partition: i32) -> PartKey {
    PartKey {
        topic: topic.clone(),
        topic_id,
        partition,
    }
}

/// Kafka's epoch sequence: 1, 2, ..., i32::MAX, 1, ...
fn next_epoch(epoch: i32) -> i32 {
    epoch.checked_add(1).unwrap_or(1)
}

/// Records what a full fetch's answer told the client about each partition.
fn remember(session: &mut Session, resp: &FetchResponse) {
    for t in &resp.responses {
        for p in &t.partitions {
            if p.error_code != 0 {
                continue;
            }
            if let Some(&i) = session
                .index
                .get(&key(&t.topic, t.topic_id, p.partition_index))
            {
                let cached = &mut session.partitions[i].1;
                cached.high_watermark = p.high_watermark;
                cached.log_start = p.log_start_offset;
                cached.last_stable = p.last_stable_offset;
            }
        }
    }
}

/// The request an incremental fetch stands for: every partition of the session, grouped
/// by topic in session order, with the request's other fields.
fn full_request(req: &FetchRequest, session: &Session) -> FetchRequest {
    let mut topics: Vec<FetchTopic> = Vec::new();
    for (k, cached) in &session.partitions {
        let same = topics
            .last()
            .is_some_and(|t| t.topic == k.topic && t.topic_id == k.topic_id);
        if !same {
            topics.push(
                FetchTopic::default()
                    .with_topic(k.topic.clone())
                    .with_topic_id(k.topic_id),
            );
        }
        if let Some(t) = topics.last_mut() {
            t.partitions.push(cached.fetch.clone());
        }
    }
    req.clone()
        .with_topics(topics)
        .with_forgotten_topics_data(Vec::new())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use kafka_protocol::messages::BrokerId;
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName(StrBytes::from_string(s.to_string()))
    }

    fn fetch(session_id: i32, epoch: i32, parts: &[(&str, i32, i64)]) -> FetchRequest {
        let mut topics: Vec<FetchTopic> = Vec::new();
        for (t, p, offset) in parts {
            if topics.last().is_none_or(|x| x.topic != name(t)) {
                topics.push(FetchTopic::default().with_topic(name(t)));
            }
            topics.last_mut().unwrap().partitions.push(
                FetchPartition::default()
                    .with_partition(*p)
                    .with_fetch_offset(*offset),
            );
        }
        FetchRequest::default()
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(topics)
    }

    fn answer(parts: &[(&str, i32, i64, usize)]) -> FetchResponse {
        let mut topics: Vec<FetchableTopicResponse> = Vec::new();
        for (t, p, hw, bytes) in parts {
            if topics.last().is_none_or(|x| x.topic != name(t)) {
                topics.push(FetchableTopicResponse::default().with_topic(name(t)));
            }
            topics.last_mut().unwrap().partitions.push(
                PartitionData::default()
                    .with_partition_index(*p)
                    .with_high_watermark(*hw)
                    .with_last_stable_offset(*hw)
                    .with_log_start_offset(0)
                    .with_preferred_read_replica(BrokerId(-1))
                    .with_records(Some(Bytes::from(vec![1u8; *bytes]))),
            );
        }
        FetchResponse::default().with_responses(topics)
    }

    fn listed(resp: &FetchResponse) -> Vec<(String, i32)> {
        resp.responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition_index))
            })
            .collect()
    }

    fn sessions() -> FetchSessions {
        FetchSessions::new(strata_telemetry::Metrics::new().unwrap().kafka)
    }

    fn offsets(req: &FetchRequest) -> Vec<(String, i32, i64)> {
        req.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.to_string(), p.partition, p.fetch_offset))
            })
            .collect()
    }

    #[test]
    fn a_session_serves_incremental_fetches_with_only_the_news() {
        let s = sessions();
        let full = fetch(0, 0, &[("a", 0, 0), ("a", 1, 0), ("b", 0, 5)]);
        assert!(matches!(s.begin(&full, 12, 0).unwrap(), Begin::New));
        let id = s.create(
            &full,
            &answer(&[("a", 0, 10, 100), ("a", 1, 0, 0), ("b", 0, 5, 0)]),
            false,
            10,
            0,
        );
        assert!(id > 0);
        // Epoch 1: a:0 moved on; nothing else named.
        let inc = fetch(id, 1, &[("a", 0, 10)]);
        let Begin::Incremental { id: got, request } = s.begin(&inc, 12, 1).unwrap() else {
            panic!("not incremental");
        };
        assert_eq!(got, id);
        assert_eq!(
            offsets(&request),
            vec![("a".into(), 0, 10), ("a".into(), 1, 0), ("b".into(), 0, 5)]
        );
        // Only b:0 has records, and a:1's high watermark moved.
        let out = s.filter(
            id,
            answer(&[("a", 0, 10, 0), ("a", 1, 3, 0), ("b", 0, 9, 40)]),
        );
        assert_eq!(out.session_id, id);
        assert_eq!(listed(&out), vec![("a".into(), 1), ("b".into(), 0)]);
        // The same epoch again is refused; a wrong id is unknown.
        assert_eq!(
            s.begin(&inc, 12, 2).unwrap_err(),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert_eq!(
            s.begin(&fetch(id + 1, 2, &[]), 12, 2).unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
        // Epoch 2 forgets a:0.
        let forget = fetch(id, 2, &[]).with_forgotten_topics_data(vec![
            ForgottenTopic::default()
                .with_topic(name("a"))
                .with_partitions(vec![0]),
        ]);
        let Begin::Incremental { request, .. } = s.begin(&forget, 12, 3).unwrap() else {
            panic!("not incremental");
        };
        assert_eq!(
            offsets(&request),
            vec![("a".into(), 1, 0), ("b".into(), 0, 5)]
        );
        // Epoch -1 closes it.
        assert!(matches!(
            s.begin(&fetch(id, -1, &[]), 12, 4).unwrap(),
            Begin::Sessionless
        ));
        assert_eq!(
            s.begin(&fetch(id, 3, &[]), 12, 5).unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
    }

    #[test]
    fn old_versions_and_final_epochs_have_no_session() {
        let s = sessions();
        assert!(matches!(
            s.begin(&fetch(0, 0, &[]), 6, 0).unwrap(),
            Begin::Sessionless
        ));
        assert!(matches!(
            s.begin(&fetch(0, -1, &[]), 12, 0).unwrap(),
            Begin::Sessionless
        ));
    }

    #[test]
    fn a_full_cache_evicts_stale_then_smaller_sessions() {
        let s = sessions();
        let one = fetch(0, 0, &[("a", 0, 0)]);
        let three = fetch(0, 0, &[("a", 0, 0), ("a", 1, 0), ("a", 2, 0)]);
        let small = s.create(&one, &answer(&[]), false, 1, 0);
        assert!(small > 0);
        // Same size, not stale: no room.
        assert_eq!(s.create(&one, &answer(&[]), false, 1, 1_000), 0);
        // Larger: evicts the smaller one.
        let big = s.create(&three, &answer(&[]), false, 1, 2_000);
        assert!(big > 0);
        assert_eq!(
            s.begin(&fetch(small, 1, &[]), 12, 2_000).unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
        // A follower's session evicts a consumer's whatever its size...
        let follower = s.create(&one, &answer(&[]), true, 1, 3_000);
        assert!(follower > 0);
        // ...and is not evicted by a larger consumer session, until it goes stale.
        assert_eq!(s.create(&three, &answer(&[]), false, 1, 4_000), 0);
        assert!(s.create(&three, &answer(&[]), false, 1, 3_000 + EVICTION_MS) > 0);
    }
}
