//! Replicated partition tails (the `replicated` durability mode).
//!
//! This crate owns what makes a partition's tail live on several brokers: the leader's
//! view of its followers (how far each has the log, whether it is in sync), the high
//! watermark (what every in-sync replica has made durable: all that consumers see and
//! what acks=all waits for), ISR changes (proposed through the metadata quorum, in force
//! only once committed), and the followers' fetchers, which copy the leader's batches
//! as they are, after cutting off whatever a former leader wrote that the current one
//! does not have (by leader epoch, Kafka's OffsetForLeaderEpoch).
//!
//! It must not decide who leads (the controller in `strata-meta` does), serve clients
//! (the broker does: it hands replica fetches to [`Replication::replica_fetched`]), or
//! touch segment files (`strata-log` does). Followers speak the Kafka protocol to their
//! leader ([`client`]), as Kafka's followers do.

pub mod client;
mod follower;
mod leader;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_log::{Partition, PartitionKey};
use strata_meta::MetaNode;
use strata_telemetry::ReplicationMetrics;
use tokio_util::sync::CancellationToken;

pub use follower::FOLLOWER_CLIENT_ID;
use follower::{Fetcher, Follow};
use leader::Led;

/// Settings of replication (Kafka's names in the broker config).
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub lag_max: Duration,
    /// `replica.fetch.max.bytes` (per partition) and `replica.fetch.response.max.bytes`.
    pub fetch_partition_bytes: i32,
    pub fetch_response_bytes: i32,
    /// `replica.fetch.wait.max.ms`.
    pub fetch_wait: Duration,
    /// The address to fetch from (the Kafka listener's, on a multi-homed host).
    pub source: Option<std::net::IpAddr>,
    /// The inter-broker listener's transport: plain, or mTLS.
    pub transport: strata_security::transport::Transport,
}

/// One partition this broker holds a replica of, as metadata describes it.
#[derive(Clone)]
pub struct Assignment {
    pub key: PartitionKey,
    pub topic: String,
    pub log: Arc<Partition>,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// The leader's Kafka listener (`HOST:PORT`), when another broker leads.
    pub leader_addr: Option<String>,
}

/// Why a replica's fetch is refused (the Kafka error the broker answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This broker does not lead the partition.
    NotLeader,
    /// The follower knows an older leader epoch.
    FencedLeaderEpoch,
    /// The follower knows a newer leader epoch than this broker.
    UnknownLeaderEpoch,
}

/// The replication of every partition this broker holds a replica of.
#[derive(Clone)]
pub struct Replication {
    shared: Arc<Shared>,
}

struct Shared {
    me: i32,
    meta: MetaNode,
    cfg: ReplicationConfig,
    metrics: ReplicationMetrics,
    now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
    led: Mutex<HashMap<PartitionKey, Arc<Led>>>,
    followed: Mutex<HashMap<PartitionKey, Follow>>,
    fetchers: Mutex<HashMap<i32, Fetcher>>,
    stop: CancellationToken,
}

