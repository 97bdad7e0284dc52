//! Version skew on the wire: this build beside an agent or a control plane one capability
//! version older (2), whose generated types are kept frozen in `proto/compat/`. Either side
//! must read what the other sends: the older one sees everything it knows about and skips
//! the rest (protobuf's unknown fields); this one reads an older message as the defaults of
//! what that version did not have (tunnel routing, no cluster nodes, no L7 fields).

use super::*;

#[allow(clippy::all, dead_code, missing_docs, unused_qualifications)]
mod cap2 {
    include!("../../../compat/weft.agent.v1.cap2.rs");
}

fn reencode<A: Message, B: Message + Default>(m: &A) -> B {
    B::decode(m.encode_to_vec().as_slice()).expect("decodes across versions")
}

/// Takes out of the parts of a message what capability 2 did not have.
fn cap2_parts(
    policy: &mut BTreeMap<String, Rules>,
    workloads: &mut [DesiredWorkload],
    probes: &mut [DesiredProbe],
) {
    for rules in policy.values_mut() {
        let mut v = rules.to_vec();
        for r in &mut v {
            r.http.clear();
            r.dns.clear();
            r.l7 = false;
            r.fqdn = None;
            if r.peer_identity == Some(weft_model::identity::FQDN_PEER) {
                r.peer_identity = None;
            }
        }
        *rules = v.into();
    }
    for w in workloads {
        w.ip6 = None;
    }
    for p in probes {
        p.http = None;
        p.resolve = None;
    }
}

/// A state as a capability-2 control plane could have sent it: none of what came later.
fn cap2_state(rng: &mut StdRng) -> NodeDesiredState {
    let mut s = state(rng);
    s.routing = RoutingMode::default();
    s.nodes.clear();
    cap2_parts(&mut s.policy, &mut s.workloads, &mut s.probes);
    s
}

/// A delta as a capability-2 control plane could have sent it.
fn cap2_delta(rng: &mut StdRng) -> Delta {
    let mut d = delta(rng);
    d.routing = None;
    d.nodes_upsert.clear();
    d.nodes_remove.clear();
    cap2_parts(
        &mut d.policy_upsert,
        &mut d.workloads_upsert,
        &mut d.probes_upsert,
    );
    d
}

#[test]
fn an_older_agent_reads_everything_it_knows_of_what_this_control_plane_sends() {
    for seed in 0..CASES {
        let s = state(&mut StdRng::seed_from_u64(seed));
        let sent = pb::SyncResponse {
            revision: seed + 1,
            kind: Some(pb::sync_response::Kind::Snapshot(pb::Snapshot::from(&s))),
            ..Default::default()
        };
        let old: cap2::SyncResponse = reencode(&sent);
        assert_eq!(old.revision, seed + 1);
        let Some(cap2::sync_response::Kind::Snapshot(snap)) = old.kind else {
            panic!("seed {seed}: an older agent sees a snapshot")
        };
        assert_eq!(snap.endpoints.len(), s.endpoints.len(), "seed {seed}");
        assert_eq!(snap.ipcache.len(), s.ipcache.len(), "seed {seed}");
        assert_eq!(snap.services.len(), s.services.len(), "seed {seed}");
        assert_eq!(snap.workloads.len(), s.workloads.len(), "seed {seed}");
        assert_eq!(snap.probes.len(), s.probes.len(), "seed {seed}");
        let rules: usize = s.policy.values().map(|r| r.len()).sum();
        let old_rules: usize = snap.policies.iter().map(|p| p.rules.len()).sum();
        assert_eq!(old_rules, rules, "seed {seed}");
        // An L7 allow keeps its flag: an older agent that has no proxy refuses to program
        // it (fail closed, reported), never reads it as a plain allow.
        let l7 = s
            .policy
            .values()
            .flat_map(|r| r.iter())
            .filter(|r| r.l7)
            .count();
        let old_l7 = snap
            .policies
            .iter()
            .flat_map(|p| &p.rules)
            .filter(|r| r.l7)
            .count();
        assert_eq!(old_l7, l7, "seed {seed}");
    }
}

#[test]
fn this_agent_reads_what_an_older_control_plane_sends() {
    for seed in 0..CASES {
        let s = cap2_state(&mut StdRng::seed_from_u64(seed));
        // What the older control plane put on the wire for that state.
        let old: cap2::Snapshot = reencode(&pb::Snapshot::from(&s));
        let read: pb::Snapshot = reencode(&old);
        match NodeDesiredState::try_from(read) {
            Ok(back) => assert_eq!(back, s, "seed {seed}"),
            Err(e) => panic!("seed {seed}: {e}"),
        }
        // An older delta never changes the routing mode or the cluster's nodes.
        let d = cap2_delta(&mut StdRng::seed_from_u64(seed));
        let old: cap2::Delta = reencode(&pb::Delta::from(&d));
        let read: pb::Delta = reencode(&old);
        match Delta::try_from(read) {
            Ok(back) => assert_eq!(back, d, "seed {seed}"),
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
}

#[test]
fn agent_calls_read_across_one_capability_version() {
    // An older agent's calls, as this control plane reads them.
    let register = cap2::RegisterRequest {
        join_token: "weft_join_x".into(),
        node_name: "n1".into(),
        addresses: vec!["192.0.2.1".into()],
        capability_version: 2,
        agent_version: "0.0.9".into(),
        ..Default::default()
    };
    let r: pb::RegisterRequest = reencode(&register);
    assert_eq!(
        (
            r.node_name.as_str(),
            r.capability_version,
            r.addresses.len()
        ),
        ("n1", 2, 1)
    );
    let sync: pb::SyncRequest = reencode(&cap2::SyncRequest {
        resume_from_revision: 41,
        capability_version: 2,
    });
    assert_eq!(
        (sync.resume_from_revision, sync.capability_version),
        (41, 2)
    );
    let ack: pb::AckRequest = reencode(&cap2::AckRequest {
        revision: 42,
        errors: vec![cap2::ItemError {
            item: "policy/ep".into(),
            message: "full".into(),
        }],
    });
    assert_eq!((ack.revision, ack.errors.len()), (42, 1));
    let health: pb::HealthReport = reencode(&cap2::HealthReport {
        datapath_status: "ok".into(),
        lost_events: 3,
        ..Default::default()
    });
    assert_eq!((health.lost_events, health.fqdn_addresses_evicted), (3, 0));
    // This agent's calls, as an older control plane reads them.
    let old: cap2::RegisterResponse = reencode(&pb::RegisterResponse {
        node_credential: "weft_node_x".into(),
        capability_version: 2,
        ..Default::default()
    });
    assert_eq!(old.capability_version, 2);
    let old: cap2::SyncRequest = reencode(&pb::SyncRequest {
        resume_from_revision: 7,
        capability_version: crate::CAPABILITY_VERSION,
    });
    assert_eq!(old.resume_from_revision, 7);
    let old: cap2::HealthReport = reencode(&pb::HealthReport {
        lost_events: 5,
        fqdn_addresses_evicted: 9,
        ..Default::default()
    });
    assert_eq!(old.lost_events, 5);
}
