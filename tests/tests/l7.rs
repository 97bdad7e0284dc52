//! HTTP rules enforced by the agents' L7 proxies on real connections: two nodes, a client
//! pod and web pods serving HTTP; an ingress policy with HTTP rules is checked per request
//! on the same node and across nodes (allowed requests reach the server, denied ones get
//! `403 Access denied`, on one keep-alive connection too), and an egress policy with HTTP
//! rules on the client narrows it further.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::bpf_available;
use common::env::{until_assigned, Env};
use common::nodes::WITHIN;
use node_agent::tools::http::{h2_exchange, http_exchange, request, HttpReply};
use node_agent::tools::Server;
use serde_json::json;

const WEB1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 8080);
const WEB2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 1), 8080);

/// The requests sent on one connection from the pod at `from`, and the replies.
fn exchange(
    from: &Path,
    target: SocketAddrV4,
    requests: &[String],
) -> std::io::Result<Vec<HttpReply>> {
    let (from, requests) = (from.to_path_buf(), requests.to_vec());
    std::thread::spawn(move || {
        let _in = node_agent::netns::enter_netns(&from)?;
        http_exchange(SocketAddr::V4(target), &requests, Duration::from_secs(2))
    })
    .join()
    .expect("client thread")
}

fn ok(name: &str, method: &str, path: &str) -> HttpReply {
    HttpReply {
        status: 200,
        body: format!("{name} {method} {path}\n"),
    }
}

fn denied() -> HttpReply {
    HttpReply {
        status: 403,
        body: "Access denied\r\n".into(),
    }
}

