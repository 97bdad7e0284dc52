//! `node-agent bpf ...` prints the pinned maps of a running datapath as tables.

mod common;

use common::*;
use node_agent::datapath::{
    Action, Backend, BackendState, Direction, Endpoint, LbAlgorithm, PolicyEntry, Service,
};
use node_agent::netns::PinDir;
use std::net::Ipv4Addr;
use std::process::Command;
use weft_datapath_common as c;

fn cli(pins: &PinDir, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .arg("--pin-path")
        .arg(pins.path())
        .arg("bpf")
        .args(args)
        .output()
        .expect("run node-agent");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bpf_subcommands_print_the_maps() {
    if !bpf_available("bpf_subcommands_print_the_maps") {
        return;
    }
    let pins = PinDir::create("t").unwrap();
    let mut dp = load(&pins);
    let ep = Ipv4Addr::new(10, 0, 1, 1);
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: ep,
        ip6: None,
        identity: 1001,
        // BPF_PROG_TEST_RUN runs packets as if from loopback (ifindex 1): the endpoint's
        // interface for source validation.
        ifindex: 1,
        enforce_ingress: true,
        enforce_egress: true,
    })
    .unwrap();
    dp.apply_ipcache_v4(Ipv4Addr::new(192, 168, 0, 0), 16, 3000)
        .unwrap();
    dp.apply_policy(
        1,
        &[PolicyEntry {
            direction: Direction::Egress,
            peer_identity: Some(3000),
            proto: Some(c::PROTO_TCP),
            ports: Some((8000, 8099)),
            action: Action::Allow,
            rule_id: 42,
        }],
    )
    .unwrap();
    dp.apply_service(&Service {
        id: 5,
        vip: Ipv4Addr::new(10, 96, 0, 10).into(),
        port: 80,
        proto: c::PROTO_TCP,
        algorithm: LbAlgorithm::Maglev { m: 251 },
        affinity: None,
        backends: vec![Backend {
            id: 50,
            ip: Ipv4Addr::new(10, 0, 1, 9).into(),
            port: 8080,
            weight: 1,
            state: BackendState::Active,
        }],
    })
    .unwrap();
    let pkt = packet(6, ep, Ipv4Addr::new(192, 168, 3, 3), 40000, 8050, TCP_SYN);
    assert_eq!(
        dp.test_run(c::progs::FROM_ENDPOINT, &pkt, 1)
            .unwrap()
            .retval,
        TC_ACT_OK
    );

    let out = cli(&pins, &["endpoint", "list"]);
    assert!(
        out.contains("10.0.1.1") && out.contains("1001") && out.contains("ingress,egress"),
        "{out}"
    );
    let out = cli(&pins, &["ipcache", "list"]);
    assert!(
        out.contains("192.168.0.0/16") && out.contains("3000") && out.contains("10.0.1.1/32"),
        "{out}"
    );
    let out = cli(&pins, &["policy", "get", "1"]);
    assert!(
        out.contains("8000-8063") && out.contains("8064-8095") && out.contains("8096-8099"),
        "{out}"
    );
    let out = cli(&pins, &["lb", "list"]);
    assert!(
        out.contains("10.96.0.10:80/TCP")
            && out.contains("maglev(M=251)")
            && out.contains("10.0.1.9:8080"),
        "{out}"
    );
    let out = cli(&pins, &["lb", "maglev", "get", "5"]);
    assert!(out.contains("M=251") && out.contains("100.00%"), "{out}");
    let out = cli(&pins, &["ct", "list"]);
    assert!(
        out.contains("10.0.1.1:40000") && out.contains("192.168.3.3:8050"),
        "{out}"
    );
    let out = cli(&pins, &["events", "--count", "1", "--idle-secs", "1"]);
    assert!(
        out.contains("FORWARDED")
            && out.contains("10.0.1.1:40000 -> 192.168.3.3:8050")
            && out.contains("id=1001->3000"),
        "{out}"
    );
    let out = cli(&pins, &["metrics"]);
    assert!(
        out.contains("FORWARDED") && out.contains("lost events"),
        "{out}"
    );
}
