//! The leader-epoch history of a partition (`<partition>/leader-epochs`): at which offset
//! each leader epoch began. A follower asks the leader where its own latest epoch ended
//! (Kafka's OffsetForLeaderEpoch) and cuts off anything after that, so a former leader's
//! unreplicated records never survive a change of leader.
//!
//! Format: one `EPOCH START_OFFSET` line per epoch, oldest first; rewritten atomically
//! when an epoch begins (rare) or the log is truncated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::index::write_atomically;

const FILE: &str = "leader-epochs";

#[derive(Debug, Clone)]
pub(crate) struct LeaderEpochs {
    path: PathBuf,
    /// Epoch → the first offset written in it.
    starts: BTreeMap<i32, i64>,
}

impl LeaderEpochs {
    /// Loads the history of the partition in `dir` (empty if there is none).
    pub(crate) fn open(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let starts = std::fs::read_to_string(&path)
            .map(|text| {
                text.lines()
                    .filter_map(|l| {
                        let (e, o) = l.split_once(' ')?;
                        Some((e.trim().parse().ok()?, o.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { path, starts }
    }

    fn save(&self) -> Result<()> {
        let text: String = self
            .starts
            .iter()
            .map(|(e, o)| format!("{e} {o}\n"))
            .collect();
        write_atomically(&self.path, text.as_bytes())
    }

    /// The latest epoch and where it began.
    pub(crate) fn latest(&self) -> Option<(i32, i64)> {
        self.starts.last_key_value().map(|(e, o)| (*e, *o))
    }

    /// Records that `epoch` begins at `start`, if it is newer than every known epoch.
    pub(crate) fn begin(&mut self, epoch: i32, start: i64) -> Result<()> {
        if self.latest().is_some_and(|(e, _)| e >= epoch) {
            return Ok(());
        }
        self.starts.insert(epoch, start);
        self.save()
    }

    /// Forgets the epochs that began at or after `end` (the log was cut there).
    pub(crate) fn truncate(&mut self, end: i64) -> Result<()> {
        let before = self.starts.len();
        self.starts.retain(|_, start| *start < end);
        if self.starts.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Kafka's answer to OffsetForLeaderEpoch: the largest known epoch at or below
    /// `epoch`, and the offset where it ended (the start of the next one, or `log_end` if
    /// it is the latest). `None` if every known epoch is later.
    pub(crate) fn end_of(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let (&found, _) = self.starts.range(..=epoch).next_back()?;
        let end = self
            .starts
            .range(found + 1..)
            .next()
            .map_or(log_end, |(_, start)| *start);
        Some((found, end))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_where_an_epoch_ended_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = LeaderEpochs::open(dir.path());
        assert_eq!(e.end_of(3, 10), None);
        e.begin(0, 0).unwrap();
        e.begin(2, 100).unwrap();
        e.begin(1, 50).unwrap(); // older than the latest: ignored
        e.begin(5, 300).unwrap();
        assert_eq!(e.end_of(0, 400), Some((0, 100)));
        assert_eq!(
            e.end_of(1, 400),
            Some((0, 100)),
            "unknown epoch 1: epoch 0's end"
        );
        assert_eq!(e.end_of(3, 400), Some((2, 300)));
        assert_eq!(e.end_of(9, 400), Some((5, 400)));
        let mut again = LeaderEpochs::open(dir.path());
        assert_eq!(again.latest(), Some((5, 300)));
        again.truncate(250).unwrap();
        assert_eq!(LeaderEpochs::open(dir.path()).latest(), Some((2, 100)));
    }
}
