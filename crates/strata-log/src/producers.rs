//! Idempotent-producer state of one partition: what lets the broker recognise a retried
//! batch and reject batches that arrive out of order or from a fenced producer.
//!
//! For every producer id seen in the partition it keeps the current epoch and the
//! metadata of the producer's last (up to) [`BATCHES_TO_RETAIN`] batches: their sequence
//! ranges and the offsets they were stored at. A client keeps at most five requests in
//! flight per partition, so a retry is always one of those five, and the broker answers it
//! with the offsets of the original instead of writing it again.
//!
//! The rules are those of Kafka's `ProducerStateManager`, `ProducerAppendInfo` and
//! `ProducerStateEntry` (`storage/src/main/java/org/apache/kafka/storage/internals/log/`),
//! for a client append without transactions, checked per batch in this order:
//!
//! 1. a batch whose epoch equals the producer's current epoch and whose first and last
//!    sequence equal those of one of the cached batches is a **duplicate**;
//! 2. an epoch below the current one is fenced: [`ProducerError::InvalidProducerEpoch`];
//! 3. an epoch above the current one must start at sequence 0, else
//!    [`ProducerError::OutOfOrderSequence`];
//! 4. the same epoch must continue at the last sequence + 1 (wrapping from `i32::MAX` to
//!    0), else [`ProducerError::OutOfOrderSequence`].
//!
//! A producer the partition does not know (never seen, expired, or whose data retention
//! deleted) is accepted at any sequence, as current Kafka does since KIP-360: the broker
//! cannot tell a lost state from a wrong sequence, and refusing would wedge the producer.
//! So this module never reports Kafka's `UNKNOWN_PRODUCER_ID`.
//!
//! Transactions are tracked here too, as Kafka's `ProducerStateManager` does: a
//! transactional batch opens its producer's transaction in this partition (if none is
//! open) at its base offset, and the transaction marker (a control batch the partition
//! leader writes for the coordinator) closes it; an abort marker records an
//! [`AbortedTxn`]. The first offset of the oldest open transaction bounds the last stable
//! offset, up to which read_committed consumers read.
//!
//! The state of a partition is rebuilt at start-up from a snapshot written when a segment
//! is sealed (see [`ProducerState::encode_snapshot`] and `docs/storage-format.md`) plus the
//! batch headers of the segments after it (and the type of each marker among them).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use strata_protocol::batch::{BatchHeader, ControlType};

/// How many of a producer's most recent batches are remembered for duplicate detection
/// (Kafka's `NUM_BATCHES_TO_RETAIN`, matching the client's five in-flight requests).
pub(crate) const BATCHES_TO_RETAIN: usize = 5;

/// Version of the `.producers` snapshot format written by this code (1: idempotence only,
/// still read; 2: with transactions).
const SNAPSHOT_VERSION: u8 = 2;
/// Version byte, CRC, end offset, producer count.
const SNAPSHOT_HEADER_LEN: usize = 1 + 4 + 8 + 4;
/// Producer id, epoch, last-seen time, open transaction's first offset, batch count.
const SNAPSHOT_ENTRY_LEN: usize = 8 + 2 + 8 + 8 + 1;
/// First and last sequence, base and last offset, max timestamp.
const SNAPSHOT_BATCH_LEN: usize = 4 + 4 + 8 + 8 + 8;

/// Why an idempotent producer's batch was refused. Nothing of the append was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// Kafka's `INVALID_PRODUCER_EPOCH`: a newer instance of the producer (same
    /// transactional id, or an epoch bump) has written since; this one is a zombie.
    #[error(
        "producer {producer_id} wrote with epoch {epoch}, older than its current epoch \
         {current_epoch} in this partition (a newer instance of the producer took over)"
    )]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current_epoch: i16,
    },
    /// Kafka's `OUT_OF_ORDER_SEQUENCE_NUMBER`: the batch does not continue the producer's
    /// sequence (a batch in between was lost, or a retry came too late to be recognised).
    #[error(
        "producer {producer_id} (epoch {epoch}) sent a batch starting at sequence \
         {first_sequence}, but the next expected sequence is {expected_sequence}"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        epoch: i16,
        first_sequence: i32,
        expected_sequence: i32,
    },
    /// Kafka's `INVALID_RECORD` (its `LogValidator` check): a batch that carries a
    /// producer id must carry a sequence number too.
    #[error(
        "producer {producer_id} sent a batch with sequence {base_sequence}; an idempotent \
         batch needs a sequence of 0 or more"
    )]
    InvalidSequence {
        producer_id: i64,
        base_sequence: i32,
    },
}

