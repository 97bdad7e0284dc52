//! Postgres + control-api + a node agent (library call) programming a real datapath: a
//! policy created over REST is enforced on real TCP between two pods within seconds, the
//! node reports the revision it applied, and a restarted agent resumes from it while the
//! datapath keeps enforcing.

mod common;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{bpf_available, ControlPlane};
use node_agent::agent::run::{run, RunArgs, RunError};
use node_agent::agent::wire::Programmed;
use node_agent::datapath::{Datapath, DatapathConfig, MapSizes};
use node_agent::netns::{ensure_bpffs, PinDir, Topology};
use node_agent::tools::{self, Server};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Request;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{EndpointReport, ReportedEndpoint};

const CONNECT: Duration = Duration::from_millis(500);
const WITHIN: Duration = Duration::from_secs(5);

/// TCP from pod `from` to `target`: the server's name, or the error.
fn tcp(topo: &Topology, from: usize, target: SocketAddrV4) -> std::io::Result<String> {
    topo.pods[from]
        .ns
        .spawn(move || tools::tcp_request(target.into(), CONNECT).map(|(a, _)| a))
        .join()
        .expect("client thread")?
}

/// Waits (up to [`WITHIN`]) until TCP from `from` to `target` is allowed (`true`) or denied.
async fn until_tcp(topo: &Topology, from: usize, target: SocketAddrV4, allowed: bool) -> bool {
    let start = Instant::now();
    loop {
        // The client blocks its thread briefly: let the runtime move other tasks away.
        if tokio::task::block_in_place(|| tcp(topo, from, target)).is_ok() == allowed {
            return true;
        }
        if start.elapsed() > WITHIN {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

use weft_testkit::tmp::TempDir;

/// A running agent task and the means to stop it.
struct Agent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Agent {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("agent task")
            .expect("agent stops cleanly");
    }
}

/// The whole system for one test: a tenant with a cluster and a join token, the agent
/// service on loopback, and a node namespace with two pods (10.0.1.1 app=client,
/// 10.0.1.2 app=server with a TCP server on 8080) whose veths carry the datapath.
/// Field order is drop order: server, pins, pods, state.
struct Env {
    cp: ControlPlane,
    owner: String,
    url: String,
    /// The agent service's certificate (agents reach it over TLS, as in production).
    ca: std::path::PathBuf,
    _tls_dir: TempDir,
    token: String,
    _srv: Server,
    pins: PinDir,
    topo: Topology,
    state_dir: TempDir,
    server: SocketAddrV4,
    /// The agent's `--map-entries`, also the sizes the test creates the maps with.
    map_entries: Vec<(String, u32)>,
}

impl Env {
    async fn new() -> Env {
        Env::with_map_entries(&[]).await
    }

    async fn with_map_entries(map_entries: &[(&str, u32)]) -> Env {
        let map_entries: Vec<(String, u32)> = map_entries
            .iter()
            .map(|(name, n)| (name.to_string(), *n))
            .collect();
        let mut sizes = MapSizes::default();
        for (name, n) in &map_entries {
            sizes.set(name, *n).expect("map size");
        }
        let cp = ControlPlane::new().await;
        let owner = cp.acme_prod().await;
        let token = cp.join_token(&owner).await;
        let tls_dir = weft_testkit::tmp::dir("e2e-tls");
        let (url, ca) = cp.serve_agents(tls_dir.path()).await;

        ensure_bpffs().expect("bpffs");
        let topo = Topology::new(2).expect("topology");
        let pins = PinDir::create("ee").expect("pin dir");
        {
            let dp = Datapath::load(DatapathConfig {
                pin_path: pins.path().to_path_buf(),
                sizes,
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
        let srv = Server::tcp(&topo.pods[1].ns, 8080, "server").expect("server");
        let state_dir = weft_testkit::tmp::dir("e2e-agent");
        Env {
            cp,
            owner,
            url,
            ca,
            _tls_dir: tls_dir,
            token,
            _srv: srv,
            pins,
            topo,
            state_dir,
            server,
            map_entries,
        }
    }

    /// Starts `node-agent run` (as a library call) on this node's state dir and pins.
    fn start_agent(&self, join_token: Option<String>) -> Agent {
        let args = RunArgs {
            control_plane: self.url.clone(),
            join_token,
            join_token_file: None,
            state_dir: self.state_dir.path().to_path_buf(),
            node_name: Some("node-1".into()),
            addresses: vec!["192.0.2.10".into()],
            labels: Vec::new(),
            interfaces: Vec::new(),
            cgroup: None,
            ca_cert: Some(self.ca.clone()),
            health_interval_secs: 1,
            pin_path: self.pins.path().to_path_buf(),
            api_socket: None,
            flow_buffer: 1000,
            pod_cidrs: Vec::new(),
            workload_netns_prefix: node_agent::workload::DEFAULT_NETNS_PREFIX.into(),
            concurrent_probes: 1,
            fqdn: Default::default(),
            map_entries: self.map_entries.clone(),
        };
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run(args, async {
            let _ = rx.await;
        }));
        Agent { stop, task }
    }

    /// Starts the agent with the join token, waits for its credential and reports the
    /// node's endpoints: the agent and its credential.
    async fn joined(&self) -> (Agent, String) {
        let agent = self.start_agent(Some(self.token.clone()));
        let credential = self.credential().await;
        self.report_endpoints(&credential).await;
        (agent, credential)
    }

    /// Waits for the agent's credential, checks it is private, and returns it.
    async fn credential(&self) -> String {
        let path = self.state_dir.path().join("credential");
        let start = Instant::now();
        while !path.exists() {
            assert!(start.elapsed() < WITHIN, "agent registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "credential is private");
        std::fs::read_to_string(&path)
            .expect("credential")
            .trim()
            .to_string()
    }

    /// A client of the agent service over TLS, trusting its certificate (as agents do).
    async fn agent_client(&self) -> AgentClient<tonic::transport::Channel> {
        let pem = std::fs::read(&self.ca).expect("certificate");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .tls_config(tls)
            .expect("TLS config")
            .connect()
            .await
            .expect("connect over TLS");
        AgentClient::new(channel)
    }

    /// Reports the node's two endpoints with the node credential, as an integration that
    /// manages its own workloads would (`endpoints.rs` covers `node-agent endpoint add`); an
    /// agent that never created an endpoint leaves such reports alone.
    async fn report_endpoints(&self, credential: &str) {
        let mut client = self.agent_client().await;
        let ep = |name: &str, app: &str, ip: &str| ReportedEndpoint {
            named_ports: Vec::new(),
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
            format!("Bearer {credential}").parse().expect("header"),
        );
        client
            .report_endpoints(req)
            .await
            .expect("report endpoints");
    }

    /// Creates a policy on the server's ingress TCP 8080 from endpoints labelled `app=from`.
    async fn allow_server_from(&self, name: &str, from: &str) {
        self.cp.allow(&self.owner, name, "server", from).await;
    }

    async fn delete_policy(&self, name: &str) {
        self.cp.delete_policy(&self.owner, name).await;
    }

    async fn node_status(&self) -> Value {
        let r = self.cp.node(&self.owner, "node-1").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body["status"].clone()
    }

    /// Waits until the node shows it applied at least `revision` and is connected.
    async fn until_applied(&self, revision: u64) -> Value {
        let start = Instant::now();
        loop {
            let status = self.node_status().await;
            if status["applied_revision"]
                .as_u64()
                .is_some_and(|v| v >= revision)
                && status["connected"] == true
            {
                return status;
            }
            assert!(
                start.elapsed() < WITHIN,
                "applied_revision >= {revision} on the node: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn applied_revision_on_disk(&self) -> u64 {
        Programmed::load(&self.state_dir.path().join("state.json"))
            .expect("state file")
            .expect("state file present")
            .revision
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_over_rest_is_enforced_on_real_traffic_and_acked() {
    if !bpf_available("policy_over_rest_is_enforced_on_real_traffic_and_acked") {
        return;
    }
    let env = Env::new().await;
    let (agent, _) = env.joined().await;
    let (topo, server) = (&env.topo, env.server);

    assert!(
        until_tcp(topo, 0, server, true).await,
        "client -> server allowed before any policy"
    );
    // A policy that selects the server and admits only app=other: the client is denied.
    env.allow_server_from("server-ingress", "other").await;
    assert!(
        until_tcp(topo, 0, server, false).await,
        "client -> server denied once a policy selects the server"
    );
    // A second policy admitting app=client: allow rules add up, resolved to the client's
    // identity by the control plane and programmed by the agent.
    env.allow_server_from("server-from-client", "client").await;
    assert!(
        until_tcp(topo, 0, server, true).await,
        "client -> server allowed by the second policy"
    );
    // Deleting the policies restores default allow.
    env.delete_policy("server-ingress").await;
    env.delete_policy("server-from-client").await;
    assert!(
        until_tcp(topo, 0, server, true).await,
        "client -> server allowed again after the policies are deleted"
    );
    // The node shows the revision it applied.
    let status = env.until_applied(1).await;
    assert!(status["agent_version"].is_string(), "{status}");
    // Its health reports every keyed map's fill (the conntrack table holds the test's
    // connections; the endpoint map its two pods).
    let start = Instant::now();
    loop {
        let status = env.node_status().await;
        let fill = &status["health"]["map_fill"];
        if fill["WEFT_CT"].as_f64().is_some_and(|f| f > 0.0) {
            for map in [
                "WEFT_ENDPOINTS",
                "WEFT_IPCACHE",
                "WEFT_POLICY",
                "WEFT_SERVICES",
            ] {
                let f = fill[map].as_f64().unwrap_or(-1.0);
                assert!((0.0..=1.0).contains(&f), "{map}: {fill}");
            }
            assert!(fill["WEFT_ENDPOINTS"].as_f64().unwrap() > 0.0, "{fill}");
            break;
        }
        assert!(start.elapsed() < WITHIN, "health.map_fill: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_resumes_from_its_revision_and_enforcement_never_stops() {
    if !bpf_available("a_restarted_agent_resumes_from_its_revision_and_enforcement_never_stops") {
        return;
    }
    let env = Env::new().await;
    let (agent, credential) = env.joined().await;
    let (topo, server) = (&env.topo, env.server);
    env.allow_server_from("server-ingress", "other").await;
    assert!(
        until_tcp(topo, 0, server, false).await,
        "client -> server denied by the policy"
    );
    let applied = env.applied_revision_on_disk();
    assert!(applied > 0);
    env.until_applied(applied).await;

    // The agent stops: the pinned datapath keeps enforcing the last applied state.
    agent.stop().await;
    assert!(
        tokio::task::block_in_place(|| tcp(topo, 0, server)).is_err(),
        "still denied while no agent runs"
    );

    // Restarted without a join token: the stored credential and revision are used (no
    // second registration), and the next change reaches it.
    let agent = env.start_agent(None);
    env.until_applied(applied).await;
    assert_eq!(env.credential().await, credential, "same credential");
    assert!(
        tokio::task::block_in_place(|| tcp(topo, 0, server)).is_err(),
        "still denied after the restart"
    );
    env.delete_policy("server-ingress").await;
    assert!(
        until_tcp(topo, 0, server, true).await,
        "the restarted agent applies the deletion"
    );
    // The agent programs the datapath, then saves its state, then acks: traffic may flow
    // before the file is written, so wait for the ack of the new revision.
    env.until_applied(applied + 1).await;
    assert!(env.applied_revision_on_disk() > applied);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_policy_map_is_reported_by_name_and_the_enforced_policy_stays() {
    if !bpf_available("a_full_policy_map_is_reported_by_name_and_the_enforced_policy_stays") {
        return;
    }
    let env = Env::with_map_entries(&[("policy", 64)]).await;
    let (agent, _) = env.joined().await;
    let (topo, server) = (&env.topo, env.server);
    // Enforced: the server admits only app=other, so the client is denied.
    env.allow_server_from("server-ingress", "other").await;
    assert!(
        until_tcp(topo, 0, server, false).await,
        "client -> server denied once a policy selects the server"
    );
    // A policy admitting the client on 100 ports needs more entries than the map holds.
    let ports: Vec<Value> = (8000..8100)
        .map(|p| serde_json::json!({"port": p.to_string(), "protocol": "TCP"}))
        .collect();
    let r = env
        .cp
        .call(
            "POST",
            "/v1/tenants/acme/policies",
            &env.owner,
            Some(serde_json::json!({"name": "wide", "spec": {
                "endpointSelector": {"matchLabels": {"app": "server"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                             "toPorts": [{"ports": ports}]}]}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let revision = r.body["revision"].as_u64().expect("revision");
    // The node acks the revision with an error naming the map (its next health report
    // says degraded), and does not count as having applied it...
    let start = Instant::now();
    let status = loop {
        let status = env.node_status().await;
        if status["health"]["apply_errors"]
            .to_string()
            .contains("map WEFT_POLICY is full")
            && status["health"]["datapath_status"] == "degraded"
        {
            break status;
        }
        assert!(
            start.elapsed() < WITHIN,
            "apply_errors name the full map: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status["applied_revision"]
            .as_u64()
            .is_some_and(|r| r < revision),
        "{status}"
    );
    // ...so the policy is not counted as realized there.
    let p = env
        .cp
        .call("GET", "/v1/tenants/acme/policies/wide", &env.owner, None)
        .await;
    assert_eq!(p.body["status"]["total_nodes"], 1, "{}", p.body);
    assert_eq!(p.body["status"]["realized_nodes"], 0, "{}", p.body);
    // Nothing that was enforced stopped being enforced: the client is still denied.
    for _ in 0..5 {
        assert!(
            tokio::task::block_in_place(|| tcp(topo, 0, server)).is_err(),
            "the old policy stays in force after a write that did not fit"
        );
    }
    // Once the policy that does not fit is gone, the node is clean again.
    env.delete_policy("wide").await;
    let start = Instant::now();
    loop {
        let status = env.node_status().await;
        if status["health"]["apply_errors"] == serde_json::json!([]) {
            break;
        }
        assert!(start.elapsed() < WITHIN, "apply errors cleared: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(until_tcp(topo, 0, server, false).await, "still denied");
    agent.stop().await;
}

/// A small tmpfs mounted over `dir` (a directory of this test's own), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "weft-test",
            ])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(ok.success(), "mounting a tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_is_reported_and_enforcement_goes_on() {
    if !bpf_available("a_full_state_disk_is_reported_and_enforcement_goes_on") {
        return;
    }
    let env = Env::new().await;
    let _disk = Tmpfs::mount(env.state_dir.path(), "256k");
    let (agent, _) = env.joined().await;
    let (topo, server) = (&env.topo, env.server);
    env.allow_server_from("server-ingress", "other").await;
    assert!(until_tcp(topo, 0, server, false).await, "client denied");
    let status = env.until_applied(1).await;
    let applied = status["applied_revision"].as_u64().expect("revision");
    let start = Instant::now();
    while env.applied_revision_on_disk() < applied {
        assert!(start.elapsed() < WITHIN, "state saved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saved = env.applied_revision_on_disk();

    // The state disk fills up.
    let filler = env.state_dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        while f.write_all(&[0u8; 4096]).and_then(|()| f.flush()).is_ok() {}
    }
    // A change is still enforced, and acked: the datapath has it.
    env.allow_server_from("server-from-client", "client").await;
    assert!(
        until_tcp(topo, 0, server, true).await,
        "enforcement goes on with a full state disk"
    );
    // The node says why it is degraded; the saved state is the old one, whole.
    let start = Instant::now();
    let status = loop {
        let status = env.node_status().await;
        let health = &status["health"];
        if health["datapath_status"] == "degraded"
            && health["last_error"].as_str().is_some_and(|e| {
                e.contains("saving the applied state") && e.contains("No space left")
            })
        {
            break status;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the full disk is reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status["applied_revision"].as_u64() > Some(saved),
        "{status}"
    );
    assert_eq!(env.applied_revision_on_disk(), saved);
    assert!(!env.state_dir.path().join("state.tmp").exists());

    // Room again: a health tick saves the state and clears the error.
    std::fs::remove_file(&filler).expect("remove filler");
    let start = Instant::now();
    loop {
        let status = env.node_status().await;
        if status["health"]["datapath_status"] == "ok" && status["health"]["last_error"] == "" {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "error cleared once saved: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.applied_revision_on_disk() > saved);
    agent.stop().await;
}
