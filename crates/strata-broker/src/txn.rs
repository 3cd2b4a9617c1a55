//! The transaction coordinator (Kafka's `TransactionCoordinator`): InitProducerId for a
//! `transactional.id`, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit and EndTxn,
//! and the background work that finishes decided transactions and aborts timed-out ones.
//!
//! Every step is a checked transition of the transaction's state in the metadata quorum
//! (`strata_meta::TxnCommand`), so the state survives the coordinator, and whichever
//! broker coordinates the id next (FindCoordinator hashes the id over the live brokers,
//! as for groups) finishes what was decided. Ending a transaction is two steps, as in
//! Kafka: the decision (`Prepare*`) is committed first, then the markers are written to
//! every partition of the transaction through a [`MarkerWriter`] (the broker: locally,
//! or with WriteTxnMarkers to the partition's leader), then the transaction is complete
//! (and its offsets, if it committed, are committed to their groups at that moment).
//!
//! This module owns the protocol of those steps and the error codes clients see; it does
//! not touch partition logs or sockets (the [`MarkerWriter`] does) and keeps no state of
//! its own beyond a lock per transactional id that orders this broker's steps on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kafka_protocol::ResponseError;
use strata_meta::{
    Command, CommandResult, LAST_EPOCH, MetaNode, OffsetCommit, TxnCommand, TxnMeta, TxnRefusal,
    TxnState,
};
use strata_telemetry::TxnMetrics;
use tracing::{info, warn};

use crate::producer_ids::ProducerIds;

/// What a transaction marker says, for one producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Marker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
}

