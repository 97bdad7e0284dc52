//! What the datapath reports: per-verdict counters, conntrack GC, map fill, and the flow
//! event ring buffer.

use super::*;

/// Packet/byte counters by verdict and drop reason, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// (verdict, drop reason) -> (packets, bytes); only non-zero rows.
    pub rows: BTreeMap<(u8, u8), (u64, u64)>,
    /// Ring-buffer events that could not be written.
    pub lost_events: u64,
}

impl Counters {
    pub fn packets(&self, verdict: u8, reason: u8) -> u64 {
        self.rows.get(&(verdict, reason)).map_or(0, |r| r.0)
    }
}

// Stable names of the datapath's enums: the one mapping from the eBPF numbers to the strings
// flow records carry (`weft_proto::v1::Flow`), the debug CLI prints and control-api stores.
// Names are never changed or reused; a new number gets a new name.
//
// | field | values |
// |---|---|
// | verdict | FORWARDED, DROPPED, REDIRECTED, TRANSLATED; ERROR for a number we do not know |
// | drop reason | "" (none), POLICY_DENIED, DENY_RULE, NO_BACKEND, CT_FULL, INVALID_PACKET, FRAGMENT, UNSUPPORTED_L3, INTERNAL, UNKNOWN_ENDPOINT, SPOOFED_SOURCE (11), UNSUPPORTED_RULE (15); UNKNOWN otherwise (`weft_model::flow::DropReason`) |
// | direction (seen from the endpoint) | INGRESS, EGRESS; UNKNOWN otherwise |
// | observation point | endpoint-egress (tc on the host-side veth, packets from the pod), endpoint-ingress (packets to the pod), socket-lb (connect/sendmsg hooks), uplink (north-south LB); unknown otherwise |

pub fn verdict_name(v: u8) -> &'static str {
    match v {
        c::VERDICT_FORWARDED => "FORWARDED",
        c::VERDICT_DROPPED => "DROPPED",
        c::VERDICT_REDIRECTED => "REDIRECTED",
        c::VERDICT_TRANSLATED => "TRANSLATED",
        _ => "ERROR",
    }
}

/// The model's table (`weft_model::flow::DropReason`), so the agent, the API and the debug
/// CLI spell every reason the same way.
pub fn drop_reason_name(r: u8) -> &'static str {
    if r == c::DROP_NONE {
        return "";
    }
    weft_model::flow::DropReason::from_code(u32::from(r)).as_str()
}

pub fn direction_name(d: u8) -> &'static str {
    match d {
        c::DIR_INGRESS => "INGRESS",
        c::DIR_EGRESS => "EGRESS",
        _ => "UNKNOWN",
    }
}

pub fn observation_point_name(o: u8) -> &'static str {
    match o {
        c::OBS_FROM_ENDPOINT => "endpoint-egress",
        c::OBS_TO_ENDPOINT => "endpoint-ingress",
        c::OBS_SOCK_CONNECT | c::OBS_SOCK_SENDMSG => "socket-lb",
        c::OBS_UPLINK_INGRESS | c::OBS_UPLINK_EGRESS => "uplink",
        _ => "unknown",
    }
}

impl Datapath {
    pub fn counters(&self) -> Result<Counters> {
        self.maps.counters()
    }

    /// Collects expired conntrack entries (see [`Maps::ct_gc`]).
    pub fn ct_gc(&mut self) -> Result<usize> {
        self.maps.ct_gc()
    }

    /// Fill of every map (see [`map_fill`]).
    pub fn map_fill(&self) -> Result<BTreeMap<String, f64>> {
        map_fill(&self.cfg.pin_path)
    }

    /// Takes the flow-event reader (one consumer per ring buffer).
    pub fn flow_events(&mut self) -> Option<FlowEvents> {
        match self.maps.flow_events() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "no flow events");
                None
            }
        }
    }
}

/// Reads flow events from the ring buffer.
pub struct FlowEvents {
    pub(super) ring: ring::Ring,
}

/// Most events one [`FlowEvents::drain`] returns (the rest waits for the next call).
pub const DRAIN_MAX: usize = 4096;

impl FlowEvents {
    /// Returns the events available now (at most [`DRAIN_MAX`]), without waiting.
    pub fn drain(&mut self) -> Vec<c::FlowEvent> {
        let mut out = Vec::new();
        self.ring.consume(DRAIN_MAX, |item| {
            if item.len() >= std::mem::size_of::<c::FlowEvent>() {
                // SAFETY: the kernel wrote a FlowEvent (repr(C), Pod) here; read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const c::FlowEvent) });
            }
        });
        out
    }

    /// Records skipped because the ring held something that was not a record.
    pub fn corrupt(&self) -> u64 {
        self.ring.corrupt
    }
}

/// Async stream of flow events (tokio): waits on the ring buffer's fd.
pub struct FlowEventStream {
    fd: tokio::io::unix::AsyncFd<FlowEvents>,
    pending: std::collections::VecDeque<c::FlowEvent>,
}

impl FlowEventStream {
    /// Must be called inside a tokio runtime with I/O enabled.
    pub fn new(events: FlowEvents) -> std::io::Result<Self> {
        // SAFETY: `FlowEvents` owns the ring buffer's map fd; it stays open and unchanged for
        // as long as the `FlowEvents` lives, i.e. for the whole life of the `AsyncFd`.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            fd,
            pending: Default::default(),
        })
    }

    /// The next event, waiting for one if none is buffered.
    pub async fn next(&mut self) -> std::io::Result<c::FlowEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let mut guard = self.fd.readable_mut().await?;
            let batch = guard.get_inner_mut().drain();
            let full = batch.len() >= DRAIN_MAX;
            if batch.is_empty() {
                guard.clear_ready();
            }
            drop(guard);
            self.pending.extend(batch);
            if full {
                // A busy ring must not keep this worker thread to itself.
                tokio::task::yield_now().await;
            }
        }
    }
}

impl AsRawFd for FlowEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}
