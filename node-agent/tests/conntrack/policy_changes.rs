//! Policy changes reaching established connections: drops within a second, no intermediate state
//! wider than both, a failed map write never widening, and a peer changing identity.

use super::*;

/// An echo server whose received lines go to a channel.
fn line_server(ns: &NetNs, port: u16) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let _ = ns.spawn(move || {
        let l = TcpListener::bind(("0.0.0.0", port)).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = [0u8; 256];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let _ = s.write_all(text.as_bytes());
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server started");
    rx
}

/// a (identity 100) -> b (200), connected on `port`: b enforces ingress (allows a on
/// `port`) and egress (no rule: its packets leave only as replies). Returns a's stream and
/// what b's server reads.
fn established_a_to_b(
    dp: &mut Datapath,
    topo: &Topology,
    port: u16,
) -> (TcpStream, mpsc::Receiver<String>) {
    dp.apply_endpoint(&endpoint(1, topo, 100, false, false))
        .unwrap();
    dp.apply_endpoint(&endpoint(2, topo, 200, true, true))
        .unwrap();
    dp.apply_policy(
        2,
        &[rule(Direction::Ingress, Some(100), c::PROTO_TCP, port)],
    )
    .unwrap();
    let lines = line_server(&topo.pods[1].ns, port);
    let b = topo.pods[1].ip;
    let s = topo.pods[0]
        .ns
        .spawn(move || TcpStream::connect_timeout(&SocketAddrV4::new(b, port).into(), T))
        .join()
        .unwrap()
        .unwrap()
        .expect("connect");
    (s, lines)
}

#[test]
fn policy_change_drops_established_connection_within_a_second() {
    if !bpf_available("policy_change_drops_established_connection_within_a_second") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    let (mut s, lines) = established_a_to_b(&mut dp, &topo, 7200);
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"one\n").unwrap();
    assert_eq!(lines.recv_timeout(T).unwrap(), "one\n");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"one\n");

    // The change: only identity 300 may reach b now.
    let before = dp
        .counters()
        .unwrap()
        .packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED);
    dp.apply_policy(
        2,
        &[rule(Direction::Ingress, Some(300), c::PROTO_TCP, 7200)],
    )
    .unwrap();
    let changed = Instant::now();
    s.write_all(b"two\n").unwrap();
    // The connection's next packet in the original direction is dropped (target: within
    // 1 s of the change; fails at twice that).
    loop {
        let now = dp
            .counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED);
        if now > before {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "no drop within 2 s of the change"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("first drop {:?} after the change", changed.elapsed());
    assert!(
        lines.recv_timeout(Duration::from_millis(1500)).is_err(),
        "nothing reaches b after the change"
    );
    // The entry is revoked, not removed: b's packets of the connection (replies) drop too,
    // so that no reply can reopen it from b's side.
    let revoked: Vec<_> = dp
        .maps
        .list_ct()
        .unwrap()
        .into_iter()
        .filter(|(k, v)| {
            u16::from_be(k.dport) == 7200 && k.dir == c::CT_DIR_INGRESS && v.ep_id == 2
        })
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_ne!(revoked[0].1.flags & c::CT_F_REVOKED, 0);
    // A later change that allows it again lets the connection resume (TCP retransmits).
    dp.apply_policy(
        2,
        &[rule(Direction::Ingress, Some(100), c::PROTO_TCP, 7200)],
    )
    .unwrap();
    let mut got = String::new();
    while !got.contains("two") {
        got.push_str(
            &lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the retransmission gets through once allowed again"),
        );
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).expect("the echo comes back");
    assert_eq!(&buf[..n], b"two\n");
}

