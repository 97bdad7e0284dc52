//! Sign-in against the real OIDC provider that `cargo xtask test` starts: the whole
//! authorization code flow through its login form, sessions and CSRF, bearer access
//! tokens (JWT) from the same issuer, and what happens without an issuer.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::oidc::{client_credentials, idp, set_cookie, user};
use common::{Rest, TestApp, OPERATOR};
use serde_json::{json, Value};

#[tokio::test]
async fn code_flow_signs_in_and_the_session_cookie_works() {
    let t = TestApp::with_oidc().await;
    let (callback, login) = t
        .authorize(&user("alice"), &idp().password)
        .await
        .expect("provider accepts alice");
    let r = t.callback(&callback, Some(&login)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let (session, cookie) = set_cookie(&r, "weft_session").expect("session cookie");
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let (csrf, csrf_cookie) = set_cookie(&r, "weft_csrf").expect("CSRF cookie");
    assert!(
        !csrf_cookie.contains("HttpOnly"),
        "the console reads the CSRF token"
    );
    // Only hashes are stored.
    let (id_hash, csrf_hash): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT id_hash, csrf_hash FROM sessions")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(id_hash, control_api::auth::hash_token(&session));
    assert_eq!(csrf_hash, control_api::auth::hash_token(&csrf));

    // The person was created from the ID token.
    let me = t.call_cookie("GET", "/v1/me", &session, None, None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["kind"], "session");
    assert_eq!(me.body["user"]["email"], user("alice"));
    assert_eq!(me.body["user"]["email_verified"], true);
    assert_eq!(me.body["tenants"], json!([]));

    // A person may create a tenant and becomes its owner; the cookie works on its routes.
    let s = common::oidc::Session {
        id: session.clone(),
        csrf: csrf.clone(),
    };
    let r = t
        .as_user(&s, "POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let me = t.call_cookie("GET", "/v1/me", &session, None, None).await;
    assert_eq!(me.body["tenants"][0]["name"], "acme");
    assert_eq!(me.body["tenants"][0]["role"], "owner");
    let r = t
        .call_cookie("GET", "/v1/tenants/acme/clusters", &session, None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = t
        .call_cookie("GET", "/v1/tenants", &session, None, None)
        .await;
    assert_eq!(r.body["items"].as_array().map(Vec::len), Some(1));

    // Cookie writes need the CSRF token; refused ones write nothing.
    let cluster = json!({"name": "edge"});
    for token in [None, Some("wrong"), Some("")] {
        let r = t
            .call_cookie(
                "POST",
                "/v1/tenants/acme/clusters",
                &session,
                token,
                Some(cluster.clone()),
            )
            .await;
        assert!(r.is_problem(403, "forbidden"), "{token:?}: {}", r.body);
    }
    assert_eq!(t.count("clusters").await, 0);
    let r = t
        .call_cookie(
            "POST",
            "/v1/tenants/acme/clusters",
            &session,
            Some(&csrf),
            Some(cluster),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Another tenant stays invisible.
    t.tenant("globex").await;
    let r = t
        .call_cookie("GET", "/v1/tenants/globex/clusters", &session, None, None)
        .await;
    assert!(r.is_problem(404, "not-found"), "{}", r.body);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let t = TestApp::with_oidc().await;
    let s = t.sign_in(&user("alice")).await;
    let r = t
        .call_cookie("POST", "/auth/logout", &s.id, None, None)
        .await;
    assert!(
        r.is_problem(403, "forbidden"),
        "logout needs the CSRF token: {}",
        r.body
    );
    let r = t.as_user(&s, "POST", "/auth/logout", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let (cleared, attrs) = set_cookie(&r, "weft_session").expect("cookie cleared");
    assert_eq!(cleared, "");
    assert!(attrs.contains("Max-Age=0"), "{attrs}");
    let r = t.call_cookie("GET", "/v1/me", &s.id, None, None).await;
    assert!(r.is_problem(401, "unauthenticated"), "{}", r.body);
    assert_eq!(t.count("sessions").await, 0);
}

#[tokio::test]
async fn expired_sessions_are_refused() {
    let t = TestApp::with_oidc().await;
    let s = t.sign_in(&user("carol")).await;
    let r = t.call_cookie("GET", "/v1/me", &s.id, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second'")
        .execute(&t.pool)
        .await
        .unwrap();
    let r = t.call_cookie("GET", "/v1/me", &s.id, None, None).await;
    assert!(r.is_problem(401, "unauthenticated"), "{}", r.body);
    let r = t
        .call_cookie("GET", "/v1/me", "ws_forged", None, None)
        .await;
    assert!(r.is_problem(401, "unauthenticated"), "{}", r.body);
}

#[tokio::test]
async fn the_provider_checks_the_password() {
    let t = TestApp::with_oidc().await;
    let refused = t.authorize(&user("alice"), "not-the-password").await;
    assert!(refused.is_err(), "a wrong password must not sign in");
    let refused = t.authorize("nobody@weft.test", &idp().password).await;
    assert!(refused.is_err(), "an unknown user must not sign in");
    assert_eq!(t.count("users").await, 0);
}

#[tokio::test]
async fn the_callback_is_bound_to_the_browser_and_used_once() {
    let t = TestApp::with_oidc().await;
    let (callback, login) = t.authorize(&user("bob"), &idp().password).await.unwrap();
    // Without the cookie of the browser that began it, or with another one.
    let r = t.callback(&callback, None).await;
    assert!(r.is_problem(400, "bad-request"), "{}", r.body);
    let (_, other_login) = t.authorize(&user("bob"), &idp().password).await.unwrap();
    let r = t.callback(&callback, Some(&other_login)).await;
    assert!(r.is_problem(400, "bad-request"), "{}", r.body);
    // A forged code fails at the provider.
    let forged = callback.replace("code=", "code=x");
    let r = t.callback(&forged, Some(&login)).await;
    assert_eq!(r.status.as_u16() / 100, 4, "{}", r.body);
    // The state was consumed by that attempt: even the real code is now refused.
    let r = t.callback(&callback, Some(&login)).await;
    assert!(r.is_problem(400, "bad-request"), "{}", r.body);
    assert_eq!(t.count("sessions").await, 0);
    // The provider's refusal comes back as a problem too.
    let r = t
        .callback("/auth/callback?error=access_denied&state=x", Some("x"))
        .await;
    assert!(r.is_problem(401, "unauthenticated"), "{}", r.body);
    // return_to stays on this server.
    let r = t
        .call(
            "GET",
            "/auth/login?return_to=https://evil.example/",
            None,
            None,
        )
        .await;
    assert_eq!(r.fields(), vec!["return_to"]);
}

#[tokio::test]
async fn provider_access_tokens_work_as_bearer() {
    let t = TestApp::with_oidc().await;
    let jwt = client_credentials("weft-test-machine", None).await;
    let r = t.get("/v1/me", &jwt).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["kind"], "access_token");
    let r = t.post("/v1/tenants", &jwt, json!({"name": "robots"})).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "bearer writes need no CSRF token: {}",
        r.body
    );
    let r = t.get("/v1/tenants/robots/clusters", &jwt).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // The same person on the next request, not a new one.
    let jwt2 = client_credentials("weft-test-machine", None).await;
    let r = t.get("/v1/me", &jwt2).await;
    assert_eq!(r.body["tenants"][0]["name"], "robots");
    assert_eq!(t.count("users").await, 1);
}

fn b64json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn enc(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn tampered_foreign_and_expired_tokens_get_401() {
    let t = TestApp::with_oidc().await;
    let jwt = client_credentials("weft-test-machine", None).await;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(b64json(parts[0])["typ"], "at+jwt");

    // A flipped bit in the signature.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 0x01;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
    // Claims changed under the original signature.
    let mut claims = b64json(parts[1]);
    claims["sub"] = json!("someone-else");
    let bad_claims = format!("{}.{}.{}", parts[0], enc(&claims), parts[2]);
    // Unsigned, and signed with a shared secret nobody has.
    let mut none = b64json(parts[0]);
    none["alg"] = json!("none");
    let unsigned = format!("{}.{}.", enc(&none), parts[1]);
    let mut hs = b64json(parts[0]);
    hs["alg"] = json!("HS256");
    let hmac = format!("{}.{}.{}", enc(&hs), parts[1], parts[2]);
    // Another resource's token from the same issuer.
    let foreign = client_credentials("weft-test-machine", Some(&idp().other_audience)).await;
    for (what, token) in [
        ("bad signature", bad_sig),
        ("changed claims", bad_claims),
        ("alg none", unsigned),
        ("alg HS256", hmac),
        ("wrong audience", foreign),
        ("garbage", "a.b.c".to_string()),
    ] {
        let r = t.get("/v1/me", &token).await;
        assert!(r.is_problem(401, "unauthenticated"), "{what}: {}", r.body);
        assert!(
            !r.body.to_string().contains(&token),
            "{what}: the token is echoed"
        );
    }
    let r = t.get("/v1/me", &jwt).await;
    assert_eq!(r.status, StatusCode::OK, "the untouched token still works");

    // A 1-second token, once past the 5-second leeway.
    let short = client_credentials("weft-test-short", None).await;
    let r = t.get("/v1/me", &short).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(1) + control_api::oidc::LEEWAY + Duration::from_secs(1))
        .await;
    let r = t.get("/v1/me", &short).await;
    assert!(r.is_problem(401, "unauthenticated"), "{}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap().contains("expired"),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn without_an_issuer_there_is_no_sign_in_and_no_jwt() {
    let t = TestApp::new().await;
    for path in ["/auth/login", "/auth/callback?code=x&state=y"] {
        let r = t.call("GET", path, None, None).await;
        assert!(r.is_problem(404, "not-found"), "{path}: {}", r.body);
    }
    let jwt = client_credentials("weft-test-machine", None).await;
    let r = t.get("/v1/me", &jwt).await;
    assert!(r.is_problem(401, "unauthenticated"), "{}", r.body);
    // The operator and API tokens are unaffected.
    let owner = t.tenant("acme").await;
    let r = t.get("/v1/me", &owner).await;
    assert_eq!(r.body["kind"], "api_token");
    assert_eq!(r.body["tenants"][0]["role"], "owner");
    let r = t.get("/v1/me", OPERATOR).await;
    assert_eq!(r.body["kind"], "operator");
}
