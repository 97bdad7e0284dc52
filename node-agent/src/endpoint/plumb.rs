//! The `ip` commands that join an endpoint's namespace to the node (see the scheme in
//! [`super`]). Everything on the node side happens in the calling process's network
//! namespace (the agent's), never in another one; inside the endpoint's namespace through
//! `nsenter --net`. Every step is idempotent (`replace`), so `ensure` repairs as well as
//! creates.

use super::{EndpointError, Record, GATEWAY, POD_IFNAME};
use crate::netns;

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

fn mac(out: &str, ifname: &str) -> std::io::Result<String> {
    out.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .ok_or_else(|| std::io::Error::other(format!("no MAC for {ifname}")))
}

/// Creates (or repairs) the endpoint's veth pair, addresses, routes and neighbours.
pub fn ensure(rec: &Record) -> Result<(), EndpointError> {
    let ns = rec.netns_path();
    if !ns.exists() {
        return Err(EndpointError::NamespaceMissing(ns.display().to_string()));
    }
    let in_ns = |args: &[&str]| netns::ip_in(&ns, args).map_err(|e| fail(rec, e));
    let host = |args: &[&str]| netns::ip(args).map_err(|e| fail(rec, e));
    let host_if = rec.interface.as_str();
    if !link_exists(host_if) {
        if in_ns(&["link", "show", POD_IFNAME]).is_ok() {
            return Err(EndpointError::Plumbing {
                name: rec.name.clone(),
                message: format!(
                    "namespace {} already has an interface {POD_IFNAME}",
                    rec.netns
                ),
            });
        }
        let ns_arg = ns.display().to_string();
        host(&[
            "link", "add", host_if, "type", "veth", "peer", "name", POD_IFNAME, "netns", &ns_arg,
        ])?;
    }
    // Routing between endpoints (and to other nodes) is the node's forwarding.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| fail(rec, e))?;
    host(&["link", "set", host_if, "up"])?;
    in_ns(&["link", "set", "lo", "up"])?;
    in_ns(&["link", "set", POD_IFNAME, "up"])?;
    let host_mac =
        mac(&host(&["-br", "link", "show", host_if])?, host_if).map_err(|e| fail(rec, e))?;
    let pod_mac =
        mac(&in_ns(&["-br", "link", "show", POD_IFNAME])?, POD_IFNAME).map_err(|e| fail(rec, e))?;
    let ip = rec.ip.to_string();
    let gw = GATEWAY.to_string();
    in_ns(&["addr", "replace", &format!("{ip}/32"), "dev", POD_IFNAME])?;
    in_ns(&["route", "replace", &gw, "dev", POD_IFNAME, "scope", "link"])?;
    in_ns(&["route", "replace", "default", "via", &gw, "dev", POD_IFNAME])?;
    in_ns(&[
        "neigh",
        "replace",
        &gw,
        "lladdr",
        &host_mac,
        "dev",
        POD_IFNAME,
        "nud",
        "permanent",
    ])?;
    host(&["route", "replace", &format!("{ip}/32"), "dev", host_if])?;
    host(&[
        "neigh",
        "replace",
        &ip,
        "lladdr",
        &pod_mac,
        "dev",
        host_if,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Deletes the veth pair (its routes and neighbours go with it). Nothing to do when it is
/// already gone.
pub fn remove(rec: &Record) -> Result<(), EndpointError> {
    if !link_exists(&rec.interface) {
        return Ok(());
    }
    match netns::ip(&["link", "del", &rec.interface]) {
        Ok(_) => Ok(()),
        Err(_) if !link_exists(&rec.interface) => Ok(()),
        Err(e) => Err(fail(rec, e)),
    }
}
