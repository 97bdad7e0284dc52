//! Flows: `GET …/flows` (stored, newest first, paged), `GET …/flows/stream` (live, Server-
//! Sent Events, fed by every replica's ingest), `GET …/service-map`, and what the DNS
//! records say per endpoint, `GET …/endpoints/{e}/fqdn-cache`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use chrono::Utc;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};
use weft_model::flow::{FlowFilter, FlowRecord, FqdnCache};

use super::common::ReadErrors;
use crate::auth::{need, Tenant};
use crate::error::{ApiError, Result};
use crate::flows::{Cursor, Notice, ServiceMap};
use crate::pagination::{Page, Query, DEFAULT_LIMIT, MAX_LIMIT};
use crate::state::AppState;
use weft_model::flow::TimeOrDuration;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_flows))
        .routes(routes!(stream_flows))
        .routes(routes!(service_map))
        .routes(routes!(fqdn_cache))
}

/// DNS records read for an endpoint's cache: the newest this many, of the last day.
const FQDN_CACHE_RECORDS: u32 = 1000;

/// The names an endpoint resolved through its node's DNS proxy, with the addresses the
/// answers gave and when they expire (viewer).
///
/// Read from the endpoint's DNS flow records of the last day (the newest 1,000): a name
/// resolved while flows were lost is missing here, never in the agent's enforcement.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/endpoints/{endpoint}/fqdn-cache", tag = "flows",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("endpoint" = Uuid, Path, description = "Endpoint id")),
    responses((status = 200, body = FqdnCache), ReadErrors),
    security(("bearer" = [])))]
async fn fqdn_cache(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    axum::extract::Path((_tenant, endpoint)): axum::extract::Path<(String, String)>,
) -> Result<axum::Json<FqdnCache>> {
    let id =
        uuid::Uuid::parse_str(&endpoint).map_err(|_| ApiError::not_found("endpoint", &endpoint))?;
    let e = crate::store::inventory::endpoint(&mut *t.begin(&st.pool).await?, t.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("endpoint", &endpoint))?;
    let mut pairs = vec![
        ("type", "L7".to_string()),
        ("dns_query", ".".to_string()),
        ("since", "1d".to_string()),
        ("from_endpoint", e.name.clone()),
    ];
    // Endpoint names repeat across clusters: its address tells it apart.
    if let Some(ip) = &e.ipv4 {
        pairs.push(("from_ip", ip.clone()));
    }
    let filter = filter_from(pairs.iter().map(|(k, v)| (*k, v.as_str())))?;
    let rows = st
        .flows
        .query(t.id, &filter, None, FQDN_CACHE_RECORDS)
        .await?;
    let now = Utc::now();
    Ok(axum::Json(weft_model::flow::fqdn_cache(
        rows.iter().map(|(f, _)| f),
        now,
    )))
}

