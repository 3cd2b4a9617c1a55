//! Committed offsets go through the metadata service, batched: every OffsetCommit that
//! arrives while the previous Raft write is in flight rides on the next one, so thousands
//! of commits a second cost a few Raft entries, and each OffsetCommit is answered only
//! once its offsets are committed.

use kafka_protocol::ResponseError;
use strata_meta::{Command, MetaNode, OffsetCommit};
use strata_telemetry::GroupMetrics;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::errors;

/// Most offsets one Raft entry carries.
const MAX_BATCH_OFFSETS: usize = 20_000;

struct Pending {
    commits: Vec<OffsetCommit>,
    done: oneshot::Sender<Result<(), ResponseError>>,
}

/// The handle OffsetCommit handlers use.
#[derive(Clone)]
pub(crate) struct OffsetWriter {
    tx: mpsc::Sender<Pending>,
}

impl OffsetWriter {
    /// Starts the batching writer task; it ends when every handle is dropped.
    pub(crate) fn start(meta: MetaNode, metrics: GroupMetrics) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(meta, metrics, rx));
        Self { tx }
    }

    /// Stores `commits` durably, together with whatever else is waiting.
    pub(crate) async fn commit(&self, commits: Vec<OffsetCommit>) -> Result<(), ResponseError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { commits, done })
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        wait.await
            .unwrap_or(Err(ResponseError::CoordinatorNotAvailable))
    }
}

async fn run(meta: MetaNode, metrics: GroupMetrics, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first.done];
        let mut commits = first.commits;
        while commits.len() < MAX_BATCH_OFFSETS {
            match rx.try_recv() {
                Ok(more) => {
                    commits.extend(more.commits);
                    waiting.push(more.done);
                }
                Err(_) => break,
            }
        }
        let count = commits.len() as u64;
        let result = match meta.write(Command::CommitOffsets { commits }).await {
            Ok(_) => {
                metrics.offset_commits_total.inc_by(count);
                metrics.offset_commit_writes_total.inc();
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, offsets = count, "committing offsets to metadata failed");
                Err(errors::meta_error(&e))
            }
        };
        for done in waiting {
            let _ = done.send(result);
        }
    }
}
