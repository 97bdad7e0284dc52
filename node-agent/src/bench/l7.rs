//! `node-agent bench-l7`, behind `cargo xtask bench l7`: HTTP/1.1 between two pods of one
//! node through the L7 proxy (1, 10 and 100 HTTP rules) against an L3/L4 allow of the same
//! traffic, in the same run: keep-alive requests/s with p50/p99 latency, and new
//! connections/s; and DNS queries/s through the DNS proxy against straight to the resolver
//! (`dns`). Modes are interleaved round by round and the median round kept.
//!
//! Everything runs in namespaces and a pin directory made here: the datapath, the proxy
//! device and routing, and the proxy's listeners live in the benchmark's node namespace (a
//! thread there builds the runtime, so its workers start there too).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use weft_model::desired::HttpMatch;

use node_agent::datapath::{
    Action, Datapath, DatapathConfig, Direction, Endpoint, L7Rules, PolicyEntry,
};
use node_agent::endpoint::manager::{lock, SharedDatapath};
use node_agent::netns::{enter_netns, PinDir, Topology};
use node_agent::tools::http::read_reply;
use node_agent::tools::Server;

use super::{dns, median};

const CLIENT_ID: u32 = 300;
const SERVER_ID: u32 = 301;
const PORT: u16 = 8080;
const RULE_COUNTS: [usize; 3] = [1, 10, 100];

/// Benchmark options.
#[derive(Debug, Clone)]
pub struct L7Options {
    /// Length of one measurement.
    pub window: Duration,
    /// Interleaved rounds (the median round is kept).
    pub rounds: u32,
    /// Concurrent keep-alive connections.
    pub conns: usize,
}

/// One mode's figures.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Figures {
    pub(super) requests_per_s: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
}

/// `n` HTTP rules; only the last matches the benchmark's requests (so every rule is tried).
fn rules(n: usize) -> Vec<HttpMatch> {
    (0..n)
        .map(|i| HttpMatch {
            method: Some("GET".into()),
            path: Some(if i + 1 == n {
                "/bench/.*".into()
            } else {
                format!("/other-{i}/.*")
            }),
            ..HttpMatch::default()
        })
        .collect()
}

