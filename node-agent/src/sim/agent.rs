//! One simulated agent: registers with the join token, reports its endpoints on every
//! connect, keeps a `Sync` stream whose messages go through the agent's own decode
//! ([`SyncMessage`]) and diff ([`Programmed::apply`]) into a [`Recorder`] instead of BPF
//! maps, acks each with its per-item errors, reports health, and after any failure backs
//! off and reconnects to the next control-plane URL (what an agent behind a load balancer
//! sees when a replica dies).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use weft_proto::v1 as pb;

use super::progress::Tracker;
use crate::agent::wire::{DatapathOps, Programmed, SyncMessage};
use crate::control::{self, Backoff, Control, ControlError, Registration};
use crate::datapath::{self as dp, DatapathError, PolicyEntry};

/// Stands in for the BPF map writer: counts the calls, removals apart (a removal of
/// something still desired is what a flush would look like).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recorder {
    pub writes: u64,
    pub removals: u64,
}

impl DatapathOps for Recorder {
    fn apply_endpoint(&mut self, _: &dp::Endpoint) -> Result<(), DatapathError> {
        self.writes += 1;
        Ok(())
    }
    fn remove_endpoint(&mut self, _: u32, _: Ipv4Addr) -> Result<(), DatapathError> {
        self.removals += 1;
        Ok(())
    }
    fn apply_ipcache(&mut self, _: IpAddr, _: u8, _: u32) -> Result<(), DatapathError> {
        self.writes += 1;
        Ok(())
    }
    fn remove_ipcache(&mut self, _: IpAddr, _: u8) -> Result<(), DatapathError> {
        self.removals += 1;
        Ok(())
    }
    fn apply_policy(&mut self, _: u32, _: &[PolicyEntry]) -> Result<(), DatapathError> {
        self.writes += 1;
        Ok(())
    }
    fn apply_service(&mut self, _: &dp::Service) -> Result<(), DatapathError> {
        self.writes += 1;
        Ok(())
    }
    fn remove_service(&mut self, _: u32) -> Result<(), DatapathError> {
        self.removals += 1;
        Ok(())
    }
}

/// What every agent of a fleet shares.
pub(super) struct Shared {
    pub urls: Vec<String>,
    pub ca_cert: Option<std::path::PathBuf>,
    pub join_token: String,
    pub health_interval: Duration,
    pub keepalive: Duration,
    pub capability_version: u32,
    pub tracker: Tracker,
    /// Registrations (and first endpoint reports) at once.
    pub registering: Arc<tokio::sync::Semaphore>,
    /// Streams open once every agent of the fleet is registered, so that the joins do not
    /// fan out to the fleet one by one.
    pub all_registered: tokio::sync::watch::Receiver<bool>,
}

