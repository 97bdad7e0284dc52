//! Registration: the join token is traded once for a node credential, stored 0600 in the
//! state directory (never logged); later starts reuse it and need no token.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::Code;
use weft_proto::v1 as pb;
use weft_proto::v1::agent_client::AgentClient;

use super::{io, ControlError};
use crate::files::write_private;

const CREDENTIAL: &str = "credential";
const NODE: &str = "node.json";

/// What the node says about itself when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Directory of the credential and `node.json`.
    pub state_dir: PathBuf,
    /// Needed only when no credential is stored yet.
    pub join_token: Option<String>,
    /// Default: the host name.
    pub node_name: Option<String>,
    pub addresses: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub pod_cidrs: Vec<String>,
}

/// Node identity as stored in the state dir (the credential is stored apart from it).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeInfo {
    node_id: String,
    cluster_id: String,
    tenant_id: String,
}

/// `uname -r` and `uname -n`.
pub fn uname() -> (String, String) {
    // SAFETY: `utsname` is plain data; uname fills it and returns 0 on success.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let s = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (s(&u.release), s(&u.nodename))
}

/// The stored credential as an `authorization` value, or a new one from `Register`.
/// A control plane that is away is [`ControlError::is_transient`]; a refused token is not.
/// `retry`: an earlier attempt failed without an answer, so it may have registered the
/// node (the answer lost on the way): this one takes that registration's place instead
/// of failing on the name.
pub async fn ensure_registered(
    reg: &Registration,
    channel: &Channel,
    retry: bool,
) -> Result<MetadataValue<Ascii>, ControlError> {
    let cred_path = reg.state_dir.join(CREDENTIAL);
    let credential = match std::fs::read_to_string(&cred_path) {
        Ok(c) => c.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(token) = &reg.join_token else {
                return Err(ControlError::NotRegistered(
                    reg.state_dir.display().to_string(),
                ));
            };
            let resp = register(reg, token, channel, retry).await?;
            let info = NodeInfo {
                node_id: resp.node_id,
                cluster_id: resp.cluster_id,
                tenant_id: resp.tenant_id,
            };
            let json = serde_json::to_vec_pretty(&info).map_err(|e| ControlError::Io {
                what: "encoding node.json".into(),
                source: e.into(),
            })?;
            write_private(&reg.state_dir.join(NODE), &json).map_err(io("writing node.json"))?;
            write_private(&cred_path, resp.node_credential.as_bytes())
                .map_err(io("writing the node credential"))?;
            tracing::info!(node_id = %info.node_id, cluster_id = %info.cluster_id, "registered");
            resp.node_credential
        }
        Err(e) => return Err(io(format!("reading {}", cred_path.display()))(e)),
    };
    bearer(&credential)
}

/// The `authorization` value of a node credential.
pub fn bearer(credential: &str) -> Result<MetadataValue<Ascii>, ControlError> {
    format!("Bearer {credential}")
        .parse()
        .map_err(|_| ControlError::BadCredential)
}

/// One `Register` call with `token`: the node's ids and credential. A control plane that is
/// away is [`ControlError::is_transient`]; a refused token is not. `replace` takes the
/// place of a node of the same name (and revokes its credential): for a retry after an
/// attempt whose answer was lost.
pub async fn register(
    reg: &Registration,
    token: &str,
    channel: &Channel,
    replace: bool,
) -> Result<pb::RegisterResponse, ControlError> {
    let (kernel, hostname) = uname();
    let resp = AgentClient::new(channel.clone())
        .register(pb::RegisterRequest {
            join_token: token.to_string(),
            node_name: reg.node_name.clone().unwrap_or(hostname),
            addresses: reg.addresses.clone(),
            labels: reg.labels.iter().cloned().collect(),
            replace,
            capability_version: weft_proto::CAPABILITY_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_version: kernel,
            pod_cidrs: reg.pod_cidrs.clone(),
        })
        .await
        .map_err(|s| match s.code() {
            Code::Unavailable | Code::Unknown | Code::Internal => ControlError::Rpc(s),
            _ => ControlError::Refused(s.message().to_string()),
        })?;
    Ok(resp.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uname_has_a_kernel_release() {
        assert!(!uname().0.is_empty());
    }
}
