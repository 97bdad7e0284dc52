//! Conntrack with real packets between pod namespaces: ICMP errors related to a tracked
//! connection (PMTU discovery under default deny), FIN/RST lifetimes, the agent's sweep, a full
//! table (`CT_FULL`), map fill, and policy changes reaching established connections.

mod common;
#[path = "conntrack/policy_changes.rs"]
mod policy_changes;

use common::*;
use node_agent::datapath::{Datapath, DatapathConfig, Direction, MapSizes};
use node_agent::netns::{NetNs, PinDir, Topology};
use node_agent::tools::{self, Server};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use weft_datapath_common as c;

const T: Duration = Duration::from_millis(700);

fn load_with(pins: &PinDir, sizes: MapSizes, runtime: c::Config) -> Datapath {
    Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        sizes,
        runtime,
        ..DatapathConfig::default()
    })
    .expect("load datapath")
}

/// Internet checksum.
fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for ch in b.chunks(2) {
        s += u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]) as u32;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A raw ICMP socket of the calling thread's namespace.
struct RawIcmp(i32);

impl RawIcmp {
    fn open() -> RawIcmp {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        RawIcmp(fd)
    }

    /// Sends ICMP destination unreachable (`code`) to `to`, quoting a UDP datagram
    /// `q_src:q_sport -> q_dst:q_dport`.
    fn send_unreachable(
        &self,
        to: Ipv4Addr,
        code: u8,
        q_src: Ipv4Addr,
        q_sport: u16,
        q_dst: Ipv4Addr,
        q_dport: u16,
    ) {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&36u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&q_src.octets());
        ip[16..20].copy_from_slice(&q_dst.octets());
        let sum = csum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut msg = vec![3u8, code, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&ip);
        msg.extend_from_slice(&q_sport.to_be_bytes());
        msg.extend_from_slice(&q_dport.to_be_bytes());
        msg.extend_from_slice(&[0, 16, 0, 0]);
        let sum = csum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: valid fd, buffer and address.
        let n = unsafe {
            libc::sendto(
                self.0,
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(n, msg.len() as isize, "{}", std::io::Error::last_os_error());
    }

    /// Destination ports quoted by the ICMP destination-unreachable messages received within
    /// `wait`.
    fn quoted_dports(&self, wait: Duration) -> Vec<u16> {
        let end = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let mut p = libc::pollfd {
                fd: self.0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) } <= 0 {
                break;
            }
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let b = &buf[..n as usize];
            let ihl = ((b[0] & 0x0f) as usize) * 4;
            let icmp = &b[ihl..];
            if icmp.len() < 8 + 20 + 4 || icmp[0] != 3 {
                continue;
            }
            let q = &icmp[8..];
            let qihl = ((q[0] & 0x0f) as usize) * 4;
            if q.len() >= qihl + 4 {
                out.push(u16::from_be_bytes([q[qihl + 2], q[qihl + 3]]));
            }
        }
        out
    }
}

impl Drop for RawIcmp {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.0) };
    }
}

/// A TCP sink in a namespace: per connection, reads to EOF and answers the byte count (8
/// bytes, big endian).
fn sink(ns: &NetNs, port: u16) {
    let (tx, rx) = mpsc::channel();
    let _ = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind sink");
        tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut n = 0u64;
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(k) => n += k as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes());
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("sink started");
}

