//! Routes, the tunnel device and its neighbours over rtnetlink, for [`crate::routing`].
//! Routes the agent makes carry [`RTPROT_WEFT`] as their protocol: that is how it tells
//! its own from everyone else's, and it never changes or removes a route without it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteIpTunnel, RouteIpTunnelFlags, RouteMessage,
    RouteProtocol,
};
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::{fail, is_errno, Mac, Rtnl};

/// The `rtm_protocol` of every route the agent makes (`ip route` shows `proto 87`); free in
/// iproute2's `rt_protos` list.
pub const RTPROT_WEFT: u8 = 87;

/// A route of the main table, as read back.
#[derive(Debug, Clone)]
pub struct KernelRoute {
    pub dst: IpNet,
    pub protocol: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// The remote end of an `encap ip` route.
    pub encap_dst: Option<Ipv4Addr>,
    msg: RouteMessage,
}

/// A route the agent wants: `dst` via `gateway`, on `oif` (then on-link) or wherever the
/// gateway is, encapsulated to `encap` (VNI, remote) when set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WantedRoute {
    pub dst: IpNet,
    pub gateway: IpAddr,
    pub oif: Option<u32>,
    pub encap: Option<(u32, Ipv4Addr)>,
}

impl KernelRoute {
    /// Whether the kernel's route is exactly `want`.
    pub fn is(&self, want: &WantedRoute) -> bool {
        self.dst == want.dst
            && self.gateway == Some(want.gateway)
            && (want.oif.is_none() || self.oif == want.oif)
            && self.encap_dst == want.encap.map(|(_, remote)| remote)
    }
}

fn parse_route(msg: RouteMessage) -> Option<KernelRoute> {
    let h = &msg.header;
    if h.table != RouteHeader::RT_TABLE_MAIN {
        return None;
    }
    let (mut dst, mut gateway, mut oif, mut encap_dst) = (None, None, None, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(IpAddr::V4(*ip)),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some(IpAddr::V6(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gateway = Some(IpAddr::V6(*ip)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Encap(encaps) => {
                for e in encaps {
                    if let rtnetlink::packet_route::route::RouteLwTunnelEncap::Ip(
                        RouteIpTunnel::Destination(d),
                    ) = e
                    {
                        encap_dst = Some(*d);
                    }
                }
            }
            _ => {}
        }
    }
    let len = h.destination_prefix_length;
    let dst = match dst {
        Some(ip) => IpNet::new(ip, len).ok()?,
        // The default route has no destination attribute.
        None if h.address_family == rtnetlink::packet_route::AddressFamily::Inet6 => {
            IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), len).ok()?
        }
        None => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), len).ok()?,
    };
    Some(KernelRoute {
        dst,
        protocol: u8::from(h.protocol),
        gateway,
        oif,
        encap_dst,
        msg,
    })
}

