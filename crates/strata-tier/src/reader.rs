//! Reading Kafka batches out of a remote segment: the segment's index (a small object)
//! finds where to start, the block cache supplies the bytes, batch headers say where each
//! batch ends. Whole batches only, as stored.

use bytes::Bytes;
use strata_log::SegmentIndex;
use strata_protocol::batch::{BatchHeader, HEADER_LEN, HeaderIter};
use strata_protocol::records;

use crate::cache::BlockCache;
use crate::error::{Result, TierError};

/// A segment in the object store, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSegment {
    pub key: String,
    pub index_key: String,
    pub base_offset: i64,
    /// Offset after the segment's last record.
    pub next_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
}

impl BlockCache {
    async fn index(&self, seg: &RemoteSegment) -> Result<SegmentIndex> {
        let data = self.whole(&seg.index_key).await?;
        SegmentIndex::from_bytes(&data, seg.size).ok_or_else(|| TierError::Corrupt {
            key: seg.index_key.clone(),
            position: 0,
            reason: "the index does not decode".into(),
        })
    }

    fn corrupt(seg: &RemoteSegment, position: u64, reason: impl Into<String>) -> TierError {
        TierError::Corrupt {
            key: seg.key.clone(),
            position,
            reason: reason.into(),
        }
    }

    /// Whole batches of `seg` from the one holding `offset`, up to `max_bytes` (at least
    /// one batch with `min_one`). Empty if the segment has nothing at or after `offset`.
    pub async fn read_batches(
        &self,
        seg: &RemoteSegment,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Bytes> {
        // Reading from the segment's start needs no index lookup.
        let mut pos = if offset <= seg.base_offset {
            0
        } else {
            let rel = (offset - seg.base_offset).min(i64::from(u32::MAX)) as u32;
            u64::from(self.index(seg).await?.position_for(rel))
        };
        // Skip batches that end before `offset`, reading headers from cached blocks.
        loop {
            if pos + HEADER_LEN as u64 > seg.size {
                return Ok(Bytes::new());
            }
            let head = self
                .read(&seg.key, seg.size, pos..pos + HEADER_LEN as u64)
                .await?;
            let h =
                BatchHeader::parse(&head).map_err(|e| Self::corrupt(seg, pos, e.to_string()))?;
            if h.last_offset() >= offset {
                let want = if min_one {
                    (max_bytes as u64).max(h.total_len() as u64)
                } else {
                    max_bytes as u64
                };
                if want < h.total_len() as u64 {
                    return Ok(Bytes::new());
                }
                let data = self
                    .read(&seg.key, seg.size, pos..(pos + want).min(seg.size))
                    .await?;
                let mut it = HeaderIter::new(&data);
                for _ in it.by_ref() {}
                let served = it.position();
                self.count_served(&seg.key, pos..pos + served as u64);
                return Ok(data.slice(..served));
            }
            pos += h.total_len() as u64;
        }
    }

    /// The first record at or after `timestamp` in `seg`: (offset, timestamp).
    pub async fn offset_for_timestamp(
        &self,
        seg: &RemoteSegment,
        timestamp: i64,
        min_offset: i64,
    ) -> Result<Option<(i64, i64)>> {
        if seg.max_timestamp < timestamp {
            return Ok(None);
        }
        let index = self.index(seg).await?;
        let from = seg.base_offset + i64::from(index.offset_for_time(timestamp));
        let mut pos = u64::from(index.position_for((from - seg.base_offset) as u32));
        while pos + HEADER_LEN as u64 <= seg.size {
            let head = self
                .read(&seg.key, seg.size, pos..pos + HEADER_LEN as u64)
                .await?;
            let h =
                BatchHeader::parse(&head).map_err(|e| Self::corrupt(seg, pos, e.to_string()))?;
            let total = h.total_len() as u64;
            if h.max_timestamp >= timestamp && h.last_offset() >= min_offset.max(from) {
                let batch = self.read(&seg.key, seg.size, pos..pos + total).await?;
                let found = records::record_positions(&batch)
                    .map_err(|e| Self::corrupt(seg, pos, e.to_string()))?
                    .into_iter()
                    .find(|r| r.timestamp >= timestamp && r.offset >= min_offset);
                if let Some(r) = found {
                    return Ok(Some((r.offset, r.timestamp)));
                }
            }
            pos += total;
        }
        Ok(None)
    }
}
