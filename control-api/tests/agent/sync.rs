//! Desired-state sync: snapshots, deltas from any replica, resume, identity collection,
//! lag, tracing, and the background tasks that serve it.

use super::*;
use common::next_change;

/// Tenant `acme`, cluster `prod`, nodes `node-1` (192.0.2.10, running endpoint `web-1`
/// app=web at 10.0.1.5) and `node-2` (192.0.2.11): the owner token, the client, the nodes.
async fn two_nodes(
    t: &TestApp,
) -> (
    String,
    AgentClient<Channel>,
    weft_proto::v1::RegisterResponse,
    weft_proto::v1::RegisterResponse,
) {
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let mut a = agent(t).await;
    let tok = join_token(t, &owner, "prod", json!({"name": "fleet", "max_uses": 0})).await;
    let n1 = a
        .register(register(&tok, "node-1", false))
        .await
        .unwrap()
        .into_inner();
    let mut r2 = register(&tok, "node-2", false);
    r2.addresses = vec!["192.0.2.11".into()];
    let n2 = a.register(r2).await.unwrap().into_inner();
    report_endpoints(
        &mut a,
        &n1.node_credential,
        vec![endpoint("web-1", "web", "10.0.1.5")],
    )
    .await;
    (owner, a, n1, n2)
}

