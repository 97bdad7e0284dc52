//! The DNS proxy: DNS rules (`toPorts[].rules.dns`) enforced per query, and the answers it
//! passes learned for `toFQDNs`.
//!
//! The datapath hands a pod's DNS traffic on a port with DNS rules to the listeners of that
//! rule set (UDP and TCP on one port number; see `datapath-bpf/ebpf/src/proxy.rs`), with
//! the original destination intact (`IP_ORIGDSTADDR` for UDP, the accepted socket's local
//! address for TCP). A query whose name no rule matches is answered `REFUSED`; any other is
//! sent on to the original resolver, from the node's address and marked with the pod's
//! identity (the datapath judges it as the pod's). The answer's addresses are learned
//! (written to the ipcache and the policy) *before* the answer is released to the pod, so
//! the connection that follows it is never refused for being early. The answer goes back
//! from the resolver's address and port (a transparent socket), as if straight from it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use weft_datapath_common as c;
use weft_model::policy::FqdnSelector;

use super::{canonical, setsockopt, Conn, Identities};
use crate::datapath::Direction;
use crate::dns::message;
use crate::flows::FlowQueue;
use weft_proto::v1 as pb;

/// How long the proxy waits for the resolver.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest DNS query over UDP the proxy takes (queries are small; answers are read
/// whole, up to 64 KiB).
const UDP_MAX: usize = 4096;
/// Queries in flight per UDP listener: past that, new ones are dropped (the client asks
/// again) rather than queued without bound.
const IN_FLIGHT: usize = 512;

/// Writes what an answer teaches (names, addresses with TTLs) where the datapath reads it;
/// set once the datapath is shared (see `agent::run`).
pub type Learner = Arc<dyn Fn(&[String], &[(IpAddr, u32)]) -> Result<(), String> + Send + Sync>;

/// What every query of one rule set needs.
pub(super) struct Dns {
    pub(super) rules: Vec<FqdnSelector>,
    pub(super) identities: Arc<Identities>,
    pub(super) learner: Arc<OnceLock<Learner>>,
    pub(super) flows: Arc<FlowQueue>,
    /// Sockets answers leave from, per resolver address (a handful: kept, not made per
    /// answer).
    pub(super) replies: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<OwnedFd>>>,
}

/// Reply sockets kept per listener at most (then the cache starts over).
const REPLY_SOCKETS: usize = 64;

/// A question type as DNS names it.
fn qtype_name(t: u16) -> String {
    match t {
        message::TYPE_A => "A".into(),
        message::TYPE_AAAA => "AAAA".into(),
        message::TYPE_CNAME => "CNAME".into(),
        other => other.to_string(),
    }
}

impl Dns {
    /// Sends an answer to `to` as if from the resolver at `from`.
    fn send_as(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        let cached = {
            let replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
            replies.get(&from).cloned()
        };
        let fd = match cached {
            Some(fd) => fd,
            None => {
                let fd = Arc::new(bound_as(from)?);
                let mut replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
                if replies.len() >= REPLY_SOCKETS {
                    replies.clear();
                }
                replies.insert(from, fd.clone());
                fd
            }
        };
        send_to(&fd, to, data)
    }

