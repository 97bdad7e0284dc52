//! Nodes route to each other's pods themselves: the underlay between the node namespaces
//! is one L2 segment that carries node addresses, and nothing routes a pod CIDR but the
//! agents. Tunnel mode (the default) first, then the cluster switched to native routing,
//! then a node deleted: real TCP between pods on the two nodes throughout, a bulk transfer
//! at the computed MTU in each mode, and a route the agent did not make left alone.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::bpf_available;
use common::env::Env;
use common::nodes::{until_tcp, WITHIN};
use node_agent::netns::NetNs;
use node_agent::tools;
use serde_json::json;

const A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), 8080);
const B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 5), 8080);
/// Bytes of the bulk transfer: thousands of full-size segments.
const BULK: usize = 16 << 20;

/// Sends [`BULK`] bytes from the pod at `from` to a sink at `to`; returns what the sink
/// says it received.
fn bulk(from: &Path, sink_ns: &NetNs, to: impl Into<SocketAddr>) -> usize {
    let to = to.into();
    let server = tools::sink(sink_ns, to).expect("sink");
    let answered = tools::send_to_sink(from, to, |sent| sent < BULK as u64).expect("bulk transfer");
    let received = server.join().expect("sink").expect("sink result").bytes;
    assert_eq!(answered, received);
    received as usize
}

