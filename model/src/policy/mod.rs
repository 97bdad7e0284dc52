//! The native policy spec. Field names are exactly those of a Cilium `Rule` (the `spec` of a
//! CiliumNetworkPolicy), so a CNP spec is a valid Weft spec.
//!
//! Cilium fields Weft does not implement (`fromRequires`, `fromNodes`, `fromGroups`,
//! `toServices`, `toGroups`, `toRequires`, `toNodes`, `authentication`, Kafka/generic L7,
//! TLS interception...) are still accepted by the parser so that [`PolicySpec::validate`] can
//! refuse them with an explicit "not supported by Weft" error at their path, instead of a
//! vague "unknown field" or, worse, silently dropping them. They are left out of the OpenAPI
//! schema.

pub mod eval;
mod icmp;
pub mod not_enforced;
mod validate;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::FieldError;
use crate::selector::LabelSelector;

pub use eval::{
    enforces_default_deny, evaluate, Decision, Direction, FlowProtocol, Peer, Reason, RuleRef,
    Subject, SubjectKind, Traffic, Verdict,
};
pub use icmp::{IcmpFamily, IcmpField, IcmpRule, IntOrString};
pub use not_enforced::{advice, conditions, Condition, NOT_ENFORCED};
pub use validate::{check_dns, parse_cidr};

/// Holder of a Cilium field Weft refuses; kept as raw JSON only to report it.
pub type Unsupported = Option<serde_json::Value>;

/// One policy rule set, as Cilium's `Rule`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Endpoints (workloads) this policy applies to. Exactly one of `endpointSelector` and
    /// `nodeSelector` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    /// Nodes (their host endpoint) this policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_deny: Vec<IngressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_deny: Vec<EgressRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Cilium rule labels (`source:key=value` strings). Cilium also writes them as
    /// `{key, value, source}` objects; those are read and turned into the string form.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "rule_labels"
    )]
    pub labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
}

/// Cilium's `enableDefaultDeny`. An unset direction defaults to "on if the policy has rules
/// (allow or deny) for that direction".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// An ingress rule; also used for `ingressDeny`, where L7 rules are refused by validation.
///
/// Peer fields (`fromEndpoints`, `fromCIDR`, `fromCIDRSet`, `fromEntities`) distinguish
/// absent (`null` or missing: no constraint from that field) from explicitly empty (`[]`:
/// selects no peer), as Cilium does: an empty, non-nil selector list is not a wildcard, so a
/// rule whose only peer field is `[]` matches nothing even with `toPorts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::flow::IpOrCidr>>)]
    pub from_cidr: Option<Vec<String>>,
    #[serde(
        rename = "fromCIDRSet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Entity names (see [`Entity`]); kept as strings so an unknown one is a validation error
    /// with its path rather than a parse failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Entity>>)]
    pub from_entities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub from_requires: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub from_nodes: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub from_groups: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub authentication: Unsupported,
}

/// Deny rules have the shape of allow rules (see [`IngressRule`] and [`EgressRule`]).
pub type IngressDenyRule = IngressRule;
pub type EgressDenyRule = EgressRule;

/// An egress rule; also used for `egressDeny`, where L7 rules and `toFQDNs` are refused by
/// validation (Cilium has neither on deny rules).
///
/// Peer fields keep absent and `[]` apart exactly as in [`IngressRule`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::flow::IpOrCidr>>)]
    pub to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Entity>>)]
    pub to_entities: Option<Vec<String>>,
    #[serde(rename = "toFQDNs", default, skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub icmps: Vec<IcmpRule>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub to_services: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub to_groups: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub to_requires: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub to_nodes: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub authentication: Unsupported,
}

/// A CIDR with carve-outs (`fromCIDRSet` / `toCIDRSet`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CidrRule {
    // Required (so the schema says); `default` in the type only, so that a missing one is
    // reported with its path.
    #[serde(default)]
    #[schema(value_type = crate::flow::IpOrCidr, required = true)]
    pub cidr: String,
    /// Carve-outs: each must lie inside `cidr` (answered 400 naming the entry otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::flow::IpOrCidr>)]
    pub except: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub cidr_group_ref: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub cidr_group_selector: Unsupported,
}