    fn allows(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.matches(name))
    }

    /// Records one query as an L7 flow: refused by the policy (`answer` none), or answered.
    fn record(
        &self,
        conn: &Conn,
        tcp: bool,
        q: &message::Question,
        answer: Option<&message::Answer>,
    ) {
        let ips: Vec<String> = answer
            .map(|a| a.addresses.iter().map(|x| x.ip.to_string()).collect())
            .unwrap_or_default();
        let dns = pb::DnsFlow {
            query: format!("{}.", q.name),
            qtypes: vec![qtype_name(q.qtype)],
            rcode: answer.map_or(u32::from(message::RCODE_REFUSED), |a| u32::from(a.rcode)),
            ips,
            ttl: answer
                .and_then(|a| a.addresses.iter().map(|x| x.ttl).min())
                .unwrap_or(0),
        };
        self.flows.push(pb::Flow {
            dns: Some(dns),
            ..conn.flow(
                Direction::Egress,
                answer.is_none(),
                if tcp { 6 } else { 17 },
            )
        });
    }

    /// Learns an answer's addresses; a failure is logged (the answer still goes: what it
    /// names then stays refused by the datapath, never wrongly allowed).
    fn learn(&self, a: &message::Answer) {
        if a.addresses.is_empty() {
            return;
        }
        let addrs: Vec<(IpAddr, u32)> = a.addresses.iter().map(|x| (x.ip, x.ttl)).collect();
        match self.learner.get() {
            Some(learn) => {
                if let Err(e) = learn(&a.names, &addrs) {
                    tracing::warn!(name = %a.question.name, error = %e, "DNS answer not learned");
                }
            }
            None => {
                tracing::warn!(name = %a.question.name, "DNS answer not learned: no datapath yet")
            }
        }
    }

    /// The answer for one query from `client` to the resolver at `original`: `REFUSED` if
    /// no rule allows its name, else the resolver's (learned first); `None` when there is
    /// nothing to answer (a malformed query, the resolver silent).
    async fn answer(
        &self,
        query: &[u8],
        client: SocketAddr,
        original: SocketAddr,
        tcp: Option<&mut Option<TcpStream>>,
    ) -> Option<Vec<u8>> {
        let q = message::question(query).ok()?;
        let identity = self.identities.of(client.ip());
        let conn = Conn {
            client,
            original,
            client_identity: identity,
            server_identity: self.identities.of(original.ip()),
            mark: c::identity_mark(identity),
        };
        let over_tcp = tcp.is_some();
        if !self.allows(&q.name) {
            tracing::debug!(name = %q.name, %client, "DNS query refused");
            self.record(&conn, over_tcp, &q, None);
            return message::refused(query).ok();
        }
        let answer = match tcp {
            None => udp_exchange(query, original, conn.mark).await,
            Some(upstream) => tcp_exchange(query, original, conn.mark, upstream).await,
        };
        match answer {
            Ok(a) => {
                if let Ok(parsed) = message::answer(&a) {
                    self.learn(&parsed);
                    self.record(&conn, over_tcp, &q, Some(&parsed));
                }
                Some(a)
            }
            Err(e) => {
                tracing::debug!(name = %q.name, %original, error = %e, "resolver did not answer");
                None
            }
        }
    }
}