/// Writes transaction markers to the leaders of partitions.
pub(crate) trait MarkerWriter: Send + Sync {
    /// Writes `marker` to every partition of `partitions` (topic name, then partitions)
    /// and returns once each is acknowledged as acks=all data is; partitions of deleted
    /// topics count as done. The error says which partitions are missing.
    fn write_markers<'a>(
        &'a self,
        marker: Marker,
        partitions: &'a BTreeMap<String, BTreeSet<i32>>,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The highest Kafka `transaction.version` this software supports (KIP-890 part 2:
/// an epoch bump at every EndTxn v5, partitions and groups added by Produce v12 and
/// TxnOffsetCommit v5). ApiVersions finalizes it once every registered broker has it.
pub(crate) const TRANSACTION_VERSION: i16 = 2;

/// The metadata version that brought `TxnCommand::Expire` (see `strata_meta::METADATA_VERSION`).
const EXPIRE_METADATA_VERSION: u16 = 1;

/// Most transactional ids one coordinator pass expires (each is a quorum write).
const EXPIRE_PER_PASS: usize = 1000;

/// How long EndTxn waits for the markers before answering (the decision is durable by
/// then; what is left is finished in the background).
const MARKER_WAIT: Duration = Duration::from_secs(10);

/// The coordinator's settings, from the broker config.
pub(crate) struct TxnConfig {
    /// `transaction.max.timeout.ms`.
    pub max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`.
    pub id_expiration_ms: i64,
    /// `transaction.remove.expired.transaction.cleanup.interval.ms`.
    pub expiry_interval_ms: i64,
}

pub(crate) struct TxnCoordinator {
    meta: MetaNode,
    producer_ids: Arc<ProducerIds>,
    /// `transaction.max.timeout.ms`.
    max_timeout_ms: i32,
    /// `transactional.id.expiration.ms` and how often to look for expired ids.
    expiration_ms: i64,
    expiry_every_ms: i64,
    /// When this broker last looked for expired ids.
    expiry_checked_ms: std::sync::atomic::AtomicI64,
    /// Orders this broker's steps on one transactional id.
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: TxnMetrics,
}

/// Whether the coordinator's background work has something to do with `t`: finish its
/// decided transaction, or abort its open one past the timeout.
fn due(t: &TxnMeta, now_ms: i64) -> bool {
    t.state.preparing()
        || (t.state == TxnState::Ongoing && now_ms - t.started_ms > i64::from(t.timeout_ms))
}

/// Kafka's error code for a refused step.
fn refusal_code(r: TxnRefusal) -> ResponseError {
    match r {
        TxnRefusal::UnknownProducer => ResponseError::InvalidProducerIdMapping,
        TxnRefusal::Fenced => ResponseError::ProducerFenced,
        TxnRefusal::Concurrent => ResponseError::ConcurrentTransactions,
        TxnRefusal::InvalidState | TxnRefusal::GroupNotAdded => ResponseError::InvalidTxnState,
    }
}

impl TxnCoordinator {
    pub(crate) fn new(
        meta: MetaNode,
        producer_ids: Arc<ProducerIds>,
        cfg: TxnConfig,
        metrics: TxnMetrics,
    ) -> Self {
        Self {
            meta,
            producer_ids,
            max_timeout_ms: cfg.max_timeout_ms,
            expiration_ms: cfg.id_expiration_ms,
            expiry_every_ms: cfg.expiry_interval_ms,
            expiry_checked_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            locks: parking_lot::Mutex::default(),
            metrics,
        }
    }

    /// Applies one step, mapping a refusal to Kafka's error code.
    async fn step(&self, cmd: TxnCommand) -> Result<TxnMeta, ResponseError> {
        match self.meta.write(Command::Transaction(cmd)).await {
            Ok(CommandResult::Transaction(t)) => Ok(*t),
            Ok(CommandResult::TransactionRefused(r)) => Err(refusal_code(r)),
            Ok(other) => {
                tracing::error!(result = ?other, "unexpected answer to a transaction step");
                Err(ResponseError::UnknownServerError)
            }
            // The quorum is electing a leader, or unreachable: the coordinator is not
            // available for now, which every client retries (Kafka's mapping too).
            Err(e) => {
                warn!(error = %e, "transaction step not committed");
                Err(ResponseError::CoordinatorNotAvailable)
            }
        }
    }

    fn lock(&self, transactional_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock();
        // Forget the locks nobody holds, so the map stays as small as the work in hand.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks
            .entry(transactional_id.to_string())
            .or_default()
            .clone()
    }

    fn current(&self, transactional_id: &str) -> Option<TxnMeta> {
        self.meta
            .read(|s| s.transactions.get(transactional_id).cloned())
    }

    /// InitProducerId with a `transactional.id`: the id's producer id with a new epoch
    /// (fencing every earlier instance), after aborting (or finishing) the transaction
    /// an earlier instance left open. `given` is the producer id and epoch a client
    /// that already has one sends (KIP-360), checked against the id's.
    pub(crate) async fn init_producer(
        &self,
        transactional_id: &str,
        timeout_ms: i32,
        given: Option<(i64, i16)>,
        markers: &dyn MarkerWriter,
        now_ms: i64,
    ) -> Result<(i64, i16), ResponseError> {
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let lock = self.lock(transactional_id);
        let _held = lock.lock().await;
        // An open transaction is aborted and a decided one finished first; then the
        // epoch is bumped. Each pass makes progress, so three suffice.
        for _ in 0..3 {
            let current = self.current(transactional_id);
            // A decided transaction is finished first (it may move the id to its next
            // producer id, which a client sending that one then matches).
            if let Some(t) = current.as_ref().filter(|t| t.state.preparing()) {
                self.finish(transactional_id, t, markers, now_ms).await?;
                continue;
            }
            if let (Some(t), Some((pid, epoch))) = (&current, given) {
                if t.producer_id != pid {
                    return Err(ResponseError::InvalidProducerIdMapping);
                }
                // A retry whose first answer was lost: it already bumped the epoch.
                if t.state == TxnState::Empty && i32::from(epoch) + 1 == i32::from(t.producer_epoch)
                {
                    return Ok((t.producer_id, t.producer_epoch));
                }
                if epoch != t.producer_epoch {
                    return Err(ResponseError::ProducerFenced);
                }
            }
            let (producer_id, producer_epoch) = match &current {
                Some(t) if t.state == TxnState::Ongoing => {
                    info!(
                        transactional_id,
                        "a new producer instance aborts its predecessor's open transaction"
                    );
                    let t = self
                        .step(TxnCommand::Prepare {
                            transactional_id: transactional_id.to_string(),
                            producer_id: t.producer_id,
                            producer_epoch: t.producer_epoch,
                            commit: false,
                            bump_epoch: true,
                            client_bump: false,
                            next_producer_id: None,
                            now_ms,
                        })
                        .await?;
                    self.finish(transactional_id, &t, markers, now_ms).await?;
                    continue;
                }
                // Epochs run out: a new producer id starts again at 0.
                Some(t) if t.producer_epoch < LAST_EPOCH => (t.producer_id, t.producer_epoch + 1),
                _ => (self.producer_ids.next(&self.meta).await?, 0),
            };
            let t = self
                .step(TxnCommand::Init {
                    transactional_id: transactional_id.to_string(),
                    producer_id,
                    producer_epoch,
                    timeout_ms,
                    expect: current.map(|t| (t.producer_id, t.producer_epoch)),
                    now_ms,
                })
                .await?;
            return Ok((t.producer_id, t.producer_epoch));
        }
        Err(ResponseError::ConcurrentTransactions)
    }

    /// AddPartitionsToTxn and AddOffsetsToTxn: adds to the current transaction, opening
    /// one if none is.
    pub(crate) async fn add(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
        groups: Vec<String>,
        now_ms: i64,
    ) -> Result<(), ResponseError> {
        self.step(TxnCommand::Add {
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch,
            partitions,
            groups,
            now_ms,
        })
        .await
        .map(drop)
    }

    /// TxnOffsetCommit: offsets committed to `group` if the transaction commits.
    pub(crate) async fn add_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group: &str,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), ResponseError> {
        self.step(TxnCommand::AddOffsets {
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch,
            group: group.to_string(),
            offsets,
        })
        .await
        .map(drop)
    }

    /// EndTxn: decides the transaction, then writes its markers and completes it (within
    /// [`MARKER_WAIT`]; after that the decision stands and the background finishes it).
    /// With `client_bump` (EndTxn v5, KIP-890 transaction version 2) the epoch is bumped
    /// at every end, so nothing the client sent before can join a later transaction.
    /// Returns the producer id and epoch the client goes on with.
    pub(crate) async fn end(
        &self,
        transactional_id: &str,
        (producer_id, producer_epoch): (i64, i16),
        commit: bool,
        client_bump: bool,
        markers: &dyn MarkerWriter,
        now_ms: i64,
    ) -> Result<(i64, i16), ResponseError> {
        let lock = self.lock(transactional_id);
        let _held = lock.lock().await;
        // Epochs run out: the next producer id is taken now, used once this completes
        // (not for a retry from the epoch before the bump, which has its answer).
        let out_of_epochs = client_bump
            && self.current(transactional_id).is_some_and(|t| {
                (t.producer_id, t.producer_epoch) == (producer_id, producer_epoch)
                    && producer_epoch.saturating_add(1) >= LAST_EPOCH
            });
        let next_producer_id = match out_of_epochs {
            true => Some(self.producer_ids.next(&self.meta).await?),
            false => None,
        };
        let t = self
            .step(TxnCommand::Prepare {
                transactional_id: transactional_id.to_string(),
                producer_id,
                producer_epoch,
                commit,
                bump_epoch: false,
                client_bump,
                next_producer_id,
                now_ms,
            })
            .await?;
        if t.state.preparing()
            && let Err(code) = self.finish(transactional_id, &t, markers, now_ms).await
        {
            warn!(transactional_id, error = %code, "transaction decided; its markers are retried in the background");
        }
        Ok(match client_bump {
            true => t.continues_as(),
            false => (producer_id, producer_epoch),
        })
    }

    /// Writes the markers of decided transaction `t` (within [`MARKER_WAIT`]) and
    /// completes it.
    async fn finish(
        &self,
        transactional_id: &str,
        t: &TxnMeta,
        markers: &dyn MarkerWriter,
        now_ms: i64,
    ) -> Result<(), ResponseError> {
        let marker = Marker {
            producer_id: t.producer_id,
            producer_epoch: t.producer_epoch,
            commit: t.state == TxnState::PrepareCommit,
        };
        let written =
            tokio::time::timeout(MARKER_WAIT, markers.write_markers(marker, &t.partitions))
                .await
                .unwrap_or_else(|_| Err(format!("not all written within {MARKER_WAIT:?}")));
        if let Err(e) = written {
            warn!(transactional_id, error = %e, "transaction markers not written yet");
            return Err(ResponseError::ConcurrentTransactions);
        }
        self.step(TxnCommand::Complete {
            transactional_id: transactional_id.to_string(),
            producer_id: t.producer_id,
            producer_epoch: t.producer_epoch,
            now_ms,
        })
        .await?;
        let result = if marker.commit { "commit" } else { "abort" };
        self.metrics
            .completed_total
            .with_label_values(&[result])
            .inc();
        info!(
            transactional_id,
            producer_id = t.producer_id,
            commit = marker.commit,
            partitions = t.partitions.values().map(BTreeSet::len).sum::<usize>(),
            "transaction complete"
        );
        Ok(())
    }

    /// One pass of the coordinator's background work over the ids this broker
    /// coordinates (`mine`): decided transactions left unfinished (a coordinator died, a
    /// leader was away) are finished, and open ones past their timeout are aborted, which
    /// fences the producer that opened them (Kafka's epoch bump on timeout).
    pub(crate) async fn tick(
        &self,
        mine: &(dyn Fn(&str) -> bool + Send + Sync),
        markers: &dyn MarkerWriter,
        now_ms: i64,
    ) {
        // `mine` reads the metadata itself: it is asked outside this read, since a read
        // taken under another waits behind any writer queued in between (a deadlock).
        // Only what the pass acts on or counts: ids between transactions and not yet due
        // (most of them, in a large cluster) are not copied.
        let all: Vec<(String, Option<i64>, bool)> = self.meta.read(|s| {
            s.transactions
                .iter()
                .filter(|(_, t)| t.state == TxnState::Ongoing || due(t, now_ms))
                .map(|(id, t)| {
                    let open = (t.state == TxnState::Ongoing).then_some(t.started_ms);
                    (id.clone(), open, due(t, now_ms))
                })
                .collect()
        });
        let ours: Vec<(String, Option<i64>, bool)> =
            all.into_iter().filter(|(id, _, _)| mine(id)).collect();
        let open: Vec<i64> = ours.iter().filter_map(|(_, open, _)| *open).collect();
        let (open, oldest) = (open.len(), open.iter().copied().min());
        let work: Vec<String> = ours
            .into_iter()
            .filter(|(_, _, due)| *due)
            .map(|(id, _, _)| id)
            .collect();
        self.metrics.open.set(open as i64);
        self.metrics
            .oldest_open_seconds
            .set(oldest.map_or(0, |started| (now_ms - started).max(0) / 1000));
        for id in work {
            let lock = self.lock(&id);
            let Ok(_held) = lock.try_lock() else {
                continue; // a client's step is under way on this id
            };
            // Looked at again under the lock: the transaction seen above may have ended
            // and a new one begun since, which must not be ended in its place.
            let Some(t) = self.current(&id).filter(|t| due(t, now_ms)) else {
                continue;
            };
            let decided = if t.state == TxnState::Ongoing {
                warn!(transactional_id = %id, timeout_ms = t.timeout_ms, "transaction timed out: aborting it");
                self.metrics.timed_out_total.inc();
                self.step(TxnCommand::Prepare {
                    transactional_id: id.clone(),
                    producer_id: t.producer_id,
                    producer_epoch: t.producer_epoch,
                    commit: false,
                    bump_epoch: true,
                    client_bump: false,
                    next_producer_id: None,
                    now_ms,
                })
                .await
            } else {
                Ok(t)
            };
            match decided {
                Ok(t) if t.state.preparing() => {
                    let _ = self.finish(&id, &t, markers, now_ms).await;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(transactional_id = %id, error = %e, "could not abort a timed-out transaction")
                }
            }
        }
        self.expire_idle(mine, now_ms).await;
    }

    /// Forgets the ids this broker coordinates that have had no transaction open and no
    /// request for `transactional.id.expiration.ms`, at most every
    /// `transaction.remove.expired.transaction.cleanup.interval.ms` and at most
    /// [`EXPIRE_PER_PASS`] a pass (the rest wait for the next), once every broker applies
    /// the command (a rolling upgrade may still be under way).
    async fn expire_idle(&self, mine: &(dyn Fn(&str) -> bool + Send + Sync), now_ms: i64) {
        use std::sync::atomic::Ordering;
        let last = self.expiry_checked_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < self.expiry_every_ms {
            return;
        }
        let idle_since = now_ms.saturating_sub(self.expiration_ms);
        let (version, idle): (u16, Vec<(String, i64, i16)>) = self.meta.read(|s| {
            let idle = s
                .transactions
                .iter()
                .filter(|(_, t)| t.state.between_transactions() && t.updated_ms <= idle_since)
                .map(|(id, t)| (id.clone(), t.producer_id, t.producer_epoch))
                .collect();
            (s.metadata_version(), idle)
        });
        if version < EXPIRE_METADATA_VERSION {
            return;
        }
        self.expiry_checked_ms.store(now_ms, Ordering::Relaxed);
        let ours = idle.into_iter().filter(|(id, _, _)| mine(id));
        for (id, producer_id, producer_epoch) in ours.take(EXPIRE_PER_PASS) {
            let lock = self.lock(&id);
            let Ok(_held) = lock.try_lock() else {
                continue; // a client is using it right now
            };
            // The quorum checks again that nothing changed it since `idle_since`.
            let expire = TxnCommand::Expire {
                transactional_id: id.clone(),
                producer_id,
                producer_epoch,
                idle_since_ms: idle_since,
            };
            match self.step(expire).await {
                Ok(_) => {
                    self.metrics.expired_ids_total.inc();
                    info!(transactional_id = %id, producer_id, expiration_ms = self.expiration_ms, "transactional id expired");
                }
                // Not committed: the quorum is away; the next pass tries again.
                Err(ResponseError::CoordinatorNotAvailable | ResponseError::UnknownServerError) => {
                    self.expiry_checked_ms.store(last, Ordering::Relaxed);
                    warn!(transactional_id = %id, "could not expire a transactional id: the metadata quorum did not answer");
                    return;
                }
                Err(e) => {
                    tracing::debug!(transactional_id = %id, error = %e, "transactional id not expired: it changed meanwhile")
                }
            }
        }
    }
}
