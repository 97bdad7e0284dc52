//! The REST client: resolves where to talk and as whom (flags, environment, context),
//! sends requests, follows pages, refreshes OIDC tokens, and turns problem+json answers
//! into errors that say what to do next.

use std::sync::Mutex;

use anyhow::{anyhow, bail, Context as _, Result};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{Config, Credential, OidcCredential};

/// Where to talk and as whom, before any request.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub context: Option<String>,
    pub api_url: Option<String>,
    pub tenant: Option<String>,
    /// Certificates (PEM) to trust for the API, overriding the context's.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// The answer to a successful request.
#[derive(Debug)]
pub struct Reply {
    pub etag: Option<String>,
    pub body: Value,
    /// The texts of the answer's `Warning: 299 - "…"` headers.
    pub warnings: Vec<String>,
}

/// The text of a `Warning` header value (`299 - "text"`), or the value as is.
pub fn warning_text(v: &str) -> String {
    let mut parts = v.splitn(3, ' ');
    let (code, _agent, rest) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    match code {
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()) => rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(rest)
            .to_string(),
        _ => v.to_string(),
    }
}

/// RFC 7807 problem, as the API answers errors.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// A request the API refused.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub problem: Problem,
    pub what: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let detail = if !self.problem.detail.is_empty() {
            self.problem.detail.clone()
        } else if !self.problem.title.is_empty() {
            self.problem.title.clone()
        } else {
            self.status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_string()
        };
        write!(f, "{}: {detail} (HTTP {})", self.what, self.status.as_u16())?;
        for e in &self.problem.errors {
            write!(f, "\n  {}: {}", e.field, e.message)?;
        }
        if let Some(hint) = self.hint() {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    fn hint(&self) -> Option<&'static str> {
        match self.status.as_u16() {
            401 => Some(
                "your credential is missing, expired or revoked: run `weft login` \
                 (or set WEFT_TOKEN)",
            ),
            403 => {
                Some("your role does not allow this: ask an admin of the tenant for a higher role")
            }
            404 => {
                Some("check the name and the tenant (`weft context list`; --tenant or WEFT_TENANT)")
            }
            409 => Some("it already exists or is in use: pick another name, or update it instead"),
            412 => Some("it changed since you read it: read it again and retry"),
            422 | 400 => Some("fix the fields above and retry"),
            429 => Some("too many failed attempts with this credential or from here: check the token, wait a minute and retry"),
            _ => None,
        }
    }
}

/// How requests authenticate.
enum Auth {
    Bearer(String),
    Oidc {
        context: String,
        cred: OidcCredential,
    },
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    tenant: Option<String>,
    auth: Mutex<Auth>,
}

