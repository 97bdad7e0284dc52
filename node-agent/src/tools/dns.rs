//! A small DNS resolver (UDP and TCP) answering fixed names, and a client, for the tests
//! of DNS rules and `toFQDNs` and for `bench l7`.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{readable, set_recv_timeout, Server};
use crate::dns::message::{self, build, Answer};
use crate::netns::NetNs;

/// Response code for a name the resolver does not know.
pub const RCODE_NXDOMAIN: u8 = 3;

/// Name -> its addresses and their TTL.
pub type Records = BTreeMap<String, (Vec<IpAddr>, u32)>;

fn respond(query: &[u8], records: &Records) -> Option<Vec<u8>> {
    let q = message::question(query).ok()?;
    let Some((ips, ttl)) = records.get(&q.name) else {
        return Some(build::answer(query, RCODE_NXDOMAIN, &[]));
    };
    let wanted = |ip: &&IpAddr| match q.qtype {
        message::TYPE_A => ip.is_ipv4(),
        message::TYPE_AAAA => ip.is_ipv6(),
        _ => false,
    };
    let recs: Vec<(&str, u32, build::Record)> = ips
        .iter()
        .filter(wanted)
        .map(|ip| (q.name.as_str(), *ttl, build::Record::Ip(*ip)))
        .collect();
    Some(build::answer(query, 0, &recs))
}

impl Server {
    /// A resolver on `addr` (UDP and TCP) answering `records` (A and AAAA), NXDOMAIN for
    /// other names.
    pub fn dns(ns: &NetNs, addr: SocketAddr, records: Records) -> io::Result<Server> {
        Server::start(
            ns,
            move || {
                let udp = UdpSocket::bind(addr)?;
                let tcp = TcpListener::bind(addr)?;
                set_recv_timeout(&tcp, Duration::from_millis(50))?;
                Ok((udp, tcp))
            },
            move |(udp, tcp), stop| {
                // TCP on a thread of its own: a connection must not hold up UDP.
                let (tcp_stop, tcp_records) = (stop.clone(), records.clone());
                let tcp_thread = std::thread::spawn(move || {
                    while !tcp_stop.load(Ordering::Relaxed) {
                        let Ok((mut s, _)) = tcp.accept() else {
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        while let Ok(q) = read_framed(&mut s) {
                            let Some(a) = respond(&q, &tcp_records) else {
                                break;
                            };
                            if write_framed(&mut s, &a).is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if !readable(udp.as_raw_fd(), 50) {
                        continue;
                    }
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        if let Some(a) = respond(&buf[..n], &records) {
                            let _ = udp.send_to(&a, from);
                        }
                    }
                }
                let _ = tcp_thread.join();
                Ok(())
            },
        )
    }
}

fn read_framed(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg)?;
    Ok(msg)
}

fn write_framed(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    s.write_all(&out)
}

/// Asks `resolver` for the A records of `name` (over TCP if `tcp`) from the calling
/// thread's namespace; the parsed answer.
pub fn query(resolver: SocketAddr, name: &str, tcp: bool, timeout: Duration) -> io::Result<Answer> {
    if !tcp {
        return crate::dns::lookup(resolver, name, message::TYPE_A, timeout);
    }
    let id = rand::random::<u16>();
    let q = build::query(id, name, message::TYPE_A);
    let mut s = TcpStream::connect_timeout(&resolver, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write_framed(&mut s, &q)?;
    let bytes = read_framed(&mut s)?;
    let a = message::answer(&bytes).map_err(io::Error::other)?;
    if a.question.id != id {
        return Err(io::Error::other("answer to another query"));
    }
    Ok(a)
}
