//! The DNS part of `bench-l7`: A queries from the client pod to a resolver in the server pod,
//! straight (an L3/L4 allow) and through the DNS proxy (a DNS rule allowing every name, and
//! a `toFQDNs` selector in force so each answer is learned, as in use), in the same run.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use weft_model::policy::FqdnSelector;

use node_agent::datapath::{Action, Direction, PolicyEntry};
use node_agent::dns::message::{self, build};

use super::l7::{clients, Figures};

/// The name the benchmark asks for (the resolver answers one address).
pub const NAME: &str = "bench.weft.test";

/// The DNS rules of the proxied mode: every name.
pub fn rules() -> Vec<FqdnSelector> {
    vec![FqdnSelector {
        match_name: None,
        match_pattern: Some("*".into()),
    }]
}

/// The `toFQDNs` selector in force in the proxied mode (it matches [`NAME`]).
pub fn selector() -> FqdnSelector {
    FqdnSelector {
        match_name: None,
        match_pattern: Some("*.weft.test".into()),
    }
}

fn entry(
    direction: Direction,
    peer: Option<u32>,
    proto: Option<u8>,
    port: Option<u16>,
    action: Action,
) -> PolicyEntry {
    PolicyEntry {
        direction,
        peer_identity: peer,
        proto,
        ports: port.map(|p| (p, p)),
        action,
        rule_id: 0,
    }
}

/// The client's egress entries: everything allowed, and with `proxy` (the DNS proxy's port,
/// the selector's id) DNS redirected to the proxy and a `toFQDNs` entry in force.
pub fn client_entries(proxy: Option<(u16, u32)>) -> Vec<PolicyEntry> {
    let mut out = vec![entry(Direction::Egress, None, None, None, Action::Allow)];
    if let Some((proxy_port, selector)) = proxy {
        out.push(entry(
            Direction::Egress,
            None,
            Some(17),
            Some(53),
            Action::Redirect { proxy_port },
        ));
        out.push(entry(
            Direction::Egress,
            Some(selector),
            Some(6),
            Some(443),
            Action::Allow,
        ));
    }
    out
}

/// The server's ingress entry for DNS from the client.
pub fn server_entry(client: u32) -> PolicyEntry {
    entry(
        Direction::Ingress,
        Some(client),
        Some(17),
        Some(53),
        Action::Allow,
    )
}

/// Sequential A queries on `conns` sockets from the pod namespace `from` for `window`.
pub fn queries(
    from: &Path,
    resolver: SocketAddr,
    conns: usize,
    window: Duration,
) -> Result<Figures> {
    clients(from, conns, window, move |end| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(resolver)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let (mut buf, mut lat) = ([0u8; 512], Vec::new());
        let mut id: u16 = 0;
        while Instant::now() < end {
            id = id.wrapping_add(1);
            let q = build::query(id, NAME, message::TYPE_A);
            let t = Instant::now();
            s.send(&q)?;
            loop {
                let n = s.recv(&mut buf)?;
                let a = message::answer(&buf[..n]).map_err(std::io::Error::other)?;
                if a.question.id != id {
                    continue;
                }
                if a.rcode != 0 || a.addresses.is_empty() {
                    return Err(std::io::Error::other(format!("answer {a:?}")));
                }
                lat.push(t.elapsed());
                break;
            }
        }
        Ok(lat)
    })
}
