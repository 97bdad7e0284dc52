//! Connectivity tests' control-plane side: test workloads and probes over REST, what
//! agents are sent over real gRPC, and the results they report.

#[path = "connectivity/agents.rs"]
mod agents;
mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use common::{agent_on, authed, next_change, Reply, Rest, TestApp};
use serde_json::{json, Value};
use tonic::transport::Channel;
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::sync_response::Kind;
use weft_proto::v1::{
    EndpointReport, ProbeOutcome, ProbeReport, ProbeResult, RegisterRequest, RegisterResponse,
    ReportedEndpoint, SyncResponse,
};

const WL: &str = "/v1/tenants/acme/clusters/prod/test-workloads";
const PROBES: &str = "/v1/tenants/acme/clusters/prod/probes";

/// Tenant `acme`, cluster `prod`, and an agent service to register nodes with.
struct Setup {
    t: TestApp,
    owner: String,
    client: AgentClient<Channel>,
    join: String,
}

async fn setup() -> Setup {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let r = t
        .created(
            "/v1/tenants/acme/clusters/prod/join-tokens",
            &owner,
            json!({"name": "fleet", "max_uses": 0}),
        )
        .await;
    let join = r["token"].as_str().expect("token").to_string();
    let client = agent_on(t.state.clone()).await;
    Setup {
        t,
        owner,
        client,
        join,
    }
}