/// The filter parameters, for the documentation only: they are parsed by
/// [`FlowFilter::parse`] from the raw pairs, since one may repeat. Every filter also has a
/// `not_<name>` form that excludes what it matches (`not_verdict=FORWARDED`); the same
/// parameter repeated is OR, different parameters AND.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlowFilterParams {
    /// Source labels, Kubernetes selector syntax (`app=web,env in (prod)`). Repeatable.
    #[param(schema_with = weft_model::selector::selector_query_schema)]
    from_label: Option<String>,
    /// Destination labels, Kubernetes selector syntax. Repeatable.
    #[param(schema_with = weft_model::selector::selector_query_schema)]
    to_label: Option<String>,
    /// Source security identity number. Repeatable.
    #[param(schema_with = identity_schema)]
    from_identity: Option<u32>,
    /// Destination security identity number. Repeatable.
    #[param(schema_with = identity_schema)]
    to_identity: Option<u32>,
    /// Source endpoint name. Repeatable.
    #[param(min_length = 1, pattern = "^[^\\x00]*$")]
    from_endpoint: Option<String>,
    /// Destination endpoint name. Repeatable.
    #[param(min_length = 1, pattern = "^[^\\x00]*$")]
    to_endpoint: Option<String>,
    /// Source IP address or CIDR. Repeatable.
    #[param(value_type = Option<weft_model::flow::IpOrCidr>)]
    from_ip: Option<String>,
    /// Destination IP address or CIDR. Repeatable.
    #[param(value_type = Option<weft_model::flow::IpOrCidr>)]
    to_ip: Option<String>,
    /// Source or destination port. Repeatable.
    port: Option<u16>,
    /// Source port. Repeatable.
    from_port: Option<u16>,
    /// Destination port. Repeatable.
    to_port: Option<u16>,
    /// `tcp`, `udp` or `icmp` (any case; `icmpv6` is `icmp`). Repeatable.
    #[param(pattern = "^([tT][cC][pP]|[uU][dD][pP]|[iI][cC][mM][pP]([vV]6)?)$")]
    protocol: Option<String>,
    /// `FORWARDED`, `DROPPED`, `REDIRECTED`, `TRANSLATED` or `ERROR`. Repeatable.
    #[param(value_type = Option<weft_model::flow::Verdict>)]
    verdict: Option<String>,
    /// `POLICY_DENIED`, `DENY_RULE`, `NO_BACKEND`, `CT_FULL`, `INVALID_PACKET`, `FRAGMENT`,
    /// `UNSUPPORTED_L3`, `INTERNAL`, `UNKNOWN_ENDPOINT`, `SPOOFED_SOURCE`, `UNSUPPORTED_RULE`, `UNKNOWN`. Repeatable.
    #[param(value_type = Option<weft_model::flow::DropReason>)]
    drop_reason: Option<String>,
    /// Node name. Repeatable.
    #[param(min_length = 1, pattern = "^[^\\x00]*$")]
    node: Option<String>,
    /// Cluster name. Repeatable.
    #[param(min_length = 1, pattern = "^[^\\x00]*$")]
    cluster: Option<String>,
    /// Service name. Repeatable.
    #[param(min_length = 1, pattern = "^[^\\x00]*$")]
    service: Option<String>,
    /// Comma-separated TCP flags (`SYN,ACK`; also FIN, RST, PSH, URG): a flow matches when
    /// it has all of them. Repeatable.
    #[param(
        pattern = "^[ \\t\\n\\r]*([sS][yY][nN]|[aA][cC][kK]|[fF][iI][nN]|[rR][sS][tT]|[pP][sS][hH]|[uU][rR][gG])[ \\t\\n\\r]*(,[ \\t\\n\\r]*([sS][yY][nN]|[aA][cC][kK]|[fF][iI][nN]|[rR][sS][tT]|[pP][sS][hH]|[uU][rR][gG])[ \\t\\n\\r]*)*$"
    )]
    tcp_flags: Option<String>,
    /// `L3_L4` (what the datapath saw) or `L7` (HTTP requests and DNS queries the agent's
    /// proxies judged). Repeatable.
    #[param(value_type = Option<weft_model::flow::FlowType>, rename = "type")]
    flow_type: Option<String>,
    /// HTTP request method of L7 records (any case). Repeatable.
    #[param(pattern = "^[A-Za-z]+$")]
    http_method: Option<String>,
    /// A regular expression found in the URL path of L7 records (`^/api/v[0-9]+/`); text
    /// that is not a regular expression matches literally. Repeatable.
    #[param(min_length = 1, pattern = "^[^\\x00]*$")]
    http_path: Option<String>,
    /// HTTP response status of L7 records: a code (`403`) or a class (`5+`). Repeatable.
    #[param(pattern = "^([1-5][0-9][0-9]|[1-5][+])$")]
    http_status: Option<String>,
    /// A regular expression found in the query name of DNS records
    /// (`allowed\.test\.$`; names end with a dot); text that is not a regular expression
    /// matches literally. Repeatable.
    #[param(min_length = 1, pattern = "^[^\\x00]*$")]
    dns_query: Option<String>,
    /// Only flows at or after this time: RFC 3339 or a duration ago (`30s`, `5m`, `2h`, `7d`).
    #[param(value_type = Option<TimeOrDuration>)]
    since: Option<String>,
    /// Only flows before this time: RFC 3339 or a duration ago. With `since`, it must be
    /// later than `since` (a rule across two parameters: otherwise 400 naming `until`).
    #[param(value_type = Option<TimeOrDuration>)]
    until: Option<String>,
    /// Only the newest N (1 to 1000) flows; the stream sends them first, then follows.
    #[param(schema_with = last_schema)]
    last: Option<u32>,
}

