//! `GET /install.sh` and `GET /downloads/…`: what a new node needs to join, served by the
//! control plane itself so that one command installs an agent anywhere it can reach the
//! API. The script is public (it holds no secret: the join token is its argument); the
//! agent binary is served with a SHA-256 the script checks.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::error::{ApiError, Result};
pub use crate::install::InstallConfig;
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

/// Single-quoted for sh; the values are checked URLs, but never trust a quote.
fn sh_quote_free(s: &str) -> Result<&str> {
    if s.contains(['\'', '\n', '\\']) {
        return Err(ApiError::BadRequest(format!(
            "{s:?} cannot be placed in the install script"
        )));
    }
    Ok(s)
}

/// The node agent installer (no credentials; the join token comes from the environment or
/// an option): `curl -fsSL <api>/install.sh | WEFT_JOIN_TOKEN=TOKEN sudo
/// --preserve-env=WEFT_JOIN_TOKEN sh -s`. `--help` lists its options (`--join-token-file`,
/// `--no-systemd`, `--node-name`, `--label`, …).
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
