//! `/v1/tenants/{tenant}/clusters/{cluster}/probes`: one TCP connection each, made once by
//! a node's agent (from one of its test workloads or from the node itself) and reported.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::error::FieldError;
use weft_model::labels::{validate_labels, Labels};
use weft_model::workload::{
    check_http_method, check_http_path, HttpProbe, ProbeOutcome, ResolveProbe,
};

use super::{node_in_cluster, CreateErrors, DeleteParams, Deleted, SelectorListParams};
use crate::api::common::{self, ReadErrors, Scope, WriteErrors};
use crate::auth::{need, Tenant, TenantCtx};
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::pagination::{Page, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
use crate::store::probes::{self, NewProbe, ProbeRow};
use crate::store::{self, Op};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_probes, create_probe, delete_probes))
        .routes(routes!(get_probe, delete_probe))
}

pub const DEFAULT_TIMEOUT_MS: u32 = 2000;
pub const MIN_TIMEOUT_MS: u32 = 100;
pub const MAX_TIMEOUT_MS: u32 = 30_000;

fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_MS
}

/// A probe to run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeInput {
    /// The test workload (name) it connects from; null: from the node itself.
    #[serde(default)]
    #[schema(example = "echo-a", min_length = 1)]
    pub from: Option<String>,
    /// The node (name or id) that runs it: required when `from` is null; otherwise it
    /// defaults to, and must be, the workload's node.
    #[serde(default)]
    pub node: Option<String>,
    /// IPv4 or bracketed IPv6 address and TCP port.
    #[schema(schema_with = target_schema)]
    pub target: String,
    /// How long to wait for the connection and the echo, 100 to 30000 (default 2000).
    #[serde(default = "default_timeout")]
    #[schema(schema_with = timeout_schema)]
    pub timeout_ms: u32,
    /// Send this HTTP/1.1 request instead of the echo line; the result has its status.
    #[serde(default)]
    pub http: Option<HttpRequest>,
    /// Resolve this name first (UDP port 53 of `server`), as a pod does before it
    /// connects to an FQDN; the target's address must be in the answer.
    #[serde(default)]
    pub resolve: Option<Resolve>,
    #[serde(default)]
    #[schema(value_type = weft_model::labels::LabelMap)]
    pub labels: Labels,
}

/// An HTTP request a probe sends (`Connection: close`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    /// Upper-case letters, e.g. `GET`.
    #[schema(example = "GET", pattern = "^[A-Z]{1,16}$")]
    pub method: String,
    /// Starts with `/`; printable ASCII without blanks; at most 256 characters.
    #[schema(example = "/public", pattern = "^/[!-~]{0,255}$")]
    pub path: String,
}

/// A DNS lookup a probe makes before it connects.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// The name asked for: A for an IPv4 target, AAAA for an IPv6 one.
    #[schema(
        example = "api.example.com",
        max_length = 255,
        pattern = "^[A-Za-z0-9_-]+(\\.[A-Za-z0-9_-]+)*\\.?$"
    )]
    pub name: String,
    #[schema(schema_with = resolver_schema)]
    pub server: String,
}

/// The address and port `ProbeInput::validate` accepts, as a regular expression:
/// `10.0.1.5:8080` or `[fd00:10:1::5]:8080` (no zone index).
fn target_pattern() -> String {
    format!(
        "^(((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){{3}}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\
         |\\[({})\\]):0*([1-9][0-9]{{0,3}}|[1-5][0-9]{{4}}|6[0-4][0-9]{{3}}|65[0-4][0-9]{{2}}|655[0-2][0-9]|6553[0-5])$",
        weft_model::flow::ipv6_address_body()
    )
}

fn target_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::string(
        "IPv4 address or bracketed IPv6 address, and TCP port (1 to 65535).",
    )
    .pattern(Some(target_pattern()))
    .examples(["10.0.1.5:8080", "[fd00:10:1::5]:8080"])
    .build()
}

