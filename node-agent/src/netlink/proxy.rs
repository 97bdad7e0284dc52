//! The node namespace's plumbing for the L7 proxy: the device the endpoint programs redirect
//! ingress connections into, and the policy routing that delivers packets marked for the
//! proxy locally (a socket the datapath assigns takes a packet only on local delivery):
//! `ip rule add fwmark 0xa00/0xf00 lookup 2004` and `ip route add local default dev lo
//! table 2004`, for IPv4 and IPv6.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::rule::RuleAttribute;
use rtnetlink::RouteMessageBuilder;
use weft_datapath_common as c;

use super::{fail, is_errno, Rtnl};

/// The proxy device in the node's namespace (a veth; its peer is unused).
pub const PROXY_DEVICE: &str = "weftpx";
const PROXY_PEER: &str = "weftpx1";
/// The routing table holding the local default routes.
pub const PROXY_TABLE: u32 = 2004;
/// Before the main table (32766), after the local one (0).
const RULE_PRIORITY: u32 = 9;

/// Writes a sysctl of the calling thread's network namespace.
fn sysctl(name: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{name}");
    std::fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

impl Rtnl {
    /// Creates (or repairs) the proxy device and the policy routing; returns the device's
    /// index.
    pub async fn ensure_proxy_routing(&self) -> io::Result<u32> {
        let index = match self.index(PROXY_DEVICE).await? {
            Some(i) => i,
            None => {
                // A veth pair (both ends here): every kernel has veth, not every one dummy.
                self.add_veth(
                    PROXY_DEVICE,
                    PROXY_PEER,
                    Path::new("/proc/thread-self/ns/net"),
                )
                .await?;
                self.require(PROXY_DEVICE).await?
            }
        };
        self.set_up(index).await?;
        let peer = self.require(PROXY_PEER).await?;
        self.set_up(peer).await?;
        let lo = self.require("lo").await?;
        self.set_up(lo).await?;
        for v6 in [false, true] {
            let mut rule = self
                .handle
                .rule()
                .add()
                .fw_mark(c::MARK_PROXY)
                .priority(RULE_PRIORITY)
                .table_id(PROXY_TABLE)
                .action(rtnetlink::packet_route::rule::RuleAction::ToTable);
            rule.message_mut()
                .attributes
                .push(RuleAttribute::FwMask(c::MARK_MAGIC_MASK));
            let res = if v6 {
                rule.v6().execute().await
            } else {
                rule.v4().execute().await
            };
            match res {
                Err(e) if !is_errno(&e, libc::EEXIST) => {
                    return Err(fail("adding the L7 proxy routing rule", e))
                }
                _ => {}
            }
            let any = if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            let route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(any, 0)
                .map_err(|e| io::Error::other(format!("the L7 proxy route: {e}")))?
                .output_interface(lo)
                .table_id(PROXY_TABLE)
                .kind(RouteType::Local)
                .scope(RouteScope::Host)
                .build();
            self.handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(|e| fail("adding the L7 proxy local route", e))?;
        }
        // Packets redirected into the device come from addresses routed elsewhere: no
        // reverse-path filter on it.
        sysctl(&format!("net/ipv4/conf/{PROXY_DEVICE}/rp_filter"), "0")?;
        // The egress proxy's upstream connections to this node's endpoints come back into
        // the ingress proxy from the node's own address.
        sysctl(&format!("net/ipv4/conf/{PROXY_DEVICE}/accept_local"), "1")?;
        // Early demux would hand a client's packets straight to the proxy's connection
        // socket (it holds the endpoint's address) before routing, which then forwards
        // them and drops them for carrying a socket: every packet must reach the endpoint's
        // program, which redirects it.
        sysctl("net/ipv4/tcp_early_demux", "0")?;
        sysctl("net/ipv4/udp_early_demux", "0")?;
        Ok(index)
    }
}
