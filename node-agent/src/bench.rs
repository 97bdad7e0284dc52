//! `node-agent bench-datapath`: the datapath benchmark behind `cargo xtask bench datapath`.
//!
//! 1. ns/packet of the tc programs with `BPF_PROG_TEST_RUN` (the kernel's own average over
//!    `repeat` runs): policy with 10 / 10,000 / 100,000 entries, the pass-through floor.
//! 2. TCP connect-request-response rate from a client pod to service VIPs with 10 / 1,000 /
//!    5,000 services: Weft's socket LB vs iptables rules of kube-proxy's shape (legacy
//!    iptables, inside the node namespace) vs straight to a backend; interleaved rounds in
//!    one topology, median of the rounds.
//!
//! Everything runs in namespaces, a cgroup and a pin directory created here and removed at
//! the end.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use weft_datapath_common as c;

use node_agent::datapath::{
    Action, Backend, BackendState, Datapath, DatapathConfig, Direction, Endpoint, LbAlgorithm,
    MapSizes, PolicyEntry, Service,
};
use node_agent::netns::{Cgroup, PinDir, Topology};
use node_agent::tools::{self, ClientOptions, Server};

/// Benchmark options.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `BPF_PROG_TEST_RUN` repetitions per measurement.
    pub repeat: u32,
    pub policy_sizes: Vec<u32>,
    pub lb_sizes: Vec<u32>,
    pub crr_sizes: Vec<u32>,
    /// Length of one CRR measurement.
    pub crr_window: Duration,
    /// Interleaved rounds per CRR size.
    pub crr_rounds: u32,
    /// The node-agent binary (spawned as the CRR client).
    pub exe: std::path::PathBuf,
}

const EP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

fn packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = c::PROTO_TCP;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let t = &mut p[34..54];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    p
}

fn sizes_for(max_policy: u32) -> MapSizes {
    MapSizes {
        policy: (max_policy + 1024).max(MapSizes::default().policy),
        ipcache: (max_policy + 1024).max(MapSizes::default().ipcache),
        ..MapSizes::default()
    }
}

/// Average ns/run over `repeat` runs, as the minimum of 20 trials of `repeat / 20` runs each
/// (the other trials absorb interference from other processes on the machine).
fn timed(dp: &Datapath, prog: &'static str, pkt: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let mut best = f64::MAX;
    let mut retval = 0;
    for _ in 0..20 {
        let r = dp.test_run(prog, pkt, (repeat / 20).max(1))?;
        best = best.min(r.duration_ns as f64);
        retval = r.retval;
    }
    Ok((best, retval))
}

/// Median ns of `runs` single runs, each on a fresh copy of `pkt` (for programs that rewrite
/// the packet, which `BPF_PROG_TEST_RUN` would otherwise reuse across repetitions).
fn timed_single(dp: &Datapath, prog: &'static str, pkt: &[u8], runs: u32) -> Result<(f64, u32)> {
    let mut v = Vec::with_capacity(runs as usize);
    let mut retval = 0;
    for _ in 0..runs {
        let r = dp.test_run(prog, pkt, 1)?;
        v.push(r.duration_ns as f64);
        retval = r.retval;
    }
    Ok((median(v), retval))
}

