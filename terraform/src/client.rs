//! The REST calls the provider makes, over the API of `openapi/openapi.json`.
//!
//! A small client of its own (reqwest directly): the CLI's `cli/src/client.rs` is to become a
//! crate both use when the crates are restructured.
//!
//! Retries: 429 waits `Retry-After` (any method: the request was not processed); 5xx and
//! connection errors are retried 3 times for GET, and for PUT/DELETE sent with `If-Match`
//! (the precondition makes a repeat harmless); POST and PATCH without it never retry.

use std::borrow::Cow;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tf_provider::{AttributePath, Diagnostics};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub api_url: String,
    token: String,
    pub tenant: String,
}

/// What a call answered: status, body (JSON or null) and ETag revision.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub revision: Option<i64>,
    pub request_id: String,
}

const RETRIES: u32 = 3;
/// The longest `Retry-After` honoured for one wait, and how many 429s in a row.
const MAX_RETRY_AFTER: u64 = 60;
const MAX_THROTTLED: u32 = 20;

impl Client {
    /// A client of `api_url`, also trusting the certificates of the PEM file `ca_cert`
    /// (a private CA, a self-signed API) beside the system's.
    pub fn new(api_url: &str, token: &str, ca_cert: Option<&str>) -> Result<Client, String> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(path) = ca_cert {
            let pem =
                std::fs::read(path).map_err(|e| format!("reading ca_cert_file {path}: {e}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_cert_file {path} is not PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err(format!("ca_cert_file {path} holds no PEM certificate"));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        Ok(Client {
            http: builder
                .build()
                .map_err(|e| format!("building the HTTP client: {e}"))?,
            api_url: api_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            tenant: String::new(),
        })
    }

    /// Path under the tenant, e.g. `/clusters/x` → `/v1/tenants/acme/clusters/x`.
    pub fn tenant_path(&self, rest: &str) -> String {
        format!("/v1/tenants/{}{rest}", self.tenant)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<i64>,
    ) -> Result<Answer, String> {
        let idempotent = method == Method::GET
            || method == Method::HEAD
            || (if_match.is_some() && (method == Method::PUT || method == Method::DELETE));
        let mut failures = 0;
        let mut throttled = 0;
        loop {
            let result = self.once(method.clone(), path, body, if_match).await;
            match result {
                Ok((a, retry_after)) if a.status == 429 && throttled < MAX_THROTTLED => {
                    throttled += 1;
                    let wait = retry_after.unwrap_or(1).clamp(1, MAX_RETRY_AFTER);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                Ok((a, _)) if a.status >= 500 && idempotent && failures < RETRIES => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(250 << failures)).await;
                }
                Err(_) if idempotent && failures < RETRIES => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(250 << failures)).await;
                }
                Ok((a, _)) => return Ok(a),
                Err(e) => return Err(e),
            }
        }
    }

    async fn once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<i64>,
    ) -> Result<(Answer, Option<u64>), String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.api_url))
            .bearer_auth(&self.token);
        if let Some(rev) = if_match {
            req = req.header("If-Match", format!("\"{rev}\""));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {}", with_cause(&e)))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let revision = header("etag").and_then(|e| {
            e.trim_start_matches("W/")
                .trim_matches('"')
                .parse::<i64>()
                .ok()
        });
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        let request_id = header("x-request-id").unwrap_or_default();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((
            Answer {
                status,
                body,
                revision,
                request_id,
            },
            retry_after,
        ))
    }

    /// Every item of a list, following `next_cursor` with `limit=1000`.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>, Answer> {
        let mut items = Vec::new();
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
                None => format!("{path}{sep}limit=1000"),
            };
            let a = match self.call(Method::GET, &url, None, None).await {
                Ok(a) => a,
                Err(e) => return Err(transport(e)),
            };
            if a.status != 200 {
                return Err(a);
            }
            items.extend(a.body["items"].as_array().cloned().unwrap_or_default());
            match a.body["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = Some(c.to_string()),
                _ => return Ok(items),
            }
        }
    }
}

