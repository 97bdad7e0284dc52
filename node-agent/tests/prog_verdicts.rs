//! Program-level tests: the tc policy programs run on crafted packets with BPF_PROG_TEST_RUN.
//! `weft_from_endpoint` sees what an endpoint sends (its egress), `weft_to_endpoint` what it
//! receives (its ingress).
//!
//! Every packet is a step (`steps`): the program it goes through, and what it must come to
//! (the return code and the one counter it bumps, so a drop's reason is checked too). Cases
//! that are only a policy and packets are rows of one table (`table`); the scenarios here,
//! which change the datapath between packets, run their packets as steps.

mod common;
#[path = "prog_verdicts/steps.rs"]
mod steps;
#[path = "prog_verdicts/table.rs"]
mod table;

use common::*;
use node_agent::datapath::{Action, Datapath, Direction, Endpoint, PolicyEntry};
use node_agent::netns::PinDir;
use std::net::Ipv4Addr;
use steps::{expect, step, Want::*, DENIED, DENY_RULE, NOT_AN_ENDPOINT};
use weft_datapath_common as c;
use Action::{Allow, Deny};
use Direction::{Egress, Ingress};

const EP1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const EP2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
const CIDR_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const EXCEPT_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 5, 5);
const WORLD_HOST: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

const FROM: &str = c::progs::FROM_ENDPOINT;
const TO: &str = c::progs::TO_ENDPOINT;
const PASS: &str = c::progs::PASS;

/// ep 1 (identity 1001) enforces both directions; ep 2 (identity 1002) enforces nothing.
/// ipcache: remote pod 10.0.2.5 -> 2000, 192.168.0.0/16 -> 3000 except 192.168.5.0/24 -> 3001.
fn setup(pins: &PinDir) -> Datapath {
    let mut dp = load(pins);
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: EP1,
        ip6: None,
        identity: 1001,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: true,
    })
    .unwrap();
    dp.apply_endpoint(&Endpoint {
        id: 2,
        ip: EP2,
        ip6: None,
        identity: 1002,
        ifindex: 0,
        enforce_ingress: false,
        enforce_egress: false,
    })
    .unwrap();
    dp.apply_ipcache_v4(REMOTE, 32, 2000).unwrap();
    dp.apply_ipcache_v4(Ipv4Addr::new(192, 168, 0, 0), 16, 3000)
        .unwrap();
    dp.apply_ipcache_v4(Ipv4Addr::new(192, 168, 5, 0), 24, 3001)
        .unwrap();
    dp
}

fn entry(
    direction: Direction,
    peer: Option<u32>,
    proto: Option<u8>,
    ports: Option<(u16, u16)>,
    action: Action,
) -> PolicyEntry {
    PolicyEntry {
        direction,
        peer_identity: peer,
        proto,
        ports,
        action,
        rule_id: 1,
    }
}

fn run(dp: &Datapath, prog: &'static str, pkt: &[u8]) -> u32 {
    dp.test_run(prog, pkt, 1).expect("test run").retval
}

fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    packet(6, src, dst, sport, dport, flags)
}

#[test]
fn replies_pass_through_conntrack_without_an_ingress_rule() {
    if !bpf_available("replies_pass_through_conntrack_without_an_ingress_rule") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    dp.apply_policy(
        1,
        &[entry(Egress, Some(2000), Some(6), Some((80, 80)), Allow)],
    )
    .unwrap();
    expect(
        &dp,
        "replies",
        &[
            step(
                "allowed",
                FROM,
                tcp(EP1, REMOTE, 40000, 80, TCP_SYN),
                Forward,
            ),
            // ep 1 enforces ingress with no rule: conntrack lets the reply in.
            step(
                "the reply",
                TO,
                tcp(REMOTE, EP1, 80, 40000, TCP_SYN | TCP_ACK),
                Forward,
            ),
            step(
                "same peer, a port pair that is not a reply",
                TO,
                tcp(REMOTE, EP1, 80, 40001, TCP_SYN | TCP_ACK),
                DENIED,
            ),
        ],
    );
    let ct = dp.maps.list_ct().unwrap();
    assert_eq!(ct.len(), 1, "one entry for the allowed connection: {ct:?}");
    assert_eq!(ct[0].1.packets, 2);
    assert_ne!(ct[0].1.flags & c::CT_F_SEEN_REPLY, 0);
}

