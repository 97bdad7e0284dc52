//! Signing in with OpenID Connect through the dev provider's login form, and refreshing.

use super::*;

/// Plays the browser: follows the provider's redirects, fills in its login form, and
/// finally calls the CLI's loopback callback.
async fn browser_sign_in(url: &str, email: &str, password: &str) {
    let browser = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url: reqwest::Url = url.parse().expect("authorization URL");
    let mut form: Option<Vec<(&str, &str)>> = None;
    for _ in 0..12 {
        let req = match form.take() {
            Some(fields) => browser.post(url.clone()).form(&fields),
            None => browser.get(url.clone()),
        };
        let resp = req.send().await.expect("the provider answers");
        let status = resp.status();
        if status.is_redirection() {
            let loc = resp.headers()[reqwest::header::LOCATION]
                .to_str()
                .unwrap()
                .to_string();
            url = url.join(&loc).unwrap();
            continue;
        }
        let body = resp.text().await.unwrap();
        if url.path() == "/callback" {
            assert_eq!(status, 200, "the CLI's callback page: {body}");
            return;
        }
        assert_eq!(status, 200, "{body}");
        let action = body
            .split("action=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .find(|a| a.ends_with("/login"))
            .unwrap_or_else(|| panic!("no login form in {body}"));
        url = url.join(action).unwrap();
        form = Some(vec![("email", email), ("password", password)]);
    }
    panic!("too many redirects");
}

fn stored_credential(api: &Api) -> Value {
    let text = std::fs::read_to_string(api.config_dir().join("config.yaml")).unwrap();
    let cfg: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let cfg = serde_json::to_value(cfg).unwrap();
    let current = cfg["current_context"].as_str().unwrap().to_string();
    cfg["contexts"][current]["credential"].clone()
}

#[tokio::test]
async fn oidc_login_through_the_dev_provider_and_refresh() {
    let api = Api::with_oidc().await;
    let (issuer, audience, password, client_id) = idp();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args([
        "login",
        "--api-url",
        &api.url,
        "--issuer",
        &issuer,
        "--client-id",
        &client_id,
        "--resource",
        &audience,
    ])
    .env_clear()
    .env("XDG_CONFIG_HOME", api.home.path())
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().expect("weft login runs");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if let Some(u) = line.trim().strip_prefix(&format!("{issuer}/")) {
                return format!("{issuer}/{u}");
            }
        }
        panic!("weft login printed no URL");
    })
    .await
    .expect("the sign-in URL is printed");
    for p in [
        "code_challenge_method=S256",
        "redirect_uri=http%3A%2F%2F127.0.0.1%3A",
        "state=",
        "prompt=consent",
    ] {
        assert!(url.contains(p), "{p} in {url}");
    }
    browser_sign_in(&url, "alice@weft.test", &password).await;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("login finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("as alice@weft.test"), "{stdout}");
    assert!(
        stdout.contains("weft tenant create"),
        "no tenant yet, and what to do: {stdout}"
    );

    let cred = stored_credential(&api);
    assert_eq!(cred["kind"], "oidc");
    assert!(
        cred["refresh_token"].is_string(),
        "offline_access gave a refresh token: {}",
        cred["kind"]
    );
    let first = cred["access_token"].as_str().unwrap().to_string();
    assert!(!stdout.contains(&first), "the token is never printed");

    // The person creates a tenant and works in it; the 1-second access tokens are
    // refreshed on the way, and the new ones are saved.
    api.weft(&["tenant", "create", "acme", "--use"]).await.ok();
    let refreshed = stored_credential(&api)["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(refreshed, first, "the access token was refreshed");
    api.weft(&["cluster", "create", "edge"]).await.ok();
    let r = api.weft(&["cluster", "list", "-o", "json"]).await;
    assert_eq!(names(&r.ok().json()), ["edge"]);
    let r = api.weft(&["context", "list"]).await;
    assert!(
        r.ok().stdout.contains("oidc (alice@weft.test)"),
        "{}",
        r.stdout
    );
    let r = api.weft(&["tenant", "list", "-o", "json"]).await;
    assert_eq!(names(&r.ok().json()), ["acme"]);
}
