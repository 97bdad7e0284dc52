//! Test workloads and probes of `weft connectivity test`, run by the agent from its desired
//! state.
//!
//! - A workload is a network namespace the agent creates (named from a prefix, the node
//!   and the workload: [`netns_name`]) with an echo server ([`echo`]) on each of its ports.
//!   A `pod` is then made one of the node's endpoints through the same
//!   [`Manager::add`] as `node-agent endpoint add` (identity, policy, flows); a `world`
//!   workload gets the same veth plumbing ([`plumb::ensure`]) but no endpoint and no
//!   datapath, so the datapath sees its traffic as coming from outside.
//! - Reconciling is level-triggered and off the sync path: [`Workloads::run`] follows the
//!   latest desired lists (a `watch`), compares them with what it made ([`plan`]) and
//!   retries failures with backoff. What it made is recorded in `workloads.json` before it
//!   is made, so a restarted agent finds it again: still desired, it is ensured (namespaces
//!   and endpoints usually survived; echo servers are started again); no longer desired, it
//!   is removed.
//! - Probes ([`probe`]) run once per id, concurrently (bounded), as child processes in the
//!   workload's namespace (or the node's) and the node's socket-LB cgroup; results go out
//!   through [`report`]. A probe from a pod waits (up to [`POD_READY_WAIT`]) until the
//!   applied state has the pod's endpoint: before that the datapath drops its traffic.

pub mod echo;
pub mod probe;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};
use weft_model::desired::NodeDesiredState;
use weft_model::labels::Labels;
use weft_model::workload::{DesiredProbe, DesiredWorkload, WorkloadKind};

use crate::control::{Backoff, ItemError};
use crate::endpoint::manager::Manager;
use crate::endpoint::{self, plumb, EndpointError, EndpointSpec, Record as EndpointRecord};
use probe::{ProbeResult, Spawner};
use report::SharedOutbox;

/// Default `--workload-netns-prefix`.
pub const DEFAULT_NETNS_PREFIX: &str = "weft-w-";
/// Default number of probes running at once.
pub const DEFAULT_CONCURRENT_PROBES: usize = 16;
/// Longer namespace names are hashed (they stay readable in `ip netns` otherwise).
const MAX_NETNS_NAME: usize = 64;
const RECORDS: &str = "workloads.json";
/// How long a probe from a pod waits for the pod's endpoint to be programmed (its identity
/// known) before it runs anyway.
pub const POD_READY_WAIT: Duration = Duration::from_secs(30);
/// How often waiting probes are looked at again.
const WAIT_TICK: Duration = Duration::from_millis(200);

/// The namespace of `workload` on `node`: `<prefix><node>.<workload>` (`.` appears in
/// neither name, so two pairs never collide), or `<prefix>` + a hash of both when longer
/// than 64 characters. Unique per machine as long as node names are, or prefixes differ.
pub fn netns_name(prefix: &str, node: &str, workload: &str) -> String {
    let full = format!("{prefix}{node}.{workload}");
    if full.len() <= MAX_NETNS_NAME {
        return full;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes().chain([b'.']).chain(workload.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{prefix}{h:016x}")
}

/// The node side of a world workload's veth: `wld` + the hash an endpoint of that name would
/// have (an endpoint's is `lxc…`: the two never collide).
pub fn world_ifname(name: &str) -> String {
    let lxc = endpoint::host_ifname(name);
    format!("wld{}", &lxc[3..])
}

/// What the desired state asks of this module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub workloads: Vec<DesiredWorkload>,
    pub probes: Vec<DesiredProbe>,
}

impl Desired {
    pub fn of(state: &NodeDesiredState) -> Desired {
        Desired {
            workloads: state.workloads.clone(),
            probes: state.probes.clone(),
        }
    }
}

/// The steps from what runs to what is desired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Made but not desired as it is (gone, or changed: removed, then created again).
    pub remove: Vec<String>,
    /// Desired but not made, changed, or made but not serving (after a restart, or a
    /// failure): created or ensured (every step is idempotent).
    pub create: Vec<DesiredWorkload>,
}

