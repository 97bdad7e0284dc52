//! `GET /install.sh` and `GET /downloads/…`: what a new node needs to join, served by the
//! control plane itself so that one command installs an agent anywhere it can reach the
//! API. The script is public (it holds no secret: the join token is its argument); the
//! agent binary is served with a SHA-256 the script checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, Result};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(install_script))
        .routes(routes!(download))
        .routes(routes!(agent_ca))
}

const SCRIPT: &str = include_str!("install.sh");
/// The only agent build there is today.
const PLATFORM: &str = "linux-amd64";

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

    fn agent_url_for(&self, headers: &HeaderMap) -> Result<String> {
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

    /// The one-line install command for a join token.
    pub fn command(&self, headers: &HeaderMap, join_token: &str) -> Result<String> {
        Ok(format!(
            "curl -fsSL {}/install.sh | sudo sh -s -- --join-token {join_token}",
            self.api_url(headers)?
        ))
    }

    async fn digest(&self, path: &std::path::Path) -> std::io::Result<String> {
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

/// Single-quoted for sh; the values are checked URLs, but never trust a quote.
fn sh_quote_free(s: &str) -> Result<&str> {
    if s.contains(['\'', '\n', '\\']) {
        return Err(ApiError::BadRequest(format!(
            "{s:?} cannot be placed in the install script"
        )));
    }
    Ok(s)
}

/// The node agent installer (no credentials; the join token is its argument):
/// `curl -fsSL <api>/install.sh | sudo sh -s -- --join-token TOKEN`. `--help` lists its
/// options (`--no-systemd`, `--node-name`, `--label`, …).
#[utoipa::path(get, path = "/install.sh", tag = "install",
    responses((status = 200, content_type = "text/x-shellscript", body = String),
              (status = 400, body = crate::error::Problem, content_type = "application/problem+json")))]
async fn install_script(State(st): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let api = st.install.api_url(&headers)?;
    let agent = st.install.agent_url_for(&headers)?;
    let script = SCRIPT
        .replace("@API_URL@", sh_quote_free(&api)?)
        .replace("@AGENT_URL@", sh_quote_free(&agent)?);
    Ok((
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        script,
    )
        .into_response())
}

/// The node agent binary (`linux-amd64`), or its SHA-256 as `<hex>  node-agent`
/// (`linux-amd64.sha256`). Public (no credentials).
#[utoipa::path(get, path = "/downloads/node-agent/{platform}", tag = "install",
    params(("platform" = String, Path, description = "`linux-amd64`, or `linux-amd64.sha256` for its checksum")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
async fn download(State(st): State<AppState>, Path(platform): Path<String>) -> Result<Response> {
    let (platform, checksum) = match platform.strip_suffix(".sha256") {
        Some(p) => (p, true),
        None => (platform.as_str(), false),
    };
    if platform != PLATFORM {
        return Err(ApiError::NotFound(format!(
            "no node agent build for {platform:?}; available: {PLATFORM}"
        )));
    }
    let Some(path) = &st.install.agent_binary else {
        return Err(ApiError::NotFound(
            "this control plane serves no agent binary: start it with --agent-binary".into(),
        ));
    };
    let unreadable = |e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "agent binary unreadable");
        ApiError::Unavailable("the agent binary is unreadable on this replica".into())
    };
    if checksum {
        let d = st.install.digest(path).await.map_err(unreadable)?;
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{d}  node-agent\n"),
        )
            .into_response());
    }
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let len = file.metadata().await.map_err(unreadable)?.len();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"node-agent\"".to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// The agent service's certificate (PEM), for agents of a self-signed setup to trust.
/// Public (no credentials): a certificate is no secret.
#[utoipa::path(get, path = "/downloads/agent-ca.pem", tag = "install",
    responses((status = 200, content_type = "application/x-pem-file", body = String),
              (status = 404, body = crate::error::Problem, content_type = "application/problem+json")))]
async fn agent_ca(State(st): State<AppState>) -> Result<Response> {
    match &st.install.agent_ca_pem {
        Some(pem) => Ok((
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.clone(),
        )
            .into_response()),
        None => Err(ApiError::NotFound(
            "the agent service has no certificate of its own to hand out".into(),
        )),
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
