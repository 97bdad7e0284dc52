//! `node-agent`: the Weft node agent.
//!
//! Today: node-local debug commands over the pinned datapath maps (`node-agent bpf ...`),
//! `datapath up` to load/attach the datapath on given interfaces and cgroup, and hidden helpers
//! for tests and the benchmark.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use node_agent::datapath::{Datapath, DatapathConfig, Maps};
use node_agent::{debug, tools};

#[derive(Parser)]
#[command(name = "node-agent", version, about = "Weft node agent")]
struct Cli {
    /// bpffs directory holding the pinned datapath maps and links.
    #[arg(
        long,
        env = "WEFT_BPF_PIN_PATH",
        default_value = "/sys/fs/bpf/weft",
        global = true
    )]
    pin_path: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    },
    /// (test helper) TCP/UDP client running inside a cgroup and network namespace.
    #[command(hide = true)]
    DebugClient {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<PathBuf>,
        #[arg(long)]
        target: SocketAddrV4,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long)]
        duration_ms: Option<u64>,
        #[arg(long)]
        udp: bool,
        #[arg(long)]
        verbose: bool,
    },
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

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "node_agent=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
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
            };
            print!("{out}");
        }
        Cmd::Datapath { interfaces, cgroup } => {
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
        }
        Cmd::DebugClient {
            cgroup,
            netns,
            target,
            count,
            duration_ms,
            udp,
            verbose,
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
                },
            )?;
        }
    }
    Ok(())
}
