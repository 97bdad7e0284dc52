//! The compiler's input (one tenant's declared state) and output (one node's desired state).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::identity;
use crate::labels::Labels;
use crate::policy::{Direction, FqdnSelector, NamedPort, PolicySpec};
use crate::routing::{ClusterNode, RoutingMode};
use crate::service::{Algorithm, Frontend, ServiceSpec};
use crate::workload::{DesiredProbe, DesiredWorkload};

/// Endpoint id of the node's host endpoint in [`NodeDesiredState`] (its policy comes from
/// `nodeSelector` policies). Endpoint ids in a [`TenantView`] must not use it.
pub const HOST_ENDPOINT_ID: &str = "host";

/// Origin of the allow-any rule that keeps a direction default-allow when the endpoint has
/// deny rules there but no default deny (see `keep_denies_without_default_deny`).
pub const DEFAULT_ALLOW_ORIGIN: &str = "default allow (deny rules without default deny)";

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

// ---------------------------------------------------------------------------------------
// Input

/// One tenant's declared state, as read from Postgres. Order does not matter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantView {
    pub nodes: Vec<NodeView>,
    pub endpoints: Vec<EndpointView>,
    pub policies: Vec<PolicyView>,
    pub services: Vec<ServiceView>,
    /// Test workloads, each with the node that runs it.
    #[serde(default)]
    pub workloads: Vec<WorkloadView>,
    /// Probes without a result yet, each with the node that runs it.
    #[serde(default)]
    pub probes: Vec<ProbeView>,
    /// Per-cluster settings. A cluster missing here has every setting off (the API stores
    /// a row per cluster, with Cilium's defaults).
    #[serde(default)]
    pub clusters: Vec<ClusterView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub id: String,
    /// The node's own host may reach the node's endpoints whatever their ingress policy
    /// (Cilium's allow-localhost, on by default there: kubelet probes). Deny rules still win.
    pub allow_host_to_local_pods: bool,
    /// How the cluster's nodes reach each other's pods.
    #[serde(default)]
    pub routing: RoutingMode,
}

/// Origin of the allow rule that [`ClusterView::allow_host_to_local_pods`] adds.
pub const HOST_TO_LOCAL_PODS_ORIGIN: &str = "cluster setting allow_host_to_local_pods";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadView {
    pub node_id: String,
    pub workload: DesiredWorkload,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeView {
    pub node_id: String,
    pub probe: DesiredProbe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub cluster_id: String,
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Shared between the view's nodes of one label set.
    #[serde(with = "shared")]
    pub labels: Arc<Labels>,
    /// The pod address ranges the node routes to (its endpoints' addresses lie in them).
    #[serde(default)]
    pub pod_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub id: String,
    /// Shared with the view's other endpoints of the cluster (as `node_id` with the node's):
    /// a view holds every endpoint of the tenant, and one string each was ~1 MB a view at
    /// 10,000 endpoints.
    #[serde(with = "shared")]
    pub cluster_id: Arc<str>,
    #[serde(with = "shared")]
    pub node_id: Arc<str>,
    pub name: String,
    /// Shared between the view's endpoints of one label set (those of one identity): a
    /// label map per endpoint was most of a tenant view's memory.
    #[serde(with = "shared")]
    pub labels: Arc<Labels>,
    pub ips: Vec<IpAddr>,
    /// Allocated by the control plane from the label set (≥ [`identity::FIRST_ALLOCATED`]).
    pub identity: u32,
    /// Ports the endpoint declares by name; named-port rules resolve against them.
    #[serde(default)]
    pub named_ports: Vec<NamedPort>,
}

/// (De)serializes a shared value as the value itself.
mod shared {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T, S>(value: &Arc<T>, s: S) -> Result<S::Ok, S::Error>
    where
        T: Serialize + ?Sized,
        S: Serializer,
    {
        value.as_ref().serialize(s)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Arc<T>, D::Error>
    where
        T: ?Sized,
        Box<T>: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Box::<T>::deserialize(d).map(Arc::from)
    }
}

/// `PolicySpec` is not `Eq` (it keeps raw JSON of refused fields), hence only `PartialEq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyView {
    pub id: String,
    pub name: String,
    pub specs: Vec<PolicySpec>,
    /// Cluster ids the policy applies in; `None`: every cluster.
    pub clusters: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub id: String,
    pub cluster_id: String,
    pub name: String,
    pub spec: ServiceSpec,
}