impl Setup {
    /// Registers node `name` with these pod CIDRs and reports `endpoints` (name, ip).
    async fn node(
        &mut self,
        name: &str,
        pod_cidrs: &[&str],
        endpoints: &[(&str, &str)],
    ) -> RegisterResponse {
        // Each node its own address (the compiler refuses one claimed twice).
        let address = format!("192.0.2.{}", 10 + self.t.count("nodes").await);
        let node = self
            .client
            .register(RegisterRequest {
                join_token: self.join.clone(),
                node_name: name.into(),
                addresses: vec![address],
                capability_version: weft_proto::CAPABILITY_VERSION,
                agent_version: "0.1.0-test".into(),
                kernel_version: "6.18".into(),
                pod_cidrs: pod_cidrs.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner();
        self.report(&node, endpoints).await;
        node
    }

    async fn report(&mut self, node: &RegisterResponse, endpoints: &[(&str, &str)]) {
        let endpoints = endpoints
            .iter()
            .map(|(name, ip)| ReportedEndpoint {
                named_ports: Vec::new(),
                name: name.to_string(),
                labels: [("app".to_string(), name.to_string())].into(),
                ips: vec![ip.to_string()],
            })
            .collect();
        self.client
            .report_endpoints(authed(EndpointReport { endpoints }, &node.node_credential))
            .await
            .expect("report endpoints");
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.t.post(path, &self.owner, body).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.t.get(path, &self.owner).await
    }

    /// Creates a test workload; returns its address.
    async fn workload(&self, name: &str, node: &str, kind: &str) -> String {
        let r = self
            .post(
                WL,
                json!({"name": name, "node": node, "kind": kind,
                       "labels": {"test": "conn", "name": name}, "echo_ports": [8080]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["ip"].as_str().expect("ip").to_string()
    }

    async fn probe(&self, body: Value) -> String {
        let r = self.post(PROBES, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().expect("id").to_string()
    }

    async fn sync(
        &mut self,
        node: &RegisterResponse,
        capability_version: u32,
    ) -> tonic::Streaming<SyncResponse> {
        common::open_sync(
            &mut self.client,
            &node.node_credential,
            0,
            capability_version,
        )
        .await
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

#[tokio::test]
async fn test_workloads_are_allocated_top_down_around_endpoints_and_each_other() {
    let mut s = setup().await;
    s.node("node-1", &["10.0.1.0/24"], &[("web-1", "10.0.1.254")])
        .await;
    s.node("node-2", &[], &[]).await;
    let rev = s.t.revision().await;

    let r = s
        .post(
            WL,
            json!({"name": "echo-a", "node": "node-1", "kind": "pod",
                   "labels": {"test": "conn"}, "echo_ports": [8080, 9090]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        keys(&r.body),
        [
            "name",
            "node",
            "kind",
            "ip",
            "ip6",
            "labels",
            "echo_ports",
            "created_at",
            "ready"
        ]
        .map(String::from)
        .into(),
        "{}",
        r.body
    );
    assert_eq!(r.body["ip"], "10.0.1.253", "top down, around web-1");
    assert_eq!(r.body["ip6"], Value::Null, "node-1 has no IPv6 pod CIDR");
    assert_eq!(r.body["node"], "node-1");
    assert_eq!(r.body["kind"], "pod");
    assert_eq!(r.body["echo_ports"], json!([8080, 9090]));
    assert_eq!(r.body["ready"], false, "no agent has applied it yet");
    assert!(
        s.t.revision().await > rev,
        "a create is a desired-state change"
    );
    assert_eq!(
        r.headers.get("location").unwrap(),
        "/v1/tenants/acme/clusters/prod/test-workloads/echo-a"
    );
    assert_eq!(s.workload("echo-b", "node-1", "pod").await, "10.0.1.252");
    assert_eq!(
        s.workload("out-1", "node-1", "world").await,
        "198.51.100.254"
    );
    assert_eq!(
        s.workload("out-2", "node-2", "world").await,
        "198.51.100.253"
    );

    // The name is unique in the cluster; a node without a pod CIDR cannot run a pod.
    let r = s
        .post(
            WL,
            json!({"name": "echo-a", "node": "node-1", "kind": "world", "echo_ports": [1]}),
        )
        .await;
    assert!(r.is_problem(409, "conflict"), "{}", r.body);
    assert_eq!(r.fields(), ["name"]);
    let r = s
        .post(
            WL,
            json!({"name": "web-1", "node": "node-1", "kind": "pod", "echo_ports": [1]}),
        )
        .await;
    assert!(
        r.is_problem(409, "conflict"),
        "an endpoint's name: {}",
        r.body
    );
    assert_eq!(r.fields(), ["name"]);
    let r = s
        .post(
            WL,
            json!({"name": "echo-c", "node": "node-2", "kind": "pod", "echo_ports": [1]}),
        )
        .await;
    assert!(r.is_problem(422, "unprocessable"), "{}", r.body);
    assert_eq!(r.fields(), ["node"]);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("node node-2 has no IPv4 pod CIDR; start its agent with --pod-cidr"),
        "{}",
        r.body
    );
    let r = s
        .post(
            WL,
            json!({"name": "echo-c", "node": "node-9", "kind": "pod", "echo_ports": [1]}),
        )
        .await;
    assert!(r.is_problem(422, "unprocessable"), "{}", r.body);
    assert_eq!(r.fields(), ["node"]);

    // Read: one, all, by selector.
    let r = s.get(&format!("{WL}/echo-b")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["ip"], "10.0.1.252");
    assert!(!r.etag().is_empty());
    let r = s.get(WL).await;
    let names: Vec<_> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo-a", "echo-b", "out-1", "out-2"]);
    let r = s.get(&format!("{WL}?selector=name%3Dout-2")).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.body);
    assert_eq!(r.body["items"][0]["name"], "out-2");
    let r = s.get(&format!("{WL}?limit=3")).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 3);
    assert!(r.body["next_cursor"].is_string());
    let r = s.get(&format!("{WL}?selector=%3D%3D%3D")).await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), ["selector"]);
    // `selector` and `labels` together: both are checked, and an item must match both.
    let r = s
        .get(&format!(
            "{WL}?selector=name%20in%20(out-1,out-2)&labels=name%3Dout-2"
        ))
        .await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );
    assert_eq!(r.body["items"][0]["name"], "out-2");
    let r = s.get(&format!("{WL}?selector=&labels=%3D%3D%3D")).await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), ["labels"]);

    // A freed address is handed out again.
    let r = s.t.delete(&format!("{WL}/echo-a"), &s.owner).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = s.get(&format!("{WL}/echo-a")).await;
    assert!(r.is_problem(404, "not-found"));
    assert_eq!(s.workload("echo-d", "node-1", "pod").await, "10.0.1.253");

    // Deleting a collection needs a selector.
    let r = s.t.delete(WL, &s.owner).await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), ["selector"]);
    let r =
        s.t.delete(
            &format!("{WL}?selector=name%20in%20(out-1,out-2)"),
            &s.owner,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"deleted": 2}));
    assert_eq!(s.t.count("test_workloads").await, 2);

    // Every write is audited.
    let r = s
        .get("/v1/tenants/acme/audit-log?resource_kind=test_workload")
        .await;
    let actions: Vec<_> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["create", "create", "create", "create", "delete", "create", "delete", "delete"]
    );
}