#[test]
fn conntrack_entries_expire() {
    if !bpf_available("conntrack_entries_expire") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    dp.set_runtime_config(c::Config {
        ct_udp_timeout_s: 0,
        ..c::Config::default()
    })
    .unwrap();
    dp.apply_policy(1, &[entry(Egress, None, Some(17), None, Allow)])
        .unwrap();
    let udp = |src, dst, sport, dport| packet(17, src, dst, sport, dport, 0);
    expect(
        &dp,
        "zero timeout",
        &[step("allowed", FROM, udp(EP1, REMOTE, 5000, 53), Forward)],
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    expect(
        &dp,
        "zero timeout",
        &[step(
            "the entry is stale: the \"reply\" is a new ingress flow",
            TO,
            udp(REMOTE, EP1, 53, 5000),
            DENIED,
        )],
    );
    dp.set_runtime_config(c::Config::default()).unwrap();
    expect(
        &dp,
        "default timeout",
        &[
            step("allowed", FROM, udp(EP1, REMOTE, 5001, 53), Forward),
            step("the reply", TO, udp(REMOTE, EP1, 53, 5001), Forward),
        ],
    );
}

#[test]
fn redirect_marks_packets_for_the_proxy() {
    if !bpf_available("redirect_marks_packets_for_the_proxy") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    dp.apply_policy(
        1,
        &[entry(
            Ingress,
            None,
            Some(6),
            Some((80, 80)),
            Action::Redirect { proxy_port: 15001 },
        )],
    )
    .unwrap();
    // No proxy device on the node: nothing to hand the connection to, fail closed.
    let r = dp
        .test_run(TO, &tcp(REMOTE, EP1, 40000, 80, TCP_SYN), 1)
        .unwrap();
    assert_eq!(r.retval, TC_ACT_SHOT);
    assert_eq!(
        dp.counters()
            .unwrap()
            .packets(c::VERDICT_DROPPED, c::DROP_INTERNAL),
        1
    );
    // With one: redirected into its ingress (TC_ACT_REDIRECT), marked with the port.
    dp.set_runtime_config(c::Config {
        proxy_ifindex: 1,
        ..c::Config::default()
    })
    .unwrap();
    let r = dp
        .test_run(TO, &tcp(REMOTE, EP1, 40000, 80, TCP_SYN), 1)
        .unwrap();
    assert_eq!(r.retval, 7, "TC_ACT_REDIRECT");
    let mark = u32::from_ne_bytes([r.ctx_out[8], r.ctx_out[9], r.ctx_out[10], r.ctx_out[11]]);
    assert_eq!(mark, c::MARK_PROXY | (15001 << 16));
    assert_eq!(
        dp.counters()
            .unwrap()
            .packets(c::VERDICT_REDIRECTED, c::DROP_NONE),
        1
    );
    // The established connection keeps going to the proxy.
    let r = dp
        .test_run(TO, &tcp(REMOTE, EP1, 40000, 80, TCP_ACK), 1)
        .unwrap();
    let mark = u32::from_ne_bytes([r.ctx_out[8], r.ctx_out[9], r.ctx_out[10], r.ctx_out[11]]);
    assert_eq!(mark, c::MARK_PROXY | (15001 << 16));
}

#[test]
fn policy_change_revokes_or_keeps_established_connections() {
    if !bpf_available("policy_change_revokes_or_keeps_established_connections") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    let allow80 = entry(Egress, Some(2000), Some(6), Some((80, 80)), Allow);
    dp.apply_policy(1, std::slice::from_ref(&allow80)).unwrap();
    let ack = || tcp(EP1, REMOTE, 40000, 80, TCP_ACK);
    expect(
        &dp,
        "allowed",
        &[step(
            "new",
            FROM,
            tcp(EP1, REMOTE, 40000, 80, TCP_SYN),
            Forward,
        )],
    );
    // A reload that still allows it (an unrelated rule added): the connection survives.
    let other = entry(Egress, Some(2000), Some(17), Some((53, 53)), Allow);
    dp.apply_policy(1, &[allow80.clone(), other.clone()])
        .unwrap();
    expect(
        &dp,
        "still allowed",
        &[step("established", FROM, ack(), Forward)],
    );
    // Applying the same set again is a no-op (revision unchanged).
    let rev = |dp: &Datapath| {
        dp.maps
            .list_endpoints()
            .unwrap()
            .iter()
            .find(|(_, v)| v.ep_id == 1)
            .unwrap()
            .1
            .policy_rev
    };
    let before = rev(&dp);
    dp.apply_policy(1, &[allow80, other.clone()]).unwrap();
    assert_eq!(rev(&dp), before);
    // A change that no longer allows it: the next packet of the connection is dropped.
    dp.apply_policy(1, &[other]).unwrap();
    expect(
        &dp,
        "no longer allowed",
        &[step("established", FROM, ack(), DENIED)],
    );
    // The entry stays, revoked: the connection's replies drop too.
    let ct = dp.maps.list_ct().unwrap();
    assert_eq!(ct.len(), 1, "{ct:?}");
    assert_ne!(ct[0].1.flags & c::CT_F_REVOKED, 0, "revoked: {ct:?}");
    expect(
        &dp,
        "revoked",
        &[step(
            "a reply of a revoked connection",
            TO,
            tcp(REMOTE, EP1, 80, 40000, TCP_ACK),
            DENIED,
        )],
    );
}

#[test]
fn flow_events_on_start_drop_and_close_only() {
    if !bpf_available("flow_events_on_start_drop_and_close_only") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    let mut events = dp.flow_events().expect("event reader");
    dp.apply_policy(
        1,
        &[entry(Egress, Some(2000), Some(6), Some((80, 80)), Allow)],
    )
    .unwrap();
    let mut steps = vec![step(
        "start",
        FROM,
        tcp(EP1, REMOTE, 40000, 80, TCP_SYN),
        Forward,
    )];
    for _ in 0..5 {
        steps.push(step(
            "established",
            FROM,
            tcp(EP1, REMOTE, 40000, 80, TCP_ACK),
            Forward,
        ));
    }
    steps.push(step(
        "FIN",
        FROM,
        tcp(EP1, REMOTE, 40000, 80, TCP_FIN | TCP_ACK),
        Forward,
    ));
    steps.push(step(
        "other port",
        FROM,
        tcp(EP1, REMOTE, 40000, 81, TCP_SYN),
        DENIED,
    ));
    expect(&dp, "events", &steps);
    let ev = events.drain();
    assert_eq!(ev.len(), 3, "start, FIN, drop; not every packet: {ev:?}");
    let start = &ev[0];
    assert_eq!(
        (start.verdict, start.drop_reason),
        (c::VERDICT_FORWARDED, c::DROP_NONE)
    );
    assert_eq!((start.sport, start.dport, start.proto), (40000, 80, 6));
    assert_eq!(
        (start.ep_id, start.src_identity, start.dst_identity),
        (1, 1001, 2000)
    );
    assert_eq!(
        (start.direction, start.obs_point),
        (c::DIR_EGRESS, c::OBS_FROM_ENDPOINT)
    );
    assert_eq!(&start.saddr[..4], &EP1.octets());
    assert!(start.bytes > 0 && start.ts_ns > 0);
    assert_ne!(ev[1].tcp_flags & TCP_FIN, 0);
    assert_eq!(
        (ev[2].verdict, ev[2].drop_reason, ev[2].dport),
        (c::VERDICT_DROPPED, c::DROP_POLICY_DENIED, 81)
    );
    assert_eq!(dp.counters().unwrap().lost_events, 0);
}

#[test]
fn range_deny_beats_single_port_allow_and_ranges_are_removed_cleanly() {
    if !bpf_available("range_deny_beats_single_port_allow_and_ranges_are_removed_cleanly") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    let allow = entry(Egress, Some(2000), Some(6), Some((8080, 8080)), Allow);
    let deny_range = entry(Egress, None, Some(6), Some((8000, 8100)), Deny);
    dp.apply_policy(1, &[allow.clone(), deny_range]).unwrap();
    let flags = |dp: &Datapath| {
        dp.maps
            .list_endpoints()
            .unwrap()
            .iter()
            .find(|(_, v)| v.ep_id == 1)
            .unwrap()
            .1
            .flags
    };
    assert_ne!(flags(&dp) & c::EP_HAS_PORT_RANGES, 0);
    expect(
        &dp,
        "range deny",
        &[step(
            "allowed port inside the denied range",
            FROM,
            tcp(EP1, REMOTE, 40000, 8080, TCP_SYN),
            DENY_RULE,
        )],
    );
    dp.apply_policy(1, &[allow]).unwrap();
    assert_eq!(flags(&dp) & c::EP_HAS_PORT_RANGES, 0);
    assert_eq!(
        dp.maps.list_policy(1).unwrap().len(),
        1,
        "only the single-port entry is left"
    );
    expect(
        &dp,
        "range removed",
        &[step(
            "allowed port",
            FROM,
            tcp(EP1, REMOTE, 40001, 8080, TCP_SYN),
            Forward,
        )],
    );
    // The debug view shows the entry.
    let table = node_agent::debug::policy_get(&dp.maps, 1).unwrap();
    assert!(
        table.contains("8080") && table.contains("allow") && table.contains("egress"),
        "{table}"
    );
}

#[test]
fn flow_events_stream_asynchronously() {
    if !bpf_available("flow_events_stream_asynchronously") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    let events = dp.flow_events().expect("event reader");
    assert!(dp.flow_events().is_none(), "one consumer per ring buffer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut stream = node_agent::datapath::FlowEventStream::new(events).unwrap();
        assert_eq!(
            run(&dp, FROM, &tcp(EP1, WORLD_HOST, 1234, 22, TCP_SYN)),
            TC_ACT_SHOT
        );
        let ev = tokio::time::timeout(std::time::Duration::from_secs(2), stream.next())
            .await
            .expect("an event arrives")
            .unwrap();
        assert_eq!(
            (ev.verdict, ev.drop_reason, ev.dport),
            (c::VERDICT_DROPPED, c::DROP_POLICY_DENIED, 22)
        );
        assert_eq!(ev.src_identity, 1001);
        assert_eq!(ev.dst_identity, c::IDENTITY_WORLD);
    });
}

