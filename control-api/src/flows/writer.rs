//! The write side of ingest. `ReportFlows` handlers hand enriched batches to a bounded
//! queue; a few writer tasks drain it, each taking everything waiting (up to
//! [`MAX_ROWS`]) into one transaction. Fewer, larger transactions and a fixed number of
//! writing connections (instead of one per agent stream) is what lets Postgres spend its
//! time on rows rather than on commits, notifications and lock contention.
//!
//! Nothing is dropped here. A full queue makes handlers wait, so they stop reading their
//! gRPC streams and HTTP/2 flow control pushes back to the agents, whose bounded buffers
//! absorb the burst (and count what they evict as lost). Each batch's handler learns
//! whether its write committed; a failed write fails the agent's stream, and the agent
//! reports those flows as lost with its next batch.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;

use super::{NewFlow, Origin, SharedFlowStore};
use crate::error::{ApiError, Result};
use crate::tasks::Tasks;

/// Flows one transaction takes at most (it may exceed it by one batch).
pub const MAX_ROWS: usize = 20_000;
/// Batches waiting to be written, over all agents, before handlers wait.
pub const QUEUE_BATCHES: usize = 64;
/// Writer tasks, each with at most one connection busy at a time.
pub const WRITERS: usize = 2;

struct Job {
    origin: Arc<Origin>,
    flows: Vec<NewFlow>,
    done: oneshot::Sender<std::result::Result<(), String>>,
}

/// The ingest queue; cheap to clone.
#[derive(Clone)]
pub struct FlowWriter {
    tx: mpsc::Sender<Job>,
}

/// A queued batch; [`Pending::stored`] resolves once it is committed (or failed).
pub struct Pending(oneshot::Receiver<std::result::Result<(), String>>);

impl Pending {
    pub async fn stored(self) -> Result<()> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Unavailable(format!("storing flows failed: {e}"))),
            Err(_) => Err(ApiError::Unavailable(
                "the flow writer stopped before storing the batch".into(),
            )),
        }
    }
}

impl FlowWriter {
    /// Starts `writers` writer tasks over `store` behind a queue of `queue` batches. When
    /// the tasks stop, a writer finishes the write it is in, then ends.
    pub fn spawn(
        store: SharedFlowStore,
        writers: usize,
        queue: usize,
        tasks: &Tasks,
    ) -> FlowWriter {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let stop = tasks.stopping();
            tasks.spawn_until_idle("flow writer", write_loop(store.clone(), rx.clone(), stop));
        }
        FlowWriter { tx }
    }

    /// Queues one node's batch, waiting while the queue is full (the backpressure).
    pub async fn submit(&self, origin: Arc<Origin>, flows: Vec<NewFlow>) -> Result<Pending> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job {
                origin,
                flows,
                done,
            })
            .await
            .map_err(|_| ApiError::Unavailable("the flow writer has stopped".into()))?;
        Ok(Pending(rx))
    }

    /// Batches waiting for a writer.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

async fn write_loop(
    store: SharedFlowStore,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    stop: CancellationToken,
) {
    loop {
        let jobs = {
            let mut rx = tokio::select! {
                rx = rx.lock() => rx,
                () = stop.cancelled() => return,
            };
            let first = tokio::select! {
                first = rx.recv() => first,
                () = stop.cancelled() => return,
            };
            let Some(first) = first else {
                return;
            };
            let mut rows = first.flows.len();
            let mut jobs = vec![first];
            while rows < MAX_ROWS {
                match rx.try_recv() {
                    Ok(j) => {
                        rows += j.flows.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        let batches: Vec<(&Origin, &[NewFlow])> = jobs
            .iter()
            .map(|j| (&*j.origin, j.flows.as_slice()))
            .collect();
        let res = store.insert_batches(&batches).await;
        let res = res.map(|_| ()).map_err(|e| {
            let rows: usize = jobs.iter().map(|j| j.flows.len()).sum();
            tracing::error!(error = %e, batches = jobs.len(), rows, "storing flows failed");
            e.to_string()
        });
        drop(batches);
        for j in jobs {
            // A handler that went away (its agent disconnected) no longer cares.
            let _ = j.done.send(res.clone());
        }
    }
}