/// `toFQDNs` entry: exactly one of `matchName` (exact name) or `matchPattern` (`*` matches
/// any run of DNS name characters within one label; a lone `*` matches every name).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FqdnSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

impl FqdnSelector {
    /// Whether a DNS name matches: names compare case-insensitively, ignoring a final dot;
    /// in patterns `*` matches any run of name characters within one label, and a lone `*`
    /// matches every name.
    pub fn matches(&self, name: &str) -> bool {
        eval::fqdn_matches(self, name)
    }

    /// The same selector spelled canonically (lower case, no final dot), so equal
    /// selectors compare equal.
    pub fn normalized(&self) -> Self {
        let norm = |s: &Option<String>| {
            s.as_ref()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
        };
        FqdnSelector {
            match_name: norm(&self.match_name),
            match_pattern: norm(&self.match_pattern),
        }
    }
}

impl fmt::Display for FqdnSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.match_name, &self.match_pattern) {
            (Some(n), _) => write!(f, "matchName: {n}"),
            (None, Some(p)) => write!(f, "matchPattern: {p}"),
            (None, None) => f.write_str("(nothing)"),
        }
    }
}

/// `toPorts` entry: L4 ports, optionally with L7 rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    /// Empty means every port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,

    #[serde(
        rename = "terminatingTLS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(ignore)]
    pub terminating_tls: Unsupported,
    #[serde(
        rename = "originatingTLS",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(ignore)]
    pub originating_tls: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub server_names: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub listener: Unsupported,
}

/// One port or port range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// A number (`0` or absent: any port) or a named port of the destination endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Last port of a range starting at `port` (0–65535). Cross-field rules the schema
    /// cannot state: it needs a non-zero numeric `port` (not a named one) and may not be
    /// lower than it (0 with no `port` means any port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 65535)]
    pub end_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Protocol::is_any")]
    pub protocol: Protocol,
}

/// A port as Cilium writes it: a string holding a number or a port name. Input may also be
/// a JSON/YAML number; it is kept as its decimal string, which is Cilium's own form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub String);

/// [`Port::value`]'s numbers as a regular expression: 0 to 65535 (leading zeros allowed),
/// or `-0`.
pub const PORT_NUMBER_PATTERN: &str =
    "^(0*([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])|-0+)$";
/// [`validate_port_name`] as regular expressions (all must match) and a length: lowercase
/// letters, digits and single `-` between them, with a letter, at most 15.
pub const PORT_NAME_PATTERNS: [&str; 2] = ["^[a-z0-9]+(-[a-z0-9]+)*$", "[a-z]"];

impl utoipa::PartialSchema for Port {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Type};
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let name = PORT_NAME_PATTERNS
            .iter()
            .fold(AllOfBuilder::new(), |b, p| {
                b.item(string().pattern(Some(*p)))
            })
            .item(string().max_length(Some(15)));
        AnyOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(65535)),
            )
            .item(string().pattern(Some(PORT_NUMBER_PATTERN)))
            .item(name)
            .description(Some(
                "A port as Cilium writes it: a number 0 to 65535 (`0`: any port), as a string \
                 or a JSON number (kept as its decimal string, Cilium's own form), or a port \
                 name (IANA service name syntax: 1 to 15 lowercase letters, digits and single \
                 `-` between them, with a letter).",
            ))
            .examples(["443"])
            .into()
    }
}

impl utoipa::ToSchema for Port {}

/// What a [`Port`] means once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortValue {
    /// `0`: any port.
    Any,
    Number(u16),
    /// A named port (IANA service name syntax), resolved against the destination endpoint.
    Named(String),
}