/// One idempotent producer as the DescribeProducers API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    /// Sequence of the last record the partition stored from this producer.
    pub last_sequence: i32,
    /// Max timestamp of the producer's last batch (the records' own timestamps).
    pub last_timestamp: i64,
    /// First offset of the producer's open transaction in this partition, or -1.
    pub txn_start_offset: i64,
}

/// A transaction that was aborted: the producer's records from `first_offset` up to the
/// abort marker at `last_offset` are skipped by read_committed consumers (Kafka's
/// `AbortedTxn`; a Fetch at `isolation_level=1` lists the ones its data overlaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Where one of a producer's recent batches was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMetadata {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) base_offset: i64,
    pub(crate) last_offset: i64,
    pub(crate) max_timestamp: i64,
}

/// The state of one producer id. Holds at least one batch, unless a transaction marker
/// with a newer epoch (the producer was fenced or bumped) cleared them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first, at most [`BATCHES_TO_RETAIN`], all of `epoch`.
    batches: VecDeque<BatchMetadata>,
    /// First offset of the producer's open transaction in this partition.
    txn_first: Option<i64>,
    /// Broker clock at the last append (or at the start-up that replayed it from the log).
    /// Expiry counts idleness from here as well as from the records' timestamps, so a
    /// producer that sends old timestamps is not forgotten while its retries may still come.
    last_seen_ms: i64,
}

impl ProducerEntry {
    fn new(h: &BatchHeader, batch: BatchMetadata, now_ms: i64) -> Self {
        let epoch = h.producer_epoch;
        Self {
            epoch,
            batches: VecDeque::from([batch]),
            txn_first: h.is_transactional().then_some(batch.base_offset),
            last_seen_ms: now_ms,
        }
    }

    fn last(&self) -> Option<&BatchMetadata> {
        self.batches.back()
    }

    fn last_seq(&self) -> i32 {
        self.last().map_or(-1, |b| b.last_seq)
    }

    fn last_timestamp(&self) -> i64 {
        self.last().map_or(-1, |b| b.max_timestamp)
    }

    /// The cached batch this one is a retry of, if any (Kafka's `findDuplicateBatch`).
    fn find_duplicate(&self, epoch: i16, first_seq: i32, last_seq: i32) -> Option<BatchMetadata> {
        if epoch != self.epoch {
            return None;
        }
        self.batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            .copied()
    }

    /// Records a batch; a new epoch starts a fresh window (Kafka's `addBatch`). A
    /// transactional batch opens the producer's transaction if none is open.
    fn add(&mut self, h: &BatchHeader, batch: BatchMetadata, now_ms: i64) {
        let epoch = h.producer_epoch;
        if h.is_transactional() && self.txn_first.is_none() {
            self.txn_first = Some(batch.base_offset);
        }
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
        if self.batches.len() == BATCHES_TO_RETAIN {
            self.batches.pop_front();
        }
        self.batches.push_back(batch);
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }
}

/// What the checks decided about an append.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Write the batches, then apply the update.
    Append(ProducerUpdate),
    /// A retry of a batch already stored at these offsets: write nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// The producer entries as they will be once an append's batches are written.
#[derive(Debug, Default)]
pub(crate) struct ProducerUpdate {
    entries: HashMap<i64, ProducerEntry>,
}

