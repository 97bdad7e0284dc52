//! Joins an endpoint's namespace to the node (see the scheme in [`super`]) over rtnetlink.
//! Everything on the node side happens in the agent's own network namespace, never in
//! another one; inside the endpoint's namespace through a socket opened there. Every step
//! is a `replace`, so `ensure` repairs as well as creates.

use std::net::IpAddr;

use super::{EndpointError, Record, GATEWAY, GATEWAY6, POD_IFNAME};
use crate::netlink::Rtnl;

fn fail(rec: &Record, e: std::io::Error) -> EndpointError {
    EndpointError::Plumbing {
        name: rec.name.clone(),
        message: e.to_string(),
    }
}

/// Whether an interface of that name exists in the calling thread's network namespace
/// (`if_nametoindex`; `/sys/class/net` would show the namespace sysfs was mounted in).
pub fn link_exists(ifname: &str) -> bool {
    crate::datapath::ifindex(ifname).is_ok()
}

/// Creates (or repairs) the endpoint's veth pair, addresses, routes and neighbours; `mtu`:
/// of both ends of the pair (0: as the kernel made them).
pub async fn ensure(rec: &Record, mtu: u32) -> Result<(), EndpointError> {
    let ns = rec.netns_path();
    if !ns.exists() {
        return Err(EndpointError::NamespaceMissing(ns.display().to_string()));
    }
    plumb(rec, &ns, mtu).await.map_err(|e| fail(rec, e))
}

/// Sets the MTU of both ends of the endpoint's veth pair.
pub async fn set_mtu(rec: &Record, mtu: u32) -> Result<(), EndpointError> {
    let set = async {
        let host = Rtnl::current()?;
        let pod = Rtnl::in_netns(&rec.netns_path())?;
        host.set_mtu(host.require(&rec.interface).await?, mtu)
            .await?;
        pod.set_mtu(pod.require(POD_IFNAME).await?, mtu).await
    };
    set.await.map_err(|e| fail(rec, e))
}

async fn plumb(rec: &Record, ns: &std::path::Path, mtu: u32) -> Result<(), std::io::Error> {
    let host = Rtnl::current()?;
    let pod = Rtnl::in_netns(ns)?;
    let host_if = rec.interface.as_str();
    if host.index(host_if).await?.is_none() {
        if pod.index(POD_IFNAME).await?.is_some() {
            return Err(std::io::Error::other(format!(
                "namespace {} already has an interface {POD_IFNAME}",
                rec.netns
            )));
        }
        host.add_veth(host_if, POD_IFNAME, ns).await?;
    }
    // Routing between endpoints (and to other nodes) is the node's forwarding.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    let host_idx = host.require(host_if).await?;
    let pod_idx = pod.require(POD_IFNAME).await?;
    if mtu > 0 {
        // The pod's packets must fit what the node forwards them over (the tunnel's
        // headers included): a computed MTU, not path MTU discovery after a drop.
        host.set_mtu(host_idx, mtu).await?;
        pod.set_mtu(pod_idx, mtu).await?;
    }
    host.set_up(host_idx).await?;
    pod.set_up(pod.require("lo").await?).await?;
    pod.set_up(pod_idx).await?;
    let host_mac = host.mac(host_idx).await?;
    let pod_mac = pod.mac(pod_idx).await?;
    let ip = IpAddr::V4(rec.ip);
    pod.replace_address(pod_idx, ip, 32).await?;
    pod.replace_route(IpAddr::V4(GATEWAY), 32, None, pod_idx)
        .await?;
    pod.replace_route(
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        0,
        Some(IpAddr::V4(GATEWAY)),
        pod_idx,
    )
    .await?;
    pod.replace_neighbour(pod_idx, IpAddr::V4(GATEWAY), host_mac)
        .await?;
    host.replace_route(ip, 32, None, host_idx).await?;
    host.replace_neighbour(host_idx, ip, pod_mac).await?;
    if let Some(ip6) = rec.ip6 {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        {
            // The address is the endpoint's alone: no duplicate address detection (it
            // would keep the address tentative, unusable, for a second or more).
            let _in = crate::netns::enter_netns(ns)?;
            std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{POD_IFNAME}/accept_dad"),
                "0",
            )?;
        }
        let ip6 = IpAddr::V6(ip6);
        pod.replace_address(pod_idx, ip6, 128).await?;
        pod.replace_neighbour(pod_idx, IpAddr::V6(GATEWAY6), host_mac)
            .await?;
        // A link-local gateway is on-link: no route to it needed.
        pod.replace_route(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            0,
            Some(IpAddr::V6(GATEWAY6)),
            pod_idx,
        )
        .await?;
        host.replace_route(ip6, 128, None, host_idx).await?;
        host.replace_neighbour(host_idx, ip6, pod_mac).await?;
    }
    Ok(())
}

/// Deletes the veth pair (its routes and neighbours go with it). Nothing to do when it is
/// already gone.
pub async fn remove(rec: &Record) -> Result<(), EndpointError> {
    let gone = async {
        let host = Rtnl::current()?;
        if let Some(idx) = host.index(&rec.interface).await? {
            host.delete_link(idx).await?;
        }
        Ok(())
    };
    gone.await.map_err(|e| fail(rec, e))
}