fn resolver_schema() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::Schema::AnyOf(
        weft_model::contract::ip_address_any_of()
            .description(Some("The resolver's IPv4 or IPv6 address."))
            .examples(["10.96.0.10"])
            .build(),
    )
}

fn timeout_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::integer(
        i64::from(MIN_TIMEOUT_MS),
        i64::from(MAX_TIMEOUT_MS),
        "How long to wait for the connection and the echo, in ms (default 2000).",
    )
    .build()
}

impl ProbeInput {
    /// Checks the fields that need no lookup; returns the parsed target.
    fn validate(&self) -> Result<SocketAddr> {
        let mut errs = Vec::new();
        // A zone index (`%2`) names an interface of one machine: meaningless to the agent.
        let target = match self.target.parse::<SocketAddr>() {
            Ok(_) if self.target.contains('%') => {
                errs.push(FieldError::new(
                    "target",
                    "an IPv6 zone index is not allowed",
                ));
                None
            }
            Ok(t) if t.port() != 0 => Some(t),
            Ok(_) => {
                errs.push(FieldError::new(
                    "target",
                    "port must be between 1 and 65535",
                ));
                None
            }
            Err(_) => {
                errs.push(FieldError::new(
                    "target",
                    format!(
                        "{:?} is not an address and port, e.g. 10.0.1.5:8080 or [fd00:10:1::5]:8080",
                        self.target
                    ),
                ));
                None
            }
        };
        if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            errs.push(FieldError::new(
                "timeout_ms",
                format!("must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS}"),
            ));
        }
        match (&self.from, &self.node) {
            (Some(f), _) if f.is_empty() => {
                errs.push(FieldError::new(
                    "from",
                    "must be a test workload name or null",
                ));
            }
            (None, None) => errs.push(FieldError::new(
                "node",
                "required when `from` is null (a probe from the node itself)",
            )),
            _ => {}
        }
        if let Some(h) = &self.http {
            if let Err(m) = check_http_method(&h.method) {
                errs.push(FieldError::new("http.method", m));
            }
            if let Err(m) = check_http_path(&h.path) {
                errs.push(FieldError::new("http.path", m));
            }
        }
        if let Some(r) = &self.resolve {
            if let Err(m) = weft_model::policy::check_dns(&r.name, false) {
                errs.push(FieldError::new(
                    "resolve.name",
                    format!("invalid DNS name {:?}: {m}", r.name),
                ));
            }
            if r.server.parse::<IpAddr>().is_err() {
                errs.push(FieldError::new(
                    "resolve.server",
                    format!("{:?} is not an IPv4 or IPv6 address", r.server),
                ));
            }
        }
        if let Err(mut e) = validate_labels(&self.labels) {
            errs.append(&mut e);
        }
        common::finish(errs)?;
        target.ok_or_else(|| ApiError::invalid_field("target", "invalid"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProbeStatus {
    /// Not reported yet: it is in its node's desired state.
    Pending,
    /// The agent reported `result`.
    Done,
}

/// What the agent reported.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProbeResult {
    pub outcome: ProbeOutcome,
    /// What happened, in words (empty when connected).
    pub detail: String,
    /// From connecting to the echo's reply, in microseconds.
    pub latency_us: i64,
    /// The workload whose echo server answered, when one did.
    pub reply_from: Option<String>,
    /// The status of the answer to an HTTP probe (a policy's refusal is 403); null: no
    /// HTTP answer.
    #[schema(minimum = 100, maximum = 999)]
    pub http_status: Option<u16>,
    /// The response code of the DNS answer of a resolving probe (`NOERROR`, `REFUSED`,
    /// `NXDOMAIN`, …); null: no answer came, or the probe resolves nothing.
    pub dns_rcode: Option<String>,
    pub finished_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Probe {
    pub id: Uuid,
    /// Name of the node that runs it.
    pub node: String,
    /// The test workload it connects from; null: the node itself.
    pub from: Option<String>,
    #[schema(example = "10.0.1.5:8080")]
    pub target: String,
    pub timeout_ms: u32,
    /// The HTTP request it sends; null: the echo line.
    pub http: Option<HttpRequest>,
    /// The lookup it makes first; null: none.
    pub resolve: Option<Resolve>,
    pub labels: Labels,
    pub created_at: DateTime<Utc>,
    pub status: ProbeStatus,
    /// Null while pending.
    pub result: Option<ProbeResult>,
    #[serde(skip)]
    revision: i64,
}

impl From<ProbeRow> for Probe {
    fn from(r: ProbeRow) -> Self {
        let result = match (r.outcome, r.finished_at) {
            (Some(o), Some(finished_at)) => Some(ProbeResult {
                // The column's CHECK allows only the four outcomes.
                outcome: o.parse().unwrap_or(ProbeOutcome::Error),
                detail: r.detail.unwrap_or_default(),
                latency_us: r.latency_us.unwrap_or(0),
                reply_from: r.reply_from,
                http_status: r.http_status.and_then(|c| u16::try_from(c).ok()),
                dns_rcode: r.dns_rcode,
                finished_at,
            }),
            _ => None,
        };
        Probe {
            id: r.id,
            node: r.node,
            from: r.from_workload,
            // IPv6 in brackets, as the input took it (the column is `inet`, the port 1-65535).
            target: match r.target_ip.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    SocketAddr::new(ip, u16::try_from(r.target_port).unwrap_or(0)).to_string()
                }
                Err(_) => format!("{}:{}", r.target_ip, r.target_port),
            },
            timeout_ms: r.timeout_ms.unsigned_abs(),
            http: r
                .http_method
                .zip(r.http_path)
                .map(|(method, path)| HttpRequest { method, path }),
            resolve: r
                .resolve_name
                .zip(r.resolver)
                .map(|(name, server)| Resolve { name, server }),
            labels: r.labels,
            created_at: r.created_at,
            status: if result.is_some() {
                ProbeStatus::Done
            } else {
                ProbeStatus::Pending
            },
            result,
            revision: r.revision,
        }
    }
}

async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Probe> {
    Ok(probes::load(conn, id).await?.into())
}

/// The probe `key` of the scope's cluster, or 404.
async fn require(conn: &mut PgConnection, scope: Scope, key: &str, lock: bool) -> Result<Uuid> {
    let missing = || ApiError::not_found("probe", key);
    let id = Uuid::parse_str(key).map_err(|_| missing())?;
    probes::find(conn, scope, id, lock)
        .await?
        .ok_or_else(missing)
}

/// A probe has no name: the audit log names it by its id.
fn subject<'a>(p: &Probe, name: &'a str) -> Subject<'a> {
    Subject {
        kind: "probe",
        id: p.id,
        name,
    }
}

