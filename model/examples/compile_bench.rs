//! How the desired-state compiler scales with the tenant: `cargo xtask bench compile`
//! builds this in release and runs it.
//!
//! Tenants of growing size (one cluster; `k`× the baseline: 5k nodes, 200k endpoints with
//! 10k distinct label sets, 30k policies with endpoint, entity and CIDR-set peers). Each
//! node runs 40 endpoints whatever the size, so what grows is what one node's rules resolve
//! against (identities, CIDRs, policies). Prints, per size, the median time to compile one
//! node and its ratio to the 1× tenant measured in the same run, next to the size ratio;
//! then a one-endpoint change at the largest size: the `diff` the control plane streams,
//! against a full compile. Writes the figures as JSON with `--out`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde_json::json;
use weft_model::desired::{
    compile, diff, EndpointView, NodeDesiredState, NodeView, PolicyView, TenantView,
};
use weft_model::labels::Labels;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn v4(a: u8, b: u32, c: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        10,
        a,
        u8::try_from(b).expect("address fits"),
        u8::try_from(c).expect("address fits"),
    ))
}

fn endpoint(e: u32, nodes: u32, apps: u32) -> EndpointView {
    let app = e % apps;
    EndpointView {
        id: format!("ep-{e:05}"),
        cluster_id: "c1".into(),
        node_id: format!("n{}", e % nodes).into(),
        name: format!("ep-{e:05}"),
        labels: labels(&[
            ("app", format!("a{app}")),
            ("tier", format!("t{}", app % 5)),
        ])
        .into(),
        ips: vec![v4(
            8 + u8::try_from(e / 62_500).expect("size"),
            e / 250 % 250,
            e % 250 + 1,
        )],
        identity: 300 + app,
        named_ports: vec![],
    }
}

/// `k`× the baseline tenant (`k` = 10 is the size the old ignored timing test used).
fn tenant(k: u32) -> TenantView {
    let (nodes, endpoints, apps, policies) = (5 * k, 200 * k, 10 * k, 30 * k);
    let mut view = TenantView::default();
    for n in 0..nodes {
        view.nodes.push(NodeView {
            id: format!("n{n}"),
            cluster_id: "c1".into(),
            name: format!("node-{n}"),
            addresses: vec![v4(0, n / 200, n % 200 + 1)],
            labels: labels(&[("zone", "a".into())]).into(),
            pod_cidrs: vec![],
        });
    }
    view.endpoints = (0..endpoints).map(|e| endpoint(e, nodes, apps)).collect();
    for p in 0..policies {
        let spec = json!({
            "endpointSelector": {"matchLabels": {"app": format!("a{}", p % apps)}},
            "ingress": [
                {"fromEndpoints": [{"matchLabels": {"tier": format!("t{}", p % 5)}}],
                 "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}, {"port": "9000", "endPort": 9100}]}]},
                {"fromEntities": ["cluster"], "toPorts": [{"ports": [{"port": "9100", "protocol": "TCP"}]}]}
            ],
            "egress": [
                {"toCIDRSet": [{"cidr": format!("172.{}.0.0/16", 16 + p % 16),
                                "except": [format!("172.{}.{}.0/24", 16 + p % 16, p % 200)]}]},
                {"toEntities": ["world"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}
            ]
        });
        view.policies.push(PolicyView {
            id: format!("id-p{p:04}"),
            name: format!("p{p:04}"),
            specs: vec![serde_json::from_value(spec).expect("benchmark spec parses")],
            clusters: None,
        });
    }
    view
}

/// Median of runs of `f`, repeated for at least `budget` (and at least 3 times).
fn median(budget: Duration, mut f: impl FnMut()) -> Duration {
    let mut runs = Vec::new();
    let start = Instant::now();
    while runs.len() < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        runs.push(t.elapsed());
    }
    runs.sort();
    runs[runs.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1));
    let budget = Duration::from_millis(if quick { 200 } else { 1500 });
    let sizes: &[u32] = if quick {
        &[1, 4, 10]
    } else {
        &[1, 2, 4, 10, 20]
    };

    println!("desired-state compiler: one node's compile, by tenant size (median, release)");
    println!(
        "{:>5} {:>6} {:>9} {:>8} | {:>7} {:>7} {:>6} | {:>10} {:>8} {:>9}",
        "size",
        "nodes",
        "endpoints",
        "policies",
        "ipcache",
        "rules",
        "local",
        "compile",
        "vs 1x",
        "per size"
    );
    let mut rows = Vec::new();
    let mut baseline = None;
    let mut largest: Option<(TenantView, NodeDesiredState, Duration)> = None;
    for &k in sizes {
        let view = tenant(k);
        let mut state = NodeDesiredState::default();
        let took = median(budget, || {
            state = compile(&view, "n1").expect("benchmark tenant compiles");
        });
        let base = *baseline.get_or_insert(took);
        let ratio = took.as_secs_f64() / base.as_secs_f64();
        let rules: usize = state.policy.values().map(|r| r.len()).sum();
        println!(
            "{:>4}x {:>6} {:>9} {:>8} | {:>7} {:>7} {:>6} | {:>8.2}ms {:>7.1}x {:>8.2}x",
            k,
            view.nodes.len(),
            view.endpoints.len(),
            view.policies.len(),
            state.ipcache.len(),
            rules,
            state.endpoints.len(),
            ms(took),
            ratio,
            ratio / f64::from(k),
        );
        rows.push(json!({
            "size": k, "nodes": view.nodes.len(), "endpoints": view.endpoints.len(),
            "policies": view.policies.len(), "ipcache": state.ipcache.len(), "rules": rules,
            "local_endpoints": state.endpoints.len(), "compile_ms": ms(took),
            "ratio_vs_1x": ratio,
        }));
        largest = Some((view, state, took));
    }
    println!("(per size: the ratio vs 1x divided by the size factor; 1.00 = linear in the tenant)");

    let (mut view, old, full) = largest.expect("at least one size");
    // One endpoint more on the node: what the control plane recompiles and streams.
    let nodes = u32::try_from(view.nodes.len()).expect("size");
    let apps = nodes * 2;
    let mut added = endpoint(
        u32::try_from(view.endpoints.len()).expect("size"),
        nodes,
        apps,
    );
    added.node_id = "n1".into();
    view.endpoints.push(added);
    let new = compile(&view, "n1").expect("benchmark tenant compiles");
    let mut upserts = 0;
    let took = median(budget, || {
        let d = diff(&old, &new);
        upserts = d.endpoints_upsert.len() + d.ipcache_upsert.len() + d.policy_upsert.len();
    });
    println!(
        "one endpoint added at {}x: diff {:.3}ms = {:.3}x a full compile ({:.2}ms); {upserts} upserts",
        sizes.last().copied().unwrap_or(1),
        ms(took),
        took.as_secs_f64() / full.as_secs_f64(),
        ms(full),
    );
    if let Some(path) = out {
        let report = json!({
            "sizes": rows,
            "diff_one_endpoint_ms": ms(took),
            "diff_vs_full_compile": took.as_secs_f64() / full.as_secs_f64(),
        });
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir).expect("creating the output folder");
        }
        std::fs::write(path, serde_json::to_vec_pretty(&report).expect("json"))
            .expect("writing the report");
        println!("wrote {path}");
    }
}
