//! `/v1/tenants/{tenant}/clusters/{cluster}/test-workloads`: echo servers an agent runs
//! for connectivity tests. A `pod` gets an address from its node's pod CIDR and becomes
//! one of the node's endpoints; a `world` one gets an address in `WORLD_NET`. On a node
//! with an IPv6 pod CIDR, both get an IPv6 address as well (dual stack).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::error::FieldError;
use weft_model::labels::Labels;
use weft_model::workload::{self, WorkloadKind, WORLD_NET, WORLD_NET6};

use super::{node_in_cluster, CreateErrors, DeleteParams, Deleted, SelectorListParams};
use crate::api::common::{self, ReadErrors, Scope, WriteErrors};
use crate::auth::{need, Tenant, TenantCtx};
use crate::error::{ApiError, Result};
use crate::extract::Json;
use crate::pagination::{Page, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
use crate::store::workloads::{self, NewWorkload, WorkloadRow};
use crate::store::{self, Op};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            list_test_workloads,
            create_test_workload,
            delete_test_workloads
        ))
        .routes(routes!(get_test_workload, delete_test_workload))
}

/// Most echo ports one workload may listen on.
pub const MAX_ECHO_PORTS: usize = 8;

/// A test workload to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestWorkloadInput {
    /// Unique in the cluster; a pod's endpoint has this name.
    #[schema(value_type = weft_model::names::Name, example = "echo-same-node")]
    pub name: String,
    /// The node (name or id) whose agent runs it.
    #[schema(example = "node-1", min_length = 1)]
    pub node: String,
    pub kind: WorkloadKind,
    /// A pod's endpoint labels (policies select it by them).
    #[serde(default)]
    #[schema(value_type = weft_model::labels::LabelMap)]
    pub labels: Labels,
    /// Up to 8 distinct TCP ports the echo server listens on (a world workload: at least
    /// one; a pod without ports is a client only).
    #[serde(default)]
    #[schema(schema_with = echo_ports_schema)]
    pub echo_ports: Vec<u16>,
}

fn echo_ports_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(weft_model::contract::integer(1, 65535, "A TCP port."))
        .max_items(Some(MAX_ECHO_PORTS))
        .unique_items(true)
        .description(Some(
            "Up to 8 distinct TCP ports the echo server listens on (a world workload: at \
             least one; a pod without ports is a client only).",
        ))
        .examples([serde_json::json!([8080])])
        .build()
}

impl TestWorkloadInput {
    fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        common::check_common(&mut errs, &self.name, &self.labels, "");
        if self.node.is_empty() {
            errs.push(FieldError::new("node", "must not be empty"));
        }
        errs.extend(check_ports(self.kind, &self.echo_ports));
        common::finish(errs)
    }
}