/// Compares the desired workloads with `have` (name -> (spec it was made with, whether its
/// echo servers run in this process)).
pub fn plan(desired: &[DesiredWorkload], have: &BTreeMap<String, (DesiredWorkload, bool)>) -> Plan {
    let by_name: BTreeMap<&str, &DesiredWorkload> =
        desired.iter().map(|w| (w.name.as_str(), w)).collect();
    let remove = have
        .iter()
        .filter(|(name, (spec, _))| by_name.get(name.as_str()) != Some(&spec))
        .map(|(name, _)| name.clone())
        .collect();
    let create = desired
        .iter()
        .filter(|w| match have.get(&w.name) {
            Some((spec, serving)) => spec != *w || !serving,
            None => true,
        })
        .cloned()
        .collect();
    Plan { remove, create }
}

/// Why a workload could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("network namespace {netns}: {source}")]
    Netns {
        netns: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("echo server on port {port}: {source}")]
    Echo { port: u16, source: std::io::Error },
    #[error("workload state {path}: {message}")]
    Store { path: String, message: String },
    #[error("worker failed: {0}")]
    Worker(String),
}

/// Settings of [`Workloads`].
#[derive(Debug, Clone)]
pub struct Config {
    /// `--workload-netns-prefix`.
    pub netns_prefix: String,
    pub node_name: String,
    pub state_dir: PathBuf,
    pub probes: Spawner,
    pub concurrent_probes: usize,
}

/// A workload as made and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    spec: DesiredWorkload,
    netns: String,
}

impl Record {
    /// The veth plumbing of a world workload (an endpoint's, without the endpoint).
    fn world(&self) -> EndpointRecord {
        EndpointRecord {
            name: self.spec.name.clone(),
            netns: self.netns.clone(),
            ip: self.spec.ip,
            ip6: self.spec.ip6,
            labels: Labels::new(),
            interface: world_ifname(&self.spec.name),
            named_ports: vec![],
        }
    }
}

/// The agent's test workloads and probes.
pub struct Workloads {
    cfg: Config,
    endpoints: Arc<Manager>,
    records: BTreeMap<String, Record>,
    /// Echo servers of the workloads made (or ensured) by this process.
    serving: BTreeMap<String, Vec<echo::Echo>>,
    /// Last error of each desired workload that could not be made.
    failed: BTreeMap<String, String>,
    outbox: SharedOutbox,
    /// Probe ids started by this process (running or done), while desired.
    started: BTreeSet<String>,
    /// Probes from a pod whose endpoint is not programmed yet: since when.
    waiting: BTreeMap<String, Instant>,
    slots: Arc<Semaphore>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WorkloadError> + Send + 'static,
) -> Result<T, WorkloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(WorkloadError::Worker(e.to_string())))
}

async fn ensure_netns(name: &str) -> Result<(), WorkloadError> {
    let err = |source| WorkloadError::Netns {
        netns: name.to_string(),
        source,
    };
    if !endpoint::netns_path(name).exists() {
        crate::netlink::add_named_netns(name).await.map_err(err)?;
    }
    Ok(())
}

fn delete_netns(name: &str) -> Result<(), WorkloadError> {
    crate::netlink::delete_named_netns(name).map_err(|source| WorkloadError::Netns {
        netns: name.to_string(),
        source,
    })
}