/// ns/packet of the policy program for a new allowed connection (conntrack miss, full policy
/// evaluation, conntrack insert) with `n` entries in the endpoint's policy.
fn policy_ns(n: u32, repeat: u32) -> Result<(f64, f64)> {
    let pins = PinDir::create("b")?;
    let mut dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        sizes: sizes_for(n),
        ..DatapathConfig::default()
    })?;
    // Zero timeouts: every run finds an expired entry, so every run is a new connection.
    // No events (a million start events would only measure ring-buffer overflow).
    dp.set_runtime_config(c::Config {
        ct_tcp_timeout_s: 0,
        ct_syn_timeout_s: 0,
        ct_udp_timeout_s: 0,
        ct_close_timeout_s: 0,
        event_flags: 0,
        ..c::Config::default()
    })?;
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: EP,
        identity: 1000,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: true,
    })?;
    // n entries: n distinct peer identities allowed on TCP 80; the packet's peer is one of them.
    let entries: Vec<PolicyEntry> = (0..n)
        .map(|i| PolicyEntry {
            direction: Direction::Egress,
            peer_identity: Some(100_000 + i),
            proto: Some(c::PROTO_TCP),
            ports: Some((80, 80)),
            action: Action::Allow,
            rule_id: i,
        })
        .collect();
    dp.apply_policy(1, &entries)?;
    dp.apply_ipcache_v4(PEER, 32, 100_000 + n / 2)?;
    let pkt = packet(EP, PEER, 40000, 80);
    let r = dp.test_run(c::progs::FROM_ENDPOINT, &pkt, repeat)?;
    if r.retval != 0 {
        bail!(
            "policy program dropped the benchmark packet (retval {})",
            r.retval
        );
    }
    let new_conn = r.duration_ns as f64;
    // Established: conntrack hit, no policy lookup.
    dp.set_runtime_config(c::Config {
        event_flags: 0,
        ..c::Config::default()
    })?;
    let (established, _) = timed(&dp, c::progs::FROM_ENDPOINT, &pkt, repeat)?;
    Ok((new_conn, established))
}

/// ns/packet of the north-south LB program (`weft_lb_ingress`) with `n` services of 3
/// backends, on a packet to the last service: (new connection, established connection).
fn lb_ns(n: u32, runs: u32) -> Result<(f64, f64)> {
    let pins = PinDir::create("b")?;
    let mut dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        sizes: MapSizes {
            services: (n + 1024).max(MapSizes::default().services),
            backends: (4 * n + 1024).max(MapSizes::default().backends),
            ..MapSizes::default()
        },
        ..DatapathConfig::default()
    })?;
    for i in 0..n {
        dp.apply_service(&Service {
            id: i + 1,
            vip: vip(i),
            port: 80,
            proto: c::PROTO_TCP,
            algorithm: LbAlgorithm::Random,
            affinity: None,
            backends: (0..3)
                .map(|j| Backend {
                    id: (i + 1) * 4 + j,
                    ip: Ipv4Addr::new(10, 0, 1, 2 + j as u8),
                    port: 8080,
                    weight: 1,
                    state: BackendState::Active,
                })
                .collect(),
        })?;
    }
    let pkt = packet(Ipv4Addr::new(192, 0, 2, 7), vip(n - 1), 40000, 80);
    dp.set_runtime_config(c::Config {
        ct_tcp_timeout_s: 0,
        ct_syn_timeout_s: 0,
        event_flags: 0,
        ..c::Config::default()
    })?;
    timed_single(&dp, c::progs::LB_INGRESS, &pkt, runs / 10)?;
    let (new_conn, retval) = timed_single(&dp, c::progs::LB_INGRESS, &pkt, runs)?;
    if retval != 0 {
        bail!("LB program dropped the benchmark packet (retval {retval})");
    }
    dp.set_runtime_config(c::Config {
        event_flags: 0,
        ..c::Config::default()
    })?;
    let (established, _) = timed_single(&dp, c::progs::LB_INGRESS, &pkt, runs)?;
    Ok((new_conn, established))
}

fn passthrough_ns(repeat: u32) -> Result<f64> {
    let pins = PinDir::create("b")?;
    let dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        ..DatapathConfig::default()
    })?;
    let pkt = packet(EP, PEER, 40000, 80);
    Ok(timed(&dp, c::progs::PASS, &pkt, repeat)?.0)
}