/// A pod may be a client only (no port); a world workload exists to answer.
fn check_ports(kind: WorkloadKind, ports: &[u16]) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let least = usize::from(kind == WorkloadKind::World);
    if ports.len() < least || ports.len() > MAX_ECHO_PORTS {
        errs.push(FieldError::new(
            "echo_ports",
            format!(
                "a {kind} workload lists {least} to {MAX_ECHO_PORTS} ports, got {}",
                ports.len()
            ),
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        if *p == 0 {
            errs.push(FieldError::new(
                format!("echo_ports[{i}]"),
                "must be between 1 and 65535",
            ));
        } else if ports[..i].contains(p) {
            errs.push(FieldError::new(
                format!("echo_ports[{i}]"),
                format!("port {p} is listed twice"),
            ));
        }
    }
    errs
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TestWorkload {
    pub name: String,
    /// Name of the node that runs it.
    pub node: String,
    pub kind: WorkloadKind,
    #[schema(value_type = String, example = "10.0.1.254")]
    pub ip: Ipv4Addr,
    /// Its IPv6 address when its node has an IPv6 pod CIDR (dual stack); null otherwise.
    #[schema(value_type = Option<String>, example = "fd00:10:1::ffff:ffff:ffff:ffff")]
    pub ip6: Option<Ipv6Addr>,
    pub labels: Labels,
    pub echo_ports: Vec<u16>,
    pub created_at: DateTime<Utc>,
    /// The node's agent has applied the revision that created it and, for a pod, reported
    /// its endpoint and got an identity for it.
    pub ready: bool,
    #[serde(skip)]
    id: Uuid,
    #[serde(skip)]
    revision: i64,
}

impl From<WorkloadRow> for TestWorkload {
    fn from(r: WorkloadRow) -> Self {
        TestWorkload {
            name: r.name,
            node: r.node,
            // The column's CHECK allows only the two kinds, and `ip` is always IPv4.
            kind: r.kind.parse().unwrap_or(WorkloadKind::Pod),
            ip: r.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
            // The column's CHECK allows only IPv6.
            ip6: r.ip6.and_then(|a| a.parse().ok()),
            labels: r.labels,
            echo_ports: r
                .echo_ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect(),
            created_at: r.created_at,
            ready: r.ready,
            id: r.id,
            revision: r.revision,
        }
    }
}

async fn load(conn: &mut PgConnection, id: Uuid) -> Result<TestWorkload> {
    Ok(workloads::load(conn, id).await?.into())
}

fn subject(w: &TestWorkload) -> Subject<'_> {
    Subject {
        kind: "test_workload",
        id: w.id,
        name: &w.name,
    }
}

/// Free addresses for a new workload of `kind` on `node`: IPv4, and IPv6 when the node has
/// an IPv6 pod CIDR. Callers hold the cluster's allocation lock, so what they read here is
/// what the next allocation will see.
async fn allocate(
    conn: &mut PgConnection,
    scope: Scope,
    node: (Uuid, &str),
    kind: WorkloadKind,
) -> Result<(Ipv4Addr, Option<Ipv6Addr>)> {
    let cidrs: Vec<IpNet> = workloads::pod_cidrs(conn, node.0)
        .await?
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let net6 = cidrs.iter().find_map(|c| match c {
        IpNet::V6(n) if kind == WorkloadKind::Pod => Some(*n),
        IpNet::V6(_) => Some(WORLD_NET6),
        IpNet::V4(_) => None,
    });
    let net = match kind {
        WorkloadKind::World => WORLD_NET,
        WorkloadKind::Pod => cidrs
            .iter()
            .find_map(|c| match c {
                IpNet::V4(n) => Some(*n),
                IpNet::V6(_) => None,
            })
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "node",
                    format!(
                        "node {} has no IPv4 pod CIDR; start its agent with --pod-cidr",
                        node.1
                    ),
                )
            })?,
    };
    let exhausted = |net: String| ApiError::Conflict {
        detail: match kind {
            WorkloadKind::Pod => format!("node {}'s pod CIDR {net} has no free address", node.1),
            WorkloadKind::World => format!("the world range {net} has no free address"),
        },
        field: Some(match kind {
            WorkloadKind::Pod => "node".to_string(),
            WorkloadKind::World => "kind".to_string(),
        }),
    };
    let taken = workloads::taken_addresses(conn, scope).await?;
    let taken: BTreeSet<Ipv4Addr> = taken.iter().filter_map(|a| a.parse().ok()).collect();
    let ip = workload::allocate(net, &taken).ok_or_else(|| exhausted(net.to_string()))?;
    let ip6 = match net6 {
        Some(net6) => {
            let taken = workloads::taken_addresses6(conn, scope).await?;
            let taken: BTreeSet<Ipv6Addr> = taken.iter().filter_map(|a| a.parse().ok()).collect();
            Some(workload::allocate6(net6, &taken).ok_or_else(|| exhausted(net6.to_string()))?)
        }
        None => None,
    };
    Ok((ip, ip6))
}

/// List a cluster's test workloads (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/test-workloads", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"), SelectorListParams),
    responses((status = 200, body = Page<TestWorkload>), ReadErrors),
    security(("bearer" = [])))]
async fn list_test_workloads(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Query(params): Query<SelectorListParams>,
) -> Result<axum::Json<Page<TestWorkload>>> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let list = params.resolve()?;
    let rows = workloads::list(&mut conn, sc, &list).await?;
    let rows = rows.into_iter().map(TestWorkload::from).collect();
    Ok(axum::Json(list.page(rows, |w: &TestWorkload| w.id)))
}

/// Get a test workload by name (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/clusters/{cluster}/test-workloads/{workload}", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("workload" = String, Path, description = "Test workload name")),
    responses((status = 200, body = TestWorkload, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_test_workload(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, cluster, workload)): Path<(String, String, String)>,
) -> Result<Response> {
    let mut conn = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut conn, &t, &cluster).await?;
    let id =
        common::require_id(&mut conn, "test_workloads", "test workload", sc, &workload).await?;
    let w = load(&mut conn, id).await?;
    Ok(common::ok(w.revision, w))
}

