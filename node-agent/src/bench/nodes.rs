//! Pod to pod across two nodes: TCP throughput and connection rate through Weft's VXLAN
//! tunnel vs Weft's native routing vs the bare underlay, in one topology, modes interleaved
//! round by round.
//!
//! Two node namespaces joined by a veth pair (the underlay, 192.168.200.0/24), a pod on
//! each (10.0.1.1 on node 1, 10.0.2.1 on node 2). The routes come from the agent's own
//! routing code ([`crate::routing::Router`] on a desired state naming both nodes):
//! - bare: native routes, no eBPF anywhere (the floor);
//! - native: the same routes, the datapath's policy programs on both pods' veths (ingress
//!   enforced, the peer's identity allowed on TCP);
//! - vxlan: the tunnel's routes and MTU, no eBPF anywhere (the kernel's VXLAN floor);
//! - tunnel: VXLAN routes, the policy programs plus the identity-on-the-wire programs on
//!   the tunnel device, pods at the MTU the agent computes.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use weft_datapath_common as c;
use weft_model::desired::{DesiredEndpoint, NodeDesiredState, HOST_ENDPOINT_ID};
use weft_model::routing::{ClusterNode, RoutingMode};

use node_agent::datapath::{Action, Datapath, Direction, Endpoint, PolicyEntry};
use node_agent::netns::{NetNs, PinDir, Topology};
use node_agent::routing::{Router, TUNNEL_DEVICE};
use node_agent::tools::{self, Server};

use super::{crr, drop_events_datapath, median, BenchOptions};

/// The modes, in the order measured within a round (native before vxlan: it removes the
/// tunnel device, so vxlan starts from one without programs).
pub const MODES: [&str; 4] = ["bare", "native", "vxlan", "tunnel"];

/// Per mode: TCP throughput (Gbit/s) and connection rate (CRR/s), medians over rounds.
#[derive(Debug, Default, Clone)]
pub struct CrossNode {
    pub gbps: std::collections::BTreeMap<&'static str, f64>,
    pub crr: std::collections::BTreeMap<&'static str, f64>,
    /// The pods' MTU in tunnel mode.
    pub tunnel_mtu: u32,
}

const IDENTITIES: [u32; 2] = [1000, 1001];
const PORT_CRR: u16 = 8080;
const PORT_BULK: u16 = 9000;

fn underlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 200, i as u8 + 1)
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, i as u8 + 1, 1)
}

struct Node {
    topo: Topology,
    dp: Datapath,
    _pins: PinDir,
}

/// The desired state the agent on node `i` would get: both nodes, the mode.
fn desired(i: usize, mode: RoutingMode) -> NodeDesiredState {
    NodeDesiredState {
        endpoints: vec![DesiredEndpoint {
            id: HOST_ENDPOINT_ID.to_string(),
            ips: vec![IpAddr::V4(underlay(i))],
            identity: c::IDENTITY_HOST,
            enforce_ingress: false,
            enforce_egress: false,
        }],
        routing: mode,
        nodes: (0..2)
            .map(|n| ClusterNode {
                name: format!("n{}", n + 1),
                addresses: vec![IpAddr::V4(underlay(n))],
                pod_cidrs: vec![format!("10.0.{}.0/24", n + 1).parse().expect("CIDR")],
            })
            .collect(),
        ..NodeDesiredState::default()
    }
}

fn node(i: usize) -> Result<Node> {
    let mut topo = Topology::new(0)?;
    topo.add_pod(pod_ip(i))?;
    let pins = PinDir::create("x")?;
    let mut dp = drop_events_datapath(&pins)?;
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: pod_ip(i),
        ip6: None,
        identity: IDENTITIES[i],
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: false,
    })?;
    dp.apply_policy(
        1,
        &[PolicyEntry {
            direction: Direction::Ingress,
            peer_identity: Some(IDENTITIES[1 - i]),
            proto: Some(c::PROTO_TCP),
            ports: None,
            action: Action::Allow,
            rule_id: 0,
        }],
    )?;
    dp.apply_ipcache_v4(pod_ip(1 - i), 32, IDENTITIES[1 - i])?;
    dp.apply_ipcache_v4(underlay(1 - i), 32, c::IDENTITY_REMOTE_NODE)?;
    Ok(Node {
        topo,
        dp,
        _pins: pins,
    })
}