/// List a cluster's probes, pending and done (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/probes", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"), SelectorListParams),
    responses((status = 200, body = Page<Probe>), ReadErrors),
    security(("bearer" = [])))]
async fn list_probes(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Query(params): Query<SelectorListParams>,
) -> Result<axum::Json<Page<Probe>>> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let list = params.resolve()?;
    let rows = probes::list(&mut conn, sc, &list).await?;
    let rows = rows.into_iter().map(Probe::from).collect();
    Ok(axum::Json(list.page(rows, |p: &Probe| p.id)))
}

/// Get a probe and, once reported, its result (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/probes/{probe}", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("probe" = String, Path, description = "Probe id")),
    responses((status = 200, body = Probe, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_probe(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster, probe)): Path<(String, String, String)>,
) -> Result<Response> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let id = require(&mut conn, sc, &probe, false).await?;
    let p = load(&mut conn, id).await?;
    Ok(common::ok(p.revision, p))
}

/// Create a probe (editor): the node's agent makes the connection once and reports how it
/// went; `GET` it until `status` is `done`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/clusters/{cluster}/probes", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name")),
    request_body = ProbeInput,
    responses((status = 201, body = Probe, headers(("ETag" = String), ("Location" = String))),
              WriteErrors, CreateErrors),
    security(("bearer" = [])))]
