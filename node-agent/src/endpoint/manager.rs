//! Adds and removes endpoints: plumbing, datapath attachment, the state file, and the signal
//! that makes the agent report the new set to the control plane.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weft_model::labels::Labels;

use super::{plumb, AddPlan, EndpointError, EndpointSpec, Record, Store};
use crate::datapath::Datapath;
use crate::names::Names;

/// The loaded datapath, shared by the sync session, the endpoint API and the flow exporter.
pub type SharedDatapath = Arc<Mutex<Datapath>>;

/// Locks the datapath; a panic elsewhere does not make it unusable (its maps are the truth).
pub fn lock(dp: &SharedDatapath) -> std::sync::MutexGuard<'_, Datapath> {
    dp.lock().unwrap_or_else(|p| p.into_inner())
}

/// An endpoint as `endpoint list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub name: String,
    pub ip: String,
    pub labels: Labels,
    /// `-` for the host endpoint.
    pub netns: String,
    pub interface: String,
    /// Security identity, once the control plane assigned one.
    pub identity: Option<u32>,
    /// Desired-state endpoint id, once the control plane knows the endpoint.
    pub endpoint_id: Option<String>,
}

/// Endpoint work of a running agent.
pub struct Manager {
    store: tokio::sync::Mutex<Store>,
    dp: SharedDatapath,
    changed: watch::Sender<u64>,
    names: watch::Receiver<Names>,
    /// The MTU of endpoint interfaces (0: as the kernel makes them), set by routing.
    pod_mtu: AtomicU32,
}

fn attach(dp: &SharedDatapath, rec: &Record, fresh_link: bool) -> Result<(), EndpointError> {
    let mut dp = lock(dp);
    let err = |e: crate::datapath::DatapathError| EndpointError::Datapath {
        ifname: rec.interface.clone(),
        message: e.to_string(),
    };
    if fresh_link {
        // Pins of an earlier interface of that name point at a dead ifindex.
        dp.detach_endpoint_interface(&rec.interface).map_err(err)?;
    }
    let ifindex = dp.attach_endpoint_interface(&rec.interface).map_err(err)?;
    // Source validation: the endpoint's packets come from this interface only.
    for ip in rec.ips() {
        dp.bind_endpoint_interface(ip, ifindex).map_err(err)?;
    }
    Ok(())
}

/// Creates what is missing of `rec` and attaches the datapath.
async fn ensure(dp: &SharedDatapath, rec: &Record, mtu: u32) -> Result<(), EndpointError> {
    let fresh = !plumb::link_exists(&rec.interface);
    plumb::ensure(rec, mtu).await?;
    let (dp, rec) = (dp.clone(), rec.clone());
    blocking(move || attach(&dp, &rec, fresh)).await
}

/// Detaches the datapath from `rec`'s interface and deletes the veth pair.
async fn teardown(dp: &SharedDatapath, rec: &Record) -> Result<(), EndpointError> {
    let (dp, r) = (dp.clone(), rec.clone());
    blocking(move || {
        lock(&dp)
            .detach_endpoint_interface(&r.interface)
            .map_err(|e| EndpointError::Datapath {
                ifname: r.interface.clone(),
                message: e.to_string(),
            })
    })
    .await?;
    plumb::remove(rec).await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EndpointError> + Send + 'static,
) -> Result<T, EndpointError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(EndpointError::Plumbing {
            name: String::new(),
            message: format!("worker failed: {e}"),
        })
    })
}

impl Manager {
    /// Loads the recorded endpoints. Returns the manager and a receiver that changes
    /// whenever the endpoint set does.
    pub fn new(
        state_dir: &std::path::Path,
        dp: SharedDatapath,
        names: watch::Receiver<Names>,
    ) -> Result<(Arc<Manager>, watch::Receiver<u64>), EndpointError> {
        let store = Store::load(state_dir)?;
        let (changed, rx) = watch::channel(0);
        Ok((
            Arc::new(Manager {
                store: tokio::sync::Mutex::new(store),
                dp,
                changed,
                names,
                pod_mtu: AtomicU32::new(0),
            }),
            rx,
        ))
    }

    /// After a restart: re-creates whatever is missing of the recorded endpoints and
    /// re-attaches the datapath. An endpoint that cannot be restored (its namespace is gone)
    /// stays recorded and reported until `endpoint del`.
    pub async fn restore(&self) {
        let records: Vec<Record> = self
            .store
            .lock()
            .await
            .endpoints
            .values()
            .cloned()
            .collect();
        for rec in records {
            let name = rec.name.clone();
            match ensure(&self.dp, &rec, self.pod_mtu.load(Ordering::Relaxed)).await {
                Ok(()) => tracing::info!(endpoint = %name, "endpoint restored"),
                Err(e) => {
                    tracing::warn!(endpoint = %name, error = %e, "could not restore endpoint")
                }
            }
        }
    }