/// Routes (and the pod MTU) of `mode` on node `i`, made by the agent's routing code in the
/// node's namespace; returns the pod MTU.
fn route(n: &Node, i: usize, mode: RoutingMode) -> Result<u32> {
    let state = desired(i, mode);
    let (errors, applied) = n
        .topo
        .node
        .spawn(move || -> Result<_> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(Router::default().apply(&state)))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("routing thread panicked"))???;
    if !errors.is_empty() {
        bail!("routing node {}: {errors:?}", i + 1);
    }
    let mtu = applied.pod_mtu.context("the underlay's MTU")?;
    let pod = &n.topo.pods[0];
    n.topo
        .node
        .ip(&["link", "set", &pod.host_if, "mtu", &mtu.to_string()])?;
    pod.ns
        .ip(&["link", "set", "eth0", "mtu", &mtu.to_string()])?;
    Ok(mtu)
}

/// Puts both nodes in `mode`; returns the pods' MTU.
fn switch(nodes: &[Node; 2], mode: &str) -> Result<u32> {
    let routing = if mode == "tunnel" || mode == "vxlan" {
        RoutingMode::Tunnel
    } else {
        RoutingMode::Native
    };
    let mut mtu = 0;
    for (i, n) in nodes.iter().enumerate() {
        mtu = route(n, i, routing)?;
        let _in = n.topo.node.enter()?;
        let host_if = &n.topo.pods[0].host_if;
        if mode == "bare" || mode == "vxlan" {
            n.dp.detach_endpoint_interface(host_if)?;
        } else {
            n.dp.attach_endpoint_interface(host_if)?;
        }
        if mode == "tunnel" {
            n.dp.attach_tunnel(TUNNEL_DEVICE)?;
        }
    }
    Ok(mtu)
}

/// Bytes from the pod of `from` to a sink in `to` for `window`: Gbit/s as the sink saw it.
fn throughput(from: &NetNs, to: &NetNs, target: SocketAddrV4, window: Duration) -> Result<f64> {
    let sink = tools::sink(to, target.into())?;
    let end = Instant::now() + window;
    tools::send_to_sink(&from.path(), target.into(), move |_| Instant::now() < end)?;
    let got = sink
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    Ok(got.bytes as f64 * 8.0 / got.took.as_secs_f64().max(1e-9) / 1e9)
}

pub fn run(opts: &BenchOptions) -> Result<CrossNode> {
    let nodes = [node(0)?, node(1)?];
    nodes[0].topo.node.ip(&[
        "link",
        "add",
        "ul0",
        "type",
        "veth",
        "peer",
        "name",
        "ul0",
        "netns",
        nodes[1].topo.node.name(),
    ])?;
    for (i, n) in nodes.iter().enumerate() {
        n.topo
            .node
            .ip(&["addr", "add", &format!("{}/24", underlay(i)), "dev", "ul0"])?;
        n.topo.node.ip(&["link", "set", "ul0", "up"])?;
    }
    let server = &nodes[1].topo.pods[0];
    let _crr_server = Server::tcp(&server.ns, PORT_CRR, "n2")?;
    nodes[0].topo.pods[0]
        .ns
        .sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    let window = opts.crr_window * 3;
    let mut res = CrossNode::default();
    let mut samples: std::collections::BTreeMap<&str, (Vec<f64>, Vec<f64>)> = Default::default();
    for _ in 0..opts.crr_rounds.max(3) {
        for mode in MODES {
            let mtu = switch(&nodes, mode)?;
            if mode == "tunnel" {
                res.tunnel_mtu = mtu;
            }
            let gbps = throughput(
                &nodes[0].topo.pods[0].ns,
                &server.ns,
                SocketAddrV4::new(server.ip, PORT_BULK),
                window,
            )
            .with_context(|| format!("throughput, {mode}"))?;
            let (rate, _) = crr(
                opts,
                &nodes[0].topo,
                None,
                SocketAddrV4::new(server.ip, PORT_CRR),
                opts.crr_parallel,
            )
            .with_context(|| format!("CRR, {mode}"))?;
            let s = samples.entry(mode).or_default();
            s.0.push(gbps);
            s.1.push(rate);
        }
    }
    for mode in MODES {
        let (g, r) = samples.remove(mode).unwrap_or_default();
        let (g, r) = (median(g), median(r));
        eprintln!("pod to pod across nodes, {mode:>6}: {g:.2} Gbit/s, {r:.0} CRR/s");
        res.gbps.insert(mode, g);
        res.crr.insert(mode, r);
    }
    Ok(res)
}
