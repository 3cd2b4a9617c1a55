//! Transactions as the metadata quorum keeps them: one [`TxnMeta`] per
//! `transactional.id` (Kafka's `TransactionMetadata`, which Kafka keeps in
//! `__transaction_state`), changed only by the [`TxnCommand`]s below, each a checked
//! state transition applied atomically by every replica.
//!
//! Because the state is committed here, any broker can act as a transaction's
//! coordinator and finish what another one started: a transaction found in a `Prepare*`
//! state has had its outcome decided, and the markers only need writing (again). This
//! module decides nothing about markers, partitions or time: the broker's coordinator
//! does, and records each step here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::{ClusterState, CommandResult, OffsetCommit};

/// Where a transaction is (Kafka's `TransactionState`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum TxnState {
    /// No transaction since the producer was initialized.
    Empty,
    /// Partitions or groups were added; records may be written.
    Ongoing,
    /// The producer asked to commit; markers are being written.
    PrepareCommit,
    /// The producer (or a timeout, or a new instance) aborted; markers are being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Kafka's name for the state (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Ongoing => "Ongoing",
            Self::PrepareCommit => "PrepareCommit",
            Self::PrepareAbort => "PrepareAbort",
            Self::CompleteCommit => "CompleteCommit",
            Self::CompleteAbort => "CompleteAbort",
        }
    }

    /// Markers are being written: the outcome is decided.
    pub fn preparing(self) -> bool {
        matches!(self, Self::PrepareCommit | Self::PrepareAbort)
    }

    /// No transaction open or being decided: the producer may be re-initialized, and an
    /// idle id may expire.
    pub fn between_transactions(self) -> bool {
        matches!(
            self,
            Self::Empty | Self::CompleteCommit | Self::CompleteAbort
        )
    }
}

/// One transactional producer and its current transaction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// `transaction.timeout.ms` as the producer asked (within the broker's maximum).
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Partitions of the current transaction: topic name, then partitions.
    pub partitions: BTreeMap<String, BTreeSet<i32>>,
    /// Consumer groups whose offsets the transaction commits (AddOffsetsToTxn).
    pub groups: BTreeSet<String>,
    /// Offsets sent with TxnOffsetCommit: committed to their groups with the transaction.
    pub offsets: Vec<OffsetCommit>,
    /// Broker time the current transaction began (-1: none), for its timeout.
    pub started_ms: i64,
    /// Broker time of the last change.
    pub updated_ms: i64,
    /// KIP-890 transaction version 2: the producer id and epoch the client ended the
    /// current transaction with, when that end bumped the epoch. A retried EndTxn from
    /// them gets the same answer until the next transaction begins.
    #[serde(default)]
    pub ended_by: Option<(i64, i16)>,
    /// The producer id this transactional id moves to (at epoch 0) once the decided
    /// transaction completes: its epochs ran out (transaction version 2 bumps one per
    /// transaction).
    #[serde(default)]
    pub next_producer_id: Option<i64>,
}

impl TxnMeta {
    /// Whether `(topic, partition)` is part of the current transaction.
    pub fn has_partition(&self, topic: &str, partition: i32) -> bool {
        self.partitions
            .get(topic)
            .is_some_and(|p| p.contains(&partition))
    }

    /// The producer id and epoch the client goes on with after the current transaction.
    pub fn continues_as(&self) -> (i64, i16) {
        match self.next_producer_id {
            Some(next) => (next, 0),
            None => (self.producer_id, self.producer_epoch),
        }
    }
}

/// The last epoch a producer id may reach before a new producer id takes over.
pub const LAST_EPOCH: i16 = i16::MAX - 1;

/// Why a [`TxnCommand`] was not applied (the broker answers with Kafka's error code).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum TxnRefusal {
    /// No such transactional id, or it has another producer id (INVALID_PRODUCER_ID_MAPPING).
    UnknownProducer,
    /// An older epoch than the transactional id's current one (PRODUCER_FENCED).
    Fenced,
    /// The previous transaction's markers are still being written (CONCURRENT_TRANSACTIONS).
    Concurrent,
    /// Not allowed in the current state (INVALID_TXN_STATE).
    InvalidState,
    /// TxnOffsetCommit for a group the transaction did not add (INVALID_TXN_STATE too).
    GroupNotAdded,
}

