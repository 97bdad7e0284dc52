//! Endpoints the agent creates on its node (`node-agent endpoint add|del|list`), CNI-like.
//!
//! An endpoint is a network namespace (a pod, a VM's workload) joined to the node by a veth
//! pair. The scheme (Cilium-style routed /32s, no bridge, no overlay):
//! - the host side is `lxc` + 12 hex digits of a hash of the endpoint name (15 characters,
//!   the kernel's limit; the same name always gives the same interface), in the agent's own
//!   network namespace; the namespace side is `eth0`;
//! - the endpoint gets its address as a /32, a link route to the gateway `169.254.1.1` and a
//!   default route through it, with a permanent neighbour entry mapping the gateway to the
//!   host side's MAC (nothing answers ARP for it: none is needed); with an IPv6 address as
//!   well, the same as a /128 with the gateway `fe80::1` (no duplicate address detection:
//!   the address is the endpoint's alone);
//! - the node gets a /32 (/128) route to the endpoint through the host side and a permanent
//!   neighbour entry for it, and forwards (`ip_forward`, IPv6 `forwarding`). Traffic between
//!   nodes is routed by the agent ([`crate::routing`]);
//! - the datapath's endpoint programs are attached to the host side (pinned links).
//!
//! What was added is recorded in `endpoints.json` in the state directory, so a restarted
//! agent re-creates what is missing, re-attaches, and reports the same set.
//! [`manager::Manager`] does the work, [`api`] serves it on a unix socket and is the CLI's
//! client, [`plumb`] makes the veth pair, addresses, routes and neighbours over rtnetlink.

pub mod api;
pub mod manager;
pub mod plumb;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_model::labels::{validate_labels, Labels};
use weft_model::names::validate_name;
use weft_model::policy::NamedPort;

/// The gateway address endpoints route through (link-local; never on the wire).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway of dual-stack endpoints (link-local).
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The endpoint side of the veth pair.
pub const POD_IFNAME: &str = "eth0";
/// The state file of the endpoints this agent created.
pub const STORE_FILE: &str = "endpoints.json";

/// Why an endpoint could not be added, removed or listed. The message names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("endpoint name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("labels: {0}")]
    BadLabels(String),
    #[error("ip {value:?}: {reason}")]
    BadIp { value: String, reason: String },
    #[error("network namespace {0} does not exist")]
    NamespaceMissing(String),
    #[error("ip {ip} is already used by endpoint {other:?}")]
    IpInUse { ip: IpAddr, other: String },
    #[error("endpoint {name:?} already exists with other settings ({existing}); delete it first")]
    Exists { name: String, existing: String },
    #[error("network namespace {netns} already holds endpoint {other:?}")]
    NamespaceInUse { netns: String, other: String },
    #[error("interface {ifname} already exists and is not endpoint {name:?}'s")]
    InterfaceTaken { ifname: String, name: String },
    #[error("plumbing endpoint {name:?}: {message}")]
    Plumbing { name: String, message: String },
    #[error("attaching the datapath to {ifname}: {message}")]
    Datapath { ifname: String, message: String },
    #[error("endpoint state {path}: {message}")]
    Store { path: String, message: String },
}

impl EndpointError {
    /// The HTTP status the node-local API answers with.
    pub fn status(&self) -> u16 {
        match self {
            EndpointError::BadName { .. }
            | EndpointError::BadLabels(_)
            | EndpointError::BadIp { .. } => 400,
            EndpointError::NamespaceMissing(_) => 404,
            EndpointError::IpInUse { .. }
            | EndpointError::Exists { .. }
            | EndpointError::NamespaceInUse { .. }
            | EndpointError::InterfaceTaken { .. } => 409,
            EndpointError::Plumbing { .. }
            | EndpointError::Datapath { .. }
            | EndpointError::Store { .. } => 500,
        }
    }
}

