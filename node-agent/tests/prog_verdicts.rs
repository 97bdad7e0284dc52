//! Program-level tests: the tc policy programs run on crafted packets with BPF_PROG_TEST_RUN.
//! `weft_from_endpoint` sees what an endpoint sends (its egress), `weft_to_endpoint` what it
//! receives (its ingress).
//!
//! Every packet is a [`Step`]: the program it goes through, and what it must come to (the
//! return code and the one counter it bumps, so a drop's reason is checked too). Cases that
//! are only a policy and packets are rows of one table ([`verdict_table`]); scenarios that
//! change the datapath between packets run their packets as steps.

mod common;

use common::*;
use node_agent::datapath::{
    drop_reason_name, verdict_name, Action, Datapath, Direction, Endpoint, PolicyEntry,
};
use node_agent::netns::PinDir;
use std::net::Ipv4Addr;
use weft_datapath_common as c;
use Action::{Allow, Deny};
use Direction::{Egress, Ingress};
use Want::{Dropped, Forward, PassUncounted};

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

/// `pkt` cut to its first `len` bytes.
fn truncated(mut pkt: Vec<u8>, len: usize) -> Vec<u8> {
    pkt.truncate(len);
    pkt
}

/// `pkt` with another ethertype (its header left as it is).
fn with_ethertype(mut pkt: Vec<u8>, ethertype: u16) -> Vec<u8> {
    pkt[12..14].copy_from_slice(&ethertype.to_be_bytes());
    pkt
}

/// An IPv4 `pkt` made a non-first fragment (offset 0x10 * 8 bytes, flags clear).
fn later_fragment(mut pkt: Vec<u8>) -> Vec<u8> {
    pkt[14 + 6] = 0x00;
    pkt[14 + 7] = 0x10;
    pkt
}

/// What one packet must come to.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// `TC_ACT_OK`, counted as forwarded.
    Forward,
    /// `TC_ACT_SHOT`, counted as dropped for this reason.
    Dropped(u8),
    /// `TC_ACT_OK`, counted nowhere: link-local control traffic (ARP, neighbour discovery)
    /// and the pass-through program.
    PassUncounted,
}

impl Want {
    /// The return code and the counters (verdict, reason) that go up by one.
    fn outcome(self) -> (u32, Vec<(u8, u8)>) {
        match self {
            Forward => (TC_ACT_OK, vec![(c::VERDICT_FORWARDED, c::DROP_NONE)]),
            Dropped(reason) => (TC_ACT_SHOT, vec![(c::VERDICT_DROPPED, reason)]),
            PassUncounted => (TC_ACT_OK, vec![]),
        }
    }
}

/// One packet through one program.
struct Step {
    what: &'static str,
    prog: &'static str,
    pkt: Vec<u8>,
    want: Want,
}

fn step(what: &'static str, prog: &'static str, pkt: Vec<u8>, want: Want) -> Step {
    Step {
        what,
        prog,
        pkt,
        want,
    }
}

/// Counters that moved, by name and by how much: "DROPPED/POLICY_DENIED +1".
fn counted(moved: &[((u8, u8), u64)]) -> String {
    let names: Vec<String> = moved
        .iter()
        .map(|&((v, r), n)| match drop_reason_name(r) {
            "" => format!("{} +{n}", verdict_name(v)),
            reason => format!("{}/{reason} +{n}", verdict_name(v)),
        })
        .collect();
    format!("[{}]", names.join(", "))
}

fn tc_act_name(ret: u32) -> String {
    match ret {
        TC_ACT_OK => "TC_ACT_OK".into(),
        TC_ACT_SHOT => "TC_ACT_SHOT".into(),
        other => other.to_string(),
    }
}