/// Dual stack: on a node with an IPv6 pod CIDR as well, a pod gets an address of each
/// family (top down, around the endpoints of each), a world workload one in WORLD_NET6.
#[tokio::test]
async fn dual_stack_nodes_give_test_workloads_an_ipv6_address_too() {
    let mut s = setup().await;
    s.node(
        "node-3",
        &["10.0.3.0/24", "fd00:10:3::/64"],
        &[("web-3", "fd00:10:3::ffff:ffff:ffff:ffff")],
    )
    .await;
    let r = s
        .post(
            WL,
            json!({"name": "echo-v6", "node": "node-3", "kind": "pod", "echo_ports": [8080]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        (&r.body["ip"], &r.body["ip6"]),
        (
            &json!("10.0.3.254"),
            &json!("fd00:10:3:0:ffff:ffff:ffff:fffe")
        ),
        "{}",
        r.body
    );
    let r = s
        .post(
            WL,
            json!({"name": "out-v6", "node": "node-3", "kind": "world", "echo_ports": [8080]}),
        )
        .await;
    assert_eq!(
        r.body["ip6"], "2001:db8:5100:0:ffff:ffff:ffff:ffff",
        "{}",
        r.body
    );
    let r = s.get(&format!("{WL}/echo-v6")).await;
    assert_eq!(
        r.body["ip6"], "fd00:10:3:0:ffff:ffff:ffff:fffe",
        "{}",
        r.body
    );
}

#[tokio::test]
async fn concurrent_creates_get_distinct_addresses() {
    let mut s = setup().await;
    s.node("node-1", &["10.0.1.0/24"], &[]).await;
    let s = Arc::new(s);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let s = s.clone();
        tasks.spawn(async move {
            let kind = if i % 3 == 0 { "world" } else { "pod" };
            let r = s
                .post(
                    WL,
                    json!({"name": format!("echo-{i}"), "node": "node-1", "kind": kind,
                           "echo_ports": [8080]}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["ip"].as_str().unwrap().to_string()
        });
    }
    let ips: Vec<String> = tasks.join_all().await;
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 12, "{ips:?}");
    // Still top down: exactly the 8 highest pod and the 4 highest world addresses.
    let mut want: BTreeSet<String> = (247..=254).map(|i| format!("10.0.1.{i}")).collect();
    want.extend((251..=254).map(|i| format!("198.51.100.{i}")));
    assert_eq!(distinct, want.iter().collect(), "{ips:?}");
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let mut s = setup().await;
    s.node("node-1", &["10.0.1.0/24"], &[]).await;
    s.node("node-2", &["10.0.2.0/24"], &[]).await;
    let cases = [
        (
            json!({"name": "Echo_A", "node": "node-1", "kind": "pod", "echo_ports": [80]}),
            "name",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "world", "echo_ports": []}),
            "echo_ports",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "world"}),
            "echo_ports",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "pod",
                   "echo_ports": [1, 2, 3, 4, 5, 6, 7, 8, 9]}),
            "echo_ports",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "pod", "echo_ports": [80, 0]}),
            "echo_ports[1]",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "pod", "echo_ports": [80, 443, 80]}),
            "echo_ports[2]",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "pod", "echo_ports": [70000]}),
            "echo_ports[0]",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "vm", "echo_ports": [80]}),
            "kind",
        ),
        (
            json!({"name": "echo", "node": "node-1", "kind": "pod", "echo_ports": [80],
                   "labels": {"bad key!": "x"}}),
            "labels",
        ),
    ];
    for (body, field) in cases {
        let r = s.post(WL, body.clone()).await;
        assert!(r.is_problem(400, "validation"), "{body}: {}", r.body);
        assert!(
            r.fields().iter().any(|f| f.starts_with(field)),
            "{body}: {field} in {:?}",
            r.fields()
        );
    }
    assert_eq!(s.t.count("test_workloads").await, 0);

    s.workload("echo-a", "node-1", "pod").await;
    let cases = [
        (
            json!({"from": "echo-a", "target": "10.0.1.5"}),
            400,
            "target",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:0"}),
            400,
            "target",
        ),
        (
            json!({"from": "echo-a", "target": "[fe80::1%2]:80"}),
            400,
            "target",
        ),
        (
            json!({"from": "echo-a", "target": "fd00::1:80"}),
            400,
            "target",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:80", "timeout_ms": 50}),
            400,
            "timeout_ms",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:80", "timeout_ms": 30001}),
            400,
            "timeout_ms",
        ),
        (json!({"from": null, "target": "10.0.1.5:80"}), 400, "node"),
        (
            json!({"from": "echo-zz", "target": "10.0.1.5:80"}),
            422,
            "from",
        ),
        (
            json!({"from": null, "node": "node-9", "target": "10.0.1.5:80"}),
            422,
            "node",
        ),
        (
            json!({"from": "echo-a", "node": "node-2", "target": "10.0.1.5:80"}),
            400,
            "node",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:80", "extra": 1}),
            400,
            "",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:80",
                   "http": {"method": "get", "path": "/"}}),
            400,
            "http.method",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:80",
                   "http": {"method": "GET", "path": "/a\r\nHost: evil"}}),
            400,
            "http.path",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:80",
                   "resolve": {"name": "a..test", "server": "10.0.0.53"}}),
            400,
            "resolve.name",
        ),
        (
            json!({"from": "echo-a", "target": "10.0.1.5:80",
                   "resolve": {"name": "a.test", "server": "resolver"}}),
            400,
            "resolve.server",
        ),
    ];
    for (body, status, field) in cases {
        let r = s.post(PROBES, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.body);
        assert!(
            r.fields().iter().any(|f| f.starts_with(field)),
            "{body}: {field} in {}",
            r.body
        );
    }
    assert_eq!(s.t.count("probes").await, 0);

    // `node` may repeat the workload's own node; the default timeout is 2 s.
    let r = s
        .post(
            PROBES,
            json!({"from": "echo-a", "node": "node-1", "target": "10.0.1.5:80",
                   "labels": {"run": "r1"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        keys(&r.body),
        [
            "id",
            "node",
            "from",
            "target",
            "timeout_ms",
            "http",
            "resolve",
            "labels",
            "created_at",
            "status",
            "result"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(r.body["timeout_ms"], 2000);
    assert_eq!(r.body["status"], "pending");
    assert!(r.body["result"].is_null());
    assert_eq!(r.body["target"], "10.0.1.5:80");
    assert_eq!(r.body["node"], "node-1");
    assert_eq!(r.body["from"], "echo-a");
    let r = s
        .post(
            PROBES,
            json!({"from": null, "node": "node-2", "target": "10.0.1.253:8080"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body["from"].is_null());
    assert_eq!(r.body["node"], "node-2");
    // An IPv6 target, shown back in brackets (compressed, as the address is stored).
    let r = s
        .post(
            PROBES,
            json!({"from": null, "node": "node-2", "target": "[fd00:10:0001::5]:08080"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["target"], "[fd00:10:1::5]:8080");
    assert!(r.body["http"].is_null() && r.body["resolve"].is_null());
    // An L7 probe: an HTTP request after a DNS lookup, shown back as given.
    let l7 = json!({"from": "echo-a", "target": "10.0.1.5:80",
                    "http": {"method": "POST", "path": "/api/v1?x=1"},
                    "resolve": {"name": "echo.allowed.test", "server": "198.51.100.53"}});
    let r = s.post(PROBES, l7.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["http"], l7["http"]);
    assert_eq!(r.body["resolve"], l7["resolve"]);
    let r = s.get(&format!("{PROBES}/not-a-uuid")).await;
    assert!(r.is_problem(404, "not-found"));
}

#[tokio::test]
async fn other_tenants_see_and_delete_nothing() {
    let mut s = setup().await;
    s.node("node-1", &["10.0.1.0/24"], &[]).await;
    s.workload("echo-a", "node-1", "pod").await;
    let id = s
        .probe(json!({"from": "echo-a", "target": "10.0.1.5:80"}))
        .await;
    let globex = s.t.tenant("globex").await;
    s.t.cluster("globex", "prod", &globex).await;
    let g_wl = "/v1/tenants/globex/clusters/prod/test-workloads";
    let g_probes = "/v1/tenants/globex/clusters/prod/probes";
    for path in [g_wl, g_probes] {
        let r = s.t.get(path, &globex).await;
        assert_eq!(r.body["items"], json!([]), "{path}: {}", r.body);
        let r = s.t.delete(&format!("{path}?selector="), &globex).await;
        assert_eq!(r.body, json!({"deleted": 0}), "{path}");
    }
    for path in [format!("{g_wl}/echo-a"), format!("{g_probes}/{id}")] {
        let r = s.t.get(&path, &globex).await;
        assert!(r.is_problem(404, "not-found"), "{path}");
        let r = s.t.delete(&path, &globex).await;
        assert!(r.is_problem(404, "not-found"), "{path}");
    }
    // Nor through acme's URLs.
    for path in [WL.to_string(), format!("{PROBES}/{id}")] {
        let r = s.t.get(&path, &globex).await;
        assert!(r.is_problem(404, "not-found"), "{path}");
    }
    // globex's node cannot be named in acme's cluster.
    let r =
        s.t.post(
            "/v1/tenants/globex/clusters/prod/join-tokens",
            &globex,
            json!({"name": "g"}),
        )
        .await;
    let tok = r.body["token"].as_str().unwrap().to_string();
    s.client
        .register(RegisterRequest {
            join_token: tok,
            node_name: "node-g".into(),
            pod_cidrs: vec!["10.9.0.0/24".into()],
            ..Default::default()
        })
        .await
        .expect("register");
    let r = s
        .post(
            WL,
            json!({"name": "echo-g", "node": "node-g", "kind": "pod", "echo_ports": [1]}),
        )
        .await;
    assert!(r.is_problem(422, "unprocessable"), "{}", r.body);
    assert_eq!(s.t.count("test_workloads").await, 1);
    assert_eq!(s.t.count("probes").await, 1);
}