#[test]
fn lost_events_are_counted_when_the_ring_buffer_is_full() {
    if !bpf_available("lost_events_are_counted_when_the_ring_buffer_is_full") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    // The smallest ring buffer (one page) holds ~45 events; nobody reads it.
    let mut dp = Datapath::load(node_agent::datapath::DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        sizes: node_agent::datapath::MapSizes {
            events_bytes: 4096,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: EP1,
        ip6: None,
        identity: 1001,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: true,
    })
    .unwrap();
    for port in 0..100u16 {
        assert_eq!(
            run(&dp, FROM, &tcp(EP1, WORLD_HOST, 1000 + port, port, TCP_SYN)),
            TC_ACT_SHOT
        );
    }
    let k = dp.counters().unwrap();
    assert_eq!(k.packets(c::VERDICT_DROPPED, c::DROP_POLICY_DENIED), 100);
    assert!(k.lost_events > 0, "overflow is counted, not silent: {k:?}");
    let delivered = dp.flow_events().unwrap().drain().len() as u64;
    assert_eq!(
        delivered + k.lost_events,
        100,
        "every event is either delivered or counted as lost"
    );
}

#[test]
fn a_reopened_ring_buffer_continues_where_the_last_reader_stopped() {
    if !bpf_available("a_reopened_ring_buffer_continues_where_the_last_reader_stopped") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    // A small ring, so the positions wrap around it several times.
    let cfg = node_agent::datapath::DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        sizes: node_agent::datapath::MapSizes {
            events_bytes: 4096,
            ..Default::default()
        },
        ..Default::default()
    };
    let drop_n = |dp: &Datapath, first_port: u16, n: u16| {
        for port in first_port..first_port + n {
            assert_eq!(
                run(dp, FROM, &tcp(EP1, WORLD_HOST, 1000, port, TCP_SYN)),
                TC_ACT_SHOT
            );
        }
    };
    let mut dp = Datapath::load(cfg.clone()).unwrap();
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: EP1,
        ip6: None,
        identity: 1001,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: true,
    })
    .unwrap();
    let mut events = dp.flow_events().unwrap();
    for round in 0..5u16 {
        drop_n(&dp, round * 30, 30);
        assert_eq!(events.drain().len(), 30);
    }
    drop(events);
    drop(dp);
    // An agent restart: a new reader of the pinned ring sees nothing old (aya 0.13's own
    // reader walked past the producer forever here), then exactly what comes next.
    let mut dp = Datapath::load(cfg).unwrap();
    let mut events = dp.flow_events().unwrap();
    assert!(events.drain().is_empty());
    drop_n(&dp, 500, 3);
    let ev = events.drain();
    assert_eq!(
        ev.iter().map(|e| e.dport).collect::<Vec<_>>(),
        [500, 501, 502]
    );
    assert_eq!(events.corrupt(), 0);
    assert_eq!(dp.counters().unwrap().lost_events, 0);
}