/// What `endpoint add` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub name: String,
    /// A namespace name under `/run/netns`, or a path (`/proc/<pid>/ns/net`, a bind mount).
    pub netns: String,
    /// `A.B.C.D` or `A.B.C.D/32`.
    pub ip: String,
    /// An IPv6 address as well (dual stack): `X::Y` or `X::Y/128`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<String>,
    #[serde(default)]
    pub labels: Labels,
    /// Ports declared by name (`http=8080/TCP`), for named-port policy rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

/// A validated spec, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Dual stack: the IPv6 address as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub labels: Labels,
    /// Host-side veth.
    pub interface: String,
    /// Ports declared by name (records written before they existed have none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

impl Record {
    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.netns)
    }

    fn describe(&self) -> String {
        format!(
            "netns {}, ip {}, labels {}",
            self.netns,
            self.addresses(),
            format_labels(&self.labels)
        )
    }

    /// Its addresses as shown: `10.0.1.5/32` or `10.0.1.5/32,fd00:1::5/128`.
    pub fn addresses(&self) -> String {
        match self.ip6 {
            Some(v6) => format!("{}/32,{v6}/128", self.ip),
            None => format!("{}/32", self.ip),
        }
    }

    /// Its addresses.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(IpAddr::V4(self.ip)).chain(self.ip6.map(IpAddr::V6))
    }
}

/// `/run/netns/<name>` for a bare name, the path itself otherwise.
pub fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

/// `k=v,k2=v2` (sorted).
pub fn format_labels(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `app=web,tier=front` (empty: no labels) and checks keys and values as the control
/// plane will.
pub fn parse_labels(s: &str) -> Result<Labels, EndpointError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(EndpointError::BadLabels(format!(
                "{part:?} is not key=value"
            )));
        };
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(EndpointError::BadLabels(format!("key {k:?} given twice")));
        }
    }
    check_labels(&out)?;
    Ok(out)
}