/// The HTTP client, also trusting the certificates in `ca_cert` (PEM) if given.
pub fn http(ca_cert: Option<&std::path::Path>) -> Result<reqwest::Client> {
    trusting(
        reqwest::Client::builder()
            .user_agent(concat!("weft-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(std::time::Duration::from_secs(60)),
        ca_cert,
    )?
    .build()
    .context("building the HTTP client")
}

/// `builder` also trusting every certificate of the PEM file `ca_cert`.
fn trusting(
    builder: reqwest::ClientBuilder,
    ca_cert: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder> {
    let Some(path) = ca_cert else {
        return Ok(builder);
    };
    let pem = std::fs::read(path)
        .with_context(|| format!("reading the CA certificate {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs
        .into_iter()
        .fold(builder, |b, c| b.add_root_certificate(c)))
}

/// Unix seconds now.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Percent-encodes one path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// Resolves the target: flags, then `WEFT_API_URL` / `WEFT_TOKEN` / `WEFT_TENANT`
    /// (clap reads those into the flags), then the context.
    pub async fn new(target: &Target) -> Result<Client> {
        let cfg = Config::load()?;
        let ctx = cfg.context(target.context.as_deref())?;
        let env_token = std::env::var("WEFT_TOKEN").ok().filter(|t| !t.is_empty());
        let api_url = target
            .api_url
            .clone()
            .or_else(|| ctx.as_ref().map(|(_, c)| c.api_url.clone()))
            .ok_or_else(|| {
                anyhow!(
                    "no API URL: run `weft login --api-url URL …`, or set WEFT_API_URL \
                     and WEFT_TOKEN"
                )
            })?;
        let auth = match (env_token, &ctx) {
            (Some(t), _) => Auth::Bearer(t),
            (None, Some((_, c))) if target.api_url.as_ref().is_some_and(|u| u != &c.api_url) => {
                return Err(anyhow!(
                    "WEFT_API_URL/--api-url ({}) differs from the context's API ({}) and no \
                     WEFT_TOKEN is set: the context's credential is not sent elsewhere",
                    target.api_url.as_deref().unwrap_or(""),
                    c.api_url
                ))
            }
            (None, Some((name, c))) => match &c.credential {
                Credential::ApiToken { token } => Auth::Bearer(token.clone()),
                Credential::Oidc(o) => Auth::Oidc {
                    context: name.clone(),
                    cred: o.clone(),
                },
            },
            (None, None) => {
                return Err(anyhow!(
                    "not logged in: run `weft login` (or set WEFT_API_URL and WEFT_TOKEN)"
                ))
            }
        };
        let tenant = target
            .tenant
            .clone()
            .or_else(|| ctx.as_ref().and_then(|(_, c)| c.tenant.clone()));
        let ca_cert = target
            .ca_cert
            .clone()
            .or_else(|| ctx.as_ref().and_then(|(_, c)| c.ca_cert.clone()));
        let client = Client {
            http: http(ca_cert.as_deref())?,
            base: api_url.trim_end_matches('/').to_string(),
            tenant,
            auth: Mutex::new(auth),
        };
        client.refresh_if_expiring(false).await?;
        Ok(client)
    }

    /// A client for exactly this URL and credential (used by `weft login`).
    pub fn with_token(
        api_url: &str,
        token: &str,
        tenant: Option<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> Result<Client> {
        Ok(Client {
            http: http(ca_cert)?,
            base: api_url.trim_end_matches('/').to_string(),
            tenant,
            auth: Mutex::new(Auth::Bearer(token.to_string())),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn tenant(&self) -> Result<&str> {
        self.tenant.as_deref().ok_or_else(|| {
            anyhow!(
                "no tenant selected: pass --tenant, set WEFT_TENANT, or log in with \
                 `weft login --tenant NAME`"
            )
        })
    }

    /// `/v1/tenants/{tenant}` + `rest`.
    pub fn tpath(&self, rest: &str) -> Result<String> {
        Ok(format!("/v1/tenants/{}{rest}", seg(self.tenant()?)))
    }

    fn bearer(&self) -> String {
        match &*self.auth.lock().unwrap_or_else(|e| e.into_inner()) {
            Auth::Bearer(t) => t.clone(),
            Auth::Oidc { cred, .. } => cred.access_token.clone(),
        }
    }

    /// Refreshes an OIDC access token that expires within 30 s (or now, when `force`),
    /// if the provider gave a refresh token, and saves the new tokens to the context.
    async fn refresh_if_expiring(&self, force: bool) -> Result<bool> {
        let (context, cred) = match &*self.auth.lock().unwrap_or_else(|e| e.into_inner()) {
            Auth::Oidc { context, cred } => (context.clone(), cred.clone()),
            Auth::Bearer(_) => return Ok(false),
        };
        let expiring = cred.expires_at.is_some_and(|at| at <= now() + 30);
        let Some(refresh) = cred.refresh_token.clone() else {
            return Ok(false);
        };
        if !force && !expiring {
            return Ok(false);
        }
        let fresh = crate::oidc::refresh(&cred, &refresh)
            .await
            .context("refreshing the sign-in failed: run `weft login` again")?;
        let mut cfg = Config::load()?;
        if let Some(c) = cfg.contexts.get_mut(&context) {
            c.credential = Credential::Oidc(fresh.clone());
            cfg.save()?;
        }
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Auth::Oidc {
            context,
            cred: fresh,
        };
        Ok(true)
    }

    pub fn builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.bearer())
    }

    /// Sends a request; non-2xx answers become [`ApiError`]. A 401 with a refreshable
    /// OIDC sign-in is retried once after a refresh.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Body>,
        if_match: Option<&str>,
    ) -> Result<Reply> {
        let mut retried = false;
        loop {
            let mut req = self.builder(method.clone(), path);
            if let Some(tag) = if_match {
                req = req.header(reqwest::header::IF_MATCH, tag);
            }
            req = match &body {
                Some(Body::Json(v)) => req.json(v),
                Some(Body::Yaml(y)) => req
                    .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                    .body(y.clone()),
                None => req,
            };
            let resp = req.send().await.map_err(|e| connect_error(e, &self.base))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                && !retried
                && self.refresh_if_expiring(true).await?
            {
                retried = true;
                continue;
            }
            let etag = resp
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let warnings = resp
                .headers()
                .get_all(reqwest::header::WARNING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(warning_text)
                .collect();
            let bytes = resp.bytes().await.context("reading the answer")?;
            let what = format!("{method} {path}");
            if !status.is_success() {
                let problem = serde_json::from_slice(&bytes).unwrap_or_else(|_| Problem {
                    detail: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                    ..Problem::default()
                });
                return Err(ApiError {
                    status,
                    problem,
                    what,
                }
                .into());
            }
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("{what}: the answer is not JSON"))?
            };
            return Ok(Reply {
                etag,
                body,
                warnings,
            });
        }
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.send(Method::GET, path, None, None).await
    }

    /// GET, with 404 as `None`.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Reply>> {
        match self.get(path).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if status_of(&e) == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Reply> {
        self.send(Method::POST, path, Some(Body::Json(body)), None)
            .await
    }

    pub async fn put(&self, path: &str, body: Value, if_match: Option<&str>) -> Result<Reply> {
        self.send(Method::PUT, path, Some(Body::Json(body)), if_match)
            .await
    }

    /// A JSON merge patch: only the fields given change.
    pub async fn patch(&self, path: &str, body: Value) -> Result<Reply> {
        self.send(Method::PATCH, path, Some(Body::Json(body)), None)
            .await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.send(Method::DELETE, path, None, None).await
    }

    /// Every item of a collection, following `next_cursor`.
    pub async fn list_all(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("limit", "1000".into()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let url = format!("{path}?{}", encode_query(&q));
            let page = self.get(&url).await?.body;
            if let Some(list) = page["items"].as_array() {
                items.extend(list.iter().cloned());
            }
            match page["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
                _ => return Ok(items),
            }
        }
    }
}

pub enum Body {
    Json(Value),
    #[allow(dead_code)]
    Yaml(String),
}

/// The HTTP status of an [`ApiError`] inside an `anyhow::Error`.
pub fn status_of(e: &anyhow::Error) -> Option<StatusCode> {
    e.downcast_ref::<ApiError>().map(|a| a.status)
}

fn connect_error(e: reqwest::Error, base: &str) -> anyhow::Error {
    // reqwest says only "error sending request": the cause (refused, a certificate) is
    // what the user needs.
    let mut cause = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.to_lowercase().contains("certificate") {
        anyhow!(
            "the Weft API at {base} presented a certificate this machine does not trust \
             ({cause}): if it uses a private CA or a self-signed certificate, pass \
             --ca-cert FILE (or set WEFT_CA_CERT; `weft login` keeps it)"
        )
    } else if e.is_connect() || e.is_timeout() {
        anyhow!(
            "cannot reach the Weft API at {base} ({e}: {cause}): check the URL (`weft context \
             list`, WEFT_API_URL) and that the server is running"
        )
    } else {
        anyhow!("request to {base} failed: {e}")
    }
}

/// `application/x-www-form-urlencoded` query string (the `url` crate's encoder, as reqwest's
/// `.query()` uses).
pub fn encode_query(pairs: &[(&str, String)]) -> String {
    oauth2::url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_segments_and_queries() {
        assert_eq!(seg("web-1"), "web-1");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(
            encode_query(&[
                ("from_label", "app=web".into()),
                ("verdict", "DROPPED".into())
            ]),
            "from_label=app%3Dweb&verdict=DROPPED"
        );
    }

    #[test]
    fn api_errors_say_what_to_do() {
        let e = ApiError {
            status: StatusCode::UNAUTHORIZED,
            problem: Problem {
                detail: "invalid, expired or revoked token".into(),
                ..Problem::default()
            },
            what: "GET /v1/me".into(),
        };
        let text = e.to_string();
        assert!(text.contains("invalid, expired or revoked token"), "{text}");
        assert!(text.contains("weft login"), "{text}");
        let e = ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem: Problem {
                detail: "invalid input".into(),
                errors: vec![FieldError {
                    field: "spec.ingress[0].fromCIDR[0]".into(),
                    message: "not a CIDR".into(),
                }],
                ..Problem::default()
            },
            what: "POST /v1/tenants/acme/policies".into(),
        };
        assert!(e
            .to_string()
            .contains("spec.ingress[0].fromCIDR[0]: not a CIDR"));
    }
}