impl Port {
    pub fn new(port: impl Into<String>) -> Self {
        Port(port.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Interprets the port; the error says why it is not a valid port.
    pub fn value(&self) -> Result<PortValue, String> {
        let s = self.0.as_str();
        let numeric = s.strip_prefix('-').unwrap_or(s);
        if !numeric.is_empty() && numeric.bytes().all(|b| b.is_ascii_digit()) {
            return match s.parse::<i64>() {
                Ok(0) => Ok(PortValue::Any),
                Ok(n @ 1..=65535) => Ok(PortValue::Number(n as u16)),
                _ => Err(format!("port {s} out of range 0..65535")),
            };
        }
        validate_port_name(s).map(|()| PortValue::Named(s.to_string()))
    }
}

/// A port an endpoint declares under a name (`http=8080/TCP`), which named-port rules
/// (`port: "http"`) resolve against, per destination endpoint, as in Cilium.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Protocol,
}

impl FromStr for NamedPort {
    type Err = String;
    /// `name=port[/PROTO]`, protocol TCP by default.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("named port {s:?}: expected name=port[/TCP|UDP|SCTP]"))?;
        validate_port_name(name)?;
        let (port, proto) = rest.split_once('/').unwrap_or((rest, "TCP"));
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("named port {s:?}: port must be 1..65535")),
        };
        let protocol = match proto.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                return Err(format!(
                    "named port {s:?}: protocol {other} is not TCP, UDP or SCTP"
                ))
            }
        };
        Ok(NamedPort {
            name: name.to_string(),
            port,
            protocol,
        })
    }
}

impl fmt::Display for NamedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.protocol {
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            _ => "TCP",
        };
        write!(f, "{}={}/{proto}", self.name, self.port)
    }
}

/// IANA service name: 1-15 lowercase alphanumerics and '-', at least one letter, no leading,
/// trailing or doubled '-' (the Kubernetes rule for named container ports).
fn validate_port_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid port {s:?}: must be a number 0..65535 or a port name (1-15 lowercase letters, digits and '-', with a letter)"
        ))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or name")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Port, E> {
                Ok(Port(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                Ok(Port(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                Ok(Port(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// L4 protocol of a port rule. `ANY` (the default) means TCP, UDP and SCTP, as in Cilium.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "ANY")]
    Any,
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
    #[serde(rename = "ICMP")]
    Icmp,
    #[serde(rename = "ICMPv6")]
    IcmpV6,
}

impl Protocol {
    pub fn is_any(&self) -> bool {
        *self == Protocol::Any
    }
}

/// L7 rules of a port rule. Only allowed on allow rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L7Rules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRule>,
    /// DNS proxy rules (which names the endpoint may look up), needed by `toFQDNs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<FqdnSelector>,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub kafka: Unsupported,
    #[serde(rename = "l7proto", default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub l7proto: Unsupported,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub l7: Unsupported,
}

/// An HTTP rule. `method`, `path` and `host` are regular expressions (as in Cilium); every
/// header (`"Name"` or `"Name: value"`) must be present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(ignore)]
    pub header_matches: Unsupported,
}

/// Cilium's entities: named sets of peers that have no labels of their own.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// The local node (and host-network workloads).
    Host,
    /// Other nodes of the cluster.
    RemoteNode,
    /// Everything outside the cluster.
    World,
    /// The IPv4 part of `world`.
    #[serde(rename = "world-ipv4")]
    WorldIpv4,
    /// The IPv6 part of `world`.
    #[serde(rename = "world-ipv6")]
    WorldIpv6,
    /// Everything inside the cluster: endpoints, nodes and the reserved in-cluster peers.
    Cluster,
    /// Everything.
    All,
    /// Health-check endpoints.
    Health,
    /// Workloads not managed by Weft.
    Unmanaged,
    /// Endpoints whose identity is not known yet.
    Init,
    /// The Kubernetes API server.
    KubeApiserver,
    /// The ingress proxy.
    Ingress,
}

impl Entity {
    pub const ALL: [Entity; 12] = [
        Entity::Host,
        Entity::RemoteNode,
        Entity::World,
        Entity::WorldIpv4,
        Entity::WorldIpv6,
        Entity::Cluster,
        Entity::All,
        Entity::Health,
        Entity::Unmanaged,
        Entity::Init,
        Entity::KubeApiserver,
        Entity::Ingress,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Entity::Host => "host",
            Entity::RemoteNode => "remote-node",
            Entity::World => "world",
            Entity::WorldIpv4 => "world-ipv4",
            Entity::WorldIpv6 => "world-ipv6",
            Entity::Cluster => "cluster",
            Entity::All => "all",
            Entity::Health => "health",
            Entity::Unmanaged => "unmanaged",
            Entity::Init => "init",
            Entity::KubeApiserver => "kube-apiserver",
            Entity::Ingress => "ingress",
        }
    }

    /// True for the reserved peers that live inside the cluster.
    pub fn is_in_cluster(&self) -> bool {
        !matches!(
            self,
            Entity::World | Entity::WorldIpv4 | Entity::WorldIpv6 | Entity::All
        )
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not an entity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown entity {0:?}: expected one of host, remote-node, world, world-ipv4, world-ipv6, cluster, all, health, unmanaged, init, kube-apiserver, ingress")]
pub struct UnknownEntity(pub String);

impl FromStr for Entity {
    type Err = UnknownEntity;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownEntity(s.to_string()))
    }
}

/// Reads Cilium rule labels written either as strings or as `{key, value, source}` objects.
fn rule_labels<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum RuleLabel {
        Text(String),
        Object {
            key: String,
            #[serde(default)]
            value: String,
            #[serde(default)]
            source: String,
        },
    }
    let labels = Vec::<RuleLabel>::deserialize(d)?;
    Ok(labels
        .into_iter()
        .map(|l| match l {
            RuleLabel::Text(s) => s,
            RuleLabel::Object { key, value, source } => {
                let mut s = if source.is_empty() {
                    key
                } else {
                    format!("{source}:{key}")
                };
                if !value.is_empty() {
                    s.push('=');
                    s.push_str(&value);
                }
                s
            }
        })
        .collect())
}

