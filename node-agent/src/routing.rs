//! Routes to the other nodes' pods: what the desired state's routing mode and cluster nodes
//! ask (worked out by [`weft_model::routing::pod_routes`]) made true in the agent's network
//! namespace, after every applied message that changed them.
//!
//! - tunnel: one VXLAN device ([`TUNNEL_DEVICE`], external mode, UDP 8472) with a MAC
//!   address derived from the node's IPv4 address ([`tunnel_mac`]), so every node knows every
//!   other node's without asking; per other node a permanent neighbour entry and a route per
//!   pod CIDR `via <node> dev weft_vxlan onlink encap ip dst <node>`. The device's MTU is
//!   the underlay's minus the encapsulation.
//! - native: per other node a route per pod CIDR `via <node>`, the tunnel device removed.
//!
//! Every route the agent makes has protocol [`RTPROT_WEFT`]; one it did not make is never
//! changed or removed (a destination already routed by someone else is reported and left).
//! Routes stay when the agent stops or the control plane is away: nothing is flushed.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weft_model::desired::NodeDesiredState;
use weft_model::routing::{pod_mtu, pod_routes, ClusterNode, RoutingMode, VXLAN_PORT};

use crate::control::ItemError;
use crate::netlink::routes::{KernelRoute, WantedRoute, RTPROT_WEFT};
use crate::netlink::{Mac, Rtnl};

/// The tunnel device.
pub const TUNNEL_DEVICE: &str = "weft_vxlan";

/// The VNI of packets that carry no source identity: the receiving node resolves the
/// source from its address.
pub const VNI_NO_IDENTITY: u32 = 0;

/// The tunnel MAC address of the node with IPv4 address `ip`: locally administered
/// (`0a:57` then the address), so a node's is known from its address alone.
pub fn tunnel_mac(ip: Ipv4Addr) -> Mac {
    let o = ip.octets();
    [0x0a, 0x57, o[0], o[1], o[2], o[3]]
}

/// The IPv6 next hop of IPv6 pod CIDRs through the tunnel to the node with IPv4 address
/// `ip`: a link-local address made from the same bytes (IPv6 routes cannot name an IPv4
/// gateway), resolved by a permanent neighbour entry to [`tunnel_mac`].
pub fn tunnel_gateway6(ip: Ipv4Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        0,
        0x0a57,
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    )
}

/// What routing follows from: the mode, the node's own addresses and the cluster's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    mode: RoutingMode,
    own: Vec<IpAddr>,
    nodes: Vec<ClusterNode>,
}

/// What applying routing left: the MTU pod interfaces should have (`None`: unknown) and
/// whether the tunnel device is there (its programs to be attached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub pod_mtu: Option<u32>,
    pub tunnel: bool,
}

/// Keeps the agent's routes to other nodes' pods at the desired state.
#[derive(Default)]
pub struct Router {
    /// What was last applied without error (applied again when anything fails).
    last: Option<Inputs>,
}

/// A routing problem as the ack reports it (item `routing`).
pub fn item(message: impl Into<String>) -> ItemError {
    ItemError {
        item: "routing".to_string(),
        message: message.into(),
    }
}

impl Router {
    /// Brings the routes to what `state` asks; returns what could not be done and the MTU
    /// pod interfaces should have. A state without cluster nodes (a control plane that
    /// predates routing) leaves everything as it is.
    pub async fn apply(&mut self, state: &NodeDesiredState) -> (Vec<ItemError>, Applied) {
        if state.nodes.is_empty() {
            return (Vec::new(), Applied::default());
        }
        let inputs = Inputs {
            mode: state.routing,
            own: state.host_ips().to_vec(),
            nodes: state.nodes.clone(),
        };
        let mut errors = Vec::new();
        let applied = match self.reconcile(&inputs, &mut errors).await {
            Ok(pod_mtu) => Applied {
                pod_mtu,
                tunnel: inputs.mode == RoutingMode::Tunnel,
            },
            Err(e) => {
                errors.push(item(e.to_string()));
                Applied::default()
            }
        };
        self.last = errors.is_empty().then_some(inputs);
        (errors, applied)
    }

    /// Whether `state` asks for something other than what was last applied.
    pub fn changed(&self, state: &NodeDesiredState) -> bool {
        self.last.as_ref().is_none_or(|l| {
            l.mode != state.routing || l.own != state.host_ips() || l.nodes != state.nodes
        })
    }

