//! Batches of flows to the control plane over `ReportFlows`, one batch in flight.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use weft_proto::v1 as pb;

use super::queue::{add, FlowQueue, FlowStats};
use super::record::aggregate;
use super::{FlowError, BATCH_MAX, BATCH_WAIT, STREAM_BATCHES, STREAM_TIME};
use crate::control::{Backoff, Control};

/// The ring buffer's lost-event counter (cumulative), read through the datapath.
pub type LostCounter = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Turns the cumulative ring-buffer counter into increments.
pub(super) struct RingLost {
    pub(super) read: LostCounter,
    pub(super) last: u64,
}

impl RingLost {
    fn delta(&mut self) -> u64 {
        match (self.read)() {
            Some(now) => {
                let d = now.saturating_sub(self.last);
                self.last = now;
                d
            }
            None => 0,
        }
    }
}

/// Now, as flow records carry it.
pub fn unix_nanos_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The next batch: waits until [`BATCH_MAX`] flows are queued or the oldest queued flow
/// has waited [`BATCH_WAIT`] since it was seen (so a flow after a quiet spell does not
/// wait a whole interval on top of the time it already spent); with nothing queued, waits
/// [`BATCH_WAIT`]. `None` when there is nothing to send (no flow, nothing lost).
pub(super) async fn next_batch(queue: &FlowQueue, ring: &mut RingLost) -> Option<pb::FlowBatch> {
    let idle = tokio::time::Instant::now() + BATCH_WAIT;
    loop {
        let (len, oldest) = {
            let b = queue.lock();
            (b.len(), b.oldest_time())
        };
        if len >= BATCH_MAX {
            break;
        }
        let deadline = match oldest {
            Some(t) => {
                let now = unix_nanos_now();
                let age = Duration::from_nanos(u64::try_from(now.saturating_sub(t)).unwrap_or(0));
                tokio::time::Instant::now() + BATCH_WAIT.saturating_sub(age)
            }
            None => idle,
        };
        if deadline <= tokio::time::Instant::now() {
            break;
        }
        tokio::select! {
            () = queue.notify.notified() => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    let (flows, lost) = queue.lock().take(BATCH_MAX);
    let lost = lost.saturating_add(ring.delta());
    if flows.is_empty() && lost == 0 {
        return None;
    }
    Some(pb::FlowBatch {
        flows: aggregate(flows),
        lost,
    })
}

/// Streams flows to the control plane for as long as the agent runs, reconnecting with
/// backoff. Flows stay in the buffer (newest kept) until a connection is up.
pub async fn export(
    control: Control,
    queue: Arc<FlowQueue>,
    lost_counter: LostCounter,
    stats: Arc<FlowStats>,
) {
    // Events lost before this agent started were counted by the previous one.
    let last = lost_counter().unwrap_or(0);
    let mut ring = RingLost {
        read: lost_counter,
        last,
    };
    let mut backoff = Backoff::control_plane();
    loop {
        // A stream is opened only when there is something to send.
        loop {
            {
                let buf = queue.lock();
                if !buf.is_empty() || buf.pending_lost() > 0 {
                    break;
                }
            }
            tokio::select! {
                () = queue.notify.notified() => {}
                () = tokio::time::sleep(BATCH_WAIT) => {
                    let d = ring.delta();
                    if d > 0 {
                        queue.add_lost(d);
                    }
                }
            }
        }
        let res = one_stream(&control, &queue, &mut ring, &stats).await;
        match res {
            Ok(()) => backoff.reset(),
            Err(e) => {
                add(&stats.streams_failed, 1);
                tracing::warn!(error = %e, "flow export failed; buffering flows (newest kept)");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One `ReportFlows` stream: batches until the stream's budget is spent or nothing comes
/// for a batch interval. Nothing leaves the queue before the transport asks for the first
/// message, so a connection that cannot be made (the control plane is away) leaves every
/// flow buffered. When a stream fails after that, everything it carried is counted as lost
/// (reported with the next batch): the control plane may have stored part of it, and a
/// flow is never sent twice.
pub(super) async fn one_stream(
    control: &Control,
    queue: &FlowQueue,
    ring: &mut RingLost,
    stats: &FlowStats,
) -> Result<(), FlowError> {
    let mut client = control.client();
    // One batch in flight: a slow control plane slows the producer, and the queue absorbs.
    let (tx, rx) = mpsc::channel::<pb::FlowBatch>(1);
    let (pulled_tx, pulled_rx) = oneshot::channel();
    let (mut flows, mut lost) = (0u64, 0u64);
    let producer = async {
        if pulled_rx.await.is_err() {
            return; // the call ended before the connection was up
        }
        let started = tokio::time::Instant::now();
        let mut batches = 0u32;
        // An idle interval (no next batch) ends the stream too.
        while let Some(batch) = next_batch(queue, ring).await {
            let n = batch.flows.len() as u64;
            flows += n;
            lost += batch.lost;
            if tx.send(batch).await.is_err() {
                break;
            }
            add(&stats.batches_sent, 1);
            add(&stats.flows_sent, n);
            batches += 1;
            if batches >= STREAM_BATCHES || started.elapsed() >= STREAM_TIME {
                break;
            }
        }
        drop(tx);
    };
    let body = FirstPull {
        batches: tokio_stream::wrappers::ReceiverStream::new(rx),
        pulled: Some(pulled_tx),
    };
    let (res, ()) = tokio::join!(client.report_flows(body), producer);
    match res {
        Ok(_) => {
            add(&stats.flows_acked, flows);
            add(&stats.lost_reported, lost);
            add(&stats.streams_acked, 1);
            Ok(())
        }
        Err(status) => {
            queue.add_lost(flows.saturating_add(lost));
            Err(status.into())
        }
    }
}

/// A stream's body that says when the transport first asks for a message, which it does
/// only once the connection is up and the call's stream is open.
struct FirstPull {
    batches: tokio_stream::wrappers::ReceiverStream<pb::FlowBatch>,
    pulled: Option<oneshot::Sender<()>>,
}

impl tokio_stream::Stream for FirstPull {
    type Item = pb::FlowBatch;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<pb::FlowBatch>> {
        let this = self.get_mut();
        if let Some(pulled) = this.pulled.take() {
            let _ = pulled.send(());
        }
        std::pin::Pin::new(&mut this.batches).poll_next(cx)
    }
}
