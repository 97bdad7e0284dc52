//! Load-balanced services: frontends (VIP, port, protocol) spread over backends.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::FieldError;

/// Longest client-IP affinity we keep: one day.
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86_400;
/// Most frontends and backends one service may have (bounded so a table fits a map value).
pub const MAX_FRONTENDS: usize = 64;
pub const MAX_BACKENDS: usize = 4096;

/// Transport protocol of a service frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum L4Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl L4Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            L4Protocol::Tcp => "TCP",
            L4Protocol::Udp => "UDP",
        }
    }
}

/// How a backend is chosen for a new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Uniformly random among ready backends (weighted).
    #[default]
    Random,
    /// Consistent hashing of the 5-tuple over a Maglev table: a client stays on its
    /// backend when other backends come and go.
    Maglev,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Random => "random",
            Algorithm::Maglev => "maglev",
        }
    }
}

/// A backend's lifecycle state. Only `active` backends receive new connections;
/// `terminating` ones keep their established connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Active,
    Terminating,
    Quarantined,
    Maintenance,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
            BackendState::Quarantined => "quarantined",
            BackendState::Maintenance => "maintenance",
        }
    }

    /// Whether new connections may be sent to a backend in this state.
    pub fn takes_new_connections(self) -> bool {
        matches!(self, BackendState::Active)
    }
}

impl std::str::FromStr for BackendState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Self::Active),
            "terminating" => Ok(Self::Terminating),
            "quarantined" => Ok(Self::Quarantined),
            "maintenance" => Ok(Self::Maintenance),
            other => Err(format!("unknown backend state {other:?}")),
        }
    }
}

crate::contract_schema! {
    /// An IPv4 or IPv6 address, as `IpAddr` parses it.
    IpAddress => crate::contract::ip_address_any_of()
        .description(Some(
            "An IPv4 or IPv6 address. A service's addresses may not be unspecified \
             (0.0.0.0, ::), multicast or broadcast.",
        ))
        .examples(["10.96.0.10"])
}

/// The `frontends` of a service: at least one, at most [`MAX_FRONTENDS`], no two alike.
pub fn frontends_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name("Frontend"))
        .min_items(Some(1))
        .max_items(Some(MAX_FRONTENDS))
        .unique_items(true)
        .description(Some(
            "At least one frontend, all of one address family, no two with the same VIP, \
             port and protocol.",
        ))
        .build()
}

/// The `backends` of a service: at most [`MAX_BACKENDS`], no two alike.
pub fn backends_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name("Backend"))
        .max_items(Some(MAX_BACKENDS))
        .unique_items(true)
        .description(Some(
            "Of the frontends' address family, none at a frontend's VIP, no two with the \
             same address and port.",
        ))
        .build()
}

/// A virtual address clients connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    #[schema(value_type = IpAddress, example = "10.96.0.10")]
    pub vip: IpAddr,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    pub protocol: L4Protocol,
}

/// A real address that serves a frontend's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    #[schema(value_type = IpAddress, example = "10.0.1.5")]
    pub address: IpAddr,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    /// Relative share of new connections; 0 drains the backend.
    #[serde(default = "default_weight")]
    #[schema(minimum = 0, maximum = 65535, default = 1)]
    pub weight: u32,
    #[serde(default)]
    pub state: BackendState,
}

fn default_weight() -> u32 {
    1
}

/// Client-IP session affinity: a client keeps its backend for `timeout_seconds` of idleness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAffinity {
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_seconds: u32,
}

/// What a service does: the load-balancing part of a service resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub frontends: Vec<Frontend>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
}