async fn create_probe(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Json(input): Json<ProbeInput>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let target = input.validate()?;
    let node = match (&input.from, &input.node) {
        (Some(from), node) => {
            let runs_on = probes::workload_node(&mut tx, sc, from).await?;
            let (id, name) = runs_on.ok_or_else(|| {
                ApiError::unprocessable(
                    "from",
                    format!("{from:?} is not a test workload of this cluster"),
                )
            })?;
            if let Some(key) = node {
                let (given, _) = node_in_cluster(&mut tx, sc, "node", key).await?;
                if given != id {
                    return Err(ApiError::invalid_field(
                        "node",
                        format!("test workload {from} runs on node {name}: omit `node` or name that one"),
                    ));
                }
            }
            id
        }
        (None, Some(key)) => node_in_cluster(&mut tx, sc, "node", key).await?.0,
        // `validate` refused this.
        (None, None) => return Err(ApiError::invalid_field("node", "required")),
    };
    let http = input.http.as_ref().map(|h| HttpProbe {
        method: h.method.clone(),
        path: h.path.clone(),
    });
    let resolve = match &input.resolve {
        Some(r) => Some(ResolveProbe {
            name: r.name.clone(),
            // `validate` parsed it.
            server: r
                .server
                .parse()
                .map_err(|_| ApiError::invalid_field("resolve.server", "invalid"))?,
        }),
        None => None,
    };
    let id = Uuid::now_v7();
    let rev = store::bump_revision(&mut tx, sc.tenant, "probe", id, Op::Create).await?;
    probes::insert(
        &mut tx,
        sc,
        NewProbe {
            id,
            node,
            from_workload: input.from.as_deref(),
            target_ip: target.ip().to_string(),
            target_port: i32::from(target.port()),
            timeout_ms: i32::try_from(input.timeout_ms).unwrap_or(i32::MAX),
            labels: &input.labels,
            revision: rev,
            http: http.as_ref(),
            resolve: resolve.as_ref(),
        },
    )
    .await?;
    let p = load(&mut tx, id).await?;
    audit::created(&mut tx, &t, subject(&p, &p.id.to_string()), &p).await?;
    tx.commit().await?;
    let location = format!(
        "/v1/tenants/{}/clusters/{}/probes/{}",
        t.name, cluster, p.id
    );
    Ok(common::created(rev, location, p))
}

/// Removes probes (already locked) in the caller's transaction: one change (a pending
/// probe leaves its node's desired state) and one audit entry each.
async fn remove(tx: &mut PgConnection, t: &TenantCtx, ids: &[Uuid]) -> Result<u64> {
    for id in ids {
        let before = load(tx, *id).await?;
        store::bump_revision(tx, t.id, "probe", *id, Op::Delete).await?;
        probes::delete(tx, *id).await?;
        audit::deleted(tx, t, subject(&before, &before.id.to_string()), &before).await?;
    }
    Ok(ids.len() as u64)
}

/// Delete a probe (editor); a pending one is withdrawn from its node.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}/probes/{probe}", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("probe" = String, Path, description = "Probe id")),
    responses((status = 204, description = "Deleted"), WriteErrors),
    security(("bearer" = [])))]
async fn delete_probe(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster, probe)): Path<(String, String, String)>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let id = require(&mut tx, sc, &probe, true).await?;
    remove(&mut tx, &t, &[id]).await?;
    tx.commit().await?;
    Ok(common::no_content())
}

/// Delete the probes a label selector matches (editor); the selector is required.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}/probes", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"), DeleteParams),
    responses((status = 200, body = Deleted), WriteErrors),
    security(("bearer" = [])))]
async fn delete_probes(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Query(params): Query<DeleteParams>,
) -> Result<axum::Json<Deleted>> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let selector = params.resolve()?;
    let ids = probes::lock_matching(&mut tx, sc, &selector).await?;
    let deleted = remove(&mut tx, &t, &ids).await?;
    tx.commit().await?;
    Ok(axum::Json(Deleted { deleted }))
}
