//! The verdict table: cases that are a policy and packets, each run on a fresh datapath.

use node_agent::datapath::{Endpoint, PolicyEntry};
use node_agent::netns::PinDir;
use std::net::Ipv4Addr;
use weft_datapath_common as c;

use crate::common::{bpf_available, load, packet, TCP_SYN};
use crate::steps::{check, step, Step, Want::*, DENIED, DENY_RULE, NOT_AN_ENDPOINT};
use crate::{
    entry, setup, tcp, CIDR_HOST, EP1, EP2, EXCEPT_HOST, FROM, PASS, REMOTE, TO, WORLD_HOST,
};
use node_agent::datapath::Action::{Allow, Deny};
use node_agent::datapath::Direction::Egress;

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

/// The datapath a table case starts from.
#[derive(Clone, Copy)]
enum World {
    /// Maps and programs only: no endpoint, no ipcache, no policy.
    Empty,
    /// [`setup`](crate::setup), then the case's policy on ep 1.
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

/// Every case of the table.
fn cases() -> Vec<Case> {
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
                    DENIED,
                ),
                step(
                    "right port, wrong peer identity",
                    FROM,
                    tcp(EP1, REMOTE, 40002, 80, TCP_SYN),
                    DENIED,
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
                    DENY_RULE,
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
                ("below", 7999, DENIED),
                ("first", 8000, Forward),
                ("inside", 8050, Forward),
                ("last", 8100, Forward),
                ("above", 8101, DENIED),
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
                step("TCP", FROM, tcp(EP1, WORLD_HOST, 5353, 53, TCP_SYN), DENIED),
                step(
                    "ICMP echo (type 8) is its own protocol",
                    FROM,
                    packet(1, EP1, WORLD_HOST, 77, 8, 0),
                    DENIED,
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
                    DENIED,
                ),
                step(
                    "outside the CIDR",
                    FROM,
                    tcp(EP1, WORLD_HOST, 40000, 443, TCP_SYN),
                    DENIED,
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
                    DENIED,
                ),
                step(
                    "out of ep 1",
                    FROM,
                    tcp(EP1, WORLD_HOST, 5678, 1234, TCP_SYN),
                    DENIED,
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
                    NOT_AN_ENDPOINT,
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
                    DENY_RULE,
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
    let cases = cases();
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
