//! `node-agent bench-datapath`: the datapath benchmark behind `cargo xtask bench datapath`.
//!
//! 1. ns/packet of the tc programs with `BPF_PROG_TEST_RUN` (the kernel's own average over
//!    `repeat` runs): policy with 10 / 10,000 / 100,000 entries, the pass-through floor.
//! 2. TCP connect-request-response rate from a client pod to service VIPs with 10 / 1,000 /
//!    5,000 / 20,000 services: Weft's socket LB vs iptables rules of kube-proxy's shape in
//!    both iptables backends (legacy and nft, inside the node namespace) vs straight to a
//!    backend; interleaved rounds in one topology, median of the rounds.
//!
//! 3. Pod to pod across two nodes ([`nodes`]): TCP throughput and CRR through the VXLAN
//!    tunnel vs native routing vs the bare underlay.
//!
//! Everything runs in namespaces, a cgroup and a pin directory created here and removed at
//! the end.

mod dns;
pub mod l7;
mod nodes;

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
    /// Concurrent connection loops of the CRR client.
    pub crr_parallel: usize,
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

const TRIALS: u32 = 20;

/// No events (a million start events would only measure ring-buffer overflow); with zero
/// timeouts every run finds an expired conntrack entry, so every run is a new connection.
fn bench_config(new_connections: bool) -> c::Config {
    if new_connections {
        c::Config {
            ct_tcp_timeout_s: 0,
            ct_syn_timeout_s: 0,
            ct_udp_timeout_s: 0,
            ct_close_timeout_s: 0,
            event_flags: 0,
            ..c::Config::default()
        }
    } else {
        c::Config {
            event_flags: 0,
            ..c::Config::default()
        }
    }
}

/// A datapath prepared for one measurement: the program and packet to time.
struct Subject {
    dp: Datapath,
    _pins: PinDir,
    prog: &'static str,
    pkt: Vec<u8>,
}

impl Subject {
    fn dp_config(&self, cfg: c::Config) -> Result<()> {
        // The config map is an array: writable through a shared handle of the pinned map.
        let mut maps = node_agent::datapath::Maps::open_pinned(self._pins.path())?;
        maps.config.set(0, cfg, 0)?;
        Ok(())
    }
}

/// Policy with `n` entries: n distinct peer identities allowed on TCP 80 for one endpoint;
/// the packet's peer is one of them.
fn policy_subject(n: u32) -> Result<Subject> {
    let pins = PinDir::create("b")?;
    let mut dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        sizes: sizes_for(n),
        ..DatapathConfig::default()
    })?;
    dp.apply_endpoint(&Endpoint {
        id: 1,
        ip: EP,
        ip6: None,
        identity: 1000,
        ifindex: 0,
        enforce_ingress: true,
        enforce_egress: true,
    })?;
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
    Ok(Subject {
        _pins: pins,
        dp,
        prog: c::progs::FROM_ENDPOINT,
        pkt: packet(EP, PEER, 40000, 80),
    })
}

/// North-south LB with `n` services of 3 backends (random); the packet goes to the last one.
fn lb_subject(n: u32) -> Result<Subject> {
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
            vip: vip(i).into(),
            port: 80,
            proto: c::PROTO_TCP,
            algorithm: LbAlgorithm::Random,
            affinity: None,
            backends: (0..3)
                .map(|j| Backend {
                    id: (i + 1) * 4 + j,
                    ip: Ipv4Addr::new(10, 0, 1, 2 + j as u8).into(),
                    port: 8080,
                    weight: 1,
                    state: BackendState::Active,
                })
                .collect(),
        })?;
    }
    Ok(Subject {
        _pins: pins,
        dp,
        prog: c::progs::LB_INGRESS,
        pkt: packet(Ipv4Addr::new(192, 0, 2, 7), vip(n - 1), 40000, 80),
    })
}

fn pass_subject() -> Result<Subject> {
    let pins = PinDir::create("b")?;
    let dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        ..DatapathConfig::default()
    })?;
    Ok(Subject {
        _pins: pins,
        dp,
        prog: c::progs::PASS,
        pkt: packet(EP, PEER, 40000, 80),
    })
}