/// `seq` advanced by `by`, wrapping past `i32::MAX` to 0 as Kafka sequences do. Defined
/// (and panic-free) for any input, including values a damaged file might hold.
pub(crate) fn increment_sequence(seq: i32, by: i32) -> i32 {
    let wrapped = (i64::from(seq) + i64::from(by)).rem_euclid(i64::from(i32::MAX) + 1);
    // `rem_euclid` keeps it in 0..=i32::MAX.
    i32::try_from(wrapped).unwrap_or(0)
}

/// Where a batch's sequence range ends.
fn last_sequence(h: &BatchHeader) -> i32 {
    increment_sequence(h.base_sequence, h.last_offset_delta)
}

fn metadata(h: &BatchHeader, base_offset: i64) -> BatchMetadata {
    BatchMetadata {
        first_seq: h.base_sequence,
        last_seq: last_sequence(h),
        base_offset,
        last_offset: base_offset.saturating_add(i64::from(h.last_offset_delta)),
        max_timestamp: h.max_timestamp,
    }
}

/// The idempotent-producer and transaction state of one partition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ProducerState {
    producers: BTreeMap<i64, ProducerEntry>,
    /// Open transactions: (first offset, producer id), kept in step with `producers`.
    ongoing: BTreeSet<(i64, i64)>,
    /// Aborted transactions still in the log, by marker offset (oldest first).
    aborted: Vec<AbortedTxn>,
}

impl ProducerState {
    /// Checks an append of `headers` that would be stored from `base_offset` on, without
    /// changing anything. Batches without a producer id (`producer_id < 0`) are not
    /// checked. As in Kafka, a duplicate anywhere in the append makes the whole append a
    /// duplicate of that batch; later batches of the same producer in one append are
    /// checked against the earlier ones.
    pub(crate) fn check(
        &self,
        headers: &[BatchHeader],
        base_offset: i64,
        now_ms: i64,
    ) -> Result<Checked, ProducerError> {
        let mut update = ProducerUpdate::default();
        let mut next = base_offset;
        for h in headers {
            let placed = metadata(h, next);
            next = placed.last_offset.saturating_add(1);
            if h.producer_id < 0 {
                continue;
            }
            let pid = h.producer_id;
            if h.base_sequence < 0 {
                return Err(ProducerError::InvalidSequence {
                    producer_id: pid,
                    base_sequence: h.base_sequence,
                });
            }
            let stored = self.producers.get(&pid);
            if let Some(dup) = stored
                .and_then(|e| e.find_duplicate(h.producer_epoch, placed.first_seq, placed.last_seq))
            {
                return Ok(Checked::Duplicate {
                    base_offset: dup.base_offset,
                    last_offset: dup.last_offset,
                });
            }
            match update.entries.get(&pid).or(stored) {
                Some(current) => {
                    check_against(pid, current, h.producer_epoch, placed.first_seq)?;
                    let mut entry = current.clone();
                    entry.add(h, placed, now_ms);
                    update.entries.insert(pid, entry);
                }
                // Unknown producer: any sequence is accepted (see the module docs).
                None => {
                    update
                        .entries
                        .insert(pid, ProducerEntry::new(h, placed, now_ms));
                }
            }
        }
        Ok(Checked::Append(update))
    }

    /// Applies a checked append once its batches are written.
    pub(crate) fn apply(&mut self, update: ProducerUpdate) {
        for (pid, entry) in update.entries {
            self.put(pid, entry);
        }
    }

    /// Stores a producer's entry, keeping the open transactions in step.
    fn put(&mut self, pid: i64, entry: ProducerEntry) {
        if let Some(first) = self.producers.get(&pid).and_then(|e| e.txn_first) {
            self.ongoing.remove(&(first, pid));
        }
        if let Some(first) = entry.txn_first {
            self.ongoing.insert((first, pid));
        }
        self.producers.insert(pid, entry);
    }

