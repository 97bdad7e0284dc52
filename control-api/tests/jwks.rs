//! Key rotation at the issuer: the API keeps verifying with its cached keys while the
//! issuer is down, and fetches the new keys when a token names a key it has not seen.
//! Runs its own instance of the dev provider (dev/oidc-provider), restarted on the same
//! address with a fresh signing key, as a real issuer rotating its keys would look.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control_api::config::OidcConfig;
use control_api::oidc::Oidc;
use serde_json::json;
use weft_testkit::ports::free_port;

const AUDIENCE: &str = "https://api.weft.local";
const SECRET: &str = "jwks-test-client-secret-0123456789";

/// One run of the dev provider; killed on drop.
struct Issuer(Child);

impl Drop for Issuer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_issuer(port: u16, dir: &std::path::Path) -> Issuer {
    let config = dir.join(format!("provider-{}.json", uuid::Uuid::new_v4().simple()));
    let body = json!({
        "issuer": format!("http://127.0.0.1:{port}"),
        "port": port,
        "default_resource": AUDIENCE,
        "resources": {AUDIENCE: {"scope": "weft", "access_token_ttl": 600}},
        "users": [],
        "clients": [{"client_id": "machine", "client_secret": SECRET,
                     "grant_types": ["client_credentials"]}],
    });
    std::fs::write(&config, body.to_string()).expect("write provider config");
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../dev/oidc-provider"));
    let child = Command::new("node")
        .current_dir(dir)
        .arg("server.js")
        .env("WEFT_OIDC_PROVIDER_CONFIG", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("node runs the dev provider (cargo xtask test installs it)");
    let issuer = Issuer(child);
    let url = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !reqwest::get(&url)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the provider did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    issuer
}

async fn token(port: u16) -> String {
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/token"))
        .basic_auth("machine", Some(SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token endpoint")
        .text()
        .await
        .map(|t| serde_json::from_str(&t).expect("JSON"))
        .expect("body");
    body["access_token"]
        .as_str()
        .expect("access token")
        .to_string()
}

fn kid(jwt: &str) -> String {
    use base64::Engine;
    let header = jwt.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["kid"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn cached_keys_outlive_the_issuer_and_new_keys_are_fetched() {
    let tmp = weft_testkit::tmp::dir("jwks");
    let dir = tmp.path().to_path_buf();
    let port = free_port();
    let oidc = Oidc::from_config(&OidcConfig {
        oidc_issuer: Some(format!("http://127.0.0.1:{port}")),
        oidc_client_id: None,
        oidc_client_secret: None,
        oidc_redirect_url: None,
        oidc_audience: Some(AUDIENCE.into()),
        session_ttl_seconds: 60,
    })
    .unwrap()
    .unwrap();

    let first = start_issuer(port, &dir).await;
    let old = token(port).await;
    let fetched = Instant::now();
    oidc.verify_access_token(&old)
        .await
        .expect("a fresh token verifies");
    drop(first);

    // The issuer is gone: its keys are cached.
    oidc.verify_access_token(&old)
        .await
        .expect("verified with the cached keys, without the issuer");

    // It comes back with a new signing key.
    let _second = start_issuer(port, &dir).await;
    let new = token(port).await;
    assert_ne!(
        kid(&old),
        kid(&new),
        "the restarted issuer signs with a new key"
    );
    // Unknown keys trigger at most one fetch per 10 s, so a flood of made-up kids cannot
    // make us hammer the issuer: wait that out, then the new key is fetched.
    let throttle = Duration::from_secs(10);
    if let Some(left) = throttle.checked_sub(fetched.elapsed()) {
        tokio::time::sleep(left + Duration::from_millis(200)).await;
    }
    oidc.verify_access_token(&new)
        .await
        .expect("the new key is fetched when a token names it");
}