#[test]
fn removing_an_endpoint_removes_its_entries_and_fails_closed() {
    if !bpf_available("removing_an_endpoint_removes_its_entries_and_fails_closed") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    dp.apply_policy(
        1,
        &[
            entry(Egress, None, Some(6), Some((80, 80)), Allow),
            entry(Egress, None, Some(6), Some((1000, 2000)), Allow),
        ],
    )
    .unwrap();
    expect(
        &dp,
        "endpoint",
        &[step(
            "allowed",
            FROM,
            tcp(EP1, REMOTE, 40000, 80, TCP_SYN),
            Forward,
        )],
    );
    dp.remove_endpoint(1, EP1).unwrap();
    assert!(dp.maps.list_policy(1).unwrap().is_empty());
    assert!(dp
        .maps
        .list_endpoints()
        .unwrap()
        .iter()
        .all(|(_, v)| v.ep_id != 1));
    assert!(dp
        .maps
        .list_ipcache()
        .unwrap()
        .iter()
        .all(|(k, _)| k.data().addr[..4] != EP1.octets()));
    expect(
        &dp,
        "endpoint removed",
        &[step(
            "its traffic is no longer classified as an endpoint's",
            FROM,
            tcp(EP1, REMOTE, 40001, 80, TCP_SYN),
            NOT_AN_ENDPOINT,
        )],
    );
}

