//! Node-to-node routing of pod traffic: the cluster's mode, the nodes an agent routes to,
//! and the routes and MTU that follow from them. Pure: the agent programs what this says.
//!
//! - [`RoutingMode::Tunnel`] (the default, as in Cilium): a packet to another node's pod
//!   CIDR is encapsulated in VXLAN to that node's IPv4 address; the underlay only has to
//!   carry node addresses.
//! - [`RoutingMode::Native`]: a route per other node's pod CIDR via that node's address of
//!   the same family; the underlay has to carry pod addresses (a shared L2, or routes).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

named_enum!(
    /// How the nodes of a cluster carry pod traffic to each other.
    RoutingMode {
        /// VXLAN between node addresses (the default): the underlay only carries node addresses.
        Tunnel = "tunnel",
        /// A route per other node's pod CIDR via that node's address: the underlay carries pod addresses.
        Native = "native",
    }
);

// `named_enum!` derives no `Default`.
#[allow(clippy::derivable_impls)]
impl Default for RoutingMode {
    fn default() -> Self {
        RoutingMode::Tunnel
    }
}

/// UDP port of the VXLAN tunnel (Linux's and Cilium's default, not IANA's 4789).
pub const VXLAN_PORT: u16 = 8472;

/// Bytes VXLAN adds over an IPv4 underlay: outer IPv4 (20), UDP (8), VXLAN (8) and the
/// inner Ethernet header (14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;

/// The smallest MTU an IPv6 link may have; a pod interface below it cannot carry IPv6.
pub const MIN_MTU_V6: u32 = 1280;

/// A node of the cluster as the others route to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// Unique in the cluster; the key of deltas.
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
}

/// One route to another node's pods: `cidr` through the node at `via` (the next hop in
/// native mode, the tunnel's remote end in tunnel mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRoute {
    pub cidr: IpNet,
    pub via: IpAddr,
}

