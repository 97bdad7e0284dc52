//! `node-agent`: the Weft node agent.
//!
//! `run` (the agent), `endpoint add|del|list` and `status` (clients of a running agent's
//! node-local API), node-local debug commands over the pinned datapath maps
//! (`node-agent bpf ...`), `datapath` to load/attach the datapath on given interfaces and
//! cgroup, and hidden helpers for tests and the benchmark.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod bench;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use node_agent::datapath::{Datapath, DatapathConfig, Maps};
use node_agent::endpoint::api as endpoint_api;
use node_agent::{debug, endpoint, tools};

#[derive(Parser)]
#[command(name = "node-agent", version, about = "Weft node agent")]
struct Cli {
    /// bpffs directory holding the pinned datapath maps and links.
    #[arg(
        long,
        env = "WEFT_BPF_PIN_PATH",
        default_value = "/sys/fs/bpf/weft",
        visible_alias = "bpf-pin-path",
        global = true
    )]
    pin_path: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register with the control plane (once), then keep the datapath at its desired state.
    Run(Box<node_agent::agent::run::RunArgs>),
    /// Endpoints on this node (CNI-like), through the running agent's node-local API.
    Endpoint {
        /// The agent's API socket (`node-agent run --api-socket`).
        #[arg(long, env = "WEFT_API_SOCKET", default_value = endpoint_api::DEFAULT_SOCKET)]
        api_socket: PathBuf,
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// The running agent's status (endpoints, flow export counters) as JSON.
    Status {
        #[arg(long, env = "WEFT_API_SOCKET", default_value = endpoint_api::DEFAULT_SOCKET)]
        api_socket: PathBuf,
    },
    /// Inspect the datapath maps (read-only).
    Bpf {
        #[command(subcommand)]
        what: BpfCmd,
    },
    /// Load the datapath (reusing pinned maps), attach it to endpoint interfaces and a cgroup,
    /// then exit; pinned links keep it running.
    Datapath {
        /// Host-side endpoint interfaces (in the current network namespace).
        #[arg(long = "interface")]
        interfaces: Vec<String>,
        /// cgroup v2 directory for socket load balancing (never the root cgroup).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// The node's uplink interface for north-south load balancing.
        #[arg(long)]
        uplink: Option<String>,
    },
    /// Simulated agents (no datapath) that speak the real protocol to the control plane;
    /// prints each fleet's progress as JSON lines (the propagation benchmark runs this).
    Sim(node_agent::sim::SimArgs),
    /// (benchmark) `cargo xtask bench datapath` runs this; writes the JSON report.
    #[command(hide = true)]
    BenchDatapath {
        #[arg(long)]
        out: PathBuf,
        /// Smaller sizes and shorter windows (smoke run).
        #[arg(long)]
        quick: bool,
    },
    /// (benchmark) `cargo xtask bench l7` runs this; writes the JSON report.
    #[command(hide = true)]
    BenchL7 {
        #[arg(long)]
        out: PathBuf,
        /// Shorter windows, one round (smoke run).
        #[arg(long)]
        quick: bool,
    },
    /// (demo helper) Forwards TCP from a listener inside a network namespace to an address
    /// reached from this one.
    #[command(hide = true)]
    Forward {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// (agent helper) One probe of `weft connectivity test`: enters `--netns`, connects to
    /// `--target`, sends `--line`, reads the echo, prints the result as JSON. The agent puts
    /// it in the socket-LB cgroup before it starts.
    #[command(hide = true)]
    Probe {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        timeout_ms: u64,
        /// The line sent (the probe id).
        #[arg(long)]
        line: String,
        #[arg(long)]
        netns: Option<PathBuf>,
        /// Send an HTTP request with this method (and `--http-path`) instead of the line.
        #[arg(long, requires = "http_path")]
        http_method: Option<String>,
        #[arg(long, requires = "http_method")]
        http_path: Option<String>,
        /// Resolve this name at `--resolver` (UDP port 53) before connecting.
        #[arg(long, requires = "resolver")]
        resolve: Option<String>,
        #[arg(long, requires = "resolve")]
        resolver: Option<std::net::IpAddr>,
    },
    /// (test helper) TCP/UDP client running inside a cgroup and network namespace.
    #[command(hide = true)]
    DebugClient {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<PathBuf>,
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long)]
        duration_ms: Option<u64>,
        #[arg(long)]
        udp: bool,
        #[arg(long)]
        verbose: bool,
        /// Concurrent request loops.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Create an endpoint: a veth pair into the namespace, its address and routes, the
    /// datapath on the host side; the control plane learns it and gives it an identity.
    /// Repeating the same add is harmless.
    Add {
        /// Endpoint name (a DNS label, unique on the node).
        #[arg(long)]
        name: String,
        /// Network namespace: a name under /run/netns, or a path.
        #[arg(long)]
        netns: String,
        /// The endpoint's address, A.B.C.D/32; repeat with X::Y/128 for dual stack.
        #[arg(long = "ip", required = true)]
        ips: Vec<String>,
        /// Labels, `key=value,key2=value2`.
        #[arg(long, default_value = "")]
        labels: String,
        /// A port the endpoint declares by name, `name=port[/TCP|UDP|SCTP]` (repeatable);
        /// policy rules with `port: "name"` resolve against it.
        #[arg(long = "port", value_name = "NAME=PORT/PROTO")]
        ports: Vec<weft_model::policy::NamedPort>,
    },
    /// Remove an endpoint (its veth pair and datapath attachment); nothing to do if absent.
    Del {
        /// Endpoint name.
        name: String,
    },
    /// The node's endpoints with their identities and desired-state ids.
    List {
        /// `table` or `json`.
        #[arg(short = 'o', long, default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum BpfCmd {
    Endpoint {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    Ipcache {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    Lb {
        #[command(subcommand)]
        cmd: LbCmd,
    },
    Ct {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Packet/byte counters by verdict and drop reason.
    Metrics,
    /// Print flow events from the ring buffer (only when no agent is consuming them).
    Events {
        /// Stop after this many events.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Stop after this many seconds without an event.
        #[arg(long, default_value_t = 5)]
        idle_secs: u64,
    },
}

#[derive(Subcommand)]
enum ListCmd {
    List,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Policy entries of one endpoint id.
    Get { endpoint: u32 },
}

#[derive(Subcommand)]
enum LbCmd {
    List,
    Maglev {
        #[command(subcommand)]
        cmd: MaglevCmd,
    },
}

#[derive(Subcommand)]
enum MaglevCmd {
    /// Maglev table of one service id.
    Get { service: u32 },
}

const LOGS: weft_telemetry::Logs = weft_telemetry::Logs {
    json: false,
    stderr: true,
    default_filter: "node_agent=info",
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Cmd::Probe {
        target,
        timeout_ms,
        line,
        netns,
        http_method,
        http_path,
        resolve,
        resolver,
    } = &cli.cmd
    {
        use weft_model::workload::{HttpProbe, ResolveProbe};
        let req = node_agent::workload::probe::Request {
            id: line.clone(),
            target: *target,
            timeout: Duration::from_millis(*timeout_ms),
            http: http_method
                .clone()
                .zip(http_path.clone())
                .map(|(method, path)| HttpProbe { method, path }),
            resolve: resolve
                .clone()
                .zip(*resolver)
                .map(|(name, server)| ResolveProbe { name, server }),
        };
        // Before anything else: the namespace is entered while this is the only thread.
        let r = node_agent::workload::probe::child_main(&req, netns.as_deref());
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if !matches!(cli.cmd, Cmd::Run(_)) {
        // Short-lived commands: logs only (trace export needs the agent's runtime).
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| LOGS.default_filter.into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.cmd {
        Cmd::Run(mut args) => {
            args.pin_path = cli.pin_path.clone();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                // Traces go to OTEL_EXPORTER_OTLP_ENDPOINT when set; flushed on return.
                let _traces = weft_telemetry::init("node-agent", LOGS);
                node_agent::agent::run::run(*args, shutdown_signal()).await
            })?;
        }
        Cmd::Endpoint { api_socket, cmd } => endpoint_cmd(api_socket, cmd)?,
        Cmd::Status { api_socket } => {
            let client = endpoint_api::Client { socket: api_socket };
            let v = client_runtime()?.block_on(client.status())?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Cmd::Bpf { what } => {
            let maps = Maps::open_pinned(&cli.pin_path).with_context(|| {
                format!("opening the datapath maps under {}", cli.pin_path.display())
            })?;
            let out = match what {
                BpfCmd::Endpoint { cmd: ListCmd::List } => debug::endpoint_list(&maps)?,
                BpfCmd::Ipcache { cmd: ListCmd::List } => debug::ipcache_list(&maps)?,
                BpfCmd::Policy {
                    cmd: PolicyCmd::Get { endpoint },
                } => debug::policy_get(&maps, endpoint)?,
                BpfCmd::Lb { cmd: LbCmd::List } => debug::lb_list(&maps)?,
                BpfCmd::Lb {
                    cmd:
                        LbCmd::Maglev {
                            cmd: MaglevCmd::Get { service },
                        },
                } => debug::maglev_get(&maps, service)?,
                BpfCmd::Ct { cmd: ListCmd::List } => debug::ct_list(&maps)?,
                BpfCmd::Metrics => debug::metrics(&maps)?,
                BpfCmd::Events { count, idle_secs } => {
                    print_events(maps, count, Duration::from_secs(idle_secs))?;
                    String::new()
                }
            };
            print!("{out}");
        }
        Cmd::Datapath {
            interfaces,
            cgroup,
            uplink,
        } => {
            let dp = Datapath::load(DatapathConfig {
                pin_path: cli.pin_path.clone(),
                ..DatapathConfig::default()
            })?;
            for ifname in &interfaces {
                dp.attach_endpoint_interface(ifname)
                    .with_context(|| format!("attaching to {ifname}"))?;
            }
            if let Some(cg) = cgroup {
                dp.attach_cgroup(&cg)
                    .with_context(|| format!("attaching to cgroup {}", cg.display()))?;
            }
            if let Some(ifname) = uplink {
                dp.attach_uplink(&ifname)
                    .with_context(|| format!("attaching to uplink {ifname}"))?;
            }
        }
        Cmd::Sim(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(node_agent::sim::run(
                args,
                std::io::stdout().lock(),
                shutdown_signal(),
            ))
            .context("writing the progress")?;
        }
        Cmd::BenchDatapath { out, quick } => bench_datapath(&out, quick)?,
        Cmd::BenchL7 { out, quick } => {
            let report = bench::l7::run(&bench::l7::L7Options {
                window: Duration::from_millis(if quick { 700 } else { 2000 }),
                rounds: if quick { 1 } else { 5 },
                conns: 4,
            })?;
            let text = serde_json::to_string_pretty(&report)?;
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&out, format!("{text}\n"))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{text}");
        }
        Cmd::Forward { netns, listen, to } => tools::forward(&netns, listen, to)?,
        Cmd::Probe { .. } => unreachable!("handled first"),
        Cmd::DebugClient {
            cgroup,
            netns,
            target,
            count,
            duration_ms,
            udp,
            verbose,
            parallel,
        } => {
            tools::run_client(
                cgroup.as_deref(),
                netns.as_deref(),
                &tools::ClientOptions {
                    target,
                    udp,
                    count,
                    duration: duration_ms.map(Duration::from_millis),
                    verbose,
                    parallel,
                },
            )?;
        }
    }
    Ok(())
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn endpoint_cmd(socket: PathBuf, cmd: EndpointCmd) -> anyhow::Result<()> {
    let client = endpoint_api::Client { socket };
    let rt = client_runtime()?;
    match cmd {
        EndpointCmd::Add {
            name,
            netns,
            ips,
            labels,
            ports,
        } => {
            let (ip, ip6) = endpoint::split_ips(&ips)?;
            let spec = endpoint::EndpointSpec {
                name,
                netns,
                ip,
                ip6,
                labels: endpoint::parse_labels(&labels)?,
                named_ports: ports,
            };
            let v = rt.block_on(client.add(&spec))?;
            println!(
                "endpoint {} added: {} in {} via {} (identity {})",
                v.name,
                v.ip,
                v.netns,
                v.interface,
                v.identity.map_or("pending".to_string(), |i| i.to_string())
            );
        }
        EndpointCmd::Del { name } => {
            if rt.block_on(client.del(&name))? {
                println!("endpoint {name} deleted");
            } else {
                println!("endpoint {name} does not exist: nothing to do");
            }
        }
        EndpointCmd::List { output } => {
            let list = rt.block_on(client.list())?;
            match output {
                OutputFormat::Table => print!("{}", endpoint_api::table(&list)),
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
            }
        }
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down; the datapath keeps enforcing");
}

fn bench_datapath(out: &std::path::Path, quick: bool) -> anyhow::Result<()> {
    let opts = bench::BenchOptions {
        repeat: if quick { 100_000 } else { 1_000_000 },
        policy_sizes: vec![10, 10_000, 100_000],
        lb_sizes: vec![10, 1_000, 10_000],
        crr_sizes: if quick {
            vec![10, 1_000]
        } else {
            vec![10, 1_000, 5_000, 20_000]
        },
        crr_window: Duration::from_millis(if quick { 300 } else { 700 }),
        crr_rounds: if quick { 1 } else { 7 },
        // Enough loops to keep every core busy: the rate is then the node's capacity, not
        // one client's round-trip time.
        crr_parallel: std::thread::available_parallelism().map_or(2, |n| 2 * n.get()),
        exe: std::env::current_exe().context("locating node-agent")?,
    };
    let r = bench::run(&opts)?;
    let map = |m: &std::collections::BTreeMap<u32, f64>| {
        serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.to_string(), serde_json::json!((v * 10.0).round() / 10.0)))
                .collect(),
        )
    };
    let ratio = |a: Option<&f64>, b: Option<&f64>| match (a, b) {
        (Some(a), Some(b)) if *b > 0.0 => serde_json::json!((a / b * 1000.0).round() / 1000.0),
        _ => serde_json::Value::Null,
    };
    let largest = |m: &std::collections::BTreeMap<u32, f64>| m.iter().next_back().map(|(_, v)| *v);
    let smallest = |m: &std::collections::BTreeMap<u32, f64>| m.iter().next().map(|(_, v)| *v);
    let json = serde_json::json!({
        "policy_ns": map(&r.policy_ns),
        "policy_established_ns": map(&r.policy_established_ns),
        "lb_ns": map(&r.lb_ns),
        "lb_established_ns": map(&r.lb_established_ns),
        "passthrough_ns": r.passthrough_ns,
        "passthrough_single_run_ns": r.passthrough_single_ns,
        "crr_per_s": {
            "weft": map(&r.crr_weft),
            "iptables": map(&r.crr_iptables),
            "iptables_nft": map(&r.crr_iptables_nft),
            "direct": (r.crr_direct * 10.0).round() / 10.0,
        },
        "crr_parallel": opts.crr_parallel,
        "crr_serial_per_s": {
            "weft": map(&r.crr_serial_weft),
            "iptables": map(&r.crr_serial_iptables),
            "iptables_nft": map(&r.crr_serial_iptables_nft),
            "direct": (r.crr_serial_direct * 10.0).round() / 10.0,
        },
        "crr_p50_us": {
            "weft": map(&r.crr_p50_us_weft),
            "iptables": map(&r.crr_p50_us_iptables),
            "iptables_nft": map(&r.crr_p50_us_iptables_nft),
            "direct": r.crr_p50_us_direct,
        },
        "ratios": {
            "policy_100000_vs_10": ratio(largest(&r.policy_ns).as_ref(), smallest(&r.policy_ns).as_ref()),
            "lb_10000_vs_10": ratio(largest(&r.lb_ns).as_ref(), smallest(&r.lb_ns).as_ref()),
            "policy_vs_passthrough": ratio(largest(&r.policy_ns).as_ref(), Some(&r.passthrough_ns)),
            "crr_weft_vs_iptables_5000": ratio(r.crr_weft.get(&5000), r.crr_iptables.get(&5000)),
            "crr_weft_vs_iptables_nft_5000": ratio(r.crr_weft.get(&5000), r.crr_iptables_nft.get(&5000)),
            "crr_weft_vs_iptables_nft_20000": ratio(r.crr_weft.get(&20000), r.crr_iptables_nft.get(&20000)),
            "crr_weft_vs_iptables_legacy_20000": ratio(r.crr_weft.get(&20000), r.crr_iptables.get(&20000)),
            "crr_weft_vs_direct_5000": ratio(r.crr_weft.get(&5000), Some(&r.crr_direct)),
            "crr_weft_vs_direct_20000": ratio(r.crr_weft.get(&20000), Some(&r.crr_direct)),
            "crr_weft_vs_direct_min": r.crr_weft.values().copied().reduce(f64::min).map_or(serde_json::Value::Null, |m| ratio(Some(&m), Some(&r.crr_direct))),
            "crr_serial_weft_vs_iptables_5000": ratio(r.crr_serial_weft.get(&5000), r.crr_serial_iptables.get(&5000)),
            "crr_serial_weft_vs_iptables_nft_5000": ratio(r.crr_serial_weft.get(&5000), r.crr_serial_iptables_nft.get(&5000)),
            "crr_p50_iptables_vs_weft_5000": ratio(r.crr_p50_us_iptables.get(&5000), r.crr_p50_us_weft.get(&5000)),
            "crr_p50_iptables_nft_vs_weft_5000": ratio(r.crr_p50_us_iptables_nft.get(&5000), r.crr_p50_us_weft.get(&5000)),
            "crr_p50_iptables_nft_vs_weft_20000": ratio(r.crr_p50_us_iptables_nft.get(&20000), r.crr_p50_us_weft.get(&20000)),
            "cross_node_tunnel_vs_native_gbps": ratio(r.cross_node.gbps.get("tunnel"), r.cross_node.gbps.get("native")),
            "cross_node_native_vs_bare_gbps": ratio(r.cross_node.gbps.get("native"), r.cross_node.gbps.get("bare")),
            "cross_node_tunnel_vs_native_crr": ratio(r.cross_node.crr.get("tunnel"), r.cross_node.crr.get("native")),
            "cross_node_vxlan_vs_bare_gbps": ratio(r.cross_node.gbps.get("vxlan"), r.cross_node.gbps.get("bare")),
            "cross_node_tunnel_vs_vxlan_gbps": ratio(r.cross_node.gbps.get("tunnel"), r.cross_node.gbps.get("vxlan")),
            "cross_node_native_vs_bare_crr": ratio(r.cross_node.crr.get("native"), r.cross_node.crr.get("bare")),
        },
        "cross_node": {
            "gbps": r.cross_node.gbps.iter().map(|(k, v)| (k.to_string(), serde_json::json!((v * 100.0).round() / 100.0))).collect::<serde_json::Map<_, _>>(),
            "crr_per_s": r.cross_node.crr.iter().map(|(k, v)| (k.to_string(), serde_json::json!(v.round()))).collect::<serde_json::Map<_, _>>(),
            "tunnel_pod_mtu": r.cross_node.tunnel_mtu,
        },
        "notes": {
            "policy_ns": "BPF_PROG_TEST_RUN average of weft_from_endpoint for a new allowed TCP connection (expired conntrack entry removed, reply lookup, six policy hash lookups: exact/any identity x port/any port/any protocol, ipcache LPM lookup, conntrack insert), events off; N entries = N peer identities allowed on TCP 80",
            "policy_established_ns": "same packet with conntrack hit (no policy lookup)",
            "policy_method": "minimum over 20 trials of BPF_PROG_TEST_RUN with repeat/20 runs each (1M runs in total) after one warm-up trial; the three sizes and the pass-through interleaved trial by trial",
            "lb_ns": "weft_lb_ingress (north-south tc LB) on a packet to the last of N services (3 backends, random): new connection = LB conntrack miss, backend choice, 2 conntrack inserts, DNAT; median of 1M single BPF_PROG_TEST_RUN calls, sizes interleaved in chunks (the program rewrites the packet, so repetitions within one call would not hit the service); includes the kernel's per-call timing overhead, see passthrough_single_run_ns",
            "lb_established_ns": "same with the LB conntrack hit",
            "crr": "TCP connect+request+response+RST from one client pod to the last-created service VIP; crr_per_s = crr_parallel concurrent loops (2 per core: the rate the node sustains), crr_serial_per_s = one loop (latency-bound); weft, iptables and direct windows interleaved round by round in one topology, median over rounds; iptables = legacy iptables (x_tables), iptables_nft = iptables-nft (nf_tables), the same kube-proxy-shaped chains (KUBE-SERVICES -> KUBE-SVC statistic -> KUBE-SEP DNAT) loaded in both in the node namespace, each one's PREROUTING jump present only during its own windows; crr_p50_us = median per-request latency (robust to interference on a shared machine)",
            "cross_node": "pod to pod across two node namespaces joined by a veth underlay (MTU 1500); bare = native routes without eBPF, native = the same routes with the policy programs on both pods' veths (ingress enforced, the peer identity allowed on TCP), vxlan = the tunnel's routes and MTU without any eBPF (the kernel's VXLAN floor), tunnel = the agent's VXLAN routes, policy programs and identity-on-the-wire programs, pods at the computed MTU; routes made by the agent's routing code; gbps = one TCP stream for 3 CRR windows, crr_per_s = crr_parallel loops; modes interleaved round by round (at least 3 rounds), medians",
            "quick": quick,
        },
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&json)? + "\n")?;
    let rows: Vec<Vec<String>> = vec![
        vec!["policy ns/pkt (new conn)".into(), fmt_map(&r.policy_ns)],
        vec![
            "policy ns/pkt (established)".into(),
            fmt_map(&r.policy_established_ns),
        ],
        vec!["LB ns/pkt (new conn)".into(), fmt_map(&r.lb_ns)],
        vec![
            "LB ns/pkt (established)".into(),
            fmt_map(&r.lb_established_ns),
        ],
        vec![
            "pass-through ns/pkt".into(),
            format!("{:.1}", r.passthrough_ns),
        ],
        vec![
            "pass-through ns/pkt (single runs)".into(),
            format!("{:.1}", r.passthrough_single_ns),
        ],
        vec!["CRR/s weft".into(), fmt_map(&r.crr_weft)],
        vec!["CRR/s iptables-legacy".into(), fmt_map(&r.crr_iptables)],
        vec!["CRR/s iptables-nft".into(), fmt_map(&r.crr_iptables_nft)],
        vec!["CRR p50 us weft".into(), fmt_map(&r.crr_p50_us_weft)],
        vec![
            "CRR p50 us iptables-legacy".into(),
            fmt_map(&r.crr_p50_us_iptables),
        ],
        vec![
            "CRR p50 us iptables-nft".into(),
            fmt_map(&r.crr_p50_us_iptables_nft),
        ],
        vec![
            "CRR p50 us direct".into(),
            format!("{:.0}", r.crr_p50_us_direct),
        ],
        vec![
            "CRR/s direct (no LB)".into(),
            format!("{:.0}", r.crr_direct),
        ],
        vec![
            "pod to pod across nodes, Gbit/s".into(),
            fmt_named(&r.cross_node.gbps, 2),
        ],
        vec![
            "pod to pod across nodes, CRR/s".into(),
            fmt_named(&r.cross_node.crr, 0),
        ],
    ];
    print!("{}", debug::table(&["MEASURE", "BY SIZE"], &rows));
    println!("ratios: {}", json["ratios"]);
    println!("wrote {}", out.display());
    Ok(())
}

fn fmt_named(m: &std::collections::BTreeMap<&str, f64>, decimals: usize) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v:.decimals$}"))
        .collect::<Vec<_>>()
        .join("  ")
}

fn fmt_map(m: &std::collections::BTreeMap<u32, f64>) -> String {
    if m.is_empty() {
        return "not measured".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v:.1}"))
        .collect::<Vec<_>>()
        .join("  ")
}

fn print_events(mut maps: Maps, count: usize, idle: Duration) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut events = maps
        .flow_events()?
        .context("the pinned event ring buffer is missing")?;
    let mut seen = 0;
    while seen < count {
        let mut pfd = libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, idle.as_millis() as i32) };
        if ready <= 0 {
            break;
        }
        for e in events.drain() {
            println!("{}", debug::format_event(&e));
            seen += 1;
            if seen >= count {
                break;
            }
        }
    }
    Ok(())
}
