//! `Sync`: a snapshot on connect, then a delta whenever the tenant's desired state
//! changes, each stamped with the revision it reflects.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use weft_model::desired::{self, NodeDesiredState};
use weft_proto::v1::SyncResponse;

use super::{desired as state, status, NodeCtx};
use crate::changes::Change;
use crate::state::AppState;

/// How often a connected agent's `last_seen` is refreshed while its stream is open.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// Messages buffered per stream: the bound is the backpressure on a slow agent.
const BUFFER: usize = 16;

pub type Stream = tokio_stream::wrappers::ReceiverStream<Result<SyncResponse, Status>>;

/// Starts the producer task of one agent's stream.
pub fn start(st: AppState, node: NodeCtx, resume_from: u64) -> Stream {
    let (tx, rx) = mpsc::channel(BUFFER);
    // Subscribe before the first snapshot, so no change between the two is missed.
    let changes = st.changes.subscribe();
    tokio::spawn(async move {
        st.metrics.agents_connected.inc();
        let _connected = Connected(&st);
        if let Err(e) = produce(&st, &node, resume_from, changes, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
        tracing::info!(node = %node.name, "sync stream closed");
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn produce(
    st: &AppState,
    node: &NodeCtx,
    resume_from: u64,
    mut changes: broadcast::Receiver<Change>,
    tx: &mpsc::Sender<Result<SyncResponse, Status>>,
) -> Result<(), Status> {
    let (revision, mut last) = state::compute(st, node).await.map_err(status)?;
    // An agent already at this revision gets an empty delta: "you are current".
    let first = if resume_from == revision.unsigned_abs() {
        state::delta(revision, &Default::default())
    } else {
        state::snapshot(revision, &last)
    };
    if tx.send(Ok(first)).await.is_err() {
        return Ok(());
    }
    tracing::info!(node = %node.name, revision, resume_from, "sync stream open");
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            () = tx.closed() => return Ok(()),
            _ = heartbeat.tick() => {
                touch(st, node).await;
                continue;
            }
            msg = changes.recv() => match msg {
                Ok(Change { tenant: Some(t), .. }) if t != node.tenant_id => continue,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Status::unavailable("control plane shutting down"));
                }
            },
        }
        let (revision, next) = state::compute(st, node).await.map_err(status)?;
        if let Some(msg) = changed(revision, &last, &next) {
            if tx.send(Ok(msg)).await.is_err() {
                return Ok(());
            }
        }
        last = next;
    }
}

/// Counts an open stream in `weft_agents_connected` until dropped (the task may end
/// by error or cancellation).
struct Connected<'a>(&'a AppState);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.metrics.agents_connected.dec();
    }
}

/// The delta message between two states, if anything changed.
fn changed(revision: i64, old: &NodeDesiredState, new: &NodeDesiredState) -> Option<SyncResponse> {
    let d = desired::diff(old, new);
    (!d.is_empty()).then(|| state::delta(revision, &d))
}

async fn touch(st: &AppState, node: &NodeCtx) {
    let res = async {
        let mut tx = st.pool.begin().await?;
        crate::auth::set_tenant(&mut tx, node.tenant_id).await?;
        sqlx::query("UPDATE nodes SET last_seen = now() WHERE id = $1")
            .bind(node.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok::<_, crate::error::ApiError>(())
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(node = %node.name, error = %e, "could not record heartbeat");
    }
}
