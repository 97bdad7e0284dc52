use weft_model::workload::WorkloadKind;

use super::*;
use weft_proto::v1 as pb;

/// Records datapath calls; fails calls whose rendering contains `fail_on`.
#[derive(Default)]
struct Fake {
    calls: Vec<String>,
    fail_on: Option<String>,
}

impl Fake {
    fn record(&mut self, call: String) -> Result<(), DatapathError> {
        let failed = self.fail_on.as_ref().is_some_and(|f| call.contains(f));
        self.calls.push(call);
        if failed {
            Err(DatapathError::UnknownEndpoint(0))
        } else {
            Ok(())
        }
    }

    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.calls)
    }
}

impl DatapathOps for Fake {
    fn apply_endpoint(&mut self, ep: &dp::Endpoint) -> Result<(), DatapathError> {
        self.record(format!(
            "ep+ {} {} id={} in={} eg={}",
            ep.id, ep.ip, ep.identity, ep.enforce_ingress, ep.enforce_egress
        ))
    }
    fn remove_endpoint(&mut self, ep_id: u32, ip: Ipv4Addr) -> Result<(), DatapathError> {
        self.record(format!("ep- {ep_id} {ip}"))
    }
    fn apply_ipcache(
        &mut self,
        ip: IpAddr,
        prefix: u8,
        identity: u32,
    ) -> Result<(), DatapathError> {
        self.record(format!("ipc+ {ip}/{prefix} {identity}"))
    }
    fn remove_ipcache(&mut self, ip: IpAddr, prefix: u8) -> Result<(), DatapathError> {
        self.record(format!("ipc- {ip}/{prefix}"))
    }
    fn apply_policy(&mut self, ep_id: u32, entries: &[PolicyEntry]) -> Result<(), DatapathError> {
        let e: Vec<String> = entries
            .iter()
            .map(|e| {
                format!(
                    "{:?}:{:?}:{:?}:{:?}:{:?}",
                    e.direction, e.peer_identity, e.proto, e.ports, e.action
                )
            })
            .collect();
        self.record(format!("pol {ep_id} [{}]", e.join(",")))
    }
    fn apply_service(&mut self, svc: &dp::Service) -> Result<(), DatapathError> {
        let b: Vec<String> = svc
            .backends
            .iter()
            .map(|b| format!("{}={}:{}", b.id, b.ip, b.port))
            .collect();
        self.record(format!(
            "svc+ {} {}:{}/{} {:?} [{}]",
            svc.id,
            svc.vip,
            svc.port,
            svc.proto,
            svc.algorithm,
            b.join(",")
        ))
    }
    fn remove_service(&mut self, svc_id: u32) -> Result<(), DatapathError> {
        self.record(format!("svc- {svc_id}"))
    }
}

fn pb_ep(id: &str, ip: &str, identity: u32, enforce_ingress: bool) -> pb::Endpoint {
    pb::Endpoint {
        id: id.into(),
        ips: vec![ip.into()],
        identity,
        enforce_ingress,
        enforce_egress: false,
    }
}

fn pb_ipc(prefix: &str, identity: u32) -> pb::IpcacheEntry {
    pb::IpcacheEntry {
        prefix: prefix.into(),
        identity,
    }
}

fn pb_allow_tcp(peer: u32, port: u32) -> pb::PolicyRule {
    pb::PolicyRule {
        direction: pb::Direction::Ingress as i32,
        peer_identity: Some(peer),
        proto: Some(6),
        ports: Some(pb::PortRange {
            first: port,
            last: port,
        }),
        action: pb::Action::Allow as i32,
        l7: false,
        origin: "p specs[0].ingress[0]".into(),
        ..Default::default()
    }
}

fn pb_service(id: &str, vip: &str, backends: &[&str]) -> pb::Service {
    pb::Service {
        id: id.into(),
        name: id.into(),
        frontends: vec![pb::Frontend {
            vip: vip.into(),
            port: 80,
            proto: 6,
        }],
        backends: backends
            .iter()
            .map(|a| pb::Backend {
                address: (*a).into(),
                port: 8080,
                weight: 1,
                state: pb::BackendState::Active as i32,
            })
            .collect(),
        algorithm: pb::Algorithm::Maglev as i32,
        affinity_timeout_seconds: 0,
    }
}

fn snapshot_msg(revision: u64, s: pb::Snapshot) -> SyncMessage {
    SyncMessage::try_from(pb::SyncResponse {
        revision,
        kind: Some(pb::sync_response::Kind::Snapshot(s)),
        ..Default::default()
    })
    .expect("valid snapshot")
}