/// While the agent switches an endpoint between two policies, a datagram that both deny never
/// arrives and one that both allow is never dropped (each packet sees one whole policy: the
/// agent writes the other generation, flips, and deletes the old one after a grace period).
/// Real UDP from two pod namespaces, every datagram a new connection (zero conntrack
/// timeouts), while the maps change.
#[test]
fn no_intermediate_state_is_more_permissive_or_drops_what_both_allow() {
    if !bpf_available("no_intermediate_state_is_more_permissive_or_drops_what_both_allow") {
        return;
    }
    use node_agent::datapath::{Action, PolicyEntry};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let topo = Topology::new(3).unwrap();
    let pins = PinDir::create("t").unwrap();
    let zero = c::Config {
        ct_tcp_timeout_s: 0,
        ct_syn_timeout_s: 0,
        ct_udp_timeout_s: 0,
        ct_close_timeout_s: 0,
        event_flags: 0,
        ..c::Config::default()
    };
    let mut dp = load_with(&pins, MapSizes::default(), zero);
    attach_all(&dp, &topo);
    // ep = pod 1 (enforces ingress), x = pod 2 (identity 300), y = pod 3 (identity 400).
    apply_endpoints(
        &mut dp,
        &topo,
        &[(100, true, false), (300, false, false), (400, false, false)],
    );
    let (ep, x, y) = (topo.pods[0].ip, topo.pods[1].ip, topo.pods[2].ip);
    let entry = |peer: Option<u32>, ports: (u16, u16), action: Action| PolicyEntry {
        direction: Direction::Ingress,
        peer_identity: peer,
        proto: Some(c::PROTO_UDP),
        ports: Some(ports),
        action,
        rule_id: 1,
    };
    // p1: everybody on 80-90 and 443, but y denied on 80-85 and 443.
    let p1 = vec![
        entry(None, (80, 90), Action::Allow),
        entry(None, (443, 443), Action::Allow),
        entry(Some(400), (80, 85), Action::Deny),
        entry(Some(400), (443, 443), Action::Deny),
    ];
    // p2: only x, on 80 and 443.
    let p2 = vec![
        entry(Some(300), (80, 80), Action::Allow),
        entry(Some(300), (443, 443), Action::Allow),
    ];
    dp.apply_policy(1, &p1).unwrap();

    // Receivers on ep: datagrams counted by (source, port).
    let got: Arc<Mutex<HashMap<(Ipv4Addr, u16), u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    for port in [80u16, 443] {
        let (got, stop) = (got.clone(), stop.clone());
        let (tx, rx) = mpsc::channel();
        let _ = topo.pods[0].ns.spawn(move || {
            let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind");
            let big: libc::c_int = 8 << 20;
            // SAFETY: valid socket and option (root may exceed rmem_max).
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &big as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 64];
            loop {
                match s.recv_from(&mut buf) {
                    Ok((_, std::net::SocketAddr::V4(from))) => {
                        *got.lock().unwrap().entry((*from.ip(), port)).or_default() += 1;
                    }
                    Ok(_) => {}
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    // Senders: x and y, paced, to both ports.
    let sending = Arc::new(AtomicBool::new(true));
    let senders: Vec<_> = [1usize, 2]
        .into_iter()
        .map(|i| {
            let sending = sending.clone();
            topo.pods[i].ns.spawn(move || {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                let mut sent = [0u64; 2];
                while sending.load(Ordering::Relaxed) {
                    for (k, port) in [80u16, 443].into_iter().enumerate() {
                        if s.send_to(b"x", SocketAddrV4::new(ep, port)).is_ok() {
                            sent[k] += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_micros(300));
                }
                sent
            })
        })
        .collect();
    let mut switches = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        dp.apply_policy(1, &p2).unwrap();
        dp.apply_policy(1, &p1).unwrap();
        switches += 2;
    }
    sending.store(false, Ordering::Relaxed);
    let sent: Vec<[u64; 2]> = senders
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let got = got.lock().unwrap().clone();
    let n = |ip: Ipv4Addr, port: u16| got.get(&(ip, port)).copied().unwrap_or(0);
    println!(
        "{switches} policy switches; x sent {:?}, y sent {:?}; received {got:?}",
        sent[0], sent[1]
    );
    assert!(
        switches > 10 && sent[0][0] > 100,
        "{switches} switches, {sent:?}"
    );
    assert_eq!(
        n(y, 80) + n(y, 443),
        0,
        "y (denied by both) got through: {got:?}"
    );
    assert_eq!(
        (n(x, 80), n(x, 443)),
        (sent[0][0], sent[0][1]),
        "every datagram of x (allowed by both) arrives"
    );
}

/// A map write that fails (full policy map) fails the apply, which the agent reports as an
/// error of the revision (not realized); what was written meanwhile allows nothing that the
/// old policy did not.
#[test]
fn failed_map_write_fails_the_apply_and_never_widens() {
    if !bpf_available("failed_map_write_fails_the_apply_and_never_widens") {
        return;
    }
    use node_agent::datapath::{Action, PolicyEntry};
    let pins = PinDir::create("t").unwrap();
    let sizes = MapSizes {
        policy: 4,
        ..MapSizes::default()
    };
    let zero = c::Config {
        ct_tcp_timeout_s: 0,
        ct_syn_timeout_s: 0,
        ct_udp_timeout_s: 0,
        ct_close_timeout_s: 0,
        event_flags: 0,
        ..c::Config::default()
    };
    let mut dp = load_with(&pins, sizes, zero);
    let ep = Ipv4Addr::new(10, 0, 9, 1);
    let y = Ipv4Addr::new(10, 0, 8, 2);
    dp.apply_ipcache_v4(y, 32, 400).unwrap();
    dp.apply_endpoint(&node_agent::datapath::Endpoint {
        id: 1,
        ip: ep,
        ip6: None,
        identity: 100,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: false,
    })
    .unwrap();
    let entry = |peer: Option<u32>, port: u16, action: Action| PolicyEntry {
        direction: Direction::Ingress,
        peer_identity: peer,
        proto: Some(c::PROTO_TCP),
        ports: Some((port, port)),
        action,
        rule_id: 1,
    };
    dp.apply_policy(1, &[entry(Some(400), 22, Action::Allow)])
        .unwrap();
    // Six new keys do not fit in a map of four.
    let big: Vec<_> = (0..6)
        .map(|i| entry(None, 1000 + i, Action::Allow))
        .chain([entry(Some(400), 23, Action::Deny)])
        .collect();
    let err = dp.apply_policy(1, &big).expect_err("the map is full");
    println!("apply failed as expected: {err}");
    // Nothing of the new policy is in force: the old allow is still there, y on 23 stays
    // dropped, and the half-written generation is gone.
    let r = dp
        .test_run(
            c::progs::TO_ENDPOINT,
            &packet(6, y, ep, 5555, 23, TCP_SYN),
            1,
        )
        .unwrap();
    assert_eq!(r.retval, TC_ACT_SHOT);
    let r = dp
        .test_run(
            c::progs::TO_ENDPOINT,
            &packet(6, y, ep, 5555, 22, TCP_SYN),
            1,
        )
        .unwrap();
    assert_eq!(r.retval, TC_ACT_OK, "the old allow is still in place");
    assert_eq!(
        dp.maps.policy.keys().count(),
        1,
        "only the old entry is left in the map"
    );
}

/// A peer whose identity changes (relabelled: its ipcache entry now names another
/// identity) is judged again on its established connections, as after a policy change.
#[test]
fn peer_identity_change_drops_established_connection() {
    if !bpf_available("peer_identity_change_drops_established_connection") {
        return;
    }
    let topo = Topology::new(2).unwrap();
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    let (mut s, lines) = established_a_to_b(&mut dp, &topo, 7201);
    s.write_all(b"one\n").unwrap();
    assert_eq!(lines.recv_timeout(T).unwrap(), "one\n");

    // Re-applying the same identity changes nothing: the connection keeps working.
    dp.apply_endpoint(&endpoint(1, &topo, 100, false, false))
        .unwrap();
    dp.recheck_connections().unwrap();
    s.write_all(b"two\n").unwrap();
    assert_eq!(lines.recv_timeout(T).unwrap(), "two\n");

    // a is relabelled: identity 300, which b's policy does not allow.
    let before = dp
        .counters()
        .unwrap()
        .packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED);
    dp.apply_endpoint(&endpoint(1, &topo, 300, false, false))
        .unwrap();
    dp.recheck_connections().unwrap();
    s.write_all(b"three\n").unwrap();
    assert!(
        lines.recv_timeout(Duration::from_millis(1500)).is_err(),
        "nothing from the relabelled peer reaches b"
    );
    let after = dp
        .counters()
        .unwrap()
        .packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED);
    assert!(
        after > before,
        "the relabelled peer's packet is dropped by policy"
    );
}
