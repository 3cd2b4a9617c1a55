//! The controller: the decisions about brokers and partition leadership that the
//! metadata leader makes, as commands through Raft (the state machine applies them
//! deterministically; see [`Command::FenceBroker`] for how a new leader is chosen).
//!
//! - Brokers renew a lease by heartbeat. Every voter records the heartbeats it sees, so a
//!   new leader knows how long ago each broker was last heard of. A broker whose lease
//!   runs out is fenced: its partitions get new leaders from their ISRs. A broker that
//!   shuts down in order asks to be fenced at once (controlled shutdown).
//! - With `auto_rebalance`, leadership goes back to each partition's preferred replica
//!   (the first) once it is in sync again.
//! - A partition without a live in-sync replica stays offline, unless its topic allows
//!   an unclean election (`unclean.leader.election.enable`), which then picks a live
//!   replica outside the ISR.
//!
//! It also places the replicas of new partitions over brokers and racks.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::node::MetaNode;
use crate::rpc::Refusal;
use crate::types::BrokerHeartbeat;
use crate::types::ClusterState;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::HeartbeatReply;

/// How often the controller looks at leases and leadership.
const TICK: Duration = Duration::from_millis(250);

/// What the controller does (Kafka's broker settings of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// `broker.session.timeout.ms`: a broker not heard of for this long is fenced.
    pub session_timeout: Duration,
    /// `auto.leader.rebalance.enable`.
    pub auto_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`: how often preferred leaders are
    /// restored.
    pub rebalance_interval: Duration,
    /// `unclean.leader.election.enable` of topics that do not set it.
    pub unclean_default: bool,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(9),
            auto_rebalance: true,
            rebalance_interval: Duration::from_secs(5),
            unclean_default: false,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Controller {
    cfg: ControllerConfig,
    /// When each broker was last heard of.
    leases: parking_lot::Mutex<HashMap<i32, Instant>>,
}

impl Controller {
    pub(crate) fn new(cfg: ControllerConfig) -> Self {
        Self {
            cfg,
            leases: parking_lot::Mutex::default(),
        }
    }

    /// Records a heartbeat (on every voter) and, on the leader, answers it: whether the
    /// broker must register again, and for a broker shutting down, after its leadership
    /// was moved away.
    pub(crate) async fn heartbeat(
        &self,
        node: &MetaNode,
        hb: BrokerHeartbeat,
    ) -> Result<HeartbeatReply, Refusal> {
        self.leases.lock().insert(hb.node_id, Instant::now());
        if !node.is_leader() {
            return Err(Refusal::NotLeader {
                leader: node.leader(),
                leader_addr: None,
            });
        }
        let current = node.read(|s| s.brokers.get(&hb.node_id).map(|b| (b.epoch, b.fenced)));
        match current {
            Some((epoch, false)) if epoch == hb.epoch => {}
            _ => return Ok(HeartbeatReply { fenced: true }),
        }
        if hb.shutting_down {
            tracing::info!(
                broker = hb.node_id,
                "controlled shutdown: moving leadership away"
            );
            return match node
                .write(Command::FenceBroker {
                    node_id: hb.node_id,
                    epoch: hb.epoch,
                })
                .await
            {
                Ok(_) => Ok(HeartbeatReply { fenced: true }),
                Err(e) => Err(Refusal::Failed(e.to_string())),
            };
        }
        Ok(HeartbeatReply { fenced: false })
    }

    /// Watches leases and leadership while `node` leads, until `stop`.
    pub(crate) async fn run(&self, node: &MetaNode, stop: &CancellationToken) {
        let mut leading_since: Option<Instant> = None;
        let mut last_rebalance = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            if !node.is_leader() {
                leading_since = None;
                continue;
            }
            let since = *leading_since.get_or_insert_with(Instant::now);
            for (id, epoch) in self.expired(node, since) {
                tracing::warn!(
                    broker = id,
                    timeout_ms = self.cfg.session_timeout.as_millis() as u64,
                    "broker lease expired: fencing it and moving its leadership"
                );
                if let Err(e) = node
                    .write(Command::FenceBroker { node_id: id, epoch })
                    .await
                {
                    tracing::warn!(broker = id, error = %e, "could not fence the broker yet");
                }
            }
            let rebalance =
                self.cfg.auto_rebalance && last_rebalance.elapsed() >= self.cfg.rebalance_interval;
            let elections = node.read(|s| elections(s, rebalance, self.cfg.unclean_default));
            if rebalance {
                last_rebalance = Instant::now();
            }
            for e in elections {
                match node.write(e.clone()).await {
                    Ok(CommandResult::PartitionEpoch(_)) => {
                        tracing::info!(election = ?e, "moved partition leadership");
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(election = ?e, error = %err, "could not move partition leadership")
                    }
                }
            }
        }
    }

    /// Live brokers whose lease ran out: (id, epoch). A broker not heard of since this
    /// node began to lead counts from then. The last live broker is never fenced: nobody
    /// could take over from it.
    fn expired(&self, node: &MetaNode, leading_since: Instant) -> Vec<(i32, i64)> {
        let live: Vec<(i32, i64)> =
            node.read(|s| s.live_brokers().map(|b| (b.node_id, b.epoch)).collect());
        if live.len() <= 1 {
            return Vec::new();
        }
        let leases = self.leases.lock();
        let mut out: Vec<(i32, i64)> = live
            .into_iter()
            .filter(|(id, _)| {
                let last = leases.get(id).copied().unwrap_or(leading_since);
                last.elapsed() > self.cfg.session_timeout
            })
            .collect();
        // Keep one broker alive even if all lapsed at once (a paused controller).
        if out.len() == node.read(|s| s.live_brokers().count()) {
            out.pop();
        }
        out
    }
}

/// Leadership changes to make: offline partitions whose topic allows an unclean election
/// get a live replica; with `rebalance`, partitions led by another than their preferred
/// replica get it back when it is in sync and alive.
fn elections(s: &ClusterState, rebalance: bool, unclean_default: bool) -> Vec<Command> {
    let mut out = Vec::new();
    for topic in s.topics.values() {
        let unclean = topic
            .configs
            .get("unclean.leader.election.enable")
            .map_or(unclean_default, |v| v == "true");
        for (i, p) in topic.partitions.iter().enumerate() {
            let kind = match p.leader < 0 {
                true if unclean => Election::Unclean,
                true => continue,
                false if rebalance => Election::Preferred,
                false => continue,
            };
            if let Ok(cmd) = election(s, topic.id, i as i32, kind) {
                out.push(cmd);
            }
        }
    }
    out
}

/// The kinds of leader election Kafka's ElectLeaders asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Election {
    /// Make the preferred replica (the first) the leader, if it is alive and in sync.
    Preferred,
    /// Give an offline partition a live replica as leader, in sync if one is, else any
    /// (losing what only the ISR had).
    Unclean,
}

/// Why an election is not held (each is a Kafka error code of ElectLeaders).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoElection {
    UnknownPartition,
    /// The partition already has the leader the election would give it.
    NotNeeded,
    /// The preferred replica is not alive or not in sync.
    PreferredNotAvailable,
    /// No replica of an offline partition is alive.
    NoEligibleLeader,
}

/// The command that holds election `kind` for a partition, as of state `s`.
pub fn election(
    s: &ClusterState,
    topic_id: uuid::Uuid,
    partition: i32,
    kind: Election,
) -> Result<Command, NoElection> {
    let alive = |id: i32| s.brokers.get(&id).is_some_and(|b| !b.fenced);
    let p = s
        .topic_by_id(topic_id)
        .and_then(|t| {
            usize::try_from(partition)
                .ok()
                .and_then(|i| t.partitions.get(i))
        })
        .ok_or(NoElection::UnknownPartition)?;
    let elect = |leader: i32, unclean: bool| Command::ElectLeader {
        topic_id,
        partition,
        partition_epoch: p.partition_epoch,
        leader,
        unclean,
    };
    match kind {
        Election::Preferred => {
            let preferred = *p.replicas.first().ok_or(NoElection::UnknownPartition)?;
            if preferred == p.leader {
                Err(NoElection::NotNeeded)
            } else if p.isr.contains(&preferred) && alive(preferred) {
                Ok(elect(preferred, false))
            } else {
                Err(NoElection::PreferredNotAvailable)
            }
        }
        Election::Unclean if p.leader >= 0 => Err(NoElection::NotNeeded),
        Election::Unclean => {
            let in_sync = p.isr.iter().copied().find(|r| alive(*r));
            match in_sync {
                Some(r) => Ok(elect(r, false)),
                None => p
                    .replicas
                    .iter()
                    .copied()
                    .find(|r| alive(*r))
                    .map(|r| elect(r, true))
                    .ok_or(NoElection::NoEligibleLeader),
            }
        }
    }
}

/// Places `partitions` new partitions of `replication_factor` replicas each over the live
/// `brokers` (id and rack), starting at partition index `first` so that added partitions
/// continue the pattern: brokers are taken in an order that alternates racks, so a
/// partition's replicas are on as many racks as there are, and leaders (the first
/// replica) are spread evenly. `None` if there are fewer brokers than replicas.
pub fn place_replicas(
    brokers: &[(i32, Option<String>)],
    partitions: usize,
    replication_factor: usize,
    first: usize,
) -> Option<Vec<Vec<i32>>> {
    if replication_factor == 0 || brokers.len() < replication_factor {
        return None;
    }
    // Racks in order, each with its brokers in id order; then one broker of each rack in
    // turn.
    let mut racks: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    let mut sorted = brokers.to_vec();
    sorted.sort();
    for (id, rack) in &sorted {
        racks
            .entry(rack.as_deref().unwrap_or(""))
            .or_default()
            .push(*id);
    }
    let mut order = Vec::with_capacity(sorted.len());
    for i in 0.. {
        let before = order.len();
        for ids in racks.values() {
            if let Some(id) = ids.get(i) {
                order.push(*id);
            }
        }
        if order.len() == before {
            break;
        }
    }
    let n = order.len();
    Some(
        (first..first + partitions)
            .map(|p| {
                (0..replication_factor)
                    .map(|r| order[(p + r) % n])
                    .collect()
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replicas_spread_over_racks_and_leaders_over_brokers() {
        let brokers = vec![
            (1, Some("a".to_string())),
            (2, Some("a".to_string())),
            (3, Some("b".to_string())),
            (4, Some("b".to_string())),
            (5, Some("c".to_string())),
            (6, Some("c".to_string())),
        ];
        let placed = place_replicas(&brokers, 6, 3, 0).unwrap();
        let rack = |id: i32| brokers.iter().find(|b| b.0 == id).unwrap().1.clone();
        for replicas in &placed {
            let racks: std::collections::BTreeSet<_> = replicas.iter().map(|r| rack(*r)).collect();
            assert_eq!(racks.len(), 3, "{replicas:?} on three racks");
        }
        let leaders: std::collections::BTreeSet<_> = placed.iter().map(|r| r[0]).collect();
        assert_eq!(leaders.len(), 6, "every broker leads one: {placed:?}");
        assert!(place_replicas(&brokers[..2], 1, 3, 0).is_none());
        // Added partitions continue where the first ones stopped.
        assert_eq!(place_replicas(&brokers, 1, 3, 6).unwrap()[0], placed[0]);
    }
}