fn delta_msg(revision: u64, d: pb::Delta) -> SyncMessage {
    SyncMessage::try_from(pb::SyncResponse {
        revision,
        kind: Some(pb::sync_response::Kind::Delta(d)),
        ..Default::default()
    })
    .expect("valid delta")
}

fn base_snapshot() -> pb::Snapshot {
    pb::Snapshot {
        endpoints: vec![
            pb_ep("web", "10.0.0.2", 1001, true),
            pb_ep("db", "10.0.0.3", 1002, false),
        ],
        ipcache: vec![pb_ipc("10.1.0.0/16", 2000)],
        policies: vec![pb::EndpointPolicy {
            endpoint_id: "web".into(),
            rules: vec![pb_allow_tcp(1002, 80)],
        }],
        services: vec![pb_service("s1", "10.96.0.1", &["10.0.0.2", "10.0.0.3"])],
        ..Default::default()
    }
}

/// A datapath and the agent's record after [`base_snapshot`] at revision 1, its calls
/// cleared.
fn with_base_snapshot() -> (Fake, Programmed) {
    let mut fake = Fake::default();
    let mut p = Programmed::default();
    let errors = p.apply(&mut fake, snapshot_msg(1, base_snapshot()));
    assert!(errors.is_empty(), "{errors:?}");
    fake.take();
    (fake, p)
}

#[test]
fn snapshot_programs_everything_then_reapplying_it_is_a_no_op() {
    let mut fake = Fake::default();
    let mut p = Programmed::default();
    let errors = p.apply(&mut fake, snapshot_msg(7, base_snapshot()));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(p.revision, 7);
    let calls = fake.take();
    assert_eq!(
        calls,
        vec![
            "ipc+ 10.1.0.0/16 2000",
            // Endpoints sorted by id: db, web.
            "ep+ 1 10.0.0.3 id=1002 in=false eg=false",
            "ep+ 2 10.0.0.2 id=1001 in=true eg=false",
            "pol 2 [Ingress:Some(1002):Some(6):Some((80, 80)):Allow]",
            "svc+ 1 10.96.0.1:80/6 Maglev { m: 16381 } [1=10.0.0.2:8080,2=10.0.0.3:8080]",
        ]
    );
    // The same snapshot again (a reconnect): nothing to write.
    let errors = p.apply(&mut fake, snapshot_msg(8, base_snapshot()));
    assert!(errors.is_empty());
    assert_eq!(fake.take(), Vec::<String>::new());
    assert_eq!(p.revision, 8);
}

#[test]
fn snapshot_reconciles_by_removing_what_is_no_longer_desired() {
    let (mut fake, mut p) = with_base_snapshot();
    // "db" is gone, web's policy is gone, the service lost a backend, the CIDR is gone.
    let s = pb::Snapshot {
        endpoints: vec![pb_ep("web", "10.0.0.2", 1001, false)],
        ipcache: vec![],
        policies: vec![],
        services: vec![pb_service("s1", "10.96.0.1", &["10.0.0.2"])],
        ..Default::default()
    };
    let errors = p.apply(&mut fake, snapshot_msg(2, s));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        fake.take(),
        vec![
            "ep+ 2 10.0.0.2 id=1001 in=false eg=false",
            "svc+ 1 10.96.0.1:80/6 Maglev { m: 16381 } [1=10.0.0.2:8080]",
            "pol 2 []",
            "ep- 1 10.0.0.3",
            "ipc- 10.1.0.0/16",
        ]
    );
    // The removed endpoint's id is released; web keeps its id.
    assert_eq!(p.endpoint_id("db"), None);
    assert_eq!(p.endpoint_id("web"), Some(2));
    // Removing the service entirely.
    let s = pb::Snapshot {
        endpoints: vec![pb_ep("web", "10.0.0.2", 1001, false)],
        ..Default::default()
    };
    p.apply(&mut fake, snapshot_msg(3, s));
    assert_eq!(fake.take(), vec!["svc- 1"]);
}

