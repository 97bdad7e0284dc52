//! Prometheus metrics of the control plane, served as text at `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/v1/tenants/{tenant}/clusters`), never the raw path, so
    /// label cardinality stays bounded.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

/// Flow counters are labelled by tenant name and a few closed enums, never by flow
/// fields such as addresses, so cardinality stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub tenant: String,
    pub verdict: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub tenant: String,
    pub reason: String,
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    pub tenant: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

/// What each open `Sync` stream of this replica sent and its node has not acknowledged
/// yet: the sync lag. Pushes are recorded by the stream, acks by `Ack` (agents ack on the
/// channel they sync on, so normally on this replica) and by the stream's heartbeat,
/// which reads the node's acknowledged revision from the database (an ack that went to
/// another replica).
#[derive(Default)]
pub struct SyncLag {
    /// By node, then stream: an ack looks up its node's streams, not every stream (a
    /// replica acks each of its agents on every change).
    streams: Mutex<BTreeMap<(uuid::Uuid, u64), StreamLag>>,
    next: AtomicU64,
}

struct StreamLag {
    tenant: String,
    acked: i64,
    /// Revisions sent and not acknowledged, oldest first, with when they were sent; at
    /// most [`MAX_UNACKED`].
    unacked: VecDeque<(i64, Instant)>,
}

/// Past this many unacknowledged revisions (an agent that reads and never acks), the
/// newest entry takes the next revision and keeps its earlier time: memory stays bounded
/// and the lag it reports errs long, never short.
const MAX_UNACKED: usize = 64;

/// Keeps a stream in [`SyncLag`] until dropped.
pub struct SyncLagStream<'a> {
    lag: &'a SyncLag,
    key: (uuid::Uuid, u64),
}

impl SyncLagStream<'_> {
    /// A state at `revision` was sent to the node.
    pub fn sent(&self, revision: i64) {
        let mut m = self.lag.lock();
        if let Some(s) = m.get_mut(&self.key) {
            if revision > s.acked && s.unacked.back().is_none_or(|(r, _)| *r < revision) {
                let full = s.unacked.len() >= MAX_UNACKED;
                match s.unacked.back_mut() {
                    Some((r, _)) if full => *r = revision,
                    _ => s.unacked.push_back((revision, Instant::now())),
                }
            }
        }
    }
}

impl Drop for SyncLagStream<'_> {
    fn drop(&mut self) {
        self.lag.lock().remove(&self.key);
    }
}

