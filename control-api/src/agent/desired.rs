//! A node's desired state: the tenant's view (shared by the replica's streams, see
//! [`crate::views`]) compiled by the model, and encoded for the wire.

use weft_model::desired::{self, Delta, NodeDesiredState};
use weft_proto::v1 as pb;

use super::NodeCtx;
use crate::error::{ApiError, Result};
use crate::views::Loaded;

/// The node's desired state compiled from its tenant's shared view, and the revision it
/// reflects: every change up to that revision is in it, none after.
#[tracing::instrument(name = "desired_state.compute", skip_all, fields(node = %node.name, revision = loaded.revision))]
pub fn compile(node: &NodeCtx, loaded: &Loaded) -> Result<(i64, NodeDesiredState)> {
    let failed = |e: desired::CompileError| {
        ApiError::Internal(anyhow::anyhow!("compiling node {}: {e}", node.name))
    };
    let id = node.id.to_string();
    let in_view = loaded
        .node(&id)
        .ok_or_else(|| failed(desired::CompileError::UnknownNode(id.clone())))?;
    let plan = loaded.plan(&in_view.cluster_id);
    let mut state = plan.compile(&loaded.view, in_view).map_err(failed)?;
    // An agent that does not speak them would misread or drop the whole message.
    if node.capability_version < weft_proto::CAPABILITY_PROBES {
        state.workloads.clear();
        state.probes.clear();
    }
    Ok((loaded.revision, state))
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
