//! `node-agent sim`: thousands of simulated agents in one process, speaking the real
//! protocol to the control plane (registration with a join token, TLS when the URL is
//! `https://`, a `Sync` stream per agent on its own connection, endpoint and health
//! reports, acks) and running the agent's own decode and diff of every message, with a
//! [`agent::Recorder`] in place of the BPF maps. For the propagation benchmark and the
//! fleet tests: what one change costs the control plane with N agents connected.
//!
//! One fleet per join token (`--agents` each). Progress is a [`Progress`] per fleet,
//! printed by the command as one JSON line whenever it moves:
//! `{"fleet":0,"agents":1000,"registered":1000,"received":42,"acked":42,…}` where
//! `received`/`acked` are the revisions every agent of the fleet has reached.

mod agent;
mod progress;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weft_proto::v1 as pb;

pub use agent::Recorder;
pub use progress::{Progress, Watermark};

use crate::control::Registration;

/// Options of `node-agent sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Agent service URL; repeated, agent `i` starts at URL `i mod n` and moves to the next
    /// one whenever its session fails.
    #[arg(long = "control-plane", required = true)]
    pub control_planes: Vec<String>,
    /// Join token of a fleet; repeated, one fleet of `--agents` per token.
    #[arg(long = "join-token", required = true, hide_env_values = true)]
    pub join_tokens: Vec<String>,
    /// Agents per fleet.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Endpoints each agent reports (labels `app=app-<k mod 10>`).
    #[arg(long, default_value_t = 10)]
    pub endpoints_per_node: usize,
    /// PEM certificate of the agent service (or its CA), for `https://` URLs.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Registrations in flight at once, over all fleets.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds between each agent's health reports.
    #[arg(long, default_value_t = 30)]
    pub health_interval_secs: u64,
    /// HTTP/2 keepalive interval and timeout of each agent's connection, seconds (the
    /// agent's own is 5: thousands of simulated agents on a few shared cores answer pings
    /// late without any partition).
    #[arg(long, default_value_t = 60)]
    pub keepalive_secs: u64,
    /// Node names are `<prefix>-<i>`.
    #[arg(long, default_value = "sim")]
    pub name_prefix: String,
    /// The capability version the agents announce: a lower one simulates agents of an
    /// older release (the control plane sends them only what that version reads).
    #[arg(long, env = "WEFT_SIM_CAPABILITY_VERSION", default_value_t = weft_proto::CAPABILITY_VERSION)]
    pub capability_version: u32,
}

/// A running fleet: its progress; the agents stop when it is dropped.
pub struct Fleet {
    pub progress: tokio::sync::watch::Receiver<Progress>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Waits until `done` holds for the fleet's progress or `within` passes; the progress
    /// then.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        done: impl FnMut(&Progress) -> bool,
    ) -> Result<Progress, Progress> {
        let waited = tokio::time::timeout(within, self.progress.wait_for(done))
            .await
            .map(|r| r.map(|p| p.clone()));
        match waited {
            Ok(Ok(p)) => Ok(p),
            _ => Err(self.progress.borrow().clone()),
        }
    }
}

/// The i-th endpoint address of a fleet: 10.0.0.1 onwards, skipping .0 and .251–.255.
fn endpoint_ip(k: usize) -> Ipv4Addr {
    let k = k as u32;
    Ipv4Addr::new(
        10,
        (k / 62_500) as u8,
        ((k / 250) % 250) as u8,
        (k % 250 + 1) as u8,
    )
}

/// Node `i`'s address, in 100.64.0.0/10.
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i as u32)
}

fn node(args: &SimArgs, i: usize) -> agent::Node {
    let name = format!("{}-{i}", args.name_prefix);
    let endpoints = (0..args.endpoints_per_node)
        .map(|e| {
            let k = i * args.endpoints_per_node + e;
            pb::ReportedEndpoint {
                name: format!("ep-{i}-{e}"),
                labels: [("app".to_string(), format!("app-{}", k % 10))].into(),
                ips: vec![endpoint_ip(k).to_string()],
                named_ports: Vec::new(),
            }
        })
        .collect();
    agent::Node {
        index: i,
        registration: Registration {
            state_dir: PathBuf::new(),
            join_token: None,
            node_name: Some(name),
            addresses: vec![node_ip(i).to_string()],
            labels: vec![("weft.sim".into(), "true".into())],
            pod_cidrs: Vec::new(),
        },
        endpoints: pb::EndpointReport { endpoints },
    }
}

/// Starts one fleet per join token (in the calling runtime).
pub fn start(args: &SimArgs) -> Vec<Fleet> {
    let registering = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    args.join_tokens
        .iter()
        .map(|token| {
            let (tracker, progress) = progress::Tracker::new(args.agents);
            let (all_tx, all_rx) = tokio::sync::watch::channel(args.agents == 0);
            let shared = Arc::new(agent::Shared {
                urls: args.control_planes.clone(),
                ca_cert: args.ca_cert.clone(),
                join_token: token.clone(),
                health_interval: Duration::from_secs(args.health_interval_secs.max(1)),
                keepalive: Duration::from_secs(args.keepalive_secs.max(1)),
                capability_version: args.capability_version,
                tracker,
                registering: registering.clone(),
                all_registered: all_rx,
            });
            let mut tasks: Vec<_> = (0..args.agents)
                .map(|i| tokio::spawn(agent::run(shared.clone(), node(args, i))))
                .collect();
            let mut watch = progress.clone();
            let agents = args.agents;
            tasks.push(tokio::spawn(async move {
                if watch.wait_for(|p| p.registered >= agents).await.is_ok() {
                    all_tx.send_replace(true);
                    // Keep the sender: its drop would read as "never".
                    std::future::pending::<()>().await;
                }
            }));
            Fleet { progress, tasks }
        })
        .collect()
}

/// `node-agent sim`: runs the fleets until `shutdown`, printing each fleet's progress to
/// `out` as a JSON line whenever it moves.
pub async fn run(
    args: SimArgs,
    mut out: impl Write,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let fleets = start(&args);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (n, f) in fleets.iter().enumerate() {
        let mut watch = f.progress.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                let p = watch.borrow_and_update().clone();
                if tx.send((n, p)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some((n, p)) = got else { return Ok(()) };
                let mut line = serde_json::to_value(&p).map_err(std::io::Error::other)?;
                line["fleet"] = n.into();
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct() {
        let ips: std::collections::BTreeSet<_> = (0..200_000).map(endpoint_ip).collect();
        assert_eq!(ips.len(), 200_000);
        assert!(ips.iter().all(|ip| ip.octets()[3] != 0));
        assert_eq!(node_ip(0), Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(node_ip(256), Ipv4Addr::new(100, 64, 1, 1));
    }
}