/// A change to one transactional id's state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum TxnCommand {
    /// Starts the id with `producer_id`/`producer_epoch` (InitProducerId), as of the id's
    /// current producer `expect` (`None`: the id is new). Only between transactions.
    Init {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        timeout_ms: i32,
        expect: Option<(i64, i16)>,
        now_ms: i64,
    },
    /// Adds partitions and groups to the current transaction, starting one if none is
    /// open (AddPartitionsToTxn, AddOffsetsToTxn).
    Add {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
        groups: Vec<String>,
        now_ms: i64,
    },
    /// Records offsets to commit with the transaction (TxnOffsetCommit); an offset for a
    /// partition sent before is replaced.
    AddOffsets {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        group: String,
        offsets: Vec<OffsetCommit>,
    },
    /// Decides the open transaction's outcome (EndTxn, or an abort by the coordinator:
    /// then `bump_epoch` fences the producer instance that opened it). Retrying the
    /// same decision is accepted; an abort with no transaction open changes nothing.
    /// `client_bump` (EndTxn v5, transaction version 2) bumps the epoch for the client
    /// to go on with, moving to `next_producer_id` when the epochs run out; a retry
    /// from the epoch before the bump is answered as the first one was.
    Prepare {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        bump_epoch: bool,
        #[serde(default)]
        client_bump: bool,
        #[serde(default)]
        next_producer_id: Option<i64>,
        now_ms: i64,
    },
    /// Every marker is written: the transaction is complete, and its offsets (if it
    /// committed) are committed to their groups.
    Complete {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    },
    /// Forgets an idle transactional id (Kafka's `transactional.id.expiration.ms`): only
    /// between transactions, only as of producer `producer_id`/`producer_epoch`, and only
    /// if nothing changed it after `idle_since_ms`, so a client step that raced the
    /// expiry wins. A producer that comes back with the old id and epoch then gets
    /// INVALID_PRODUCER_ID_MAPPING, and InitProducerId starts the id afresh.
    Expire {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        idle_since_ms: i64,
    },
}

impl ClusterState {
    /// The transactional id whose producer is `producer_id`, with its state.
    pub fn transaction_of(&self, producer_id: i64) -> Option<(&String, &TxnMeta)> {
        self.transactions
            .iter()
            .find(|(_, t)| t.producer_id == producer_id)
    }

    pub(crate) fn apply_txn(&mut self, cmd: TxnCommand) -> CommandResult {
        match self.txn_step(cmd) {
            Ok(meta) => CommandResult::Transaction(Box::new(meta)),
            Err(refusal) => CommandResult::TransactionRefused(refusal),
        }
    }