#[test]
fn an_endpoint_that_changes_address_leaves_nothing_behind() {
    if !bpf_available("an_endpoint_that_changes_address_leaves_nothing_behind") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    let moved = Ipv4Addr::new(10, 0, 1, 77);
    dp.apply_endpoint(&Endpoint {
        id: 2,
        ip: moved,
        ip6: None,
        identity: 1002,
        ifindex: 0,
        enforce_ingress: false,
        enforce_egress: false,
    })
    .unwrap();
    let eps = dp.maps.list_endpoints().unwrap();
    assert_eq!(eps.iter().filter(|(_, v)| v.ep_id == 2).count(), 1);
    expect(
        &dp,
        "moved",
        &[
            step(
                "old address is no endpoint",
                FROM,
                tcp(EP2, WORLD_HOST, 1, 2, TCP_SYN),
                NOT_AN_ENDPOINT,
            ),
            step(
                "new address",
                FROM,
                tcp(moved, WORLD_HOST, 1, 2, TCP_SYN),
                Forward,
            ),
        ],
    );
    assert!(dp
        .maps
        .list_ipcache()
        .unwrap()
        .iter()
        .all(|(k, _)| k.data().addr[..4] != EP2.octets()));
}

const EP1_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 1);
const PEER_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 5);
const WORLD_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);