fn entry(action: Action) -> PolicyEntry {
    PolicyEntry {
        direction: Direction::Ingress,
        peer_identity: Some(CLIENT_ID),
        proto: Some(6),
        ports: Some((PORT, PORT)),
        action,
        rule_id: 0,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Runs `client` on `conns` threads in the pod namespace `from`, each until `window` has
/// passed, and returns the figures of the latencies they measured together.
pub(super) fn clients<F>(from: &Path, conns: usize, window: Duration, client: F) -> Result<Figures>
where
    F: Fn(Instant) -> std::io::Result<Vec<Duration>> + Clone + Send + 'static,
{
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (from, client) = (from.to_path_buf(), client.clone());
            std::thread::spawn(move || -> std::io::Result<Vec<Duration>> {
                let _in = enter_netns(&from)?;
                client(Instant::now() + window)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let lat = t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        all.extend(lat);
    }
    all.sort();
    Ok(Figures {
        requests_per_s: all.len() as f64 / window.as_secs_f64(),
        p50_us: percentile(&all, 0.5),
        p99_us: percentile(&all, 0.99),
    })
}

/// Keep-alive GETs on `conns` connections from the pod namespace `from` for `window`.
fn keepalive(from: &Path, target: SocketAddr, conns: usize, window: Duration) -> Result<Figures> {
    clients(from, conns, window, move |end| {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let req = b"GET /bench/x HTTP/1.1\r\nHost: bench\r\n\r\n";
        let (mut buf, mut lat) = (Vec::new(), Vec::new());
        while Instant::now() < end {
            let t = Instant::now();
            s.write_all(req)?;
            match read_reply(&mut s, &mut buf)? {
                Some(r) if r.status == 200 => lat.push(t.elapsed()),
                other => return Err(std::io::Error::other(format!("reply {other:?}"))),
            }
        }
        Ok(lat)
    })
}

/// New connections per second: connect, one GET, close, in a loop per thread.
fn new_connections(from: &Path, target: SocketAddr, conns: usize, window: Duration) -> Result<f64> {
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let from = from.to_path_buf();
            std::thread::spawn(move || -> std::io::Result<u64> {
                let _in = enter_netns(&from)?;
                let end = Instant::now() + window;
                let mut n = 0;
                while Instant::now() < end {
                    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    s.write_all(b"GET /bench/c HTTP/1.1\r\nHost: bench\r\n\r\n")?;
                    let mut buf = Vec::new();
                    if read_reply(&mut s, &mut buf)?.is_some_and(|r| r.status == 200) {
                        n += 1;
                    }
                    // Reset on close: no TIME_WAIT piling up on the client's ports.
                    node_agent::tools::linger_zero(&s);
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    }
    Ok(total as f64 / window.as_secs_f64())
}

fn median_figures(v: &[Figures]) -> Figures {
    Figures {
        requests_per_s: median(v.iter().map(|f| f.requests_per_s).collect()),
        p50_us: median(v.iter().map(|f| f.p50_us).collect()),
        p99_us: median(v.iter().map(|f| f.p99_us).collect()),
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn figures_json(f: &Figures) -> Value {
    json!({
        "requests_per_s": f.requests_per_s.round(),
        "p50_us": round3(f.p50_us),
        "p99_us": round3(f.p99_us),
    })
}

/// Runs the benchmark; returns the report (see the module doc).
pub fn run(opts: &L7Options) -> Result<Value> {
    let topo = Topology::new(2)?;
    // The proxy's upstream connections leave from the node's address: this node has none
    // of its own (a real node has its uplink's).
    topo.node
        .ip(&["addr", "add", "10.0.0.254/32", "dev", "lo"])?;
    let (client, server) = (&topo.pods[0], &topo.pods[1]);
    let _server = Server::http(&server.ns, PORT, "s")?;
    let resolver = SocketAddr::V4(SocketAddrV4::new(server.ip, 53));
    let records = BTreeMap::from([(
        dns::NAME.to_string(),
        (vec![std::net::IpAddr::from([192, 0, 2, 1])], 300),
    )]);
    let _resolver = Server::dns(&server.ns, resolver, records)?;
    let pins = PinDir::create("lseven")?;
    let node = topo.node.path();
    let client_ns = client.ns.path();
    let target = SocketAddr::V4(SocketAddrV4::new(server.ip, PORT));
    let host_ifs: Vec<String> = topo.pods.iter().map(|p| p.host_if.clone()).collect();
    let ips: Vec<Ipv4Addr> = topo.pods.iter().map(|p| p.ip).collect();
    let pin_path = pins.path().to_path_buf();
    let opts = opts.clone();
    std::thread::spawn(move || -> Result<Value> {
        let _in = enter_netns(&node).context("entering the node namespace")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(measure(
            opts, pin_path, host_ifs, ips, client_ns, target, resolver,
        ))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

async fn measure(
    opts: L7Options,
    pin_path: PathBuf,
    host_ifs: Vec<String>,
    ips: Vec<Ipv4Addr>,
    client_ns: PathBuf,
    target: SocketAddr,
    resolver: SocketAddr,
) -> Result<Value> {
    let mut dp = Datapath::load(DatapathConfig {
        pin_path: pin_path.clone(),
        ..DatapathConfig::default()
    })?;
    for ifname in &host_ifs {
        dp.attach_endpoint_interface(ifname)?;
    }
    for (i, (ip, identity)) in ips.iter().zip([CLIENT_ID, SERVER_ID]).enumerate() {
        dp.apply_endpoint(&Endpoint {
            id: i as u32 + 1,
            ip: *ip,
            ip6: None,
            identity,
            ifindex: 0,
            enforce_ingress: identity == SERVER_ID,
            enforce_egress: identity == CLIENT_ID,
        })?;
        dp.apply_ipcache_v4(*ip, 32, identity)?;
    }
    node_agent::netlink::Rtnl::current()?
        .ensure_proxy_routing()
        .await?;
    dp.attach_proxy_device(node_agent::netlink::proxy::PROXY_DEVICE)?;
    let flows = node_agent::flows::FlowQueue::new(100_000);
    let proxies =
        node_agent::proxy::Proxies::new(&pin_path, node_agent::proxy::DEFAULT_BASE_PORT, flows)
            .map_err(anyhow::Error::msg)?;
    let learner = proxies.learner_slot();
    dp.set_l7_proxy(Box::new(proxies));
    let mut ports = BTreeMap::new();
    for n in RULE_COUNTS {
        ports.insert(
            n,
            dp.l7_proxy_port(L7Rules::Http(Direction::Ingress, &rules(n)))?,
        );
    }
    let dns_rules = dns::rules();
    let dns_proxy = (
        dp.l7_proxy_port(L7Rules::Dns(&dns_rules))?,
        dp.fqdn_selector_id(&dns::selector()),
    );
    dp.apply_policy(1, &dns::client_entries(None))?;
    // Shared, as in the agent: the DNS proxy learns answers into it.
    let dp: SharedDatapath = Arc::new(Mutex::new(dp));
    let _ = learner.set(node_agent::agent::fqdn::learner(&dp));
    let server_in = |e: PolicyEntry| [e, dns::server_entry(CLIENT_ID)];
    let (mut dns_direct, mut dns_proxied) = (Vec::new(), Vec::new());
    let (mut l4, mut l7): (Vec<Figures>, BTreeMap<usize, Vec<Figures>>) = Default::default();
    let (mut crr_l4, mut crr_l7) = (Vec::new(), Vec::new());
    for round in 0..opts.rounds {
        let (w, c) = (opts.window, opts.conns);
        lock(&dp).apply_policy(2, &server_in(entry(Action::Allow)))?;
        let ns = client_ns.clone();
        let (f, r) = tokio::task::spawn_blocking(move || -> Result<(Figures, f64)> {
            Ok((
                keepalive(&ns, target, c, w)?,
                new_connections(&ns, target, c, w)?,
            ))
        })
        .await??;
        eprintln!(
            "round {round}: L3/L4 allow: {:.0} req/s, p50 {:.1} µs, {:.0} conn/s",
            f.requests_per_s, f.p50_us, r
        );
        l4.push(f);
        crr_l4.push(r);
        for n in RULE_COUNTS {
            lock(&dp).apply_policy(
                2,
                &server_in(entry(Action::Redirect {
                    proxy_port: ports[&n],
                })),
            )?;
            let ns = client_ns.clone();
            let measure_crr = n == 1;
            let (f, r) = tokio::task::spawn_blocking(move || -> Result<(Figures, f64)> {
                let f = keepalive(&ns, target, c, w)
                    .with_context(|| format!("through the L7 proxy, {n} rules"))?;
                let r = if measure_crr {
                    new_connections(&ns, target, c, w)?
                } else {
                    0.0
                };
                Ok((f, r))
            })
            .await??;
            eprintln!(
                "round {round}: L7, {n:>3} rules: {:.0} req/s, p50 {:.1} µs{}",
                f.requests_per_s,
                f.p50_us,
                if measure_crr {
                    format!(", {r:.0} conn/s")
                } else {
                    String::new()
                }
            );
            l7.entry(n).or_default().push(f);
            if measure_crr {
                crr_l7.push(r);
            }
        }
        for proxied in [false, true] {
            let entries = dns::client_entries(proxied.then_some(dns_proxy));
            lock(&dp).apply_policy(1, &entries)?;
            let ns = client_ns.clone();
            let f = tokio::task::spawn_blocking(move || dns::queries(&ns, resolver, c, w))
                .await?
                .with_context(|| format!("DNS queries, proxied: {proxied}"))?;
            eprintln!(
                "round {round}: DNS {}: {:.0} queries/s, p50 {:.1} µs",
                if proxied {
                    "through the proxy"
                } else {
                    "direct"
                },
                f.requests_per_s,
                f.p50_us
            );
            if proxied {
                dns_proxied.push(f);
            } else {
                dns_direct.push(f);
            }
        }
        lock(&dp).apply_policy(1, &dns::client_entries(None))?;
    }
    let (dns_direct, dns_proxied) = (median_figures(&dns_direct), median_figures(&dns_proxied));
    let l4 = median_figures(&l4);
    let l7: BTreeMap<usize, Figures> = l7.iter().map(|(n, v)| (*n, median_figures(v))).collect();
    let (crr_l4, crr_l7) = (median(crr_l4), median(crr_l7));
    let one = l7.get(&1).copied().unwrap_or_default();
    let hundred = l7.get(&100).copied().unwrap_or_default();
    let ratio = |a: f64, b: f64| if b > 0.0 { round3(a / b) } else { 0.0 };
    Ok(json!({
        "l4": figures_json(&l4),
        "l7": l7.iter().map(|(n, f)| (n.to_string(), figures_json(f))).collect::<serde_json::Map<_, _>>(),
        "new_connections_per_s": {"l4": crr_l4.round(), "l7": crr_l7.round()},
        "dns": {"direct": figures_json(&dns_direct), "proxy": figures_json(&dns_proxied)},
        "ratios": {
            "l7_vs_l4_throughput": ratio(one.requests_per_s, l4.requests_per_s),
            "l7_100_rules_vs_1": ratio(one.requests_per_s, hundred.requests_per_s),
            "l7_vs_l4_new_connections": ratio(crr_l7, crr_l4),
            "dns_proxy_vs_direct": ratio(dns_proxied.requests_per_s, dns_direct.requests_per_s),
        },
        "p50_added_us": round3(one.p50_us - l4.p50_us),
        "connections": opts.conns,
        "window_s": opts.window.as_secs_f64(),
        "rounds": opts.rounds,
    }))
}