/// Runs `steps` in order; returns one line (naming `case` and the step) for each step whose
/// return code or counters are not the expected ones.
fn check(dp: &Datapath, case: &str, steps: &[Step]) -> Vec<String> {
    let mut failures = Vec::new();
    for s in steps {
        let before = dp.counters().unwrap().rows;
        let got = run(dp, s.prog, &s.pkt);
        let after = dp.counters().unwrap().rows;
        // Every counter that moved, and by how much: exactly the expected one, by one.
        let moved: Vec<((u8, u8), u64)> = after
            .iter()
            .map(|(k, (p, _))| (*k, p - before.get(k).map_or(0, |r| r.0)))
            .filter(|(_, d)| *d != 0)
            .collect();
        let (want_ret, want_rows) = s.want.outcome();
        let want_moved: Vec<((u8, u8), u64)> = want_rows.into_iter().map(|k| (k, 1)).collect();
        if got != want_ret || moved != want_moved {
            failures.push(format!(
                "{case}: {}: returned {}, counted {}; want {}, {}",
                s.what,
                tc_act_name(got),
                counted(&moved),
                tc_act_name(want_ret),
                counted(&want_moved),
            ));
        }
    }
    failures
}

/// [`check`], failing the test with every mismatch.
fn expect(dp: &Datapath, case: &str, steps: &[Step]) {
    let failures = check(dp, case, steps);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The datapath a table case starts from.
#[derive(Clone, Copy)]
enum World {
    /// Maps and programs only: no endpoint, no ipcache, no policy.
    Empty,
    /// [`setup`], then the case's policy on ep 1.
    Pods,
    /// The case's policy on ep 9, applied before ep 9 (EP1's address, identity 1001,
    /// enforcing egress only) exists.
    PolicyBeforeEndpoint,
}

/// A policy and the packets it must pass or drop.
struct Case {
    name: &'static str,
    world: World,
    policy: Vec<PolicyEntry>,
    steps: Vec<Step>,
}

impl Case {
    /// Runs the case on a fresh datapath; returns its mismatches.
    fn run(&self) -> Vec<String> {
        let pins = PinDir::create("t").unwrap();
        let dp = match self.world {
            World::Empty => {
                assert!(
                    self.policy.is_empty(),
                    "{}: no endpoint to hold a policy",
                    self.name
                );
                load(&pins)
            }
            World::Pods => {
                let mut dp = setup(&pins);
                if !self.policy.is_empty() {
                    dp.apply_policy(1, &self.policy).unwrap();
                }
                dp
            }
            World::PolicyBeforeEndpoint => {
                let mut dp = load(&pins);
                dp.apply_policy(9, &self.policy).unwrap();
                dp.apply_endpoint(&Endpoint {
                    id: 9,
                    ip: EP1,
                    ip6: None,
                    identity: 1001,
                    ifindex: 0,
                    enforce_ingress: false,
                    enforce_egress: true,
                })
                .unwrap();
                dp
            }
        };
        check(&dp, self.name, &self.steps)
    }
}

fn verdict_table() -> Vec<Case> {
    vec![
        Case {
            name: "the pass-through program passes",
            world: World::Empty,
            policy: vec![],
            steps: vec![step(
                "any packet",
                PASS,
                tcp(
                    Ipv4Addr::new(1, 1, 1, 1),
                    Ipv4Addr::new(2, 2, 2, 2),
                    1,
                    2,
                    TCP_SYN,
                ),
                PassUncounted,
            )],
        },
        Case {
            name: "egress allowed by identity and port, else policy denied",
            world: World::Pods,
            policy: vec![entry(Egress, Some(1002), Some(6), Some((80, 80)), Allow)],
            steps: vec![
                step("allowed", FROM, tcp(EP1, EP2, 40000, 80, TCP_SYN), Forward),
                step(
                    "other port",
                    FROM,
                    tcp(EP1, EP2, 40001, 81, TCP_SYN),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
                step(
                    "right port, wrong peer identity",
                    FROM,
                    tcp(EP1, REMOTE, 40002, 80, TCP_SYN),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
            ],
        },
        Case {
            name: "a deny rule wins over allows",
            world: World::Pods,
            policy: vec![
                entry(Egress, None, None, None, Allow),
                entry(Egress, Some(2000), Some(6), Some((22, 22)), Deny),
                // A more specific allow does not beat a deny either.
                entry(Egress, Some(2000), Some(6), Some((22, 22)), Allow),
            ],
            steps: vec![
                step(
                    "denied peer and port",
                    FROM,
                    tcp(EP1, REMOTE, 40000, 22, TCP_SYN),
                    Dropped(c::DROP_DENY_RULE),
                ),
                step(
                    "other port",
                    FROM,
                    tcp(EP1, REMOTE, 40000, 23, TCP_SYN),
                    Forward,
                ),
                step(
                    "other peer",
                    FROM,
                    tcp(EP1, EP2, 40000, 22, TCP_SYN),
                    Forward,
                ),
            ],
        },
        Case {
            name: "port ranges match exactly their range",
            world: World::Pods,
            policy: vec![entry(
                Egress,
                Some(2000),
                Some(6),
                Some((8000, 8100)),
                Allow,
            )],
            steps: [
                ("below", 7999, Dropped(c::DROP_POLICY_DENIED)),
                ("first", 8000, Forward),
                ("inside", 8050, Forward),
                ("last", 8100, Forward),
                ("above", 8101, Dropped(c::DROP_POLICY_DENIED)),
            ]
            .into_iter()
            .map(|(what, port, want)| {
                step(
                    what,
                    FROM,
                    tcp(EP1, REMOTE, 30000 + port, port, TCP_SYN),
                    want,
                )
            })
            .collect(),
        },
        Case {
            name: "wildcard identity and protocol",
            world: World::Pods,
            policy: vec![entry(Egress, None, Some(17), None, Allow)],
            steps: vec![
                step(
                    "UDP to the world",
                    FROM,
                    packet(17, EP1, WORLD_HOST, 5353, 53, 0),
                    Forward,
                ),
                step(
                    "UDP to a pod, any port",
                    FROM,
                    packet(17, EP1, REMOTE, 5353, 9999, 0),
                    Forward,
                ),
                step(
                    "TCP",
                    FROM,
                    tcp(EP1, WORLD_HOST, 5353, 53, TCP_SYN),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
                step(
                    "ICMP echo (type 8) is its own protocol",
                    FROM,
                    packet(1, EP1, WORLD_HOST, 77, 8, 0),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
            ],
        },
        Case {
            name: "CIDR except through the longest-prefix identity",
            // Allow 192.168.0.0/16 (identity 3000) except 192.168.5.0/24 (identity 3001).
            world: World::Pods,
            policy: vec![entry(Egress, Some(3000), Some(6), Some((443, 443)), Allow)],
            steps: vec![
                step(
                    "in the CIDR",
                    FROM,
                    tcp(EP1, CIDR_HOST, 40000, 443, TCP_SYN),
                    Forward,
                ),
                step(
                    "in the except",
                    FROM,
                    tcp(EP1, EXCEPT_HOST, 40000, 443, TCP_SYN),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
                step(
                    "outside the CIDR",
                    FROM,
                    tcp(EP1, WORLD_HOST, 40000, 443, TCP_SYN),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
            ],
        },
        Case {
            name: "directions without enforcement default-allow",
            world: World::Pods,
            policy: vec![],
            steps: vec![
                // ep 2 enforces nothing: anything in or out passes.
                step(
                    "into ep 2",
                    TO,
                    tcp(WORLD_HOST, EP2, 1234, 5678, TCP_SYN),
                    Forward,
                ),
                step(
                    "out of ep 2",
                    FROM,
                    tcp(EP2, WORLD_HOST, 5678, 1234, TCP_SYN),
                    Forward,
                ),
                // ep 1 enforces both with no rule: default deny.
                step(
                    "into ep 1",
                    TO,
                    tcp(WORLD_HOST, EP1, 1234, 5678, TCP_SYN),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
                step(
                    "out of ep 1",
                    FROM,
                    tcp(EP1, WORLD_HOST, 5678, 1234, TCP_SYN),
                    Dropped(c::DROP_POLICY_DENIED),
                ),
            ],
        },
        Case {
            name: "fails closed on unknown endpoints and bad packets",
            world: World::Pods,
            policy: vec![],
            steps: vec![
                step(
                    "source is not an endpoint of this interface (spoofed)",
                    FROM,
                    tcp(WORLD_HOST, EP1, 1, 2, TCP_SYN),
                    Dropped(c::DROP_UNKNOWN_ENDPOINT),
                ),
                step(
                    "truncated TCP header",
                    FROM,
                    truncated(tcp(EP2, WORLD_HOST, 1, 2, TCP_SYN), 40),
                    Dropped(c::DROP_INVALID_PACKET),
                ),
                // From an endpoint that enforces egress (one without policy is never
                // affected: no_bypass.rs).
                step(
                    "non-first fragment whose first fragment was never seen",
                    FROM,
                    later_fragment(tcp(EP1, WORLD_HOST, 1, 2, TCP_SYN)),
                    Dropped(c::DROP_FRAGMENT),
                ),
                step(
                    "an IPv6 ethertype over a header that is not IPv6",
                    FROM,
                    with_ethertype(tcp(EP2, WORLD_HOST, 1, 2, TCP_SYN), 0x86dd),
                    Dropped(c::DROP_INVALID_PACKET),
                ),
                // Other ethertypes are dropped: no_bypass.rs.
                step(
                    "ARP is not IP: passes",
                    FROM,
                    with_ethertype(tcp(EP2, WORLD_HOST, 1, 2, TCP_SYN), 0x0806),
                    PassUncounted,
                ),
            ],
        },
        Case {
            name: "range rules applied before their endpoint still apply",
            world: World::PolicyBeforeEndpoint,
            policy: vec![
                entry(Egress, None, None, None, Allow),
                entry(Egress, None, Some(6), Some((6000, 6999)), Deny),
            ],
            steps: vec![
                step(
                    "range deny applies",
                    FROM,
                    tcp(EP1, REMOTE, 40000, 6500, TCP_SYN),
                    Dropped(c::DROP_DENY_RULE),
                ),
                step(
                    "outside the range",
                    FROM,
                    tcp(EP1, REMOTE, 40000, 7000, TCP_SYN),
                    Forward,
                ),
            ],
        },
    ]
}

/// Each case on its own fresh datapath; every mismatch of every case is reported, by name.
#[test]
fn policy_and_parsing_verdicts() {
    if !bpf_available("policy_and_parsing_verdicts") {
        return;
    }
    let cases = verdict_table();
    let mut names = std::collections::BTreeSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "two cases named {:?}", case.name);
    }
    // One thread per case (each loads its own datapath, as separate tests would).
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|case| (case.name, scope.spawn(|| case.run())))
            .collect();
        runs.into_iter()
            .flat_map(|(name, run)| {
                run.join()
                    .unwrap_or_else(|_| vec![format!("{name}: panicked (see above)")])
            })
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} steps failed:\n{}",
        failures.len(),
        cases.iter().map(|c| c.steps.len()).sum::<usize>(),
        failures.join("\n")
    );
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
                Dropped(c::DROP_POLICY_DENIED),
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
            Dropped(c::DROP_POLICY_DENIED),
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
    let r = dp
        .test_run(TO, &tcp(REMOTE, EP1, 40000, 80, TCP_SYN), 1)
        .unwrap();
    assert_eq!(r.retval, TC_ACT_OK);
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
        &[step(
            "established",
            FROM,
            ack(),
            Dropped(c::DROP_POLICY_DENIED),
        )],
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
            Dropped(c::DROP_POLICY_DENIED),
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
        Dropped(c::DROP_POLICY_DENIED),
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
            Dropped(c::DROP_DENY_RULE),
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
            Dropped(c::DROP_UNKNOWN_ENDPOINT),
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
                Dropped(c::DROP_UNKNOWN_ENDPOINT),
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
                Dropped(c::DROP_POLICY_DENIED),
            ),
            step(
                "other peer",
                FROM,
                tcp6(EP1_V6, WORLD_V6, 40000, 80, TCP_SYN),
                Dropped(c::DROP_POLICY_DENIED),
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
                Dropped(c::DROP_POLICY_DENIED),
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
                Dropped(c::DROP_POLICY_DENIED),
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
            step(
                "the older policy",
                FROM,
                syn(80),
                Dropped(c::DROP_POLICY_DENIED),
            ),
            step(
                "the older policy",
                FROM,
                syn(81),
                Dropped(c::DROP_POLICY_DENIED),
            ),
        ],
    );
}
