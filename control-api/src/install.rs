//! Where the installer and the agents find this control plane, and the agent binary it
//! serves (the handlers are `api::install`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::error::{ApiError, Result};

/// Where the installer and the agents find this control plane. Unset URLs are derived
/// from the request's `Host`, which is right whenever nothing rewrites it in between.
#[derive(Debug, Default)]
pub struct InstallConfig {
    /// The node-agent binary served at `/downloads/node-agent/linux-amd64`.
    pub agent_binary: Option<PathBuf>,
    /// This API's URL as nodes reach it, e.g. `https://api.weft.example`.
    pub public_url: Option<String>,
    /// The agent service's URL as nodes reach it.
    pub agent_url: Option<String>,
    /// Port and scheme of the agent service, to derive `agent_url` from the `Host`.
    pub agent_port: u16,
    pub agent_tls: bool,
    /// The agent service's certificate, served for self-signed setups.
    pub agent_ca_pem: Option<Vec<u8>>,
    /// (path, modified, length) → SHA-256 of the binary, so it is hashed once per build.
    digest: Mutex<Option<(SystemTime, u64, String)>>,
}

impl InstallConfig {
    pub fn new(
        agent_binary: Option<PathBuf>,
        public_url: Option<String>,
        agent_url: Option<String>,
        agent_port: u16,
        agent_tls: bool,
        agent_ca_pem: Option<Vec<u8>>,
    ) -> Arc<Self> {
        Arc::new(InstallConfig {
            agent_binary,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            agent_url,
            agent_port,
            agent_tls,
            agent_ca_pem,
            digest: Mutex::new(None),
        })
    }

    /// This API's base URL for a request with these headers.
    pub fn api_url(&self, headers: &HeaderMap) -> Result<String> {
        match &self.public_url {
            Some(u) => Ok(u.clone()),
            None => Ok(format!("http://{}", host(headers)?)),
        }
    }

    pub fn agent_url_for(&self, headers: &HeaderMap) -> Result<String> {
        if let Some(u) = &self.agent_url {
            return Ok(u.clone());
        }
        let base = match &self.public_url {
            Some(u) => u.split_once("://").map_or(u.as_str(), |(_, rest)| rest),
            None => host(headers)?,
        };
        let host = strip_port(base.split('/').next().unwrap_or(base));
        let scheme = if self.agent_tls { "https" } else { "http" };
        Ok(format!("{scheme}://{host}:{}", self.agent_port))
    }

    /// The one-line install command for a join token. The token goes through the
    /// environment, so no process's arguments (`ps`) show it while the script runs.
    pub fn command(&self, headers: &HeaderMap, join_token: &str) -> Result<String> {
        Ok(format!(
            "curl -fsSL {}/install.sh | WEFT_JOIN_TOKEN={join_token} sudo --preserve-env=WEFT_JOIN_TOKEN sh -s",
            self.api_url(headers)?
        ))
    }

    pub async fn digest(&self, path: &std::path::Path) -> std::io::Result<String> {
        let meta = tokio::fs::metadata(path).await?;
        let stamp = (meta.modified()?, meta.len());
        let mut cached = self.digest.lock().await;
        if let Some((m, l, d)) = cached.as_ref() {
            if (*m, *l) == stamp {
                return Ok(d.clone());
            }
        }
        let bytes = tokio::fs::read(path).await?;
        let d = hex::encode(Sha256::digest(&bytes));
        *cached = Some((stamp.0, stamp.1, d.clone()));
        Ok(d)
    }
}

/// The `Host` header, refused unless it is a plain host[:port]: it is pasted into a
/// script the caller will run.
fn host(headers: &HeaderMap) -> Result<&str> {
    let h = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::BadRequest("no Host header: cannot tell the API's URL".into()))?;
    let ok = !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok {
        Ok(h)
    } else {
        Err(ApiError::BadRequest(format!(
            "Host header {h:?} is not a host name or address"
        )))
    }
}

fn strip_port(hostport: &str) -> &str {
    if let Some(rest) = hostport.strip_prefix('[') {
        // [v6]:port → [v6]
        return rest.find(']').map_or(hostport, |i| &hostport[..i + 2]);
    }
    match hostport.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => hostport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().expect("header"));
        h
    }

    #[test]
    fn urls_follow_the_host_unless_configured() {
        let c = InstallConfig::new(None, None, None, 7443, true, None);
        assert_eq!(
            c.api_url(&headers("api.example:8080")).ok(),
            Some("http://api.example:8080".into())
        );
        assert_eq!(
            c.agent_url_for(&headers("api.example:8080")).ok(),
            Some("https://api.example:7443".into())
        );
        assert_eq!(
            c.agent_url_for(&headers("[::1]:8080")).ok(),
            Some("https://[::1]:7443".into())
        );
        let c = InstallConfig::new(
            None,
            Some("https://weft.example/".into()),
            None,
            7443,
            false,
            None,
        );
        assert_eq!(
            c.api_url(&headers("ignored")).ok(),
            Some("https://weft.example".into())
        );
        assert_eq!(
            c.agent_url_for(&headers("ignored")).ok(),
            Some("http://weft.example:7443".into())
        );
        let c = InstallConfig::new(
            None,
            None,
            Some("https://agents.example".into()),
            7443,
            true,
            None,
        );
        assert_eq!(
            c.agent_url_for(&headers("x")).ok(),
            Some("https://agents.example".into())
        );
    }

    #[test]
    fn a_host_that_could_break_the_script_is_refused() {
        let c = InstallConfig::new(None, None, None, 7443, true, None);
        for bad in ["a'b", "a b", "a;b", "$(x)"] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, bad.parse().expect("header"));
            assert!(c.api_url(&h).is_err(), "{bad} accepted");
        }
        assert!(c.api_url(&HeaderMap::new()).is_err());
    }
}
