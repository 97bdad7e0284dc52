//! `Sync`: a snapshot on connect, then a delta whenever the tenant's desired state
//! changes, each stamped with the revision it reflects.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::Status;
use tracing::Instrument;
use weft_model::desired::{self, NodeDesiredState};
use weft_proto::parts;
use weft_proto::v1::SyncResponse;
use weft_telemetry::TraceParent;

use super::{desired as state, status, NodeCtx};
use crate::changes::Latest;
use crate::state::AppState;
use crate::store::nodes;

/// Messages buffered per stream: the bound is the backpressure on a slow agent.
const BUFFER: usize = 16;
/// After the database was briefly unavailable, an open stream tries its push again this
/// much later, instead of ending (and making its agent reconnect: a storm at scale).
const RETRY: Duration = Duration::from_secs(1);

/// A message to the agent, boxed in the channel: a channel allocates its slots (32 at a
/// time) on creation, and a `SyncResponse` with its `Status` alternative is ~400 bytes, so
/// unboxed every stream kept ~13 KB of empty slots.
type Item = Box<Result<SyncResponse, Status>>;
type Sender = mpsc::Sender<Item>;

pub type Stream = tokio_stream::adapters::Map<
    tokio_stream::wrappers::ReceiverStream<Item>,
    fn(Item) -> Result<SyncResponse, Status>,
>;

/// Starts the producer task of one agent's stream.
pub fn start(st: AppState, node: NodeCtx, resume_from: u64) -> Stream {
    let (tx, rx) = mpsc::channel(BUFFER);
    // Subscribe before the first snapshot, so no change between the two is missed.
    let changes = (st.changes.watch(node.tenant_id), st.changes.resets());
    tokio::spawn(async move {
        st.metrics.agents_connected.inc();
        let _connected = Connected(&st);
        // Held until the first message is out.
        let Ok(opening) = st.stream_opens.clone().acquire_owned().await else {
            return;
        };
        let lag = super::reports::sync_lag_stream(&st, &node).await;
        let open = Opening {
            resume_from,
            changes,
            permit: opening,
        };
        if let Err(e) = produce(&st, &node, open, &tx, &lag).await {
            let _ = tx.send(Box::new(Err(e))).await;
        }
        tracing::info!(node = %node.name, "sync stream closed");
    });
    let unbox: fn(Item) -> Result<SyncResponse, Status> = |item| *item;
    tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), unbox)
}

/// How a stream opens: where the agent resumes from, the change feeds it watches
/// (subscribed before the first snapshot), and its place among the streams opening.
struct Opening {
    resume_from: u64,
    changes: (watch::Receiver<Latest>, watch::Receiver<u64>),
    permit: tokio::sync::OwnedSemaphorePermit,
}

