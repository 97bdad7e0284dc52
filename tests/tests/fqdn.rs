//! DNS rules and `toFQDNs` on real packets: a client pod, and in the "world" (the underlay
//! namespace) a resolver and echo servers. The pod may ask for `*.allowed.test` and
//! `*.denied.test` (others are REFUSED by the agent's DNS proxy), and may connect to what
//! `*.allowed.test` resolved to, right after the answer; not to what `*.denied.test`
//! resolved to, nor to an address it never resolved. Learned addresses expire after their
//! TTL (raised to the agent's floor) plus grace, and survive an agent restart.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::bpf_available;
use common::env::{until_assigned, Env};
use common::nodes::{tcp, until_tcp, WITHIN};
use node_agent::dns::message::{Answer, RCODE_REFUSED};
use node_agent::tools::dns::{query, Records};
use node_agent::tools::Server;
use serde_json::json;

const RESOLVER: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 53);
const A: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 200);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 201);
const LONG: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 202);

fn echo(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, 8080)
}

/// A query from the pod at `from` to the world's resolver.
fn ask(from: &Path, name: &str, tcp: bool) -> std::io::Result<Answer> {
    let (from, name) = (from.to_path_buf(), name.to_string());
    std::thread::spawn(move || {
        let _in = node_agent::netns::enter_netns(&from)?;
        query(
            SocketAddr::V4(SocketAddrV4::new(RESOLVER, 53)),
            &name,
            tcp,
            Duration::from_secs(2),
        )
    })
    .join()
    .expect("client thread")
}