#[test]
fn icmp_errors_of_tracked_connections_pass_as_related() {
    if !bpf_available("icmp_errors_of_tracked_connections_pass_as_related") {
        return;
    }
    let topo = Topology::new(3).unwrap();
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    // a (pod 1) enforces ingress with no rule at all: nothing may open a connection to it, and
    // an ICMP error reaches it only as related to a connection it made. b, c: no policy.
    apply_endpoints(
        &mut dp,
        &topo,
        &[(100, true, false), (200, false, false), (300, false, false)],
    );
    let (a, b) = (topo.pods[0].ip, topo.pods[1].ip);

    // 1. UDP to a closed port of b: b's port unreachable reaches a's connected socket.
    let local_port = topo.pods[0]
        .ns
        .spawn(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(SocketAddrV4::new(b, 9999)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.send(b"?").unwrap();
            let err = s
                .recv(&mut [0u8; 16])
                .expect_err("nothing listens on b:9999");
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "b's port unreachable must reach a (related), got {err}"
            );
            s.local_addr().unwrap().port()
        })
        .join()
        .unwrap()
        .unwrap();

    // 2. PMTU discovery under default deny: the node's link to b has a smaller MTU; the
    // node's "fragmentation needed" (from an address a's policy knows nothing of) must reach
    // a, or the transfer stalls.
    topo.node
        .ip(&[
            "addr",
            "add",
            "169.254.1.1/32",
            "dev",
            &topo.pods[0].host_if,
        ])
        .unwrap();
    topo.node
        .ip(&["link", "set", &topo.pods[1].host_if, "mtu", "1280"])
        .unwrap();
    sink(&topo.pods[1].ns, 7001);
    const BYTES: usize = 256 * 1024;
    let got = topo.pods[0]
        .ns
        .spawn(move || -> std::io::Result<u64> {
            let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(b, 7001).into(), T)?;
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&vec![7u8; BYTES])?;
            s.shutdown(Shutdown::Write)?;
            let mut n = [0u8; 8];
            s.read_exact(&mut n)?;
            Ok(u64::from_be_bytes(n))
        })
        .join()
        .unwrap()
        .unwrap()
        .expect("transfer across the smaller MTU (PMTU discovery)");
    assert_eq!(got, BYTES as u64);
    let route = topo.pods[0]
        .ns
        .exec(&["ip", "route", "get", &b.to_string()])
        .unwrap();
    assert!(
        route.contains("mtu 1280"),
        "a learned the path MTU: {route}"
    );

    // 3. Forged errors from c: quoting a's real UDP flow it is related and passes; quoting a
    // flow a never had it faces a's policy (default deny) and is dropped.
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let watcher = topo.pods[0].ns.spawn(move || {
        let raw = RawIcmp::open();
        tx.send(()).unwrap();
        go_rx.recv().unwrap();
        raw.quoted_dports(Duration::from_millis(1500))
    });
    rx.recv().unwrap();
    let before = dp.counters().unwrap();
    topo.pods[2]
        .ns
        .spawn(move || {
            let raw = RawIcmp::open();
            raw.send_unreachable(a, 3, a, local_port, b, 9999);
            raw.send_unreachable(a, 3, a, 40000, b, 9998);
        })
        .join()
        .unwrap()
        .unwrap();
    go_tx.send(()).unwrap();
    let seen = watcher.join().unwrap().unwrap();
    assert!(seen.contains(&9999), "related error reached a: {seen:?}");
    assert!(
        !seen.contains(&9998),
        "unrelated error was dropped: {seen:?}"
    );
    let after = dp.counters().unwrap();
    assert!(
        after.packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED)
            > before.packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED),
        "{after:?}"
    );
}

/// ICMPv6 "packet too big" / "destination unreachable" quoting a tracked IPv6 connection pass
/// (`BPF_PROG_TEST_RUN`: the pod topology is IPv4).
#[test]
fn icmpv6_errors_of_tracked_connections_pass_as_related() {
    if !bpf_available("icmpv6_errors_of_tracked_connections_pass_as_related") {
        return;
    }
    use std::net::Ipv6Addr;
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    let ep6: Ipv6Addr = "fd00::1".parse().unwrap();
    let peer6: Ipv6Addr = "fd00::2".parse().unwrap();
    let router6: Ipv6Addr = "fd00::fe".parse().unwrap();
    dp.apply_endpoint(&node_agent::datapath::Endpoint {
        id: 1,
        ip: Ipv4Addr::new(10, 0, 9, 1),
        ip6: Some(ep6),
        identity: 100,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: false,
    })
    .unwrap();
    // The endpoint opens a TCP connection (egress not enforced).
    let syn = packet6(6, ep6, peer6, 40001, 443, TCP_SYN);
    let r = dp.test_run(c::progs::FROM_ENDPOINT, &syn, 1).unwrap();
    assert_eq!(r.retval, TC_ACT_OK);
    // Packet too big (type 2) from a router, quoting the endpoint's packet.
    let ptb = |sport: u16| {
        let mut quoted = syn[14..].to_vec();
        quoted[40..42].copy_from_slice(&sport.to_be_bytes());
        let mut icmp = vec![2u8, 0, 0, 0, 0, 0, 0x05, 0x00];
        icmp.extend_from_slice(&quoted);
        let mut p = packet6(58, router6, ep6, 0, 2, 0);
        p.truncate(14 + 40);
        p[18..20].copy_from_slice(&(icmp.len() as u16).to_be_bytes());
        p.extend_from_slice(&icmp);
        p
    };
    let r = dp.test_run(c::progs::TO_ENDPOINT, &ptb(40001), 1).unwrap();
    assert_eq!(r.retval, TC_ACT_OK, "related packet too big passes");
    let r = dp.test_run(c::progs::TO_ENDPOINT, &ptb(40002), 1).unwrap();
    assert_eq!(r.retval, TC_ACT_SHOT, "unrelated packet too big is dropped");
}

/// Accepts connections and keeps them, silent (no packet after the handshake).
fn hold_server(ns: &NetNs, port: u16) {
    let (tx, rx) = mpsc::channel();
    let _ = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        tx.send(()).unwrap();
        let mut kept = Vec::new();
        for s in l.incoming() {
            kept.push(s);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("server started");
}

/// A sink whose connections stay half-closed until released: reads to EOF, then waits.
fn holding_sink(ns: &NetNs, port: u16) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel();
    let (rel_tx, rel_rx) = mpsc::channel::<()>();
    let _ = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = [0u8; 64];
        while s.read(&mut buf).is_ok_and(|n| n > 0) {}
        let _ = rel_rx.recv();
        drop(s);
        drop(l);
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("sink started");
    rel_tx
}

