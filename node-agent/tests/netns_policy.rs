//! Real TCP/UDP between pod namespaces through the tc policy programs.

mod common;

use common::*;
use node_agent::datapath::Direction;
use node_agent::netns::{PinDir, Topology};
use node_agent::tools::Server;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;
use weft_datapath_common as c;

const T: Duration = Duration::from_millis(700);

#[test]
fn pods_allowed_denied_replies_and_policy_changes() {
    if !bpf_available("pods_allowed_denied_replies_and_policy_changes") {
        return;
    }
    let topo = Topology::new(3).unwrap();
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    attach_all(&dp, &topo);
    // a = pod 1 (identity 100), b = pod 2 (200, enforcing both ways), c = pod 3 (300).
    apply_endpoints(
        &mut dp,
        &topo,
        &[(100, false, false), (200, true, true), (300, false, false)],
    );
    // b accepts TCP 8080 and UDP 5353 from a only, and has no egress rule at all: its
    // replies can only leave through conntrack.
    dp.apply_policy(
        2,
        &[
            rule(Direction::Ingress, Some(100), c::PROTO_TCP, 8080),
            rule(Direction::Ingress, Some(100), c::PROTO_UDP, 5353),
        ],
    )
    .unwrap();
    let b = topo.pods[1].ip;
    let _tcp = Server::tcp(&topo.pods[1].ns, 8080, "b").unwrap();
    let _udp = Server::udp(&topo.pods[1].ns, 5353, "b").unwrap();
    let tcp_b = SocketAddrV4::new(b, 8080);
    let udp_b = SocketAddrV4::new(b, 5353);

    assert_eq!(tcp_from(&topo, 0, tcp_b).expect("a -> b TCP allowed"), "b");
    assert_eq!(udp_from(&topo, 0, udp_b).expect("a -> b UDP allowed"), "b");
    assert!(tcp_from(&topo, 2, tcp_b).is_err(), "c -> b TCP denied");
    assert!(udp_from(&topo, 2, udp_b).is_err(), "c -> b UDP denied");
    // b cannot open connections itself (egress enforced, no rule).
    assert!(tcp_from(&topo, 1, SocketAddrV4::new(topo.pods[0].ip, 9)).is_err());

    // An established connection survives a reload that still allows it.
    let held = topo.pods[0]
        .ns
        .spawn(move || TcpStream::connect_timeout(&tcp_b.into(), T))
        .join()
        .unwrap()
        .unwrap()
        .expect("connect a -> b");
    dp.apply_policy(
        2,
        &[
            rule(Direction::Ingress, Some(100), c::PROTO_TCP, 8080),
            rule(Direction::Ingress, Some(100), c::PROTO_UDP, 5353),
            rule(Direction::Ingress, Some(300), c::PROTO_TCP, 8080),
        ],
    )
    .unwrap();
    let mut held = held;
    held.set_read_timeout(Some(T)).unwrap();
    held.write_all(b"?").unwrap();
    let mut buf = [0u8; 8];
    let n = held.read(&mut buf).expect("held connection still answered");
    assert_eq!(&buf[..n], b"b\n");
    drop(held);
    assert_eq!(tcp_from(&topo, 2, tcp_b).expect("c now allowed"), "b");

    // Denied after a policy change: a is no longer allowed.
    dp.apply_policy(
        2,
        &[rule(Direction::Ingress, Some(300), c::PROTO_TCP, 8080)],
    )
    .unwrap();
    assert!(
        tcp_from(&topo, 0, tcp_b).is_err(),
        "a -> b denied after change"
    );
    assert!(
        udp_from(&topo, 0, udp_b).is_err(),
        "a -> b UDP denied after change"
    );
    assert_eq!(tcp_from(&topo, 2, tcp_b).expect("c still allowed"), "b");

    let k = dp.counters().unwrap();
    assert!(
        k.packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED) >= 4,
        "{k:?}"
    );
    assert!(k.packets(c::VERDICT_FORWARDED, c::DROP_NONE) > 10, "{k:?}");
}