    /// `endpoint add`: idempotent for the same spec; refuses a conflicting one.
    pub async fn add(&self, spec: EndpointSpec) -> Result<EndpointView, EndpointError> {
        let rec = spec.validate()?;
        let mut store = self.store.lock().await;
        let plan = store.plan_add(&rec)?;
        if plan == AddPlan::Create && plumb::link_exists(&rec.interface) {
            return Err(EndpointError::InterfaceTaken {
                ifname: rec.interface.clone(),
                name: rec.name.clone(),
            });
        }
        if let Err(e) = ensure(&self.dp, &rec, self.pod_mtu.load(Ordering::Relaxed)).await {
            if plan == AddPlan::Create {
                // Leave nothing half-made behind (whatever the detach says).
                let dp = self.dp.clone();
                let ifname = rec.interface.clone();
                let _ = blocking(move || {
                    let _ = lock(&dp).detach_endpoint_interface(&ifname);
                    Ok(())
                })
                .await;
                let _ = plumb::remove(&rec).await;
            }
            return Err(e);
        }
        if plan == AddPlan::Create {
            store.endpoints.insert(rec.name.clone(), rec.clone());
        }
        // Also when only ensuring: the file makes the agent the owner of the endpoint set.
        store.save()?;
        drop(store);
        self.changed.send_modify(|v| *v += 1);
        tracing::info!(endpoint = %rec.name, ip = %rec.addresses(), interface = %rec.interface, "endpoint added");
        Ok(self.view(&rec))
    }

    /// `endpoint del`: removes the datapath attachment and the veth pair, then the record.
    /// Returns whether the endpoint existed.
    pub async fn del(&self, name: &str) -> Result<bool, EndpointError> {
        let mut store = self.store.lock().await;
        let Some(rec) = store.endpoints.get(name).cloned() else {
            return Ok(false);
        };
        teardown(&self.dp, &rec).await?;
        store.endpoints.remove(name);
        store.save()?;
        drop(store);
        self.changed.send_modify(|v| *v += 1);
        tracing::info!(endpoint = %name, "endpoint removed");
        Ok(true)
    }

    fn view(&self, rec: &Record) -> EndpointView {
        let names = self.names.borrow();
        let desired = names.endpoint_by_ip(std::net::IpAddr::V4(rec.ip));
        EndpointView {
            name: rec.name.clone(),
            ip: rec.addresses(),
            labels: rec.labels.clone(),
            netns: rec.netns.clone(),
            interface: rec.interface.clone(),
            identity: desired.map(|d| d.identity),
            endpoint_id: desired.map(|d| d.id.clone()),
        }
    }

    /// The recorded endpoints, then the host endpoint when the desired state has one.
    pub async fn list(&self) -> Vec<EndpointView> {
        let store = self.store.lock().await;
        let mut out: Vec<EndpointView> = store.endpoints.values().map(|r| self.view(r)).collect();
        let names = self.names.borrow();
        if let Some(host) = names
            .endpoints
            .iter()
            .find(|e| e.id == weft_model::desired::HOST_ENDPOINT_ID)
        {
            out.push(EndpointView {
                name: host.id.clone(),
                ip: host
                    .ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                labels: Labels::new(),
                netns: "-".into(),
                interface: "-".into(),
                identity: Some(host.identity),
                endpoint_id: Some(host.id.clone()),
            });
        }
        out
    }

    /// The report for the control plane; `None` while the agent never created an endpoint
    /// (then the node's endpoint set is not the agent's to overwrite).
    pub async fn report(&self) -> Option<weft_proto::v1::EndpointReport> {
        let store = self.store.lock().await;
        store.managed.then(|| store.report())
    }

    /// Sets the MTU of every endpoint's interfaces, and of those made from now on; returns
    /// the endpoints it could not be set on.
    pub async fn set_pod_mtu(&self, mtu: u32) -> Vec<EndpointError> {
        if self.pod_mtu.swap(mtu, Ordering::Relaxed) == mtu {
            return Vec::new();
        }
        let store = self.store.lock().await;
        let mut failed = Vec::new();
        for rec in store.endpoints.values() {
            if let Err(e) = plumb::set_mtu(rec, mtu).await {
                failed.push(e);
            }
        }
        if failed.is_empty() {
            tracing::info!(mtu, "endpoint MTU set");
        } else {
            // Tried again with the next change.
            self.pod_mtu.store(0, Ordering::Relaxed);
        }
        failed
    }

    pub async fn count(&self) -> usize {
        self.store.lock().await.endpoints.len()
    }
}
