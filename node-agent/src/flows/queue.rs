//! The bounded flow buffer between the ring-buffer reader and the exporter, and the export's
//! counters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use weft_proto::v1 as pb;

use super::record::{monotonic_to_unix_offset, to_flow};
use crate::datapath::FlowEventStream;
use crate::names::Names;

/// A bounded queue of flows that keeps the newest: a full buffer evicts its oldest flow and
/// counts it.
#[derive(Debug)]
pub struct FlowBuffer {
    cap: usize,
    q: VecDeque<pb::Flow>,
    /// Flows evicted (or otherwise lost) and not yet reported.
    lost: u64,
}

impl FlowBuffer {
    pub fn new(cap: usize) -> Self {
        FlowBuffer {
            cap: cap.max(1),
            q: VecDeque::new(),
            lost: 0,
        }
    }

    pub fn push(&mut self, f: pb::Flow) {
        if self.q.len() >= self.cap {
            self.q.pop_front();
            self.lost = self.lost.saturating_add(1);
        }
        self.q.push_back(f);
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// When the oldest queued flow was seen (unix nanoseconds).
    pub fn oldest_time(&self) -> Option<i64> {
        self.q.front().map(|f| f.time_unix_nanos)
    }

    /// Counts flows lost elsewhere (a failed stream) to be reported with the next batch.
    pub fn add_lost(&mut self, n: u64) {
        self.lost = self.lost.saturating_add(n);
    }

    pub fn pending_lost(&self) -> u64 {
        self.lost
    }

    /// The oldest `max` flows and the lost count, which is reset.
    pub fn take(&mut self, max: usize) -> (Vec<pb::Flow>, u64) {
        let n = max.min(self.q.len());
        (self.q.drain(..n).collect(), std::mem::take(&mut self.lost))
    }
}

/// The buffer shared by the event reader and the exporter.
pub struct FlowQueue {
    buf: Mutex<FlowBuffer>,
    pub(super) notify: Notify,
}

impl FlowQueue {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(FlowQueue {
            buf: Mutex::new(FlowBuffer::new(cap)),
            notify: Notify::new(),
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, FlowBuffer> {
        // A panic while holding the lock leaves a consistent buffer: keep going.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, f: pb::Flow) {
        self.lock().push(f);
        self.notify.notify_one();
    }

    pub fn add_lost(&self, n: u64) {
        self.lock().add_lost(n);
        self.notify.notify_one();
    }
}

/// Counters of the flow export, shown by the node-local API (`GET /v1/status`).
#[derive(Debug, Default)]
pub struct FlowStats {
    pub events: AtomicU64,
    pub batches_sent: AtomicU64,
    pub flows_sent: AtomicU64,
    /// Flows in streams the control plane answered with OK.
    pub flows_acked: AtomicU64,
    pub streams_acked: AtomicU64,
    /// Lost counts the control plane acknowledged.
    pub lost_reported: AtomicU64,
    pub streams_failed: AtomicU64,
    /// Events read, by verdict name.
    pub by_verdict: Mutex<BTreeMap<String, u64>>,
}

/// A snapshot of [`FlowStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatsView {
    pub events: u64,
    pub batches_sent: u64,
    pub flows_sent: u64,
    pub flows_acked: u64,
    pub streams_acked: u64,
    pub lost_reported: u64,
    pub streams_failed: u64,
    pub by_verdict: BTreeMap<String, u64>,
}

impl FlowStats {
    fn count(&self, verdict: &str) {
        let mut m = self.by_verdict.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(verdict.to_string()).or_default() += 1;
        add(&self.events, 1);
    }

    pub fn view(&self) -> FlowStatsView {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FlowStatsView {
            events: r(&self.events),
            batches_sent: r(&self.batches_sent),
            flows_sent: r(&self.flows_sent),
            flows_acked: r(&self.flows_acked),
            streams_acked: r(&self.streams_acked),
            lost_reported: r(&self.lost_reported),
            streams_failed: r(&self.streams_failed),
            by_verdict: self
                .by_verdict
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

pub(super) fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Reads events until the ring buffer fails, mapping each into the queue.
pub async fn read_events(
    mut events: FlowEventStream,
    queue: Arc<FlowQueue>,
    names: watch::Receiver<Names>,
    stats: Arc<FlowStats>,
) {
    loop {
        match events.next().await {
            Ok(e) => {
                let flow = to_flow(&e, monotonic_to_unix_offset(), &names.borrow());
                stats.count(&flow.verdict);
                queue.push(flow);
            }
            Err(e) => {
                tracing::error!(error = %e, "reading flow events failed; flow export stops");
                return;
            }
        }
    }
}