impl Replication {
    pub fn new(
        me: i32,
        meta: MetaNode,
        cfg: ReplicationConfig,
        metrics: ReplicationMetrics,
        now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                me,
                meta,
                cfg,
                metrics,
                now_ms,
                led: Mutex::default(),
                followed: Mutex::default(),
                fetchers: Mutex::default(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Brings this broker's roles in line with metadata: leads the partitions it leads
    /// (tracking their followers), follows the others from their leaders, and forgets
    /// partitions it no longer holds.
    pub fn reconcile(&self, assignments: Vec<Assignment>) {
        let s = &self.shared;
        let mut wake = Vec::new();
        {
            let mut led = s.led.lock();
            let mut followed = s.followed.lock();
            let mut keep_led = std::collections::HashSet::new();
            let mut keep_followed = std::collections::HashSet::new();
            for a in assignments {
                if a.leader == s.me {
                    keep_led.insert(a.key);
                    match led.get(&a.key) {
                        Some(l) if l.leader_epoch == a.leader_epoch => l.update(&a),
                        _ => {
                            s.metrics.leaderships_total.inc();
                            if let Some(old) = led.insert(a.key, Led::start(s, &a)) {
                                old.stop();
                            }
                        }
                    }
                } else if a.leader >= 0
                    && let Some(addr) = a.leader_addr.clone()
                {
                    keep_followed.insert(a.key);
                    let changed = followed
                        .get(&a.key)
                        .is_none_or(|f| f.leader != a.leader || f.leader_epoch != a.leader_epoch);
                    if changed {
                        followed.insert(a.key, Follow::new(&a, addr));
                        wake.push(a.leader);
                    }
                }
            }
            led.retain(|k, l| {
                let keep = keep_led.contains(k);
                if !keep {
                    l.stop();
                }
                keep
            });
            followed.retain(|k, _| keep_followed.contains(k));
            let leaders: std::collections::HashSet<i32> =
                followed.values().map(|f| f.leader).collect();
            s.fetchers.lock().retain(|leader, f| {
                let keep = leaders.contains(leader);
                if !keep {
                    f.stop();
                }
                keep
            });
            s.metrics.leader_partitions.set(led.len() as i64);
        }
        for leader in wake {
            self.wake_fetcher(leader);
        }
    }

    /// Starts (or wakes) the fetcher that follows `leader`.
    fn wake_fetcher(&self, leader: i32) {
        let mut fetchers = self.shared.fetchers.lock();
        match fetchers.get(&leader) {
            Some(f) if f.is_running() => f.wake(),
            _ => {
                fetchers.insert(leader, Fetcher::start(self.shared.clone(), leader));
            }
        }
    }

    /// A follower fetched partition `key` from `offset`, knowing leader epoch
    /// `follower_epoch` (negative: unknown): it has everything before `offset`, durably.
    pub fn replica_fetched(
        &self,
        key: PartitionKey,
        follower: i32,
        offset: i64,
        follower_epoch: i32,
    ) -> Result<(), Refusal> {
        let led = self.shared.led.lock().get(&key).cloned();
        let Some(led) = led else {
            return Err(Refusal::NotLeader);
        };
        if follower_epoch >= 0 && follower_epoch < led.leader_epoch {
            return Err(Refusal::FencedLeaderEpoch);
        }
        if follower_epoch > led.leader_epoch {
            return Err(Refusal::UnknownLeaderEpoch);
        }
        led.fetched(&self.shared, follower, offset);
        Ok(())
    }

    /// The in-sync replicas of a partition this broker leads, as in force.
    pub fn isr(&self, key: PartitionKey) -> Option<Vec<i32>> {
        self.shared.led.lock().get(&key).map(|l| l.isr())
    }

    /// Partitions led here whose ISR is smaller than their replica set.
    pub fn under_replicated(&self) -> usize {
        self.shared
            .led
            .lock()
            .values()
            .filter(|l| l.under_replicated())
            .count()
    }

    /// Until `stop`: takes lagging followers out of ISRs and publishes lag gauges.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.shutdown();
                    return;
                }
                _ = tick.tick() => {}
            }
            let led: Vec<Arc<Led>> = self.shared.led.lock().values().cloned().collect();
            let mut lag: HashMap<i32, (i64, i64)> = HashMap::new();
            for l in &led {
                l.check_lag(&self.shared, &mut lag);
            }
            let m = &self.shared.metrics;
            m.under_replicated_partitions
                .set(led.iter().filter(|l| l.under_replicated()).count() as i64);
            m.lag_records.reset();
            m.lag_bytes.reset();
            for (follower, (records, bytes)) in lag {
                let label = [follower.to_string()];
                m.lag_records.with_label_values(&label).set(records);
                m.lag_bytes.with_label_values(&label).set(bytes);
            }
        }
    }

    fn shutdown(&self) {
        self.shared.stop.cancel();
        for l in self.shared.led.lock().values() {
            l.stop();
        }
        for f in self.shared.fetchers.lock().values() {
            f.stop();
        }
    }
}