    /// Returns the pod MTU (`None`: the underlay's is unknown).
    async fn reconcile(
        &self,
        inputs: &Inputs,
        errors: &mut Vec<ItemError>,
    ) -> std::io::Result<Option<u32>> {
        let rtnl = Rtnl::current()?;
        let (routes, problems) = pod_routes(inputs.mode, &inputs.own, &inputs.nodes);
        errors.extend(problems.into_iter().map(item));
        let own_v4 = inputs.own.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        // The underlay: the interface with the node's address. A node registered with an
        // address it does not hold (behind NAT) still tunnels; its MTU is then unknown.
        let underlay_mtu = match own_v4 {
            Some(ip) => match rtnl.index_with_address(IpAddr::V4(ip)).await? {
                Some(i) => Some(rtnl.mtu(i).await?),
                None => {
                    tracing::warn!(address = %ip, "no interface holds the node's address; pod MTU left as it is");
                    None
                }
            },
            None => None,
        };
        let tunnel = rtnl.index(TUNNEL_DEVICE).await?;
        let mut wanted = Vec::new();
        match inputs.mode {
            RoutingMode::Native => {
                if let Some(i) = tunnel {
                    rtnl.delete_link(i).await?;
                }
                wanted.extend(routes.iter().map(|r| WantedRoute {
                    dst: r.cidr,
                    gateway: r.via,
                    oif: None,
                    encap: None,
                }));
            }
            RoutingMode::Tunnel => {
                let Some(own) = own_v4 else {
                    return Err(std::io::Error::other(format!(
                        "tunnel mode needs an IPv4 node address (the node's addresses: {:?})",
                        inputs.own
                    )));
                };
                // Unknown underlay: Ethernet's 1500 assumed for the device; pods keep theirs
                // (PMTU discovery then does the rest).
                let device_mtu = pod_mtu(inputs.mode, underlay_mtu.unwrap_or(1500));
                let index = ensure_tunnel(&rtnl, tunnel, own, device_mtu).await?;
                let mut remotes = BTreeSet::new();
                for r in &routes {
                    let IpAddr::V4(remote) = r.via else { continue };
                    remotes.insert(remote);
                    let gateway = match r.cidr {
                        ipnet::IpNet::V4(_) => r.via,
                        ipnet::IpNet::V6(_) => IpAddr::V6(tunnel_gateway6(remote)),
                    };
                    wanted.push(WantedRoute {
                        dst: r.cidr,
                        gateway,
                        oif: Some(index),
                        encap: Some((VNI_NO_IDENTITY, remote)),
                    });
                }
                sync_neighbours(&rtnl, index, &remotes, errors).await?;
            }
        }
        sync_routes(&rtnl, &wanted, errors).await?;
        Ok(underlay_mtu.map(|u| pod_mtu(inputs.mode, u)))
    }
}

/// The tunnel device, made (or remade, when something else has its name) and configured.
async fn ensure_tunnel(
    rtnl: &Rtnl,
    existing: Option<u32>,
    own: Ipv4Addr,
    mtu: u32,
) -> std::io::Result<u32> {
    let index = match existing {
        Some(i) if rtnl.is_external_vxlan(i, VXLAN_PORT).await? => i,
        other => {
            if let Some(i) = other {
                rtnl.delete_link(i).await?;
            }
            rtnl.add_vxlan(TUNNEL_DEVICE, VXLAN_PORT).await?;
            rtnl.require(TUNNEL_DEVICE).await?
        }
    };
    // Only what differs: a MAC set again, even to itself, is a change event to the stack.
    let mac = tunnel_mac(own);
    if rtnl.mac(index).await? != mac || rtnl.mtu(index).await? != mtu {
        rtnl.configure_tunnel_link(index, mac, mtu).await?;
    }
    Ok(index)
}

/// Per remote node two permanent neighbours on the tunnel device, its IPv4 address and its
/// IPv6 link-local next hop, both to its MAC; no other: every neighbour there is the agent's.
async fn sync_neighbours(
    rtnl: &Rtnl,
    index: u32,
    remotes: &BTreeSet<Ipv4Addr>,
    errors: &mut Vec<ItemError>,
) -> std::io::Result<()> {
    for (ip, msg) in rtnl.permanent_neighbours(index).await? {
        let keep = remotes
            .iter()
            .any(|r| ip == IpAddr::V4(*r) || ip == IpAddr::V6(tunnel_gateway6(*r)));
        if !keep {
            rtnl.delete_neighbour(ip, msg).await?;
        }
    }
    for remote in remotes {
        for ip in [IpAddr::V4(*remote), IpAddr::V6(tunnel_gateway6(*remote))] {
            if let Err(e) = rtnl.replace_neighbour(index, ip, tunnel_mac(*remote)).await {
                errors.push(item(e.to_string()));
            }
        }
    }
    Ok(())
}

/// Makes the Weft routes of the main table exactly `wanted`: adds what is missing, replaces
/// what differs, removes the rest of its own; a destination routed by someone else is
/// reported and left alone.
async fn sync_routes(
    rtnl: &Rtnl,
    wanted: &[WantedRoute],
    errors: &mut Vec<ItemError>,
) -> std::io::Result<()> {
    let current = rtnl.main_routes().await?;
    let ours = |r: &&KernelRoute| r.protocol == RTPROT_WEFT;
    for r in current.iter().filter(ours) {
        if !wanted.iter().any(|w| w.dst == r.dst) {
            rtnl.delete_route(r).await?;
        }
    }
    for w in wanted {
        let existing = current.iter().find(|r| r.dst == w.dst);
        let result = match existing {
            Some(r) if r.protocol != RTPROT_WEFT => {
                errors.push(item(format!(
                    "{}: already routed by someone else (protocol {}); left alone",
                    w.dst, r.protocol
                )));
                continue;
            }
            Some(r) if r.is(w) => continue,
            Some(_) => rtnl.add_route(w, true).await,
            None => rtnl.add_route(w, false).await,
        };
        if let Err(e) = result {
            errors.push(item(e.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_tunnel_mac_is_its_address_locally_administered() {
        let mac = tunnel_mac(Ipv4Addr::new(192, 168, 100, 2));
        assert_eq!(mac, [0x0a, 0x57, 192, 168, 100, 2]);
        assert_eq!(mac[0] & 0b10, 0b10, "locally administered");
        assert_eq!(mac[0] & 0b01, 0, "unicast");
        assert_eq!(
            tunnel_gateway6(Ipv4Addr::new(192, 168, 100, 2)).to_string(),
            "fe80::a57:c0a8:6402"
        );
    }
}