    /// Checks that a transaction marker of producer `pid` at `epoch` may be written: a
    /// marker from an older epoch than the partition knows is a zombie coordinator's.
    pub(crate) fn check_marker(&self, pid: i64, epoch: i16) -> Result<(), ProducerError> {
        match self.producers.get(&pid) {
            Some(e) if epoch < e.epoch => Err(ProducerError::InvalidProducerEpoch {
                producer_id: pid,
                epoch,
                current_epoch: e.epoch,
            }),
            _ => Ok(()),
        }
    }

    /// A transaction marker of producer `pid` was written at `offset`: its open
    /// transaction (if any) ends, committed or (recorded as such) aborted. A newer epoch
    /// than the producer's starts a fresh sequence window.
    pub(crate) fn end_txn(
        &mut self,
        pid: i64,
        epoch: i16,
        control: ControlType,
        offset: i64,
        now_ms: i64,
    ) {
        let Some(mut entry) = self.producers.get(&pid).cloned() else {
            return;
        };
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if let Some(first) = entry.txn_first.take()
            && control == ControlType::Abort
        {
            self.aborted.push(AbortedTxn {
                producer_id: pid,
                first_offset: first,
                last_offset: offset,
            });
        }
        entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
        self.put(pid, entry);
    }

    /// The first offset of the oldest open transaction, if any.
    pub(crate) fn first_unstable(&self) -> Option<i64> {
        self.ongoing.first().map(|&(offset, _)| offset)
    }

    /// Aborted transactions that overlap offsets `from..to` (their marker at or after
    /// `from`, their first record before `to`).
    pub(crate) fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        let i = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted[i..]
            .iter()
            .filter(|a| a.first_offset < to)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions whose marker is below `offset` (the log start).
    pub(crate) fn forget_aborted_below(&mut self, offset: i64) {
        self.aborted.retain(|a| a.last_offset >= offset);
    }

    /// Records a batch read back from the log at start-up, without checks (it was checked
    /// when it was appended). `now_ms` is the start-up time: when the batch was really
    /// appended is not on disk, so the producer counts as seen now.
    /// A marker's `control` type comes from its record (see `records::control_type`);
    /// a control batch whose type is unreadable changes nothing.
    pub(crate) fn replay(&mut self, h: &BatchHeader, control: Option<ControlType>, now_ms: i64) {
        if h.producer_id < 0 {
            return;
        }
        if h.is_control() {
            if let Some(control) = control {
                self.end_txn(
                    h.producer_id,
                    h.producer_epoch,
                    control,
                    h.base_offset,
                    now_ms,
                );
            }
            return;
        }
        let placed = metadata(h, h.base_offset);
        let entry = match self.producers.get(&h.producer_id) {
            Some(current) => {
                let mut entry = current.clone();
                entry.add(h, placed, now_ms);
                entry
            }
            None => ProducerEntry::new(h, placed, now_ms),
        };
        self.put(h.producer_id, entry);
    }

    /// Forgets producers idle for at least `max_idle_ms`: both the timestamp of their last
    /// batch and the broker time they were last seen are that old. A negative
    /// `max_idle_ms` disables expiry. Returns how many were forgotten.
    pub(crate) fn expire(&mut self, now_ms: i64, max_idle_ms: i64) -> usize {
        if max_idle_ms < 0 {
            return 0;
        }
        let before = self.producers.len();
        // A producer with an open transaction stays until the transaction ends.
        self.producers.retain(|_, e| {
            let active = e.last_timestamp().max(e.last_seen_ms);
            e.txn_first.is_some() || now_ms.saturating_sub(active) < max_idle_ms
        });
        before - self.producers.len()
    }

    pub(crate) fn describe(&self) -> Vec<ProducerInfo> {
        self.producers
            .iter()
            .map(|(&producer_id, e)| ProducerInfo {
                producer_id,
                epoch: e.epoch,
                last_sequence: e.last_seq(),
                last_timestamp: e.last_timestamp(),
                txn_start_offset: e.txn_first.unwrap_or(-1),
            })
            .collect()
    }

