//! Test workloads and probes: what `weft connectivity test` asks the agents to run.
//!
//! A test workload is an echo server the agent itself runs in a network namespace it
//! creates: a `pod` becomes one of the node's endpoints (labels, identity, policy, like any
//! other); a `world` workload is deliberately not an endpoint, with an address outside the
//! cluster's, so the datapath sees it as the outside world. A probe is one TCP connection
//! the agent makes once, from a workload's namespace (and the node's socket-LB cgroup) or
//! from the node itself, and reports.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// Where the addresses of `world` workloads come from: TEST-NET-2 (RFC 5737), never routed
/// on the internet, so a node's route to one of them shadows nothing real.
pub const WORLD_NET: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(198, 51, 100, 0), 24) {
    Ok(n) => n,
    Err(_) => panic!("a /24 is a valid prefix"),
};

/// The IPv6 addresses of `world` workloads: in the documentation prefix (RFC 3849), never
/// routed on the internet either.
pub const WORLD_NET6: Ipv6Net =
    match Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0), 64) {
        Ok(n) => n,
        Err(_) => panic!("a /64 is a valid prefix"),
    };

/// The echo protocol: the client sends one line, the server answers
/// `<ECHO_GREETING> <workload name> <the line>` and closes.
pub const ECHO_GREETING: &str = "weft-echo";

named_enum!(
    /// What kind of test workload.
    WorkloadKind {
        /// An endpoint of the node, with the workload's labels.
        Pod = "pod",
        /// Outside the cluster: no endpoint, an address in [`WORLD_NET`].
        World = "world",
    }
);

/// A test workload one node's agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredWorkload {
    /// Unique on the node; a pod's endpoint has this name.
    pub name: String,
    pub kind: WorkloadKind,
    pub ip: Ipv4Addr,
    /// Its IPv6 address as well (dual stack), when its node has an IPv6 pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub labels: Labels,
    /// TCP ports the echo server listens on.
    pub echo_ports: Vec<u16>,
}

/// A probe one node's agent runs once and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredProbe {
    pub id: String,
    /// The workload (on this node) it connects from; `None`: the node itself.
    pub from_workload: Option<String>,
    pub target: SocketAddr,
    pub timeout_ms: u32,
    /// Speak HTTP over the connection instead of the echo line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    /// Resolve a name first (the way a pod finds an FQDN's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<ResolveProbe>,
}

/// An HTTP/1.1 request a probe sends (`Connection: close`): its status is the result, and a
/// 200 from an echo server names the workload that answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProbe {
    pub method: String,
    pub path: String,
}

/// A DNS query (UDP, port 53 of `server`) a probe makes before it connects: A for an IPv4
/// target, AAAA for an IPv6 one. The target's address must be in the answer; a name the
/// server refuses or does not know ends the probe there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveProbe {
    pub name: String,
    pub server: IpAddr,
}

/// Why an HTTP method is not one a probe can send (a token of 1 to 16 upper-case letters).
pub fn check_http_method(m: &str) -> Result<(), String> {
    if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{m:?} is not an HTTP method: 1 to 16 upper-case letters, e.g. GET"
        ));
    }
    Ok(())
}

/// Why a path is not one a probe can send: it starts with `/`, has at most 256 characters,
/// all printable ASCII without blanks (anything else is percent-encoded in a request line).
pub fn check_http_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.len() > 256 {
        return Err("must be at most 256 characters".into());
    }
    if !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{p:?} may hold printable ASCII only, no blanks (percent-encode the rest)"
        ));
    }
    Ok(())
}

/// The echo server's answer to an HTTP request for `path`: 200, the echo line of `path`
/// as the body, then close.
pub fn http_echo_response(workload: &str, path: &str) -> String {
    let body = echo_reply(workload, path);
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The status code and body of an HTTP/1.x response read whole (head and body).
pub fn parse_http_response(raw: &str) -> Option<(u16, &str)> {
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    let mut parts = status.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?.parse().ok()?;
    Some((code, body))
}

named_enum!(
    /// How a probe ended.
    ProbeOutcome {
        /// Connected and the echo answered.
        Connected = "connected",
        /// Actively refused (RST or an ICMP error).
        Refused = "refused",
        /// No answer in time: what a policy drop looks like from the client.
        Timeout = "timeout",
        /// Anything else (the workload is missing, a local error); `detail` says what.
        Error = "error",
    }
);

/// What the echo server answers to `line` (see [`ECHO_GREETING`]).
pub fn echo_reply(workload: &str, line: &str) -> String {
    format!("{ECHO_GREETING} {workload} {}\n", line.trim_end())
}

/// The workload name in an echo reply to `line`, if `reply` is one.
pub fn parse_echo_reply<'a>(reply: &'a str, line: &str) -> Option<&'a str> {
    let rest = reply
        .trim_end()
        .strip_prefix(ECHO_GREETING)?
        .strip_prefix(' ')?;
    let (name, echoed) = rest.split_once(' ')?;
    (echoed == line.trim_end() && !name.is_empty()).then_some(name)
}

/// A free address for a new workload in `net`, from the top down (hand-made endpoints are
/// usually numbered from the bottom), skipping the network and broadcast addresses of
/// prefixes shorter than /31 and everything in `taken`.
pub fn allocate(net: Ipv4Net, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let (first, last) = if net.prefix_len() >= 31 {
        (u32::from(net.network()), u32::from(net.broadcast()))
    } else {
        (u32::from(net.network()) + 1, u32::from(net.broadcast()) - 1)
    };
    (first..=last)
        .rev()
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip))
}