// ---------------------------------------------------------------------------------------
// Output

/// What one node's agent must program. Every list is sorted and free of duplicates, so the
/// same input always gives byte-identical output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDesiredState {
    /// The node's endpoints, by id; the host endpoint ([`HOST_ENDPOINT_ID`]) included.
    pub endpoints: Vec<DesiredEndpoint>,
    /// By prefix; one identity per prefix.
    pub ipcache: Vec<IpcacheEntry>,
    /// Rules per endpoint id; endpoints without rules are absent.
    pub policy: BTreeMap<String, Rules>,
    /// The services of the node's cluster, by id.
    pub services: Vec<DesiredService>,
    /// Parts of policies applying on this node that could not be compiled, as
    /// `policy-name specs[i].egress[j]...: why`.
    pub unsupported: Vec<String>,
    /// Test workloads the agent runs, by name (states stored before they existed lack them).
    #[serde(default)]
    pub workloads: Vec<DesiredWorkload>,
    /// Probes the agent runs once, by id.
    #[serde(default)]
    pub probes: Vec<DesiredProbe>,
    /// The cluster's routing mode.
    #[serde(default)]
    pub routing: RoutingMode,
    /// Every node of the cluster, this one included, by name: shared by all of them like
    /// the ipcache, so the agent skips itself (by its addresses).
    #[serde(default)]
    pub nodes: Vec<ClusterNode>,
}

impl NodeDesiredState {
    /// The node's own addresses: its host endpoint's.
    pub fn host_ips(&self) -> &[IpAddr] {
        self.endpoints
            .iter()
            .find(|e| e.id == HOST_ENDPOINT_ID)
            .map_or(&[], |e| e.ips.as_slice())
    }
}

