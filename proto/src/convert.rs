//! Conversions between the wire ([`crate::v1`]) and the model's desired-state types
//! ([`weft_model::desired`]): `From<&model> for pb` encodes (the control plane), and
//! `TryFrom<pb> for model` decodes (the agent). Decoding refuses a bad message as a whole,
//! with a [`WireError`] naming the item and the field (fail closed: the agent keeps the last
//! applied state).
//!
//! Model → wire → model is the identity for everything the wire carries (tested with
//! random states below). What it does not carry: [`NodeDesiredState::unsupported`] and
//! [`Delta::unsupported`] (control-plane diagnostics, shown over REST; they decode as
//! empty / `None`); an affinity timeout of 0 and an empty `from_workload` mean "none" on
//! the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use weft_model::desired::{
    Delta, DesiredBackend, DesiredEndpoint, DesiredService, IpcacheEntry, NodeDesiredState, Rules,
    PROTO_TCP, PROTO_UDP,
};
use weft_model::routing::{ClusterNode, RoutingMode};
use weft_model::service::{Algorithm, Frontend, L4Protocol};
use weft_model::workload::{
    check_http_method, check_http_path, DesiredProbe, DesiredWorkload, HttpProbe, ResolveProbe,
    WorkloadKind,
};

use crate::v1 as pb;

/// Why a message from the control plane was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("sync message {0} carries neither a snapshot nor a delta")]
    NoKind(u64),
    #[error("sync message {0} is a part of its revision, not the whole (join the parts first)")]
    Part(u64),
    #[error("{item}: invalid address {value:?}")]
    Address { item: String, value: String },
    #[error("{item}: invalid prefix {value:?}")]
    Prefix { item: String, value: String },
    #[error("{item}: {field} {value} is out of range")]
    Range {
        item: String,
        field: &'static str,
        value: u64,
    },
    #[error("{item}: unknown {field} {value}")]
    Enum {
        item: String,
        field: &'static str,
        value: i32,
    },
    #[error("{item}: empty id")]
    EmptyId { item: &'static str },
    #[error("{item}: listed twice")]
    Duplicate { item: String },
    #[error("{item}: {field}: {reason}")]
    Invalid {
        item: String,
        field: &'static str,
        reason: String,
    },
}

/// What a `Sync` message asks of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// The complete desired state: everything else is removed.
    Snapshot(NodeDesiredState),
    Delta(Delta),
}

/// A decoded `SyncResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMessage {
    pub revision: u64,
    pub update: Update,
}

// ---------------------------------------------------------------------------------------
// Model -> wire

impl From<&DesiredEndpoint> for pb::Endpoint {
    fn from(e: &DesiredEndpoint) -> Self {
        pb::Endpoint {
            id: e.id.clone(),
            ips: e.ips.iter().map(ToString::to_string).collect(),
            identity: e.identity,
            enforce_ingress: e.enforce_ingress,
            enforce_egress: e.enforce_egress,
        }
    }
}

impl From<&IpcacheEntry> for pb::IpcacheEntry {
    fn from(e: &IpcacheEntry) -> Self {
        pb::IpcacheEntry {
            prefix: e.prefix.to_string(),
            identity: e.identity,
        }
    }
}

