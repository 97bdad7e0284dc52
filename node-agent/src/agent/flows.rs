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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::Endpoint;
use weft_datapath_common as c;
use weft_model::desired::HOST_ENDPOINT_ID;
use weft_proto::v1 as pb;
use weft_proto::v1::agent_client::AgentClient;

use super::run::{Auth, Backoff, RunError};
use super::wire::Names;
use crate::datapath::{
    direction_name, drop_reason_name, observation_point_name, verdict_name, FlowEventStream,
};

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

/// `CLOCK_REALTIME - CLOCK_MONOTONIC` in nanoseconds: what turns an event's
/// `bpf_ktime_get_ns` into unix time.
pub fn monotonic_to_unix_offset() -> i64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    let real = read(libc::CLOCK_REALTIME);
    let mono = read(libc::CLOCK_MONOTONIC);
    real - mono
}

/// An address of a flow event.
pub fn event_ip(family: u8, a: &c::Addr) -> IpAddr {
    if family == c::FAMILY_IPV6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// The desired-state id of the node's endpoint at `ip`, or of datapath endpoint `ep_id`
/// when the event was seen on that endpoint's side. The host endpoint is left out: its
/// identity (`host`) already says it, and its id is not an endpoint of the tenant's.
fn endpoint_of(names: &Names, ip: IpAddr, ep_id: Option<u32>) -> String {
    names
        .endpoint_by_ip(ip)
        .map(|e| e.id.clone())
        .or_else(|| ep_id.and_then(|id| names.endpoint_ids.get(&id).cloned()))
        .filter(|id| id != HOST_ENDPOINT_ID)
        .unwrap_or_default()
}

/// One ring-buffer event as a flow record (`count` 1, `packets` 1).
pub fn to_flow(e: &c::FlowEvent, unix_offset_ns: i64, names: &Names) -> pb::Flow {
    let src = event_ip(e.family, &e.saddr);
    let dst = event_ip(e.family, &e.daddr);
    // The event's endpoint is the source of what it sends (egress) and the destination of
    // what it receives (ingress).
    let ep = (e.ep_id != 0).then_some(e.ep_id);
    let (src_ep, dst_ep) = match e.direction {
        c::DIR_EGRESS => (ep, None),
        c::DIR_INGRESS => (None, ep),
        _ => (None, None),
    };
    pb::Flow {
        time_unix_nanos: i64::try_from(e.ts_ns)
            .unwrap_or(i64::MAX)
            .saturating_add(unix_offset_ns),
        src_ip: src.to_string(),
        dst_ip: dst.to_string(),
        src_port: u32::from(e.sport),
        dst_port: u32::from(e.dport),
        proto: u32::from(e.proto),
        src_identity: e.src_identity,
        dst_identity: e.dst_identity,
        verdict: verdict_name(e.verdict).to_string(),
        drop_reason: drop_reason_name(e.drop_reason).to_string(),
        direction: direction_name(e.direction).to_string(),
        tcp_flags: u32::from(e.tcp_flags),
        bytes: e.bytes,
        packets: 1,
        src_endpoint: endpoint_of(names, src, src_ep),
        dst_endpoint: endpoint_of(names, dst, dst_ep),
        service: if e.svc_id == 0 {
            String::new()
        } else {
            names
                .service_ids
                .get(&e.svc_id)
                .cloned()
                .unwrap_or_default()
        },
        observation_point: observation_point_name(e.obs_point).to_string(),
        count: 1,
    }
}

/// Merges records that differ only in time, bytes, packets and count (the first time is
/// kept): one record per distinct flow and outcome within a batch.
pub fn aggregate(flows: Vec<pb::Flow>) -> Vec<pb::Flow> {
    let mut out: Vec<pb::Flow> = Vec::with_capacity(flows.len());
    let mut index: HashMap<FlowKey, usize> = HashMap::new();
    for f in flows {
        match index.get(&flow_key(&f)) {
            Some(&i) => {
                let o = &mut out[i];
                o.bytes = o.bytes.saturating_add(f.bytes);
                o.packets = o.packets.saturating_add(f.packets);
                o.count = o.count.saturating_add(f.count.max(1));
            }
            None => {
                index.insert(flow_key(&f), out.len());
                out.push(f);
            }
        }
    }
    out
}

/// Everything of a flow record but time, bytes, packets and count.
type FlowKey = ([String; 9], [u32; 6]);

fn flow_key(f: &pb::Flow) -> FlowKey {
    (
        [
            f.src_ip.clone(),
            f.dst_ip.clone(),
            f.verdict.clone(),
            f.drop_reason.clone(),
            f.direction.clone(),
            f.src_endpoint.clone(),
            f.dst_endpoint.clone(),
            f.service.clone(),
            f.observation_point.clone(),
        ],
        [
            f.src_port,
            f.dst_port,
            f.proto,
            f.src_identity,
            f.dst_identity,
            f.tcp_flags,
        ],
    )
}

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
    notify: Notify,
}

