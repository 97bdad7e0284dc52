//! `node-agent run`: register once, then keep the datapath at the control plane's desired
//! state.
//!
//! - Registration trades the join token for a node credential, stored 0600 in the state
//!   directory (never logged); later starts reuse it and need no token.
//! - `Sync` resumes from the last applied revision (kept in `state.json` beside the
//!   credential); each message is applied through [`Programmed`] and acked with per-item
//!   errors. An invalid message is refused whole and the stream is reopened: the datapath
//!   keeps the last applied state.
//! - `ReportHealth` on an interval while connected.
//! - Endpoints: the node-local API (`--api-socket`) adds and removes them
//!   ([`crate::endpoint`]); the full set is reported with `ReportEndpoints` on every
//!   connect and whenever it changes. Recorded endpoints are restored at start, before the
//!   control plane is reached.
//! - Flows: ring-buffer events are exported with `ReportFlows` ([`super::flows`]).
//! - Test workloads and probes of the desired state are run by [`crate::workload`], off
//!   the sync path (it follows the applied state through a `watch`); results go out with
//!   `ReportProbes`.
//! - On any failure: reconnect with capped exponential backoff and jitter. Nothing is ever
//!   flushed: the pinned maps keep enforcing the last applied state while the control plane
//!   is away.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Code, Status};
use tracing::Instrument;
use weft_proto::v1 as pb;

use super::fqdn;
use super::wire::{Names, Programmed, StateError, SyncMessage, WireError};
use crate::control::{
    self, ensure_registered, uname, Backoff, Client, Control, ControlError, ItemError,
};
use crate::datapath::fqdn::Ttl;
use crate::datapath::{Datapath, DatapathConfig, DatapathError, FlowEventStream, MapSizes};
use crate::endpoint::api::{self as endpoint_api, ApiState};
use crate::endpoint::manager::{lock, Manager, SharedDatapath};
use crate::endpoint::EndpointError;
use crate::flows::{self, FlowQueue, FlowStats};
use crate::routing::{self, Router};
use crate::workload::probe::Spawner;
use crate::workload::report::{self, SharedOutbox};
use crate::workload::{self, Desired, WorkloadError, Workloads};

/// Options of `node-agent run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The control plane's agent service, e.g. `http://127.0.0.1:7443`.
    #[arg(long, env = "WEFT_CONTROL_PLANE")]
    pub control_plane: String,
    /// Join token for the first start; later starts use the credential in the state dir.
    /// Prefer `WEFT_JOIN_TOKEN` or `--join-token-file`: `ps` shows every argument.
    #[arg(long, env = "WEFT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file whose first line is the join token (a missing file is as no token: once
    /// registered, the agent needs none).
    #[arg(long, env = "WEFT_JOIN_TOKEN_FILE", conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// Directory of the node credential and the applied state (created 0700).
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
    /// Node name at registration (default: the host name).
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: Option<String>,
    /// The node's addresses, reported at registration.
    #[arg(long = "address", env = "WEFT_NODE_ADDRESSES", value_delimiter = ',')]
    pub addresses: Vec<String>,
    /// Node labels `key=value`, reported at registration.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Host-side endpoint interfaces to attach the datapath to.
    #[arg(long = "interface")]
    pub interfaces: Vec<String>,
    /// cgroup v2 directory for socket load balancing (never the root cgroup).
    #[arg(long, env = "WEFT_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// PEM certificate of the control plane's agent service (or its CA), trusted for an
    /// `https://` control-plane URL.
    #[arg(long, env = "WEFT_AGENT_CA")]
    pub ca_cert: Option<PathBuf>,
    /// Seconds between health reports.
    #[arg(long, default_value_t = 10)]
    pub health_interval_secs: u64,
    /// Unix socket of the node-local API (`node-agent endpoint ...`), mode 0600.
    #[arg(long, env = "WEFT_API_SOCKET", default_value = endpoint_api::DEFAULT_SOCKET)]
    pub api_socket: Option<PathBuf>,
    /// Flows kept while the control plane is unreachable (the newest; the rest are counted
    /// as lost).
    #[arg(long, default_value_t = flows::DEFAULT_BUFFER)]
    pub flow_buffer: usize,
    /// The node's pod CIDR(s), IPv4 and IPv6, reported at registration: the other nodes
    /// route them to this one, and the control plane allocates test workload addresses from
    /// the first IPv4 one.
    #[arg(long = "pod-cidr", env = "WEFT_POD_CIDRS", value_delimiter = ',')]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Prefix of the network namespaces of test workloads (`<prefix><node>.<workload>`).
    #[arg(long, env = "WEFT_WORKLOAD_NETNS_PREFIX", default_value = crate::workload::DEFAULT_NETNS_PREFIX)]
    pub workload_netns_prefix: String,
    /// Probes of `weft connectivity test` running at once.
    #[arg(long, default_value_t = crate::workload::DEFAULT_CONCURRENT_PROBES)]
    pub concurrent_probes: usize,
    /// How long addresses learned from DNS stay allowed by `toFQDNs`.
    #[command(flatten)]
    pub fqdn: Ttl,
    /// A map's size, `NAME=ENTRIES` (`policy=262144`; names: endpoints, ipcache, policy,
    /// policy-ranges, conntrack, services, backends, maglev-services, events-bytes).
    /// Applied when the maps are created: pinned maps keep their size until the datapath is
    /// removed. A write that does not fit is reported naming the map, and the old state
    /// stays in force.
    #[arg(long = "map-entries", env = "WEFT_MAP_ENTRIES", value_delimiter = ',', value_parser = parse_map_entries)]
    pub map_entries: Vec<(String, u32)>,
    /// bpffs directory of the pinned maps (the global `--pin-path`).
    #[arg(skip)]
    pub pin_path: PathBuf,
}

