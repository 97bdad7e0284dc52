//! Fleet behaviour of the agent service, with simulated agents (`node_agent::sim`: the
//! real protocol and the agent's own decode and diff, no datapath) on two control-api
//! replicas over one database.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{ControlPlane, OPERATOR};
use node_agent::agent::wire::{Programmed, SyncMessage};
use node_agent::sim::{self, Fleet, Progress, Recorder, SimArgs};
use serde_json::{json, Value};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{self as pb, SyncRequest};
use weft_testkit::fixtures::Rest;
use weft_testkit::server::authed;

const WITHIN: Duration = Duration::from_secs(60);

fn policy(name: &str, port: u16) -> Value {
    json!({"name": name, "spec": {
        "endpointSelector": {"matchLabels": {"app": "app-0"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "app-1"}}],
                     "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]}]}})
}

/// Tenant `name` with cluster `prod`, policy `p`; an owner token and an unlimited join token.
async fn tenant(cp: &ControlPlane, name: &str) -> (String, String) {
    let owner = cp.tenant_with(name, "owner", OPERATOR).await;
    cp.cluster(name, "prod", &owner).await;
    let join = Rest::join_token(
        cp,
        name,
        "prod",
        &owner,
        json!({"name": "fleet", "max_uses": 0}),
    )
    .await;
    let r = cp
        .post(
            &format!("/v1/tenants/{name}/policies"),
            &owner,
            policy("p", 8000),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    (owner, join)
}

/// Rewrites policy `p` of `tenant` through `cp`; the change's revision.
async fn change(cp: &ControlPlane, tenant: &str, owner: &str, port: u16) -> u64 {
    let r = cp
        .put(
            &format!("/v1/tenants/{tenant}/policies/p"),
            owner,
            policy("p", port),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    r.body["revision"].as_u64().expect("revision")
}

fn fleet(urls: &[String], token: &str, agents: usize, prefix: &str) -> Fleet {
    let mut fleets = sim::start(&SimArgs {
        control_planes: urls.to_vec(),
        join_tokens: vec![token.to_string()],
        agents,
        endpoints_per_node: 2,
        ca_cert: None,
        concurrency: 16,
        // No health reports during the test: they would be work the assertions count.
        health_interval_secs: 3600,
        keepalive_secs: 60,
        name_prefix: prefix.to_string(),
        capability_version: weft_proto::CAPABILITY_VERSION,
    });
    fleets.pop().expect("one fleet")
}

async fn acked(f: &mut Fleet, revision: u64, what: &str) -> Progress {
    match f.wait_for(WITHIN, |p| p.acked >= revision).await {
        Ok(p) => p,
        Err(p) => panic!("{what}: not every agent acked {revision} within {WITHIN:?}: {p:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_on_two_replicas_converge_with_one_view_load_per_change_and_replica() {
    let cp = ControlPlane::new().await;
    let other = cp.replica().await;
    let urls = [
        weft_testkit::server::agent_url(cp.state.clone()).await,
        weft_testkit::server::agent_url(other.state.clone()).await,
    ];
    let (owner_a, join_a) = tenant(&cp, "acme").await;
    let (owner_b, join_b) = tenant(&cp, "globex").await;
    let mut a = fleet(&urls, &join_a, 200, "a");
    let mut b = fleet(&urls, &join_b, 20, "b");
    for (f, n) in [(&mut a, 200), (&mut b, 20)] {
        let joined = f.wait_for(WITHIN, |p| p.registered == n).await;
        assert!(joined.is_ok(), "{joined:?}");
    }
    // Once everyone is in, one change per tenant: every agent has its current state.
    let r = change(&other, "acme", &owner_a, 8001).await;
    acked(&mut a, r, "acme").await;
    let r = change(&cp, "globex", &owner_b, 8001).await;
    let before_b = acked(&mut b, r, "globex").await;
    assert_eq!(before_b.refused + before_b.item_errors, 0, "{before_b:?}");

    for (i, via) in [&cp, &other, &cp].into_iter().enumerate() {
        let loads = [cp.state.views.loads(), other.state.views.loads()];
        let r = change(via, "acme", &owner_a, 8002 + i as u16).await;
        let p = acked(&mut a, r, "acme").await;
        assert_eq!(p.refused + p.item_errors, 0, "{p:?}");
        assert_eq!(p.removals, 0, "no agent removed anything: {p:?}");
        // Both replicas serve acme's agents: each loaded the tenant's view once for them
        // all, not once per agent.
        let after = [cp.state.views.loads(), other.state.views.loads()];
        assert_eq!(
            [after[0] - loads[0], after[1] - loads[1]],
            [1, 1],
            "view loads per replica for change {i}"
        );
    }
    // Tenant globex's agents were sent nothing for acme's changes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now_b = b.progress.borrow().clone();
    assert_eq!(
        (now_b.snapshots, now_b.deltas, now_b.acked),
        (before_b.snapshots, before_b.deltas, before_b.acked),
        "{now_b:?}"
    );
    let p = a.progress.borrow().clone();
    assert_eq!(
        p.snapshots, 200,
        "one snapshot per agent, deltas after: {p:?}"
    );
    assert_eq!(p.reconnects, 0, "{p:?}");
}

async fn next(stream: &mut tonic::Streaming<pb::SyncResponse>) -> SyncMessage {
    let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a sync message within 10 s")
        .expect("stream ok")
        .expect("stream open");
    SyncMessage::try_from(m).expect("a valid message")
}

/// Registers node `name` with `ips` as its endpoints (labels `app=app-<i mod 3>`).
async fn node(
    client: &mut AgentClient<tonic::transport::Channel>,
    token: &str,
    name: &str,
    ips: &[String],
) -> String {
    let n = client
        .register(pb::RegisterRequest {
            join_token: token.to_string(),
            node_name: name.to_string(),
            capability_version: weft_proto::CAPABILITY_VERSION,
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    report(client, &n.node_credential, ips).await;
    n.node_credential
}

async fn report(client: &mut AgentClient<tonic::transport::Channel>, cred: &str, ips: &[String]) {
    let endpoints = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| pb::ReportedEndpoint {
            name: format!("ep-{}", ip.replace('.', "-")),
            labels: [("app".to_string(), format!("app-{}", i % 3))].into(),
            ips: vec![ip.clone()],
            named_ports: Vec::new(),
        })
        .collect();
    client
        .report_endpoints(authed(pb::EndpointReport { endpoints }, cred))
        .await
        .expect("report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_after_fifty_changes_gets_one_delta_equal_to_the_snapshot_diff() {
    let cp = ControlPlane::new().await;
    let other = cp.replica().await;
    let (owner, join) = tenant(&cp, "acme").await;
    let mut c0 = AgentClient::connect(weft_testkit::server::agent_url(cp.state.clone()).await)
        .await
        .expect("connect");
    let mut c1 = AgentClient::connect(weft_testkit::server::agent_url(other.state.clone()).await)
        .await
        .expect("connect");
    let me = node(
        &mut c0,
        &join,
        "me",
        &["10.0.0.1".into(), "10.0.0.2".into()],
    )
    .await;
    let peer = node(&mut c0, &join, "peer", &["10.0.1.1".into()]).await;
    let sync = |from: u64| {
        authed(
            SyncRequest {
                resume_from_revision: from,
                capability_version: weft_proto::CAPABILITY_VERSION,
            },
            &me,
        )
    };
    let mut programmed = Programmed::default();
    let mut dp = Recorder::default();
    let mut stream = c0.sync(sync(0)).await.expect("sync").into_inner();
    let first = next(&mut stream).await;
    assert!(programmed.apply(&mut dp, first).is_empty());
    let left_at = programmed.revision;
    drop(stream);

    // 50 changes while the agent is away, through either replica: policies added, changed
    // and removed, the peer's endpoints coming and going (ipcache).
    let mut peer_ips = vec!["10.0.1.1".to_string()];
    for i in 0..50u16 {
        let via = if i % 2 == 0 { &cp } else { &other };
        match i % 5 {
            0 => {
                let r = via
                    .post(
                        "/v1/tenants/acme/policies",
                        &owner,
                        policy(&format!("extra-{i}"), 9000 + i),
                    )
                    .await;
                assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            }
            1 | 2 => {
                change(via, "acme", &owner, 8100 + i).await;
            }
            3 => {
                peer_ips.push(format!("10.0.1.{}", 2 + i));
                report(&mut c1, &peer, &peer_ips).await;
            }
            _ => {
                if i % 10 == 4 {
                    peer_ips.remove(0);
                    report(&mut c1, &peer, &peer_ips).await;
                }
                let r = via
                    .delete(
                        &format!("/v1/tenants/acme/policies/extra-{}", i - 4),
                        &owner,
                    )
                    .await;
                assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
            }
        }
    }

    // Back, on the other replica: one delta, nothing after it.
    let mut back = c1.sync(sync(left_at)).await.expect("sync").into_inner();
    let msg = next(&mut back).await;
    assert!(
        matches!(msg.update, weft_proto::convert::Update::Delta(_)),
        "resuming gives a delta: {msg:?}"
    );
    let resumed_at = msg.revision;
    assert!(programmed.apply(&mut dp, msg).is_empty());
    let more = tokio::time::timeout(Duration::from_millis(500), back.message()).await;
    assert!(more.is_err(), "one message only, got {more:?}");

    // The delta took the agent exactly where a snapshot of now would.
    let mut fresh = c0.sync(sync(0)).await.expect("sync").into_inner();
    let snapshot = next(&mut fresh).await;
    assert_eq!(snapshot.revision, resumed_at);
    let weft_proto::convert::Update::Snapshot(now) = snapshot.update else {
        panic!("resuming from 0 gives a snapshot")
    };
    assert_eq!(programmed.applied, now);
}

/// What an agent registers as node `n1` (no state dir: the test calls `register` itself).
fn node_n1() -> node_agent::control::Registration {
    node_agent::control::Registration {
        state_dir: std::path::PathBuf::new(),
        join_token: None,
        node_name: Some("n1".into()),
        addresses: vec!["192.0.2.1".into()],
        labels: Vec::new(),
        pod_cidrs: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_retried_after_a_lost_answer_takes_its_own_place() {
    use node_agent::control::{self, register, ControlError};
    let cp = ControlPlane::new().await;
    let (_, join) = tenant(&cp, "acme").await;
    let url = weft_testkit::server::agent_url(cp.state.clone()).await;
    let channel = control::channel(&url, None).expect("channel");
    let reg = node_n1();
    // The first attempt registered the node, but say its answer was lost.
    let lost = register::register(&reg, &join, &channel, false)
        .await
        .expect("registered");
    // A plain second attempt is refused on the name; the retry takes the node's place.
    let again = register::register(&reg, &join, &channel, false).await;
    assert!(matches!(again, Err(ControlError::Refused(_))), "{again:?}");
    let retried = register::register(&reg, &join, &channel, true)
        .await
        .expect("retry");
    assert_eq!(retried.node_id, lost.node_id, "the same node");
    let mut client = AgentClient::new(channel);
    let old = client
        .report_health(authed(pb::HealthReport::default(), &lost.node_credential))
        .await;
    assert_eq!(
        old.expect_err("revoked").code(),
        tonic::Code::Unauthenticated
    );
    client
        .report_health(authed(
            pb::HealthReport::default(),
            &retried.node_credential,
        ))
        .await
        .expect("the new credential works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_replaced_through_one_replica_stops_working_on_the_other() {
    use node_agent::control::{self, register};
    let cp = ControlPlane::new().await;
    let other = cp.replica().await;
    let (_, join) = tenant(&cp, "acme").await;
    let channel = |st| async move {
        let url = weft_testkit::server::agent_url(st).await;
        control::channel(&url, None).expect("channel")
    };
    let (via_a, via_b) = (
        channel(cp.state.clone()).await,
        channel(other.state.clone()).await,
    );
    let reg = node_n1();
    let first = register::register(&reg, &join, &via_a, false)
        .await
        .expect("registered");
    // Replica B checks the credential (and keeps it) ...
    let mut b = AgentClient::new(via_b);
    b.report_health(authed(pb::HealthReport::default(), &first.node_credential))
        .await
        .expect("the credential works on B");
    // ... then the node is replaced through A: B forgets it once it hears the change.
    register::register(&reg, &join, &via_a, true)
        .await
        .expect("replaced");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let old = b
            .report_health(authed(pb::HealthReport::default(), &first.node_credential))
            .await;
        match old {
            Err(e) if e.code() == tonic::Code::Unauthenticated => break,
            other if std::time::Instant::now() > deadline => {
                panic!("replica B still takes the replaced credential: {other:?}")
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// A control-api process on loopback (plain gRPC agent service) over `db_url`, killed on
/// drop; its agent URL once the service accepts connections.
struct Replica(std::process::Child);

impl Replica {
    fn start(db_url: &str) -> (Replica, String) {
        let agent = std::net::SocketAddr::from(([127, 0, 0, 1], weft_testkit::ports::free_port()));
        let child = std::process::Command::new(common::nodes::workspace_bin("control-api"))
            .args(["--database-url", db_url, "--listen", "127.0.0.1:0"])
            .args(["--agent-listen", &agent.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start control-api");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(agent).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "control-api up in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (Replica(child), format!("http://{agent}"))
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_during_a_fan_out_leaves_every_agent_current_via_the_other() {
    let cp = ControlPlane::new().await;
    let (mut doomed, doomed_url) = Replica::start(&cp.db_url);
    let urls = [
        doomed_url,
        weft_testkit::server::agent_url(cp.state.clone()).await,
    ];
    let (owner, join) = tenant(&cp, "acme").await;
    let mut a = fleet(&urls, &join, 200, "k");
    let joined = a.wait_for(WITHIN, |p| p.registered == 200).await;
    assert!(joined.is_ok(), "{joined:?}");
    let r = change(&cp, "acme", &owner, 8001).await;
    let before = acked(&mut a, r, "before").await;

    // A change, and the replica holding half the streams dies while it goes out.
    let r = change(&cp, "acme", &owner, 8002).await;
    tokio::task::block_in_place(|| doomed.kill());
    let start = std::time::Instant::now();
    let p = match a.wait_for(Duration::from_secs(30), |p| p.acked >= r).await {
        Ok(p) => p,
        Err(p) => panic!("not every agent current within 30 s of the kill: {p:?}"),
    };
    eprintln!(
        "every agent acked {r} {:?} after the kill ({} reconnected)",
        start.elapsed(),
        p.reconnects - before.reconnects
    );
    assert!(
        p.reconnects >= before.reconnects + 50,
        "half re-homed: {p:?}"
    );
    // Re-homed agents resumed by delta: no snapshot, nothing removed (no datapath flush).
    assert_eq!(p.snapshots, before.snapshots, "{p:?}");
    assert_eq!(p.removals, 0, "{p:?}");
    assert_eq!(p.refused + p.item_errors, 0, "{p:?}");
}