/// Create a test workload (editor): an echo server the node's agent starts, with an
/// address the control plane allocates (a pod's from the node's first IPv4 pod CIDR, top
/// down, avoiding the cluster's endpoints and other test workloads; a world workload's
/// from 198.51.100.0/24), and an IPv6 one too when the node has an IPv6 pod CIDR (a pod's
/// from it, a world workload's from 2001:db8:5100::/64).
#[utoipa::path(post, path = "/v1/tenants/{tenant}/clusters/{cluster}/test-workloads", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name")),
    request_body = TestWorkloadInput,
    responses((status = 201, body = TestWorkload, headers(("ETag" = String), ("Location" = String))),
              WriteErrors, CreateErrors),
    security(("bearer" = [])))]
async fn create_test_workload(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Json(input): Json<TestWorkloadInput>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    input.validate()?;
    let (node, node_name) = node_in_cluster(&mut tx, sc, "node", &input.node).await?;
    if input.kind == WorkloadKind::Pod {
        // The agent reports the pod as an endpoint of this name: it must be free.
        let clash = workloads::endpoint_name_taken(&mut tx, node, &input.name).await?;
        if clash {
            return Err(ApiError::Conflict {
                detail: format!(
                    "an endpoint named {:?} already runs on node {node_name}",
                    input.name
                ),
                field: Some("name".into()),
            });
        }
    }
    // One allocation at a time per cluster: two creates never pick the same address (the
    // unique index on (tenant, cluster, ip) is the backstop).
    workloads::lock_allocation(&mut tx, sc.cluster).await?;
    let (ip, ip6) = allocate(&mut tx, sc, (node, &node_name), input.kind).await?;
    let id = Uuid::now_v7();
    let rev = store::bump_revision(&mut tx, sc.tenant, "test_workload", id, Op::Create).await?;
    workloads::insert(
        &mut tx,
        sc,
        NewWorkload {
            id,
            node,
            name: &input.name,
            kind: input.kind.as_str(),
            ip: ip.to_string(),
            ip6: ip6.map(|a| a.to_string()),
            labels: &input.labels,
            echo_ports: input.echo_ports.iter().map(|p| i32::from(*p)).collect(),
            revision: rev,
        },
    )
    .await?;
    let w = load(&mut tx, id).await?;
    audit::created(&mut tx, &t, subject(&w), &w).await?;
    tx.commit().await?;
    tracing::info!(workload = %w.name, node = %w.node, ip = %w.ip, "test workload created");
    let location = format!(
        "/v1/tenants/{}/clusters/{}/test-workloads/{}",
        t.name, cluster, w.name
    );
    Ok(common::created(rev, location, w))
}

/// Removes workloads (already locked) in the caller's transaction: one change and one
/// audit entry each.
async fn remove(tx: &mut PgConnection, t: &TenantCtx, ids: &[Uuid]) -> Result<u64> {
    for id in ids {
        let before = load(tx, *id).await?;
        store::bump_revision(tx, t.id, "test_workload", *id, Op::Delete).await?;
        workloads::delete(tx, *id).await?;
        audit::deleted(tx, t, subject(&before), &before).await?;
    }
    Ok(ids.len() as u64)
}

/// Delete a test workload (editor); its agent stops it.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}/test-workloads/{workload}", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"),
           ("workload" = String, Path, description = "Test workload name")),
    responses((status = 204, description = "Deleted"), WriteErrors),
    security(("bearer" = [])))]
async fn delete_test_workload(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster, workload)): Path<(String, String, String)>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let id = common::lock_for_write(
        &mut tx,
        "test_workloads",
        "test workload",
        sc,
        &workload,
        None,
    )
    .await?;
    remove(&mut tx, &t, &[id]).await?;
    tx.commit().await?;
    Ok(common::no_content())
}

/// Delete the test workloads a label selector matches (editor); the selector is required.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/clusters/{cluster}/test-workloads", tag = "connectivity",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("cluster" = String, Path, description = "Cluster id or name"), DeleteParams),
    responses((status = 200, body = Deleted), WriteErrors),
    security(("bearer" = [])))]
async fn delete_test_workloads(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, cluster)): Path<(String, String)>,
    Query(params): Query<DeleteParams>,
) -> Result<axum::Json<Deleted>> {
    let mut tx = t.begin(&st.pool).await?;
    let sc = common::cluster_scope(&mut tx, &t, &cluster).await?;
    let selector = params.resolve()?;
    let ids = workloads::lock_matching(&mut tx, sc, &selector).await?;
    let deleted = remove(&mut tx, &t, &ids).await?;
    tx.commit().await?;
    Ok(axum::Json(Deleted { deleted }))
}