    /// The `.producers` snapshot of this state, taken when the log ends at `end_offset`.
    /// Layout (big-endian, see `docs/storage-format.md`):
    ///
    /// ```text
    /// [u8 version = 2][u32 CRC-32C of the rest][i64 end offset][u32 producer count]
    /// per producer, by id: [i64 id][i16 epoch][i64 last seen ms]
    ///   [i64 first offset of its open transaction, or -1][u8 batch count 0..=5]
    ///   per batch, oldest first: [i32 first seq][i32 last seq][i64 base offset]
    ///                            [i64 last offset][i64 max timestamp]
    /// [u32 aborted transaction count]
    /// per aborted transaction, by marker offset: [i64 producer id][i64 first offset]
    ///   [i64 marker offset]
    /// ```
    ///
    /// Version 1 (still read) had no open-transaction field, always 1..=5 batches, and no
    /// aborted transactions.
    pub(crate) fn encode_snapshot(&self, end_offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            SNAPSHOT_HEADER_LEN
                + self.producers.len()
                    * (SNAPSHOT_ENTRY_LEN + BATCHES_TO_RETAIN * SNAPSHOT_BATCH_LEN)
                + 4
                + self.aborted.len() * 24,
        );
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&end_offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        for (&pid, e) in &self.producers {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_seen_ms.to_be_bytes());
            out.extend_from_slice(&e.txn_first.unwrap_or(-1).to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.max_timestamp.to_be_bytes());
            }
        }
        out.extend_from_slice(&(self.aborted.len() as u32).to_be_bytes());
        for a in &self.aborted {
            out.extend_from_slice(&a.producer_id.to_be_bytes());
            out.extend_from_slice(&a.first_offset.to_be_bytes());
            out.extend_from_slice(&a.last_offset.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a snapshot that must describe the log up to `end_offset` (where the next
    /// segment begins). The error says, for the operator, why the file is not usable; the
    /// caller then rebuilds the state from the log.
    pub(crate) fn decode_snapshot(data: &[u8], end_offset: i64) -> Result<Self, String> {
        let mut r = Reader { data, pos: 0 };
        let version = r.u8()?;
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(format!("unknown snapshot version {version}"));
        }
        let stored_crc = r.u32()?;
        let actual_crc = crc32c::crc32c(&data[r.pos..]);
        if stored_crc != actual_crc {
            return Err(format!(
                "CRC mismatch: file says {stored_crc:#010x}, contents give {actual_crc:#010x}"
            ));
        }
        let covers = r.i64()?;
        if covers != end_offset {
            return Err(format!(
                "it describes the log up to offset {covers}, but the segment ends at {end_offset}"
            ));
        }
        let in_log = |o: i64| (0..end_offset).contains(&o);
        let mut state = Self::default();
        for _ in 0..r.u32()? {
            let pid = r.i64()?;
            let epoch = r.i16()?;
            let last_seen_ms = r.i64()?;
            let txn_first = match version {
                1 => None,
                _ => Some(r.i64()?).filter(|&o| o != -1),
            };
            let n = usize::from(r.u8()?);
            let min_batches = if version == 1 { 1 } else { 0 };
            if pid < 0
                || !(min_batches..=BATCHES_TO_RETAIN).contains(&n)
                || txn_first.is_some_and(|o| !in_log(o))
            {
                return Err(format!(
                    "implausible entry for producer {pid} ({n} batches)"
                ));
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                let b = BatchMetadata {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    base_offset: r.i64()?,
                    last_offset: r.i64()?,
                    max_timestamp: r.i64()?,
                };
                let after_previous = batches
                    .back()
                    .is_none_or(|p: &BatchMetadata| b.base_offset > p.last_offset);
                if b.first_seq < 0
                    || b.last_seq < 0
                    || b.base_offset < 0
                    || b.last_offset < b.base_offset
                    || b.last_offset >= end_offset
                    || !after_previous
                {
                    return Err(format!("implausible batch of producer {pid}"));
                }
                batches.push_back(b);
            }
            if state.producers.contains_key(&pid) {
                return Err(format!("producer {pid} appears twice"));
            }
            let entry = ProducerEntry {
                epoch,
                batches,
                txn_first,
                last_seen_ms,
            };
            state.put(pid, entry);
        }
        if version >= 2 {
            for _ in 0..r.u32()? {
                let a = AbortedTxn {
                    producer_id: r.i64()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                };
                let in_order = state
                    .aborted
                    .last()
                    .is_none_or(|p| p.last_offset < a.last_offset);
                if a.producer_id < 0
                    || !in_log(a.first_offset)
                    || !in_log(a.last_offset)
                    || a.first_offset >= a.last_offset
                    || !in_order
                {
                    return Err(format!("implausible aborted transaction {a:?}"));
                }
                state.aborted.push(a);
            }
        }
        if r.pos != data.len() {
            return Err(format!(
                "{} unexpected bytes at the end",
                data.len() - r.pos
            ));
        }
        Ok(state)
    }
}

/// Kafka's checks of a non-duplicate batch against the producer's current entry.
fn check_against(
    producer_id: i64,
    current: &ProducerEntry,
    epoch: i16,
    first_seq: i32,
) -> Result<(), ProducerError> {
    use std::cmp::Ordering::*;
    let expected = match epoch.cmp(&current.epoch) {
        Less => {
            return Err(ProducerError::InvalidProducerEpoch {
                producer_id,
                epoch,
                current_epoch: current.epoch,
            });
        }
        Greater => 0,
        Equal => increment_sequence(current.last_seq(), 1),
    };
    if first_seq != expected {
        return Err(ProducerError::OutOfOrderSequence {
            producer_id,
            epoch,
            first_sequence: first_seq,
            expected_sequence: expected,
        });
    }
    Ok(())
}

/// Reads big-endian fields, failing (never panicking) at the end of the data.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self
            .data
            .get(self.pos..self.pos + N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or_else(|| format!("truncated at byte {}", self.pos))?;
        self.pos += N;
        Ok(bytes)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn i16(&mut self) -> Result<i16, String> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Result<i32, String> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.take().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use strata_protocol::batch::test_util::simple_batch;

    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, records: i32, base_offset: i64) -> BatchHeader {
        let mut h = BatchHeader::parse(&simple_batch(1, 0)).unwrap();
        h.producer_id = pid;
        h.producer_epoch = epoch;
        h.base_sequence = seq;
        h.last_offset_delta = records - 1;
        h.record_count = records;
        h.base_offset = base_offset;
        h.max_timestamp = 500 + base_offset;
        h
    }

    /// Three producers, one with a full window and one that bumped its epoch.
    fn sample() -> ProducerState {
        let mut s = ProducerState::default();
        let mut offset = 0;
        for (pid, epoch, seq, n) in [
            (1, 0, 0, 2),
            (2, 3, 10, 1),
            (1, 0, 2, 1),
            (1, 0, 3, 4),
            (1, 0, 7, 1),
            (1, 0, 8, 1),
            (1, 0, 9, 3),
            (3, 0, 0, 1),
            (3, 1, 0, 2),
        ] {
            s.replay(&header(pid, epoch, seq, n, offset), None, 42);
            offset += i64::from(n);
        }
        s
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(increment_sequence(5, 3), 8);
        assert_eq!(increment_sequence(i32::MAX, 1), 0);
        assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(increment_sequence(i32::MAX, i32::MAX), i32::MAX - 1);
        // Damaged inputs give some sequence, never a panic.
        let _ = increment_sequence(i32::MIN, i32::MIN);
    }

    #[test]
    fn replay_keeps_five_batches_of_the_current_epoch() {
        let s = sample();
        let one = &s.producers[&1];
        assert_eq!(one.batches.len(), BATCHES_TO_RETAIN);
        assert_eq!(one.batches[0].first_seq, 2, "the oldest batch fell out");
        assert_eq!(one.last_seq(), 11);
        let three = &s.producers[&3];
        assert_eq!((three.epoch, three.batches.len()), (1, 1));
    }

    #[test]
    fn snapshot_round_trips() {
        let s = sample();
        let data = s.encode_snapshot(20);
        assert_eq!(ProducerState::decode_snapshot(&data, 20).unwrap(), s);
        assert_eq!(
            ProducerState::decode_snapshot(&ProducerState::default().encode_snapshot(0), 0)
                .unwrap(),
            ProducerState::default()
        );
        assert!(
            ProducerState::decode_snapshot(&data, 21).is_err(),
            "a snapshot for another end offset"
        );
    }

    /// `s` in the version 1 layout (no transactions), as brokers before them wrote it.
    fn encode_v1(s: &ProducerState, end_offset: i64) -> Vec<u8> {
        let mut out = vec![1, 0, 0, 0, 0];
        out.extend_from_slice(&end_offset.to_be_bytes());
        out.extend_from_slice(&(s.producers.len() as u32).to_be_bytes());
        for (pid, e) in &s.producers {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_seen_ms.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                for v in [b.first_seq, b.last_seq] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                for v in [b.base_offset, b.last_offset, b.max_timestamp] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        let crc = crc32c::crc32c(&out[5..]);
        out[1..5].copy_from_slice(&crc.to_be_bytes());
        out
    }

    #[test]
    fn version_1_snapshots_are_still_read_and_transactions_round_trip() {
        let s = sample();
        assert_eq!(
            ProducerState::decode_snapshot(&encode_v1(&s, 20), 20).unwrap(),
            s
        );

        let mut t = sample();
        let mut h = header(7, 0, 0, 2, 12);
        h.attributes |= strata_protocol::batch::TRANSACTIONAL;
        t.replay(&h, None, 42);
        h.producer_id = 8;
        h.base_offset = 14;
        t.replay(&h, None, 42);
        t.end_txn(8, 1, ControlType::Abort, 16, 42);
        assert_eq!(t.first_unstable(), Some(12));
        assert_eq!(t.aborted_between(0, 20).len(), 1);
        let back = ProducerState::decode_snapshot(&t.encode_snapshot(20), 20).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.first_unstable(), Some(12));
    }

    #[test]
    fn every_damaged_snapshot_is_rejected() {
        let data = sample().encode_snapshot(20);
        for len in 0..data.len() {
            assert!(
                ProducerState::decode_snapshot(&data[..len], 20).is_err(),
                "cut at {len}"
            );
        }
        for i in 0..data.len() {
            let mut bad = data.clone();
            bad[i] ^= 0x01;
            assert!(
                ProducerState::decode_snapshot(&bad, 20).is_err(),
                "flip at {i}"
            );
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(ProducerState::decode_snapshot(&longer, 20).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            fix_crc: bool,
        ) {
            let mut data = data;
            // With a valid version and CRC the parser itself is exercised.
            if fix_crc && data.len() >= 5 {
                data[0] = SNAPSHOT_VERSION;
                let crc = crc32c::crc32c(&data[5..]);
                data[1..5].copy_from_slice(&crc.to_be_bytes());
            }
            let _ = ProducerState::decode_snapshot(&data, 100);
        }

        #[test]
        fn checks_and_replay_never_panic(
            batches in proptest::collection::vec(
                (-1i64..3, proptest::num::i16::ANY, proptest::num::i32::ANY, proptest::num::i32::ANY),
                0..20,
            ),
        ) {
            let mut s = ProducerState::default();
            let mut offset = 0i64;
            for (pid, epoch, seq, delta) in batches {
                let mut h = header(pid, epoch, seq, 1, offset);
                h.last_offset_delta = delta;
                if let Ok(Checked::Append(u)) = s.check(&[h], offset, 0) {
                    s.apply(u);
                }
                s.replay(&h, None, 0);
                offset = offset.saturating_add(1);
            }
            let _ = s.describe();
            let _ = s.expire(i64::MIN, i64::MAX);
        }
    }
}