/// [`allocate`] for IPv6: a free address in `net` from the top down (no broadcast in IPv6,
/// but the all-zeros subnet-router anycast address is skipped), none of `taken`.
pub fn allocate6(net: Ipv6Net, taken: &BTreeSet<Ipv6Addr>) -> Option<Ipv6Addr> {
    let first = u128::from(net.network()) + u128::from(net.prefix_len() < 127);
    let last = u128::from(net.broadcast());
    // Bounded: at most `taken.len() + 1` candidates are looked at, however big the prefix.
    (first..=last)
        .rev()
        .map(Ipv6Addr::from)
        .find(|ip| !taken.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("prefix")
    }

    #[test]
    fn ipv6_allocation_goes_top_down_skipping_taken_and_the_subnet_router_address() {
        let net: Ipv6Net = "fd00:10:1::/64".parse().expect("prefix");
        let top: Ipv6Addr = "fd00:10:1::ffff:ffff:ffff:ffff".parse().expect("address");
        assert_eq!(allocate6(net, &BTreeSet::new()), Some(top));
        let taken = [top].into_iter().collect();
        assert_eq!(
            allocate6(net, &taken),
            Some("fd00:10:1::ffff:ffff:ffff:fffe".parse().expect("address"))
        );
        let small: Ipv6Net = "fd00::/127".parse().expect("prefix");
        let taken = ["fd00::1".parse().expect("address")].into_iter().collect();
        assert_eq!(
            allocate6(small, &taken),
            Some("fd00::".parse().expect("address"))
        );
        let tiny: Ipv6Net = "fd00::/126".parse().expect("prefix");
        let taken = ["fd00::1", "fd00::2", "fd00::3"]
            .into_iter()
            .map(|a| a.parse().expect("address"))
            .collect();
        assert_eq!(
            allocate6(tiny, &taken),
            None,
            "fd00:: is the subnet-router address"
        );
        assert!(WORLD_NET6.contains(&allocate6(WORLD_NET6, &BTreeSet::new()).expect("free")));
    }

    #[test]
    fn allocation_goes_top_down_and_skips_taken_network_and_broadcast() {
        let taken = BTreeSet::new();
        assert_eq!(
            allocate(net("10.0.1.0/24"), &taken),
            Some(Ipv4Addr::new(10, 0, 1, 254))
        );
        let taken: BTreeSet<Ipv4Addr> =
            [Ipv4Addr::new(10, 0, 1, 254), Ipv4Addr::new(10, 0, 1, 253)]
                .into_iter()
                .collect();
        assert_eq!(
            allocate(net("10.0.1.0/24"), &taken),
            Some(Ipv4Addr::new(10, 0, 1, 252))
        );
        // /30: two usable addresses; both taken means none.
        let taken: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
            .into_iter()
            .collect();
        assert_eq!(allocate(net("10.0.0.0/30"), &taken), None);
        // /32: the one address.
        assert_eq!(
            allocate(net("10.9.9.9/32"), &BTreeSet::new()),
            Some(Ipv4Addr::new(10, 9, 9, 9))
        );
    }

    #[test]
    fn echo_replies_round_trip_and_reject_foreign_answers() {
        let r = echo_reply("echo-same", "probe 42\n");
        assert_eq!(r, "weft-echo echo-same probe 42\n");
        assert_eq!(parse_echo_reply(&r, "probe 42"), Some("echo-same"));
        assert_eq!(parse_echo_reply(&r, "probe 43"), None);
        assert_eq!(
            parse_echo_reply("HTTP/1.0 400 Bad Request\r\n", "probe 42"),
            None
        );
        assert_eq!(parse_echo_reply("weft-echo  probe 42", "probe 42"), None);
    }

    #[test]
    fn http_probes_check_their_request_and_read_the_echo_response() {
        assert!(check_http_method("GET").is_ok());
        for bad in ["", "get", "GE T", "GET\r\n", "ABCDEFGHIJKLMNOPQ"] {
            assert!(check_http_method(bad).is_err(), "{bad:?}");
        }
        assert!(check_http_path("/public/a?x=1").is_ok());
        for bad in [
            "public",
            "/a b",
            "/a\r\nHost: x",
            &format!("/{}", "a".repeat(256)),
        ] {
            assert!(check_http_path(bad).is_err(), "{bad:?}");
        }
        let r = http_echo_response("echo-same", "/public");
        let (code, body) = parse_http_response(&r).expect("a response");
        assert_eq!(code, 200);
        assert_eq!(parse_echo_reply(body, "/public"), Some("echo-same"));
        assert_eq!(
            parse_http_response(
                "HTTP/1.1 403 Forbidden\r\ncontent-length: 13\r\n\r\nAccess denied"
            ),
            Some((403, "Access denied"))
        );
        assert_eq!(parse_http_response("weft-echo a b\n"), None);
        assert_eq!(parse_http_response("SSH-2.0 x\r\n\r\n"), None);
    }

    #[test]
    fn kinds_and_outcomes_parse_what_they_print() {
        for &k in WorkloadKind::ALL {
            assert_eq!(k.as_str().parse::<WorkloadKind>(), Ok(k));
        }
        assert!("vm".parse::<WorkloadKind>().is_err());
        for &o in ProbeOutcome::ALL {
            assert_eq!(o.as_str().parse::<ProbeOutcome>(), Ok(o));
        }
        assert!(WORLD_NET.contains(&Ipv4Addr::new(198, 51, 100, 7)));
    }
}