/// `node-agent bpf <args>` on node `i`'s datapath (for failure messages).
fn bpf(env: &Env, i: usize, args: &[&str]) -> String {
    let out = std::process::Command::new(common::nodes::agent_bin())
        .arg("--pin-path")
        .arg(env.nodes[i].pins.path())
        .arg("bpf")
        .args(args)
        .output()
        .expect("node-agent bpf");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `POST …/policies`; the reply.
async fn create_policy(env: &Env, body: serde_json::Value) -> weft_testkit::server::Reply {
    env.cp
        .call("POST", "/v1/tenants/acme/policies", &env.owner, Some(body))
        .await
}

/// Waits until a GET of `path` from `from` to `target` answers `want`.
async fn until_reply(env: &Env, from: &Path, target: SocketAddrV4, path: &str, want: &HttpReply) {
    let start = Instant::now();
    loop {
        let got = tokio::task::block_in_place(|| {
            exchange(from, target, &[request("GET", path, &[], "")])
        });
        if matches!(&got, Ok(r) if r.first() == Some(want)) {
            return;
        }
        assert!(
            start.elapsed() < WITHIN,
            "GET {path} to {target}: {got:?}, want {want:?}\n{}\n{}\n{}",
            env.nodes[0].log(),
            env.nodes[1].log(),
            bpf(env, 0, &["metrics"]) + &bpf(env, 0, &["ct", "list"])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rules_are_enforced_per_request_on_both_nodes() {
    if !bpf_available("http_rules_are_enforced_per_request_on_both_nodes") {
        return;
    }
    let mut env = Env::new(2).await;
    env.start(0, true).await;
    env.start(1, true).await;
    let (client, web1, other) = (env.nodes[0].pod(), env.nodes[0].pod(), env.nodes[0].pod());
    let web2 = env.nodes[1].pod();
    env.nodes[0].add("client", client, "10.0.1.1/32", "app=client");
    env.nodes[0].add("web-1", web1, "10.0.1.2/32", "app=web");
    env.nodes[0].add("other", other, "10.0.1.3/32", "app=other");
    env.nodes[1].add("web-2", web2, "10.0.2.1/32", "app=web");
    let srv1 = Server::http(&env.nodes[0].pods[web1], 8080, "web-1").expect("server");
    let srv2 = Server::http(&env.nodes[1].pods[web2], 8080, "web-2").expect("server");
    // What a gRPC server is on the wire: HTTP/2 with prior knowledge.
    let grpc = Server::h2(&env.nodes[0].pods[web1], 9090, "grpc-1").expect("h2 server");
    until_assigned(&env.nodes[0], 3).await;
    until_assigned(&env.nodes[1], 1).await;

    let r = create_policy(
        &env,
        json!({"name": "web-http", "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                             "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                                          "rules": {"http": [
                                              {"method": "GET", "path": "/public/.*"},
                                              {"method": "POST", "path": "/submit",
                                               "headers": ["X-Token: s3cret"]}]}},
                                         {"ports": [{"port": "9090", "protocol": "TCP"}],
                                          "rules": {"http": [
                                              {"method": "POST", "path": "/weft\\.Echo/Say"}]}}]}]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body["status"]["conditions"],
        json!([]),
        "HTTP rules are enforced: no NotEnforced condition"
    );

    let client_ns = env.nodes[0].pods[client].path();
    for (name, web) in [("web-1", WEB1), ("web-2", WEB2)] {
        // The policy is in place once a denied request gets the proxy's answer.
        until_reply(&env, &client_ns, web, "/private", &denied()).await;
        until_reply(
            &env,
            &client_ns,
            web,
            "/public/a",
            &ok(name, "GET", "/public/a"),
        )
        .await;
        let replies = tokio::task::block_in_place(|| {
            exchange(
                &client_ns,
                web,
                &[
                    request("GET", "/public/x", &[], ""),
                    request("GET", "/private", &[], ""),
                    request("DELETE", "/public/x", &[], ""),
                    request("POST", "/submit", &[("X-Token", "s3cret")], "data"),
                    request("POST", "/submit", &[("X-Token", "guess")], "data"),
                    request("GET", "/public/y?q=1", &[], ""),
                ],
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "exchange with {name}: {e}\n{}\n{}",
                env.nodes[0].log(),
                env.nodes[1].log()
            )
        });
        assert_eq!(
            replies,
            vec![
                ok(name, "GET", "/public/x"),
                denied(),
                denied(),
                ok(name, "POST", "/submit"),
                denied(),
                ok(name, "GET", "/public/y?q=1"),
            ],
            "one keep-alive connection to {name}: each request judged on its own"
        );
    }
    // HTTP/2 (h2c, as gRPC): rules on the method and `:path`, per stream.
    let grpc_target = SocketAddr::V4(SocketAddrV4::new(*WEB1.ip(), 9090));
    let (ns, start) = (client_ns.clone(), Instant::now());
    loop {
        let ns = ns.clone();
        let replies = tokio::task::block_in_place(|| {
            std::thread::spawn(move || {
                let _in = node_agent::netns::enter_netns(&ns)?;
                h2_exchange(
                    grpc_target,
                    &[
                        ("POST", "/weft.Echo/Say"),
                        ("POST", "/weft.Echo/Shout"),
                        ("GET", "/weft.Echo/Say"),
                        ("POST", "/weft.Echo/Say"),
                    ],
                    Duration::from_secs(2),
                )
            })
            .join()
            .expect("h2 client thread")
        });
        let want = vec![
            ok("grpc-1", "POST", "/weft.Echo/Say"),
            denied(),
            denied(),
            ok("grpc-1", "POST", "/weft.Echo/Say"),
        ];
        if matches!(&replies, Ok(r) if *r == want) {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "h2c through the proxy: {replies:?}\n{}",
            env.nodes[0].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every request is an L7 flow record, stored and filterable as in `hubble observe`.
    for (node, web) in [("node-1", "web-1"), ("node-2", "web-2")] {
        let path = format!(
            "/v1/tenants/acme/flows?type=L7&node={node}&to_endpoint={web}&http_status=4%2B\
             &http_method=delete&http_path=%5E/public/&last=5"
        );
        let start = Instant::now();
        loop {
            let r = env.cp.call("GET", &path, &env.owner, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let items = r.body["items"].as_array().cloned().unwrap_or_default();
            if let Some(f) = items.first() {
                assert_eq!(f["type"], "L7", "{f}");
                assert_eq!(f["verdict"], "DROPPED", "{f}");
                assert_eq!(f["drop_reason"], "POLICY_DENIED", "{f}");
                assert_eq!(f["observation_point"], "l7-proxy", "{f}");
                assert_eq!(f["direction"], "ingress", "{f}");
                assert_eq!(f["source"]["endpoint"], "client", "{f}");
                assert_eq!(f["source"]["labels"]["app"], "client", "{f}");
                let http = &f["l7"]["http"];
                assert_eq!(http["method"], "DELETE", "{f}");
                assert_eq!(http["url"], "http://weft.test/public/x", "{f}");
                assert_eq!(http["protocol"], "HTTP/1.1", "{f}");
                assert_eq!(http["code"], 403, "{f}");
                break;
            }
            assert!(start.elapsed() < WITHIN, "{node}: no L7 record at {path}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = env
            .cp
            .call(
                "GET",
                &format!("/v1/tenants/acme/flows?type=l7&node={node}&http_status=200&last=50"),
                &env.owner,
                None,
            )
            .await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        assert!(
            items.iter().any(|f| f["verdict"] == "FORWARDED"
                && f["l7"]["http"]["url"] == "http://weft.test/public/y?q=1"
                && f["l7"]["http"]["latency_ms"]
                    .as_f64()
                    .is_some_and(|l| l > 0.0)),
            "{node}: forwarded requests with their latency: {}",
            r.body
        );
        // The header a rule names is in the records, its value (a token the rule compares)
        // never: allowed or denied, it reads [redacted]; requests without it show none.
        let r = env
            .cp
            .call(
                "GET",
                &format!("/v1/tenants/acme/flows?type=l7&node={node}&http_path=%5E/submit&last=50"),
                &env.owner,
                None,
            )
            .await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        let verdicts: Vec<&str> = items.iter().filter_map(|f| f["verdict"].as_str()).collect();
        assert!(
            verdicts.contains(&"FORWARDED") && verdicts.contains(&"DROPPED"),
            "{node}: {}",
            r.body
        );
        for f in &items {
            assert_eq!(
                f["l7"]["http"]["headers"],
                json!([{"key": "x-token", "value": "[redacted]"}]),
                "{f}"
            );
        }
        assert!(
            !r.body.to_string().contains("s3cret") && !r.body.to_string().contains("guess"),
            "{}",
            r.body
        );
    }

    // A peer the rule does not name is refused at L3/L4 (no proxy involved).
    let other_ns = env.nodes[0].pods[other].path();
    let got = tokio::task::block_in_place(|| {
        exchange(&other_ns, WEB1, &[request("GET", "/public/a", &[], "")])
    });
    assert!(got.is_err(), "app=other must not connect: {got:?}");

    // Egress HTTP rules on the client narrow what it may send, before the server's own.
    let r = create_policy(
        &env,
        json!({"name": "client-http", "spec": {
                "endpointSelector": {"matchLabels": {"app": "client"}},
                "egress": [{"toEndpoints": [{"matchLabels": {"app": "web"}}],
                            "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                                         "rules": {"http": [{"method": "GET"}]}}]}]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (name, web) in [("web-1", WEB1), ("web-2", WEB2)] {
        let start = Instant::now();
        loop {
            let replies = tokio::task::block_in_place(|| {
                exchange(
                    &client_ns,
                    web,
                    &[
                        request("POST", "/submit", &[("X-Token", "s3cret")], "data"),
                        request("GET", "/public/z", &[], ""),
                        request("GET", "/private", &[], ""),
                    ],
                )
            });
            let want = vec![denied(), ok(name, "GET", "/public/z"), denied()];
            if matches!(&replies, Ok(r) if *r == want) {
                break;
            }
            assert!(
                start.elapsed() < WITHIN,
                "client egress to {name}: {replies:?}\n{}\n{}",
                env.nodes[0].log(),
                bpf(&env, 0, &["metrics"]) + &bpf(&env, 0, &["ct", "list"])
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // An agent restart keeps the rules enforced: the new run starts the listeners the
    // programmed entries point at (the resumed stream may bring no change to do it).
    env.nodes[0].kill_agent();
    env.start(0, false).await;
    until_reply(
        &env,
        &client_ns,
        WEB1,
        "/public/after-restart",
        &ok("web-1", "GET", "/public/after-restart"),
    )
    .await;
    until_reply(&env, &client_ns, WEB1, "/private", &denied()).await;

    // With no rule left that needs them, the agents stop their proxy listeners.
    env.delete_policy("web-http").await;
    env.delete_policy("client-http").await;
    let node_ns = env.nodes[0].ns.path().to_path_buf();
    let start = Instant::now();
    loop {
        let ns = node_ns.clone();
        let listening = tokio::task::block_in_place(|| {
            std::thread::spawn(move || {
                let _in = node_agent::netns::enter_netns(&ns).expect("node namespace");
                (15001..15004).any(|port| {
                    std::net::TcpStream::connect_timeout(
                        &SocketAddr::from(([127, 0, 0, 1], port)),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                })
            })
            .join()
            .expect("probe thread")
        });
        if !listening {
            break;
        }
        assert!(start.elapsed() < WITHIN, "proxy listeners still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((srv1, srv2, grpc));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rules_hold_over_ipv6_same_node_and_across_nodes() {
    if !bpf_available("http_rules_hold_over_ipv6_same_node_and_across_nodes") {
        return;
    }
    let mut env = Env::new(2).await;
    env.dual_stack();
    env.start(0, true).await;
    env.start(1, true).await;
    let (client, web1) = (env.nodes[0].pod(), env.nodes[0].pod());
    let web2 = env.nodes[1].pod();
    env.nodes[0].add("client", client, "10.0.1.1,fd00:10:1::1", "app=client");
    env.nodes[0].add("web-1", web1, "10.0.1.2,fd00:10:1::2", "app=web");
    env.nodes[1].add("web-2", web2, "10.0.2.1,fd00:10:2::1", "app=web");
    let srv1 = Server::http(&env.nodes[0].pods[web1], 8080, "web-1").expect("server");
    let srv2 = Server::http(&env.nodes[1].pods[web2], 8080, "web-2").expect("server");
    env.until_rest_endpoints(&["client", "web-1", "web-2"])
        .await;
    let r = create_policy(
        &env,
        json!({"name": "web-http", "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
                         "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}],
                                      "rules": {"http": [{"method": "GET", "path": "/public/.*"}]}}]}]}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let client_ns = env.nodes[0].pods[client].path();
    for (name, ip) in [("web-1", "fd00:10:1::2"), ("web-2", "fd00:10:2::1")] {
        let target: SocketAddr = format!("[{ip}]:8080").parse().expect("address");
        let start = Instant::now();
        loop {
            let ns = client_ns.clone();
            let replies = tokio::task::block_in_place(|| {
                std::thread::spawn(move || {
                    let _in = node_agent::netns::enter_netns(&ns)?;
                    http_exchange(
                        target,
                        &[
                            request("GET", "/private", &[], ""),
                            request("GET", "/public/a", &[], ""),
                        ],
                        Duration::from_secs(2),
                    )
                })
                .join()
                .expect("client thread")
            });
            if matches!(&replies, Ok(r) if *r == [denied(), ok(name, "GET", "/public/a")]) {
                break;
            }
            assert!(
                start.elapsed() < WITHIN,
                "IPv6 to {name}: {replies:?}\n{}\n{}",
                env.nodes[0].log(),
                env.nodes[1].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop((srv1, srv2));
}