#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FlowPageParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(schema_with = crate::pagination::limit_schema)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page: only a cursor this API issued (anything else
    /// is answered 400 naming `cursor`).
    #[param(min_length = 1)]
    cursor: Option<String>,
}

fn identity_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::integer(0, i64::from(u32::MAX), "A security identity number.").build()
}

fn last_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::integer(
        1,
        i64::from(weft_model::flow::MAX_LAST),
        "Only the newest N flows; the stream sends them first, then follows.",
    )
    .build()
}

/// Raw query pairs (repeats kept, in order).
fn pairs(query: &Option<String>) -> Result<Vec<(String, String)>> {
    serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid_field("query", e.to_string()))
}

fn filter_from<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<FlowFilter> {
    FlowFilter::parse(pairs, Utc::now()).map_err(|e| ApiError::invalid_field(e.param, e.message))
}

/// List stored flows, newest first (viewer).
///
/// Rules a schema cannot state: with both `since` and `until`, `until` must be the later
/// time (otherwise 400 naming `until`); `cursor` must be a `next_cursor` this API issued
/// (otherwise 400 naming `cursor`).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/flows", tag = "flows",
    params(("tenant" = String, Path, description = "Tenant id or name"), FlowFilterParams,
           FlowPageParams),
    responses((status = 200, body = Page<FlowRecord>), ReadErrors),
    security(("bearer" = [])))]
async fn list_flows(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<Page<FlowRecord>>> {
    let pairs = pairs(&query)?;
    let (mut limit, mut cursor) = (None, None);
    let mut rest = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "limit" => {
                let n: u32 = v
                    .parse()
                    .map_err(|_| ApiError::invalid_field("limit", "not a number"))?;
                if !(1..=MAX_LIMIT).contains(&n) {
                    return Err(ApiError::invalid_field(
                        "limit",
                        format!("must be between 1 and {MAX_LIMIT}"),
                    ));
                }
                limit = Some(n);
            }
            "cursor" => {
                cursor = Some(Cursor::decode(v).ok_or_else(|| {
                    ApiError::invalid_field("cursor", "not a cursor this API issued")
                })?);
            }
            _ => rest.push((k.as_str(), v.as_str())),
        }
    }
    let filter = filter_from(rest)?;
    // `last=N`: the newest N, one page.
    let (limit, more) = match filter.last {
        Some(n) => (n.min(limit.unwrap_or(n)), false),
        None => (limit.unwrap_or(DEFAULT_LIMIT), true),
    };
    let mut rows = st.flows.query(t.id, &filter, cursor, limit).await?;
    let next_cursor = if more && rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(_, c)| c.encode())
    } else {
        rows.truncate(limit as usize);
        None
    };
    Ok(axum::Json(Page {
        items: rows.into_iter().map(|(f, _)| f).collect(),
        next_cursor,
    }))
}

/// Events buffered per live stream: past that, events are skipped (and the client told)
/// rather than slowing anyone down.
const STREAM_BUFFER: usize = 256;

/// Follow flows as they arrive on any replica, as Server-Sent Events (viewer).
///
/// Each matching flow is an `event: flow` whose data is the flow's JSON. When the client
/// reads too slowly, flows are skipped and an `event: skipped` says how many
/// (`{"skipped": n}`, or `null` when unknown). `last=N` first sends the newest N stored flows
/// (oldest first). Comments keep the connection alive every 15 s.
///
/// A rule a schema cannot state: with both `since` and `until`, `until` must be the later
/// time (otherwise 400 naming `until`).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/flows/stream", tag = "flows",
    params(("tenant" = String, Path, description = "Tenant id or name"), FlowFilterParams),
    responses((status = 200, content_type = "text/event-stream",
               description = "`event: flow` per matching flow; `event: skipped` when some were dropped for a slow reader"),
              ReadErrors),
    security(("bearer" = [])))]
