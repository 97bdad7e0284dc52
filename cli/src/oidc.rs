//! `weft login` with OpenID Connect: authorization code + PKCE (S256) through a loopback
//! redirect (RFC 8252), as a public client, on the `oauth2` crate (request building, PKCE,
//! state, token exchange and refresh). The control plane takes the issuer's access tokens
//! (JWT) as bearer credentials.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::url::form_urlencoded;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, EndpointNotSet, EndpointSet, ExtraTokenFields,
    PkceCodeChallenge, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::client::now;
use crate::config::OidcCredential;

#[derive(Debug, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

/// The token response's OpenID Connect field: the ID token, read only to show who signed in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenField {}

type Tokens = StandardTokenResponse<IdTokenField, BasicTokenType>;

/// An OAuth 2 public client with the given endpoints set (`A`: authorization, `T`: token).
type OAuthClient<A, T> = oauth2::Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    A,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    T,
>;

pub struct LoginRequest<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub resource: Option<&'a str>,
    pub scopes: &'a str,
    pub timeout: Duration,
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
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The HTTP client for the token endpoint: it must not follow redirects (OAuth 2 security
/// best practice: a redirect could carry the code or refresh token elsewhere).
fn token_http() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("weft-cli/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")
}

fn token_url(endpoint: &str) -> Result<TokenUrl> {
    TokenUrl::new(endpoint.to_string())
        .with_context(|| format!("the token endpoint {endpoint:?} is not a URL"))
}

/// Why a token request failed, in the words the CLI has always used.
fn token_error<E: std::error::Error + 'static>(
    endpoint: &str,
    e: RequestTokenError<E, BasicErrorResponse>,
) -> anyhow::Error {
    match e {
        RequestTokenError::ServerResponse(r) => anyhow!(
            "the identity provider refused the token request: {} {}",
            r.error(),
            r.error_description()
                .map(String::as_str)
                .unwrap_or_default()
        ),
        RequestTokenError::Request(e) => {
            anyhow!("cannot reach the token endpoint {endpoint}: {e}")
        }
        RequestTokenError::Parse(e, _) => {
            anyhow!("the token endpoint's answer is not a token response: {e}")
        }
        RequestTokenError::Other(e) => anyhow!("token request to {endpoint} failed: {e}"),
    }
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
    let client: OAuthClient<EndpointSet, EndpointSet> =
        oauth2::Client::new(ClientId::new(req.client_id.to_string()))
            .set_auth_uri(
                AuthUrl::new(disc.authorization_endpoint.clone()).with_context(|| {
                    format!(
                        "the authorization endpoint {:?} is not a URL",
                        disc.authorization_endpoint
                    )
                })?,
            )
            .set_token_uri(token_url(&disc.token_endpoint)?)
            .set_redirect_uri(RedirectUrl::new(redirect).context("the loopback redirect URL")?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let nonce = CsrfToken::new_random();
    let mut auth = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(
            req.scopes
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(|s| Scope::new(s.to_string())),
        )
        .set_pkce_challenge(challenge)
        .add_extra_param("nonce", nonce.secret().clone());
    if req.scopes.split(' ').any(|s| s == "offline_access") {
        // Providers grant a refresh token for offline_access only with explicit consent.
        auth = auth.add_extra_param("prompt", "consent");
    }
    if let Some(r) = req.resource {
        auth = auth.add_extra_param("resource", r.to_string());
    }
    let (url, state) = auth.url();
    eprintln!("Open this URL in a browser to sign in:\n\n  {url}\n");
    if let Some(browser) = std::env::var_os("BROWSER").filter(|b| !b.is_empty()) {
        let _ = std::process::Command::new(browser)
            .arg(url.as_str())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    eprintln!("Waiting for the sign-in to finish (Ctrl-C to cancel)…");
    let code = tokio::time::timeout(req.timeout, wait_for_code(&listener, state.secret()))
        .await
        .map_err(|_| {
            anyhow!(
                "no sign-in within {:?}: run `weft login` again",
                req.timeout
            )
        })??;

    let mut exchange = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier);
    if let Some(r) = req.resource {
        exchange = exchange.add_extra_param("resource", r.to_string());
    }
    let tokens = exchange
        .request_async(&token_http()?)
        .await
        .map_err(|e| token_error(&disc.token_endpoint, e))?;
    let subject = tokens
        .extra_fields()
        .id_token
        .as_deref()
        .and_then(id_token_subject);
    Ok(OidcCredential {
        issuer: req.issuer.trim_end_matches('/').to_string(),
        client_id: req.client_id.to_string(),
        token_endpoint: disc.token_endpoint,
        access_token: tokens.access_token().secret().clone(),
        refresh_token: tokens.refresh_token().map(|t| t.secret().clone()),
        expires_at: expires_at(&tokens),
        resource: req.resource.map(str::to_string),
        subject,
    })
}

fn expires_at(tokens: &Tokens) -> Option<i64> {
    tokens
        .expires_in()
        .map(|d| now() + i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
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

/// New tokens from a refresh token; the provider may rotate the refresh token.
pub async fn refresh(cred: &OidcCredential, refresh_token: &str) -> Result<OidcCredential> {
    let client: OAuthClient<EndpointNotSet, EndpointSet> =
        oauth2::Client::new(ClientId::new(cred.client_id.clone()))
            .set_token_uri(token_url(&cred.token_endpoint)?);
    let token = RefreshToken::new(refresh_token.to_string());
    let mut req = client.exchange_refresh_token(&token);
    if let Some(r) = &cred.resource {
        req = req.add_extra_param("resource", r.clone());
    }
    let t = req
        .request_async(&token_http()?)
        .await
        .map_err(|e| token_error(&cred.token_endpoint, e))?;
    Ok(OidcCredential {
        access_token: t.access_token().secret().clone(),
        refresh_token: t
            .refresh_token()
            .map(|r| r.secret().clone())
            .or_else(|| Some(refresh_token.to_string())),
        expires_at: expires_at(&t),
        ..cred.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oauth2::PkceCodeVerifier;

    #[test]
    fn pkce_challenge_is_rfc7636() {
        // BASE64URL(SHA256(verifier)), as computed independently (Python hashlib).
        let v = PkceCodeVerifier::new("dBjftJeZ4CVP-mJ92IGbeUZ8qgYTF0OdeMkw1t8yMK0".into());
        assert_eq!(
            PkceCodeChallenge::from_code_verifier_sha256(&v).as_str(),
            "4Q29Nd_hWuH6w5oVnYAi_jIgzjkrGFKUMRXmfxiIN-8"
        );
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

    #[test]
    fn the_id_token_names_who_signed_in() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"u1","email":"ana@example.com"}"#);
        let jwt = format!("e30.{claims}.sig");
        assert_eq!(id_token_subject(&jwt).as_deref(), Some("ana@example.com"));
        let tokens: Tokens = serde_json::from_str(
            r#"{"access_token":"a","token_type":"Bearer","expires_in":60,"id_token":"x.y.z"}"#,
        )
        .expect("a token response");
        assert_eq!(tokens.extra_fields().id_token.as_deref(), Some("x.y.z"));
        assert!(expires_at(&tokens).is_some_and(|t| t >= now() + 59));
    }
}