impl IngressRule {
    /// Whether any peer field is present (even as `[]`); a rule without one selects every
    /// peer when it has `toPorts`/`icmps`, and nothing otherwise.
    pub fn has_peer_fields(&self) -> bool {
        self.from_endpoints.is_some()
            || self.from_cidr.is_some()
            || self.from_cidr_set.is_some()
            || self.from_entities.is_some()
    }
}

impl EgressRule {
    /// See [`IngressRule::has_peer_fields`].
    pub fn has_peer_fields(&self) -> bool {
        self.to_endpoints.is_some()
            || self.to_cidr.is_some()
            || self.to_cidr_set.is_some()
            || self.to_entities.is_some()
            || self.to_fqdns.is_some()
    }
}

/// The items of an optional list (`None` and `[]` alike give none).
pub(crate) fn items<T>(list: &Option<Vec<T>>) -> &[T] {
    list.as_deref().unwrap_or_default()
}

impl PolicySpec {
    /// Checks the spec, collecting every problem; paths start with `spec.`.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let errors = self.validate_at("spec");
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Like [`PolicySpec::validate`], with paths under `path` (e.g. `specs[1]`).
    pub fn validate_at(&self, path: &str) -> Vec<FieldError> {
        validate::validate_spec(self, path)
    }

    /// The selector that picks this policy's subjects.
    pub fn subject_selector(&self) -> Option<(SubjectKind, &LabelSelector)> {
        match (&self.endpoint_selector, &self.node_selector) {
            (Some(s), _) => Some((SubjectKind::Endpoint, s)),
            (None, Some(s)) => Some((SubjectKind::Node, s)),
            (None, None) => None,
        }
    }
}

/// Accepts a policy body that carries either `spec` (one) or `specs` (a list), validates
/// every spec with paths pointing at what the caller wrote (`spec.…` or `specs[i].…`), and
/// returns the list a Weft policy stores.
pub fn specs_from(
    spec: Option<PolicySpec>,
    specs: Option<Vec<PolicySpec>>,
) -> Result<Vec<PolicySpec>, Vec<FieldError>> {
    let (list, single) = match (spec, specs) {
        (Some(_), Some(_)) => {
            return Err(vec![FieldError::new(
                "spec",
                "set either spec or specs, not both",
            )])
        }
        (None, None) => {
            return Err(vec![FieldError::new(
                "spec",
                "one of spec or specs is required",
            )])
        }
        (Some(spec), None) => (vec![spec], true),
        (None, Some(specs)) if specs.is_empty() => {
            return Err(vec![FieldError::new(
                "specs",
                "must contain at least one spec",
            )])
        }
        (None, Some(specs)) => (specs, false),
    };
    let errors: Vec<FieldError> = list
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.validate_at(&if single {
                "spec".to_string()
            } else {
                format!("specs[{i}]")
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(list)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
pub(crate) mod tests;
