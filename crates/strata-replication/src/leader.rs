//! A partition led here: its followers' progress, its ISR and its high watermark.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use strata_log::{Partition, PartitionKey};
use strata_meta::{Command, CommandResult};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Assignment, Shared};

/// How far a follower has the log, as its fetches show.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Everything before this offset is durable on the follower.
    end: i64,
    /// When the follower last had everything the leader had (ms).
    caught_up_ms: i64,
    /// The leader's durable end at the follower's previous fetch.
    leader_end_then: i64,
}

struct State {
    partition_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    followers: HashMap<i32, Progress>,
    /// An ISR change is being committed.
    altering: bool,
}

pub(crate) struct Led {
    key: PartitionKey,
    topic: String,
    log: Arc<Partition>,
    pub(crate) leader_epoch: i32,
    me: i32,
    state: Mutex<State>,
    /// Follower progress or the ISR changed: the high watermark may move.
    moved: Notify,
    stop: CancellationToken,
}

impl Led {
    /// Starts leading: records the epoch in the log, and starts the task that keeps the
    /// high watermark. Followers start at the high watermark consumers already saw.
    pub(crate) fn start(s: &Arc<Shared>, a: &Assignment) -> Arc<Self> {
        if let Err(e) = a.log.begin_epoch(a.leader_epoch) {
            warn!(topic = %a.topic, partition = a.key.partition, error = %e, "could not record the leader epoch");
        }
        let now = (s.now_ms)();
        let start = a.log.offsets().high_watermark;
        let followers = a
            .replicas
            .iter()
            .filter(|r| **r != s.me)
            .map(|r| {
                (
                    *r,
                    Progress {
                        end: start,
                        caught_up_ms: now,
                        leader_end_then: start,
                    },
                )
            })
            .collect();
        let led = Arc::new(Self {
            key: a.key,
            topic: a.topic.clone(),
            log: a.log.clone(),
            leader_epoch: a.leader_epoch,
            me: s.me,
            state: Mutex::new(State {
                partition_epoch: a.partition_epoch,
                replicas: a.replicas.clone(),
                isr: a.isr.clone(),
                followers,
                altering: false,
            }),
            moved: Notify::new(),
            stop: s.stop.child_token(),
        });
        info!(topic = %a.topic, partition = a.key.partition, leader_epoch = a.leader_epoch, isr = ?a.isr, "leading partition");
        led.publish_hw();
        tokio::spawn(led.clone().keep_hw());
        led
    }

    /// Takes the metadata's view of the ISR and replicas (same leader epoch).
    pub(crate) fn update(&self, a: &Assignment) {
        let mut st = self.state.lock();
        if a.partition_epoch >= st.partition_epoch {
            st.partition_epoch = a.partition_epoch;
            st.isr = a.isr.clone();
            st.replicas = a.replicas.clone();
        }
        drop(st);
        self.moved.notify_one();
    }

