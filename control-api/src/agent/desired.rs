//! A node's desired state: the tenant's view read from Postgres in one consistent
//! snapshot, compiled by the model, and encoded for the wire.

use std::net::IpAddr;

use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;
use weft_model::desired::{
    self, ClusterView, Delta, EndpointView, NodeDesiredState, NodeView, PolicyView, ServiceView,
    TenantView,
};
use weft_model::labels::Labels;
use weft_model::policy::{NamedPort, PolicySpec};
use weft_model::service::ServiceSpec;
use weft_proto::v1 as pb;

use super::NodeCtx;
use crate::api::{connectivity, services};
use crate::auth;
use crate::error::{ApiError, Result};
use crate::state::AppState;

type NodeRow = (Uuid, Uuid, String, Vec<String>, Json<Labels>);
type EndpointRow = (
    Uuid,
    Uuid,
    Uuid,
    String,
    Json<Labels>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Json<Vec<NamedPort>>,
);
type PolicyRow = (Uuid, String, Json<Vec<PolicySpec>>, Option<Vec<Uuid>>);

/// Reads the tenant's view inside the caller's transaction.
#[tracing::instrument(name = "db.load_view", skip_all, fields(%tenant))]
pub async fn load_view(conn: &mut PgConnection, tenant: Uuid) -> Result<TenantView> {
    let nodes: Vec<NodeRow> = sqlx::query_as(
        "SELECT id, cluster_id, name, array(SELECT host(a) FROM unnest(addresses) a), labels \
         FROM nodes WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let endpoints: Vec<EndpointRow> = sqlx::query_as(
        "SELECT id, cluster_id, node_id, name, labels, host(ipv4), host(ipv6), identity, \
         named_ports FROM endpoints WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let policies: Vec<PolicyRow> =
        sqlx::query_as("SELECT id, name, specs, cluster_ids FROM policies WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    let clusters: Vec<(Uuid, bool)> =
        sqlx::query_as("SELECT id, allow_host_to_local_pods FROM clusters WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&mut *conn)
            .await?;
    let services = services::all_of_tenant(conn, tenant).await?;
    let workloads = connectivity::workloads::views_of_tenant(conn, tenant).await?;
    let probes = connectivity::probes::pending_of_tenant(conn, tenant).await?;
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    Ok(TenantView {
        nodes: nodes
            .into_iter()
            .map(|(id, cluster, name, addrs, labels)| NodeView {
                id: id.to_string(),
                cluster_id: cluster.to_string(),
                name,
                addresses: addrs.iter().filter_map(|a| ip(a)).collect(),
                labels: labels.0,
            })
            .collect(),
        endpoints: endpoints
            .into_iter()
            // An endpoint without an identity yet is not programmed anywhere.
            .filter_map(
                |(id, cluster, node, name, labels, v4, v6, identity, ports)| {
                    Some(EndpointView {
                        id: id.to_string(),
                        cluster_id: cluster.to_string(),
                        node_id: node.to_string(),
                        name,
                        labels: labels.0,
                        ips: [v4, v6].iter().flatten().filter_map(|a| ip(a)).collect(),
                        identity: u32::try_from(identity?).ok()?,
                        named_ports: ports.0,
                    })
                },
            )
            .collect(),
        policies: policies
            .into_iter()
            .map(|(id, name, specs, clusters)| PolicyView {
                id: id.to_string(),
                name,
                specs: specs.0,
                clusters: clusters.map(|c| c.iter().map(Uuid::to_string).collect()),
            })
            .collect(),
        services: services
            .into_iter()
            .map(|s| ServiceView {
                id: s.id.to_string(),
                cluster_id: s.cluster_id.to_string(),
                name: s.name,
                spec: ServiceSpec {
                    frontends: s.frontends,
                    backends: s.backends,
                    algorithm: s.algorithm,
                    session_affinity: s.session_affinity,
                },
            })
            .collect(),
        workloads,
        probes,
        clusters: clusters
            .into_iter()
            .map(|(id, allow_host_to_local_pods)| ClusterView {
                id: id.to_string(),
                allow_host_to_local_pods,
            })
            .collect(),
    })
}

/// The node's desired state and the revision it reflects, from one snapshot: every
/// change up to that revision is in it, none after.
#[tracing::instrument(name = "desired_state.compute", skip_all, fields(node = %node.name))]
pub async fn compute(st: &AppState, node: &NodeCtx) -> Result<(i64, NodeDesiredState)> {
    let mut tx = st.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    auth::set_tenant(&mut tx, node.tenant_id).await?;
    let revision: i64 = sqlx::query_scalar("SELECT revision FROM desired_state")
        .fetch_one(&mut *tx)
        .await?;
    let view = load_view(&mut tx, node.tenant_id).await?;
    tx.commit().await?;
    let mut state = desired::compile(&view, &node.id.to_string())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("compiling node {}: {e}", node.name)))?;
    // An agent that does not speak them would misread or drop the whole message.
    if node.capability_version < weft_proto::CAPABILITY_PROBES {
        state.workloads.clear();
        state.probes.clear();
    }
    Ok((revision, state))
}

// Wire encoding (`weft_proto::convert`): the domain never sees protobuf types beyond this point.

pub fn snapshot(revision: i64, s: &NodeDesiredState) -> pb::SyncResponse {
    pb::SyncResponse {
        revision: revision.unsigned_abs(),
        kind: Some(pb::sync_response::Kind::Snapshot(s.into())),
        traceparent: String::new(),
    }
}

pub fn delta(revision: i64, d: &Delta) -> pb::SyncResponse {
    pb::SyncResponse {
        revision: revision.unsigned_abs(),
        kind: Some(pb::sync_response::Kind::Delta(d.into())),
        traceparent: String::new(),
    }
}