#[test]
fn deltas_touch_only_what_they_name() {
    let (mut fake, mut p) = with_base_snapshot();
    let d = pb::Delta {
        upsert_policies: vec![pb::EndpointPolicy {
            endpoint_id: "db".into(),
            rules: vec![pb_allow_tcp(1001, 5432)],
        }],
        remove_policies: vec!["web".into()],
        upsert_ipcache: vec![pb_ipc("10.0.1.7/32", 1003)],
        ..Default::default()
    };
    let errors = p.apply(&mut fake, delta_msg(2, d));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        fake.take(),
        vec![
            "ipc+ 10.0.1.7/32 1003",
            "pol 1 [Ingress:Some(1001):Some(6):Some((5432, 5432)):Allow]",
            "pol 2 []",
        ]
    );
    assert_eq!(p.revision, 2);
    // A later snapshot equal to the state after the delta writes nothing.
    let mut s = base_snapshot();
    s.policies = vec![pb::EndpointPolicy {
        endpoint_id: "db".into(),
        rules: vec![pb_allow_tcp(1001, 5432)],
    }];
    s.ipcache.push(pb_ipc("10.0.1.7/32", 1003));
    p.apply(&mut fake, snapshot_msg(3, s));
    assert_eq!(fake.take(), Vec::<String>::new());
}

#[test]
fn an_address_that_moves_to_a_remote_endpoint_is_written_again_after_the_local_one_goes() {
    let (mut fake, mut p) = with_base_snapshot();
    // "db" left this node; its address now belongs to an endpoint elsewhere.
    let d = pb::Delta {
        remove_endpoints: vec!["db".into()],
        upsert_ipcache: vec![pb_ipc("10.0.0.3/32", 1002)],
        ..Default::default()
    };
    let errors = p.apply(&mut fake, delta_msg(2, d));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        fake.take(),
        vec![
            "ipc+ 10.0.0.3/32 1002",
            // Removing the endpoint drops its address's entries, the remote one included...
            "ep- 1 10.0.0.3",
            // ...so it is written again.
            "ipc+ 10.0.0.3/32 1002",
        ]
    );
    // A delta that removes no address writes nothing more.
    let d = pb::Delta {
        upsert_ipcache: vec![pb_ipc("10.0.1.7/32", 1003)],
        ..Default::default()
    };
    p.apply(&mut fake, delta_msg(3, d));
    assert_eq!(fake.take(), vec!["ipc+ 10.0.1.7/32 1003"]);
}

#[test]
fn an_endpoint_changing_address_keeps_its_policy() {
    let (mut fake, mut p) = with_base_snapshot();
    let d = pb::Delta {
        upsert_endpoints: vec![pb_ep("web", "10.0.0.9", 1001, true)],
        ..Default::default()
    };
    p.apply(&mut fake, delta_msg(2, d));
    assert_eq!(
        fake.take(),
        vec![
            "ep- 2 10.0.0.2",
            "ep+ 2 10.0.0.9 id=1001 in=true eg=false",
            "pol 2 [Ingress:Some(1002):Some(6):Some((80, 80)):Allow]",
        ]
    );
}

#[test]
fn failures_are_reported_per_item_and_retried_by_the_next_snapshot() {
    let mut fake = Fake {
        fail_on: Some("svc+".into()),
        ..Default::default()
    };
    let mut p = Programmed::default();
    let errors = p.apply(&mut fake, snapshot_msg(1, base_snapshot()));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].item, "service/s1");
    // Everything else is programmed.
    assert!(p.applied.services.is_empty());
    assert_eq!(p.applied.endpoints.len(), 2);
    fake.fail_on = None;
    fake.take();
    let errors = p.apply(&mut fake, snapshot_msg(2, base_snapshot()));
    assert!(errors.is_empty());
    assert_eq!(
        fake.take(),
        vec!["svc+ 1 10.96.0.1:80/6 Maglev { m: 16381 } [1=10.0.0.2:8080,2=10.0.0.3:8080]"]
    );
}

#[test]
fn l7_rules_fail_closed_and_are_reported() {
    let mut fake = Fake::default();
    let mut p = Programmed::default();
    let mut s = base_snapshot();
    let mut l7 = pb_allow_tcp(1002, 8080);
    l7.l7 = true;
    l7.http = vec![pb::HttpMatch {
        method: Some("GET".into()),
        ..Default::default()
    }];
    s.policies[0].rules.push(l7);
    let errors = p.apply(&mut fake, snapshot_msg(1, s));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].item, "policy/web");
    // Only the plain rule is programmed: the L7 one allows nothing.
    assert!(fake
        .take()
        .contains(&"pol 2 [Ingress:Some(1002):Some(6):Some((80, 80)):Allow]".to_string()));
}