impl Rtnl {
    /// Every route of the main table, both families.
    pub async fn main_routes(&self) -> io::Result<Vec<KernelRoute>> {
        let mut out = Vec::new();
        for msg in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut routes = self.handle.route().get(msg).execute();
            while let Some(r) = routes
                .try_next()
                .await
                .map_err(|e| fail("listing routes", e))?
            {
                out.extend(parse_route(r));
            }
        }
        Ok(out)
    }

    /// Adds `want` as a Weft route; `replace`: over the existing route of that destination
    /// (which the caller checked is Weft's), else failing when there is one.
    pub async fn add_route(&self, want: &WantedRoute, replace: bool) -> io::Result<()> {
        let what = || format!("adding route {} via {}", want.dst, want.gateway);
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(want.dst.addr(), want.dst.prefix_len())
            .map_err(|e| io::Error::other(format!("{}: {e}", what())))?
            .gateway(want.gateway)
            .map_err(|e| io::Error::other(format!("{}: {e}", what())))?
            .protocol(RouteProtocol::from(RTPROT_WEFT));
        if let Some(oif) = want.oif {
            b = b.output_interface(oif).onlink();
        }
        if let Some((vni, remote)) = want.encap {
            b = b.encap_ip(vec![
                RouteIpTunnel::Id(u64::from(vni)),
                RouteIpTunnel::Destination(remote),
                RouteIpTunnel::Flags(RouteIpTunnelFlags::Key),
            ]);
        }
        let req = self.handle.route().add(b.build());
        let req = if replace { req.replace() } else { req };
        req.execute().await.map_err(|e| fail(what(), e))
    }

    /// Deletes a route read by [`Rtnl::main_routes`]; gone already is fine.
    pub async fn delete_route(&self, route: &KernelRoute) -> io::Result<()> {
        match self.handle.route().del(route.msg.clone()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
            Err(e) => Err(fail(format_args!("deleting route {}", route.dst), e)),
        }
    }

    /// The interface holding address `ip`, if any.
    pub async fn index_with_address(&self, ip: IpAddr) -> io::Result<Option<u32>> {
        let mut addrs = self.handle.address().get().execute();
        while let Some(a) = addrs
            .try_next()
            .await
            .map_err(|e| fail("listing addresses", e))?
        {
            let holds = a.attributes.iter().any(|attr| {
                matches!(attr, AddressAttribute::Address(x) | AddressAttribute::Local(x) if *x == ip)
            });
            if holds {
                return Ok(Some(a.header.index));
            }
        }
        Ok(None)
    }

    /// The MTU of interface `index`.
    pub async fn mtu(&self, index: u32) -> io::Result<u32> {
        self.require_link(index)
            .await?
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("interface {index} has no MTU")))
    }

    /// Sets the MTU of interface `index`.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> io::Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| {
                fail(
                    format_args!("setting the MTU of interface {index} to {mtu}"),
                    e,
                )
            })
    }

    /// Creates a VXLAN device in external (metadata) mode on UDP `port`: each route says
    /// where its packets go (`encap ip`), so one device serves every remote node. No
    /// learning, no ARP: its neighbours are written, never discovered.
    pub async fn add_vxlan(&self, name: &str, port: u16) -> io::Result<()> {
        let msg = LinkVxlan::new(name, 0)
            .port(port)
            .learning(false)
            .collect_metadata(true)
            // No outer UDP checksum over IPv4 (optional there; the inner packet has its own),
            // as the identity programs send it: it is a pass over every byte sent.
            .udp_csum(false)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| fail(format_args!("adding VXLAN device {name}"), e))
    }

    /// Whether interface `index` is a VXLAN device in external mode on `port`.
    pub async fn is_external_vxlan(&self, index: u32, port: u16) -> io::Result<bool> {
        let Some(attributes) = self.link(index).await? else {
            return Ok(false);
        };
        let info = attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                rtnetlink::packet_route::link::LinkInfo::Data(InfoData::Vxlan(v)) => Some(v),
                _ => None,
            }),
            _ => None,
        });
        Ok(info.is_some_and(|v| {
            v.contains(&InfoVxlan::CollectMetadata(true)) && v.contains(&InfoVxlan::Port(port))
        }))
    }

    /// Sets interface `index`'s hardware address and MTU, turns ARP off and sets it up.
    pub async fn configure_tunnel_link(&self, index: u32, mac: Mac, mtu: u32) -> io::Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .mtu(mtu)
            .arp(false)
            .up()
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| fail(format_args!("configuring interface {index}"), e))
    }

    /// The permanent neighbours of interface `index`, by address.
    pub async fn permanent_neighbours(
        &self,
        index: u32,
    ) -> io::Result<Vec<(IpAddr, NeighbourMessage)>> {
        let mut out = Vec::new();
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(n) = neighbours
            .try_next()
            .await
            .map_err(|e| fail("listing neighbours", e))?
        {
            if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
                continue;
            }
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    Some(IpAddr::V4(*ip))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                    Some(IpAddr::V6(*ip))
                }
                _ => None,
            });
            if let Some(ip) = ip {
                out.push((ip, n));
            }
        }
        Ok(out)
    }

    /// Deletes a neighbour read by [`Rtnl::permanent_neighbours`].
    pub async fn delete_neighbour(&self, ip: IpAddr, msg: NeighbourMessage) -> io::Result<()> {
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
            Err(e) => Err(fail(format_args!("deleting neighbour {ip}"), e)),
        }
    }
}
