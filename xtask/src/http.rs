//! A minimal HTTP/1.1 client for talking to our own API on loopback (no TLS, no
//! redirects): enough for readiness checks and seeding, without a heavy dependency.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("response is not JSON: {}", self.body))
    }
}

/// `base` is `http://host:port`.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> Result<Response> {
    let host = base
        .strip_prefix("http://")
        .with_context(|| format!("{base}: only http:// is supported here"))?;
    let mut stream = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let (ctype, payload) = body.unwrap_or(("", ""));
    if body.is_some() {
        req.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\n\r\n{payload}",
        payload.len()
    ));
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response from {host}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed status line from {host}"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked responses are not supported by xtask's client");
    }
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// Sends JSON and expects one of the given statuses; returns the parsed body.
pub fn json(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: &serde_json::Value,
    expect: u16,
) -> Result<serde_json::Value> {
    let resp = request(
        base,
        method,
        path,
        Some(token),
        Some(("application/json", &body.to_string())),
    )?;
    if resp.status != expect {
        bail!(
            "{method} {path}: expected {expect}, got {}: {}",
            resp.status,
            resp.body
        );
    }
    if resp.body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    resp.json()
}
