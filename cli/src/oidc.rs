//! `weft login` with OpenID Connect: authorization code + PKCE (S256) through a loopback
//! redirect (RFC 8252), as a public client. The control plane takes the issuer's access
//! tokens (JWT) as bearer credentials.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::client::{encode_query, now};
use crate::config::OidcCredential;

#[derive(Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    id_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TokenError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

pub struct LoginRequest<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub resource: Option<&'a str>,
    pub scopes: &'a str,
    pub timeout: Duration,
}

/// 32 random bytes, base64url: PKCE verifier, state and nonce.
fn random() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Discovery> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach the OIDC issuer at {url}: check --issuer"))?;
    if !resp.status().is_success() {
        bail!(
            "the OIDC issuer answered {} for {url}: check --issuer",
            resp.status()
        );
    }
    let d: Discovery = resp
        .json()
        .await
        .with_context(|| format!("{url} is not an OpenID Connect discovery document"))?;
    if d.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        bail!(
            "the discovery document names issuer {:?}, not {issuer:?}",
            d.issuer
        );
    }
    Ok(d)
}

/// The value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs the whole flow: prints the URL (and opens `$BROWSER` when set), waits for the
/// provider to redirect the browser to our loopback listener, and redeems the code.
pub async fn login(http: &reqwest::Client, req: &LoginRequest<'_>) -> Result<OidcCredential> {
    let disc = discover(http, req.issuer).await?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("opening a loopback port for the sign-in redirect")?;
    let port = listener.local_addr()?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let verifier = random();
    let state = random();
    let nonce = random();
    let mut q = vec![
        ("response_type", "code".to_string()),
        ("client_id", req.client_id.to_string()),
        ("redirect_uri", redirect.clone()),
        ("scope", req.scopes.to_string()),
        ("state", state.clone()),
        ("nonce", nonce),
        ("code_challenge", challenge(&verifier)),
        ("code_challenge_method", "S256".to_string()),
    ];
    if req.scopes.split(' ').any(|s| s == "offline_access") {
        // Providers grant a refresh token for offline_access only with explicit consent.
        q.push(("prompt", "consent".to_string()));
    }
    if let Some(r) = req.resource {
        q.push(("resource", r.to_string()));
    }
    let sep = if disc.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}{}", disc.authorization_endpoint, encode_query(&q));
    eprintln!("Open this URL in a browser to sign in:\n\n  {url}\n");
    if let Some(browser) = std::env::var_os("BROWSER").filter(|b| !b.is_empty()) {
        let _ = std::process::Command::new(browser)
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    eprintln!("Waiting for the sign-in to finish (Ctrl-C to cancel)…");
    let code = tokio::time::timeout(req.timeout, wait_for_code(&listener, &state))
        .await
        .map_err(|_| {
            anyhow!(
                "no sign-in within {:?}: run `weft login` again",
                req.timeout
            )
        })??;

    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code),
        ("redirect_uri", redirect),
        ("client_id", req.client_id.to_string()),
        ("code_verifier", verifier),
    ];
    if let Some(r) = req.resource {
        form.push(("resource", r.to_string()));
    }
    let tokens = token_request(http, &disc.token_endpoint, &form).await?;
    let subject = tokens.id_token.as_deref().and_then(id_token_subject);
    Ok(OidcCredential {
        issuer: req.issuer.trim_end_matches('/').to_string(),
        client_id: req.client_id.to_string(),
        token_endpoint: disc.token_endpoint,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_at: tokens.expires_in.map(|s| now() + s),
        resource: req.resource.map(str::to_string),
        subject,
    })
}

/// Who the ID token names (e-mail, else `sub`), only for display; the API verifies
/// access tokens itself.
fn id_token_subject(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims["email"]
        .as_str()
        .or(claims["sub"].as_str())
        .map(str::to_string)
}

/// Serves the loopback redirect until a request with our `state` arrives; answers the
/// browser with a short page.
async fn wait_for_code(listener: &TcpListener, state: &str) -> Result<String> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let outcome = if path != "/callback" {
            None
        } else if query_param(query, "state").as_deref() != Some(state) {
            Some(Err(anyhow!(
                "the sign-in answer does not match this login (state)"
            )))
        } else if let Some(err) = query_param(query, "error") {
            let desc = query_param(query, "error_description").unwrap_or_default();
            Some(Err(anyhow!(
                "the identity provider refused the sign-in: {err} {desc}"
            )))
        } else {
            query_param(query, "code")
                .map(Ok)
                .or(Some(Err(anyhow!("the sign-in answer carries no code"))))
        };
        let (status, text) = match &outcome {
            None => ("404 Not Found", "Not found."),
            Some(Ok(_)) => ("200 OK", "Signed in to Weft. You can close this window."),
            Some(Err(_)) => ("400 Bad Request", "Sign-in failed: see the terminal."),
        };
        let page = format!("<!doctype html><title>Weft</title><p>{text}</p>");
        let _ = sock
            .write_all(
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            )
            .await;
        let _ = sock.shutdown().await;
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

async fn token_request(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, String)],
) -> Result<TokenAnswer> {
    let resp = http
        .post(endpoint)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(encode_query(form))
        .send()
        .await
        .with_context(|| format!("cannot reach the token endpoint {endpoint}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        let why = serde_json::from_slice::<TokenError>(&bytes)
            .map(|e| format!("{} {}", e.error, e.error_description.unwrap_or_default()))
            .unwrap_or_else(|_| status.to_string());
        bail!("the identity provider refused the token request: {why}");
    }
    serde_json::from_slice(&bytes).context("the token endpoint's answer is not a token response")
}

/// New tokens from a refresh token; the provider may rotate the refresh token.
pub async fn refresh(
    http: &reqwest::Client,
    cred: &OidcCredential,
    refresh_token: &str,
) -> Result<OidcCredential> {
    let mut form = vec![
        ("grant_type", "refresh_token".to_string()),
        ("refresh_token", refresh_token.to_string()),
        ("client_id", cred.client_id.clone()),
    ];
    if let Some(r) = &cred.resource {
        form.push(("resource", r.clone()));
    }
    let t = token_request(http, &cred.token_endpoint, &form).await?;
    Ok(OidcCredential {
        access_token: t.access_token,
        refresh_token: t.refresh_token.or_else(|| Some(refresh_token.to_string())),
        expires_at: t.expires_in.map(|s| now() + s),
        ..cred.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_challenge_is_rfc7636() {
        // BASE64URL(SHA256(verifier)), as computed independently (Python hashlib).
        assert_eq!(
            challenge("dBjftJeZ4CVP-mJ92IGbeUZ8qgYTF0OdeMkw1t8yMK0"),
            "4Q29Nd_hWuH6w5oVnYAi_jIgzjkrGFKUMRXmfxiIN-8"
        );
        assert_ne!(random(), random());
    }

    #[test]
    fn reads_query_parameters() {
        let q = "code=a%2Bb&state=xyz&error_description=no+way";
        assert_eq!(query_param(q, "code").as_deref(), Some("a+b"));
        assert_eq!(query_param(q, "state").as_deref(), Some("xyz"));
        assert_eq!(
            query_param(q, "error_description").as_deref(),
            Some("no way")
        );
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param("x=%4", "x").as_deref(), Some("%4"));
    }
}
