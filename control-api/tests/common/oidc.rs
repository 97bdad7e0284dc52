//! The real OIDC provider that `cargo xtask test` starts (dev/oidc-provider), and a
//! browserless browser: it follows the provider's redirects and fills in its login form.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use control_api::config::OidcConfig;
use control_api::oidc::Oidc;
use serde_json::Value;

use super::{Reply, Rest, TestApp};

/// The provider's settings, from the environment `cargo xtask test` exports.
pub struct Idp {
    pub issuer: String,
    pub audience: String,
    pub other_audience: String,
    pub client_id: String,
    pub client_secret: String,
    pub redirect_url: String,
    pub password: String,
}

use weft_testkit::db::env as var;

pub fn idp() -> Idp {
    Idp {
        issuer: var("WEFT_TEST_OIDC_ISSUER"),
        audience: var("WEFT_TEST_OIDC_AUDIENCE"),
        other_audience: var("WEFT_TEST_OIDC_OTHER_AUDIENCE"),
        client_id: var("WEFT_TEST_OIDC_CLIENT_ID"),
        client_secret: var("WEFT_TEST_OIDC_CLIENT_SECRET"),
        redirect_url: var("WEFT_TEST_OIDC_REDIRECT_URL"),
        password: var("WEFT_TEST_OIDC_PASSWORD"),
    }
}

/// A test user of the provider (`alice`, `bob`, `carol`, `dave`; `eve` has an
/// unverified e-mail).
pub fn user(name: &str) -> String {
    format!("{name}@weft.test")
}

/// A signed-in browser: the session cookie and the CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
}

/// A `Set-Cookie` header's cookie value by name, from a reply.
pub fn set_cookie(reply: &Reply, name: &str) -> Option<(String, String)> {
    reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            let value = v[name.len() + 1..].split(';').next().unwrap_or("");
            (value.to_string(), v.to_string())
        })
}

impl TestApp {
    /// A fresh database and the application configured against the test provider.
    pub async fn with_oidc() -> TestApp {
        let idp = idp();
        let cfg = OidcConfig {
            oidc_issuer: Some(idp.issuer),
            oidc_client_id: Some(idp.client_id),
            oidc_client_secret: Some(idp.client_secret),
            oidc_redirect_url: Some(idp.redirect_url),
            oidc_audience: Some(idp.audience),
            session_ttl_seconds: 3600,
        };
        let oidc = Oidc::from_config(&cfg)
            .expect("OIDC config")
            .expect("issuer");
        TestApp::with_state(
            Some(Arc::new(oidc)),
            control_api::ratelimit::FailureLimiter::default(),
        )
        .await
    }

    /// Begins a sign-in at `/auth/login` and plays the browser at the provider with these
    /// credentials. Returns the callback (path and query) the provider redirected to, and
    /// the `weft_login` cookie, or the provider's refusal.
    pub async fn authorize(&self, email: &str, password: &str) -> Result<(String, String), String> {
        let r = self
            .call("GET", "/auth/login?return_to=/v1/me", None, None)
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        let (login_cookie, _) = set_cookie(&r, "weft_login").expect("weft_login cookie");
        let mut url: reqwest::Url = r.headers[header::LOCATION]
            .to_str()
            .expect("location")
            .parse()
            .expect("provider URL");
        let redirect_url = idp().redirect_url;
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let mut form: Option<Vec<(&str, &str)>> = None;
        for _ in 0..12 {
            let req = match form.take() {
                Some(fields) => browser.post(url.clone()).form(&fields),
                None => browser.get(url.clone()),
            };
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp.headers()[reqwest::header::LOCATION]
                    .to_str()
                    .expect("location");
                let next = url.join(loc).expect("redirect URL");
                if next.as_str().starts_with(&redirect_url) {
                    let path = format!("{}?{}", next.path(), next.query().unwrap_or(""));
                    return Ok((path, login_cookie));
                }
                url = next;
                continue;
            }
            let body = resp.text().await.map_err(|e| e.to_string())?;
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(format!("the provider refused the login: {status}"));
            }
            assert_eq!(status, reqwest::StatusCode::OK, "{body}");
            let action = body
                .split("action=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next())
                .find(|a| a.ends_with("/login"))
                .unwrap_or_else(|| panic!("no login form in {body}"));
            url = url.join(action).expect("form action");
            form = Some(vec![("email", email), ("password", password)]);
        }
        Err("too many redirects".into())
    }

    /// Signs `email` in with the test password through the whole code flow.
    pub async fn sign_in(&self, email: &str) -> Session {
        let (callback, login_cookie) = self
            .authorize(email, &idp().password)
            .await
            .expect("the provider accepts the test user");
        let r = self.callback(&callback, Some(&login_cookie)).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        assert_eq!(r.headers[header::LOCATION], "/v1/me");
        let (id, _) = set_cookie(&r, "weft_session").expect("session cookie");
        let (csrf, _) = set_cookie(&r, "weft_csrf").expect("CSRF cookie");
        Session { id, csrf }
    }

    /// Calls `/auth/callback` as the browser would, with its `weft_login` cookie.
    pub async fn callback(&self, path_and_query: &str, login_cookie: Option<&str>) -> Reply {
        let mut req = Request::get(path_and_query);
        if let Some(c) = login_cookie {
            req = req.header(header::COOKIE, format!("weft_login={c}"));
        }
        self.send(req.body(Body::empty()).expect("request")).await
    }

    /// A request with the session cookie; `csrf` is sent as `X-CSRF-Token` when given.
    pub async fn call_cookie(
        &self,
        method: &str,
        path: &str,
        session: &str,
        csrf: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = weft_testkit::server::request(method, path, None, body);
        let headers = req.headers_mut();
        headers.insert(
            header::COOKIE,
            format!("weft_csrf=x; weft_session={session}")
                .parse()
                .expect("cookie"),
        );
        if let Some(c) = csrf {
            headers.insert("x-csrf-token", c.parse().expect("CSRF token"));
        }
        self.send(req).await
    }

    /// As the signed-in person, with the CSRF token, like the console.
    pub async fn as_user(
        &self,
        s: &Session,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        self.call_cookie(method, path, &s.id, Some(&s.csrf), body)
            .await
    }
}

/// An access token from the provider's token endpoint (client credentials).
pub async fn client_credentials(client_id: &str, resource: Option<&str>) -> String {
    let idp = idp();
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(r) = resource {
        form.push(("resource", r));
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/token", idp.issuer))
        .basic_auth(client_id, Some(&idp.client_secret))
        .form(&form)
        .send()
        .await
        .expect("token endpoint");
    let status = resp.status();
    let body: Value = serde_json::from_str(&resp.text().await.expect("body")).expect("JSON");
    assert!(status.is_success(), "{body}");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}