#[test]
fn ipv6_policy_conntrack_and_neighbour_discovery() {
    if !bpf_available("ipv6_policy_conntrack_and_neighbour_discovery") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    let mut events = dp.flow_events().unwrap();
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: EP1,
        ip6: Some(EP1_V6),
        identity: 1001,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: true,
    })
    .unwrap();
    // fd00:0:0:2::/64 is identity 2000.
    dp.apply_ipcache_ip(
        std::net::IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 2, 0, 0, 0, 0)),
        64,
        2000,
    )
    .unwrap();
    dp.apply_policy(
        1,
        &[entry(Egress, Some(2000), Some(6), Some((80, 80)), Allow)],
    )
    .unwrap();
    let tcp6 = |src, dst, sport, dport, flags| packet6(6, src, dst, sport, dport, flags);
    expect(
        &dp,
        "IPv6",
        &[
            step(
                "allowed",
                FROM,
                tcp6(EP1_V6, PEER_V6, 40000, 80, TCP_SYN),
                Forward,
            ),
            step(
                "other port",
                FROM,
                tcp6(EP1_V6, PEER_V6, 40000, 81, TCP_SYN),
                DENIED,
            ),
            step(
                "other peer",
                FROM,
                tcp6(EP1_V6, WORLD_V6, 40000, 80, TCP_SYN),
                DENIED,
            ),
            // The reply comes in through conntrack; a non-reply does not.
            step(
                "the reply",
                TO,
                tcp6(PEER_V6, EP1_V6, 80, 40000, TCP_SYN | TCP_ACK),
                Forward,
            ),
            step(
                "not a reply",
                TO,
                tcp6(PEER_V6, EP1_V6, 80, 40001, TCP_SYN | TCP_ACK),
                DENIED,
            ),
            step(
                "neighbour solicitation (ICMPv6 135) passes like ARP",
                TO,
                packet6(58, WORLD_V6, EP1_V6, 0, 135, 0),
                PassUncounted,
            ),
            step(
                "the endpoint's IPv4 address is unaffected by the IPv6 entries",
                FROM,
                tcp(EP1, WORLD_HOST, 1, 80, TCP_SYN),
                DENIED,
            ),
        ],
    );
    let ev = events.drain();
    assert_eq!(ev[0].family, c::FAMILY_IPV6);
    assert_eq!(ev[0].saddr, EP1_V6.octets());
    assert_eq!(
        (ev[0].src_identity, ev[0].dst_identity, ev[0].verdict),
        (1001, 2000, c::VERDICT_FORWARDED)
    );
    let ct = dp.maps.list_ct().unwrap();
    assert!(ct
        .iter()
        .any(|(k, _)| k.family == c::FAMILY_IPV6 && k.saddr == EP1_V6.octets()));
    let table = node_agent::debug::ct_list(&dp.maps).unwrap();
    assert!(table.contains("[fd00:0:0:1::1]:40000"), "{table}");
    // Removing the endpoint removes both addresses.
    dp.remove_endpoint(1, EP1).unwrap();
    assert!(dp.maps.list_endpoints().unwrap().is_empty());
}

/// An agent stopped between a policy flip and the deletion of the old generation: the next
/// agent keeps the generation in force, deletes the other, and enforces the newer policy.
#[test]
fn restart_mid_change_keeps_the_policy_in_force_and_drops_the_old_generation() {
    if !bpf_available("restart_mid_change_keeps_the_policy_in_force_and_drops_the_old_generation") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = setup(&pins);
    let allow = |port: u16| entry(Egress, None, Some(6), Some((port, port)), Allow);
    dp.apply_policy(1, &[allow(80), allow(81)]).unwrap();
    dp.settle_policy().unwrap();
    dp.apply_policy(1, &[allow(443)]).unwrap();
    // Not settled: both generations are in the map; only the one in force is listed.
    assert_eq!(dp.maps.policy.keys().count(), 3);
    assert_eq!(dp.maps.list_policy(1).unwrap().len(), 1);
    drop(dp);

    let dp = load(&pins);
    assert_eq!(
        dp.maps.policy.keys().count(),
        1,
        "the old generation is gone"
    );
    let syn = |port| tcp(EP1, REMOTE, 40000, port, TCP_SYN);
    expect(
        &dp,
        "after the restart",
        &[
            step("the newer policy", FROM, syn(443), Forward),
            step("the older policy", FROM, syn(80), DENIED),
            step("the older policy", FROM, syn(81), DENIED),
        ],
    );
}
