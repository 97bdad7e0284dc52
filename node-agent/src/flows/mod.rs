//! Flow export: datapath ring-buffer events become `weft_proto::v1::Flow` records, are
//! batched (at most [`BATCH_MAX`] flows or [`BATCH_WAIT`], whichever comes first) and streamed
//! to the control plane with `ReportFlows`.
//!
//! - Mapping ([`to_flow`]): time as unix nanoseconds (events carry `CLOCK_MONOTONIC`; the
//!   offset to `CLOCK_REALTIME` is read per event, so clock steps are followed), enum numbers
//!   as the stable names of [`crate::datapath::verdict_name`] and its neighbours, datapath
//!   endpoint and service numbers as desired-state ids ([`Names`]).
//! - Backpressure: one batch in flight per stream; while the control plane is slow or away,
//!   events accumulate in a bounded [`FlowBuffer`] that keeps the newest and counts what it
//!   evicted. That count, the ring buffer's own lost-event counter and the flows of a stream
//!   that failed go out as `FlowBatch.lost`: losses are reported, never silent.
//! - A stream is closed after [`STREAM_BATCHES`] batches or [`STREAM_TIME`]: the RPC's
//!   answer is the acknowledgement of everything the stream carried ([`FlowStats`]).
//!
//! Modules: [`record`] (event -> flow record), [`queue`] (the bounded buffer and the
//! counters), [`export`] (batches and `ReportFlows` streams).

use std::time::Duration;

mod export;
mod queue;
mod record;

pub use export::unix_nanos_now;
pub use export::{export, LostCounter};
pub use queue::{read_events, FlowBuffer, FlowQueue, FlowStats, FlowStatsView};
pub use record::{aggregate, monotonic_to_unix_offset, to_flow};

/// Most flows in one batch.
pub const BATCH_MAX: usize = 500;
/// Longest a flow waits for its batch.
pub const BATCH_WAIT: Duration = Duration::from_secs(1);
/// Batches per `ReportFlows` stream before it is closed (and so acknowledged).
pub const STREAM_BATCHES: u32 = 20;
/// Longest a stream stays open.
pub const STREAM_TIME: Duration = Duration::from_secs(5);
/// Flows kept while the control plane is away (default of `--flow-buffer`).
pub const DEFAULT_BUFFER: usize = 100_000;

/// Why a `ReportFlows` stream ended early (its flows are counted as lost).
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("control plane: {0}")]
    Rpc(#[from] tonic::Status),
}

#[cfg(test)]
mod tests;
