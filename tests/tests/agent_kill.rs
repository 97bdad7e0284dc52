//! An agent SIGKILLed in the middle of applying a large change (10,000 policy entries):
//! after its restart the maps hold exactly the desired state (nothing left of the
//! half-written generation), and a connection that the state before and the state after
//! both allow is never refused meanwhile (a steady connection loop counts every attempt).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::bpf_available;
use common::env::{until_assigned, Env};
use common::nodes::until_tcp;
use node_agent::datapath::Maps;
use serde_json::{json, Value};

const WEB1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 8080);
/// Peers x ports of the large change: 10,000 policy entries for web-1.
const PEERS: u32 = 100;
const PORTS: u16 = 100;

/// Policy `wide`: web admits app=client on 8080 (as before) and `PEERS` /32s of
/// `10.<net>.x.y` on `PORTS` ports (every other port: nothing merges into ranges).
fn wide(net: u8) -> Value {
    let cidrs: Vec<String> = (0..PEERS)
        .map(|i| format!("10.{net}.{}.{}/32", i / 200, i % 200 + 1))
        .collect();
    let ports: Vec<Value> = (0..PORTS)
        .map(|i| json!({"port": (20_000 + 2 * i).to_string(), "protocol": "TCP"}))
        .collect();
    json!({"name": "wide", "spec": {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "ingress": [
            {"fromEndpoints": [{"matchLabels": {"app": "client"}}],
             "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]},
            {"fromCIDR": cidrs, "toPorts": [{"ports": ports}]}]}})
}

/// Web-1's policy generation in force and its hash policy entries: in that generation, and
/// in both.
#[derive(Debug, Clone, Copy)]
struct Seen {
    gen: bool,
    in_force: usize,
    all: usize,
}

fn entries(maps: &Maps) -> Seen {
    let (ep, gen) = maps
        .list_endpoints()
        .expect("endpoints")
        .into_iter()
        .find(|(k, _)| k.addr[..4] == WEB1.ip().octets())
        .map(|(_, v)| (v.ep_id, v.flags & weft_datapath_common::EP_POLICY_GEN != 0))
        .expect("web-1 in the endpoint map");
    let in_force = maps
        .list_policy(ep)
        .expect("policy")
        .iter()
        .filter(|(map, ..)| *map == "hash")
        .count();
    let all = maps
        .policy
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.ep_id == ep)
        .count();
    Seen { gen, in_force, all }
}

/// Waits until no retired or half-written entries are left beside those in force.
async fn settled(maps: &Maps) -> Seen {
    let start = Instant::now();
    loop {
        let s = entries(maps);
        if s.all == s.in_force {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects from `from` to web-1 every 20 ms until stopped: (attempts, refused).
fn steady(from: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    let from = from.to_path_buf();
    let (attempts, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            attempts.fetch_add(1, Ordering::Relaxed);
            if common::nodes::tcp(&from, WEB1).is_err() {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (
            attempts.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        )
    })
}

/// How long node-1 may take to apply a change after a (re)start.
const APPLIED_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_apply_restarts_to_exactly_the_desired_maps_and_drops_nothing() {
    if !bpf_available(
        "an_agent_killed_mid_apply_restarts_to_exactly_the_desired_maps_and_drops_nothing",
    ) {
        return;
    }
    let mut env = Env::new(1).await;
    env.start(0, true).await;
    let (client, web1) = (env.nodes[0].pod(), env.nodes[0].pod());
    env.nodes[0].add("client", client, "10.0.1.1", "app=client");
    env.nodes[0].add("web-1", web1, "10.0.1.2", "app=web");
    env.nodes[0].serve(web1, "web-1");
    env.until_rest_endpoints(&["client", "web-1"]).await;
    until_assigned(&env.nodes[0], 2).await;
    env.policy("web-from-client", "client").await;
    let client_ns = env.nodes[0].pods[client].path();
    let r = env
        .cp
        .call(
            "GET",
            "/v1/tenants/acme/policies/web-from-client",
            &env.owner,
            None,
        )
        .await;
    let first = r.body["revision"].as_i64().expect("revision");
    env.until_applied("node-1", first, APPLIED_WITHIN).await;
    assert!(
        until_tcp(&client_ns, WEB1, true).await,
        "allowed by the policy"
    );
    let maps = Maps::open_pinned(env.nodes[0].pins.path()).expect("pinned maps");
    let before = settled(&maps).await.in_force;

    let stop = Arc::new(AtomicBool::new(false));
    let loop_ = steady(&client_ns, stop.clone());
    // The large change, through as many attempts as it takes to kill the agent while it
    // writes (it writes the new generation beside the one in force, then flips).
    let mut mid_apply = None;
    let mut revision = 0;
    for attempt in 0..5u8 {
        let old = settled(&maps).await;
        let (method, path) = if attempt == 0 {
            ("POST", "/v1/tenants/acme/policies".to_string())
        } else {
            ("PUT", "/v1/tenants/acme/policies/wide".to_string())
        };
        let r = env
            .cp
            .call(method, &path, &env.owner, Some(wide(100 + attempt)))
            .await;
        assert!(r.status.is_success(), "{}", r.body);
        // Killed once the new generation is being written and before it is put in force,
        // or as soon as it is in force (too late: another attempt).
        let start = Instant::now();
        let seen = loop {
            let s = entries(&maps);
            if s.gen != old.gen
                || s.all > s.in_force + 50
                || start.elapsed() > Duration::from_secs(10)
            {
                break s;
            }
        };
        env.nodes[0].kill_agent();
        revision = {
            let r = env
                .cp
                .call("GET", "/v1/tenants/acme/policies/wide", &env.owner, None)
                .await;
            r.body["revision"].as_i64().unwrap_or(0)
        };
        env.start(0, false).await;
        env.until_applied("node-1", revision, APPLIED_WITHIN).await;
        if seen.gen == old.gen && seen.all > seen.in_force + 50 {
            mid_apply = Some((attempt, seen));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (attempts, refused) = loop_.join().expect("connection loop");
    let (attempt, at_kill) =
        mid_apply.expect("killed the agent while it was writing the change, in 5 attempts");
    eprintln!(
        "killed at attempt {attempt} with {} entries of the new generation written beside {} in \
         force; {attempts} connections during the restarts, {refused} refused",
        at_kill.all - at_kill.in_force,
        at_kill.in_force
    );
    // Both states allow the client: not one connection was refused.
    assert_eq!(refused, 0, "of {attempts} connections");
    assert!(attempts > 20, "{attempts}");

    // The maps hold exactly the desired state: the client's rule and the 10,000 entries in
    // force, nothing left of the half-written generation once the retired one is collected.
    let start = Instant::now();
    let want = before + (PEERS as usize) * (PORTS as usize);
    loop {
        let s = entries(&maps);
        if s.in_force == want && s.all == want {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{s:?}, want {want} in force and in all (revision {revision})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(until_tcp(&client_ns, WEB1, true).await, "still allowed");
}
