//! A node's desired state: the tenant's view read from Postgres in one consistent
//! snapshot, compiled by the model, and encoded for the wire.

use weft_model::desired::{
    self, Action, Delta, DesiredEndpoint, DesiredService, IpcacheEntry, NodeDesiredState,
    PolicyRule,
};
use weft_model::policy::eval::Direction;
use weft_model::service::Algorithm;
use weft_model::workload::{DesiredProbe, DesiredWorkload, WorkloadKind};
use weft_proto::v1 as pb;

use super::NodeCtx;
use crate::error::{ApiError, Result};
use crate::state::AppState;
use crate::store::{tenant, view};

/// The node's desired state and the revision it reflects, from one snapshot: every
/// change up to that revision is in it, none after.
#[tracing::instrument(name = "desired_state.compute", skip_all, fields(node = %node.name))]
pub async fn compute(st: &AppState, node: &NodeCtx) -> Result<(i64, NodeDesiredState)> {
    let mut tx = st.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    tenant::set_tenant(&mut tx, node.tenant_id).await?;
    let revision = crate::store::revision::current(&mut tx).await?;
    let view = view::load_view(&mut tx, node.tenant_id).await?;
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

// Wire encoding: the domain never sees protobuf types beyond this point.

fn endpoint(e: &DesiredEndpoint) -> pb::Endpoint {
    pb::Endpoint {
        id: e.id.clone(),
        ips: e.ips.iter().map(ToString::to_string).collect(),
        identity: e.identity,
        enforce_ingress: e.enforce_ingress,
        enforce_egress: e.enforce_egress,
    }
}

fn ipcache(e: &IpcacheEntry) -> pb::IpcacheEntry {
    pb::IpcacheEntry {
        prefix: e.prefix.to_string(),
        identity: e.identity,
    }
}

fn rule(r: &PolicyRule) -> pb::PolicyRule {
    pb::PolicyRule {
        direction: match r.direction {
            Direction::Ingress => pb::Direction::Ingress,
            Direction::Egress => pb::Direction::Egress,
        } as i32,
        peer_identity: r.peer_identity,
        proto: r.proto.map(u32::from),
        ports: r.ports.map(|(first, last)| pb::PortRange {
            first: u32::from(first),
            last: u32::from(last),
        }),
        action: match r.action {
            Action::Allow => pb::Action::Allow,
            Action::Deny => pb::Action::Deny,
            Action::Unsupported => pb::Action::Unsupported,
        } as i32,
        l7: r.l7,
        origin: r.origin.clone(),
    }
}

fn policy(endpoint_id: &str, rules: &[PolicyRule]) -> pb::EndpointPolicy {
    pb::EndpointPolicy {
        endpoint_id: endpoint_id.to_string(),
        rules: rules.iter().map(rule).collect(),
    }
}

fn service(s: &DesiredService) -> pb::Service {
    pb::Service {
        id: s.id.clone(),
        name: s.name.clone(),
        frontends: s
            .frontends
            .iter()
            .map(|f| pb::Frontend {
                vip: f.vip.to_string(),
                port: u32::from(f.port),
                proto: match f.protocol {
                    weft_model::service::L4Protocol::Tcp => 6,
                    weft_model::service::L4Protocol::Udp => 17,
                },
            })
            .collect(),
        backends: s
            .backends
            .iter()
            .map(|b| pb::Backend {
                address: b.address.to_string(),
                port: u32::from(b.port),
                weight: b.weight,
                state: if b.active {
                    pb::BackendState::Active
                } else {
                    pb::BackendState::Terminating
                } as i32,
            })
            .collect(),
        algorithm: match s.algorithm {
            Algorithm::Random => pb::Algorithm::Random,
            Algorithm::Maglev => pb::Algorithm::Maglev,
        } as i32,
        affinity_timeout_seconds: s.affinity_timeout.unwrap_or(0),
    }
}

fn workload(w: &DesiredWorkload) -> pb::Workload {
    pb::Workload {
        name: w.name.clone(),
        kind: match w.kind {
            WorkloadKind::Pod => pb::WorkloadKind::Pod,
            WorkloadKind::World => pb::WorkloadKind::World,
        } as i32,
        ip: w.ip.to_string(),
        labels: w.labels.clone().into_iter().collect(),
        echo_ports: w.echo_ports.iter().map(|p| u32::from(*p)).collect(),
    }
}

fn probe(p: &DesiredProbe) -> pb::Probe {
    pb::Probe {
        id: p.id.clone(),
        from_workload: p.from_workload.clone().unwrap_or_default(),
        target_ip: p.target.ip().to_string(),
        target_port: u32::from(p.target.port()),
        timeout_ms: p.timeout_ms,
    }
}

pub fn snapshot(revision: i64, s: &NodeDesiredState) -> pb::SyncResponse {
    pb::SyncResponse {
        revision: revision.unsigned_abs(),
        kind: Some(pb::sync_response::Kind::Snapshot(pb::Snapshot {
            endpoints: s.endpoints.iter().map(endpoint).collect(),
            ipcache: s.ipcache.iter().map(ipcache).collect(),
            policies: s.policy.iter().map(|(id, r)| policy(id, r)).collect(),
            services: s.services.iter().map(service).collect(),
            workloads: s.workloads.iter().map(workload).collect(),
            probes: s.probes.iter().map(probe).collect(),
        })),
        traceparent: String::new(),
    }
}

pub fn delta(revision: i64, d: &Delta) -> pb::SyncResponse {
    pb::SyncResponse {
        revision: revision.unsigned_abs(),
        kind: Some(pb::sync_response::Kind::Delta(pb::Delta {
            upsert_endpoints: d.endpoints_upsert.iter().map(endpoint).collect(),
            remove_endpoints: d.endpoints_remove.clone(),
            upsert_ipcache: d.ipcache_upsert.iter().map(ipcache).collect(),
            remove_ipcache: d.ipcache_remove.iter().map(ToString::to_string).collect(),
            upsert_policies: d
                .policy_upsert
                .iter()
                .map(|(id, r)| policy(id, r))
                .collect(),
            remove_policies: d.policy_remove.clone(),
            upsert_services: d.services_upsert.iter().map(service).collect(),
            remove_services: d.services_remove.clone(),
            upsert_workloads: d.workloads_upsert.iter().map(workload).collect(),
            remove_workloads: d.workloads_remove.clone(),
            upsert_probes: d.probes_upsert.iter().map(probe).collect(),
            remove_probes: d.probes_remove.clone(),
        })),
        traceparent: String::new(),
    }
}