/// `--join-token`, else the first line of `--join-token-file` if it exists.
fn join_token(args: &RunArgs) -> Result<Option<String>, RunError> {
    match &args.join_token_file {
        Some(path) => token_file(path),
        None => Ok(args.join_token.clone()),
    }
}

fn token_file(path: &Path) -> Result<Option<String>, RunError> {
    match std::fs::read_to_string(path) {
        Ok(text) => match text.lines().next().map(str::trim) {
            Some(t) if !t.is_empty() => Ok(Some(t.to_string())),
            _ => Err(RunError::Config(format!(
                "--join-token-file {} is empty",
                path.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RunError::Io {
            what: format!("reading --join-token-file {}", path.display()),
            source: e,
        }),
    }
}

fn parse_map_entries(s: &str) -> Result<(String, u32), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("map size {s:?} is not NAME=ENTRIES"))?;
    let n: u32 = n
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("map size {s:?}: ENTRIES must be a positive number"))?;
    // Refuses an unknown name now, not at load.
    MapSizes::default().set(name, n)?;
    Ok((name.to_string(), n))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not key=value")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("datapath: {0}")]
    Datapath(#[from] DatapathError),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("control plane: {0}")]
    Rpc(#[from] Status),
    #[error("refused a sync message: {0}")]
    Wire(#[from] WireError),
    #[error("refused a sync message: {0}")]
    Parts(#[from] weft_proto::parts::PartsError),
    #[error("endpoints: {0}")]
    Endpoint(#[from] EndpointError),
    #[error("test workloads: {0}")]
    Workload(#[from] WorkloadError),
}

impl From<weft_proto::parts::StreamError> for RunError {
    fn from(e: weft_proto::parts::StreamError) -> Self {
        match e {
            weft_proto::parts::StreamError::Rpc(s) => RunError::Rpc(s),
            weft_proto::parts::StreamError::Parts(p) => RunError::Parts(p),
        }
    }
}

/// Aborts the agent's background tasks when `run` returns.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

const STATE: &str = "state.json";

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// The L7 proxy in the agent's (the node's) namespace: its device and policy routing, the
/// datapath's hand-off program on the device, and the listeners' registry.
async fn setup_l7_proxy(
    dp: &mut Datapath,
    pin_path: &Path,
    flows: Arc<FlowQueue>,
) -> Result<Arc<std::sync::OnceLock<crate::proxy::dns::Learner>>, String> {
    let rtnl = crate::netlink::Rtnl::current().map_err(|e| e.to_string())?;
    rtnl.ensure_proxy_routing()
        .await
        .map_err(|e| e.to_string())?;
    dp.attach_proxy_device(crate::netlink::proxy::PROXY_DEVICE)
        .map_err(|e| e.to_string())?;
    let proxies = crate::proxy::Proxies::new(pin_path, crate::proxy::DEFAULT_BASE_PORT, flows)?;
    let learner = proxies.learner_slot();
    dp.set_l7_proxy(Box::new(proxies));
    Ok(learner)
}

/// Runs the agent until `shutdown` completes. Errors only for what retrying cannot fix
/// (datapath load, state dir, refused registration); the control plane being away is not
/// one of them.
pub async fn run(args: RunArgs, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    tokio::pin!(shutdown);
    std::fs::create_dir_all(&args.state_dir)
        .map_err(io(format!("creating {}", args.state_dir.display())))?;
    std::fs::set_permissions(
        &args.state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(io(format!("securing {}", args.state_dir.display())))?;
    let mut sizes = MapSizes::default();
    for (name, n) in &args.map_entries {
        sizes.set(name, *n).map_err(RunError::Config)?;
    }
    let mut dp = Datapath::load(DatapathConfig {
        pin_path: args.pin_path.clone(),
        sizes,
        ..DatapathConfig::default()
    })?;
    for ifname in &args.interfaces {
        dp.attach_endpoint_interface(ifname)?;
    }
    if let Some(cg) = &args.cgroup {
        dp.attach_cgroup(cg)?;
    }
    // Flows: read from now on; exported once registered.
    let queue = FlowQueue::new(args.flow_buffer);
    let learner_slot = match setup_l7_proxy(&mut dp, &args.pin_path, queue.clone()).await {
        Ok(slot) => Some(slot),
        Err(e) => {
            // Fail closed: L7 rules then allow nothing, and their acks say why.
            tracing::warn!(error = %e, "no L7 proxy on this node: L7 rules are not programmed");
            None
        }
    };
    dp.set_fqdn_ttl(args.fqdn);
    fqdn::restore(&mut dp, &args.state_dir);
    let state_path = args.state_dir.join(STATE);
    let mut programmed = Programmed::load(&state_path)?.unwrap_or_default();
    tracing::info!(revision = programmed.revision, "applied state loaded");
    // The policy as applied, through this run's proxies and FQDN expansion (idempotent:
    // what the maps hold already is not written again).
    for e in programmed.reprogram_policy(&mut dp) {
        tracing::warn!(item = %e.item, error = %e.message, "could not program");
    }
    let events = dp.flow_events();
    let dp: SharedDatapath = Arc::new(Mutex::new(dp));
    if let Some(slot) = learner_slot {
        let _ = slot.set(fqdn::learner(&dp));
    }
    let (names_tx, names_rx) = tokio::sync::watch::channel(programmed.names());
    let mut tasks = Tasks(Vec::new());
    tasks.0.push(tokio::spawn(fqdn::maintain(
        dp.clone(),
        args.state_dir.clone(),
    )));

    let flow_stats = Arc::new(FlowStats::default());
    match events.map(FlowEventStream::new) {
        Some(Ok(stream)) => tasks.0.push(tokio::spawn(flows::read_events(
            stream,
            queue.clone(),
            names_rx.clone(),
            flow_stats.clone(),
        ))),
        Some(Err(e)) => tracing::warn!(error = %e, "cannot read flow events; no flow export"),
        None => tracing::warn!("the flow event ring buffer is taken; no flow export"),
    }

    // Endpoints: restored before anything else, so the datapath keeps enforcing them.
    let (manager, endpoints_changed) = Manager::new(&args.state_dir, dp.clone(), names_rx)?;
    manager.restore().await;
    let _socket = match &args.api_socket {
        Some(path) => {
            let api = ApiState {
                manager: manager.clone(),
                flows: flow_stats.clone(),
            };
            let task = endpoint_api::serve(path, api).await.map_err(io(format!(
                "serving the node-local API on {}",
                path.display()
            )))?;
            tasks.0.push(task);
            Some(SocketFile(path.clone()))
        }
        None => None,
    };
    // Routes to other nodes' pods: the applied state's, before the control plane is reached.
    let mut router = Router::default();
    apply_routing(&mut router, &manager, &dp, &programmed.applied).await;
    // Test workloads: what the applied state lists is (re)started now, before the control
    // plane is reached (after a restart the resumed stream may bring no snapshot).
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(Desired::of(&programmed.applied));
    let outbox = SharedOutbox::load(&args.state_dir);
    let workloads = Workloads::new(
        workload::Config {
            netns_prefix: args.workload_netns_prefix.clone(),
            node_name: args.node_name.clone().unwrap_or_else(|| uname().1),
            state_dir: args.state_dir.clone(),
            probes: Spawner {
                exe: std::env::current_exe().map_err(io("locating the node-agent executable"))?,
                cgroup: args.cgroup.clone(),
            },
            concurrent_probes: args.concurrent_probes,
        },
        manager.clone(),
        outbox.clone(),
    )?;
    tasks.0.push(tokio::spawn(workloads.run(desired_rx)));
    let channel = control::channel(&args.control_plane, args.ca_cert.as_deref())?;
    let registration = control::Registration {
        state_dir: args.state_dir.clone(),
        join_token: join_token(&args)?,
        node_name: args.node_name.clone(),
        addresses: args.addresses.clone(),
        labels: args.labels.clone(),
        pod_cidrs: args.pod_cidrs.iter().map(|c| c.to_string()).collect(),
    };
    let mut backoff = Backoff::control_plane();
    let mut retry = false;
    let credential = loop {
        let res = tokio::select! {
            r = ensure_registered(&registration, &channel, retry) => r,
            () = &mut shutdown => return Ok(()),
        };
        match res {
            Ok(c) => break c,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "registration failed; retrying");
                retry = true;
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = &mut shutdown => return Ok(()),
        }
    };
    backoff.reset();
    let ring_dp = dp.clone();
    let control = Control::new(channel, credential);
    tasks.0.push(tokio::spawn(flows::export(
        control.clone(),
        queue,
        Arc::new(move || lock(&ring_dp).counters().ok().map(|c| c.lost_events)),
        flow_stats,
    )));
    tasks
        .0
        .push(tokio::spawn(report::report(control.clone(), outbox)));
    let mut session = Session {
        dp,
        programmed: &mut programmed,
        state_path: &state_path,
        last_error: String::new(),
        unsaved: None,
        synced: false,
        health_interval: Duration::from_secs(args.health_interval_secs.max(1)),
        manager,
        endpoints_changed,
        report_pending: false,
        names: names_tx,
        desired: desired_tx,
        router,
    };
    loop {
        session.synced = false;
        let res = tokio::select! {
            r = session.run(&control) => r,
            () = &mut shutdown => return Ok(()),
        };
        match res {
            Ok(()) => tracing::info!("sync stream ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "control plane session failed; enforcing the last applied state");
                session.last_error = e.to_string();
            }
        }
        if session.synced {
            backoff.reset();
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// Removes the API socket when `run` returns.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Session<'a> {
    dp: SharedDatapath,
    programmed: &'a mut Programmed,
    state_path: &'a Path,
    last_error: String,
    /// At least one message was applied in this session (resets the backoff).
    synced: bool,
    health_interval: Duration,
    manager: Arc<Manager>,
    /// Changes whenever the endpoint set does.
    endpoints_changed: tokio::sync::watch::Receiver<u64>,
    /// The last endpoint report failed: retried with the next health report.
    report_pending: bool,
    /// Why the applied state could not be saved (a full disk, say): reported as the node's
    /// error, and the save retried with each health report until it succeeds.
    unsaved: Option<String>,
    /// Publishes what the datapath numbers mean after every apply.
    names: tokio::sync::watch::Sender<Names>,
    /// Publishes the test workloads and probes after every apply.
    desired: tokio::sync::watch::Sender<Desired>,
    router: Router,
}

/// Routes (and the pod MTU that goes with them) to what `state` asks, when that changed;
/// returns what could not be done, also logged.
async fn apply_routing(
    router: &mut Router,
    manager: &Manager,
    dp: &SharedDatapath,
    state: &weft_model::desired::NodeDesiredState,
) -> Vec<ItemError> {
    if !router.changed(state) {
        return Vec::new();
    }
    let (mut errors, applied) = router.apply(state).await;
    if applied.tunnel {
        if let Err(e) = lock(dp).attach_tunnel(routing::TUNNEL_DEVICE) {
            errors.push(routing::item(format!("identity on the wire: {e}")));
        }
    }
    if let Some(mtu) = applied.pod_mtu.filter(|m| *m > 0) {
        errors.extend(
            manager
                .set_pod_mtu(mtu)
                .await
                .into_iter()
                .map(|e| routing::item(format!("pod MTU {mtu}: {e}"))),
        );
    }
    for e in &errors {
        tracing::warn!(item = %e.item, error = %e.message, "could not route");
    }
    errors
}

impl Session<'_> {
    async fn run(&mut self, control: &Control) -> Result<(), RunError> {
        let mut client = control.client();
        let mut stream = weft_proto::parts::Wholes::new(
            client
                .sync(pb::SyncRequest {
                    resume_from_revision: self.programmed.revision,
                    capability_version: weft_proto::CAPABILITY_VERSION,
                })
                .await?
                .into_inner(),
        );
        tracing::info!(resume_from = self.programmed.revision, "sync stream open");
        // Every (re)connect reports the complete endpoint set.
        self.endpoints_changed.borrow_and_update();
        self.report_endpoints(&mut client).await?;
        let mut health = tokio::time::interval(self.health_interval);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    let revision = msg.revision;
                    // The apply joins the trace of the change that caused it, and the ack
                    // carries the apply's context back.
                    let span = tracing::info_span!("agent.apply", revision, errors = tracing::field::Empty);
                    weft_telemetry::TraceParent::adopt_str(&msg.traceparent, &span);
                    // Fail closed: an invalid message changes nothing.
                    let msg = SyncMessage::try_from(msg)?;
                    let mut errors = span.in_scope(|| self.programmed.apply(&mut *lock(&self.dp), msg));
                    errors.extend(
                        apply_routing(&mut self.router, &self.manager, &self.dp, &self.programmed.applied)
                            .instrument(span.clone())
                            .await,
                    );
                    span.record("errors", errors.len());
                    self.names.send_replace(self.programmed.names());
                    let desired = Desired::of(&self.programmed.applied);
                    self.desired.send_if_modified(|d| {
                        let changed = *d != desired;
                        *d = desired;
                        changed
                    });
                    for e in &errors {
                        tracing::warn!(item = %e.item, error = %e.message, "could not program");
                    }
                    self.save();
                    tracing::info!(revision, errors = errors.len(), "applied");
                    self.last_error = errors
                        .first()
                        .map(|e| format!("{}: {}", e.item, e.message))
                        .or_else(|| self.unsaved.clone())
                        .unwrap_or_default();
                    let mut ack = tonic::Request::new(pb::AckRequest {
                        revision,
                        errors: errors.into_iter().map(Into::into).collect(),
                    });
                    if let Some(tp) = weft_telemetry::TraceParent::of(&span) {
                        if let Ok(v) = tp.to_string().parse() {
                            ack.metadata_mut().insert(weft_telemetry::TRACEPARENT, v);
                        }
                    }
                    client.ack(ack).await?;
                    self.synced = true;
                }
                changed = self.endpoints_changed.changed() => {
                    if changed.is_ok() {
                        self.report_endpoints(&mut client).await?;
                    }
                }
                _ = health.tick() => {
                    // Conntrack is not an LRU: expired entries are collected here.
                    match lock(&self.dp).ct_gc() {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(removed = n, "conntrack entries collected"),
                        Err(e) => tracing::warn!(error = %e, "conntrack sweep failed"),
                    }
                    if self.report_pending {
                        self.report_endpoints(&mut client).await?;
                    }
                    if let Some(was) = self.unsaved.clone() {
                        self.save();
                        if self.unsaved.is_none() && self.last_error == was {
                            self.last_error.clear();
                        }
                    }
                    client.report_health(self.health()).await?;
                }
            }
        }
    }

    /// Saves the applied state. A failure changes nothing programmed (enforcement goes on)
    /// and only costs a replay after a restart, but the node says so until a save succeeds.
    fn save(&mut self) {
        match self.programmed.save(self.state_path) {
            Ok(()) => self.unsaved = None,
            Err(e) => {
                tracing::warn!(error = %e, "could not save the applied state");
                self.unsaved = Some(format!("saving the applied state: {e}"));
            }
        }
    }

    /// Sends the endpoint set. A refusal is kept as the node's last error and retried with
    /// the next health report (it must not stop the sync); an unreachable control plane
    /// ends the session as any other call.
    async fn report_endpoints(&mut self, client: &mut Client) -> Result<(), RunError> {
        let Some(report) = self.manager.report().await else {
            return Ok(());
        };
        let n = report.endpoints.len();
        match client.report_endpoints(report).await {
            Ok(_) => {
                tracing::info!(endpoints = n, "endpoints reported");
                self.report_pending = false;
                Ok(())
            }
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ) =>
            {
                self.report_pending = true;
                Err(s.into())
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "the control plane refused the endpoint report");
                self.last_error = format!("endpoint report: {}", s.message());
                self.report_pending = true;
                Ok(())
            }
        }
    }

    fn health(&self) -> pb::HealthReport {
        let (kernel, _) = uname();
        let dp = lock(&self.dp);
        let map_fill = match dp.map_fill() {
            Ok(f) => f.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not measure map fill");
                Default::default()
            }
        };
        let (status, lost) = match dp.counters() {
            Ok(c) if self.last_error.is_empty() => ("ok", c.lost_events),
            Ok(c) => ("degraded", c.lost_events),
            Err(_) => ("error", 0),
        };
        pb::HealthReport {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_version: kernel,
            datapath_status: status.to_string(),
            map_fill,
            lost_events: lost,
            last_error: self.last_error.clone(),
            fqdn_addresses_evicted: dp.fqdn_evicted(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        assert_eq!(parse_label("a=b"), Ok(("a".into(), "b".into())));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
    }

    #[test]
    fn a_join_token_file_gives_its_first_line_and_a_missing_one_none() {
        let dir = weft_testkit::tmp::dir("join-token");
        let file = dir.path().join("jt");
        std::fs::write(&file, "weft_join_abc\nignored\n").expect("write");
        assert_eq!(
            token_file(&file).ok().flatten().as_deref(),
            Some("weft_join_abc")
        );
        std::fs::write(&file, "\n").expect("write");
        let empty = token_file(&file).expect_err("an empty file is an error");
        assert!(empty.to_string().contains("is empty"), "{empty}");
        assert!(matches!(token_file(&dir.path().join("gone")), Ok(None)));
    }

    #[test]
    fn map_entries_name_a_known_map_and_a_positive_size() {
        assert_eq!(
            parse_map_entries("policy-ranges=128"),
            Ok(("policy-ranges".into(), 128))
        );
        let unknown = parse_map_entries("polcy=128").unwrap_err();
        assert!(
            unknown.contains("\"polcy\"") && unknown.contains("conntrack"),
            "{unknown}"
        );
        assert!(parse_map_entries("policy=0").is_err());
        assert!(parse_map_entries("policy=-1").is_err());
        assert!(parse_map_entries("policy").is_err());
    }
}
