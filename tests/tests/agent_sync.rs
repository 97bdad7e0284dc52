//! Postgres + control-api + a node agent (library call) programming a real datapath: a
//! policy created over REST is enforced on real TCP between two pods within seconds, and
//! the node reports the revision it applied.

mod common;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{bpf_available, ControlPlane};
use node_agent::agent::run::{run, RunArgs};
use node_agent::datapath::{Datapath, DatapathConfig};
use node_agent::netns::{ensure_bpffs, PinDir, Topology};
use node_agent::tools::{self, Server};
use serde_json::json;
use tonic::Request;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{EndpointReport, ReportedEndpoint};

const CONNECT: Duration = Duration::from_millis(500);

/// TCP from pod `from` to `target`: the server's name, or the error.
fn tcp(topo: &Topology, from: usize, target: SocketAddrV4) -> std::io::Result<String> {
    topo.pods[from]
        .ns
        .spawn(move || tools::tcp_request(target, CONNECT).map(|(a, _)| a))
        .join()
        .expect("client thread")?
}

/// Waits (up to `within`) until TCP from `from` to `target` is allowed (`true`) or denied.
async fn until_tcp(
    topo: &Topology,
    from: usize,
    target: SocketAddrV4,
    allowed: bool,
    within: Duration,
) -> bool {
    let start = Instant::now();
    loop {
        // The client blocks its thread briefly: let the runtime move other tasks away.
        if tokio::task::block_in_place(|| tcp(topo, from, target)).is_ok() == allowed {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A temporary state directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_over_rest_is_enforced_on_real_traffic_and_acked() {
    if !bpf_available("policy_over_rest_is_enforced_on_real_traffic_and_acked") {
        return;
    }
    let cp = ControlPlane::new().await;
    let owner = cp.tenant("acme").await;
    let r = cp
        .call(
            "POST",
            "/v1/tenants/acme/clusters",
            &owner,
            Some(json!({"name": "prod"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp
        .call(
            "POST",
            "/v1/tenants/acme/clusters/prod/join-tokens",
            &owner,
            Some(json!({"name": "e2e"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.body["token"].as_str().expect("token").to_string();
    let url = cp.serve_agents().await;

    // Two pods (10.0.1.1 client, 10.0.1.2 server) on a node namespace; the datapath's
    // programs attached to their host-side veths, pinned under this test's pin dir.
    ensure_bpffs().expect("bpffs");
    let topo = Topology::new(2).expect("topology");
    let pins = PinDir::create("e2e").expect("pin dir");
    {
        let dp = Datapath::load(DatapathConfig {
            pin_path: pins.path().to_path_buf(),
            ..DatapathConfig::default()
        })
        .expect("load datapath");
        let _in_node = topo.node.enter().expect("enter node namespace");
        for pod in &topo.pods {
            dp.attach_endpoint_interface(&pod.host_if).expect("attach");
        }
        // Dropped: the pinned links keep the programs attached for the agent.
    }
    let server = SocketAddrV4::new(topo.pods[1].ip, 8080);
    let _srv = Server::tcp(&topo.pods[1].ns, 8080, "server").expect("server");

    // The agent: registers with the join token, then syncs.
    let state_dir = TempDir(std::env::temp_dir().join(format!(
        "weft-e2e-agent-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )));
    let args = RunArgs {
        control_plane: url.clone(),
        join_token: Some(token),
        state_dir: state_dir.0.clone(),
        node_name: Some("node-1".into()),
        addresses: vec!["192.0.2.10".into()],
        labels: Vec::new(),
        interfaces: Vec::new(),
        cgroup: None,
        health_interval_secs: 1,
        pin_path: pins.path().to_path_buf(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(run(args, async {
        let _ = stop_rx.await;
    }));

    // The node's endpoints (what `node-agent endpoint add` will report): the control
    // plane allocates their identities.
    let cred_path = state_dir.0.join("credential");
    let start = Instant::now();
    while !cred_path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "agent registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let credential = std::fs::read_to_string(&cred_path).expect("credential");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&cred_path).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "credential is private");
    let mut client = AgentClient::connect(url).await.expect("connect");
    let ep = |name: &str, app: &str, ip: &str| ReportedEndpoint {
        name: name.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ips: vec![ip.into()],
    };
    let mut req = Request::new(EndpointReport {
        endpoints: vec![
            ep("client", "client", "10.0.1.1"),
            ep("server", "server", "10.0.1.2"),
        ],
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", credential.trim())
            .parse()
            .expect("header"),
    );
    client
        .report_endpoints(req)
        .await
        .expect("report endpoints");

    // Default allow.
    assert!(
        until_tcp(&topo, 0, server, true, Duration::from_secs(5)).await,
        "client -> server allowed before any policy"
    );

    // A policy that selects the server and admits only app=other: client denied.
    let r = cp
        .call(
            "POST",
            "/v1/tenants/acme/policies",
            &owner,
            Some(json!({"name": "server-ingress", "spec": {
                "endpointSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "other"}}],
                             "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(
        until_tcp(&topo, 0, server, false, Duration::from_secs(5)).await,
        "client -> server denied once the policy selects the server"
    );
    // A second policy admitting app=client: allow rules add up, resolved to the client's
    // identity by the control plane and programmed by the agent.
    let r = cp
        .call(
            "POST",
            "/v1/tenants/acme/policies",
            &owner,
            Some(json!({"name": "server-from-client", "spec": {
                "endpointSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                             "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(
        until_tcp(&topo, 0, server, true, Duration::from_secs(5)).await,
        "client -> server allowed by the second policy"
    );
    // Deleting the policies restores default allow.
    for name in ["server-ingress", "server-from-client"] {
        let r = cp
            .call(
                "DELETE",
                &format!("/v1/tenants/acme/policies/{name}"),
                &owner,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }
    assert!(
        until_tcp(&topo, 0, server, true, Duration::from_secs(5)).await,
        "client -> server allowed again after the policy is deleted"
    );

    // The node shows the revision it applied.
    let start = Instant::now();
    loop {
        let r = cp
            .call(
                "GET",
                "/v1/tenants/acme/clusters/prod/nodes/node-1",
                &owner,
                None,
            )
            .await;
        let status = &r.body["status"];
        if status["applied_revision"].as_u64().is_some_and(|v| v > 0) && status["connected"] == true
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "applied_revision on the node: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = stop_tx.send(());
    agent
        .await
        .expect("agent task")
        .expect("agent stops cleanly");
}