fn check_labels(labels: &Labels) -> Result<(), EndpointError> {
    validate_labels(labels).map_err(|errs| {
        EndpointError::BadLabels(
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// The `--ip` values of `endpoint add`: one IPv4 address and at most one IPv6 address, in
/// any order.
pub fn split_ips(ips: &[String]) -> Result<(String, Option<String>), EndpointError> {
    let (v6, v4): (Vec<&String>, Vec<&String>) = ips.iter().partition(|s| s.contains(':'));
    let bad = |value: String, reason: &str| EndpointError::BadIp {
        value,
        reason: reason.to_string(),
    };
    match (v4.as_slice(), v6.as_slice()) {
        ([a], []) => Ok(((*a).clone(), None)),
        ([a], [b]) => Ok(((*a).clone(), Some((*b).clone()))),
        ([], _) => Err(bad(
            ips.join(" "),
            "an endpoint needs an IPv4 address (and may have one IPv6 address)",
        )),
        _ => Err(bad(
            ips.join(" "),
            "at most one address of each family (one IPv4, one IPv6)",
        )),
    }
}

/// A host address `A` or `A/<bits>` of one family: the address, or why not (`bad`).
fn parse_host<T: std::str::FromStr>(s: &str, bits: &str, family: &str) -> Result<T, EndpointError> {
    let bad = |reason: String| EndpointError::BadIp {
        value: s.to_string(),
        reason,
    };
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    if prefix.is_some_and(|p| p != bits) {
        return Err(bad(format!("an endpoint {family} address is a /{bits}")));
    }
    addr.parse()
        .map_err(|_| bad(format!("not an {family} address (…/{bits})")))
}

/// `X::Y` or `X::Y/128`: an endpoint's IPv6 address (global or unique local).
pub fn parse_ip6(s: &str) -> Result<Ipv6Addr, EndpointError> {
    let bad = |reason: &str| EndpointError::BadIp {
        value: s.to_string(),
        reason: reason.to_string(),
    };
    let ip: Ipv6Addr = parse_host(s, "128", "IPv6")?;
    let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || link_local {
        return Err(bad("not a global or unique-local unicast address"));
    }
    if ip.to_ipv4_mapped().is_some() {
        return Err(bad("an IPv4-mapped address; give the IPv4 address as such"));
    }
    Ok(ip)
}

/// `A.B.C.D` or `A.B.C.D/32`: an endpoint's IPv4 address.
pub fn parse_ip(s: &str) -> Result<Ipv4Addr, EndpointError> {
    let bad = |reason: &str| EndpointError::BadIp {
        value: s.to_string(),
        reason: reason.to_string(),
    };
    let ip: Ipv4Addr = parse_host(s, "32", "IPv4")?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(bad("not a unicast address"));
    }
    if ip == GATEWAY {
        return Err(bad("reserved for the endpoints' gateway"));
    }
    Ok(ip)
}

/// The host-side interface of an endpoint: `lxc` + 12 hex digits of FNV-1a of the name.
pub fn host_ifname(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("lxc{:012x}", h >> 16)
}

impl EndpointSpec {
    /// Checks the spec (without touching the system) and returns its record.
    pub fn validate(&self) -> Result<Record, EndpointError> {
        validate_name(&self.name).map_err(|e| EndpointError::BadName {
            name: self.name.clone(),
            reason: e.to_string(),
        })?;
        check_labels(&self.labels)?;
        if self.netns.is_empty() {
            return Err(EndpointError::NamespaceMissing("\"\"".into()));
        }
        Ok(Record {
            name: self.name.clone(),
            netns: self.netns.clone(),
            ip: parse_ip(&self.ip)?,
            ip6: self.ip6.as_deref().map(parse_ip6).transpose()?,
            labels: self.labels.clone(),
            interface: host_ifname(&self.name),
            named_ports: self.named_ports.clone(),
        })
    }
}

/// The endpoints this agent created, persisted (0600) in the state directory.
#[derive(Debug, Default)]
pub struct Store {
    path: PathBuf,
    /// The file exists: the agent owns the node's endpoint set and reports it (an agent that
    /// never created an endpoint leaves endpoints reported by other means alone).
    pub managed: bool,
    pub endpoints: BTreeMap<String, Record>,
}

/// What [`Store::plan_add`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddPlan {
    /// New endpoint.
    Create,
    /// The same endpoint exists: make sure its plumbing is in place (idempotent add).
    Ensure,
}

impl Store {
    pub fn load(state_dir: &Path) -> Result<Store, EndpointError> {
        let path = state_dir.join(STORE_FILE);
        let err = |message: String| EndpointError::Store {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<Record> =
                    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
                Ok(Store {
                    endpoints: list.into_iter().map(|r| (r.name.clone(), r)).collect(),
                    managed: true,
                    path,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store {
                path,
                ..Store::default()
            }),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Writes the file atomically (temporary file, then rename), mode 0600.
    pub fn save(&mut self) -> Result<(), EndpointError> {
        let err = |message: String| EndpointError::Store {
            path: self.path.display().to_string(),
            message,
        };
        let list: Vec<&Record> = self.endpoints.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| err(e.to_string()))?;
        crate::files::replace_private(&self.path, &bytes).map_err(|e| err(e.to_string()))?;
        self.managed = true;
        Ok(())
    }

    /// Whether `rec` can be added next to the recorded endpoints.
    pub fn plan_add(&self, rec: &Record) -> Result<AddPlan, EndpointError> {
        if let Some(existing) = self.endpoints.get(&rec.name) {
            return if existing == rec {
                Ok(AddPlan::Ensure)
            } else {
                Err(EndpointError::Exists {
                    name: rec.name.clone(),
                    existing: existing.describe(),
                })
            };
        }
        for other in self.endpoints.values() {
            if let Some(ip) = rec.ips().find(|ip| other.ips().any(|o| o == *ip)) {
                return Err(EndpointError::IpInUse {
                    ip,
                    other: other.name.clone(),
                });
            }
            if other.netns_path() == rec.netns_path() {
                return Err(EndpointError::NamespaceInUse {
                    netns: rec.netns.clone(),
                    other: other.name.clone(),
                });
            }
            if other.interface == rec.interface {
                return Err(EndpointError::InterfaceTaken {
                    ifname: rec.interface.clone(),
                    name: rec.name.clone(),
                });
            }
        }
        Ok(AddPlan::Create)
    }

    /// The report the control plane gets: every recorded endpoint with its labels and address.
    pub fn report(&self) -> weft_proto::v1::EndpointReport {
        weft_proto::v1::EndpointReport {
            endpoints: self
                .endpoints
                .values()
                .map(|r| weft_proto::v1::ReportedEndpoint {
                    name: r.name.clone(),
                    labels: r
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    ips: r.ips().map(|ip| ip.to_string()).collect(),
                    named_ports: r
                        .named_ports
                        .iter()
                        .map(|p| weft_proto::v1::NamedPort {
                            name: p.name.clone(),
                            port: u32::from(p.port),
                            proto: match p.protocol {
                                weft_model::policy::Protocol::Udp => 17,
                                weft_model::policy::Protocol::Sctp => 132,
                                _ => 6,
                            },
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, netns: &str, ip: &str) -> EndpointSpec {
        EndpointSpec {
            name: name.into(),
            netns: netns.into(),
            ip: ip.into(),
            ip6: None,
            labels: parse_labels("app=web,tier=front").expect("labels"),
            named_ports: vec![],
        }
    }

    #[test]
    fn a_dual_stack_endpoint_has_one_address_of_each_family() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            split_ips(&s(&["fd00:1::5/128", "10.0.1.5/32"])).expect("dual"),
            ("10.0.1.5/32".to_string(), Some("fd00:1::5/128".to_string()))
        );
        for bad in [&["fd00:1::5"][..], &["10.0.1.5", "10.0.1.6"], &[]] {
            assert!(split_ips(&s(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_ip6("fd00:1::5/128").expect("ula"),
            "fd00:1::5".parse::<Ipv6Addr>().unwrap()
        );
        for bad in [
            "fe80::1",
            "::1",
            "ff02::1",
            "fd00::5/64",
            "::ffff:10.0.0.1",
            "10.0.0.1",
        ] {
            assert!(parse_ip6(bad).is_err(), "{bad}");
        }
        let mut rec = spec("web-1", "ns1", "10.0.1.5").validate().expect("valid");
        rec.ip6 = Some("fd00:1::5".parse().unwrap());
        assert_eq!(rec.addresses(), "10.0.1.5/32,fd00:1::5/128");
        let mut store = Store::default();
        store.endpoints.insert(rec.name.clone(), rec);
        let mut other = spec("web-2", "ns2", "10.0.1.6").validate().expect("valid");
        other.ip6 = Some("fd00:1::5".parse().unwrap());
        let e = store
            .plan_add(&other)
            .expect_err("the IPv6 address is taken");
        assert!(
            e.to_string()
                .contains("fd00:1::5 is already used by endpoint \"web-1\""),
            "{e}"
        );
    }

    #[test]
    fn host_interface_names_are_stable_short_and_distinct() {
        let a = host_ifname("web-1");
        assert_eq!(a, host_ifname("web-1"));
        assert_eq!(a.len(), 15, "{a}");
        assert!(a.starts_with("lxc"));
        assert_ne!(a, host_ifname("web-2"));
        let long = "a".repeat(63);
        assert_eq!(host_ifname(&long).len(), 15);
    }

    #[test]
    fn labels_parse_and_are_checked() {
        let l = parse_labels("app=web, tier=front").expect("labels");
        assert_eq!(format_labels(&l), "app=web,tier=front");
        assert!(parse_labels("").expect("empty").is_empty());
        let e = parse_labels("app").expect_err("no =").to_string();
        assert!(e.contains("\"app\" is not key=value"), "{e}");
        let e = parse_labels("app=a,app=b").expect_err("twice").to_string();
        assert!(e.contains("given twice"), "{e}");
        let e = parse_labels("app=has space")
            .expect_err("bad value")
            .to_string();
        assert!(e.starts_with("labels: "), "{e}");
    }

    #[test]
    fn addresses_are_single_ipv4_hosts() {
        assert_eq!(
            parse_ip("10.0.1.5/32").expect("ip"),
            Ipv4Addr::new(10, 0, 1, 5)
        );
        assert_eq!(
            parse_ip("10.0.1.5").expect("ip"),
            Ipv4Addr::new(10, 0, 1, 5)
        );
        for bad in ["10.0.1.0/24", "fd00::1", "0.0.0.0", "169.254.1.1", "x"] {
            let e = parse_ip(bad).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn specs_validate_into_records() {
        let r = spec("web-1", "pod1", "10.0.1.5/32")
            .validate()
            .expect("valid");
        assert_eq!(r.interface, host_ifname("web-1"));
        assert_eq!(r.netns_path(), PathBuf::from("/run/netns/pod1"));
        let by_path = spec("web-1", "/proc/1/ns/net", "10.0.1.5");
        assert_eq!(
            by_path.validate().expect("valid").netns_path(),
            PathBuf::from("/proc/1/ns/net")
        );
        let e = spec("Web_1", "pod1", "10.0.1.5")
            .validate()
            .expect_err("name");
        assert!(matches!(e, EndpointError::BadName { .. }), "{e}");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn adds_are_idempotent_and_conflicts_are_named() {
        let mut store = Store::default();
        let web = spec("web-1", "pod1", "10.0.1.5").validate().expect("valid");
        assert_eq!(store.plan_add(&web).expect("plan"), AddPlan::Create);
        store.endpoints.insert(web.name.clone(), web.clone());
        assert_eq!(store.plan_add(&web).expect("plan"), AddPlan::Ensure);

        let same_ip = spec("web-2", "pod2", "10.0.1.5").validate().expect("valid");
        let e = store.plan_add(&same_ip).expect_err("ip in use");
        assert_eq!(
            e.to_string(),
            "ip 10.0.1.5 is already used by endpoint \"web-1\""
        );
        assert_eq!(e.status(), 409);

        let same_ns = spec("web-2", "/run/netns/pod1", "10.0.1.6")
            .validate()
            .expect("valid");
        assert!(matches!(
            store.plan_add(&same_ns),
            Err(EndpointError::NamespaceInUse { .. })
        ));

        let changed = spec("web-1", "pod1", "10.0.1.7").validate().expect("valid");
        let e = store.plan_add(&changed).expect_err("exists").to_string();
        assert!(
            e.contains("already exists") && e.contains("10.0.1.5/32"),
            "{e}"
        );

        let report = store.report();
        assert_eq!(report.endpoints.len(), 1);
        assert_eq!(report.endpoints[0].ips, vec!["10.0.1.5".to_string()]);
        assert_eq!(report.endpoints[0].labels["tier"], "front");
    }

    #[test]
    fn the_store_round_trips_privately() {
        let dir = std::env::temp_dir().join(format!("weft-ep-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut store = Store::load(&dir).expect("load");
        assert!(!store.managed && store.endpoints.is_empty());
        let web = spec("web-1", "pod1", "10.0.1.5").validate().expect("valid");
        store.endpoints.insert(web.name.clone(), web.clone());
        store.save().expect("save");
        let again = Store::load(&dir).expect("load");
        assert!(again.managed);
        assert_eq!(again.endpoints.get("web-1"), Some(&web));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(STORE_FILE))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
