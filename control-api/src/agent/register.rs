//! `Register`: a join token buys a node identity and a node credential.

use std::net::IpAddr;

use ipnet::IpNet;
use uuid::Uuid;
use weft_model::error::FieldError;
use weft_model::labels::{validate_labels, Labels};
use weft_model::names::validate_name;
use weft_proto::v1::{RegisterRequest, RegisterResponse};

use crate::error::{ApiError, Result};
use crate::secret;
use crate::state::AppState;
use crate::store::audit::{self, Subject};
use crate::store::nodes::{self, Registration};
use crate::store::tenant::{Actor, Role, TenantCtx};
use crate::store::{self, Op};

struct Checked {
    labels: Labels,
    addresses: Vec<IpAddr>,
    pod_cidrs: Vec<IpNet>,
}

fn check(req: &RegisterRequest) -> Result<Checked> {
    let mut errs = Vec::new();
    if let Err(e) = validate_name(&req.node_name) {
        errs.push(FieldError::new("node_name", e.to_string()));
    }
    let labels: Labels = req
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Err(mut e) = validate_labels(&labels) {
        errs.append(&mut e);
    }
    let mut addresses = Vec::new();
    for (i, a) in req.addresses.iter().enumerate() {
        match a.parse() {
            Ok(ip) => addresses.push(ip),
            Err(_) => errs.push(FieldError::new(
                format!("addresses[{i}]"),
                format!("{a:?} is not an IP address"),
            )),
        }
    }
    let mut pod_cidrs = Vec::new();
    for (i, c) in req.pod_cidrs.iter().enumerate() {
        match c.parse::<IpNet>() {
            Ok(net) => pod_cidrs.push(net.trunc()),
            Err(_) => errs.push(FieldError::new(
                format!("pod_cidrs[{i}]"),
                format!("{c:?} is not a CIDR"),
            )),
        }
    }
    if errs.is_empty() {
        Ok(Checked {
            labels,
            addresses,
            pod_cidrs,
        })
    } else {
        Err(ApiError::validation(errs))
    }
}

pub async fn register(st: &AppState, req: RegisterRequest) -> Result<RegisterResponse> {
    let checked = check(&req)?;
    let token_hash = secret::hash_token(&req.join_token);
    let found = nodes::find_join_token(&st.pool, &token_hash).await?;
    let (token_id, tenant_id, cluster_id) = found.ok_or_else(|| {
        ApiError::Unauthenticated("invalid, expired, used-up or revoked join token".into())
    })?;
    let mut tx = st.pool.begin().await?;
    store::set_tenant(&mut tx, tenant_id).await?;
    // Count the use under the row lock, so two nodes cannot share a single-use token.
    let token_name = nodes::use_join_token(&mut tx, token_id).await?;
    let token_name = token_name.ok_or_else(|| {
        ApiError::Unauthenticated("invalid, expired, used-up or revoked join token".into())
    })?;
    let (credential, credential_hash) = secret::new_token();
    let existing = nodes::lock_by_name(&mut tx, cluster_id, &req.node_name).await?;
    let addresses: Vec<String> = checked.addresses.iter().map(ToString::to_string).collect();
    let pod_cidrs: Vec<String> = checked.pod_cidrs.iter().map(ToString::to_string).collect();
    let (id, op) = match existing {
        Some(_) if !req.replace => {
            return Err(ApiError::Conflict {
                detail: format!(
                    "node {:?} is already registered in this cluster; register with replace to take its place",
                    req.node_name
                ),
                field: Some("node_name".into()),
            })
        }
        Some(id) => (id, Op::Update),
        None => (Uuid::now_v7(), Op::Create),
    };
    let rev = store::bump_revision(&mut tx, tenant_id, "node", id, op).await?;
    // Replacing a node issues a new credential: the old one stops working at once.
    nodes::register(
        &mut tx,
        Registration {
            id,
            tenant: tenant_id,
            cluster: cluster_id,
            name: &req.node_name,
            labels: &checked.labels,
            addresses: &addresses,
            pod_cidrs: &pod_cidrs,
            credential_hash: &credential_hash,
            agent_version: &req.agent_version,
            kernel_version: &req.kernel_version,
            revision: rev,
        },
    )
    .await?;
    let ctx = TenantCtx {
        id: tenant_id,
        name: String::new(),
        role: Role::Editor,
        actor: Actor {
            kind: "join_token",
            id: Some(token_id),
            name: token_name,
        },
        request_id: "-".into(),
    };
    let after = serde_json::json!({
        "id": id, "cluster_id": cluster_id, "name": req.node_name,
        "addresses": addresses, "pod_cidrs": pod_cidrs, "labels": checked.labels,
    });
    let subject = Subject {
        kind: "node",
        id,
        name: &req.node_name,
    };
    let action = if matches!(op, Op::Create) {
        "register"
    } else {
        "re-register"
    };
    audit::record(&mut tx, &ctx, action, subject, None, Some(after)).await?;
    tx.commit().await?;
    if matches!(op, Op::Update) {
        // The replaced credential stops working here at once; other replicas forget it
        // when they hear the change.
        st.node_credentials.invalidate(Some(tenant_id));
    }
    tracing::info!(node = %req.node_name, %cluster_id, revision = rev, "node registered");
    Ok(RegisterResponse {
        node_id: id.to_string(),
        node_credential: credential,
        cluster_id: cluster_id.to_string(),
        tenant_id: tenant_id.to_string(),
        capability_version: req.capability_version.min(weft_proto::CAPABILITY_VERSION),
    })
}