/// A node's ipcache from its cluster's shared one (where every node's addresses are
/// `remote-node`): its own addresses are `host` there.
pub fn node_ipcache(shared: &[IpcacheEntry], own: &[IpAddr]) -> Vec<IpcacheEntry> {
    let mut out = shared.to_vec();
    for ip in own {
        let prefix = IpNet::from(*ip);
        if let Ok(i) = out.binary_search_by_key(&prefix, |e| e.prefix) {
            out[i].identity = crate::identity::HOST;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredEndpoint {
    pub id: String,
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    pub enforce_ingress: bool,
    pub enforce_egress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcacheEntry {
    pub prefix: IpNet,
    pub identity: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// What a rule Weft does not enforce (L7 rules, `toFQDNs`, entities nothing carries)
    /// would have allowed: not allowed, and dropped with `UNSUPPORTED_RULE` rather than
    /// `POLICY_DENIED` when no other rule allows it (fail closed, visibly).
    Unsupported,
}

/// An endpoint's rule list, immutable and shared: the compiler gives endpoints of the same
/// labels and named ports one list per cluster plan, held by every node that has such an
/// endpoint (at 1,000 nodes of 10 endpoints, 10 lists instead of 10,000 copies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(Arc<[PolicyRule]>);

impl Rules {
    /// Whether `a` and `b` are one shared list (not only equal).
    pub fn ptr_eq(a: &Rules, b: &Rules) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl std::ops::Deref for Rules {
    type Target = [PolicyRule];
    fn deref(&self) -> &[PolicyRule] {
        &self.0
    }
}

impl From<Vec<PolicyRule>> for Rules {
    fn from(rules: Vec<PolicyRule>) -> Rules {
        Rules(rules.into())
    }
}

impl FromIterator<PolicyRule> for Rules {
    fn from_iter<I: IntoIterator<Item = PolicyRule>>(rules: I) -> Rules {
        Rules(rules.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Rules {
    type Item = &'a PolicyRule;
    type IntoIter = std::slice::Iter<'a, PolicyRule>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for Rules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_ref().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Rules {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rules, D::Error> {
        Vec::<PolicyRule>::deserialize(d).map(Rules::from)
    }
}

/// One datapath policy entry of an endpoint (maps 1:1 onto the agent's `PolicyEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub direction: Direction,
    /// `None`: any peer. [`identity::FQDN_PEER`] with [`PolicyRule::fqdn`].
    pub peer_identity: Option<u32>,
    /// IP protocol number; `None`: any protocol.
    pub proto: Option<u8>,
    /// Inclusive port range (the ICMP type for ICMP); `None`: any port.
    pub ports: Option<(u16, u16)>,
    pub action: Action,
    /// Allowed only subject to L7 rules (the proxy decides per request).
    pub l7: bool,
    /// With `l7`: the HTTP rules a request must match one of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpMatch>,
    /// With `l7`: the DNS rules a query must match one of (the agent's DNS proxy answers
    /// the others `REFUSED`, and learns the addresses of the answers it passes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<FqdnSelector>,
    /// A `toFQDNs` entry: the peers are the addresses that DNS answers seen by the node's
    /// DNS proxy gave for names the selector matches (`peer_identity` is
    /// [`identity::FQDN_PEER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<FqdnSelector>,
    /// Policy name and rule path, for debugging (`web specs[0].ingress[1]`); several, joined
    /// by ", ", when rules compile to the same entry.
    pub origin: String,
}

/// One HTTP rule of an L7 allow entry (Cilium's `PortRuleHTTP`): a request matches when every
/// field given matches — `method`, `path` (with the query, as Envoy's `:path`) and `host`
/// are regular expressions matched whole; `headers` are `Name` (present) or `Name: value`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
}

impl From<&crate::policy::HttpRule> for HttpMatch {
    fn from(r: &crate::policy::HttpRule) -> Self {
        // An empty field restricts nothing (as in Cilium).
        let some = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        HttpMatch {
            method: some(&r.method),
            path: some(&r.path),
            host: some(&r.host),
            headers: r.headers.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredService {
    pub id: String,
    pub name: String,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<DesiredBackend>,
    pub algorithm: Algorithm,
    /// Client-IP affinity timeout in seconds.
    pub affinity_timeout: Option<u32>,
}

/// A backend. All of the service's backends are kept so that established connections
/// survive; only `active` ones take new connections (state active and weight > 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredBackend {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub active: bool,
}

/// Why a node's state cannot be compiled: inconsistent input that no choice would make right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("node {0:?} is not in the tenant view")]
    UnknownNode(String),
    #[error(
        "endpoint {endpoint:?} has identity {identity}, outside the allocated range {}..{}",
        identity::FIRST_ALLOCATED,
        identity::CIDR_BASE
    )]
    IdentityOutOfRange { endpoint: String, identity: u32 },
    #[error(
        "endpoints {first:?} and {second:?} share identity {identity} but have different labels"
    )]
    IdentityLabelsMismatch {
        identity: u32,
        first: String,
        second: String,
    },
    #[error("address {prefix} is claimed by {first} and {second} with different identities")]
    AddressConflict {
        prefix: IpNet,
        first: String,
        second: String,
    },
    #[error("endpoint id {0:?} is reserved for the host endpoint")]
    ReservedEndpointId(String),
    #[error("duplicate {kind} id {id:?}")]
    DuplicateId { kind: &'static str, id: String },
    #[error(
        "endpoint {endpoint:?} is on node {node:?} but in cluster {cluster:?}, not the node's"
    )]
    EndpointClusterMismatch {
        endpoint: String,
        node: String,
        cluster: String,
    },
}
