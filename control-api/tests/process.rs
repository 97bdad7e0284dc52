//! The real binary: configuration, migrations on start, serving on a socket, and a
//! graceful exit on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use weft_testkit::ports::free_port;

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

/// The binary on `db_url`, serving REST on `port` and agents on a free port, its output
/// discarded.
fn api(db_url: &str, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_control-api"));
    cmd.env("DATABASE_URL", db_url)
        .env("WEFT_LISTEN", format!("127.0.0.1:{port}"))
        .env("WEFT_AGENT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

#[tokio::test]
async fn serves_migrates_and_stops_on_sigterm() {
    // A fresh, empty database: the binary must create the schema itself.
    let t = common::TestApp::new().await;
    let url = t.url.clone();
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .execute(&t.pool)
        .await
        .expect("empty the database");
    let port = free_port();
    let mut child = api(&url, port)
        .env("WEFT_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start control-api");
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Some((200, body)) = get(port, "/readyz") {
            break body;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "control-api exited early"
        );
        assert!(Instant::now() < deadline, "control-api not ready in 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ready.contains("ready"), "{ready}");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'policies'",
    )
    .fetch_one(&t.pool)
    .await
    .expect("count");
    assert_eq!(tables, 1, "migrations ran on start");
    let (status, body) = get(port, "/v1/tenants").expect("answer");
    assert_eq!(status, 401);
    assert!(body.contains("urn:weft:problem:unauthenticated"), "{body}");

    let pid = child.id().to_string();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "control-api ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "graceful exit, got {status}");
    let mut logs = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut logs)
        .expect("logs");
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("control-api stopped")),
        "{logs}"
    );
}

#[test]
fn refuses_to_start_without_a_database_or_with_a_weak_operator_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_control-api"))
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
    let out = Command::new(env!("CARGO_BIN_EXE_control-api"))
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/x")
        .env("WEFT_OPERATOR_TOKEN", "short")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32 characters"), "{err}");
    assert!(
        !err.contains("short\""),
        "the token itself is not echoed: {err}"
    );
}

/// One HTTP/1.1 GET over TLS trusting `ca` (PEM): the status line and the response head.
async fn tls_get(port: u16, ca: &std::path::Path, path: &str) -> std::io::Result<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(std::io::Error::other)? {
        roots
            .add(c.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn serves_rest_over_tls_with_hsts_and_no_plain_http() {
    let t = common::TestApp::new().await;
    let dir = weft_testkit::tmp::dir("rest-tls");
    let (cert, key) = weft_testkit::server::self_signed(dir.path(), [127, 0, 0, 1].into());
    let port = free_port();
    let mut child = api(&t.url, port)
        .args(["--tls-cert".as_ref(), cert.as_os_str()])
        .args(["--tls-key".as_ref(), key.as_os_str()])
        .spawn()
        .expect("start control-api");
    let deadline = Instant::now() + Duration::from_secs(30);
    let head = loop {
        match tls_get(port, &cert, "/readyz").await {
            Ok(h) if h.starts_with("HTTP/1.1 200") => break h,
            _ => {
                assert!(
                    child.try_wait().expect("wait").is_none(),
                    "control-api exited early"
                );
                assert!(Instant::now() < deadline, "no TLS answer in 30 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    let h = tls_get(port, &cert, "/v1/tenants").await.expect("TLS GET");
    assert!(h.starts_with("HTTP/1.1 401"), "{h}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert_eq!(get(port, "/healthz"), None);
    // A client that connects and never says hello holds up no one.
    let _idle = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let h = tls_get(port, &cert, "/healthz").await.expect("TLS GET");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Sends `head`, then one byte of `drip` a second until the server closes the connection;
/// returns what the server answered (empty if it closed without a word).
async fn dribble(port: u16, head: String, drip: u8) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(head.as_bytes()).await.expect("head");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            n = s.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if s.write_all(&[drip]).await.is_err() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_hold_up_no_one() {
    let t = common::TestApp::new().await;
    let owner = t.tenant("acme").await;
    let port = free_port();
    let mut child = api(&t.url, port)
        .env("WEFT_REQUEST_TIMEOUT_SECONDS", "3")
        .spawn()
        .expect("start control-api");
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(port, "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "control-api not ready in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rss_kib(child.id());
    // 200 clients sending a request head a byte a second (slowloris), 100 sending a
    // policy's body a byte a second.
    let mut slow_heads = Vec::new();
    for _ in 0..200 {
        let head = "GET /v1/tenants/acme/policies HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_string();
        slow_heads.push(tokio::spawn(dribble(port, head, b'a')));
    }
    let mut slow_bodies = Vec::new();
    for _ in 0..100 {
        let head = format!(
            "POST /v1/tenants/acme/policies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {owner}\r\n\
             Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"name\": \""
        );
        slow_bodies.push(tokio::spawn(dribble(port, head, b'a')));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Everyone else is served meanwhile, and can write.
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{port}/v1/tenants/acme");
    let created = client
        .post(format!("{api}/clusters"))
        .bearer_auth(&owner)
        .header("content-type", "application/json")
        .body(r#"{"name": "prod"}"#)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a quick client is answered");
    assert_eq!(created.status(), 201);
    let listed = client
        .get(format!("{api}/clusters"))
        .bearer_auth(&owner)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a quick client is answered");
    assert_eq!(listed.status(), 200);
    let during = rss_kib(child.id());
    // A slow body ends in 408 after the request timeout; a slow head is closed once the
    // header read timeout passes, unanswered.
    for s in slow_bodies {
        let answer = tokio::time::timeout(Duration::from_secs(20), s)
            .await
            .expect("a slow body is cut off")
            .expect("task");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
    for s in slow_heads {
        let answer = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("a slow head is cut off")
            .expect("task");
        assert!(!answer.contains("200 OK"), "{answer:?}");
    }
    assert!(
        during.saturating_sub(before) < 64 * 1024,
        "300 slow clients took {} KiB (from {before} KiB)",
        during - before
    );
    let _ = child.kill();
    let _ = child.wait();
}
