//! A node's desired state: the tenant's view (shared by the replica's streams, see
//! [`crate::views`]) compiled by the model, and encoded for the wire.

use std::sync::Arc;

use weft_model::desired::{self, Delta, NodeDesiredState};
use weft_proto::v1 as pb;

use super::NodeCtx;
use crate::error::{ApiError, Result};
use crate::store::nodes::SentIpcache;
use crate::views::{Loaded, Planned};

/// The node's desired state compiled from its tenant's shared view, and the revision it
/// reflects: every change up to that revision is in it, none after.
#[tracing::instrument(name = "desired_state.compute", skip_all, fields(node = %node.name, revision = loaded.revision))]
pub fn compile(node: &NodeCtx, loaded: &Loaded) -> Result<Compiled> {
    let failed = |e: desired::CompileError| {
        ApiError::Internal(anyhow::anyhow!("compiling node {}: {e}", node.name))
    };
    let id = node.id.to_string();
    // A node not in the view was deleted (its credential was checked before).
    let in_view = loaded.node(&id).ok_or_else(|| {
        ApiError::Unauthenticated(format!(
            "node {} was deleted; register it again to rejoin",
            node.name
        ))
    })?;
    let planned = loaded.plan(&in_view.cluster_id);
    let mut local = planned
        .plan
        .compile_local(&loaded.view, in_view)
        .map_err(failed)?;
    let ipcache = planned.ipcache.as_ref().cloned().map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "encoding the ipcache of node {}: {e}",
            node.name
        ))
    })?;
    // An agent that does not speak them would misread or drop the whole message.
    if node.capability_version < weft_proto::CAPABILITY_PROBES {
        local.workloads.clear();
        local.probes.clear();
    } else if node.capability_version < weft_proto::CAPABILITY_L7 {
        local
            .probes
            .retain(|p| p.http.is_none() && p.resolve.is_none());
    }
    Ok(Compiled {
        revision: loaded.revision,
        local,
        planned,
        ipcache,
    })
}

/// A node's desired state at a revision, kept as its own part and its cluster's shared plan:
/// the node's ipcache (its cluster's, with its own addresses as `host`) and the cluster's
/// nodes are never copied per node but to encode a snapshot, and their part of a delta is
/// worked out once per replica and change ([`Planned::shared_delta`]).
pub struct Compiled {
    pub revision: i64,
    /// The state without its ipcache.
    pub local: NodeDesiredState,
    pub planned: Arc<Planned>,
    /// The plan's shared ipcache as recorded with what the node is sent.
    pub ipcache: Arc<SentIpcache>,
}

impl Compiled {
    /// The whole state, ipcache included.
    pub fn full(&self) -> NodeDesiredState {
        let mut s = self.local.clone();
        s.ipcache = desired::node_ipcache(self.planned.plan.shared_ipcache(), s.host_ips());
        s.nodes = self.planned.plan.shared_nodes().to_vec();
        s
    }

    /// The delta from `self` (what the node has) to `next`.
    pub fn delta_to(&self, next: &Compiled) -> Delta {
        let mut d = desired::diff(&self.local, &next.local);
        let (old, new) = (&self.planned, &next.planned);
        if Arc::ptr_eq(old, new) || self.ipcache.digest == next.ipcache.digest {
            return d;
        }
        let shared = new.shared_delta(old);
        d.nodes_upsert = shared.nodes.0.clone();
        d.nodes_remove = shared.nodes.1.clone();
        let (upsert, remove) = if self.local.host_ips() == next.local.host_ips() {
            desired::node_ipcache_delta(
                old.plan.shared_ipcache(),
                &shared.ipcache,
                next.local.host_ips(),
            )
        } else {
            // The node's own addresses changed (rare): its whole ipcache, compared.
            desired::ipcache_diff(&self.full().ipcache, &next.full().ipcache)
        };
        d.ipcache_upsert = upsert;
        d.ipcache_remove = remove;
        d
    }
}

// Wire encoding (`weft_proto::convert`): the domain never sees protobuf types beyond this point.

pub fn snapshot(revision: i64, s: &NodeDesiredState) -> pb::SyncResponse {
    pb::SyncResponse {
        revision: revision.unsigned_abs(),
        kind: Some(pb::sync_response::Kind::Snapshot(s.into())),
        traceparent: String::new(),
        continues: false,
    }
}

pub fn delta(revision: i64, d: &Delta) -> pb::SyncResponse {
    pb::SyncResponse {
        revision: revision.unsigned_abs(),
        kind: Some(pb::sync_response::Kind::Delta(d.into())),
        traceparent: String::new(),
        continues: false,
    }
}
