//! The agent proper: registration with the control plane, the desired-state stream, and
//! programming what it asks into the datapath.
//!
//! - [`wire`]: protobuf -> desired state at the edge, and the minimal datapath calls for a
//!   snapshot or delta ([`wire::Programmed`]).
//! - [`run`]: `node-agent run`: register once, sync, apply, ack, report health, reconnect.

pub mod flows;
pub mod run;
pub mod wire;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a file readable by its owner only (mode 0600), replacing it.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: make sure it is 0600.
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}
