//! Echo servers of test workloads: TCP listeners created inside the workload's network
//! namespace (a socket keeps the namespace it was created in) and served by the agent's
//! runtime. Each connection gets one answer, [`echo_reply`], to the first line it sends, or
//! [`http_echo_response`] when that line is an HTTP request's (so HTTP rules can be tested
//! against the same servers). A world workload also runs a resolver on UDP port 53 that
//! answers every name with its own address (what `toFQDNs` checks resolve).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use weft_model::workload::{echo_reply, http_echo_response};

use crate::dns::message::{self, build};

/// Longest line read from a client.
const MAX_LINE: usize = 1024;
/// Longest HTTP request head read.
const MAX_HEAD: usize = 8192;
/// A client that sends nothing is closed after this.
const IDLE: Duration = Duration::from_secs(10);

/// Binds `[::]:port` (both families: a dual-stack workload answers on either) inside the
/// namespace at `netns`.
pub fn bind_in(netns: &Path, port: u16) -> io::Result<TcpListener> {
    crate::netns::run_in(netns, move || {
        let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// A running echo server; stops accepting when dropped (connections in progress finish).
#[derive(Debug)]
pub struct Echo {
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `listener` on the current runtime, answering as workload `name`.
pub fn serve(name: &str, listener: TcpListener) -> io::Result<Echo> {
    let l = tokio::net::TcpListener::from_std(listener)?;
    let name = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(answer(name.clone(), s));
                }
                Err(e) => {
                    tracing::warn!(workload = %name, error = %e, "echo accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(Echo { task })
}

async fn answer(name: String, mut s: tokio::net::TcpStream) {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    // The echo line, or an HTTP request's head (its request line, then headers up to the
    // blank line).
    let complete = |buf: &[u8]| match http_path(buf) {
        Some(_) => buf.windows(4).any(|w| w == b"\r\n\r\n"),
        None => buf.contains(&b'\n'),
    };
    let read = tokio::time::timeout(IDLE, async {
        while !complete(&buf) && buf.len() < MAX_HEAD {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let reply = match http_path(&buf) {
        Some(path) => http_echo_response(&name, &path),
        None => {
            let end = buf
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(buf.len())
                .min(MAX_LINE);
            echo_reply(&name, &String::from_utf8_lossy(&buf[..end]))
        }
    };
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// The path of an HTTP/1.x request line (`GET /a HTTP/1.1`) at the start of `buf`.
fn http_path(buf: &[u8]) -> Option<String> {
    let end = buf.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&buf[..end]).ok()?.trim_end();
    let mut parts = line.split(' ');
    let (method, path, version) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && path.starts_with('/')
        && version.starts_with("HTTP/1.")
        && parts.next().is_none();
    ok.then(|| path.to_string())
}

/// Binds UDP `[::]:53` (both families) inside the namespace at `netns`.
pub fn bind_dns_in(netns: &Path) -> io::Result<UdpSocket> {
    crate::netns::run_in(netns, || {
        let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 53))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
}

/// How long the world resolver's answers may be cached.
pub const DNS_TTL: u32 = 5;

/// The DNS answer of a world workload's resolver to `query`: every name is the workload
/// itself (A: its IPv4 address, AAAA: its IPv6 one); other types get no records.
pub fn dns_answer(query: &[u8], ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> Option<Vec<u8>> {
    let q = message::question(query).ok()?;
    let addr: Option<IpAddr> = match q.qtype {
        message::TYPE_A => Some(ip.into()),
        message::TYPE_AAAA => ip6.map(Into::into),
        _ => None,
    };
    let records: Vec<(&str, u32, build::Record)> = addr
        .map(|a| (q.name.as_str(), DNS_TTL, build::Record::Ip(a)))
        .into_iter()
        .collect();
    Some(build::answer(query, 0, &records))
}

/// Serves `socket` as the resolver of a world workload (see [`dns_answer`]).
pub fn serve_dns(
    name: &str,
    socket: UdpSocket,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
) -> io::Result<Echo> {
    let s = tokio::net::UdpSocket::from_std(socket)?;
    let name = name.to_string();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            match s.recv_from(&mut buf).await {
                Ok((n, from)) => {
                    if let Some(a) = dns_answer(&buf[..n], ip, ip6) {
                        let _ = s.send_to(&a, from).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(workload = %name, error = %e, "resolver receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(Echo { task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_request_lines_are_told_from_echo_lines() {
        assert_eq!(
            http_path(b"GET /public?x=1 HTTP/1.1\r\nhost: a\r\n\r\n").as_deref(),
            Some("/public?x=1")
        );
        assert_eq!(http_path(b"probe-42\n"), None);
        assert_eq!(http_path(b"GET /a HTTP/1.1"), None, "no full line yet");
        assert_eq!(http_path(b"get /a HTTP/1.1\r\n"), None);
        assert_eq!(http_path(b"GET a HTTP/1.1\r\n"), None);
        assert_eq!(http_path(b"GET /a HTTP/2\r\n"), None);
    }

    #[test]
    fn the_world_resolver_answers_every_name_with_its_own_address() {
        let ip = Ipv4Addr::new(198, 51, 100, 7);
        let ip6: Ipv6Addr = "2001:db8:5100::7".parse().expect("v6");
        let ask = |qtype, ip6| {
            let q = build::query(9, "echo.allowed.weft-ct.test", qtype);
            message::answer(&dns_answer(&q, ip, ip6).expect("an answer")).expect("parses")
        };
        let a = ask(message::TYPE_A, Some(ip6));
        assert_eq!((a.question.id, a.rcode), (9, 0));
        assert_eq!(
            a.addresses,
            [message::Address {
                ip: ip.into(),
                ttl: DNS_TTL
            }]
        );
        let aaaa = ask(message::TYPE_AAAA, Some(ip6));
        assert_eq!(aaaa.addresses[0].ip, IpAddr::from(ip6));
        assert!(ask(message::TYPE_AAAA, None).addresses.is_empty());
        assert!(dns_answer(b"garbage", ip, None).is_none());
    }
}
