//! Recent appends kept in memory, so that consumers reading at the tail of a partition
//! (the common case, and every follower of a replicated partition) are served without
//! touching the segment files. Each partition keeps its newest batches, exactly as
//! written to the segment (broker-assigned offsets included), in a run of contiguous
//! chunks; one broker-wide byte budget bounds them all.
//!
//! When an append pushes the total past the budget, the oldest chunks broker-wide go
//! first, whichever partition holds them: partitions that stopped appending give their
//! memory to the ones that write now, instead of keeping it until they are deleted.
//! Every chunk gets a broker-wide sequence number, and the budget keeps the chunks in
//! that order (as the partition and number), so eviction takes from the front.
//!
//! Locks: a partition's chunks have a mutex of their own; the budget's order has
//! another. An append holds its chunks' lock while it records the chunk in the order;
//! eviction takes an entry from the order, lets go of that lock, then locks the victim's
//! chunks. No code path waits for a chunks lock while holding the order lock, or for a
//! second chunks lock while holding one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use strata_protocol::batch::HeaderIter;

/// The broker-wide budget of in-memory tail bytes, shared by every partition.
#[derive(Clone, Debug)]
pub struct TailCache(Arc<Budget>);

/// A chunk as the eviction order knows it: whose, and its sequence number.
type Entry = (Weak<Mutex<Chunks>>, u64);

#[derive(Debug)]
struct Budget {
    cap: u64,
    used: AtomicU64,
    /// Chunks held across all partitions.
    live: AtomicU64,
    next_seq: AtomicU64,
    /// Every chunk held, oldest first; entries of chunks their partition dropped
    /// (a restarted log, a deleted partition) are skipped when reached, and swept out
    /// when they outnumber the live ones.
    order: Mutex<VecDeque<Entry>>,
}

impl TailCache {
    /// A budget of `cap_bytes` across all partitions; 0 keeps nothing in memory.
    pub fn new(cap_bytes: u64) -> Self {
        Self(Arc::new(Budget {
            cap: cap_bytes,
            used: AtomicU64::new(0),
            live: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            order: Mutex::new(VecDeque::new()),
        }))
    }

    /// Bytes held across all partitions.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Entries in the eviction order (for tests: it must not outgrow what is held).
    #[cfg(test)]
    pub(crate) fn bookkept(&self) -> usize {
        self.0.order.lock().len()
    }
}

impl Budget {
    /// Drops the oldest chunks broker-wide until the total fits the budget.
    fn evict(&self) {
        while self.used.load(Ordering::Relaxed) > self.cap {
            let Some((owner, seq)) = self.order.lock().pop_front() else {
                return;
            };
            if let Some(owner) = owner.upgrade() {
                owner.lock().drop_through(seq, self);
            }
        }
    }

    /// Sweeps out the entries of chunks that are gone. The order is taken out while
    /// the chunks are looked at (see the module's lock rules), and whatever was
    /// appended meanwhile goes back behind the survivors, which are all older.
    fn sweep(&self) {
        let old = std::mem::take(&mut *self.order.lock());
        let kept: VecDeque<Entry> = old
            .into_iter()
            .filter(|(owner, seq)| owner.upgrade().is_some_and(|o| o.lock().holds(*seq)))
            .collect();
        let mut order = self.order.lock();
        let newer = std::mem::replace(&mut *order, kept);
        order.extend(newer);
    }
}

/// One append: batches with offsets `base_offset..next_offset`.
#[derive(Debug)]
struct Chunk {
    seq: u64,
    base_offset: i64,
    next_offset: i64,
    data: Bytes,
}

/// A partition's chunks, oldest first (and so in sequence order).
#[derive(Debug, Default)]
struct Chunks {
    chunks: VecDeque<Chunk>,
}