impl ServiceSpec {
    /// Checks everything the types cannot: collects every problem, each with its field path.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        if self.frontends.is_empty() {
            errs.push(FieldError::new(
                "frontends",
                "a service needs at least one frontend",
            ));
        }
        if self.frontends.len() > MAX_FRONTENDS {
            errs.push(FieldError::new(
                "frontends",
                format!(
                    "at most {MAX_FRONTENDS} frontends, got {}",
                    self.frontends.len()
                ),
            ));
        }
        if self.backends.len() > MAX_BACKENDS {
            errs.push(FieldError::new(
                "backends",
                format!(
                    "at most {MAX_BACKENDS} backends, got {}",
                    self.backends.len()
                ),
            ));
        }
        let family = self.frontends.first().map(|f| f.vip.is_ipv4());
        let mut seen = HashSet::new();
        for (i, f) in self.frontends.iter().enumerate() {
            let at = |field: &str| format!("frontends[{i}].{field}");
            if let Some(why) = unusable_address(f.vip) {
                errs.push(FieldError::new(at("vip"), format!("{} is {why}", f.vip)));
            }
            if family.is_some_and(|v4| v4 != f.vip.is_ipv4()) {
                errs.push(FieldError::new(
                    at("vip"),
                    "all frontends of a service must be of one address family",
                ));
            }
            if f.port == 0 {
                errs.push(FieldError::new(
                    at("port"),
                    "port must be between 1 and 65535",
                ));
            }
            if !seen.insert((f.vip, f.port, f.protocol)) {
                errs.push(FieldError::new(
                    at("vip"),
                    format!(
                        "duplicate frontend {}:{}/{}",
                        f.vip,
                        f.port,
                        f.protocol.as_str()
                    ),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            let at = |field: &str| format!("backends[{i}].{field}");
            if let Some(why) = unusable_address(b.address) {
                errs.push(FieldError::new(
                    at("address"),
                    format!("{} is {why}", b.address),
                ));
            }
            if family.is_some_and(|v4| v4 != b.address.is_ipv4()) {
                errs.push(FieldError::new(
                    at("address"),
                    "backends must be of the frontends' address family",
                ));
            }
            if self.frontends.iter().any(|f| f.vip == b.address) {
                errs.push(FieldError::new(
                    at("address"),
                    format!("{} is a frontend VIP of this service", b.address),
                ));
            }
            if b.port == 0 {
                errs.push(FieldError::new(
                    at("port"),
                    "port must be between 1 and 65535",
                ));
            }
            if b.weight > u32::from(u16::MAX) {
                errs.push(FieldError::new(
                    at("weight"),
                    "weight must be between 0 and 65535",
                ));
            }
            if !seen.insert((b.address, b.port)) {
                errs.push(FieldError::new(
                    at("address"),
                    format!("duplicate backend {}:{}", b.address, b.port),
                ));
            }
        }
        if let Some(a) = &self.session_affinity {
            if a.timeout_seconds == 0 || a.timeout_seconds > MAX_AFFINITY_TIMEOUT_SECONDS {
                errs.push(FieldError::new(
                    "session_affinity.timeout_seconds",
                    format!("must be between 1 and {MAX_AFFINITY_TIMEOUT_SECONDS}"),
                ));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// Backends that may take new connections (active with a non-zero weight).
    pub fn ready_backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends
            .iter()
            .filter(|b| b.state.takes_new_connections() && b.weight > 0)
    }
}

/// Why an address cannot be a VIP or a backend, if it cannot.
fn unusable_address(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> ServiceSpec {
        serde_json::from_value(json).expect("test spec parses")
    }

    fn fields(s: &ServiceSpec) -> Vec<String> {
        match s.validate() {
            Ok(()) => vec![],
            Err(e) => e.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn valid_service_with_defaults() {
        let s = spec(serde_json::json!({
            "frontends": [{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
            "backends": [{"address": "10.0.1.5", "port": 8080}, {"address": "10.0.1.6", "port": 8080, "weight": 3, "state": "terminating"}],
            "algorithm": "maglev",
            "session_affinity": {"timeout_seconds": 600}
        }));
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.backends[0].weight, 1);
        assert_eq!(s.backends[0].state, BackendState::Active);
        assert_eq!(
            s.ready_backends().count(),
            1,
            "terminating backend takes no new connections"
        );
    }

    #[test]
    fn validation_table() {
        let fe = serde_json::json!({"vip": "10.96.0.10", "port": 80, "protocol": "TCP"});
        let cases = [
            (serde_json::json!({"frontends": []}), vec!["frontends"]),
            (
                serde_json::json!({"frontends": [{"vip": "0.0.0.0", "port": 80, "protocol": "TCP"}]}),
                vec!["frontends[0].vip"],
            ),
            (
                serde_json::json!({"frontends": [{"vip": "10.96.0.10", "port": 0, "protocol": "UDP"}]}),
                vec!["frontends[0].port"],
            ),
            (
                serde_json::json!({"frontends": [fe, fe]}),
                vec!["frontends[1].vip"],
            ),
            (
                serde_json::json!({"frontends": [fe, {"vip": "fd00::1", "port": 80, "protocol": "TCP"}]}),
                vec!["frontends[1].vip"],
            ),
            (
                serde_json::json!({"frontends": [fe], "backends": [{"address": "10.96.0.10", "port": 80}]}),
                vec!["backends[0].address"],
            ),
            (
                serde_json::json!({"frontends": [fe], "backends": [{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.1", "port": 80}]}),
                vec!["backends[1].address"],
            ),
            (
                serde_json::json!({"frontends": [fe], "backends": [{"address": "10.0.0.1", "port": 80, "weight": 70000}]}),
                vec!["backends[0].weight"],
            ),
            (
                serde_json::json!({"frontends": [fe], "backends": [{"address": "fd00::2", "port": 80}]}),
                vec!["backends[0].address"],
            ),
            (
                serde_json::json!({"frontends": [fe], "session_affinity": {"timeout_seconds": 0}}),
                vec!["session_affinity.timeout_seconds"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(fields(&spec(input.clone())), want, "input {input}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<ServiceSpec, _> = serde_json::from_value(serde_json::json!({
            "frontends": [{"vip": "10.96.0.10", "port": 80, "protocol": "TCP", "extra": 1}]
        }));
        assert!(r.is_err());
    }
}