impl Workloads {
    /// Loads what an earlier run recorded (nothing runs until [`Workloads::apply`]).
    pub fn new(
        cfg: Config,
        endpoints: Arc<Manager>,
        outbox: SharedOutbox,
    ) -> Result<Workloads, WorkloadError> {
        let path = cfg.state_dir.join(RECORDS);
        let records: Vec<Record> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WorkloadError::Store {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(WorkloadError::Store {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        };
        let slots = Arc::new(Semaphore::new(cfg.concurrent_probes.max(1)));
        Ok(Workloads {
            cfg,
            endpoints,
            records: records
                .into_iter()
                .map(|r| (r.spec.name.clone(), r))
                .collect(),
            serving: BTreeMap::new(),
            failed: BTreeMap::new(),
            outbox,
            started: BTreeSet::new(),
            waiting: BTreeMap::new(),
            slots,
        })
    }

    /// The namespace (path) of a workload made by this agent.
    pub fn netns_of(&self, name: &str) -> Option<PathBuf> {
        self.records
            .get(name)
            .map(|r| endpoint::netns_path(&r.netns))
    }

    /// Whether the workload's echo servers run.
    pub fn serving(&self, name: &str) -> bool {
        self.serving.contains_key(name)
    }

    fn save(&self) -> Result<(), WorkloadError> {
        let path = self.cfg.state_dir.join(RECORDS);
        let err = |message: String| WorkloadError::Store {
            path: path.display().to_string(),
            message,
        };
        let list: Vec<&Record> = self.records.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| err(e.to_string()))?;
        crate::files::replace_private(&path, &bytes).map_err(|e| err(e.to_string()))
    }

    /// Follows the desired lists until the sender is gone; failures are logged and retried
    /// with backoff (1 s to 30 s).
    pub async fn run(mut self, mut desired: watch::Receiver<Desired>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        loop {
            let d = desired.borrow_and_update().clone();
            let errors = self.apply(&d).await;
            for e in &errors {
                tracing::warn!(item = %e.item, error = %e.message, "test workload not reconciled; retrying");
            }
            if errors.is_empty() {
                backoff.reset();
                if self.waiting.is_empty() {
                    if desired.changed().await.is_err() {
                        return;
                    }
                } else {
                    tokio::select! {
                        r = desired.changed() => if r.is_err() { return },
                        () = tokio::time::sleep(WAIT_TICK) => {}
                    }
                }
            } else {
                tokio::select! {
                    r = desired.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }

    /// One reconcile: removes, creates, then starts the probes not run yet. Returns what
    /// failed (`workload/<name>`).
    pub async fn apply(&mut self, desired: &Desired) -> Vec<ItemError> {
        let have: BTreeMap<String, (DesiredWorkload, bool)> = self
            .records
            .iter()
            .map(|(n, r)| (n.clone(), (r.spec.clone(), self.serving.contains_key(n))))
            .collect();
        let steps = plan(&desired.workloads, &have);
        let mut errors = Vec::new();
        for name in &steps.remove {
            match self.remove(name).await {
                Ok(()) => tracing::info!(workload = %name, "test workload removed"),
                Err(e) => errors.push(ItemError {
                    item: format!("workload/{name}"),
                    message: format!("removing: {e}"),
                }),
            }
        }
        for w in steps.create {
            match self.create(&w).await {
                Ok(()) => {
                    self.failed.remove(&w.name);
                    tracing::info!(workload = %w.name, kind = %w.kind, ip = %w.ip, ports = ?w.echo_ports, "test workload serving");
                }
                Err(e) => {
                    self.failed.insert(w.name.clone(), e.to_string());
                    errors.push(ItemError {
                        item: format!("workload/{}", w.name),
                        message: e.to_string(),
                    });
                }
            }
        }
        self.failed
            .retain(|n, _| desired.workloads.iter().any(|w| &w.name == n));
        self.start_probes(&desired.probes).await;
        errors
    }

    async fn create(&mut self, w: &DesiredWorkload) -> Result<(), WorkloadError> {
        let rec = Record {
            spec: w.clone(),
            netns: netns_name(&self.cfg.netns_prefix, &self.cfg.node_name, &w.name),
        };
        // Recorded before anything is made: a crash half-way leaves it findable.
        if self.records.get(&w.name) != Some(&rec) {
            self.records.insert(w.name.clone(), rec.clone());
            self.save()?;
        }
        let ns = rec.netns.clone();
        ensure_netns(&ns).await?;
        match w.kind {
            WorkloadKind::Pod => {
                self.endpoints
                    .add(EndpointSpec {
                        name: w.name.clone(),
                        netns: rec.netns.clone(),
                        ip: w.ip.to_string(),
                        ip6: w.ip6.map(|a| a.to_string()),
                        labels: w.labels.clone(),
                        named_ports: Vec::new(),
                    })
                    .await?;
            }
            WorkloadKind::World => {
                plumb::ensure(&rec.world(), 0).await?;
            }
        }
        self.serving.remove(&w.name);
        let path = endpoint::netns_path(&rec.netns);
        let mut echos = Vec::new();
        let ports: BTreeSet<u16> = w.echo_ports.iter().copied().collect();
        for port in ports {
            let p = path.clone();
            let l = blocking(move || {
                echo::bind_in(&p, port).map_err(|source| WorkloadError::Echo { port, source })
            })
            .await?;
            echos.push(
                echo::serve(&w.name, l).map_err(|source| WorkloadError::Echo { port, source })?,
            );
        }
        if w.kind == WorkloadKind::World {
            let p = path.clone();
            let sock = blocking(move || {
                echo::bind_dns_in(&p).map_err(|source| WorkloadError::Echo { port: 53, source })
            })
            .await?;
            echos.push(
                echo::serve_dns(&w.name, sock, w.ip, w.ip6)
                    .map_err(|source| WorkloadError::Echo { port: 53, source })?,
            );
        }
        self.serving.insert(w.name.clone(), echos);
        Ok(())
    }

    async fn remove(&mut self, name: &str) -> Result<(), WorkloadError> {
        let Some(rec) = self.records.get(name).cloned() else {
            return Ok(());
        };
        self.serving.remove(name);
        match rec.spec.kind {
            WorkloadKind::Pod => {
                // Only the endpoint this workload made (a hand-made one of the same name
                // lives in another namespace).
                let ours = self
                    .endpoints
                    .list()
                    .await
                    .iter()
                    .any(|e| e.name == name && e.netns == rec.netns);
                if ours {
                    self.endpoints.del(name).await?;
                }
            }
            WorkloadKind::World => {
                plumb::remove(&rec.world()).await?;
            }
        }
        let ns = rec.netns.clone();
        blocking(move || delete_netns(&ns)).await?;
        self.records.remove(name);
        self.save()
    }

    /// Whether probes wait for their pod's endpoint.
    pub fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Starts every desired probe that has not run (nor has a result); forgets ids that
    /// left the desired state.
    async fn start_probes(&mut self, probes: &[DesiredProbe]) {
        let ids: BTreeSet<String> = probes.iter().map(|p| p.id.clone()).collect();
        self.outbox.with(|o| {
            let changed = o.retain_desired(&ids);
            ((), changed)
        });
        self.started.retain(|id| ids.contains(id));
        self.waiting.retain(|id, _| ids.contains(id));
        // Pods whose endpoint the applied state has (with its identity).
        let programmed: BTreeSet<String> = self
            .endpoints
            .list()
            .await
            .into_iter()
            .filter(|e| e.identity.is_some())
            .map(|e| e.name)
            .collect();
        for p in probes {
            if self.started.contains(&p.id) || self.outbox.knows(&p.id) {
                continue;
            }
            if let Some(w) = &p.from_workload {
                let unprogrammed_pod = self.records.get(w).is_some_and(|r| {
                    r.spec.kind == WorkloadKind::Pod
                        && self.serving.contains_key(w)
                        && !programmed.contains(w)
                });
                let since = *self
                    .waiting
                    .entry(p.id.clone())
                    .or_insert_with(Instant::now);
                if unprogrammed_pod && since.elapsed() < POD_READY_WAIT {
                    continue;
                }
                if unprogrammed_pod {
                    tracing::warn!(probe = %p.id, workload = %w, "the pod's endpoint is still not programmed; probing anyway");
                }
            }
            self.waiting.remove(&p.id);
            self.started.insert(p.id.clone());
            let netns = match &p.from_workload {
                None => Ok(None),
                Some(w) => match self.records.get(w) {
                    Some(r) if self.serving.contains_key(w) => {
                        Ok(Some(endpoint::netns_path(&r.netns)))
                    }
                    _ => Err(match self.failed.get(w) {
                        Some(e) => format!("workload {w} could not be started on this node: {e}"),
                        None => format!("workload {w} is not on this node"),
                    }),
                },
            };
            match netns {
                Err(detail) => self.outbox.push(ProbeResult::error(&p.id, detail)),
                Ok(netns) => {
                    let (p, spawner, outbox, slots) = (
                        p.clone(),
                        self.cfg.probes.clone(),
                        self.outbox.clone(),
                        self.slots.clone(),
                    );
                    tokio::spawn(async move {
                        let _slot = slots.acquire_owned().await;
                        let r = spawner.run(&p, netns.as_deref()).await;
                        tracing::info!(probe = %p.id, target = %p.target, from = p.from_workload.as_deref().unwrap_or("node"), outcome = %r.outcome, detail = %r.detail, "probe done");
                        outbox.push(r);
                    });
                }
            }
        }
    }
}

/// Path of a namespace given by name (re-exported for tests and callers).
pub fn netns_path(name: &str) -> PathBuf {
    endpoint::netns_path(name)
}

/// Removes every namespace under `/run/netns` whose name starts with `prefix` (the demo's
/// and tests' cleanup when an agent died without removing its workloads).
pub fn remove_namespaces_with_prefix(prefix: &str) {
    if prefix.is_empty() {
        return;
    }
    if let Ok(dir) = std::fs::read_dir(Path::new("/run/netns")) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                let _ = crate::netlink::delete_named_netns(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn w(name: &str, kind: WorkloadKind, ip: [u8; 4], ports: &[u16]) -> DesiredWorkload {
        DesiredWorkload {
            name: name.into(),
            kind,
            ip: Ipv4Addr::from(ip),
            ip6: None,
            labels: Labels::new(),
            echo_ports: ports.to_vec(),
        }
    }

    fn have(list: &[(&DesiredWorkload, bool)]) -> BTreeMap<String, (DesiredWorkload, bool)> {
        list.iter()
            .map(|(w, s)| (w.name.clone(), ((*w).clone(), *s)))
            .collect()
    }

    fn names(ws: &[DesiredWorkload]) -> Vec<&str> {
        ws.iter().map(|w| w.name.as_str()).collect()
    }

    #[test]
    fn plans_create_missing_remove_stale_and_replace_changed() {
        let a = w("a", WorkloadKind::Pod, [10, 0, 1, 254], &[8080]);
        let b = w("b", WorkloadKind::World, [198, 51, 100, 1], &[80]);
        let c = w("c", WorkloadKind::Pod, [10, 0, 1, 253], &[]);
        // Nothing made yet: everything is created.
        let p = plan(&[a.clone(), b.clone()], &BTreeMap::new());
        assert_eq!(names(&p.create), ["a", "b"]);
        assert!(p.remove.is_empty());
        // All serving as desired: nothing to do.
        let p = plan(&[a.clone(), b.clone()], &have(&[(&a, true), (&b, true)]));
        assert_eq!(p, Plan::default());
        // c is stale; b changed its ports: removed and created again; a stays.
        let b2 = w("b", WorkloadKind::World, [198, 51, 100, 1], &[80, 443]);
        let p = plan(
            &[a.clone(), b2.clone()],
            &have(&[(&a, true), (&b, true), (&c, true)]),
        );
        assert_eq!(p.remove, ["b", "c"]);
        assert_eq!(names(&p.create), ["b"]);
        assert_eq!(p.create[0], b2);
        // After a restart (recorded, not serving): ensured, not removed.
        let p = plan(std::slice::from_ref(&a), &have(&[(&a, false), (&c, false)]));
        assert_eq!(names(&p.create), ["a"]);
        assert_eq!(p.remove, ["c"]);
    }

    #[test]
    fn namespace_names_are_readable_unique_and_bounded() {
        assert_eq!(netns_name("weft-w-", "n1", "echo"), "weft-w-n1.echo");
        assert_ne!(
            netns_name("weft-w-", "n1-a", "b"),
            netns_name("weft-w-", "n1", "a-b")
        );
        let long = "x".repeat(63);
        let a = netns_name("weft-demo-", &long, "echo");
        let b = netns_name("weft-demo-", &long, "echo-2");
        assert!(a.starts_with("weft-demo-") && a.len() == 10 + 16, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, netns_name("weft-demo-", &long, "echo"));
    }

    #[test]
    fn world_interfaces_never_clash_with_endpoint_interfaces() {
        let i = world_ifname("ct-world");
        assert_eq!(i.len(), 15);
        assert!(i.starts_with("wld"));
        assert_ne!(i, endpoint::host_ifname("ct-world"));
        assert_eq!(&i[3..], &endpoint::host_ifname("ct-world")[3..]);
    }
}
