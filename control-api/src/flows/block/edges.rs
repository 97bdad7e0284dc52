//! A block's share of the service map: traffic between vertices, summed over its flows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use weft_model::flow::Verdict;
use weft_model::labels::Labels;

use super::Decoded;

/// One flow's contribution to the service map.
pub struct EdgeInput<'a> {
    pub src_identity: u32,
    pub src_labels: &'a Labels,
    pub src_name: Option<&'a str>,
    pub dst_identity: u32,
    pub dst_labels: &'a Labels,
    pub dst_name: Option<&'a str>,
    pub service: Option<(Uuid, Option<&'a str>)>,
    pub verdict: Verdict,
    pub dst_port: u16,
    pub count: u64,
    pub bytes: u64,
}

/// Traffic from one service-map vertex to another, summed over flows. Workloads are keyed
/// by identity (same labels, same vertex), reserved identities collapse to `host` (1) and
/// `world` (everything else below 256), and a flow through a load-balanced service goes
/// to the service's vertex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeAgg {
    pub s: String,
    pub d: String,
    pub connections: u64,
    pub bytes: u64,
    pub forwarded: u64,
    pub dropped: u64,
    pub ports: BTreeSet<u16>,
    pub src_identity: u32,
    pub src_labels: Labels,
    pub src_name: Option<String>,
    pub via_service: bool,
    pub dst_identity: u32,
    pub dst_labels: Labels,
    pub dst_name: Option<String>,
}

fn vertex_id(identity: u32) -> String {
    match identity {
        n if n >= 256 => format!("identity:{n}"),
        weft_model::identity::HOST => "host".into(),
        _ => "world".into(),
    }
}

/// Edges keyed by (source vertex, destination vertex).
#[derive(Default)]
pub struct EdgeMap {
    edges: BTreeMap<(String, String), EdgeAgg>,
    /// (source identity, destination identity, service) -> the edge's key, so a flow
    /// costs a lookup, not two formatted strings.
    keys: HashMap<(u32, u32, Option<Uuid>), (String, String)>,
}

/// The smaller of two optional names (a vertex is named after its first endpoint).
fn min_name(a: &mut Option<String>, b: Option<&str>) {
    if let Some(b) = b {
        if a.as_deref().is_none_or(|a| b < a) {
            *a = Some(b.to_string());
        }
    }
}

impl EdgeMap {
    pub fn add(&mut self, f: &EdgeInput<'_>) {
        let key = self
            .keys
            .entry((f.src_identity, f.dst_identity, f.service.map(|s| s.0)))
            .or_insert_with(|| {
                let d = match f.service {
                    Some((id, _)) => format!("service:{id}"),
                    None => vertex_id(f.dst_identity),
                };
                (vertex_id(f.src_identity), d)
            });
        let dst_name = match f.service {
            Some((_, name)) => name,
            None => f.dst_name,
        };
        if !self.edges.contains_key(key) {
            self.edges.insert(
                key.clone(),
                EdgeAgg {
                    s: key.0.clone(),
                    d: key.1.clone(),
                    connections: 0,
                    bytes: 0,
                    forwarded: 0,
                    dropped: 0,
                    ports: BTreeSet::new(),
                    src_identity: f.src_identity,
                    src_labels: f.src_labels.clone(),
                    src_name: None,
                    via_service: false,
                    dst_identity: f.dst_identity,
                    dst_labels: f.dst_labels.clone(),
                    dst_name: None,
                },
            );
        }
        let Some(e) = self.edges.get_mut(key) else {
            return;
        };
        e.connections += f.count;
        e.bytes += f.bytes;
        match f.verdict {
            Verdict::Dropped => e.dropped += f.count,
            Verdict::Forwarded | Verdict::Redirected | Verdict::Translated => {
                e.forwarded += f.count
            }
            _ => {}
        }
        e.ports.insert(f.dst_port);
        e.src_identity = e.src_identity.min(f.src_identity);
        e.dst_identity = e.dst_identity.min(f.dst_identity);
        e.via_service |= f.service.is_some();
        min_name(&mut e.src_name, f.src_name);
        min_name(&mut e.dst_name, dst_name);
    }

    /// Adds a stored flow.
    pub fn add_decoded(&mut self, f: &Decoded) {
        let r = &f.record;
        self.add(&EdgeInput {
            src_identity: r.source.identity,
            src_labels: &r.source.labels,
            src_name: r.source.endpoint.as_deref(),
            dst_identity: r.destination.identity,
            dst_labels: &r.destination.labels,
            dst_name: r.destination.endpoint.as_deref(),
            service: f.service_id.map(|id| (id, r.service.as_deref())),
            verdict: r.verdict,
            dst_port: r.destination.port,
            count: r.count,
            bytes: r.bytes,
        });
    }

    /// Adds a block's edges (computed at ingest).
    pub fn merge(&mut self, edges: Vec<EdgeAgg>) {
        for e in edges {
            match self.edges.entry((e.s.clone(), e.d.clone())) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(e);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let a = o.get_mut();
                    a.connections += e.connections;
                    a.bytes += e.bytes;
                    a.forwarded += e.forwarded;
                    a.dropped += e.dropped;
                    a.ports.extend(e.ports);
                    a.src_identity = a.src_identity.min(e.src_identity);
                    a.dst_identity = a.dst_identity.min(e.dst_identity);
                    a.via_service |= e.via_service;
                    min_name(&mut a.src_name, e.src_name.as_deref());
                    min_name(&mut a.dst_name, e.dst_name.as_deref());
                }
            }
        }
    }

    /// The edges, by source then destination vertex.
    pub fn into_edges(self) -> Vec<EdgeAgg> {
        self.edges.into_values().collect()
    }
}