/// An error with its innermost cause: reqwest says only "error sending request", the
/// cause (refused, an untrusted certificate) is what the user needs.
fn with_cause(e: &reqwest::Error) -> String {
    let mut cause = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    match cause {
        Some(c) if c.to_lowercase().contains("certificate") => format!(
            "{e}: {c} (a private CA or a self-signed API? set ca_cert_file or WEFT_CA_CERT)"
        ),
        Some(c) => format!("{e}: {c}"),
        None => e.to_string(),
    }
}

/// A transport failure as an answer (status 0), so it is reported like the others.
pub fn transport(e: String) -> Answer {
    Answer {
        status: 0,
        body: serde_json::json!({"title": "cannot reach the Weft API", "detail": e}),
        revision: None,
        request_id: String::new(),
    }
}

/// What an error answer is about, for its diagnostics.
pub struct Context<'a> {
    /// e.g. "updating policy \"web\"".
    pub doing: String,
    /// The role the call needs (named on 403).
    pub role: &'a str,
    /// The revision sent as `If-Match` (named on 412).
    pub sent_revision: Option<i64>,
    /// Top-level attributes whose `errors[].field` may go deeper (nested attributes).
    pub nested: &'a [&'a str],
}

/// Turns a `field` such as `frontends[0].vip` into an attribute path: its steps into the
/// attributes of `nested` (whose values are lists and objects), else the top-level attribute
/// (with its index, if any).
pub fn field_path(field: &str, nested: &[&str]) -> AttributePath {
    let mut path = AttributePath::root();
    let mut first = true;
    for segment in field.split('.') {
        let (name, rest) = segment.split_once('[').unwrap_or((segment, ""));
        if name.is_empty() {
            break;
        }
        path.add_attribute(Cow::Owned(name.to_string()));
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse::<i64>() {
                path.add_index(i);
            }
        }
        if first && !nested.contains(&name) {
            break;
        }
        first = false;
    }
    path
}

/// Turns an error answer into diagnostics: one per `errors[]` entry on its field, else one.
pub fn report(diags: &mut Diagnostics, cx: &Context<'_>, a: &Answer) {
    let title = a.body["title"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}: HTTP {}", cx.doing, a.status));
    let detail = a.body["detail"].as_str().unwrap_or_default().to_string();
    let suffix = if a.request_id.is_empty() {
        String::new()
    } else {
        format!(" (x-request-id {})", a.request_id)
    };
    let errors = a.body["errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        let summary = match a.status {
            401 => "token invalid, expired or revoked".to_string(),
            403 => format!("{}: forbidden: this needs the {} role", cx.doing, cx.role),
            412 => {
                let now = detail
                    .rsplit("revision ")
                    .next()
                    .and_then(|n| n.trim().parse::<i64>().ok());
                let (was, now) = (
                    cx.sent_revision.map_or("?".to_string(), |r| r.to_string()),
                    now.map_or("?".to_string(), |r| r.to_string()),
                );
                format!(
                    "{}: changed outside Terraform since it was read (revision {was}, now {now}); nothing was written; run plan again",
                    cx.doing
                )
            }
            _ => format!("{}: {title}", cx.doing),
        };
        diags.root_error(summary, format!("{detail}{suffix}"));
        return;
    }
    for e in errors {
        let field = e["field"].as_str().unwrap_or_default().to_string();
        let message = e["message"].as_str().unwrap_or_default().to_string();
        diags.error(
            title.clone(),
            format!("{detail}\n{field}: {message}{suffix}"),
            field_path(&field, cx.nested),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_fields_are_attribute_paths() {
        let nested = &["frontends", "backends", "session_affinity"];
        let p = |f: &str| field_path(f, nested);
        assert_eq!(
            p("frontends[0].vip"),
            AttributePath::new("frontends").index(0).attribute("vip")
        );
        assert_eq!(
            p("backends[2].port"),
            AttributePath::new("backends").index(2).attribute("port")
        );
        assert_eq!(
            p("session_affinity.timeout_seconds"),
            AttributePath::new("session_affinity").attribute("timeout_seconds")
        );
        assert_eq!(
            p("session_affinity"),
            AttributePath::new("session_affinity")
        );
        assert_eq!(p("frontends"), AttributePath::new("frontends"));
        // Not nested: the top-level attribute only.
        assert_eq!(p("labels.x"), AttributePath::new("labels"));
    }
}
