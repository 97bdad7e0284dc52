//! `/install.sh` and `/downloads`: the script is valid sh with this API's URLs baked in,
//! the binary is served byte for byte with a checksum that matches, and a join token comes
//! with its one-line install command.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::{Rest, TestApp};
use control_api::api::install::InstallConfig;
use http_body_util::BodyExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

async fn get(app: &Router, path: &str, host: Option<&str>) -> (StatusCode, String, Vec<u8>) {
    let mut req = Request::builder().uri(path);
    if let Some(h) = host {
        req = req.header(header::HOST, h);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ctype, bytes.to_vec())
}

fn app_with(t: &TestApp, cfg: std::sync::Arc<InstallConfig>) -> Router {
    control_api::app::app(t.state.clone().with_install(cfg))
}

#[tokio::test]
async fn the_script_is_valid_sh_with_this_apis_urls() {
    let t = TestApp::new().await;
    let app = app_with(&t, InstallConfig::new(None, None, None, 7443, true, None));
    let (status, ctype, body) = get(&app, "/install.sh", Some("api.weft.test:8080")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/x-shellscript"), "{ctype}");
    let script = String::from_utf8(body).expect("utf-8");
    assert!(script.contains("API_URL='http://api.weft.test:8080'"));
    assert!(script.contains("CONTROL_PLANE='https://api.weft.test:7443'"));
    assert!(!script.contains("@API_URL@") && !script.contains("@AGENT_URL@"));

    let tmp = weft_testkit::tmp::dir("install");
    let dir = tmp.path().to_path_buf();
    let path = dir.join("install.sh");
    std::fs::write(&path, &script).expect("write");
    let syntax = std::process::Command::new("sh")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("sh");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // Options are checked before anything is downloaded or installed.
    let run = |args: &[&str]| {
        std::process::Command::new("sh")
            .arg(&path)
            .args(args)
            .output()
            .expect("sh")
    };
    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--join-token TOKEN"));
    let missing = run(&["--state-dir", dir.join("s").to_str().expect("path")]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--join-token is required"));
    let bad = run(&["--join-token", "x", "--label", "a b"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--label 'a b'"));
    let unknown = run(&["--join-token", "x", "--frobnicate", "1"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown option --frobnicate"));
    // The token can come from a file or the environment (no command line shows it); a
    // wrong one is refused without being echoed.
    let file = dir.join("token");
    std::fs::write(&file, "weft_jt_s3cret with blanks\n").expect("write");
    let from_file = run(&["--join-token-file", file.to_str().expect("path")]);
    let err = String::from_utf8_lossy(&from_file.stderr);
    assert!(!from_file.status.success());
    assert!(
        err.contains("the join token in") && !err.contains("s3cret"),
        "{err}"
    );
    let err = run(&[
        "--join-token-file",
        dir.join("none").to_str().expect("path"),
    ]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("is not a readable file"));
    let env = std::process::Command::new("sh")
        .arg(&path)
        .env("WEFT_JOIN_TOKEN", "weft_jt_s3cret;id")
        .output()
        .expect("sh");
    let err = String::from_utf8_lossy(&env.stderr);
    assert!(!env.status.success());
    assert!(
        err.contains("WEFT_JOIN_TOKEN") && !err.contains("s3cret"),
        "{err}"
    );
    // A good token from the file gets past the options (to the platform check or the
    // download, which fail here for other reasons).
    std::fs::write(&file, "weft_jt_AbC-123_x\n").expect("write");
    let good = run(&[
        "--join-token-file",
        file.to_str().expect("path"),
        "--state-dir",
        dir.join("s").to_str().expect("path"),
        "--prefix",
        dir.join("p").to_str().expect("path"),
        "--config-dir",
        dir.join("c").to_str().expect("path"),
        "--no-systemd",
        "--wait",
        "1",
    ]);
    let err = String::from_utf8_lossy(&good.stderr);
    assert!(
        !err.contains("join token") && !err.contains("AbC-123"),
        "{err}"
    );

    // A Host that would break out of the script's quoting is refused.
    let (status, _, _) = get(&app, "/install.sh", Some("evil'$(id)")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A configured public URL wins over the Host.
    let app = app_with(
        &t,
        InstallConfig::new(
            None,
            Some("https://weft.example".into()),
            None,
            7443,
            true,
            None,
        ),
    );
    let (_, _, body) = get(&app, "/install.sh", Some("internal:8080")).await;
    let script = String::from_utf8(body).expect("utf-8");
    assert!(script.contains("API_URL='https://weft.example'"));
    assert!(script.contains("CONTROL_PLANE='https://weft.example:7443'"));
}

#[tokio::test]
async fn the_agent_binary_is_served_with_a_matching_checksum() {
    let t = TestApp::new().await;
    let tmp = weft_testkit::tmp::dir("install");
    let dir = tmp.path().to_path_buf();
    let bin = dir.join("node-agent");
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&bin, &bytes).expect("write");
    let app = app_with(
        &t,
        InstallConfig::new(
            Some(bin.clone()),
            None,
            None,
            7443,
            true,
            Some(b"PEM".to_vec()),
        ),
    );
    let (status, ctype, body) = get(&app, "/downloads/node-agent/linux-amd64", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "application/octet-stream");
    assert!(body == bytes, "served bytes differ from the file");
    let (status, _, sum) = get(&app, "/downloads/node-agent/linux-amd64.sha256", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        String::from_utf8(sum).expect("utf-8"),
        format!("{}  node-agent\n", hex::encode(Sha256::digest(&bytes)))
    );
    // A new build is hashed anew.
    std::fs::write(&bin, b"new build").expect("write");
    let (_, _, sum) = get(&app, "/downloads/node-agent/linux-amd64.sha256", None).await;
    assert!(String::from_utf8_lossy(&sum).starts_with(&hex::encode(Sha256::digest(b"new build"))));
    let (status, _, body) = get(&app, "/downloads/node-agent/darwin-arm64", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("linux-amd64"));
    let (status, ctype, pem) = get(&app, "/downloads/agent-ca.pem", None).await;
    assert_eq!(
        (status, ctype.as_str(), pem.as_slice()),
        (StatusCode::OK, "application/x-pem-file", &b"PEM"[..])
    );

    // Nothing configured: clear 404s, not an empty file.
    let app = app_with(&t, InstallConfig::new(None, None, None, 7443, false, None));
    let (status, _, body) = get(&app, "/downloads/node-agent/linux-amd64", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("--agent-binary"));
    let (status, _, _) = get(&app, "/downloads/agent-ca.pem", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_join_token_comes_with_its_install_command() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    t.cluster("acme", "prod", &owner).await;
    let req = Request::builder()
        .method("POST")
        .uri("/v1/tenants/acme/clusters/prod/join-tokens")
        .header(header::HOST, "api.weft.test")
        .header(header::AUTHORIZATION, format!("Bearer {owner}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"name": "rack-1"}).to_string()))
        .expect("request");
    let r = t.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let token = r.body["token"].as_str().expect("token");
    assert_eq!(
        r.body["install_command"],
        format!(
            "curl -fsSL http://api.weft.test/install.sh | WEFT_JOIN_TOKEN={token} sudo --preserve-env=WEFT_JOIN_TOKEN sh -s"
        )
    );
}