/// In-kernel average ns/run of each subject over `repeat` runs: `TRIALS` trials of
/// `repeat / TRIALS` runs, the subjects interleaved trial by trial (so load changes on the
/// machine hit all sizes alike), keeping each subject's fastest trial. One discarded warm-up
/// trial each. Fails if a program drops its packet.
fn averaged(subjects: &[&Subject], repeat: u32) -> Result<Vec<f64>> {
    let per_trial = (repeat / TRIALS).max(1);
    let mut best = vec![f64::MAX; subjects.len()];
    for trial in 0..=TRIALS {
        for (i, s) in subjects.iter().enumerate() {
            let r = s.dp.test_run(s.prog, &s.pkt, per_trial)?;
            if r.retval != 0 {
                bail!(
                    "{} dropped the benchmark packet (retval {})",
                    s.prog,
                    r.retval
                );
            }
            if trial > 0 {
                best[i] = best[i].min(r.duration_ns as f64);
            }
        }
    }
    Ok(best)
}

/// Median ns of `runs` single runs per subject, each on a fresh copy of its packet (for
/// programs that rewrite the packet, which `BPF_PROG_TEST_RUN` reuses across repetitions),
/// subjects interleaved in chunks.
fn single_runs(subjects: &[&Subject], runs: u32) -> Result<Vec<f64>> {
    let chunk = (runs / TRIALS).max(1);
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(runs as usize); subjects.len()];
    for trial in 0..=TRIALS {
        for (i, s) in subjects.iter().enumerate() {
            for _ in 0..chunk {
                let r = s.dp.test_run(s.prog, &s.pkt, 1)?;
                if r.retval != 0 {
                    bail!(
                        "{} dropped the benchmark packet (retval {})",
                        s.prog,
                        r.retval
                    );
                }
                if trial > 0 {
                    samples[i].push(r.duration_ns as f64);
                }
            }
        }
    }
    Ok(samples.into_iter().map(median).collect())
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

/// The two iptables backends kube-proxy runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Iptables {
    /// x_tables (`iptables-legacy`): rules are walked linearly per packet.
    Legacy,
    /// nf_tables (`iptables-nft`): the same rules translated to nftables.
    Nft,
}

impl Iptables {
    fn cmd(self) -> &'static str {
        match self {
            Iptables::Legacy => "iptables-legacy",
            Iptables::Nft => "iptables-nft",
        }
    }
}