/// The pass-through program timed like the LB program (single runs, median).
fn passthrough_single_ns(runs: u32) -> Result<f64> {
    let pins = PinDir::create("b")?;
    let dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        ..DatapathConfig::default()
    })?;
    let pkt = packet(EP, PEER, 40000, 80);
    Ok(timed_single(&dp, c::progs::PASS, &pkt, runs)?.0)
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// kube-proxy-shaped rules: KUBE-SERVICES -> KUBE-SVC-<i> (statistic random) -> KUBE-SEP-<i>-<j>
/// DNAT. The PREROUTING jump is added only while iptables is measured.
fn iptables_rules(n: u32, backends: &[Ipv4Addr]) -> String {
    let mut s = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..n {
        s.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n"));
        for j in 0..backends.len() {
            s.push_str(&format!(":KUBE-SEP-{i}-{j} - [0:0]\n"));
        }
    }
    for i in 0..n {
        s.push_str(&format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}\n",
            vip(i)
        ));
        let k = backends.len();
        for (j, b) in backends.iter().enumerate() {
            if j + 1 < k {
                s.push_str(&format!(
                    "-A KUBE-SVC-{i} -m statistic --mode random --probability {:.5} -j KUBE-SEP-{i}-{j}\n",
                    1.0 / (k - j) as f64
                ));
            } else {
                s.push_str(&format!("-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{j}\n"));
            }
            s.push_str(&format!(
                "-A KUBE-SEP-{i}-{j} -p tcp -m tcp -j DNAT --to-destination {b}:8080\n"
            ));
        }
    }
    s.push_str("COMMIT\n");
    s
}

