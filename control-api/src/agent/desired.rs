//! A node's desired state: the tenant's view read from Postgres in one consistent
//! snapshot, compiled by the model, and encoded for the wire.

use weft_model::desired::{self, Delta, NodeDesiredState};
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
    view::snapshot(&mut tx).await?;
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