fn iptables_restore(topo: &Topology, backend: Iptables, rules: &str) -> Result<()> {
    let restore = format!("{}-restore", backend.cmd());
    let mut child = topo
        .node
        .command(&restore)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {restore} (apt-get install iptables)"))?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{restore} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn iptables_jump(topo: &Topology, backend: Iptables, on: bool) -> Result<()> {
    let op = if on { "-I" } else { "-D" };
    topo.node
        .exec(&[
            backend.cmd(),
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

/// One CRR window of `parallel` loops: (connections per second, median latency in µs).
fn crr(
    opts: &BenchOptions,
    topo: &Topology,
    cgroup: Option<&Path>,
    target: SocketAddrV4,
    parallel: usize,
) -> Result<(f64, f64)> {
    let r = tools::spawn_client(
        &opts.exe,
        cgroup,
        &topo.pods[0].ns,
        &ClientOptions {
            target: target.into(),
            udp: false,
            count: u64::MAX,
            duration: Some(opts.crr_window),
            verbose: true,
            parallel,
        },
    )?;
    // A rare lost SYN (1 s retransmit > the client's timeout) under concurrent load is
    // noise; more than 0.1% failed requests means the path is broken.
    let ok = r.answers.len();
    if r.errors.len() * 1000 > ok.max(1) {
        bail!(
            "CRR to {target}: {} of {} requests failed ({:?})",
            r.errors.len(),
            ok + r.errors.len(),
            r.errors.first()
        );
    }
    if !r.errors.is_empty() {
        eprintln!(
            "CRR to {target}: {} of {} requests timed out (counted as not done)",
            r.errors.len(),
            ok + r.errors.len()
        );
    }
    Ok((r.rate, r.p50_us() as f64))
}

/// The datapath with default map sizes pinned in `pins`, flow events for drops only (as a
/// node runs it, without the cost of an event per forwarded packet).
fn drop_events_datapath(pins: &PinDir) -> Result<Datapath> {
    let mut dp = Datapath::load(DatapathConfig {
        pin_path: pins.path().to_path_buf(),
        ..DatapathConfig::default()
    })?;
    dp.set_runtime_config(c::Config {
        event_flags: c::EVENTS_ON_DROP,
        ..c::Config::default()
    })?;
    Ok(dp)
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
    /// Legacy iptables (x_tables).
    pub crr_iptables: BTreeMap<u32, f64>,
    /// iptables-nft (nf_tables).
    pub crr_iptables_nft: BTreeMap<u32, f64>,
    pub crr_direct: f64,
    pub crr_p50_us_weft: BTreeMap<u32, f64>,
    pub crr_p50_us_iptables: BTreeMap<u32, f64>,
    pub crr_p50_us_iptables_nft: BTreeMap<u32, f64>,
    pub crr_p50_us_direct: f64,
    /// One client loop (latency-bound): connections per second.
    pub crr_serial_weft: BTreeMap<u32, f64>,
    pub crr_serial_iptables: BTreeMap<u32, f64>,
    pub crr_serial_iptables_nft: BTreeMap<u32, f64>,
    pub crr_serial_direct: f64,
    pub cross_node: nodes::CrossNode,
}

/// Per-size figures of one sweep, and the pass-through subject's.
struct Sweep {
    new: BTreeMap<u32, f64>,
    established: BTreeMap<u32, f64>,
    /// Measured last (the established-connection round), as the report has always used.
    passthrough: f64,
}

/// Measures each subject (one per size, and the pass-through subject last) for new and for
/// established connections.
fn sweep(
    subjects: &[Subject],
    pass: &Subject,
    sizes: &[u32],
    measure: impl Fn(&[&Subject]) -> Result<Vec<f64>>,
) -> Result<Sweep> {
    let (mut new, mut established, mut passthrough) = (BTreeMap::new(), BTreeMap::new(), 0.0);
    for new_conn in [true, false] {
        for s in subjects {
            s.dp_config(bench_config(new_conn))?;
        }
        let mut all: Vec<&Subject> = subjects.iter().collect();
        all.push(pass);
        let ns = measure(&all)?;
        let target = if new_conn { &mut new } else { &mut established };
        for (i, &n) in sizes.iter().enumerate() {
            target.insert(n, ns[i]);
        }
        passthrough = ns[ns.len() - 1];
    }
    Ok(Sweep {
        new,
        established,
        passthrough,
    })
}

pub fn run(opts: &BenchOptions) -> Result<BenchResults> {
    let mut res = BenchResults::default();
    let pass = pass_subject()?;
    let policy: Vec<Subject> = opts
        .policy_sizes
        .iter()
        .map(|&n| policy_subject(n))
        .collect::<Result<_>>()?;
    let p = sweep(&policy, &pass, &opts.policy_sizes, |all| {
        averaged(all, opts.repeat)
    })?;
    (res.policy_ns, res.policy_established_ns, res.passthrough_ns) =
        (p.new, p.established, p.passthrough);
    for &n in &opts.policy_sizes {
        eprintln!(
            "policy {n:>7} entries: {:.1} ns (new connection), {:.1} ns (established)",
            res.policy_ns[&n], res.policy_established_ns[&n]
        );
    }
    eprintln!("pass-through: {:.1} ns", res.passthrough_ns);
    drop(policy);

    let lb: Vec<Subject> = opts
        .lb_sizes
        .iter()
        .map(|&n| lb_subject(n))
        .collect::<Result<_>>()?;
    let l = sweep(&lb, &pass, &opts.lb_sizes, |all| {
        single_runs(all, opts.repeat)
    })?;
    (res.lb_ns, res.lb_established_ns, res.passthrough_single_ns) =
        (l.new, l.established, l.passthrough);
    for &n in &opts.lb_sizes {
        eprintln!(
            "LB {n:>6} services: {:.1} ns (new connection), {:.1} ns (established)",
            res.lb_ns[&n], res.lb_established_ns[&n]
        );
    }
    eprintln!(
        "pass-through (single runs): {:.1} ns",
        res.passthrough_single_ns
    );
    drop(lb);

    // CRR topology: pod 0 = client, pods 1..=3 = backends.
    let topo = Topology::new(4)?;
    let backends: Vec<Ipv4Addr> = topo.pods[1..].iter().map(|p| p.ip).collect();
    let _servers: Vec<Server> = (1..=3)
        .map(|i| Server::tcp(&topo.pods[i].ns, 8080, &format!("b{i}")))
        .collect::<std::io::Result<_>>()?;
    topo.pods[0].ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    let pins = PinDir::create("b")?;
    let cg = Cgroup::create("b")?;
    let mut dp = drop_events_datapath(&pins)?;
    dp.attach_cgroup(cg.path())?;
    let direct_target = SocketAddrV4::new(backends[0], 8080);
    let (mut direct, mut direct_p50, mut direct_serial) = (Vec::new(), Vec::new(), Vec::new());
    let mut have = 0u32;
    for &n in &opts.crr_sizes {
        for i in have..n {
            dp.apply_service(&Service {
                id: i + 1,
                vip: vip(i).into(),
                port: 80,
                proto: c::PROTO_TCP,
                algorithm: LbAlgorithm::Random,
                affinity: None,
                backends: backends
                    .iter()
                    .enumerate()
                    .map(|(j, ip)| Backend {
                        id: (i + 1) * 8 + j as u32,
                        ip: (*ip).into(),
                        port: 8080,
                        weight: 1,
                        state: BackendState::Active,
                    })
                    .collect(),
            })?;
        }
        have = have.max(n);
        let rules = iptables_rules(n, &backends);
        for backend in [Iptables::Legacy, Iptables::Nft] {
            let t = std::time::Instant::now();
            iptables_restore(&topo, backend, &rules)?;
            eprintln!(
                "{} rules for {n} services loaded in {:.1} s",
                backend.cmd(),
                t.elapsed().as_secs_f64()
            );
        }
        // The last service: the far end of kube-proxy's linear services chain.
        let target = SocketAddrV4::new(vip(n - 1), 80);
        let (mut w, mut w50, mut ipt, mut ipt50) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut ws, mut ipts) = (Vec::new(), Vec::new());
        let (mut nft, mut nft50, mut nfts) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.crr_rounds {
            // Serial windows give the latency; parallel windows the rate the node sustains.
            for parallel in [1, opts.crr_parallel] {
                let (r, p) = crr(opts, &topo, Some(cg.path()), target, parallel)?;
                if parallel == 1 {
                    ws.push(r);
                    w50.push(p);
                } else {
                    w.push(r);
                }
                iptables_jump(&topo, Iptables::Legacy, true)?;
                let m = crr(opts, &topo, None, target, parallel);
                iptables_jump(&topo, Iptables::Legacy, false)?;
                let (r, p) = m?;
                if parallel == 1 {
                    ipts.push(r);
                    ipt50.push(p);
                } else {
                    ipt.push(r);
                }
                iptables_jump(&topo, Iptables::Nft, true)?;
                let m = crr(opts, &topo, None, target, parallel);
                iptables_jump(&topo, Iptables::Nft, false)?;
                let (r, p) = m?;
                if parallel == 1 {
                    nfts.push(r);
                    nft50.push(p);
                } else {
                    nft.push(r);
                }
                let (r, p) = crr(opts, &topo, None, direct_target, parallel)?;
                if parallel == 1 {
                    direct_serial.push(r);
                    direct_p50.push(p);
                } else {
                    direct.push(r);
                }
            }
        }
        let (w, ipt) = (median(w), median(ipt));
        let (w50, ipt50) = (median(w50), median(ipt50));
        let (ws, ipts) = (median(ws), median(ipts));
        let (nft, nft50, nfts) = (median(nft), median(nft50), median(nfts));
        eprintln!(
            "CRR {n:>5} services: weft {w:.0}/s, iptables-legacy {ipt:.0}/s, iptables-nft {nft:.0}/s ({} loops); one loop: weft {ws:.0}/s (p50 {w50:.0} us), legacy {ipts:.0}/s (p50 {ipt50:.0} us), nft {nfts:.0}/s (p50 {nft50:.0} us)",
            opts.crr_parallel
        );
        res.crr_iptables_nft.insert(n, nft);
        res.crr_p50_us_iptables_nft.insert(n, nft50);
        res.crr_serial_iptables_nft.insert(n, nfts);
        res.crr_weft.insert(n, w);
        res.crr_iptables.insert(n, ipt);
        res.crr_p50_us_weft.insert(n, w50);
        res.crr_p50_us_iptables.insert(n, ipt50);
        res.crr_serial_weft.insert(n, ws);
        res.crr_serial_iptables.insert(n, ipts);
    }
    res.crr_direct = median(direct);
    res.crr_p50_us_direct = median(direct_p50);
    res.crr_serial_direct = median(direct_serial);
    eprintln!(
        "CRR direct: {:.0}/s; one loop {:.0}/s (p50 {:.0} us)",
        res.crr_direct, res.crr_serial_direct, res.crr_p50_us_direct
    );
    drop(topo);
    res.cross_node = nodes::run(opts)?;
    Ok(res)
}