#[tokio::test]
async fn sync_sends_a_snapshot_then_deltas_from_any_replica() {
    let t = TestApp::new().await;
    let (owner, mut a, n1, n2) = two_nodes(&t).await;
    report_endpoints(
        &mut a,
        &n2.node_credential,
        vec![endpoint("fe-1", "frontend", "10.0.2.5")],
    )
    .await;
    let idents = t.get("/v1/tenants/acme/endpoints", &owner).await;
    let identity = |name: &str| {
        idents.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["identity"]
            .as_u64()
            .unwrap() as u32
    };
    let (web, fe) = (identity("web-1"), identity("fe-1"));

    // The agent of node-1 syncs through a second replica.
    let mut b = agent_on(t.replica().await).await;
    let mut stream = open_sync(&mut b, &n1.node_credential, 0, 1).await;
    let first = next_sync(&mut stream).await;
    let r0 = first.revision;
    assert_eq!(r0, t.revision().await as u64);
    let Some(Kind::Snapshot(snap)) = first.kind else {
        panic!("first message is a snapshot")
    };
    let local: Vec<_> = snap
        .endpoints
        .iter()
        .map(|e| (e.ips.clone(), e.identity))
        .collect();
    assert!(
        local.contains(&(vec!["10.0.1.5".to_string()], web)),
        "{local:?}"
    );
    assert!(
        snap.ipcache
            .iter()
            .any(|e| e.prefix == "10.0.2.5/32" && e.identity == fe),
        "remote endpoint in ipcache"
    );
    assert!(
        snap.ipcache.iter().any(|e| e.prefix == "192.0.2.11/32"),
        "the other node in ipcache"
    );
    assert!(snap.policies.iter().all(|p| p.rules.is_empty()) || snap.policies.is_empty());

    // A policy made through replica A reaches the agent on replica B as a delta.
    let r = t
        .post(
            "/v1/tenants/acme/policies",
            &owner,
            json!({"name": "web-from-fe", "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                             "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let msg = next_sync(&mut stream).await;
    assert!(msg.revision > r0);
    let Some(Kind::Delta(d)) = msg.kind else {
        panic!("then deltas")
    };
    let web_ep = d
        .upsert_endpoints
        .iter()
        .find(|e| e.identity == web)
        .expect("web endpoint updated");
    assert!(web_ep.enforce_ingress && !web_ep.enforce_egress);
    let rules = &d
        .upsert_policies
        .iter()
        .find(|p| p.endpoint_id == web_ep.id)
        .expect("web rules")
        .rules;
    assert!(
        rules.iter().any(|r| r.peer_identity == Some(fe)
            && r.proto == Some(6)
            && r.ports
                .as_ref()
                .is_some_and(|p| p.first == 8080 && p.last == 8080)
            && r.action == weft_proto::v1::Action::Allow as i32),
        "{rules:?}"
    );
    assert!(
        d.upsert_ipcache.is_empty() && d.upsert_services.is_empty(),
        "only what changed"
    );

    // A service of the cluster.
    t.post(
        "/v1/tenants/acme/clusters/prod/services",
        &owner,
        json!({"name": "web", "algorithm": "maglev",
                    "frontends": [{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
                    "backends": [{"address": "10.0.1.5", "port": 8080}]}),
    )
    .await;
    let msg = next_sync(&mut stream).await;
    let Some(Kind::Delta(d)) = msg.kind else {
        panic!("delta")
    };
    assert_eq!(d.upsert_services.len(), 1);
    assert_eq!(
        d.upsert_services[0].algorithm,
        weft_proto::v1::Algorithm::Maglev as i32
    );
    let current = msg.revision;

    // Reconnecting at the current revision: told it is current, no snapshot.
    drop(stream);
    let mut again = open_sync(&mut b, &n1.node_credential, current, 1).await;
    let msg = next_sync(&mut again).await;
    assert_eq!(msg.revision, current);
    let Some(Kind::Delta(d)) = msg.kind else {
        panic!("an empty delta")
    };
    assert!(
        d.upsert_endpoints.is_empty()
            && d.upsert_policies.is_empty()
            && d.upsert_services.is_empty()
    );

    // Acks make realization visible: node-1 applied it, node-2 has not.
    let r = t.get("/v1/tenants/acme/policies/web-from-fe", &owner).await;
    assert_eq!(
        r.body["status"],
        json!({"realized_nodes": 0, "total_nodes": 2, "conditions": []}),
        "{}",
        r.body
    );
    common::ack(&mut b, &n1.node_credential, current).await;
    let r = t.get("/v1/tenants/acme/policies/web-from-fe", &owner).await;
    assert_eq!(
        r.body["status"],
        json!({"realized_nodes": 1, "total_nodes": 2, "conditions": []}),
        "{}",
        r.body
    );
    let r = t
        .get("/v1/tenants/acme/clusters/prod/services/web", &owner)
        .await;
    assert_eq!(
        r.body["status"],
        json!({"realized_nodes": 1, "total_nodes": 2}),
        "{}",
        r.body
    );

    // Without a credential there is no stream.
    let e = b.sync(SyncRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

/// A reconnecting agent that applied revision R gets the difference since R, not a
/// snapshot, from any replica; an agent at an unknown revision gets a snapshot.
#[tokio::test]
async fn a_reconnecting_agent_resumes_by_delta() {
    let t = TestApp::new().await;
    let eps = vec![
        endpoint("web-1", "web", "10.0.1.5"),
        endpoint("db-1", "db", "10.0.1.6"),
    ];
    let (owner, mut a, n1) = node_with(&t, eps).await;
    let sync = |from: u64| {
        authed(
            SyncRequest {
                resume_from_revision: from,
                capability_version: 1,
            },
            &n1.node_credential,
        )
    };
    let mut stream = a.sync(sync(0)).await.expect("sync").into_inner();
    let first = next_sync(&mut stream).await;
    assert!(matches!(first.kind, Some(Kind::Snapshot(_))));
    let applied = first.revision;
    drop(stream);

    // While the agent is away, a policy selects web-1.
    t.created(
        "/v1/tenants/acme/policies",
        &owner,
        json!({"name": "web-deny-all", "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}}),
    )
    .await;

    let mut b = agent_on(t.replica().await).await;
    let mut again = b.sync(sync(applied)).await.expect("sync").into_inner();
    let msg = next_sync(&mut again).await;
    assert!(msg.revision > applied);
    let Some(Kind::Delta(d)) = msg.kind else {
        panic!("resuming from {applied} gives a delta, got {:?}", msg.kind)
    };
    assert_eq!(
        d.upsert_endpoints.len(),
        1,
        "only web-1 changed (now enforcing): {d:?}"
    );
    assert!(d.upsert_endpoints[0].enforce_ingress);
    assert!(d.remove_endpoints.is_empty() && d.upsert_services.is_empty());
    assert!(
        d.upsert_ipcache.is_empty() && d.remove_ipcache.is_empty(),
        "the ipcache the node was sent is rebuilt from the shared copy: {d:?}"
    );
    drop(again);
    // What nodes were sent keeps the ipcache once per content, not in each node's row,
    // and the rest in the wire's encoding.
    let inline: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM node_sync_state WHERE state IS NOT NULL OR local_pb IS NULL",
    )
    .fetch_one(&t.pool)
    .await
    .expect("count");
    assert_eq!(inline, 0);
    assert_eq!(
        t.count("sent_ipcache").await,
        1,
        "one ipcache, still referenced"
    );

    // An agent that lost its state (or never saw this revision) gets a snapshot.
    let mut lost = b.sync(sync(applied - 1)).await.expect("sync").into_inner();
    assert!(matches!(
        next_sync(&mut lost).await.kind,
        Some(Kind::Snapshot(_))
    ));
}

#[tokio::test]
async fn a_change_that_leaves_a_node_unchanged_still_brings_it_current() {
    let t = TestApp::new().await;
    let (owner, mut a, n1) = node_with(&t, vec![endpoint("web-1", "web", "10.0.1.5")]).await;
    let mut stream = open_sync(
        &mut a,
        &n1.node_credential,
        0,
        weft_proto::CAPABILITY_VERSION,
    )
    .await;
    let first = next_sync(&mut stream).await;
    // A policy selecting nothing on this node: its state is the same.
    t.created(
        "/v1/tenants/acme/policies",
        &owner,
        json!({"name": "db-only", "spec": {
                "endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]}}),
    )
    .await;
    let msg = next_sync(&mut stream).await;
    assert!(msg.revision > first.revision);
    assert_eq!(
        msg.kind,
        Some(Kind::Delta(weft_proto::v1::Delta::default())),
        "nothing changes for this node"
    );
    // Its ack of that revision is what makes the policy realized here.
    let realized = async |t: &TestApp| {
        let r = t.get("/v1/tenants/acme/policies/db-only", &owner).await;
        r.body["status"]["realized_nodes"].as_i64()
    };
    assert_eq!(realized(&t).await, Some(0));
    common::ack(&mut a, &n1.node_credential, msg.revision).await;
    assert_eq!(realized(&t).await, Some(1));
}

#[tokio::test]
async fn unused_identities_are_collected_after_the_grace_period() {
    let t = TestApp::new().await;
    let eps = vec![
        endpoint("web-1", "web", "10.0.1.5"),
        endpoint("db-1", "db", "10.0.1.6"),
    ];
    let (_owner, mut client, n) = node_with(&t, eps).await;
    // db-1 goes away; its identity is now unused.
    report_endpoints(
        &mut client,
        &n.node_credential,
        vec![endpoint("web-1", "web", "10.0.1.5")],
    )
    .await;
    let grace = std::time::Duration::from_secs(3600);
    let gc = || control_api::identities::collect_garbage(&t.state.pool, grace);
    assert_eq!(
        gc().await.unwrap(),
        0,
        "within the grace period nothing goes"
    );
    sqlx::query("UPDATE identities SET last_used_at = now() - interval '2 hours'")
        .execute(&t.pool)
        .await
        .unwrap();
    assert_eq!(gc().await.unwrap(), 1, "only the unused one goes");
    let left: Vec<serde_json::Value> = sqlx::query_scalar("SELECT labels FROM identities")
        .fetch_all(&t.pool)
        .await
        .unwrap();
    assert_eq!(
        left,
        vec![json!({"app": "web"})],
        "the identity in use stays"
    );
}

/// One trace from the REST request to the agent's ack: the request's `traceparent` is
/// joined by the HTTP span, the change's NOTIFY carries it to the replica that pushes the
/// delta, the delta carries it to the agent, and the agent's ack comes back in it. The
/// spans reach a real OTLP receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_is_one_trace_from_request_to_agent_ack() {
    let receiver = weft_telemetry::receiver::Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = listener.local_addr().expect("addr");
    let svc = receiver.service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
    });
    // SAFETY: set before any other thread of this test process reads the environment.
    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")) };
    let provider = weft_telemetry::provider("control-api").expect("provider");
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(weft_telemetry::layer(&provider, "control-api"));
        tracing::subscriber::set_global_default(subscriber).expect("the test's subscriber");
    }

    let t = TestApp::new().await;
    let (owner, _a, n1) = node_with(&t, vec![endpoint("web-1", "web", "10.0.1.5")]).await;
    // The agent syncs through another replica.
    let mut b = agent_on(t.replica().await).await;
    let mut stream = open_sync(&mut b, &n1.node_credential, 0, 1).await;
    next_sync(&mut stream).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/tenants/acme/policies")
        .header("authorization", format!("Bearer {owner}"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(axum::body::Body::from(
            json!({"name": "web-default-deny", "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}})
            .to_string(),
        ))
        .expect("request");
    assert_eq!(t.send(req).await.status, StatusCode::CREATED);
    let msg = next_sync(&mut stream).await;
    assert!(
        msg.traceparent.starts_with(&format!("00-{trace_id}-")),
        "the delta carries the request's trace: {:?}",
        msg.traceparent
    );
    let mut ack = authed(
        AckRequest {
            revision: msg.revision,
            errors: vec![],
        },
        &n1.node_credential,
    );
    ack.metadata_mut()
        .insert("traceparent", msg.traceparent.parse().expect("metadata"));
    b.ack(ack).await.expect("ack");

    let wanted = [
        "http",
        "db.record_change",
        "desired_state.push",
        "desired_state.compute",
        "agent.ack",
    ];
    // The push's span ends once what was sent is recorded, which may be after the ack.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let spans = loop {
        let _ = provider.force_flush();
        let spans = receiver.trace(trace_id);
        let complete = wanted.iter().all(|w| spans.iter().any(|s| s.name == *w));
        if complete || std::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let in_trace: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for want in wanted {
        assert!(
            in_trace.contains(&want),
            "{want} not in the trace: {in_trace:?} (all: {:?})",
            receiver.spans()
        );
    }
    let push = spans
        .iter()
        .find(|s| s.name == "desired_state.push")
        .expect("push span");
    assert!(
        !push.parent_span_id.is_empty(),
        "the push has a parent in the request's trace"
    );
}

/// The value of a tenant's gauge in `/metrics`, if the tenant has one.
async fn tenant_gauge(t: &TestApp, name: &str, tenant: &str) -> Option<f64> {
    let m = t.call("GET", "/metrics", None, None).await;
    let text = m.body.as_str().expect("metrics are text").to_string();
    let prefix = format!("{name}{{tenant=\"{tenant}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("a number"))
}

#[tokio::test]
async fn sync_lag_is_what_connected_agents_have_not_acknowledged() {
    let t = TestApp::new().await;
    let (owner, mut client, node) = node_with(&t, vec![endpoint("web-1", "web", "10.0.1.5")]).await;
    let cred = node.node_credential.clone();
    let lag = "weft_agent_sync_lag_seconds";
    let behind = "weft_agents_behind";
    assert_eq!(
        tenant_gauge(&t, lag, "acme").await,
        None,
        "no agent connected"
    );

    let mut stream = open_sync(&mut client, &cred, 0, 1).await;
    let snap = next_sync(&mut stream).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let l = tenant_gauge(&t, lag, "acme").await.expect("a lag gauge");
    assert!(l >= 0.3, "the snapshot is unacknowledged for 300 ms: {l}");
    assert_eq!(tenant_gauge(&t, behind, "acme").await, Some(1.0));

    common::ack(&mut client, &cred, snap.revision).await;
    assert_eq!(tenant_gauge(&t, lag, "acme").await, Some(0.0));
    assert_eq!(tenant_gauge(&t, behind, "acme").await, Some(0.0));

    // A change pushed and not yet acknowledged is lag again; its ack clears it.
    t.created(
        "/v1/tenants/acme/policies",
        &owner,
        json!({"name": "web-closed", "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}]}]}}),
    )
    .await;
    let delta = next_sync(&mut stream).await;
    assert!(delta.revision > snap.revision);
    assert_eq!(tenant_gauge(&t, behind, "acme").await, Some(1.0));
    assert!(tenant_gauge(&t, lag, "acme").await.expect("gauge") >= 0.0);
    // An ack of an older revision does not clear a newer push.
    common::ack(&mut client, &cred, snap.revision).await;
    assert_eq!(tenant_gauge(&t, behind, "acme").await, Some(1.0));
    common::ack(&mut client, &cred, delta.revision).await;
    assert_eq!(tenant_gauge(&t, behind, "acme").await, Some(0.0));
    assert_eq!(tenant_gauge(&t, lag, "acme").await, Some(0.0));

    // A disconnected agent is no longer counted.
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tenant_gauge(&t, lag, "acme").await.is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "gauge gone within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_replicas_background_tasks_stop_on_shutdown_and_when_its_state_is_dropped() {
    let t = TestApp::new().await;
    // Shutdown stops every task and waits for each.
    let replica = t.replica().await;
    let tasks = replica.tasks.clone();
    assert!(
        tasks.running() >= 4,
        "listeners, writers and invalidation run: {}",
        tasks.running()
    );
    tasks.shutdown().await;
    assert_eq!(tasks.running(), 0);
    // Dropping the last clone of a state stops its tasks too.
    let replica = t.replica().await;
    let stopping = replica.tasks.stopping();
    assert!(!stopping.is_cancelled());
    drop(replica);
    assert!(stopping.is_cancelled());
}

#[tokio::test]
async fn a_deleted_node_leaves_every_other_node_and_its_credential_stops_working() {
    let t = TestApp::new().await;
    let (owner, mut a, n1, n2) = two_nodes(&t).await;
    let sync = |cred: String| {
        let mut c = a.clone();
        async move { open_sync(&mut c, &cred, 0, weft_proto::CAPABILITY_VERSION).await }
    };
    let mut s1 = sync(n1.node_credential.clone()).await;
    let mut s2 = sync(n2.node_credential.clone()).await;
    next_sync(&mut s1).await;
    let Some(Kind::Snapshot(snap)) = next_sync(&mut s2).await.kind else {
        panic!("first message is a snapshot")
    };
    let prefixes = |v: &[weft_proto::v1::IpcacheEntry]| -> Vec<String> {
        v.iter().map(|e| e.prefix.clone()).collect()
    };
    let before = prefixes(&snap.ipcache);
    assert!(before.contains(&"10.0.1.5/32".to_string()), "{before:?}");
    assert!(before.contains(&"192.0.2.10/32".to_string()), "{before:?}");

    // Deleting a node takes an admin.
    let editor = t.token("acme", "editor", &owner).await;
    let r = t
        .delete("/v1/tenants/acme/clusters/prod/nodes/node-1", &editor)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = t
        .delete("/v1/tenants/acme/clusters/prod/nodes/node-1", &owner)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = t
        .get("/v1/tenants/acme/clusters/prod/nodes/node-1", &owner)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    let r = t.get("/v1/tenants/acme/endpoints", &owner).await;
    assert_eq!(r.body["items"], json!([]), "its endpoints went with it");

    // Node-2 is told: the node's address and its endpoint leave its ipcache.
    let Some(Kind::Delta(d)) = next_change(&mut s2).await.kind else {
        panic!("a delta")
    };
    for gone in ["10.0.1.5/32", "192.0.2.10/32"] {
        assert!(d.remove_ipcache.contains(&gone.to_string()), "{d:?}");
    }
    // Node-1's stream ends, and its credential is refused from now on.
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match s1.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the deleted node's stream ends");
    assert_eq!(
        end.expect_err("ends with an error").code(),
        Code::Unauthenticated
    );
    let e = a
        .report_health(authed(HealthReport::default(), &n1.node_credential))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let audit = t
        .get("/v1/tenants/acme/audit-log?resource_kind=node", &owner)
        .await;
    let actions: Vec<_> = audit.body["items"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(actions.last(), Some(&"delete"), "{}", audit.body);
}

/// Reads one whole revision: its parts until one does not continue.
async fn parts_of_next(
    stream: &mut tonic::Streaming<weft_proto::v1::SyncResponse>,
) -> Vec<weft_proto::v1::SyncResponse> {
    let mut parts = vec![next_sync(stream).await];
    while parts.last().is_some_and(|p| p.continues) {
        parts.push(next_sync(stream).await);
    }
    parts
}

#[tokio::test]
async fn a_large_revision_goes_in_parts_to_agents_that_join_them_and_whole_to_older_ones() {
    use prost::Message;
    use weft_proto::parts::{Joiner, PART_BYTES};

    let t = TestApp::new().await;
    let endpoints = (0..1500)
        .map(|i| {
            endpoint(
                &format!("web-{i}"),
                "web",
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
            )
        })
        .collect();
    let (owner, mut a, n1) = node_with(&t, endpoints).await;
    let mut open = async |capability_version| {
        open_sync(&mut a, &n1.node_credential, 0, capability_version).await
    };
    let mut new = open(weft_proto::CAPABILITY_PARTS).await;
    let mut old = open(weft_proto::CAPABILITY_PARTS - 1).await;
    // The snapshot, then a delta that gives all 1,500 endpoints rules.
    for change in [false, true] {
        if change {
            t.created(
                "/v1/tenants/acme/policies",
                &owner,
                json!({"name": "web", "spec": {
                    "endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                                 "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]}}),
            )
            .await;
        }
        let whole = parts_of_next(&mut old).await;
        assert_eq!(
            whole.len(),
            1,
            "an older agent gets the revision as one message"
        );
        let whole = whole.into_iter().next().unwrap();
        assert!(whole.encoded_len() > PART_BYTES, "{}", whole.encoded_len());
        let parts = parts_of_next(&mut new).await;
        assert!(parts.len() >= 2, "{} parts", parts.len());
        let mut joiner = Joiner::default();
        let mut joined = None;
        for p in parts {
            assert_eq!(p.revision, whole.revision);
            assert!(p.encoded_len() <= PART_BYTES + 64, "{}", p.encoded_len());
            joined = joiner.push(p).expect("parts join");
        }
        assert_eq!(
            joined.as_ref(),
            Some(&whole),
            "the parts join to what older agents get"
        );
    }
}

#[tokio::test]
async fn an_open_stream_marks_its_node_seen() {
    let t = TestApp::new().await;
    let (owner, mut client, node) = node_with(&t, vec![endpoint("web-1", "web", "10.0.1.5")]).await;
    let url = "/v1/tenants/acme/clusters/prod/nodes/node-1";
    // Seen an hour ago: not connected.
    sqlx::query("UPDATE nodes SET last_seen = now() - interval '1 hour'")
        .execute(&t.pool)
        .await
        .unwrap();
    let r = t.get(url, &owner).await;
    assert_eq!(r.body["status"]["connected"], false, "{}", r.body);

    // Its stream opens: the replica's heartbeats mark it seen (within `FRESH`, batched with
    // the other streams that opened then), not the agent's reports.
    let mut stream = open_sync(&mut client, &node.node_credential, 0, 1).await;
    next_sync(&mut stream).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = t.get(url, &owner).await;
        if r.body["status"]["connected"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connected within 5 s of the stream opening: {}",
            r.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn endpoints_of_one_label_set_share_one_label_map_in_the_loaded_view() {
    let t = TestApp::new().await;
    node_with(
        &t,
        vec![
            endpoint("web-1", "web", "10.0.1.5"),
            endpoint("web-2", "web", "10.0.1.6"),
            endpoint("db-1", "db", "10.0.1.7"),
        ],
    )
    .await;
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT tenant_id FROM nodes")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let loaded = t.state.views.committed(tenant).await.unwrap();
    let labels = |name: &str| {
        let e = loaded.view.endpoints.iter().find(|e| e.name == name);
        e.expect("endpoint in the view").labels.clone()
    };
    let (web1, web2, db) = (labels("web-1"), labels("web-2"), labels("db-1"));
    assert_eq!(web1.get("app").map(String::as_str), Some("web"));
    assert!(std::sync::Arc::ptr_eq(&web1, &web2), "one map for app=web");
    assert_eq!(db.get("app").map(String::as_str), Some("db"));
    assert!(!std::sync::Arc::ptr_eq(&web1, &db));
}