    fn txn_step(&mut self, cmd: TxnCommand) -> Result<TxnMeta, TxnRefusal> {
        use TxnState::*;
        match cmd {
            TxnCommand::Init {
                transactional_id,
                producer_id,
                producer_epoch,
                timeout_ms,
                expect,
                now_ms,
            } => {
                let current = self.transactions.get(&transactional_id);
                if current.map(|t| (t.producer_id, t.producer_epoch)) != expect {
                    return Err(TxnRefusal::Concurrent);
                }
                if current.is_some_and(|t| !t.state.between_transactions()) {
                    return Err(TxnRefusal::Concurrent);
                }
                let meta = TxnMeta {
                    producer_id,
                    producer_epoch,
                    timeout_ms,
                    state: Empty,
                    partitions: BTreeMap::new(),
                    groups: BTreeSet::new(),
                    offsets: Vec::new(),
                    started_ms: -1,
                    updated_ms: now_ms,
                    ended_by: None,
                    next_producer_id: None,
                };
                self.transactions.insert(transactional_id, meta.clone());
                Ok(meta)
            }
            TxnCommand::Add {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
                groups,
                now_ms,
            } => {
                let t = self.current_txn(&transactional_id, producer_id, producer_epoch)?;
                match t.state {
                    PrepareCommit | PrepareAbort => return Err(TxnRefusal::Concurrent),
                    Empty | CompleteCommit | CompleteAbort => {
                        t.state = Ongoing;
                        t.ended_by = None;
                        t.started_ms = now_ms;
                        t.partitions.clear();
                        t.groups.clear();
                        t.offsets.clear();
                    }
                    Ongoing => {}
                }
                for (topic, partition) in partitions {
                    t.partitions.entry(topic).or_default().insert(partition);
                }
                t.groups.extend(groups);
                t.updated_ms = now_ms;
                Ok(t.clone())
            }
            TxnCommand::AddOffsets {
                transactional_id,
                producer_id,
                producer_epoch,
                group,
                offsets,
            } => {
                let t = self.current_txn(&transactional_id, producer_id, producer_epoch)?;
                if t.state != Ongoing {
                    return Err(TxnRefusal::InvalidState);
                }
                if !t.groups.contains(&group) {
                    return Err(TxnRefusal::GroupNotAdded);
                }
                for o in offsets {
                    t.offsets.retain(|x| {
                        (&x.group, &x.topic, x.partition) != (&o.group, &o.topic, o.partition)
                    });
                    t.offsets.push(o);
                }
                Ok(t.clone())
            }
            TxnCommand::Prepare {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
                bump_epoch,
                client_bump,
                next_producer_id,
                now_ms,
            } => {
                let decided = if commit { PrepareCommit } else { PrepareAbort };
                let done = if commit {
                    CompleteCommit
                } else {
                    CompleteAbort
                };
                if let Some(t) = self.transactions.get(&transactional_id)
                    && client_bump
                    && t.ended_by == Some((producer_id, producer_epoch))
                    && (t.state == decided || t.state == done)
                {
                    return Ok(t.clone()); // a retried EndTxn v5
                }
                let t = self.current_txn(&transactional_id, producer_id, producer_epoch)?;
                // Transaction version 2 aborts even with nothing open (the client may have
                // begun one it never sent a batch of): the epoch moves on all the same.
                let empty_abort = client_bump && !commit && t.state.between_transactions();
                match t.state {
                    Ongoing => {}
                    // (An ended transaction left no partitions, groups or offsets behind.)
                    _ if empty_abort => {}
                    // A retried EndTxn after the decision (or after the markers).
                    s if s == decided || s == done => return Ok(t.clone()),
                    // Nothing open to abort.
                    Empty if !commit => return Ok(t.clone()),
                    // The other decision was taken: a client told "aborted" after a commit
                    // (or the reverse) would process its input again.
                    _ => return Err(TxnRefusal::InvalidState),
                }
                t.state = decided;
                if bump_epoch || client_bump {
                    t.producer_epoch = t.producer_epoch.saturating_add(1);
                    // A version-2 client's EndTxn from the epoch before is answered with
                    // this decision (after a timeout abort too, which it can recover from).
                    t.ended_by = Some((producer_id, producer_epoch));
                }
                if client_bump {
                    t.next_producer_id =
                        next_producer_id.filter(|_| t.producer_epoch >= LAST_EPOCH);
                }
                t.updated_ms = now_ms;
                Ok(t.clone())
            }
            TxnCommand::Complete {
                transactional_id,
                producer_id,
                producer_epoch,
                now_ms,
            } => {
                let t = self
                    .transactions
                    .get_mut(&transactional_id)
                    .filter(|t| t.producer_id == producer_id)
                    .ok_or(TxnRefusal::UnknownProducer)?;
                if t.producer_epoch != producer_epoch {
                    return Err(TxnRefusal::Fenced);
                }
                let offsets = match t.state {
                    PrepareCommit => {
                        t.state = CompleteCommit;
                        std::mem::take(&mut t.offsets)
                    }
                    PrepareAbort => {
                        t.state = CompleteAbort;
                        Vec::new()
                    }
                    _ => return Err(TxnRefusal::InvalidState),
                };
                t.partitions.clear();
                t.groups.clear();
                t.offsets.clear();
                t.started_ms = -1;
                t.updated_ms = now_ms;
                if let Some(next) = t.next_producer_id.take() {
                    (t.producer_id, t.producer_epoch) = (next, 0);
                }
                let meta = t.clone();
                self.commit_offsets(offsets);
                Ok(meta)
            }
            TxnCommand::Expire {
                transactional_id,
                producer_id,
                producer_epoch,
                idle_since_ms,
            } => {
                let t = self.current_txn(&transactional_id, producer_id, producer_epoch)?;
                if !t.state.between_transactions() || t.updated_ms > idle_since_ms {
                    return Err(TxnRefusal::InvalidState);
                }
                self.transactions
                    .remove(&transactional_id)
                    .ok_or(TxnRefusal::UnknownProducer)
            }
        }
    }