    /// Stops leading. The high watermark stays where it is until the partition's next
    /// role sets it: consumers must not see the tail this broker wrote as leader, which
    /// the new leader may not have.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    pub(crate) fn isr(&self) -> Vec<i32> {
        self.state.lock().isr.clone()
    }

    pub(crate) fn under_replicated(&self) -> bool {
        let st = self.state.lock();
        st.isr.len() < st.replicas.len()
    }

    /// Keeps the high watermark as the leader's durable end and the followers move.
    async fn keep_hw(self: Arc<Self>) {
        let mut durable = self.log.subscribe_durable();
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                r = durable.changed() => if r.is_err() { break },
                () = self.moved.notified() => {}
            }
            self.publish_hw();
        }
    }

    /// The high watermark: the smallest durable end over the ISR. A partition whose ISR is
    /// this broker alone is as high as its own durable end.
    fn publish_hw(&self) {
        let st = self.state.lock();
        let others: Vec<i64> = st
            .isr
            .iter()
            .filter(|r| **r != self.me)
            .map(|r| st.followers.get(r).map_or(i64::MIN, |p| p.end))
            .collect();
        drop(st);
        match others.into_iter().min() {
            None => self.log.set_replicated_hw(None),
            Some(min) => self
                .log
                .set_replicated_hw(Some(min.min(self.log.offsets().durable_end))),
        }
    }

    /// A follower fetched from `offset`. Takes it into the ISR once it has caught up with
    /// the high watermark (committed first).
    pub(crate) fn fetched(self: &Arc<Self>, s: &Arc<Shared>, follower: i32, offset: i64) {
        let now = (s.now_ms)();
        let offsets = self.log.offsets();
        let mut st = self.state.lock();
        let p = st.followers.entry(follower).or_insert(Progress {
            end: offset,
            caught_up_ms: 0,
            leader_end_then: offsets.durable_end,
        });
        p.end = offset;
        if offset >= p.leader_end_then || offset >= offsets.durable_end {
            p.caught_up_ms = now;
        }
        p.leader_end_then = offsets.durable_end;
        let expand = !st.isr.contains(&follower)
            && st.replicas.contains(&follower)
            && offset >= offsets.high_watermark
            && self
                .log
                .latest_epoch()
                .is_none_or(|(_, start)| offset >= start)
            && !st.altering;
        if expand {
            let mut isr = st.isr.clone();
            isr.push(follower);
            st.altering = true;
            drop(st);
            self.alter(s, isr, "a follower caught up");
        } else {
            drop(st);
        }
        self.moved.notify_one();
    }

    /// Takes followers that have not caught up within `replica.lag.time.max.ms` out of
    /// the ISR, and adds each follower's lag (records, and bytes estimated from the
    /// local log's average record size) to `lag`.
    pub(crate) fn check_lag(self: &Arc<Self>, s: &Arc<Shared>, lag: &mut HashMap<i32, (i64, i64)>) {
        let now = (s.now_ms)();
        let offsets = self.log.offsets();
        let end = offsets.durable_end;
        let records = (offsets.log_end - offsets.local_start).max(1);
        let per_record = self.log.size_bytes() as f64 / records as f64;
        let mut st = self.state.lock();
        for (f, p) in &st.followers {
            let behind = (end - p.end).max(0);
            let entry = lag.entry(*f).or_default();
            entry.0 += behind;
            entry.1 += (behind as f64 * per_record) as i64;
        }
        if st.altering {
            return;
        }
        let lagging: Vec<i32> = st
            .isr
            .iter()
            .copied()
            .filter(|r| *r != self.me)
            .filter(|r| {
                st.followers
                    .get(r)
                    .is_none_or(|p| now - p.caught_up_ms > s.cfg.lag_max.as_millis() as i64)
            })
            .collect();
        if lagging.is_empty() {
            return;
        }
        let isr: Vec<i32> = st
            .isr
            .iter()
            .copied()
            .filter(|r| !lagging.contains(r))
            .collect();
        st.altering = true;
        drop(st);
        self.alter(s, isr, "followers fell behind");
    }

    /// Commits a new ISR through the metadata quorum; it takes effect once committed.
    fn alter(self: &Arc<Self>, s: &Arc<Shared>, isr: Vec<i32>, why: &'static str) {
        let (me, meta, metrics) = (self.clone(), s.meta.clone(), s.metrics.clone());
        tokio::spawn(async move {
            let (partition_epoch, before) = {
                let st = me.state.lock();
                (st.partition_epoch, st.isr.clone())
            };
            let cmd = Command::AlterIsr {
                topic_id: me.key.topic_id,
                partition: me.key.partition,
                leader_epoch: me.leader_epoch,
                partition_epoch,
                isr: isr.clone(),
            };
            let result = meta.write(cmd).await;
            let mut st = me.state.lock();
            st.altering = false;
            match result {
                Ok(CommandResult::PartitionEpoch(epoch)) => {
                    info!(topic = %me.topic, partition = me.key.partition, from = ?before, to = ?isr, why, "ISR changed");
                    if isr.len() < before.len() {
                        metrics.isr_shrinks_total.inc();
                    } else {
                        metrics.isr_expands_total.inc();
                    }
                    st.isr = isr;
                    st.partition_epoch = epoch;
                }
                Ok(other) => {
                    warn!(topic = %me.topic, partition = me.key.partition, answer = ?other, "ISR change refused (a newer leader or ISR exists)");
                }
                Err(e) => {
                    warn!(topic = %me.topic, partition = me.key.partition, error = %e, "ISR change not committed; it is retried");
                }
            }
            drop(st);
            me.moved.notify_one();
        });
    }
}
