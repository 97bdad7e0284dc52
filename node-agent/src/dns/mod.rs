//! DNS in the agent: the wire format the DNS proxy reads (`message`) and a UDP lookup
//! (`lookup`: probes and the test tools ask resolvers with it). The proxy itself is
//! in `proxy::dns`; what the node learns from the answers it passes, for `toFQDNs`, in
//! `datapath::fqdn`.

pub mod message;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// Asks `server` over UDP for the `qtype` records of `name` from the calling thread's
/// namespace and waits up to `timeout` for the answer to this query (a stray datagram, or
/// the answer to another query, is skipped).
pub fn lookup(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    timeout: Duration,
) -> io::Result<message::Answer> {
    let id = rand::random::<u16>();
    let query = message::build::query(id, name, qtype);
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(server)?;
    s.send(&query)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.recv(&mut buf)?;
        match message::answer(&buf[..n]) {
            Ok(a) if a.question.id == id => return Ok(a),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_reads_the_answer_to_its_own_query() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = server.local_addr().expect("addr");
        let ip = std::net::Ipv4Addr::new(198, 51, 100, 7);
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 512];
            let (n, from) = server.recv_from(&mut b).expect("query");
            // A stray datagram first: skipped.
            server.send_to(b"junk", from).expect("send");
            let q = message::question(&b[..n]).expect("a query");
            let a = message::build::answer(
                &b[..n],
                0,
                &[(q.name.as_str(), 5, message::build::Record::Ip(ip.into()))],
            );
            server.send_to(&a, from).expect("send");
        });
        let a = lookup(
            addr,
            "echo.allowed.test",
            message::TYPE_A,
            Duration::from_secs(2),
        )
        .expect("answer");
        t.join().expect("server");
        assert_eq!(a.rcode, 0);
        assert_eq!(a.question.name, "echo.allowed.test");
        assert_eq!(a.addresses[0].ip, std::net::IpAddr::from(ip));
    }
}
