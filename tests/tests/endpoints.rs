//! Two nodes, each a network namespace running the real `node-agent run`, joined by an
//! underlay with direct routes; pods made with `node-agent endpoint add`. The control plane
//! learns the endpoints and gives them identities, a REST policy is enforced on real TCP on
//! both nodes (same node and across nodes), `endpoint del` undoes an endpoint everywhere, a
//! killed and restarted agent keeps its endpoints, and flows reach the control plane.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::bpf_available;
use common::env::{until_assigned, Env};
use common::nodes::{until_tcp, WITHIN};
use node_agent::netns::Cgroup;
use node_agent::tools;
use serde_json::{json, Value};

const WEB1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 8080);
const WEB2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 8080);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_from_the_cli_get_identities_and_policy_on_both_nodes_and_flows_are_exported() {
    if !bpf_available(
        "endpoints_from_the_cli_get_identities_and_policy_on_both_nodes_and_flows_are_exported",
    ) {
        return;
    }
    let mut env = Env::new(2).await;
    env.start(0, true).await;
    env.start(1, true).await;
    let (client, web1) = (env.nodes[0].pod(), env.nodes[0].pod());
    let web2 = env.nodes[1].pod();
    let out = env.nodes[0].add("client", client, "10.0.1.1/32", "app=client");
    assert!(out.contains("endpoint client added: 10.0.1.1/32"), "{out}");
    env.nodes[0].add("web-1", web1, "10.0.1.2/32", "app=web,tier=front");
    env.nodes[1].add("web-2", web2, "10.0.2.1/32", "app=web,tier=front");
    // The same add again changes nothing.
    env.nodes[0].add("web-1", web1, "10.0.1.2/32", "app=web,tier=front");
    env.nodes[0].serve(web1, "web-1");
    env.nodes[1].serve(web2, "web-2");

    // Refusals name what was wrong.
    let n0 = &env.nodes[0];
    let err = |out: std::process::Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = err(n0.cli(&[
        "add",
        "--name",
        "ghost",
        "--netns",
        "wf-no-such-ns",
        "--ip",
        "10.0.1.9",
    ]));
    assert!(e.contains("wf-no-such-ns does not exist"), "{e}");
    let spare = env.nodes[0].pod();
    let n0 = &env.nodes[0];
    let e = err(n0.cli(&[
        "add",
        "--name",
        "dup",
        "--netns",
        n0.pods[spare].name(),
        "--ip",
        "10.0.1.2/32",
    ]));
    assert!(
        e.contains("10.0.1.2 is already used by endpoint \"web-1\""),
        "{e}"
    );
    let e = err(n0.cli(&[
        "add",
        "--name",
        "bad",
        "--netns",
        n0.pods[spare].name(),
        "--ip",
        "10.0.1.9",
        "--labels",
        "app",
    ]));
    assert!(e.contains("\"app\" is not key=value"), "{e}");
    assert!(
        !n0.has_link(&node_agent::endpoint::host_ifname("dup")),
        "a refused add leaves nothing behind"
    );

    // The control plane knows the endpoints, with identities (same labels, same identity
    // on both nodes), and the agents show them.
    env.until_rest_endpoints(&["client", "web-1", "web-2"])
        .await;
    let rest = env.rest_endpoints().await;
    assert_eq!(
        rest[1].2, rest[2].2,
        "web-1 and web-2 share their identity: {rest:?}"
    );
    let list = until_assigned(&env.nodes[0], 2).await;
    let web1_row = list
        .iter()
        .find(|e| e["name"] == "web-1")
        .expect("web-1 listed");
    assert_eq!(web1_row["ip"], "10.0.1.2/32");
    assert_eq!(web1_row["labels"], json!({"app": "web", "tier": "front"}));
    assert_eq!(
        web1_row["interface"],
        node_agent::endpoint::host_ifname("web-1")
    );
    assert_eq!(web1_row["identity"].as_i64(), rest[1].2);
    let host = list
        .iter()
        .find(|e| e["name"] == "host")
        .expect("host endpoint listed");
    assert_eq!(
        host["identity"], 1,
        "the host is an endpoint with the host identity"
    );
    assert_eq!(host["ip"], "192.168.100.1");
    until_assigned(&env.nodes[1], 1).await;
    let table = String::from_utf8_lossy(&env.nodes[0].cli(&["list"]).stdout).into_owned();
    assert!(
        table.starts_with("NAME") && table.contains("app=web,tier=front"),
        "{table}"
    );

    // Default allow: on the node and across nodes by direct routing.
    let client_ns = &env.nodes[0].pods[client].path();
    assert!(
        until_tcp(client_ns, WEB1, true).await,
        "client -> web-1 (same node)"
    );
    assert!(
        until_tcp(client_ns, WEB2, true).await,
        "client -> web-2 (other node)"
    );

    // A policy over REST admitting only app=other to app=web: denied on both nodes.
    env.policy("web-ingress", "other").await;
    assert!(until_tcp(client_ns, WEB1, false).await, "denied on node-1");
    assert!(until_tcp(client_ns, WEB2, false).await, "denied on node-2");
    // Admitting app=client too: allowed on both (identities resolved across nodes).
    env.policy("web-from-client", "client").await;
    assert!(until_tcp(client_ns, WEB1, true).await, "allowed on node-1");
    assert!(until_tcp(client_ns, WEB2, true).await, "allowed on node-2");
    env.delete_policy("web-from-client").await;
    assert!(
        until_tcp(client_ns, WEB2, false).await,
        "denied again on node-2"
    );

    // Flows, forwarded and dropped, reach the control plane: streams are answered OK.
    for node in &env.nodes {
        let start = Instant::now();
        loop {
            let s = tokio::task::block_in_place(|| node.status());
            let flows = &s["flows"];
            // Both outcomes were seen on each node: forwarded connections, and drops of
            // the policy (node-1 drops client -> web-1, node-2 client -> web-2).
            if flows["flows_acked"].as_u64().unwrap_or(0) > 0
                && flows["streams_acked"].as_u64().unwrap_or(0) > 0
                && flows["by_verdict"]["FORWARDED"].as_u64().unwrap_or(0) > 0
                && flows["by_verdict"]["DROPPED"].as_u64().unwrap_or(0) > 0
            {
                assert!(
                    flows["events"].as_u64().unwrap_or(0)
                        >= flows["flows_acked"].as_u64().unwrap_or(0)
                );
                break;
            }
            assert!(
                start.elapsed() < WITHIN,
                "{}: flows acked: {s}\n{}",
                node.name,
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // And they are stored: the tenant's flow API shows the policy drops on each node, with
    // source and destination endpoints resolved, and the forwarded connections.
    for (node, web) in [("node-1", "web-1"), ("node-2", "web-2")] {
        let path = format!(
            "/v1/tenants/acme/flows?verdict=DROPPED&drop_reason=POLICY_DENIED&node={node}\
             &from_endpoint=client&to_endpoint={web}&to_port=8080&protocol=tcp&last=5"
        );
        let start = Instant::now();
        loop {
            let r = env.cp.call("GET", &path, &env.owner, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let items = r.body["items"].as_array().cloned().unwrap_or_default();
            if let Some(f) = items.first() {
                assert_eq!(f["source"]["ip"], "10.0.1.1", "{f}");
                assert_eq!(f["source"]["labels"]["app"], "client", "{f}");
                assert_eq!(f["destination"]["labels"]["app"], "web", "{f}");
                assert_eq!(f["cluster"], "prod", "{f}");
                break;
            }
            assert!(start.elapsed() < WITHIN, "{node}: no stored drop at {path}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let r = env
        .cp
        .call(
            "GET",
            "/v1/tenants/acme/flows?verdict=FORWARDED&from_endpoint=client&to_endpoint=web-2",
            &env.owner,
            None,
        )
        .await;
    assert!(
        r.body["items"].as_array().is_some_and(|v| !v.is_empty()),
        "forwarded client -> web-2 stored: {}",
        r.body
    );

    // `endpoint del` removes the veth and the endpoint leaves the control plane; a second
    // del is harmless.
    let out = env.nodes[1].cli(&["del", "web-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.nodes[1].has_link(&node_agent::endpoint::host_ifname("web-2")));
    env.until_rest_endpoints(&["client", "web-1"]).await;
    let out = env.nodes[1].cli(&["del", "web-2"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not exist"));
    env.delete_policy("web-ingress").await;
    assert!(
        until_tcp(client_ns, WEB1, true).await,
        "policies deleted: allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_keeps_its_endpoints_and_enforcement_across_the_restart() {
    if !bpf_available("a_killed_agent_keeps_its_endpoints_and_enforcement_across_the_restart") {
        return;
    }
    let mut env = Env::new(1).await;
    env.start(0, true).await;
    let (client, web1, other) = (env.nodes[0].pod(), env.nodes[0].pod(), env.nodes[0].pod());
    env.nodes[0].add("client", client, "10.0.1.1", "app=client");
    env.nodes[0].add("web-1", web1, "10.0.1.2", "app=web");
    env.nodes[0].serve(web1, "web-1");
    env.until_rest_endpoints(&["client", "web-1"]).await;
    until_assigned(&env.nodes[0], 2).await;
    env.policy("web-from-client", "client").await;
    let client_ns = &env.nodes[0].pods[client].path();
    assert!(
        until_tcp(client_ns, WEB1, true).await,
        "allowed by the policy"
    );

    // SIGKILL: the pinned datapath keeps the endpoints working and enforcing.
    env.nodes[0].kill_agent();
    assert!(
        tokio::task::block_in_place(|| common::nodes::tcp(client_ns, WEB1)).is_ok(),
        "allowed traffic keeps flowing without an agent"
    );
    // Restarted without a join token: the endpoints are known from the state dir, nothing
    // is re-added, the control plane keeps them.
    env.start(0, false).await;
    let list = until_assigned(&env.nodes[0], 2).await;
    assert!(list.iter().any(|e| e["name"] == "web-1"), "{list:?}");
    env.until_rest_endpoints(&["client", "web-1"]).await;
    // And new endpoints work after the restart: a third pod, not admitted by the policy.
    env.nodes[0].add("other", other, "10.0.1.3", "app=other");
    env.until_rest_endpoints(&["client", "other", "web-1"])
        .await;
    // Programmed (its identity is in the applied state) before the denial means anything.
    until_assigned(&env.nodes[0], 3).await;
    let other_ns = &env.nodes[0].pods[other].path();
    assert!(
        until_tcp(other_ns, WEB1, false).await,
        "other -> web-1 denied"
    );
    assert!(
        until_tcp(client_ns, WEB1, true).await,
        "client -> web-1 still allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_seen_while_the_control_plane_is_unreachable_are_kept_newest_first_and_the_rest_counted(
) {
    if !bpf_available(
        "flows_seen_while_the_control_plane_is_unreachable_are_kept_newest_first_and_the_rest_counted",
    ) {
        return;
    }
    let mut env = Env::new(1).await;
    env.nodes[0].run_args = vec!["--flow-buffer".into(), "5".into()];
    env.start(0, true).await;
    let (client, web1) = (env.nodes[0].pod(), env.nodes[0].pod());
    env.nodes[0].add("client", client, "10.0.1.1", "app=client");
    env.nodes[0].add("web-1", web1, "10.0.1.2", "app=web");
    env.nodes[0].serve(web1, "web-1");
    env.until_rest_endpoints(&["client", "web-1"]).await;
    until_assigned(&env.nodes[0], 2).await;
    env.policy("web-ingress", "other").await;
    let client_ns = &env.nodes[0].pods[client].path();
    assert!(
        until_tcp(client_ns, WEB1, false).await,
        "denied by the policy"
    );
    let node = &env.nodes[0];
    let flows = |s: &Value, k: &str| s["flows"][k].as_u64().unwrap_or(0);
    let start = Instant::now();
    loop {
        let s = tokio::task::block_in_place(|| node.status());
        if flows(&s, "streams_acked") > 0 {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "flows acked before the outage: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the open stream go idle and close, then cut the node off the control plane.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = tokio::task::block_in_place(|| node.status());
    node.ns
        .ip(&["link", "set", "ul0", "down"])
        .expect("link down");
    // The agent's one connection outlives a short blip (TCP retransmits): the outage is
    // real for the agent once its keepalive declares the connection dead, which fails the
    // export stream that this first flow opened.
    assert!(tokio::task::block_in_place(|| common::nodes::tcp(client_ns, WEB1)).is_err());
    let start = Instant::now();
    loop {
        let s = tokio::task::block_in_place(|| node.status());
        if flows(&s, "streams_failed") > flows(&before, "streams_failed") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the export noticed the outage: {s}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for _ in 0..20 {
        assert!(tokio::task::block_in_place(|| common::nodes::tcp(client_ns, WEB1)).is_err());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    node.ns.ip(&["link", "set", "ul0", "up"]).expect("link up");
    // Back: the 5 newest flows go out, and the (at least 15) evicted ones as `lost`.
    let start = Instant::now();
    loop {
        let s = tokio::task::block_in_place(|| node.status());
        let lost = flows(&s, "lost_reported") - flows(&before, "lost_reported");
        if lost >= 15 && flows(&s, "flows_acked") > flows(&before, "flows_acked") {
            assert!(flows(&s, "streams_failed") > 0, "{s}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(45),
            "lost flows reported after the outage: {s} (before: {before})\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One trace from a REST request to the BPF map writes on every node: the policy's
/// `traceparent` is joined by the HTTP span, rides the change's NOTIFY to the pushes, the
/// deltas to both agents (real processes exporting to the same OTLP receiver), whose
/// `agent.apply` spans program the datapath, and comes back with their acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_is_one_trace_from_the_request_to_the_apply_on_every_node() {
    if !bpf_available("a_policy_change_is_one_trace_from_the_request_to_the_apply_on_every_node") {
        return;
    }
    let receiver = weft_telemetry::receiver::Receiver::default();
    let local = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = local.local_addr().expect("addr");
    let svc = receiver.service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(local)),
    );
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

    let mut env = Env::new(2).await;
    // The agents reach the receiver on the underlay, and export without delay.
    let underlay = env.underlay.listen();
    underlay.set_nonblocking(true).expect("non-blocking");
    let on_underlay = underlay.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(receiver.service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                tokio::net::TcpListener::from_std(underlay).expect("listener"),
            )),
    );
    for node in &mut env.nodes {
        node.run_env = vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{on_underlay}"),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ];
    }
    env.start(0, true).await;
    env.start(1, true).await;
    let (a, b) = (env.nodes[0].pod(), env.nodes[1].pod());
    env.nodes[0].add("web-1", a, "10.0.1.2", "app=web");
    env.nodes[1].add("web-2", b, "10.0.2.2", "app=web");
    env.until_rest_endpoints(&["web-1", "web-2"]).await;
    // Let the endpoint reports' changes reach both agents first: a change still on its way
    // would carry the policy's revision to an agent under its own, untraced push.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/tenants/acme/policies")
        .header("authorization", format!("Bearer {}", env.owner))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .body(axum::body::Body::from(
            json!({"name": "web-deny-all", "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}})
            .to_string(),
        ))
        .expect("request");
    let resp = tower::ServiceExt::oneshot(env.cp.app.clone(), req)
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::CREATED);
    // The request's span ends with its body.
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("body");

    let start = Instant::now();
    loop {
        let _ = provider.force_flush();
        let spans = receiver.trace(trace_id);
        let count = |service: &str, name: &str| {
            spans
                .iter()
                .filter(|s| s.service == service && s.name == name)
                .count()
        };
        if count("node-agent", "agent.apply") >= 2 && count("control-api", "agent.ack") >= 2 {
            assert!(count("control-api", "http") == 1, "{spans:?}");
            assert!(count("control-api", "desired_state.push") >= 2, "{spans:?}");
            // Each apply hangs off a push, each ack off an apply.
            let ids = |name: &str| -> Vec<String> {
                spans
                    .iter()
                    .filter(|s| s.name == name)
                    .map(|s| s.span_id.clone())
                    .collect()
            };
            let (pushes, applies) = (ids("desired_state.push"), ids("agent.apply"));
            for s in spans.iter().filter(|s| s.name == "agent.apply") {
                assert!(
                    pushes.contains(&s.parent_span_id),
                    "apply's parent is a push: {spans:?}"
                );
            }
            for s in spans.iter().filter(|s| s.name == "agent.ack") {
                assert!(
                    applies.contains(&s.parent_span_id),
                    "ack's parent is an apply: {spans:?}"
                );
            }
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the trace reached both agents: {spans:?}\nnode-1: {}\nnode-2: {}",
            env.nodes[0].log(),
            env.nodes[1].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Services made over REST with one backend on each node, one with IPv4 addresses and one
/// with IPv6: clients on either node reach both backends through each VIP (socket LB in
/// each node's cgroup; the backend on the other node through the tunnel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_vips_of_both_families_balance_across_backends_on_both_nodes() {
    if !bpf_available("service_vips_of_both_families_balance_across_backends_on_both_nodes") {
        return;
    }
    let mut env = Env::new(2).await;
    env.dual_stack();
    // Each node's socket LB serves the processes of its own cgroup (never the root one).
    let cgroups: Vec<Cgroup> = (0..2)
        .map(|_| Cgroup::create("ee").expect("cgroup"))
        .collect();
    for (node, cg) in env.nodes.iter_mut().zip(&cgroups) {
        node.run_args
            .extend(["--cgroup".into(), cg.path().to_str().expect("path").into()]);
    }
    env.start(0, true).await;
    env.start(1, true).await;
    let (c1, w1) = (env.nodes[0].pod(), env.nodes[0].pod());
    let (c2, w2) = (env.nodes[1].pod(), env.nodes[1].pod());
    env.nodes[0].add("client-1", c1, "10.0.1.1,fd00:10:1::1", "app=client");
    env.nodes[0].add("web-1", w1, "10.0.1.2,fd00:10:1::2", "app=web");
    env.nodes[1].add("client-2", c2, "10.0.2.1,fd00:10:2::1", "app=client");
    env.nodes[1].add("web-2", w2, "10.0.2.2,fd00:10:2::2", "app=web");
    env.nodes[0].serve(w1, "web-1");
    env.nodes[1].serve(w2, "web-2");
    env.until_rest_endpoints(&["client-1", "client-2", "web-1", "web-2"])
        .await;

    for (name, vip, b1, b2) in [
        ("web", "10.96.0.10", "10.0.1.2", "10.0.2.2"),
        ("web6", "fd00:96::10", "fd00:10:1::2", "fd00:10:2::2"),
    ] {
        let r = env
            .cp
            .call(
                "POST",
                "/v1/tenants/acme/clusters/prod/services",
                &env.owner,
                Some(json!({
                    "name": name, "algorithm": "random",
                    "frontends": [{"vip": vip, "port": 80, "protocol": "TCP"}],
                    "backends": [{"address": b1, "port": 8080}, {"address": b2, "port": 8080}]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }

    for vip in ["10.96.0.10:80", "[fd00:96::10]:80"] {
        let target: SocketAddr = vip.parse().expect("VIP");
        for (node, pod, cg) in [(0, c1, &cgroups[0]), (1, c2, &cgroups[1])] {
            let start = Instant::now();
            loop {
                let report = tokio::task::block_in_place(|| {
                    tools::spawn_client(
                        &common::nodes::agent_bin(),
                        Some(cg.path()),
                        &env.nodes[node].pods[pod],
                        &tools::ClientOptions {
                            target,
                            udp: false,
                            count: 30,
                            duration: None,
                            verbose: true,
                            parallel: 1,
                        },
                    )
                })
                .expect("client ran");
                let answers: std::collections::BTreeSet<&str> =
                    report.answers.iter().map(|(a, _)| a.as_str()).collect();
                if report.errors.is_empty() && answers == ["web-1", "web-2"].into() {
                    // The client saw the VIP, not the backend (getpeername is translated back).
                    assert!(
                        report.answers.iter().all(|(_, peer)| peer == vip),
                        "{:?}",
                        report.answers
                    );
                    break;
                }
                assert!(
                    start.elapsed() < WITHIN,
                    "node-{}: {vip} answers {answers:?}, errors {:?}\n{}",
                    node + 1,
                    report.errors,
                    env.nodes[node].log()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// control-api crashes (SIGKILL) and comes back: enforcement never stops meanwhile, a
/// policy change made while it was down (through another replica, on the same database)
/// reaches both agents once they have reconnected, and both report it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reconnect_to_a_restarted_control_api_and_converge() {
    if !bpf_available("agents_reconnect_to_a_restarted_control_api_and_converge") {
        return;
    }
    let mut env = Env::with_api_process(2).await;
    env.start(0, true).await;
    env.start(1, true).await;
    let (web1, client2) = (env.nodes[0].pod(), env.nodes[1].pod());
    env.nodes[0].add("web-1", web1, "10.0.1.2", "app=web");
    env.nodes[1].add("client-2", client2, "10.0.2.1", "app=client");
    env.nodes[0].serve(web1, "web-1");
    env.until_rest_endpoints(&["client-2", "web-1"]).await;
    until_assigned(&env.nodes[0], 1).await;
    until_assigned(&env.nodes[1], 1).await;
    env.policy("web-from-client", "client").await;
    let client = env.nodes[1].pods[client2].path();
    assert!(until_tcp(&client, WEB1, true).await, "allowed across nodes");

    let api = env.api.as_mut().expect("control-api process");
    api.kill();
    // While it is down: enforcement goes on, and the policy changes through another replica.
    assert!(
        tokio::task::block_in_place(|| common::nodes::tcp(&client, WEB1)).is_ok(),
        "allowed traffic keeps flowing without the control plane"
    );
    env.delete_policy("web-from-client").await;
    env.policy("web-from-other", "other").await;
    let wanted = sqlx::query_scalar::<_, i64>("SELECT revision FROM desired_state")
        .fetch_one(&env.cp.state.pool)
        .await
        .expect("revision");

    tokio::task::block_in_place(|| env.api.as_mut().expect("control-api process").start());
    assert!(
        until_tcp(&client, WEB1, false).await,
        "the change made while control-api was down is enforced after it returns"
    );
    for name in ["node-1", "node-2"] {
        env.until_applied(name, wanted, WITHIN * 3).await;
    }
}
