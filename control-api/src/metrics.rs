//! Prometheus metrics of the control plane, served as text at `/metrics`.

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

use crate::state::AppState;

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
    /// Agents with an open `Sync` stream to this replica.
    pub agents_connected: Gauge,
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
        let agents_connected = Gauge::default();
        registry.register(
            "weft_agents_connected",
            "Agents with an open desired-state stream to this replica",
            agents_connected.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            flows_processed,
            drops,
            flows_lost,
            agents_connected,
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Middleware counting requests and timing them per route template.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