fn ct_of_port(dp: &Datapath, port: u16) -> Vec<c::CtValue> {
    dp.maps
        .list_ct()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| {
            k.proto == c::PROTO_TCP
                && (u16::from_be(k.sport) == port || u16::from_be(k.dport) == port)
        })
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn conntrack_lifecycle_fin_rst_sweep_and_full_table() {
    if !bpf_available("conntrack_lifecycle_fin_rst_sweep_and_full_table") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    let pins = PinDir::create("t").unwrap();
    let runtime = c::Config {
        ct_close_timeout_s: 1,
        ct_tcp_timeout_s: 3600,
        ..c::Config::default()
    };
    let sizes = MapSizes {
        conntrack: 8,
        ..MapSizes::default()
    };
    let mut dp = load_with(&pins, sizes, runtime);
    attach_all(&dp, &topo);
    dp.apply_endpoint(&endpoint(1, &topo, 100, false, false))
        .unwrap();
    dp.apply_endpoint(&endpoint(2, &topo, 200, false, false))
        .unwrap();
    let b = topo.pods[1].ip;
    let connect = |port: u16| {
        topo.pods[0]
            .ns
            .spawn(move || TcpStream::connect_timeout(&SocketAddrV4::new(b, port).into(), T))
            .join()
            .unwrap()
            .unwrap()
    };

    // A FIN one way (half close) does not shorten the entry's life; FIN both ways does.
    let release = holding_sink(&topo.pods[1].ns, 7100);
    let half = connect(7100).expect("connect");
    half.shutdown(Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let e = ct_of_port(&dp, 7100);
    assert_eq!(e.len(), 2, "one entry per endpoint side: {e:?}");
    for v in &e {
        assert_ne!(v.flags & c::CT_F_FIN_FWD, 0, "{v:?}");
        assert_eq!(
            v.flags & c::CT_F_CLOSING,
            0,
            "half-closed is not closing: {v:?}"
        );
    }
    release.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for v in ct_of_port(&dp, 7100) {
        assert_ne!(v.flags & c::CT_F_CLOSING, 0, "FIN both ways: closing {v:?}");
    }
    drop(half);

    // RST: closing at once.
    let _srv = Server::tcp(&topo.pods[1].ns, 8080, "b").unwrap();
    topo.pods[0]
        .ns
        .spawn(move || tools::tcp_request(SocketAddrV4::new(b, 8080).into(), T))
        .join()
        .unwrap()
        .unwrap()
        .expect("request");
    std::thread::sleep(Duration::from_millis(100));
    let e = ct_of_port(&dp, 8080);
    assert_eq!(e.len(), 2, "{e:?}");
    for v in &e {
        assert_ne!(v.flags & c::CT_F_CLOSING, 0, "RST: closing {v:?}");
    }

    // An open connection next to them; after the close timeout the sweep collects exactly
    // the closed ones.
    hold_server(&topo.pods[1].ns, 8081);
    let open = connect(8081).expect("connect");
    std::thread::sleep(Duration::from_millis(1500));
    let removed = dp.ct_gc().unwrap();
    assert_eq!(removed, 4, "the two closed connections' entries");
    let left = dp.maps.list_ct().unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(ct_of_port(&dp, 8081).len(), 2);

    // Fill the table (8 entries, 2 per connection): the first connection that finds no
    // room is dropped as CT_FULL and counted.
    let mut held = vec![open];
    let mut refused = 0;
    for _ in 0..5 {
        match connect(8081) {
            Ok(s) => held.push(s),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), 4, "four connections fill eight entries");
    assert!(refused >= 1);
    let k = dp.counters().unwrap();
    assert!(k.packets(c::VERDICT_DROPPED, c::DROP_CT_FULL) >= 1, "{k:?}");
    let fill = dp.map_fill().unwrap();
    assert_eq!(fill.get("WEFT_CT"), Some(&1.0), "{fill:?}");
    assert_eq!(
        fill.get("WEFT_ENDPOINTS"),
        Some(&(2.0 / 4096.0)),
        "{fill:?}"
    );
    for name in c::maps::ALL {
        if !matches!(name, "WEFT_CONFIG" | "WEFT_METRICS" | "WEFT_EVENTS") {
            let f = fill
                .get(name)
                .unwrap_or_else(|| panic!("{name} in {fill:?}"));
            assert!((0.0..=1.0).contains(f), "{name}: {f}");
        }
    }

    // Idle established connections expire with the TCP timeout; the sweep frees the table
    // and new connections get through again.
    // (The client closes them first: its FINs are packets of the tracked connections.)
    drop(held);
    dp.set_runtime_config(c::Config {
        ct_tcp_timeout_s: 1,
        ..runtime
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dp.ct_gc().unwrap(), 8);
    assert_eq!(dp.map_fill().unwrap().get("WEFT_CT"), Some(&0.0));
    assert_eq!(
        topo.pods[0]
            .ns
            .spawn(move || tools::tcp_request(SocketAddrV4::new(b, 8080).into(), T))
            .join()
            .unwrap()
            .unwrap()
            .expect("room again")
            .0,
        "b"
    );
}