fn socket(domain: i32, ty: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                0,
                0,
            )))
        }
        _ => None,
    }
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    // SAFETY: a valid fd and sockaddr of the length given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The UDP listeners of one port (IPv4 and IPv6), transparent, reporting each datagram's
/// original destination.
pub(super) fn udp_listeners(port: u16) -> io::Result<[UdpSocket; 2]> {
    let v4 = socket(libc::AF_INET, libc::SOCK_DGRAM)?;
    setsockopt(v4.as_raw_fd(), libc::SOL_IP, libc::IP_TRANSPARENT, 1)?;
    setsockopt(v4.as_raw_fd(), libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    bind(&v4, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?;
    let v6 = socket(libc::AF_INET6, libc::SOCK_DGRAM)?;
    setsockopt(v6.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    setsockopt(v6.as_raw_fd(), libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
    setsockopt(
        v6.as_raw_fd(),
        libc::SOL_IPV6,
        libc::IPV6_RECVORIGDSTADDR,
        1,
    )?;
    bind(&v6, SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))?;
    Ok([
        UdpSocket::from_std(std::net::UdpSocket::from(v4))?,
        UdpSocket::from_std(std::net::UdpSocket::from(v6))?,
    ])
}

/// One datagram: its length, source and original destination.
fn recv_orig(fd: i32, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, SocketAddr)> {
    // SAFETY: zeroed plain C structs.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [0u64; 32];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr, then its pointers set to live buffers of the sizes given.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 32]>();
    // SAFETY: a valid fd and msghdr.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let src = from_sockaddr(&from).ok_or_else(|| io::Error::other("no source address"))?;
    let mut dst = None;
    // SAFETY: walking the control messages recvmsg wrote, with the libc macros.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(&msg);
        while !cm.is_null() {
            let (level, ty) = ((*cm).cmsg_level, (*cm).cmsg_type);
            if (level == libc::SOL_IP && ty == libc::IP_ORIGDSTADDR)
                || (level == libc::SOL_IPV6 && ty == libc::IPV6_ORIGDSTADDR)
            {
                let mut ss: libc::sockaddr_storage = zeroed();
                let len = ((*cm).cmsg_len as usize)
                    .saturating_sub(libc::CMSG_LEN(0) as usize)
                    .min(size_of::<libc::sockaddr_storage>());
                std::ptr::copy_nonoverlapping(
                    libc::CMSG_DATA(cm),
                    &mut ss as *mut _ as *mut u8,
                    len,
                );
                dst = from_sockaddr(&ss);
            }
            cm = libc::CMSG_NXTHDR(&msg, cm);
        }
    }
    let dst = dst.ok_or_else(|| io::Error::other("no original destination"))?;
    Ok((n as usize, src, dst))
}

/// A UDP socket of `addr`'s family.
fn udp_socket_for(addr: SocketAddr) -> io::Result<OwnedFd> {
    match addr {
        SocketAddr::V4(_) => socket(libc::AF_INET, libc::SOCK_DGRAM),
        SocketAddr::V6(_) => socket(libc::AF_INET6, libc::SOCK_DGRAM),
    }
}

/// A transparent socket bound to `from`, an address of another host (the resolver's).
fn bound_as(from: SocketAddr) -> io::Result<OwnedFd> {
    let fd = udp_socket_for(from)?;
    match from {
        SocketAddr::V4(_) => setsockopt(fd.as_raw_fd(), libc::SOL_IP, libc::IP_TRANSPARENT, 1)?,
        SocketAddr::V6(_) => setsockopt(fd.as_raw_fd(), libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?,
    }
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    bind(&fd, from)?;
    Ok(fd)
}

/// Sends `data` to `to` on `fd`.
fn send_to(fd: &OwnedFd, to: SocketAddr, data: &[u8]) -> io::Result<()> {
    let (ss, len) = sockaddr(to);
    // SAFETY: a valid fd, buffer and sockaddr of the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            0,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Serves the queries arriving on one UDP listener, each in its own task.
pub(super) async fn serve_udp(sock: UdpSocket, dns: Arc<Dns>) {
    let mut buf = vec![0u8; UDP_MAX];
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    loop {
        let got = sock
            .async_io(tokio::io::Interest::READABLE, || {
                recv_orig(sock.as_raw_fd(), &mut buf)
            })
            .await;
        let (n, client, original) = match got {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "DNS proxy receive failed");
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            tracing::debug!(%client, "DNS proxy busy: query dropped");
            continue;
        };
        let query = buf[..n].to_vec();
        let dns = dns.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let client = canonical(client);
            let original = canonical(original);
            if let Some(answer) = dns.answer(&query, client, original, None).await {
                if let Err(e) = dns.send_as(original, client, &answer) {
                    tracing::debug!(%client, %original, error = %e, "DNS answer not delivered");
                }
            }
        });
    }
}

/// A socket to the resolver marked with the client's identity.
fn marked_udp(original: SocketAddr, mark: u32) -> io::Result<UdpSocket> {
    let fd = udp_socket_for(original)?;
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, mark)?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

async fn udp_exchange(query: &[u8], original: SocketAddr, mark: u32) -> io::Result<Vec<u8>> {
    let sock = marked_udp(original, mark)?;
    sock.connect(original).await?;
    sock.send(query).await?;
    // Room for any datagram, not filled in first (this runs per query).
    let mut buf = Vec::with_capacity(usize::from(u16::MAX));
    let id = query
        .get(..2)
        .ok_or_else(|| io::Error::other("query too short"))?;
    // Answers to other ids (stale, spoofed) are skipped until the timeout.
    let wait = async {
        loop {
            buf.clear();
            let n = sock.recv_buf(&mut buf).await?;
            if n >= 2 && &buf[..2] == id {
                return Ok::<_, io::Error>(buf);
            }
        }
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, wait)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

/// One framed (RFC 1035 §4.2.2) query over the client's upstream TCP connection, opened on
/// first use.
async fn tcp_exchange(
    query: &[u8],
    original: SocketAddr,
    mark: u32,
    conn: &mut Option<TcpStream>,
) -> io::Result<Vec<u8>> {
    if conn.is_none() {
        let sock = match original {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MARK, mark)?;
        let s = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.connect(original))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect"))??;
        *conn = Some(s);
    }
    let Some(s) = conn.as_mut() else {
        return Err(io::Error::other("no upstream connection"));
    };
    let exchange = async {
        write_framed(s, query).await?;
        read_framed(s)
            .await?
            .ok_or_else(|| io::Error::other("resolver closed"))
    };
    let r = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))
        .and_then(|r| r);
    if r.is_err() {
        *conn = None;
    }
    r
}

async fn read_framed(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message too long"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await
}

/// Serves one DNS-over-TCP connection: its queries, in order.
pub(super) async fn serve_tcp(
    mut conn: TcpStream,
    client: SocketAddr,
    original: SocketAddr,
    dns: Arc<Dns>,
) {
    let mut upstream = None;
    while let Ok(Some(query)) = read_framed(&mut conn).await {
        let Some(answer) = dns
            .answer(&query, client, original, Some(&mut upstream))
            .await
        else {
            return;
        };
        if write_framed(&mut conn, &answer).await.is_err() {
            return;
        }
    }
}
