//! Recent appends kept in memory, so that consumers reading at the tail of a partition
//! (the common case) are served without touching the segment files. Each partition keeps
//! its newest batches, exactly as written to the segment (broker-assigned offsets
//! included), in a run of contiguous chunks; one broker-wide byte budget bounds them all.
//! A partition that appends while the budget is spent evicts its own oldest chunks, so
//! the total never exceeds the budget.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use strata_protocol::batch::HeaderIter;

/// The broker-wide budget of in-memory tail bytes, shared by every partition.
#[derive(Clone, Debug)]
pub struct TailCache(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    cap: u64,
    used: AtomicU64,
}

impl TailCache {
    /// A budget of `cap_bytes` across all partitions; 0 keeps nothing in memory.
    pub fn new(cap_bytes: u64) -> Self {
        Self(Arc::new(Budget {
            cap: cap_bytes,
            used: AtomicU64::new(0),
        }))
    }

    /// Bytes held across all partitions.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }
}

/// One append: batches with offsets `base_offset..next_offset`.
struct Chunk {
    base_offset: i64,
    next_offset: i64,
    data: Bytes,
}

/// One partition's share of the tail cache.
pub(crate) struct Tail {
    budget: TailCache,
    chunks: VecDeque<Chunk>,
    bytes: u64,
}

impl Tail {
    pub(crate) fn new(budget: TailCache) -> Self {
        Self {
            budget,
            chunks: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Remembers an append. A chunk that does not continue the cached run (the log
    /// restarted at another offset) replaces it.
    pub(crate) fn push(&mut self, base_offset: i64, next_offset: i64, data: Bytes) {
        if self.budget.0.cap == 0 {
            return;
        }
        if self
            .chunks
            .back()
            .is_some_and(|c| c.next_offset != base_offset)
        {
            self.clear();
        }
        let budget = self.budget.0.clone();
        let len = data.len() as u64;
        self.chunks.push_back(Chunk {
            base_offset,
            next_offset,
            data,
        });
        self.bytes += len;
        let mut used = budget.used.fetch_add(len, Ordering::Relaxed) + len;
        while used > budget.cap {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            let n = old.data.len() as u64;
            self.bytes -= n;
            used = budget.used.fetch_sub(n, Ordering::Relaxed) - n;
        }
    }

    /// Forgets everything (the cached offsets no longer describe the log).
    pub(crate) fn clear(&mut self) {
        self.budget.0.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.chunks.clear();
    }

    pub(crate) fn budget(&self) -> &TailCache {
        &self.budget
    }

    /// Whether a read at `offset` would be served from memory.
    pub(crate) fn covers(&self, offset: i64) -> bool {
        self.chunks.front().is_some_and(|c| c.base_offset <= offset)
            && self.chunks.back().is_some_and(|c| offset < c.next_offset)
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
        if !self.covers(offset) {
            return None;
        }
        let first = self.chunks.partition_point(|c| c.next_offset <= offset);
        // (chunk, byte range) pieces to return, in order.
        let mut pieces: Vec<(usize, usize, usize)> = Vec::new();
        let mut total = 0usize;
        'chunks: for (i, chunk) in self.chunks.iter().enumerate().skip(first) {
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
            [(i, from, to)] => self.chunks[*i].data.slice(*from..*to),
            _ => {
                let mut out = BytesMut::with_capacity(total);
                for (i, from, to) in &pieces {
                    out.extend_from_slice(&self.chunks[*i].data[*from..*to]);
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