async fn produce(
    st: &AppState,
    node: &NodeCtx,
    open: Opening,
    tx: &Sender,
    lag: &crate::metrics::SyncLagStream<'_>,
) -> Result<(), Status> {
    let Opening {
        resume_from,
        changes: (mut mine, mut resets),
        permit,
    } = open;
    // Boxed for the reason the push is (below).
    let Some(mut last) = Box::pin(first(st, node, resume_from, permit, tx, lag)).await? else {
        return Ok(());
    };
    let revision = last.revision;
    let mut sent_revision = revision;
    tracing::info!(node = %node.name, revision, resume_from, "sync stream open");
    // `last_seen` while the stream is open (written for all streams at once).
    let _present = st.heartbeats.enter(node.id, node.tenant_id);
    let mut trace = None;
    let mut retry = false;
    loop {
        tokio::select! {
            () = tx.closed() => return Ok(()),
            () = tokio::time::sleep(RETRY), if retry => {}
            changed = mine.changed() => match changed {
                Ok(()) => trace = mine.borrow_and_update().trace,
                Err(_) => return Err(Status::unavailable("control plane shutting down")),
            },
            changed = resets.changed() => match changed {
                Ok(()) => trace = None,
                Err(_) => return Err(Status::unavailable("control plane shutting down")),
            },
        }
        // The push joins the trace of the change that caused it (the REST request's).
        let span = tracing::info_span!("desired_state.push", node = %node.name, revision = tracing::field::Empty);
        if let Some(tp) = trace {
            tp.adopt(&span);
        }
        // Boxed: the push is most of the stream's state machine, which an idle stream (all
        // but a moment of its life) would otherwise carry in its task.
        let pushed = Box::pin(
            async {
                // The view is let go once compiled, not held while the send and the group commit
                // wait (the next change's view would be loaded beside it).
                let next = {
                    let loaded = st.views.heard(node.tenant_id).await.map_err(status)?;
                    if loaded.revision <= sent_revision {
                        // Already sent (this stream shared a view loaded for a later change).
                        return Ok(true);
                    }
                    state::compile(node, &loaded).map_err(status)?
                };
                let revision = next.revision;
                tracing::Span::current().record("revision", revision);
                // Every new revision goes out, an empty delta when the node's state did not
                // change: its ack is what says the node is current at that revision (policy
                // and service realization count on it).
                let d = last.delta_to(&next);
                let mut msg = state::delta(revision, &d);
                if let Some(tp) = TraceParent::current() {
                    msg.traceparent = tp.to_string();
                }
                if !send(tx, node, msg).await {
                    return Ok(false);
                }
                lag.sent(revision);
                remember(st, node, &next, !d.is_empty()).await;
                sent_revision = revision;
                last = next;
                Ok::<_, Status>(true)
            }
            .instrument(span),
        )
        .await;
        match pushed {
            Ok(true) => retry = false,
            Ok(false) => return Ok(()),
            Err(e) if e.code() == tonic::Code::Unavailable => {
                tracing::warn!(node = %node.name, error = %e.message(), "push failed; retrying");
                retry = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The stream's first message: the difference from what the node was last sent when the
/// agent resumes from it, else a snapshot (`opening` let go once it is out). `None` when
/// the agent is gone.
async fn first(
    st: &AppState,
    node: &NodeCtx,
    resume_from: u64,
    opening: tokio::sync::OwnedSemaphorePermit,
    tx: &Sender,
    lag: &crate::metrics::SyncLagStream<'_>,
) -> Result<Option<state::Compiled>, Status> {
    // The view is let go once compiled: a stream that kept the one it opened with pinned it
    // (and its cluster plans) for its whole life, one view per revision streams opened at.
    let last = {
        let loaded = st.views.committed(node.tenant_id).await.map_err(status)?;
        state::compile(node, &loaded).map_err(status)?
    };
    let revision = last.revision;
    // An agent resuming from what this node was last sent gets only the difference (empty
    // if nothing changed: "you are current"); any other revision gets a snapshot.
    let (first, unchanged) = match sent(st, node, &last).await {
        Some((rev, before)) if rev > 0 && rev.unsigned_abs() == resume_from => {
            let d = desired::diff(&before, &last.full());
            (state::delta(revision, &d), d.is_empty())
        }
        _ => (state::snapshot(revision, &last.full()), false),
    };
    if !send(tx, node, first).await {
        return Ok(None);
    }
    drop(opening);
    lag.sent(revision);
    remember(st, node, &last, !unchanged).await;
    Ok(Some(last))
}

/// Sends a revision to the agent: in parts when it is large and the agent joins parts, so
/// the stream's encode buffer (kept for the stream's life, as large as the largest message
/// it carried) stays near [`parts::PART_BYTES`]. False when the agent is gone.
async fn send(tx: &Sender, node: &NodeCtx, msg: SyncResponse) -> bool {
    let parts = if node.capability_version >= weft_proto::CAPABILITY_PARTS {
        parts::split(msg, parts::PART_BYTES)
    } else {
        vec![msg]
    };
    for part in parts {
        if tx.send(Box::new(Ok(part))).await.is_err() {
            return false;
        }
    }
    true
}

/// Counts an open stream in `weft_agents_connected` until dropped (the task may end
/// by error or cancellation).
struct Connected<'a>(&'a AppState);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.metrics.agents_connected.dec();
    }
}

/// A transaction confined to the node's tenant (RLS).
async fn node_tx(
    st: &AppState,
    node: &NodeCtx,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, crate::error::ApiError> {
    let mut tx = st.pool.begin().await?;
    crate::store::set_tenant(&mut tx, node.tenant_id).await?;
    Ok(tx)
}

/// What the node was last sent, and at which revision (`now`: what it is to get now, whose
/// shared ipcache is most likely the one it was sent).
async fn sent(
    st: &AppState,
    node: &NodeCtx,
    now: &state::Compiled,
) -> Option<(i64, NodeDesiredState)> {
    let res = async {
        let mut tx = node_tx(st, node).await?;
        let known = (
            now.ipcache.digest.as_slice(),
            now.planned.plan.shared_ipcache(),
            now.planned.plan.shared_nodes(),
        );
        let row = nodes::sent_state(&mut tx, node.id, known).await?;
        tx.commit().await?;
        Ok::<_, crate::error::ApiError>(row)
    }
    .await;
    res.unwrap_or_else(|e| {
        // Not fatal: the agent gets a snapshot instead.
        tracing::warn!(node = %node.name, error = %e, "could not read the last sent state");
        None
    })
}

/// Records what the node was just sent, for its next reconnect; when not `changed`, the
/// state sent before, unchanged, now stands for the new revision too.
async fn remember(st: &AppState, node: &NodeCtx, sent: &state::Compiled, changed: bool) {
    let state = changed.then(|| nodes::SentState::new(&sent.local, sent.ipcache.clone()));
    let row = nodes::Sent {
        node: node.id,
        tenant: node.tenant_id,
        revision: sent.revision,
        state,
    };
    if let Err(e) = st.node_writes.sent.submit(row).await {
        // Not fatal: the next reconnect gets a snapshot.
        tracing::warn!(node = %node.name, error = %e, "could not record the sent state");
    }
}
