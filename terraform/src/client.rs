//! The REST calls the provider makes, over the API of `openapi/openapi.json`.
//!
//! A small client of its own for now (reqwest directly); the CLI's `cli/src/client.rs` could
//! become a shared crate used by both.

use std::borrow::Cow;

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

impl Client {
    pub fn new(api_url: &str, token: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            api_url: api_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            tenant: String::new(),
        }
    }

    /// Path under the tenant, e.g. `/clusters/x` → `/v1/tenants/acme/clusters/x`.
    pub fn tenant_path(&self, rest: &str) -> String {
        format!("/v1/tenants/{}{rest}", self.tenant)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<i64>,
    ) -> Result<Answer, String> {
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
            .map_err(|e| format!("{method} {path}: {e}"))?;
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
        let request_id = header("x-request-id").unwrap_or_default();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            revision,
            request_id,
        })
    }
}

/// Turns an error answer into diagnostics: one per `errors[]` entry on its field, else one.
pub fn report(diags: &mut Diagnostics, what: &str, a: &Answer) {
    let title = a.body["title"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{what}: HTTP {}", a.status));
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
            403 => format!("{title}: this needs the editor role"),
            412 => format!("{what}: changed outside Terraform since it was read; nothing was written; run plan again"),
            _ => title,
        };
        diags.root_error(summary, format!("{detail}{suffix}"));
        return;
    }
    for e in errors {
        let field = e["field"].as_str().unwrap_or_default().to_string();
        let message = e["message"].as_str().unwrap_or_default().to_string();
        let path = field
            .split(['.', '['])
            .next()
            .filter(|f| !f.is_empty())
            .map(|f| AttributePath::new(Cow::Owned(f.to_string())))
            .unwrap_or_default();
        diags.error(title.clone(), format!("{field}: {message}{suffix}"), path);
    }
}