async fn stream_flows(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    RawQuery(query): RawQuery,
) -> Result<axum::response::Response> {
    let pairs = pairs(&query)?;
    let filter = filter_from(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    // Subscribe before reading `last`, so nothing between the two is missed.
    let notices = st.flow_notices.subscribe();
    let backlog = match filter.last {
        Some(n) => {
            let mut rows = st.flows.query(t.id, &filter, None, n).await?;
            rows.truncate(n as usize);
            rows.into_iter().rev().map(|(f, _)| f).collect()
        }
        None => Vec::new(),
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(follow(st, t.id, filter, backlog, notices, tx));
    Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

type Tx = mpsc::Sender<std::result::Result<Event, Infallible>>;

/// Hands events to one client without ever waiting for it.
struct Outbox {
    tx: Tx,
    /// Skipped since the last `skipped` event; `None` inside means "unknown how many".
    skipped: Option<Option<u64>>,
}

impl Outbox {
    /// False once the client is gone.
    fn send(&mut self, f: &FlowRecord) -> bool {
        if let Some(n) = self.skipped {
            let data = serde_json::json!({ "skipped": n }).to_string();
            match self
                .tx
                .try_send(Ok(Event::default().event("skipped").data(data)))
            {
                Ok(()) => self.skipped = None,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.skip(Some(1));
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        let event = match Event::default().event("flow").json_data(f) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "flow not serializable");
                return true;
            }
        };
        match self.tx.try_send(Ok(event)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.skip(Some(1));
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn skip(&mut self, n: Option<u64>) {
        self.skipped = Some(match (self.skipped, n) {
            (None, n) => n,
            (Some(Some(a)), Some(b)) => Some(a + b),
            _ => None,
        });
    }
}

async fn follow(
    st: AppState,
    tenant: uuid::Uuid,
    filter: FlowFilter,
    backlog: Vec<FlowRecord>,
    mut notices: broadcast::Receiver<Notice>,
    tx: Tx,
) {
    let mut out = Outbox { tx, skipped: None };
    for f in &backlog {
        if !out.send(f) {
            return;
        }
    }
    loop {
        let notice = tokio::select! {
            () = out.tx.closed() => return,
            n = notices.recv() => n,
        };
        let notice = match notice {
            Ok(n) if n.tenant == tenant => n,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                out.skip(None);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if filter.until.is_some_and(|u| notice.min_time >= u)
            || filter.since.is_some_and(|s| notice.max_time < s)
        {
            continue;
        }
        // Read back under the tenant's row-level security, then match in memory.
        match st.flows.read_batch(&notice).await {
            Ok(flows) => {
                for f in flows.iter().filter(|f| filter.matches(f)) {
                    if !out.send(f) {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = notice.batch, "reading a flow batch failed");
                out.skip(None);
            }
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ServiceMapParams {
    /// Window start: RFC 3339 or a duration ago (`30s`, `5m`, `2h`, `7d`); default `1h`.
    #[param(value_type = Option<TimeOrDuration>)]
    pub since: Option<String>,
}

/// Workloads, services and the traffic between them over a window (viewer).
///
/// Vertices: `workload` (per security identity), `service` (flows through a load-balanced
/// service end at the service), `world`, `host`. `connections` counts flow records
/// (datapath events); `forwarded` counts forwarded, redirected and translated ones.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/service-map", tag = "flows",
    params(("tenant" = String, Path, description = "Tenant id or name"), ServiceMapParams),
    responses((status = 200, body = ServiceMap), ReadErrors),
    security(("bearer" = [])))]
async fn service_map(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Query(p): Query<ServiceMapParams>,
) -> Result<axum::Json<ServiceMap>> {
    let since = weft_model::flow::parse_time(p.since.as_deref().unwrap_or("1h"), Utc::now())
        .map_err(|m| ApiError::invalid_field("since", m))?;
    Ok(axum::Json(st.flows.service_map(t.id, since).await?))
}