impl From<&DesiredService> for pb::Service {
    fn from(s: &DesiredService) -> Self {
        pb::Service {
            id: s.id.clone(),
            name: s.name.clone(),
            frontends: s
                .frontends
                .iter()
                .map(|f| pb::Frontend {
                    vip: f.vip.to_string(),
                    port: u32::from(f.port),
                    proto: u32::from(match f.protocol {
                        L4Protocol::Tcp => PROTO_TCP,
                        L4Protocol::Udp => PROTO_UDP,
                    }),
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
}

impl From<&DesiredWorkload> for pb::Workload {
    fn from(w: &DesiredWorkload) -> Self {
        pb::Workload {
            name: w.name.clone(),
            kind: match w.kind {
                WorkloadKind::Pod => pb::WorkloadKind::Pod,
                WorkloadKind::World => pb::WorkloadKind::World,
            } as i32,
            ip: w.ip.to_string(),
            ip6: w.ip6.map(|a| a.to_string()).unwrap_or_default(),
            labels: w.labels.clone().into_iter().collect(),
            echo_ports: w.echo_ports.iter().map(|p| u32::from(*p)).collect(),
        }
    }
}

impl From<&DesiredProbe> for pb::Probe {
    fn from(p: &DesiredProbe) -> Self {
        pb::Probe {
            id: p.id.clone(),
            from_workload: p.from_workload.clone().unwrap_or_default(),
            target_ip: p.target.ip().to_string(),
            target_port: u32::from(p.target.port()),
            timeout_ms: p.timeout_ms,
            http_method: p
                .http
                .as_ref()
                .map(|h| h.method.clone())
                .unwrap_or_default(),
            http_path: p.http.as_ref().map(|h| h.path.clone()).unwrap_or_default(),
            resolve_name: p
                .resolve
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            resolver: p
                .resolve
                .as_ref()
                .map(|r| r.server.to_string())
                .unwrap_or_default(),
        }
    }
}

impl From<&ClusterNode> for pb::ClusterNode {
    fn from(n: &ClusterNode) -> Self {
        pb::ClusterNode {
            name: n.name.clone(),
            addresses: n.addresses.iter().map(ToString::to_string).collect(),
            pod_cidrs: n.pod_cidrs.iter().map(ToString::to_string).collect(),
        }
    }
}

fn routing_mode(m: RoutingMode) -> i32 {
    let m = match m {
        RoutingMode::Tunnel => pb::RoutingMode::Tunnel,
        RoutingMode::Native => pb::RoutingMode::Native,
    };
    m as i32
}

/// Everything but `unsupported` (not on the wire).
impl From<&NodeDesiredState> for pb::Snapshot {
    fn from(s: &NodeDesiredState) -> Self {
        pb::Snapshot {
            endpoints: s.endpoints.iter().map(Into::into).collect(),
            ipcache: s.ipcache.iter().map(Into::into).collect(),
            policies: s.policy.iter().map(Into::into).collect(),
            services: s.services.iter().map(Into::into).collect(),
            workloads: s.workloads.iter().map(Into::into).collect(),
            probes: s.probes.iter().map(Into::into).collect(),
            routing_mode: routing_mode(s.routing),
            nodes: s.nodes.iter().map(Into::into).collect(),
        }
    }
}

/// Everything but `unsupported` (not on the wire).
impl From<&Delta> for pb::Delta {
    fn from(d: &Delta) -> Self {
        pb::Delta {
            upsert_endpoints: d.endpoints_upsert.iter().map(Into::into).collect(),
            remove_endpoints: d.endpoints_remove.clone(),
            upsert_ipcache: d.ipcache_upsert.iter().map(Into::into).collect(),
            remove_ipcache: d.ipcache_remove.iter().map(ToString::to_string).collect(),
            upsert_policies: d.policy_upsert.iter().map(Into::into).collect(),
            remove_policies: d.policy_remove.clone(),
            upsert_services: d.services_upsert.iter().map(Into::into).collect(),
            remove_services: d.services_remove.clone(),
            upsert_workloads: d.workloads_upsert.iter().map(Into::into).collect(),
            remove_workloads: d.workloads_remove.clone(),
            upsert_probes: d.probes_upsert.iter().map(Into::into).collect(),
            remove_probes: d.probes_remove.clone(),
            routing_mode: d.routing.map_or(0, routing_mode),
            upsert_nodes: d.nodes_upsert.iter().map(Into::into).collect(),
            remove_nodes: d.nodes_remove.clone(),
        }
    }
}

/// Without a trace context (the sender sets `traceparent` when it has one).
impl From<&SyncMessage> for pb::SyncResponse {
    fn from(m: &SyncMessage) -> Self {
        pb::SyncResponse {
            revision: m.revision,
            kind: Some(match &m.update {
                Update::Snapshot(s) => pb::sync_response::Kind::Snapshot(s.into()),
                Update::Delta(d) => pb::sync_response::Kind::Delta(d.into()),
            }),
            traceparent: String::new(),
            continues: false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Wire -> model

impl TryFrom<pb::SyncResponse> for SyncMessage {
    type Error = WireError;

    fn try_from(m: pb::SyncResponse) -> Result<Self, WireError> {
        if m.continues {
            return Err(WireError::Part(m.revision));
        }
        let update = match m.kind {
            None => return Err(WireError::NoKind(m.revision)),
            Some(pb::sync_response::Kind::Snapshot(s)) => Update::Snapshot(s.try_into()?),
            Some(pb::sync_response::Kind::Delta(d)) => Update::Delta(d.try_into()?),
        };
        Ok(SyncMessage {
            revision: m.revision,
            update,
        })
    }
}

fn addr(item: impl Fn() -> String, s: &str) -> Result<IpAddr, WireError> {
    s.parse().map_err(|_| WireError::Address {
        item: item(),
        value: s.to_string(),
    })
}

/// An address of the type the caller needs (IPv4, IPv6 or either).
fn address<A: std::str::FromStr>(item: impl Fn() -> String, s: &str) -> Result<A, WireError> {
    s.parse().map_err(|_| WireError::Address {
        item: item(),
        value: s.to_string(),
    })
}

fn prefix(item: impl Fn() -> String, s: &str) -> Result<IpNet, WireError> {
    s.parse().map_err(|_| WireError::Prefix {
        item: item(),
        value: s.to_string(),
    })
}

fn u16_of(item: impl Fn() -> String, field: &'static str, v: u32) -> Result<u16, WireError> {
    u16::try_from(v).map_err(|_| WireError::Range {
        item: item(),
        field,
        value: u64::from(v),
    })
}

fn u8_of(item: impl Fn() -> String, field: &'static str, v: u32) -> Result<u8, WireError> {
    u8::try_from(v).map_err(|_| WireError::Range {
        item: item(),
        field,
        value: u64::from(v),
    })
}

impl TryFrom<pb::Endpoint> for DesiredEndpoint {
    type Error = WireError;

    fn try_from(e: pb::Endpoint) -> Result<Self, WireError> {
        if e.id.is_empty() {
            return Err(WireError::EmptyId { item: "endpoint" });
        }
        let item = || format!("endpoint/{}", e.id);
        let ips = e
            .ips
            .iter()
            .map(|a| addr(item, a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DesiredEndpoint {
            id: e.id,
            ips,
            identity: e.identity,
            enforce_ingress: e.enforce_ingress,
            enforce_egress: e.enforce_egress,
        })
    }
}

impl TryFrom<pb::IpcacheEntry> for IpcacheEntry {
    type Error = WireError;

    fn try_from(e: pb::IpcacheEntry) -> Result<Self, WireError> {
        let item = || format!("ipcache/{}", e.prefix);
        Ok(IpcacheEntry {
            prefix: prefix(item, &e.prefix)?,
            identity: e.identity,
        })
    }
}

impl TryFrom<pb::Service> for DesiredService {
    type Error = WireError;

    fn try_from(s: pb::Service) -> Result<Self, WireError> {
        if s.id.is_empty() {
            return Err(WireError::EmptyId { item: "service" });
        }
        let item = || format!("service/{}", s.id);
        let frontends = s
            .frontends
            .iter()
            .map(|f| {
                let protocol = match u8::try_from(f.proto) {
                    Ok(PROTO_TCP) => L4Protocol::Tcp,
                    Ok(PROTO_UDP) => L4Protocol::Udp,
                    _ => {
                        return Err(WireError::Range {
                            item: item(),
                            field: "frontend protocol",
                            value: u64::from(f.proto),
                        })
                    }
                };
                Ok(Frontend {
                    vip: addr(item, &f.vip)?,
                    port: u16_of(item, "frontend port", f.port)?,
                    protocol,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let backends = s
            .backends
            .iter()
            .map(|b| {
                let active = match pb::BackendState::try_from(b.state) {
                    Ok(pb::BackendState::Active) => true,
                    Ok(pb::BackendState::Terminating) => false,
                    _ => {
                        return Err(WireError::Enum {
                            item: item(),
                            field: "backend state",
                            value: b.state,
                        })
                    }
                };
                Ok(DesiredBackend {
                    address: addr(item, &b.address)?,
                    port: u16_of(item, "backend port", b.port)?,
                    weight: b.weight,
                    active,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let algorithm = match pb::Algorithm::try_from(s.algorithm) {
            Ok(pb::Algorithm::Random) => Algorithm::Random,
            Ok(pb::Algorithm::Maglev) => Algorithm::Maglev,
            _ => {
                return Err(WireError::Enum {
                    item: item(),
                    field: "algorithm",
                    value: s.algorithm,
                })
            }
        };
        Ok(DesiredService {
            id: s.id,
            name: s.name,
            frontends,
            backends,
            algorithm,
            affinity_timeout: (s.affinity_timeout_seconds > 0)
                .then_some(s.affinity_timeout_seconds),
        })
    }
}

impl TryFrom<pb::Workload> for DesiredWorkload {
    type Error = WireError;

    fn try_from(w: pb::Workload) -> Result<Self, WireError> {
        if w.name.is_empty() {
            return Err(WireError::EmptyId { item: "workload" });
        }
        let item = || format!("workload/{}", w.name);
        let kind = match pb::WorkloadKind::try_from(w.kind) {
            Ok(pb::WorkloadKind::Pod) => WorkloadKind::Pod,
            Ok(pb::WorkloadKind::World) => WorkloadKind::World,
            _ => {
                return Err(WireError::Enum {
                    item: item(),
                    field: "kind",
                    value: w.kind,
                })
            }
        };
        Ok(DesiredWorkload {
            kind,
            ip: address(item, &w.ip)?,
            ip6: if w.ip6.is_empty() {
                None
            } else {
                Some(address(item, &w.ip6)?)
            },
            labels: w.labels.into_iter().collect(),
            echo_ports: w
                .echo_ports
                .iter()
                .map(|p| u16_of(item, "echo port", *p))
                .collect::<Result<_, _>>()?,
            name: w.name,
        })
    }
}

impl TryFrom<pb::Probe> for DesiredProbe {
    type Error = WireError;

    fn try_from(p: pb::Probe) -> Result<Self, WireError> {
        if p.id.is_empty() {
            return Err(WireError::EmptyId { item: "probe" });
        }
        let item = || format!("probe/{}", p.id);
        let target = SocketAddr::new(
            address(item, &p.target_ip)?,
            u16_of(item, "target port", p.target_port)?,
        );
        let invalid = |field: &'static str, reason: String| WireError::Invalid {
            item: item(),
            field,
            reason,
        };
        // The method and path come together and are what the API accepts: the agent writes
        // them into a request line.
        let http = match (p.http_method.is_empty(), p.http_path.is_empty()) {
            (true, true) => None,
            (false, false) => {
                check_http_method(&p.http_method).map_err(|r| invalid("http method", r))?;
                check_http_path(&p.http_path).map_err(|r| invalid("http path", r))?;
                Some(HttpProbe {
                    method: p.http_method,
                    path: p.http_path,
                })
            }
            _ => {
                return Err(invalid(
                    "http",
                    "a method without a path or a path without a method".into(),
                ))
            }
        };
        let resolve = match (p.resolve_name.is_empty(), p.resolver.is_empty()) {
            (true, true) => None,
            (false, false) => Some(ResolveProbe {
                server: address(item, &p.resolver)?,
                name: p.resolve_name,
            }),
            _ => {
                return Err(invalid(
                    "resolve",
                    "a name without a resolver or a resolver without a name".into(),
                ))
            }
        };
        Ok(DesiredProbe {
            from_workload: (!p.from_workload.is_empty()).then_some(p.from_workload),
            target,
            timeout_ms: p.timeout_ms,
            http,
            resolve,
            id: p.id,
        })
    }
}

impl TryFrom<pb::ClusterNode> for ClusterNode {
    type Error = WireError;

    fn try_from(n: pb::ClusterNode) -> Result<Self, WireError> {
        if n.name.is_empty() {
            return Err(WireError::EmptyId { item: "node" });
        }
        let item = || format!("node/{}", n.name);
        Ok(ClusterNode {
            addresses: n
                .addresses
                .iter()
                .map(|a| addr(item, a))
                .collect::<Result<_, _>>()?,
            pod_cidrs: n
                .pod_cidrs
                .iter()
                .map(|p| prefix(item, p))
                .collect::<Result<_, _>>()?,
            name: n.name,
        })
    }
}

/// The routing mode of a message; `None` when unspecified (a delta leaving it unchanged).
fn routing_of(item: &str, v: i32) -> Result<Option<RoutingMode>, WireError> {
    match pb::RoutingMode::try_from(v) {
        Ok(pb::RoutingMode::Unspecified) => Ok(None),
        Ok(pb::RoutingMode::Tunnel) => Ok(Some(RoutingMode::Tunnel)),
        Ok(pb::RoutingMode::Native) => Ok(Some(RoutingMode::Native)),
        Err(_) => Err(WireError::Enum {
            item: item.to_string(),
            field: "routing_mode",
            value: v,
        }),
    }
}

/// Decodes a keyed list, refusing duplicate keys.
fn keyed<P, T, K: Ord + ToString>(
    items: Vec<P>,
    key: impl Fn(&T) -> K,
    kind: &str,
) -> Result<Vec<T>, WireError>
where
    T: TryFrom<P, Error = WireError>,
{
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    for p in items {
        let t = T::try_from(p)?;
        let k = key(&t);
        let name = k.to_string();
        if !seen.insert(k) {
            return Err(WireError::Duplicate {
                item: format!("{kind}/{name}"),
            });
        }
        out.push(t);
    }
    Ok(out)
}

fn policies(items: Vec<pb::EndpointPolicy>) -> Result<BTreeMap<String, Rules>, WireError> {
    let mut out = BTreeMap::new();
    for p in items {
        let (id, rules) = <(String, Rules)>::try_from(p)?;
        if out.contains_key(&id) {
            return Err(WireError::Duplicate {
                item: format!("policy/{id}"),
            });
        }
        out.insert(id, rules);
    }
    Ok(out)
}

/// `unsupported` is not on the wire: empty.
impl TryFrom<pb::Snapshot> for NodeDesiredState {
    type Error = WireError;

    fn try_from(s: pb::Snapshot) -> Result<Self, WireError> {
        let mut endpoints = keyed(s.endpoints, |e: &DesiredEndpoint| e.id.clone(), "endpoint")?;
        let mut ipcache = keyed(s.ipcache, |e: &IpcacheEntry| e.prefix, "ipcache")?;
        let mut services = keyed(s.services, |s: &DesiredService| s.id.clone(), "service")?;
        // The model keeps its lists sorted by key, so a diff against it is meaningful.
        endpoints.sort_by(|a, b| a.id.cmp(&b.id));
        ipcache.sort_by_key(|a| a.prefix);
        services.sort_by(|a, b| a.id.cmp(&b.id));
        let mut workloads = keyed(
            s.workloads,
            |w: &DesiredWorkload| w.name.clone(),
            "workload",
        )?;
        workloads.sort_by(|a, b| a.name.cmp(&b.name));
        let mut probes = keyed(s.probes, |p: &DesiredProbe| p.id.clone(), "probe")?;
        probes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut nodes = keyed(s.nodes, |n: &ClusterNode| n.name.clone(), "node")?;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(NodeDesiredState {
            // A control plane that predates routing modes: the default.
            routing: routing_of("snapshot", s.routing_mode)?.unwrap_or_default(),
            nodes,
            endpoints,
            ipcache,
            policy: policies(s.policies)?,
            services,
            unsupported: Vec::new(),
            workloads,
            probes,
        })
    }
}

/// `unsupported` is not on the wire: `None`.
impl TryFrom<pb::Delta> for Delta {
    type Error = WireError;

    fn try_from(d: pb::Delta) -> Result<Self, WireError> {
        Ok(Delta {
            endpoints_upsert: keyed(
                d.upsert_endpoints,
                |e: &DesiredEndpoint| e.id.clone(),
                "endpoint",
            )?,
            endpoints_remove: d.remove_endpoints,
            ipcache_upsert: keyed(d.upsert_ipcache, |e: &IpcacheEntry| e.prefix, "ipcache")?,
            ipcache_remove: d
                .remove_ipcache
                .iter()
                .map(|p| prefix(|| format!("ipcache/{p}"), p))
                .collect::<Result<Vec<_>, _>>()?,
            policy_upsert: policies(d.upsert_policies)?,
            policy_remove: d.remove_policies,
            services_upsert: keyed(
                d.upsert_services,
                |s: &DesiredService| s.id.clone(),
                "service",
            )?,
            services_remove: d.remove_services,
            unsupported: None,
            workloads_upsert: keyed(
                d.upsert_workloads,
                |w: &DesiredWorkload| w.name.clone(),
                "workload",
            )?,
            workloads_remove: d.remove_workloads,
            probes_upsert: keyed(d.upsert_probes, |p: &DesiredProbe| p.id.clone(), "probe")?,
            probes_remove: d.remove_probes,
            routing: routing_of("delta", d.routing_mode)?,
            nodes_upsert: keyed(d.upsert_nodes, |n: &ClusterNode| n.name.clone(), "node")?,
            nodes_remove: d.remove_nodes,
        })
    }
}

mod policy;

#[cfg(test)]
mod tests;