    /// The state of `transactional_id` if `producer_id` at `producer_epoch` is its
    /// current producer.
    fn current_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<&mut TxnMeta, TxnRefusal> {
        let t = self
            .transactions
            .get_mut(transactional_id)
            .ok_or(TxnRefusal::UnknownProducer)?;
        // The producer id the client was told to go on with, before its predecessor's
        // transaction completed.
        if t.next_producer_id == Some(producer_id) {
            return Err(TxnRefusal::Concurrent);
        }
        if t.producer_id != producer_id {
            return Err(TxnRefusal::UnknownProducer);
        }
        if producer_epoch < t.producer_epoch {
            return Err(TxnRefusal::Fenced);
        }
        if producer_epoch > t.producer_epoch {
            return Err(TxnRefusal::UnknownProducer);
        }
        Ok(t)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::CommittedOffset;

    fn apply(s: &mut ClusterState, cmd: TxnCommand) -> Result<TxnMeta, TxnRefusal> {
        match s.apply(crate::Command::Transaction(cmd)) {
            CommandResult::Transaction(t) => Ok(*t),
            CommandResult::TransactionRefused(r) => Err(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn init(id: &str, epoch: i16, expect: Option<(i64, i16)>) -> TxnCommand {
        TxnCommand::Init {
            transactional_id: id.into(),
            producer_id: 7,
            producer_epoch: epoch,
            timeout_ms: 60_000,
            expect,
            now_ms: 1,
        }
    }

    fn add(epoch: i16, partitions: &[(&str, i32)], groups: &[&str]) -> TxnCommand {
        TxnCommand::Add {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: epoch,
            partitions: partitions
                .iter()
                .map(|(t, p)| (t.to_string(), *p))
                .collect(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            now_ms: 5,
        }
    }

    fn prepare(epoch: i16, commit: bool, bump: bool) -> TxnCommand {
        TxnCommand::Prepare {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: epoch,
            commit,
            bump_epoch: bump,
            client_bump: false,
            next_producer_id: None,
            now_ms: 9,
        }
    }

    /// Applies `cmd` and checks the state it leaves and the producer to go on with.
    fn ends(s: &mut ClusterState, cmd: TxnCommand, state: TxnState, continues: (i64, i16)) {
        let t = apply(s, cmd).unwrap();
        assert_eq!((t.state, t.continues_as()), (state, continues));
    }

    /// EndTxn v5 (transaction version 2) from producer 7 or `pid`.
    fn end_v2(pid: i64, epoch: i16, commit: bool, next: Option<i64>) -> TxnCommand {
        TxnCommand::Prepare {
            transactional_id: "t".into(),
            producer_id: pid,
            producer_epoch: epoch,
            commit,
            bump_epoch: false,
            client_bump: true,
            next_producer_id: next,
            now_ms: 9,
        }
    }

    fn complete(epoch: i16) -> TxnCommand {
        TxnCommand::Complete {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: epoch,
            now_ms: 10,
        }
    }

    fn offset(group: &str, offset: i64) -> OffsetCommit {
        OffsetCommit {
            group: group.into(),
            topic: "in".into(),
            partition: 0,
            committed: CommittedOffset {
                offset,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 3,
            },
            protocol_type: String::new(),
        }
    }

    /// A state with topic `in`, for offsets to land in.
    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(crate::Command::CreateTopic {
            name: "in".into(),
            id: uuid::Uuid::from_u128(1),
            partitions: Vec::new(),
            configs: BTreeMap::new(),
        });
        s
    }

    fn expire(epoch: i16, idle_since_ms: i64) -> TxnCommand {
        TxnCommand::Expire {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: epoch,
            idle_since_ms,
        }
    }

    #[test]
    fn only_an_idle_transactional_id_between_transactions_expires() {
        let mut s = state();
        apply(&mut s, init("t", 0, None)).unwrap();
        apply(&mut s, add(0, &[("out", 0)], &[])).unwrap();
        // Open, or being decided: never.
        assert_eq!(apply(&mut s, expire(0, 100)), Err(TxnRefusal::InvalidState));
        apply(&mut s, prepare(0, true, false)).unwrap();
        assert_eq!(apply(&mut s, expire(0, 100)), Err(TxnRefusal::InvalidState));
        apply(&mut s, complete(0)).unwrap();
        // Changed after the cutoff (completed at 10): a client was still using it.
        assert_eq!(apply(&mut s, expire(0, 9)), Err(TxnRefusal::InvalidState));
        // Another producer (a newer epoch took over): the expiry was planned on stale state.
        assert_eq!(
            apply(&mut s, expire(1, 100)),
            Err(TxnRefusal::UnknownProducer)
        );
        assert!(s.transactions.contains_key("t"));
        let gone = apply(&mut s, expire(0, 10)).unwrap();
        assert_eq!(
            (gone.producer_id, gone.state),
            (7, TxnState::CompleteCommit)
        );
        assert!(!s.transactions.contains_key("t"));
        // The old producer is unknown now; a new InitProducerId starts the id afresh.
        assert_eq!(
            apply(&mut s, add(0, &[("out", 0)], &[])),
            Err(TxnRefusal::UnknownProducer)
        );
        assert_eq!(
            apply(&mut s, init("t", 0, None)).unwrap().state,
            TxnState::Empty
        );
    }

    #[test]
    fn a_committed_transaction_commits_its_offsets_and_an_aborted_one_does_not() {
        let mut s = state();
        apply(&mut s, init("t", 0, None)).unwrap();
        let t = apply(&mut s, add(0, &[("out", 1), ("out", 0)], &["g"])).unwrap();
        assert_eq!((t.state, t.started_ms), (TxnState::Ongoing, 5));
        assert!(t.has_partition("out", 0) && !t.has_partition("out", 2));
        apply(&mut s, add_offsets(0, vec![offset("g", 10)])).unwrap();
        // Not visible before the commit completes.
        apply(&mut s, prepare(0, true, false)).unwrap();
        assert!(!s.groups.contains_key("g"));
        // A retried EndTxn is accepted; the other decision is not.
        apply(&mut s, prepare(0, true, false)).unwrap();
        assert_eq!(
            apply(&mut s, prepare(0, false, false)),
            Err(TxnRefusal::InvalidState)
        );
        assert_eq!(
            apply(&mut s, add(0, &[("out", 2)], &[])),
            Err(TxnRefusal::Concurrent)
        );
        let t = apply(&mut s, complete(0)).unwrap();
        assert_eq!(t.state, TxnState::CompleteCommit);
        assert_eq!(
            apply(&mut s, prepare(0, false, false)),
            Err(TxnRefusal::InvalidState),
            "an abort after the commit is not answered as done"
        );
        assert!(t.partitions.is_empty() && t.offsets.is_empty());
        assert_eq!(s.groups["g"]["in"][&0].offset, 10);

        // The next transaction aborts: its offsets are dropped.
        apply(&mut s, add(0, &[("out", 0)], &["g"])).unwrap();
        apply(&mut s, add_offsets(0, vec![offset("g", 20)])).unwrap();
        apply(&mut s, prepare(0, false, false)).unwrap();
        assert_eq!(
            apply(&mut s, complete(0)).unwrap().state,
            TxnState::CompleteAbort
        );
        assert_eq!(s.groups["g"]["in"][&0].offset, 10);
    }

    fn add_offsets(epoch: i16, offsets: Vec<OffsetCommit>) -> TxnCommand {
        TxnCommand::AddOffsets {
            transactional_id: "t".into(),
            producer_id: 7,
            producer_epoch: epoch,
            group: "g".into(),
            offsets,
        }
    }

    #[test]
    fn epochs_fence_old_producers_and_init_waits_for_open_transactions() {
        let mut s = state();
        apply(&mut s, init("t", 0, None)).unwrap();
        assert_eq!(
            apply(&mut s, init("t", 0, None)),
            Err(TxnRefusal::Concurrent)
        );
        apply(&mut s, add(0, &[("out", 0)], &[])).unwrap();
        // A new instance cannot take over while the transaction is open...
        assert_eq!(
            apply(&mut s, init("t", 1, Some((7, 0)))),
            Err(TxnRefusal::Concurrent)
        );
        // ...so the coordinator aborts it, fencing the old epoch.
        let t = apply(&mut s, prepare(0, false, true)).unwrap();
        assert_eq!((t.state, t.producer_epoch), (TxnState::PrepareAbort, 1));
        assert_eq!(apply(&mut s, complete(0)), Err(TxnRefusal::Fenced));
        apply(&mut s, complete(1)).unwrap();
        apply(&mut s, init("t", 2, Some((7, 1)))).unwrap();
        assert_eq!(
            apply(&mut s, add(1, &[("out", 0)], &[])),
            Err(TxnRefusal::Fenced)
        );
        assert_eq!(
            apply(&mut s, add(3, &[("out", 0)], &[])),
            Err(TxnRefusal::UnknownProducer)
        );
        // Offsets for a group the transaction did not add are refused.
        apply(&mut s, add(2, &[("out", 0)], &[])).unwrap();
        assert_eq!(
            apply(&mut s, add_offsets(2, vec![offset("g", 1)])),
            Err(TxnRefusal::GroupNotAdded)
        );
        assert_eq!(s.transaction_of(7).map(|(id, _)| id.as_str()), Some("t"));
    }

    #[test]
    fn transaction_version_2_bumps_the_epoch_at_every_end_and_answers_retries() {
        let mut s = state();
        apply(&mut s, init("t", 0, None)).unwrap();
        apply(&mut s, add(0, &[("out", 0)], &[])).unwrap();
        let first = end_v2(7, 0, true, None);
        ends(&mut s, first.clone(), TxnState::PrepareCommit, (7, 1));
        // The markers carry the bumped epoch; a retry from epoch 0 gets the same answer.
        apply(&mut s, complete(1)).unwrap();
        ends(&mut s, first, TxnState::CompleteCommit, (7, 1));
        assert_eq!(
            apply(&mut s, end_v2(7, 0, false, None)),
            Err(TxnRefusal::Fenced),
            "the other decision from the old epoch"
        );
        // The next transaction, at epoch 1: from then on epoch 0 is fenced everywhere.
        apply(&mut s, add(1, &[("out", 1)], &[])).unwrap();
        assert_eq!(
            apply(&mut s, end_v2(7, 0, true, None)),
            Err(TxnRefusal::Fenced)
        );
        assert_eq!(
            apply(&mut s, add(0, &[("out", 0)], &[])),
            Err(TxnRefusal::Fenced)
        );
    }

    #[test]
    fn a_version_2_abort_moves_the_epoch_on_with_nothing_open_and_after_a_timeout() {
        let mut s = state();
        apply(&mut s, init("t", 0, None)).unwrap();
        // Nothing open (the client began a transaction it never sent a batch of).
        let t = apply(&mut s, end_v2(7, 0, false, None)).unwrap();
        assert_eq!((t.state, t.producer_epoch), (TxnState::PrepareAbort, 1));
        assert!(t.partitions.is_empty());
        apply(&mut s, complete(1)).unwrap();

        // The coordinator aborts a transaction past its timeout, bumping the epoch: the
        // version-2 client's own abort from epoch 1 is then answered as done, with the
        // epoch to go on with; a commit from it, or a version-1 client's end, is fenced.
        apply(&mut s, add(1, &[("out", 0)], &[])).unwrap();
        apply(&mut s, prepare(1, false, true)).unwrap();
        apply(&mut s, complete(2)).unwrap();
        ends(
            &mut s,
            end_v2(7, 1, false, None),
            TxnState::CompleteAbort,
            (7, 2),
        );
        assert_eq!(
            apply(&mut s, end_v2(7, 1, true, None)),
            Err(TxnRefusal::Fenced)
        );
        assert_eq!(
            apply(&mut s, prepare(1, false, false)),
            Err(TxnRefusal::Fenced)
        );
    }

    #[test]
    fn a_producer_out_of_epochs_moves_to_the_next_producer_id_when_its_transaction_completes() {
        let mut s = state();
        apply(&mut s, init("t", LAST_EPOCH - 1, None)).unwrap();
        apply(&mut s, add(LAST_EPOCH - 1, &[("out", 0)], &[])).unwrap();
        let t = apply(&mut s, end_v2(7, LAST_EPOCH - 1, false, Some(8))).unwrap();
        assert_eq!((t.producer_epoch, t.continues_as()), (LAST_EPOCH, (8, 0)));
        // Until the markers are written, the new producer id waits.
        let early = TxnCommand::Add {
            transactional_id: "t".into(),
            producer_id: 8,
            producer_epoch: 0,
            partitions: vec![("out".into(), 0)],
            groups: Vec::new(),
            now_ms: 11,
        };
        assert_eq!(apply(&mut s, early.clone()), Err(TxnRefusal::Concurrent));
        let done = apply(&mut s, complete(LAST_EPOCH)).unwrap();
        assert_eq!((done.producer_id, done.producer_epoch), (8, 0));
        assert_eq!(s.transaction_of(7), None);
        let retry = apply(&mut s, end_v2(7, LAST_EPOCH - 1, false, None)).unwrap();
        assert_eq!(retry.continues_as(), (8, 0));
        assert_eq!(apply(&mut s, early).unwrap().state, TxnState::Ongoing);
    }
}
