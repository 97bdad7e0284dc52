//! OpenID Connect against one configured issuer: discovery, the authorization code flow
//! with PKCE and nonce for console sign-in, and verification of the issuer's JWT access
//! tokens (RFC 9068) against its JWKS, cached and refreshed when an unknown key appears.

use std::time::{Duration, Instant};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::reqwest;
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, JsonWebKey,
    JwsSigningAlgorithm, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::{Mutex, RwLock};

use crate::config::OidcConfig;
use crate::error::ApiError;

/// Clock skew tolerated on `exp`/`nbf`.
pub const LEEWAY: Duration = Duration::from_secs(5);
/// Keys are re-fetched at least this often.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// ...and at most this often, however many unknown `kid`s arrive.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);
/// Discovery is refreshed this often.
const METADATA_MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider is unreachable or misbehaving: {0}")]
    Provider(String),
    #[error("invalid access token: {0}")]
    InvalidToken(&'static str),
    #[error("sign-in failed: {0}")]
    SignIn(String),
}

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> Self {
        match e {
            OidcError::Provider(why) => {
                tracing::warn!(%why, "OIDC provider error");
                ApiError::Unavailable("the identity provider is not reachable".into())
            }
            // The reason is ours (never the token): safe to say.
            OidcError::InvalidToken(why) => {
                ApiError::Unauthenticated(format!("invalid access token: {why}"))
            }
            OidcError::SignIn(why) => ApiError::Unauthenticated(format!("sign-in failed: {why}")),
        }
    }
}

/// The console client: set when client id and redirect URL are configured.
struct ConsoleClient {
    id: ClientId,
    secret: Option<ClientSecret>,
    redirect: RedirectUrl,
}

struct Cached<T> {
    value: Arc<T>,
    fetched: Instant,
}

pub struct Oidc {
    issuer: IssuerUrl,
    console: Option<ConsoleClient>,
    /// Audience bearer tokens must carry; `None`: no bearer JWT is accepted.
    audience: Option<String>,
    pub session_ttl: Duration,
    http: reqwest::Client,
    metadata: RwLock<Option<Cached<CoreProviderMetadata>>>,
    jwks: RwLock<Option<Cached<CoreJsonWebKeySet>>>,
    jwks_refresh: Mutex<()>,
}

/// A person as the issuer describes them after sign-in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// The claims we read from an access token (RFC 9068).
#[derive(Debug, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    aud: Audiences,
    exp: i64,
    nbf: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
}

impl Audiences {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Audiences::One(a) => a == aud,
            Audiences::Many(v) => v.iter().any(|a| a == aud),
        }
    }
}

#[derive(Debug, Deserialize)]
struct JoseHeader {
    alg: CoreJwsSigningAlgorithm,
    kid: Option<String>,
    typ: Option<String>,
}

/// A sign-in just begun: send the browser to `url`; keep the rest for the callback.
pub struct LoginStart {
    pub url: String,
    pub state: String,
    pub pkce_verifier: String,
    pub nonce: String,
}

/// A verified access token: who it names.
#[derive(Debug, Clone)]
pub struct TokenSubject {
    pub issuer: String,
    pub subject: String,
}