impl FlowQueue {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(FlowQueue {
            buf: Mutex::new(FlowBuffer::new(cap)),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlowBuffer> {
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

fn add(a: &AtomicU64, n: u64) {
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

/// The ring buffer's lost-event counter (cumulative), read through the datapath.
pub type LostCounter = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Turns the cumulative ring-buffer counter into increments.
struct RingLost {
    read: LostCounter,
    last: u64,
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

fn unix_nanos_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The next batch: waits until [`BATCH_MAX`] flows are queued or the oldest queued flow
/// has waited [`BATCH_WAIT`] since it was seen (so a flow after a quiet spell does not
/// wait a whole interval on top of the time it already spent); with nothing queued, waits
/// [`BATCH_WAIT`]. `None` when there is nothing to send (no flow, nothing lost).
async fn next_batch(queue: &FlowQueue, ring: &mut RingLost) -> Option<pb::FlowBatch> {
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
    endpoint: Endpoint,
    auth: Auth,
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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
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
        let res = match endpoint.connect().await {
            Ok(channel) => one_stream(channel, &auth, &queue, &mut ring, &stats).await,
            Err(e) => Err(e.into()),
        };
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
/// for a batch interval. When it fails, everything it carried is counted as lost
/// (reported with the next batch).
async fn one_stream(
    channel: tonic::transport::Channel,
    auth: &Auth,
    queue: &FlowQueue,
    ring: &mut RingLost,
    stats: &FlowStats,
) -> Result<(), RunError> {
    let Some(first) = next_batch(queue, ring).await else {
        return Ok(());
    };
    let (mut flows, mut lost) = (first.flows.len() as u64, first.lost);
    let mut client = AgentClient::with_interceptor(channel, auth.clone());
    // One batch in flight: a slow control plane slows the producer, and the queue absorbs.
    let (tx, rx) = mpsc::channel::<pb::FlowBatch>(1);
    let producer = async {
        let started = tokio::time::Instant::now();
        let mut batches = 0u32;
        let mut next = Some(first);
        // An idle interval (no next batch) ends the stream too.
        while let Some(batch) = next.take() {
            let n = batch.flows.len() as u64;
            if tx.send(batch).await.is_err() {
                break;
            }
            add(&stats.batches_sent, 1);
            add(&stats.flows_sent, n);
            batches += 1;
            if batches >= STREAM_BATCHES || started.elapsed() >= STREAM_TIME {
                break;
            }
            next = next_batch(queue, ring).await;
            if let Some(b) = &next {
                flows += b.flows.len() as u64;
                lost += b.lost;
            }
        }
        drop(tx);
    };
    let call = client.report_flows(tokio_stream::wrappers::ReceiverStream::new(rx));
    let (res, ()) = tokio::join!(call, producer);
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

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::desired::DesiredEndpoint;

    // Real time (the flows' own times are wall-clock): which deadline applies is told apart
    // by margins of half an interval.
    #[tokio::test]
    async fn a_batch_waits_from_when_its_oldest_flow_was_seen() {
        let queue = FlowQueue::new(100);
        let mut ring = RingLost {
            read: Arc::new(|| Some(0)),
            last: 0,
        };
        let now = unix_nanos_now();
        // Seen 2 s ago (the exporter was connecting): sent at once.
        queue.push(pb::Flow {
            time_unix_nanos: now - 2_000_000_000,
            ..Default::default()
        });
        let t = tokio::time::Instant::now();
        let b = next_batch(&queue, &mut ring).await.expect("a batch");
        assert_eq!(b.flows.len(), 1);
        assert!(t.elapsed() < BATCH_WAIT / 2, "{:?}", t.elapsed());
        // Seen just now: waits out the interval for company.
        queue.push(pb::Flow {
            time_unix_nanos: unix_nanos_now(),
            ..Default::default()
        });
        let t = tokio::time::Instant::now();
        assert!(next_batch(&queue, &mut ring).await.is_some());
        let waited = t.elapsed();
        assert!(waited > BATCH_WAIT / 2, "{waited:?}");
        // Nothing queued: an idle interval, then nothing to send.
        let t = tokio::time::Instant::now();
        assert!(next_batch(&queue, &mut ring).await.is_none());
        assert!(t.elapsed() >= BATCH_WAIT, "{:?}", t.elapsed());
    }

    fn event() -> c::FlowEvent {
        c::FlowEvent {
            ts_ns: 5_000,
            bytes: 60,
            saddr: c::addr_v4([10, 0, 1, 1]),
            daddr: c::addr_v4([10, 0, 2, 7]),
            sport: 40000,
            dport: 8080,
            proto: 6,
            family: c::FAMILY_IPV4,
            verdict: c::VERDICT_DROPPED,
            drop_reason: c::DROP_POLICY_DENIED,
            direction: c::DIR_EGRESS,
            obs_point: c::OBS_FROM_ENDPOINT,
            tcp_flags: 0x02,
            _pad: 0,
            ep_id: 3,
            src_identity: 256,
            dst_identity: 257,
            svc_id: 0,
            _pad2: 0,
        }
    }

    fn names() -> Names {
        Names {
            endpoints: vec![
                DesiredEndpoint {
                    id: "ep-client".into(),
                    ips: vec!["10.0.1.1".parse().expect("ip")],
                    identity: 256,
                    enforce_ingress: false,
                    enforce_egress: false,
                },
                DesiredEndpoint {
                    id: HOST_ENDPOINT_ID.into(),
                    ips: vec!["192.0.2.10".parse().expect("ip")],
                    identity: 1,
                    enforce_ingress: false,
                    enforce_egress: false,
                },
            ],
            endpoint_ids: [(3, "ep-client".to_string())].into(),
            service_ids: [(9, "svc-api".to_string())].into(),
        }
    }

    #[test]
    fn events_map_to_flow_records_with_stable_names_and_ids() {
        let f = to_flow(&event(), 1_700_000_000_000_000_000, &names());
        assert_eq!(f.time_unix_nanos, 1_700_000_000_000_005_000);
        assert_eq!(
            (f.src_ip.as_str(), f.dst_ip.as_str()),
            ("10.0.1.1", "10.0.2.7")
        );
        assert_eq!((f.src_port, f.dst_port, f.proto), (40000, 8080, 6));
        assert_eq!((f.src_identity, f.dst_identity), (256, 257));
        assert_eq!(f.verdict, "DROPPED");
        assert_eq!(f.drop_reason, "POLICY_DENIED");
        assert_eq!(f.direction, "EGRESS");
        assert_eq!(f.observation_point, "endpoint-egress");
        assert_eq!((f.tcp_flags, f.bytes, f.packets, f.count), (2, 60, 1, 1));
        // Local endpoint by address; the remote one is the control plane's to resolve.
        assert_eq!(f.src_endpoint, "ep-client");
        assert_eq!(f.dst_endpoint, "");
        assert_eq!(f.service, "");
    }

    #[test]
    fn translations_name_their_service_and_the_host_is_left_out() {
        let mut e = event();
        e.verdict = c::VERDICT_TRANSLATED;
        e.drop_reason = c::DROP_NONE;
        e.obs_point = c::OBS_SOCK_CONNECT;
        e.saddr = c::addr_v4([192, 0, 2, 10]);
        e.ep_id = 0;
        e.svc_id = 9;
        let f = to_flow(&e, 0, &names());
        assert_eq!(f.verdict, "TRANSLATED");
        assert_eq!(f.drop_reason, "");
        assert_eq!(f.service, "svc-api");
        assert_eq!(f.observation_point, "socket-lb");
        assert_eq!(
            f.src_endpoint, "",
            "the host endpoint is not a tenant endpoint"
        );
        // A number the agent does not know maps to ERROR, never to a wrong verdict.
        e.verdict = 200;
        assert_eq!(to_flow(&e, 0, &names()).verdict, "ERROR");
    }

    #[test]
    fn the_endpoint_falls_back_to_the_datapath_id_on_its_side() {
        let mut e = event();
        e.saddr = c::addr_v4([10, 0, 1, 99]);
        assert_eq!(to_flow(&e, 0, &names()).src_endpoint, "ep-client");
        e.direction = c::DIR_INGRESS;
        let f = to_flow(&e, 0, &names());
        assert_eq!(
            (f.src_endpoint.as_str(), f.dst_endpoint.as_str()),
            ("", "ep-client")
        );
    }

    #[test]
    fn identical_flows_in_a_batch_are_aggregated() {
        let f = to_flow(&event(), 0, &names());
        let mut later = f.clone();
        later.time_unix_nanos += 10;
        later.bytes = 40;
        let mut other = f.clone();
        other.dst_port = 9090;
        let out = aggregate(vec![f.clone(), later, other]);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].count, out[0].packets, out[0].bytes), (2, 2, 100));
        assert_eq!(out[0].time_unix_nanos, f.time_unix_nanos, "first time kept");
        assert_eq!(out[1].count, 1);
    }

    #[test]
    fn a_full_buffer_keeps_the_newest_and_counts_what_it_evicted() {
        let mut b = FlowBuffer::new(3);
        for port in 1..=5u32 {
            b.push(pb::Flow {
                dst_port: port,
                ..Default::default()
            });
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.pending_lost(), 2);
        b.add_lost(4);
        let (flows, lost) = b.take(2);
        assert_eq!(flows.iter().map(|f| f.dst_port).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(lost, 6);
        let (flows, lost) = b.take(10);
        assert_eq!(flows.iter().map(|f| f.dst_port).collect::<Vec<_>>(), [5]);
        assert_eq!(lost, 0, "reported once");
        assert!(b.is_empty());
    }

    #[test]
    fn the_monotonic_offset_gives_the_current_time() {
        let mono = crate::debug::monotonic_ns();
        let unix = i64::try_from(mono).expect("mono") + monotonic_to_unix_offset();
        let now = unix_nanos_now();
        assert!((now - unix).abs() < 1_000_000_000, "{now} vs {unix}");
    }
}