/// The routes a node needs to reach the pods of the cluster's other `nodes` (the list
/// may include the node itself: any node sharing one of `own_addresses` is skipped), and
/// what it cannot route, one line each, naming the node and why. A CIDR claimed by two
/// nodes, or overlapping the node's own pod CIDRs, is routed to neither: sending a pod's
/// packets to the wrong node is worse than not sending them.
pub fn pod_routes(
    mode: RoutingMode,
    own_addresses: &[IpAddr],
    nodes: &[ClusterNode],
) -> (Vec<PodRoute>, Vec<String>) {
    let (mut routes, mut problems) = (Vec::new(), Vec::new());
    let is_own = |n: &ClusterNode| n.addresses.iter().any(|a| own_addresses.contains(a));
    let own_cidrs: Vec<IpNet> = nodes
        .iter()
        .filter(|n| is_own(n))
        .flat_map(|n| n.pod_cidrs.iter().copied())
        .collect();
    let mut claimed: Vec<(IpNet, &str)> = Vec::new();
    for node in nodes.iter().filter(|n| !is_own(n)) {
        for cidr in &node.pod_cidrs {
            let via = match mode {
                // The tunnel runs over IPv4 whatever the inner family.
                RoutingMode::Tunnel => node.addresses.iter().find(|a| a.is_ipv4()),
                RoutingMode::Native => node
                    .addresses
                    .iter()
                    .find(|a| a.is_ipv4() == matches!(cidr, IpNet::V4(_))),
            };
            let Some(via) = via else {
                let family = match (mode, cidr) {
                    (RoutingMode::Native, IpNet::V6(_)) => "IPv6",
                    _ => "IPv4",
                };
                problems.push(format!(
                    "node {}: no {family} address to route {cidr} through ({mode} mode)",
                    node.name
                ));
                continue;
            };
            if let Some(own) = own_cidrs.iter().find(|o| overlaps(o, cidr)) {
                problems.push(format!(
                    "node {}: pod CIDR {cidr} overlaps this node's {own}; not routed",
                    node.name
                ));
                continue;
            }
            claimed.push((*cidr, node.name.as_str()));
            routes.push(PodRoute {
                cidr: *cidr,
                via: *via,
            });
        }
    }
    // Two other nodes claiming overlapping CIDRs: neither gets the traffic.
    let mut conflicted = Vec::new();
    for (i, (a, na)) in claimed.iter().enumerate() {
        for (b, nb) in &claimed[i + 1..] {
            if na != nb && overlaps(a, b) {
                problems.push(format!(
                    "nodes {na} and {nb} claim overlapping pod CIDRs {a} and {b}; neither is routed"
                ));
                conflicted.extend([*a, *b]);
            }
        }
    }
    routes.retain(|r| !conflicted.contains(&r.cidr));
    routes.sort();
    routes.dedup();
    (routes, problems)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The MTU of pod interfaces (and of the tunnel device) on an underlay whose MTU is
/// `underlay`: what is left once the mode's encapsulation is paid for, so a full-size pod
/// packet is never fragmented or dropped on the way.
pub fn pod_mtu(mode: RoutingMode, underlay: u32) -> u32 {
    match mode {
        RoutingMode::Tunnel => underlay.saturating_sub(VXLAN_OVERHEAD_V4),
        RoutingMode::Native => underlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addrs: &[&str], cidrs: &[&str]) -> ClusterNode {
        ClusterNode {
            name: name.into(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn route(cidr: &str, via: &str) -> PodRoute {
        PodRoute {
            cidr: cidr.parse().unwrap(),
            via: via.parse().unwrap(),
        }
    }

    #[test]
    fn every_other_node_is_routed_and_the_node_itself_is_not() {
        let nodes = [
            node("n1", &["192.168.1.1"], &["10.0.1.0/24"]),
            node("n2", &["192.168.1.2"], &["10.0.2.0/24"]),
            node("n3", &["192.168.1.3"], &["10.0.3.0/24"]),
        ];
        let own = ["192.168.1.1".parse().unwrap()];
        for mode in [RoutingMode::Tunnel, RoutingMode::Native] {
            let (routes, problems) = pod_routes(mode, &own, &nodes);
            assert_eq!(
                routes,
                vec![
                    route("10.0.2.0/24", "192.168.1.2"),
                    route("10.0.3.0/24", "192.168.1.3")
                ]
            );
            assert!(problems.is_empty(), "{problems:?}");
        }
    }

    #[test]
    fn native_routes_each_family_via_an_address_of_that_family_and_the_tunnel_via_ipv4() {
        let nodes = [
            node(
                "n2",
                &["fd00::2", "192.168.1.2"],
                &["10.0.2.0/24", "fd00:2::/64"],
            ),
            node("v6only", &["fd00::3"], &["10.0.3.0/24", "fd00:3::/64"]),
        ];
        let (routes, problems) = pod_routes(RoutingMode::Native, &[], &nodes);
        assert_eq!(
            routes,
            vec![
                route("10.0.2.0/24", "192.168.1.2"),
                route("fd00:2::/64", "fd00::2"),
                route("fd00:3::/64", "fd00::3"),
            ]
        );
        assert_eq!(
            problems,
            vec!["node v6only: no IPv4 address to route 10.0.3.0/24 through (native mode)"]
        );
        let (routes, problems) = pod_routes(RoutingMode::Tunnel, &[], &nodes);
        assert_eq!(
            routes,
            vec![
                route("10.0.2.0/24", "192.168.1.2"),
                route("fd00:2::/64", "192.168.1.2"),
            ]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn overlapping_pod_cidrs_are_routed_to_no_one() {
        let nodes = [
            node("me", &["192.168.1.1"], &["10.0.1.0/24"]),
            node("a", &["192.168.1.2"], &["10.0.0.0/16"]),
            node("b", &["192.168.1.3"], &["10.0.3.0/24"]),
            node("c", &["192.168.1.4"], &["10.0.3.128/25"]),
            node("d", &["192.168.1.5"], &["10.0.5.0/24"]),
        ];
        let own = ["192.168.1.1".parse().unwrap()];
        let (routes, problems) = pod_routes(RoutingMode::Tunnel, &own, &nodes);
        assert_eq!(routes, vec![route("10.0.5.0/24", "192.168.1.5")]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("overlaps this node's 10.0.1.0/24"));
        assert!(problems[1].contains("nodes b and c"));
    }

    #[test]
    fn the_tunnel_pays_for_its_headers_in_the_mtu() {
        assert_eq!(pod_mtu(RoutingMode::Tunnel, 1500), 1450);
        assert_eq!(pod_mtu(RoutingMode::Native, 1500), 1500);
        assert_eq!(pod_mtu(RoutingMode::Tunnel, 9001), 8951);
        assert_eq!(RoutingMode::default(), RoutingMode::Tunnel);
        assert_eq!("Native".parse::<RoutingMode>(), Ok(RoutingMode::Native));
    }
}