/// Waits until the DNS proxy answers for `name` (the policy is in place), over UDP.
async fn until_answer(env: &Env, from: &Path, name: &str) -> Answer {
    let start = Instant::now();
    loop {
        let got = tokio::task::block_in_place(|| ask(from, name, false));
        match got {
            Ok(a) if a.rcode != RCODE_REFUSED || name.ends_with(".refused.test") => return a,
            other => assert!(
                start.elapsed() < WITHIN,
                "{name}: {other:?}\n{}",
                env.nodes[0].log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn addresses(a: &Answer) -> Vec<IpAddr> {
    a.addresses.iter().map(|x| x.ip).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fqdn_rules_allow_what_allowed_names_resolved_to_and_nothing_else() {
    if !bpf_available("fqdn_rules_allow_what_allowed_names_resolved_to_and_nothing_else") {
        return;
    }
    let mut env = Env::new(1).await;
    // Short floors, so expiry is seen within the test.
    env.nodes[0]
        .run_args
        .extend(["--fqdn-min-ttl-secs", "1", "--fqdn-grace-secs", "1"].map(String::from));
    env.start(0, true).await;
    let client = env.nodes[0].pod();
    env.nodes[0].add("client", client, "10.0.1.1/32", "app=client");
    until_assigned(&env.nodes[0], 1).await;
    // The world: a resolver and echo servers on the underlay, which routes the pod CIDR
    // back through the node.
    let world = &env.underlay.ns;
    for ip in [RESOLVER, A, B, LONG] {
        world
            .ip(&["addr", "add", &format!("{ip}/32"), "dev", "br0"])
            .expect("world address");
    }
    world
        .ip(&["route", "add", "10.0.1.0/24", "via", "192.168.100.1"])
        .expect("route to the pods");
    let records: Records = BTreeMap::from([
        ("a.allowed.test".to_string(), (vec![IpAddr::V4(A)], 2)),
        ("b.denied.test".to_string(), (vec![IpAddr::V4(B)], 300)),
        (
            "long.allowed.test".to_string(),
            (vec![IpAddr::V4(LONG)], 300),
        ),
        ("c.refused.test".to_string(), (vec![IpAddr::V4(A)], 300)),
    ]);
    let _dns = Server::dns(
        world,
        SocketAddr::V4(SocketAddrV4::new(RESOLVER, 53)),
        records,
    )
    .expect("resolver");
    let _echo = Server::tcp(world, 8080, "world").expect("echo server");

    let r = env
        .cp
        .call(
            "POST",
            "/v1/tenants/acme/policies",
            &env.owner,
            Some(json!({"name": "client-fqdn", "spec": {
                "endpointSelector": {"matchLabels": {"app": "client"}},
                "egress": [
                    {"toCIDR": [format!("{RESOLVER}/32")],
                     "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}],
                                  "rules": {"dns": [{"matchPattern": "*.allowed.test"},
                                                    {"matchPattern": "*.denied.test"}]}}]},
                    {"toFQDNs": [{"matchPattern": "*.allowed.test"}],
                     "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body["status"]["conditions"],
        json!([]),
        "DNS rules and toFQDNs are enforced: no NotEnforced condition"
    );
    let pod = env.nodes[0].pods[client].path();
    // Default deny on egress: nothing to the world yet.
    assert!(
        until_tcp(&pod, echo(A), false).await,
        "{}",
        env.nodes[0].log()
    );

    // A name the DNS rules do not allow: REFUSED by the proxy, never asked upstream.
    let refused = until_answer(&env, &pod, "c.refused.test").await;
    assert_eq!(refused.rcode, RCODE_REFUSED, "{refused:?}");
    // An allowed name: the answer, and the connection right after it is allowed (the
    // address was written before the answer was released).
    let a = until_answer(&env, &pod, "a.allowed.test").await;
    assert_eq!(addresses(&a), vec![IpAddr::V4(A)]);
    let got = tokio::task::block_in_place(|| tcp(&pod, echo(A)));
    assert_eq!(got.ok().as_deref(), Some("world"), "{}", env.nodes[0].log());
    // A name DNS rules allow but no toFQDNs selects: resolved, not reachable; nor is an
    // address the pod never resolved.
    let b = until_answer(&env, &pod, "b.denied.test").await;
    assert_eq!(addresses(&b), vec![IpAddr::V4(B)]);
    for target in [echo(B), echo(LONG)] {
        let got = tokio::task::block_in_place(|| tcp(&pod, target));
        assert!(got.is_err(), "{target}: {got:?}");
    }
    // DNS over TCP goes through the proxy too.
    let long =
        tokio::task::block_in_place(|| ask(&pod, "long.allowed.test", true)).expect("DNS over TCP");
    assert_eq!(addresses(&long), vec![IpAddr::V4(LONG)]);
    let got = tokio::task::block_in_place(|| tcp(&pod, echo(LONG)));
    assert!(
        got.is_ok(),
        "after a TCP lookup: {got:?}\n{}",
        env.nodes[0].log()
    );

    // Every query is an L7 flow record, filterable by its name (as `hubble observe
    // --dns-query`).
    for (query, verdict, rcode, ips) in [
        ("c.refused.test.", "DROPPED", 5, json!([])),
        ("a.allowed.test.", "FORWARDED", 0, json!([A.to_string()])),
    ] {
        let path = format!(
            "/v1/tenants/acme/flows?type=L7&dns_query=%5E{}%24&last=1",
            query.replace('.', "%5C.")
        );
        let start = Instant::now();
        loop {
            let r = env.cp.call("GET", &path, &env.owner, None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            if let Some(f) = r.body["items"].as_array().and_then(|a| a.first()) {
                assert_eq!(f["type"], "L7", "{f}");
                assert_eq!(f["verdict"], verdict, "{f}");
                assert_eq!(f["observation_point"], "l7-proxy", "{f}");
                assert_eq!(f["source"]["endpoint"], "client", "{f}");
                assert_eq!(f["destination"]["port"], 53, "{f}");
                let dns = &f["l7"]["dns"];
                assert_eq!(dns["query"], query, "{f}");
                assert_eq!(dns["qtypes"], json!(["A"]), "{f}");
                assert_eq!(dns["rcode"], rcode, "{f}");
                assert_eq!(dns["ips"], ips, "{f}");
                break;
            }
            assert!(start.elapsed() < WITHIN, "no DNS record at {path}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The control plane shows what the endpoint resolved, from those records.
    let r = env
        .cp
        .call(
            "GET",
            "/v1/tenants/acme/endpoints?labels=app%3Dclient",
            &env.owner,
            None,
        )
        .await;
    let id = r.body["items"][0]["id"]
        .as_str()
        .expect("client endpoint")
        .to_string();
    let path = format!("/v1/tenants/acme/endpoints/{id}/fqdn-cache");
    let start = Instant::now();
    loop {
        let r = env.cp.call("GET", &path, &env.owner, None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let names: Vec<&str> = r.body["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["name"].as_str()).collect())
            .unwrap_or_default();
        if names.contains(&"long.allowed.test") && names.contains(&"b.denied.test") {
            let long = r.body["items"]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == "long.allowed.test"))
                .expect("long.allowed.test");
            assert_eq!(long["ips"][0]["ip"], LONG.to_string(), "{}", r.body);
            assert!(!names.contains(&"c.refused.test"), "{}", r.body);
            break;
        }
        assert!(start.elapsed() < WITHIN, "{path}: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = env
        .cp
        .call(
            "GET",
            "/v1/tenants/acme/endpoints/00000000-0000-0000-0000-000000000000/fqdn-cache",
            &env.owner,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

    // a.allowed.test's TTL (2 s) and grace (1 s) pass: its address is no longer allowed.
    assert!(
        until_tcp(&pod, echo(A), false).await,
        "{}",
        env.nodes[0].log()
    );
    // The agent restarts: what it learned (long.allowed.test, TTL 300 s) stays allowed.
    env.nodes[0].kill_agent();
    env.start(0, false).await;
    let got = tokio::task::block_in_place(|| tcp(&pod, echo(LONG)));
    assert!(
        got.is_ok(),
        "after a restart: {got:?}\n{}",
        env.nodes[0].log()
    );
    assert!(until_tcp(&pod, echo(B), false).await);
}
