//! The agent's side of the control plane: where it is (URL, TLS), who the node is (the
//! credential from registration, [`register`]), how to retry ([`Backoff`]), and one lazily
//! connected channel ([`Control`]) that the sync loop and every reporter (flows, probes,
//! endpoints, health) share. The channel connects on first use and reconnects by itself
//! after a failure; callers only see an RPC error and back off.

mod backoff;
pub mod register;

use std::path::Path;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::agent_client::AgentClient;

pub use backoff::Backoff;

/// HTTP/2 ping interval, and how long an unanswered ping may wait before the connection is
/// declared dead.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
pub use register::{ensure_registered, uname, Registration};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("TLS to the control plane: {0}")]
    Tls(String),
    #[error("invalid control-plane URL {url:?}: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("not registered: no credential in {0} and no join token given")]
    NotRegistered(String),
    #[error("registration refused: {0}")]
    Refused(String),
    #[error("the stored node credential is not a valid header value")]
    BadCredential,
    #[error("control plane: {0}")]
    Rpc(#[from] Status),
}

impl ControlError {
    /// The control plane is away or failing: worth retrying as is.
    pub fn is_transient(&self) -> bool {
        matches!(self, ControlError::Rpc(_))
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlError {
    let what = what.into();
    move |source| ControlError::Io { what, source }
}

/// Adds the node credential to every call.
#[derive(Clone)]
pub struct Auth(pub MetadataValue<Ascii>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// An authenticated agent-service client on the shared channel.
pub type Client = AgentClient<InterceptedService<Channel, Auth>>;

/// A channel to the control plane at `url` that connects on first use (HTTP/2: every call
/// and stream of the agent is multiplexed on it, and it reconnects by itself after a
/// failure). `https://` needs `ca_cert` (the agent service's certificate or its CA); plain
/// `http://` is for loopback and tests.
pub fn channel(url: &str, ca_cert: Option<&Path>) -> Result<Channel, ControlError> {
    channel_with(url, ca_cert, KEEPALIVE)
}

/// [`channel`] with another HTTP/2 keepalive (interval and timeout): the simulator's
/// thousands of agents share a few cores, where a 5 s answer is not a sign of a partition.
pub fn channel_with(
    url: &str,
    ca_cert: Option<&Path>,
    keepalive: Duration,
) -> Result<Channel, ControlError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|source| ControlError::Url {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        // The connection is long-lived and shared: a silent network partition must end it
        // (and every stream on it) within ~10 s, so reports buffer and the agent reconnects.
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive)
        .keep_alive_while_idle(true);
    Ok(with_tls(endpoint, url, ca_cert)?.connect_lazy())
}

/// The registered node's way to the control plane: the shared channel and the credential.
#[derive(Clone)]
pub struct Control {
    channel: Channel,
    auth: Auth,
}

impl Control {
    pub fn new(channel: Channel, credential: MetadataValue<Ascii>) -> Control {
        Control {
            channel,
            auth: Auth(credential),
        }
    }

    /// A client on the shared channel that sends the node credential with every call.
    pub fn client(&self) -> Client {
        AgentClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }
}

/// Something that could not be programmed, reported in the `Ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// e.g. `endpoint/<id>`, `service/<id>`.
    pub item: String,
    pub message: String,
}

impl From<ItemError> for pb::ItemError {
    fn from(e: ItemError) -> Self {
        pb::ItemError {
            item: e.item,
            message: e.message,
        }
    }
}

/// An `https://` control plane is reached over TLS, trusting `--ca-cert`; plain `http://`
/// is for loopback and tests.
fn with_tls(
    endpoint: Endpoint,
    url: &str,
    ca_cert: Option<&Path>,
) -> Result<Endpoint, ControlError> {
    let https = url.starts_with("https://");
    match (ca_cert, https) {
        (None, false) => Ok(endpoint),
        (None, true) => Err(ControlError::Tls(
            "an https:// control plane needs --ca-cert (the agent service's certificate or CA)"
                .into(),
        )),
        (Some(_), false) => Err(ControlError::Tls(
            "--ca-cert given but the control-plane URL is not https://".into(),
        )),
        (Some(path), true) => {
            let pem = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem));
            endpoint
                .tls_config(tls)
                .map_err(|e| ControlError::Tls(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_needs_https_and_a_ca_together() {
        let ep = |u: &str| Endpoint::from_shared(u.to_string()).expect("url");
        assert!(with_tls(ep("http://127.0.0.1:1"), "http://127.0.0.1:1", None).is_ok());
        let no_ca = with_tls(ep("https://127.0.0.1:1"), "https://127.0.0.1:1", None);
        assert!(matches!(no_ca, Err(ControlError::Tls(_))));
        let ca = std::path::Path::new("/nonexistent/ca.pem");
        let plain_with_ca = with_tls(ep("http://127.0.0.1:1"), "http://127.0.0.1:1", Some(ca));
        assert!(matches!(plain_with_ca, Err(ControlError::Tls(_))));
        let missing = with_tls(ep("https://127.0.0.1:1"), "https://127.0.0.1:1", Some(ca));
        assert!(matches!(missing, Err(ControlError::Io { .. })));
    }
}