#[test]
fn invalid_messages_are_refused_whole() {
    let bad = |s: pb::Snapshot| {
        SyncMessage::try_from(pb::SyncResponse {
            revision: 3,
            kind: Some(pb::sync_response::Kind::Snapshot(s)),
            ..Default::default()
        })
    };
    let mut s = base_snapshot();
    s.endpoints[1].ips = vec!["10.0.0.300".into()];
    assert!(matches!(bad(s), Err(WireError::Address { .. })));
    let mut s = base_snapshot();
    s.policies[0].rules[0].ports = Some(pb::PortRange {
        first: 80,
        last: 70_000,
    });
    assert!(matches!(bad(s), Err(WireError::Range { .. })));
    let mut s = base_snapshot();
    s.policies[0].rules[0].action = 0;
    assert!(matches!(bad(s), Err(WireError::Enum { .. })));
    let mut s = base_snapshot();
    s.endpoints.push(pb_ep("web", "10.0.0.4", 1, false));
    assert!(matches!(bad(s), Err(WireError::Duplicate { .. })));
    let mut s = base_snapshot();
    s.ipcache[0].prefix = "10.1.0.0/33".into();
    assert!(matches!(bad(s), Err(WireError::Prefix { .. })));
    let mut s = base_snapshot();
    s.services[0].frontends[0].proto = 1;
    assert!(matches!(bad(s), Err(WireError::Range { .. })));
    assert!(matches!(
        SyncMessage::try_from(pb::SyncResponse {
            revision: 1,
            kind: None,
            ..Default::default()
        }),
        Err(WireError::NoKind(1))
    ));
}

#[test]
fn state_survives_a_restart_with_the_same_ids() {
    let dir = std::env::temp_dir().join(format!("weft-agent-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("state.json");
    let mut fake = Fake::default();
    let mut p = Programmed::default();
    p.apply(&mut fake, snapshot_msg(5, base_snapshot()));
    p.save(&path).expect("save");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("metadata").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let mut q = Programmed::load(&path).expect("load").expect("present");
    assert_eq!(q, p);
    fake.take();
    // After the restart the same snapshot writes nothing; a new endpoint gets a fresh id.
    let mut s = base_snapshot();
    s.endpoints.push(pb_ep("cache", "10.0.0.4", 1004, false));
    q.apply(&mut fake, snapshot_msg(6, s));
    assert_eq!(
        fake.take(),
        vec!["ep+ 3 10.0.0.4 id=1004 in=false eg=false"]
    );
    assert_eq!(
        Programmed::load(&dir.join("absent.json")).expect("ok"),
        None
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn workloads_and_probes_decode_and_bad_ones_name_the_item() {
    let mut s = base_snapshot();
    s.workloads = vec![pb::Workload {
        name: "ct-echo".into(),
        kind: pb::WorkloadKind::Pod as i32,
        ip: "10.0.1.254".into(),
        ip6: "fd00:10:1::fe".into(),
        labels: [("app".to_string(), "echo".to_string())].into(),
        echo_ports: vec![8080, 9090],
    }];
    s.probes = vec![pb::Probe {
        id: "p1".into(),
        from_workload: String::new(),
        target_ip: "10.0.1.254".into(),
        target_port: 8080,
        timeout_ms: 500,
        ..Default::default()
    }];
    let msg = snapshot_msg(3, s.clone());
    let Update::Snapshot(state) = msg.update else {
        panic!("a snapshot decodes to a snapshot")
    };
    assert_eq!(state.workloads[0].echo_ports, [8080, 9090]);
    assert_eq!(state.workloads[0].kind, WorkloadKind::Pod);
    assert_eq!(state.probes[0].from_workload, None);
    assert_eq!(state.probes[0].target.to_string(), "10.0.1.254:8080");
    assert_eq!(
        state.workloads[0].ip6,
        Some("fd00:10:1::fe".parse().expect("address"))
    );

    // IPv6 targets decode; a workload's IPv6 field that is not one is an error naming it.
    let mut v6 = s.clone();
    v6.probes[0].target_ip = "fd00:10:1::fe".into();
    let Update::Snapshot(state) = snapshot_msg(3, v6.clone()).update else {
        panic!("a snapshot decodes to a snapshot")
    };
    assert_eq!(state.probes[0].target.to_string(), "[fd00:10:1::fe]:8080");
    v6.workloads[0].ip6 = "10.0.1.1".into();
    let err = SyncMessage::try_from(pb::SyncResponse {
        revision: 4,
        kind: Some(pb::sync_response::Kind::Snapshot(v6)),
        ..Default::default()
    })
    .expect_err("an IPv4 address where IPv6 belongs");
    assert!(err.to_string().contains("workload/ct-echo"), "{err}");

    s.probes[0].target_port = 70000;
    let err = SyncMessage::try_from(pb::SyncResponse {
        revision: 4,
        kind: Some(pb::sync_response::Kind::Snapshot(s)),
        ..Default::default()
    })
    .expect_err("port out of range");
    assert_eq!(
        err.to_string(),
        "probe/p1: target port 70000 is out of range"
    );
}
