//! A node's desired state: the tenant's view (shared by the replica's streams, see
//! [`crate::views`]) compiled by the model, and encoded for the wire.

use std::sync::Arc;

use weft_model::desired::{self, Delta, NodeDesiredState};
use weft_proto::v1 as pb;

use super::NodeCtx;
use crate::error::{ApiError, Result};
use crate::store::nodes::SentIpcache;
use crate::views::Loaded;

/// The node's desired state compiled from its tenant's shared view, and the revision it
/// reflects: every change up to that revision is in it, none after.
#[tracing::instrument(name = "desired_state.compute", skip_all, fields(node = %node.name, revision = loaded.revision))]
pub fn compile(node: &NodeCtx, loaded: &Loaded) -> Result<Compiled> {
    let failed = |e: desired::CompileError| {
        ApiError::Internal(anyhow::anyhow!("compiling node {}: {e}", node.name))
    };
    let id = node.id.to_string();
    let in_view = loaded
        .node(&id)
        .ok_or_else(|| failed(desired::CompileError::UnknownNode(id.clone())))?;
    let planned = loaded.plan(&in_view.cluster_id);
    let mut state = planned
        .plan
        .compile(&loaded.view, in_view)
        .map_err(failed)?;
    let ipcache = planned.ipcache.as_ref().map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "encoding the ipcache of node {}: {e}",
            node.name
        ))
    })?;
    // An agent that does not speak them would misread or drop the whole message.
    if node.capability_version < weft_proto::CAPABILITY_PROBES {
        state.workloads.clear();
        state.probes.clear();
    }
    Ok(Compiled {
        revision: loaded.revision,
        state,
        ipcache: ipcache.clone(),
    })
}

/// A node's desired state at a revision, and its cluster's shared ipcache (what the state's
/// ipcache is made from) for recording what was sent.
pub struct Compiled {
    pub revision: i64,
    pub state: NodeDesiredState,
    pub ipcache: Arc<SentIpcache>,
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