impl Chunks {
    fn pop_front(&mut self, budget: &Budget) -> bool {
        let Some(old) = self.chunks.pop_front() else {
            return false;
        };
        budget
            .used
            .fetch_sub(old.data.len() as u64, Ordering::Relaxed);
        budget.live.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Drops the chunks up to and including sequence number `seq`.
    fn drop_through(&mut self, seq: u64, budget: &Budget) {
        while self.chunks.front().is_some_and(|c| c.seq <= seq) {
            self.pop_front(budget);
        }
    }

    fn clear(&mut self, budget: &Budget) {
        while self.pop_front(budget) {}
    }

    /// Whether `offset` is in memory.
    fn covers(&self, offset: i64) -> bool {
        self.chunks.front().is_some_and(|c| c.base_offset <= offset)
            && self.chunks.back().is_some_and(|c| offset < c.next_offset)
    }

    fn holds(&self, seq: u64) -> bool {
        self.chunks.binary_search_by_key(&seq, |c| c.seq).is_ok()
    }
}

/// One partition's share of the tail cache.
pub(crate) struct Tail {
    budget: TailCache,
    chunks: Arc<Mutex<Chunks>>,
}

impl Tail {
    pub(crate) fn new(budget: TailCache) -> Self {
        Self {
            budget,
            chunks: Arc::default(),
        }
    }

    /// Remembers an append, then makes room in the budget (see module docs). A chunk
    /// that does not continue the cached run (the log restarted at another offset)
    /// replaces it; one larger than the whole budget is not kept.
    pub(crate) fn push(&mut self, base_offset: i64, next_offset: i64, data: Bytes) {
        let budget = &self.budget.0;
        let len = data.len() as u64;
        if len == 0 || len > budget.cap {
            return;
        }
        let crowded = {
            let mut own = self.chunks.lock();
            if own
                .chunks
                .back()
                .is_some_and(|c| c.next_offset != base_offset)
            {
                own.clear(budget);
            }
            let seq = budget.next_seq.fetch_add(1, Ordering::Relaxed);
            own.chunks.push_back(Chunk {
                seq,
                base_offset,
                next_offset,
                data,
            });
            budget.used.fetch_add(len, Ordering::Relaxed);
            let live = budget.live.fetch_add(1, Ordering::Relaxed) + 1;
            let mut order = budget.order.lock();
            order.push_back((Arc::downgrade(&self.chunks), seq));
            order.len() as u64 > 2 * live + 1024
        };
        // (Both locks are released here: see the module's lock rules.)
        if crowded {
            budget.sweep();
        }
        budget.evict();
    }

    /// Forgets everything (the cached offsets no longer describe the log).
    pub(crate) fn clear(&mut self) {
        self.chunks.lock().clear(&self.budget.0);
    }

    pub(crate) fn budget(&self) -> &TailCache {
        &self.budget
    }

    /// Whether a read at `offset` would be served from memory.
    pub(crate) fn covers(&self, offset: i64) -> bool {
        self.chunks.lock().covers(offset)
    }

    /// Whole batches from the one holding `offset`, none ending at or beyond
    /// `visible_end`, up to `max_bytes` (at least one batch with `min_one`). `None` if
    /// `offset` is not in memory.
    pub(crate) fn read(
        &self,
        offset: i64,
        visible_end: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Option<Bytes> {
        let own = self.chunks.lock();
        if !own.covers(offset) {
            return None;
        }
        let chunks = &own.chunks;
        let first = chunks.partition_point(|c| c.next_offset <= offset);
        // (chunk, byte range) pieces to return, in order.
        let mut pieces: Vec<(usize, usize, usize)> = Vec::new();
        let mut total = 0usize;
        'chunks: for (i, chunk) in chunks.iter().enumerate().skip(first) {
            let mut from = None;
            let mut to = 0;
            for (pos, h) in HeaderIter::new(&chunk.data) {
                if h.last_offset() < offset {
                    continue;
                }
                let len = h.total_len();
                let fits = total + len <= max_bytes || (min_one && total == 0);
                if h.next_offset() > visible_end || !fits {
                    if let Some(from) = from {
                        pieces.push((i, from, to));
                    }
                    break 'chunks;
                }
                from.get_or_insert(pos);
                to = pos + len;
                total += len;
            }
            if let Some(from) = from {
                pieces.push((i, from, to));
            }
        }
        Some(match pieces.as_slice() {
            [] => Bytes::new(),
            [(i, from, to)] => chunks[*i].data.slice(*from..*to),
            _ => {
                let mut out = BytesMut::with_capacity(total);
                for (i, from, to) in &pieces {
                    out.extend_from_slice(&chunks[*i].data[*from..*to]);
                }
                out.freeze()
            }
        })
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.clear();
    }
}