fn iptables_restore(topo: &Topology, rules: &str) -> Result<()> {
    let mut child = topo
        .node
        .command("iptables-legacy-restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-legacy-restore (apt-get install iptables)")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-legacy-restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn iptables_jump(topo: &Topology, on: bool) -> Result<()> {
    let op = if on { "-I" } else { "-D" };
    topo.node
        .exec(&[
            "iptables-legacy",
            "-t",
            "nat",
            op,
            "PREROUTING",
            "-j",
            "KUBE-SERVICES",
        ])
        .context("toggling the KUBE-SERVICES jump")?;
    Ok(())
}

/// One CRR window: (connections per second, median latency in µs).
fn crr(
    opts: &BenchOptions,
    topo: &Topology,
    cgroup: Option<&Path>,
    target: SocketAddrV4,
) -> Result<(f64, f64)> {
    let r = tools::spawn_client(
        &opts.exe,
        cgroup,
        &topo.pods[0].ns,
        &ClientOptions {
            target,
            udp: false,
            count: u64::MAX,
            duration: Some(opts.crr_window),
            verbose: true,
        },
    )?;
    if !r.errors.is_empty() {
        bail!(
            "CRR to {target}: {} failed requests ({:?})",
            r.errors.len(),
            r.errors.first()
        );
    }
    Ok((r.rate, r.p50_us() as f64))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Results, keyed as in `target/bench/datapath.json`.
#[derive(Debug, Default)]
pub struct BenchResults {
    pub policy_ns: BTreeMap<u32, f64>,
    pub policy_established_ns: BTreeMap<u32, f64>,
    pub lb_ns: BTreeMap<u32, f64>,
    pub lb_established_ns: BTreeMap<u32, f64>,
    pub passthrough_ns: f64,
    /// Pass-through timed with single runs (the floor of the LB figures).
    pub passthrough_single_ns: f64,
    pub crr_weft: BTreeMap<u32, f64>,
    pub crr_iptables: BTreeMap<u32, f64>,
    pub crr_direct: f64,
    pub crr_p50_us_weft: BTreeMap<u32, f64>,
    pub crr_p50_us_iptables: BTreeMap<u32, f64>,
    pub crr_p50_us_direct: f64,
}

pub fn run(opts: &BenchOptions) -> Result<BenchResults> {
    let mut res = BenchResults::default();
    for &n in &opts.policy_sizes {
        let (new_conn, established) = policy_ns(n, opts.repeat)?;
        eprintln!("policy {n:>7} entries: {new_conn:.1} ns (new connection), {established:.1} ns (established)");
        res.policy_ns.insert(n, new_conn);
        res.policy_established_ns.insert(n, established);
    }
    res.passthrough_ns = passthrough_ns(opts.repeat)?;
    eprintln!("pass-through: {:.1} ns", res.passthrough_ns);
    for &n in &opts.lb_sizes {
        let (new_conn, established) = lb_ns(n, opts.repeat)?;
        eprintln!("LB {n:>6} services: {new_conn:.1} ns (new connection), {established:.1} ns (established)");
        res.lb_ns.insert(n, new_conn);
        res.lb_established_ns.insert(n, established);
    }
    res.passthrough_single_ns = passthrough_single_ns(opts.repeat)?;
    eprintln!(
        "pass-through (single runs): {:.1} ns",
        res.passthrough_single_ns
    );

    // CRR topology: pod 0 = client, pods 1..=3 = backends.
    let topo = Topology::new(4)?;
    let backends: Vec<Ipv4Addr> = topo.pods[1..].iter().map(|p| p.ip).collect();
    let _servers: Vec<Server> = (1..=3)
        .map(|i| Server::tcp(&topo.pods[i].ns, 8080, &format!("b{i}")))
        .collect::<std::io::Result<_>>()?;
    topo.pods[0].ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    let pins = PinDir::create("b")?;
    let cg = Cgroup::create("b")?;
    let mut dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        ..DatapathConfig::default()
    })?;
    dp.set_runtime_config(c::Config {
        event_flags: c::EVENTS_ON_DROP,
        ..c::Config::default()
    })?;
    dp.attach_cgroup(cg.path())?;
    let direct_target = SocketAddrV4::new(backends[0], 8080);
    let (mut direct, mut direct_p50) = (Vec::new(), Vec::new());
    let mut have = 0u32;
    for &n in &opts.crr_sizes {
        for i in have..n {
            dp.apply_service(&Service {
                id: i + 1,
                vip: vip(i),
                port: 80,
                proto: c::PROTO_TCP,
                algorithm: LbAlgorithm::Random,
                affinity: None,
                backends: backends
                    .iter()
                    .enumerate()
                    .map(|(j, ip)| Backend {
                        id: (i + 1) * 8 + j as u32,
                        ip: *ip,
                        port: 8080,
                        weight: 1,
                        state: BackendState::Active,
                    })
                    .collect(),
            })?;
        }
        have = have.max(n);
        iptables_restore(&topo, &iptables_rules(n, &backends))?;
        // The last service: the far end of kube-proxy's linear services chain.
        let target = SocketAddrV4::new(vip(n - 1), 80);
        let (mut w, mut w50, mut ipt, mut ipt50) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.crr_rounds {
            let (r, p) = crr(opts, &topo, Some(cg.path()), target)?;
            w.push(r);
            w50.push(p);
            iptables_jump(&topo, true)?;
            let m = crr(opts, &topo, None, target);
            iptables_jump(&topo, false)?;
            let (r, p) = m?;
            ipt.push(r);
            ipt50.push(p);
            let (r, p) = crr(opts, &topo, None, direct_target)?;
            direct.push(r);
            direct_p50.push(p);
        }
        let (w, ipt) = (median(w), median(ipt));
        let (w50, ipt50) = (median(w50), median(ipt50));
        eprintln!(
            "CRR {n:>5} services: weft {w:.0}/s (p50 {w50:.0} us), iptables {ipt:.0}/s (p50 {ipt50:.0} us)"
        );
        res.crr_weft.insert(n, w);
        res.crr_iptables.insert(n, ipt);
        res.crr_p50_us_weft.insert(n, w50);
        res.crr_p50_us_iptables.insert(n, ipt50);
    }
    res.crr_direct = median(direct);
    res.crr_p50_us_direct = median(direct_p50);
    eprintln!(
        "CRR direct: {:.0}/s (p50 {:.0} us)",
        res.crr_direct, res.crr_p50_us_direct
    );
    Ok(res)
}