impl Oidc {
    /// `None` when no issuer is configured.
    pub fn from_config(cfg: &OidcConfig) -> anyhow::Result<Option<Oidc>> {
        let Some(issuer) = cfg.oidc_issuer.as_deref() else {
            return Ok(None);
        };
        let issuer = IssuerUrl::new(issuer.trim_end_matches('/').to_string())
            .map_err(|e| anyhow::anyhow!("--oidc-issuer is not a URL: {e}"))?;
        let console = match (&cfg.oidc_client_id, &cfg.oidc_redirect_url) {
            (Some(id), Some(redirect)) => Some(ConsoleClient {
                id: ClientId::new(id.clone()),
                secret: cfg.oidc_client_secret.clone().map(ClientSecret::new),
                redirect: RedirectUrl::new(redirect.clone())
                    .map_err(|e| anyhow::anyhow!("--oidc-redirect-url is not a URL: {e}"))?,
            }),
            (None, None) => None,
            _ => {
                anyhow::bail!("console sign-in needs both --oidc-client-id and --oidc-redirect-url")
            }
        };
        let audience = cfg
            .oidc_audience
            .clone()
            .or_else(|| cfg.oidc_client_id.clone());
        let http = reqwest::ClientBuilder::new()
            // Following redirects from the issuer would open us to SSRF.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Some(Oidc {
            issuer,
            console,
            audience,
            session_ttl: Duration::from_secs(cfg.session_ttl_seconds),
            http,
            metadata: RwLock::new(None),
            jwks: RwLock::new(None),
            jwks_refresh: Mutex::new(()),
        }))
    }

    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// The issuer's discovery document, cached for an hour (`fresh`: fetch it now).
    async fn metadata(&self, fresh: bool) -> Result<Arc<CoreProviderMetadata>, OidcError> {
        if !fresh {
            if let Some(c) = self.metadata.read().await.as_ref() {
                if c.fetched.elapsed() < METADATA_MAX_AGE {
                    return Ok(c.value.clone());
                }
            }
        }
        let meta = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Provider(format!("discovery: {e}")))?;
        let meta = Arc::new(meta);
        *self.metadata.write().await = Some(Cached {
            value: meta.clone(),
            fetched: Instant::now(),
        });
        Ok(meta)
    }

    /// The issuer's signing keys: cached, re-fetched when stale or when a token names a
    /// key we do not know (key rotation), but never more than once per 10 seconds.
    async fn keys(&self, kid: Option<&str>) -> Result<Arc<CoreJsonWebKeySet>, OidcError> {
        let knows = |set: &CoreJsonWebKeySet| {
            kid.is_none_or(|kid| {
                set.keys()
                    .iter()
                    .any(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
            })
        };
        if let Some(c) = self.jwks.read().await.as_ref() {
            let age = c.fetched.elapsed();
            if (age < JWKS_MAX_AGE && knows(&c.value)) || age < JWKS_MIN_REFRESH {
                return Ok(c.value.clone());
            }
        }
        let _one_at_a_time = self.jwks_refresh.lock().await;
        if let Some(c) = self.jwks.read().await.as_ref() {
            if c.fetched.elapsed() < JWKS_MIN_REFRESH {
                return Ok(c.value.clone());
            }
        }
        let meta = self.metadata(false).await?;
        let set = CoreJsonWebKeySet::fetch_async(meta.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Provider(format!("fetching the JWKS: {e}")))?;
        let set = Arc::new(set);
        *self.jwks.write().await = Some(Cached {
            value: set.clone(),
            fetched: Instant::now(),
        });
        tracing::debug!(
            keys = set.keys().len(),
            "refreshed the issuer's signing keys"
        );
        Ok(set)
    }

    /// Verifies a JWT access token from the issuer: signature (issuer's JWKS, asymmetric
    /// algorithms only), `typ` `at+jwt`, issuer, audience, expiry and not-before.
    pub async fn verify_access_token(&self, token: &str) -> Result<TokenSubject, OidcError> {
        let audience = self.audience.as_deref().ok_or(OidcError::InvalidToken(
            "no audience is configured for JWTs",
        ))?;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OidcError::InvalidToken("not a JWS compact serialisation"));
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).ok();
        let header: JoseHeader = decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(OidcError::InvalidToken("malformed header"))?;
        let typ_ok = header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        if !typ_ok {
            return Err(OidcError::InvalidToken("not an access token (typ)"));
        }
        if header.alg.uses_shared_secret() || header.alg == CoreJwsSigningAlgorithm::None {
            return Err(OidcError::InvalidToken("signature algorithm not allowed"));
        }
        let signature = decode(s).ok_or(OidcError::InvalidToken("malformed signature"))?;
        let signed = &token[..h.len() + 1 + p.len()];
        let keys = self.keys(header.kid.as_deref()).await?;
        let verified = keys
            .keys()
            .iter()
            .filter(|k| match (&header.kid, k.key_id()) {
                (Some(want), Some(have)) => want == have.as_str(),
                (Some(_), None) => false,
                (None, _) => true,
            })
            .any(|k| {
                k.verify_signature(&header.alg, signed.as_bytes(), &signature)
                    .is_ok()
            });
        if !verified {
            return Err(OidcError::InvalidToken("bad signature"));
        }
        let claims: AccessClaims = decode(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(OidcError::InvalidToken("malformed claims"))?;
        if claims.iss.trim_end_matches('/') != self.issuer.as_str().trim_end_matches('/') {
            return Err(OidcError::InvalidToken("wrong issuer"));
        }
        if !claims.aud.contains(audience) {
            return Err(OidcError::InvalidToken("wrong audience"));
        }
        let now = chrono::Utc::now().timestamp();
        let leeway = LEEWAY.as_secs() as i64;
        if claims.exp + leeway <= now {
            return Err(OidcError::InvalidToken("expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf - leeway > now) {
            return Err(OidcError::InvalidToken("not valid yet"));
        }
        if claims.sub.is_empty() {
            return Err(OidcError::InvalidToken("no subject"));
        }
        Ok(TokenSubject {
            issuer: self.issuer.as_str().to_string(),
            subject: claims.sub,
        })
    }

    fn console(&self) -> Result<&ConsoleClient, ApiError> {
        self.console.as_ref().ok_or_else(|| {
            ApiError::NotFound(
                "console sign-in is not configured on this server (no OIDC client)".into(),
            )
        })
    }

    /// Begins the authorization code flow: PKCE (S256), nonce, random state, and the API
    /// as the resource (so the access token is usable as a bearer here).
    pub async fn begin_login(&self) -> Result<LoginStart, ApiError> {
        let console = self.console()?;
        let meta = self.metadata(false).await?;
        let client = CoreClient::from_provider_metadata(
            (*meta).clone(),
            console.id.clone(),
            console.secret.clone(),
        )
        .set_redirect_uri(console.redirect.clone());
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge);
        if let Some(aud) = &self.audience {
            req = req.add_extra_param("resource", aud.clone());
        }
        let (url, state, nonce) = req.url();
        Ok(LoginStart {
            url: url.to_string(),
            state: state.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Redeems the code (with the PKCE verifier) and verifies the ID token (signature,
    /// issuer, audience, expiry, nonce).
    pub async fn finish_login(
        &self,
        code: &str,
        pkce_verifier: String,
        nonce: String,
    ) -> Result<Identity, ApiError> {
        let console = self.console()?;
        // Fresh discovery: brings the current signing keys for the ID token.
        let meta = self.metadata(true).await?;
        let client = CoreClient::from_provider_metadata(
            (*meta).clone(),
            console.id.clone(),
            console.secret.clone(),
        )
        .set_redirect_uri(console.redirect.clone());
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| {
                tracing::info!(error = %e, "authorization code refused");
                OidcError::SignIn("the identity provider refused the authorization code".into())
            })?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::SignIn("no ID token in the token response".into()))?;
        let claims = id_token
            .claims(&client.id_token_verifier(), &Nonce::new(nonce))
            .map_err(|e| {
                tracing::info!(error = %e, "ID token refused");
                OidcError::SignIn("the ID token did not verify".into())
            })?;
        Ok(Identity {
            issuer: self.issuer.as_str().to_string(),
            subject: claims.subject().as_str().to_string(),
            email: claims.email().map(|e| e.as_str().to_lowercase()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OidcConfig {
        OidcConfig {
            oidc_issuer: Some("http://127.0.0.1:1/".into()),
            oidc_client_id: Some("console".into()),
            oidc_client_secret: None,
            oidc_redirect_url: Some("http://127.0.0.1:2/auth/callback".into()),
            oidc_audience: None,
            session_ttl_seconds: 60,
        }
    }

    #[test]
    fn configuration_is_checked() {
        let none = OidcConfig {
            oidc_issuer: None,
            ..cfg()
        };
        assert!(Oidc::from_config(&none).unwrap().is_none());
        let oidc = Oidc::from_config(&cfg()).unwrap().unwrap();
        assert_eq!(oidc.issuer(), "http://127.0.0.1:1");
        // The audience defaults to the client id.
        assert_eq!(oidc.audience.as_deref(), Some("console"));
        let half = OidcConfig {
            oidc_redirect_url: None,
            ..cfg()
        };
        assert!(Oidc::from_config(&half).is_err());
        let bad = OidcConfig {
            oidc_issuer: Some("not a url".into()),
            ..cfg()
        };
        assert!(Oidc::from_config(&bad).is_err());
    }

    #[test]
    fn audiences_may_be_one_or_many() {
        let one: Audiences = serde_json::from_str("\"a\"").unwrap();
        let many: Audiences = serde_json::from_str("[\"b\", \"a\"]").unwrap();
        assert!(one.contains("a") && many.contains("a"));
        assert!(!one.contains("b"));
        assert!(!many.contains("c"));
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused_before_any_network() {
        let oidc = Oidc::from_config(&cfg()).unwrap().unwrap();
        for t in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(matches!(
                oidc.verify_access_token(t).await,
                Err(OidcError::InvalidToken(_))
            ));
        }
    }
}