fn mtu(ns: &NetNs, ifname: &str) -> String {
    let out = ns.ip(&["link", "show", ifname]).expect("link");
    out.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Waits until `node`'s route to `cidr` shows every one of `want` (none: no route).
async fn until_route(env: &Env, node: usize, cidr: &str, want: &[&str]) {
    let start = Instant::now();
    loop {
        let family = if cidr.contains(':') { "-6" } else { "-4" };
        let shown = env.nodes[node]
            .ns
            .ip(&[family, "route", "show", cidr])
            .unwrap_or_default();
        let ok = if want.is_empty() {
            shown.trim().is_empty()
        } else {
            want.iter().all(|w| shown.contains(w))
        };
        if ok {
            return;
        }
        assert!(
            start.elapsed() < WITHIN,
            "node {node}: route to {cidr} is {shown:?}, wanted {want:?}\n{}",
            env.nodes[node].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Switches cluster `prod` to routing `mode` over REST.
async fn set_routing(env: &Env, mode: &str) {
    let r = env
        .cp
        .call(
            "PATCH",
            "/v1/tenants/acme/clusters/prod",
            &env.owner,
            Some(json!({"routing": {"mode": mode}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["routing"], json!({ "mode": mode }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_two_nodes_talk_through_the_tunnel_then_natively_and_a_deleted_node_is_unrouted() {
    if !bpf_available(
        "pods_on_two_nodes_talk_through_the_tunnel_then_natively_and_a_deleted_node_is_unrouted",
    ) {
        return;
    }
    let mut env = Env::new(2).await;
    // Someone else's route on node-1: never touched by the agent.
    env.nodes[0]
        .ns
        .ip(&["route", "add", "10.0.99.0/24", "via", "192.168.100.254"])
        .expect("foreign route");
    env.start(0, true).await;
    env.start(1, true).await;
    let (a, b) = (env.nodes[0].pod(), env.nodes[1].pod());
    env.nodes[0].add("a", a, "10.0.1.5/32", "app=a");
    env.nodes[1].add("b", b, "10.0.2.5/32", "app=b");
    env.nodes[0].serve(a, "a");
    env.nodes[1].serve(b, "b");
    let (a_ns, b_ns) = (env.nodes[0].pods[a].path(), env.nodes[1].pods[b].path());

    // Tunnel, the default: encapsulated to the other node's address, pods at 1500 - 50.
    until_route(
        &env,
        0,
        "10.0.2.0/24",
        &[
            "encap ip",
            "dst 192.168.100.2",
            "dev weft_vxlan",
            "proto 87",
        ],
    )
    .await;
    until_route(
        &env,
        1,
        "10.0.1.0/24",
        &[
            "encap ip",
            "dst 192.168.100.1",
            "dev weft_vxlan",
            "proto 87",
        ],
    )
    .await;
    assert!(until_tcp(&a_ns, B, true).await, "a -> b through the tunnel");
    assert!(until_tcp(&b_ns, A, true).await, "b -> a through the tunnel");
    assert_eq!(mtu(&env.nodes[0].ns, "weft_vxlan"), "1450");
    assert_eq!(mtu(&env.nodes[0].pods[a], "eth0"), "1450");
    assert_eq!(mtu(&env.nodes[1].pods[b], "eth0"), "1450");
    let sink_addr = SocketAddrV4::new(*B.ip(), 9000);
    let received = tokio::task::block_in_place(|| bulk(&a_ns, &env.nodes[1].pods[b], sink_addr));
    assert_eq!(received, BULK, "every byte across the tunnel");

    // Native: a route per pod CIDR via the node's address, no tunnel, full MTU.
    set_routing(&env, "native").await;
    until_route(
        &env,
        0,
        "10.0.2.0/24",
        &["via 192.168.100.2 dev ul0", "proto 87"],
    )
    .await;
    until_route(
        &env,
        1,
        "10.0.1.0/24",
        &["via 192.168.100.1 dev ul0", "proto 87"],
    )
    .await;
    assert!(
        !env.nodes[0].has_link("weft_vxlan"),
        "the tunnel device is gone"
    );
    assert!(until_tcp(&a_ns, B, true).await, "a -> b natively");
    assert!(until_tcp(&b_ns, A, true).await, "b -> a natively");
    assert_eq!(mtu(&env.nodes[0].pods[a], "eth0"), "1500");
    let received = tokio::task::block_in_place(|| {
        bulk(
            &b_ns,
            &env.nodes[0].pods[a],
            SocketAddrV4::new(*A.ip(), 9000),
        )
    });
    assert_eq!(received, BULK, "every byte natively");

    // Node-2 deleted: node-1 no longer routes its pod CIDR; the foreign route stayed.
    let r = env
        .cp
        .call(
            "DELETE",
            "/v1/tenants/acme/clusters/prod/nodes/node-2",
            &env.owner,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    until_route(&env, 0, "10.0.2.0/24", &[]).await;
    until_route(&env, 0, "10.0.99.0/24", &["via 192.168.100.254"]).await;
}

/// Identity on the wire: node-1's agent is frozen (its maps keep what they had), a new
/// client pod starts on node-2, and its first connection to node-1's web pod is judged by
/// the identity its packets carry in the VNI — node-1's ipcache has never heard of its
/// address. A pod whose identity the policy does not admit stays denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_on_another_node_is_judged_by_the_identity_it_carries_in_the_tunnel() {
    if !bpf_available(
        "a_new_pod_on_another_node_is_judged_by_the_identity_it_carries_in_the_tunnel",
    ) {
        return;
    }
    let mut env = Env::new(2).await;
    env.start(0, true).await;
    env.start(1, true).await;
    let web = env.nodes[0].pod();
    env.nodes[0].add("web", web, "10.0.1.5/32", "app=web");
    env.nodes[0].serve(web, "web");
    let (c1, c2, other) = (env.nodes[1].pod(), env.nodes[1].pod(), env.nodes[1].pod());
    env.nodes[1].add("client-1", c1, "10.0.2.5/32", "app=client");
    env.nodes[1].add("other", other, "10.0.2.7/32", "app=other");
    env.policy("web-from-client", "client").await;
    let c1_ns = env.nodes[1].pods[c1].path();
    assert!(until_tcp(&c1_ns, A, true).await, "client-1 -> web admitted");
    let other_ns = env.nodes[1].pods[other].path();
    assert!(until_tcp(&other_ns, A, false).await, "other -> web denied");

    // Node-1's agent frozen: nothing new reaches its maps from here on.
    let frozen = env.nodes[0].agent.as_ref().expect("agent").id() as i32;
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(frozen, libc::SIGSTOP) }, 0);
    env.nodes[1].add("client-2", c2, "10.0.2.6/32", "app=client");
    common::env::until_assigned(&env.nodes[1], 3).await;
    let c2_ns = env.nodes[1].pods[c2].path();
    let first = tokio::task::block_in_place(|| common::nodes::tcp(&c2_ns, A));
    // SAFETY: as above.
    unsafe { libc::kill(frozen, libc::SIGCONT) };
    assert_eq!(
        first
            .expect("client-2 -> web, by the identity it carries")
            .trim(),
        "web"
    );
    assert!(
        until_tcp(&other_ns, A, false).await,
        "other -> web still denied"
    );
}

/// A node joining and leaving while pods on two other nodes talk: its routes appear on
/// every node and its pod is reachable, then they go with it; the running connections
/// between the other two nodes never miss an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_leaves_while_traffic_runs_between_the_others() {
    if !bpf_available("a_node_joins_and_leaves_while_traffic_runs_between_the_others") {
        return;
    }
    let mut env = Env::new(3).await;
    env.start(0, true).await;
    env.start(1, true).await;
    let (a, b) = (env.nodes[0].pod(), env.nodes[1].pod());
    env.nodes[0].add("a", a, "10.0.1.5/32", "app=a");
    env.nodes[1].add("b", b, "10.0.2.5/32", "app=b");
    env.nodes[1].serve(b, "b");
    let a_ns = env.nodes[0].pods[a].path();
    assert!(until_tcp(&a_ns, B, true).await, "a -> b");

    // Steady traffic a -> b for the rest of the test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loop_ns = a_ns.clone();
    let stop2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            // A connection may wait for a retransmitted SYN on a loaded machine; one that
            // fails outright (refused, or nothing within 3 s) is what must not happen.
            let attempt = common::nodes::tcp_within(&loop_ns, B, Duration::from_secs(3));
            match attempt {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failed)
    });

    env.start(2, true).await;
    let c = env.nodes[2].pod();
    env.nodes[2].add("c", c, "10.0.3.5/32", "app=c");
    env.nodes[2].serve(c, "c");
    for node in [0, 1] {
        until_route(
            &env,
            node,
            "10.0.3.0/24",
            &["dst 192.168.100.3", "dev weft_vxlan"],
        )
        .await;
    }
    let c_addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, 5), 8080);
    assert!(
        until_tcp(&a_ns, c_addr, true).await,
        "a -> c on the new node"
    );

    let r = env
        .cp
        .call(
            "DELETE",
            "/v1/tenants/acme/clusters/prod/nodes/node-3",
            &env.owner,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    for node in [0, 1] {
        until_route(&env, node, "10.0.3.0/24", &[]).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.join().expect("traffic thread");
    assert!(ok > 20, "the loop ran: {ok}");
    assert!(
        failed.is_empty(),
        "a -> b missed {} of {} while node-3 came and went: {failed:?}",
        failed.len(),
        ok as usize + failed.len()
    );
}

/// Dual stack: nodes with an IPv6 address and an IPv6 pod CIDR as well, pods with both
/// families; IPv6 between pods on the two nodes through the tunnel (IPv6 inside IPv4 VXLAN,
/// a link-local next hop per node) and then natively (via the nodes' IPv6 addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_pods_on_two_nodes_talk_through_the_tunnel_and_natively() {
    if !bpf_available("ipv6_pods_on_two_nodes_talk_through_the_tunnel_and_natively") {
        return;
    }
    let mut env = Env::new(2).await;
    env.dual_stack();
    env.start(0, true).await;
    env.start(1, true).await;
    let (a, b) = (env.nodes[0].pod(), env.nodes[1].pod());
    let out = env.nodes[0].add("a", a, "10.0.1.5/32,fd00:10:1::5/128", "app=a");
    assert!(out.contains("10.0.1.5/32,fd00:10:1::5/128"), "{out}");
    env.nodes[1].add("b", b, "10.0.2.5/32,fd00:10:2::5/128", "app=b");
    let a_ns = env.nodes[0].pods[a].path();
    let b6: SocketAddr = "[fd00:10:2::5]:9000".parse().expect("address");

    until_route(
        &env,
        0,
        "fd00:10:2::/64",
        &[
            "encap ip",
            "dst 192.168.100.2",
            "via fe80::a57:c0a8:6402 dev weft_vxlan",
            "proto 87",
        ],
    )
    .await;
    let received = tokio::task::block_in_place(|| bulk(&a_ns, &env.nodes[1].pods[b], b6));
    assert_eq!(received, BULK, "every byte over IPv6 through the tunnel");

    set_routing(&env, "native").await;
    until_route(
        &env,
        0,
        "fd00:10:2::/64",
        &["via fd00:100::2 dev ul0", "proto 87"],
    )
    .await;
    let received = tokio::task::block_in_place(|| bulk(&a_ns, &env.nodes[1].pods[b], b6));
    assert_eq!(received, BULK, "every byte over IPv6 natively");
}
