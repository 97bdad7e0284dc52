//! The agent's side of `toFQDNs`: what the DNS proxy learns goes into the datapath
//! (`learner`), addresses past their TTL go (`maintain`, every second), and what was
//! learned survives a restart (`fqdn.json` in the state dir, read by `restore`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::datapath::fqdn::Learned;
use crate::datapath::Datapath;
use crate::endpoint::manager::{lock, SharedDatapath};
use crate::proxy::dns::Learner;

const FILE: &str = "fqdn.json";

/// Takes back what a previous run learned; an unreadable file is logged and ignored (the
/// names are learned again from the next answers).
pub fn restore(dp: &mut Datapath, state_dir: &Path) {
    let path = state_dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "learned DNS names not read");
            return;
        }
    };
    match serde_json::from_slice::<Learned>(&bytes) {
        Ok(learned) => dp.restore_fqdn(learned),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "learned DNS names not read"),
    }
}

/// The DNS proxy's way into the datapath. Holds it weakly: the datapath owns the proxy.
pub fn learner(dp: &SharedDatapath) -> Learner {
    let weak = Arc::downgrade(dp);
    Arc::new(move |names: &[String], addrs: &[(IpAddr, u32)]| {
        let dp = weak.upgrade().ok_or("the datapath is gone")?;
        let capped = lock(&dp)
            .learn_fqdn(names, addrs)
            .map_err(|e| e.to_string())?;
        for name in capped {
            tracing::warn!(%name, "more addresses than kept per DNS name (--fqdn-max-ips-per-name): the earliest-expiring were dropped (counted in the health report's fqdn_addresses_evicted)");
        }
        Ok(())
    })
}

/// Every second: forgets expired addresses, and saves what was learned when it changed.
pub async fn maintain(dp: SharedDatapath, state_dir: PathBuf) {
    let path = state_dir.join(FILE);
    let mut saved = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let bytes = {
            let mut dp = lock(&dp);
            if let Err(e) = dp.expire_fqdn() {
                tracing::warn!(error = %e, "expired DNS addresses not removed; retrying");
            }
            serde_json::to_vec(dp.fqdn_learned())
        };
        match bytes {
            Ok(b) if b != saved => match crate::files::replace_private(&path, &b) {
                Ok(()) => saved = b,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "learned DNS names not saved")
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "learned DNS names not serialized"),
        }
    }
}