/// The simulated node `i`: its name, address and endpoints.
pub(super) struct Node {
    pub index: usize,
    pub registration: Registration,
    pub endpoints: pb::EndpointReport,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
    #[error(transparent)]
    Stream(#[from] weft_proto::parts::StreamError),
    #[error("refused a sync message: {0}")]
    Wire(#[from] weft_proto::convert::WireError),
}

/// Runs the agent until its task is aborted. Returns only when registration is refused
/// (a bad join token is not worth retrying).
pub(super) async fn run(shared: Arc<Shared>, node: Node) {
    let mut at = node.index % shared.urls.len().max(1);
    let mut backoff = Backoff::control_plane();
    let mut channel = match connect(&shared, at) {
        Ok(c) => c,
        Err(e) => return shared.tracker.failed(e.to_string()),
    };
    let mut retry = false;
    let credential = loop {
        let registered = {
            let _permit = shared.registering.acquire().await;
            register(&node, &shared.join_token, &channel, retry).await
        };
        match registered {
            Ok(c) => break c,
            Err(e) if e.is_transient() => {
                // As the agent: the lost attempt may have registered the node.
                retry = true;
                shared.tracker.failed(e.to_string());
            }
            Err(e) => return shared.tracker.failed(e.to_string()),
        }
        tokio::time::sleep(backoff.next_delay()).await;
        at = (at + 1) % shared.urls.len().max(1);
        channel = match connect(&shared, at) {
            Ok(c) => c,
            Err(e) => return shared.tracker.failed(e.to_string()),
        };
    };
    shared.tracker.registered();
    let mut all = shared.all_registered.clone();
    if all.wait_for(|done| *done).await.is_err() {
        return;
    }
    backoff.reset();
    let mut programmed = Programmed::default();
    let mut recorder = Recorder::default();
    loop {
        let control = Control::new(channel.clone(), credential.clone());
        let mut synced = false;
        let res = session(
            &shared,
            &node,
            &control,
            &mut programmed,
            &mut recorder,
            &mut synced,
        )
        .await;
        if let Err(e) = res {
            shared.tracker.failed(e.to_string());
        }
        shared
            .tracker
            .counters
            .reconnects
            .fetch_add(1, Ordering::Relaxed);
        if synced {
            backoff.reset();
        }
        tokio::time::sleep(backoff.next_delay()).await;
        at = (at + 1) % shared.urls.len().max(1);
        channel = match connect(&shared, at) {
            Ok(c) => c,
            Err(e) => return shared.tracker.failed(e.to_string()),
        };
    }
}

fn connect(shared: &Shared, at: usize) -> Result<Channel, ControlError> {
    let url = shared.urls.get(at).map(String::as_str).unwrap_or_default();
    control::channel_with(url, shared.ca_cert.as_deref(), shared.keepalive)
}

/// Registers, then reports the endpoints once (so the node's endpoints are in before any
/// stream opens); the credential.
async fn register(
    node: &Node,
    token: &str,
    channel: &Channel,
    retry: bool,
) -> Result<MetadataValue<Ascii>, ControlError> {
    let resp = control::register::register(&node.registration, token, channel, retry).await?;
    let credential = control::register::bearer(&resp.node_credential)?;
    Control::new(channel.clone(), credential.clone())
        .client()
        .report_endpoints(node.endpoints.clone())
        .await?;
    Ok(credential)
}

async fn session(
    shared: &Shared,
    node: &Node,
    control: &Control,
    programmed: &mut Programmed,
    recorder: &mut Recorder,
    synced: &mut bool,
) -> Result<(), SessionError> {
    let mut client = control.client();
    let mut stream = weft_proto::parts::Wholes::new(
        client
            .sync(pb::SyncRequest {
                resume_from_revision: programmed.revision,
                capability_version: shared.capability_version,
            })
            .await?
            .into_inner(),
    );
    // Every (re)connect reports the complete endpoint set, as the agent does.
    client.report_endpoints(node.endpoints.clone()).await?;
    let mut health = tokio::time::interval(shared.health_interval);
    health.tick().await;
    let counters = &shared.tracker.counters;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg? else { return Ok(()) };
                let revision = msg.revision;
                shared.tracker.received(node.index, revision);
                let msg = SyncMessage::try_from(msg).inspect_err(|_| {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                })?;
                let kind = match msg.update {
                    weft_proto::convert::Update::Snapshot(_) => &counters.snapshots,
                    weft_proto::convert::Update::Delta(_) => &counters.deltas,
                };
                kind.fetch_add(1, Ordering::Relaxed);
                let removals = recorder.removals;
                let errors = programmed.apply(recorder, msg);
                counters
                    .removals
                    .fetch_add(recorder.removals - removals, Ordering::Relaxed);
                counters
                    .item_errors
                    .fetch_add(errors.len() as u64, Ordering::Relaxed);
                client
                    .ack(pb::AckRequest {
                        revision,
                        errors: errors.into_iter().map(Into::into).collect(),
                    })
                    .await?;
                shared.tracker.acked(node.index, revision);
                *synced = true;
            }
            _ = health.tick() => {
                client.report_health(pb::HealthReport {
                    agent_version: env!("CARGO_PKG_VERSION").to_string(),
                    kernel_version: String::new(),
                    datapath_status: "ok".into(),
                    map_fill: Default::default(),
                    lost_events: 0,
                    last_error: String::new(),
                    fqdn_addresses_evicted: 0,
                }).await?;
            }
        }
    }
}