impl SyncLag {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(uuid::Uuid, u64), StreamLag>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking a stream to `node`, which has acknowledged `acked` so far.
    pub fn open(&self, node: uuid::Uuid, tenant: String, acked: i64) -> SyncLagStream<'_> {
        let key = (node, self.next.fetch_add(1, Ordering::Relaxed));
        self.lock().insert(
            key,
            StreamLag {
                tenant,
                acked,
                unacked: VecDeque::new(),
            },
        );
        SyncLagStream { lag: self, key }
    }

    /// `node` has applied everything up to `revision`.
    pub fn acked(&self, node: uuid::Uuid, revision: i64) {
        for s in self
            .lock()
            .range_mut((node, 0)..=(node, u64::MAX))
            .map(|(_, s)| s)
        {
            s.acked = s.acked.max(revision);
            while s.unacked.front().is_some_and(|(r, _)| *r <= s.acked) {
                s.unacked.pop_front();
            }
        }
    }

    /// Per tenant with a connected node: the age in seconds of the oldest state sent and
    /// not acknowledged (0 when every node is current), and how many nodes are behind.
    pub fn by_tenant(&self, now: Instant) -> BTreeMap<String, (f64, i64)> {
        let mut out: BTreeMap<String, (f64, i64)> = BTreeMap::new();
        for s in self.lock().values() {
            let e = out.entry(s.tenant.clone()).or_default();
            if let Some((_, at)) = s.unacked.front() {
                e.0 = e.0.max(now.saturating_duration_since(*at).as_secs_f64());
                e.1 += 1;
            }
        }
        out
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    /// Flow records stored.
    pub flows_processed: Family<FlowLabels, Counter>,
    /// Dropped flow records stored, by reason.
    pub drops: Family<DropLabels, Counter>,
    /// Flow events agents could not deliver (and records we could not parse).
    pub flows_lost: Family<LostLabels, Counter>,
    /// Addresses learned from DNS that a node's per-name cap dropped since its agent
    /// started (as its last health report said).
    pub fqdn_evicted: Family<LostLabels, Gauge>,
    /// Agents with an open `Sync` stream to this replica.
    pub agents_connected: Gauge,
    /// What connected agents were sent and have not acknowledged.
    pub sync_lag: SyncLag,
    sync_lag_seconds: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    agents_behind: Family<TenantLabels, Gauge>,
    heap_live: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // Names carry their own prefix: `weft_api_*` for HTTP, `weft_*` for the domain.
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "weft_api_http_requests",
            "HTTP requests answered",
            requests.clone(),
        );
        registry.register(
            "weft_api_http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        let flows_processed = Family::<FlowLabels, Counter>::default();
        registry.register(
            "weft_flows_processed",
            "Flow records received from agents and stored",
            flows_processed.clone(),
        );
        let drops = Family::<DropLabels, Counter>::default();
        registry.register(
            "weft_drop",
            "Dropped-flow records stored, by drop reason",
            drops.clone(),
        );
        let flows_lost = Family::<LostLabels, Counter>::default();
        registry.register(
            "weft_flows_lost",
            "Flow events a node's agent reported as lost, plus records that could not be parsed",
            flows_lost.clone(),
        );
        let fqdn_evicted = Family::<LostLabels, Gauge>::default();
        registry.register(
            "weft_fqdn_addresses_evicted",
            "Addresses learned from DNS that a node's per-name cap (--fqdn-max-ips-per-name) \
             dropped since its agent started: toFQDNs no longer allows them",
            fqdn_evicted.clone(),
        );
        let agents_connected = Gauge::default();
        registry.register(
            "weft_agents_connected",
            "Agents with an open desired-state stream to this replica",
            agents_connected.clone(),
        );
        let sync_lag_seconds = Family::<TenantLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "weft_agent_sync_lag_seconds",
            "Age of the oldest desired state sent to a connected agent of the tenant and not \
             yet acknowledged (0: every connected agent is current)",
            sync_lag_seconds.clone(),
        );
        let agents_behind = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "weft_agents_behind",
            "Connected agents of the tenant with desired state not yet acknowledged",
            agents_behind.clone(),
        );
        let heap_live = Gauge::default();
        registry.register(
            "weft_heap_live_bytes",
            "Heap bytes this process has allocated and not freed (less than its RSS, which \
             also holds what the allocator kept after freeing)",
            heap_live.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            flows_processed,
            drops,
            flows_lost,
            fqdn_evicted,
            agents_connected,
            sync_lag: SyncLag::default(),
            sync_lag_seconds,
            agents_behind,
            heap_live,
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        // The lag gauges are computed at scrape time; tenants without a connected agent
        // drop out.
        self.sync_lag_seconds.clear();
        self.agents_behind.clear();
        for (tenant, (secs, behind)) in self.sync_lag.by_tenant(Instant::now()) {
            let l = TenantLabels { tenant };
            self.sync_lag_seconds.get_or_create(&l).set(secs);
            self.agents_behind.get_or_create(&l).set(behind);
        }
        if let Some(bytes) = crate::heap::live_bytes() {
            self.heap_live.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Middleware counting requests and timing them per route template.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_that_never_acks_holds_a_bounded_lag_record() {
        let lag = SyncLag::default();
        let node = uuid::Uuid::nil();
        let stream = lag.open(node, "acme".into(), 0);
        for r in 1..=10_000 {
            stream.sent(r);
        }
        let held = |lag: &SyncLag| lag.lock().values().map(|s| s.unacked.len()).sum::<usize>();
        assert_eq!(held(&lag), MAX_UNACKED);
        assert_eq!(lag.by_tenant(Instant::now())["acme"].1, 1);
        // Acking past the coalesced entry leaves nothing behind; short of it, still behind.
        lag.acked(node, 9_999);
        assert_eq!(lag.by_tenant(Instant::now())["acme"].1, 1);
        lag.acked(node, 10_000);
        assert_eq!(held(&lag), 0);
        assert_eq!(lag.by_tenant(Instant::now())["acme"].1, 0);
    }

    #[test]
    fn an_ack_clears_every_stream_of_its_node_and_only_those() {
        let lag = SyncLag::default();
        let (a, b) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        // Node `a` reconnected: its old stream is still open beside the new one.
        let streams = [
            lag.open(a, "acme".into(), 0),
            lag.open(b, "acme".into(), 0),
            lag.open(a, "acme".into(), 0),
        ];
        for s in &streams {
            s.sent(5);
        }
        lag.acked(a, 5);
        assert_eq!(
            lag.by_tenant(Instant::now())["acme"].1,
            1,
            "b is still behind"
        );
        lag.acked(b, 4);
        assert_eq!(lag.by_tenant(Instant::now())["acme"].1, 1);
        lag.acked(b, 5);
        assert_eq!(lag.by_tenant(Instant::now())["acme"].1, 0);
        drop(streams);
        assert!(lag.lock().is_empty(), "closed streams leave nothing");
    }
}
