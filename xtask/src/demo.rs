//! `cargo xtask demo [--detach]` and `cargo xtask down`: the whole system on this machine,
//! with state under `.weft/` (git-ignored).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{http, nodes, oidc, pg, sh};

/// The demo's person: signs in to the console at the demo identity provider.
const DEMO_USER: &str = "demo@weft.local";
/// A viewer of acme (same password), to see the console without edit controls.
const DEMO_VIEWER: &str = "viewer@weft.local";

fn state_dir() -> PathBuf {
    sh::root().join(".weft")
}

fn pids_file() -> PathBuf {
    state_dir().join("pids")
}

/// Builds the binaries the demo runs; returns the control-api path and, when the eBPF
/// datapath could be built (root, toolchain), the node-agent path.
fn build() -> Result<(PathBuf, Option<PathBuf>)> {
    sh::run(Command::new(env!("CARGO")).args(["build", "-q", "-p", "control-api"]))?;
    let agent = match crate::ebpf::prepare(&sh::root()) {
        Ok(obj) => {
            sh::run(
                Command::new(env!("CARGO"))
                    .args(["build", "-q", "-p", "node-agent"])
                    .env("WEFT_BPF_OBJ", obj),
            )?;
            Some(sh::target_dir().join("debug/node-agent"))
        }
        Err(e) => {
            eprintln!("xtask: no eBPF datapath ({e:#}); the demo runs without nodes");
            None
        }
    };
    Ok((sh::target_dir().join("debug/control-api"), agent))
}

/// Opens the demo's Postgres cluster (creating it the first time) and starts it.
pub fn postgres(dir: &Path) -> Result<pg::Cluster> {
    let cluster = if dir.join("weft-cluster").is_file() {
        pg::Cluster::open(dir)?
    } else {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        pg::Cluster::init(dir, pg::free_port()?)?
    };
    if !cluster.is_running() {
        cluster.start()?;
    }
    Ok(cluster)
}

pub fn demo(detach: bool) -> Result<()> {
    let pids = pids_file();
    if let Some(pid) = read_pid(&pids, "control-api") {
        if sh::alive(pid) {
            bail!("a demo is already running (control-api pid {pid}); stop it with `cargo xtask down`");
        }
    }
    let (api_bin, agent_bin) = build()?;
    let console_dir = crate::console::ensure_built()?;
    let dir = state_dir();
    fs::create_dir_all(&dir)?;
    let cluster = postgres(&dir.join("pg"))?;
    // Every demo starts from a fresh database with the sample data.
    cluster.psql("DROP DATABASE IF EXISTS weft WITH (FORCE)")?;
    cluster.psql("CREATE DATABASE weft")?;
    let database_url = cluster.url("weft");
    let api_port = pg::free_port()?;
    let agent_port = pg::free_port()?;
    let (agent_cert, agent_key) = dev_certificate(&dir.join("tls"))?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    let operator_token = pg::random_hex(32)?;
    let demo_password = pg::random_hex(12)?;
    let console_secret = pg::random_hex(24)?;
    let provider = oidc::Provider::start(
        &dir,
        &[
            oidc::User {
                email: DEMO_USER.into(),
                password: demo_password.clone(),
                email_verified: true,
            },
            oidc::User {
                email: DEMO_VIEWER.into(),
                password: demo_password.clone(),
                email_verified: true,
            },
        ],
        &[
            oidc::Client {
                id: "weft-console".into(),
                secret: console_secret.clone(),
                redirect_uris: vec![format!("{api_url}/auth/callback")],
                grant_types: vec!["authorization_code"],
                access_token_ttl: None,
                public: false,
            },
            oidc::cli_client(None),
        ],
        detach,
    )?;

    let mut cmd = Command::new(&api_bin);
    cmd.env("DATABASE_URL", &database_url)
        .env("WEFT_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("WEFT_AGENT_LISTEN", format!("127.0.0.1:{agent_port}"))
        .env("WEFT_AGENT_TLS_CERT", &agent_cert)
        .env("WEFT_AGENT_TLS_KEY", &agent_key)
        .env("WEFT_OPERATOR_TOKEN", &operator_token)
        .env("WEFT_OIDC_ISSUER", &provider.issuer)
        .env("WEFT_OIDC_CLIENT_ID", "weft-console")
        .env("WEFT_OIDC_CLIENT_SECRET", &console_secret)
        .env("WEFT_OIDC_REDIRECT_URL", format!("{api_url}/auth/callback"))
        .env("WEFT_OIDC_AUDIENCE", oidc::AUDIENCE)
        .env("WEFT_CONSOLE_DIR", &console_dir)
        .stdin(Stdio::null());
    if detach {
        let log = fs::File::create(dir.join("control-api.log"))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        // Own session: the API outlives this terminal until `cargo xtask down`.
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", api_bin.display()))?;
    fs::write(
        &pids,
        format!(
            "control-api {}\noidc-provider {}\n",
            child.id(),
            provider.pid().unwrap_or_default()
        ),
    )?;
    let issuer = provider.issuer.clone();
    provider.detach(); // `down` stops it, by the pid just written

    if let Err(e) = wait_ready(&api_url, &mut child) {
        let _ = down();
        return Err(e);
    }
    let seeded = match seed(&api_url, &operator_token) {
        Ok(s) => s,
        Err(e) => {
            let _ = down();
            return Err(e.context("seeding the demo tenants"));
        }
    };
    // The demo person owns acme once they sign in (the invite binds then); the viewer
    // only reads.
    for (email, role) in [(DEMO_USER, "owner"), (DEMO_VIEWER, "viewer")] {
        if let Err(e) = http::json(
            &api_url,
            "POST",
            "/v1/tenants/acme/members",
            &operator_token,
            &json!({"email": email, "role": role}),
            201,
        ) {
            let _ = down();
            return Err(e.context(format!("inviting {email}")));
        }
    }
    // Two nodes with workloads, enforcing the sample policies.
    let mut node_hints = String::new();
    if let Some(agent_bin) = &agent_bin {
        match nodes::start(
            &dir,
            agent_bin,
            agent_port,
            &agent_cert,
            &api_url,
            &seeded.token,
        ) {
            Ok(started) => {
                let mut f = fs::OpenOptions::new().append(true).open(&pids)?;
                for (name, pid) in started {
                    std::io::Write::write_all(&mut f, format!("{name} {pid}\n").as_bytes())?;
                }
                node_hints = nodes::hints(&dir);
            }
            Err(e) => {
                let _ = down();
                return Err(e.context("starting the demo nodes"));
            }
        }
    }
    let agent_ca = agent_cert.display();
    let env = format!(
        "WEFT_API_URL={api_url}\nWEFT_AGENT_URL=https://127.0.0.1:{agent_port}\nWEFT_AGENT_CA={agent_ca}\nWEFT_TENANT={}\nWEFT_TOKEN={}\nWEFT_OTHER_TENANT={}\nWEFT_OTHER_TOKEN={}\nWEFT_OPERATOR_TOKEN={operator_token}\nDATABASE_URL={database_url}\nWEFT_OIDC_ISSUER={issuer}\nWEFT_DEMO_USER_EMAIL={DEMO_USER}\nWEFT_DEMO_USER_PASSWORD={demo_password}\nWEFT_DEMO_VIEWER_EMAIL={DEMO_VIEWER}\n",
        seeded.tenant, seeded.token, seeded.other_tenant, seeded.other_token
    );
    let env_file = dir.join("demo.env");
    fs::write(&env_file, env)?;
    fs::set_permissions(
        &env_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    println!(
        "\nWeft is running.\n  Console:  {api_url}/console/\n  API:      {api_url}  (docs: {api_url}/docs)\n  Tenant:   acme ({})\n  Settings: {}  (source it: `set -a; . {}; set +a`)\n  Try:      curl -s -H \"Authorization: Bearer $WEFT_TOKEN\" $WEFT_API_URL/v1/tenants/acme/clusters\n  Sign in:  open {api_url}/console/ in a browser, as {DEMO_USER} (or the viewer\n            {DEMO_VIEWER}) with the password {demo_password} (identity provider: {issuer})\n{node_hints}",
        seeded.tenant,
        env_file.display(),
        env_file.display()
    );
    if detach {
        println!("Stop it with `cargo xtask down`.");
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    // The terminal's Ctrl-C reaches the API (same process group), which shuts down
    // gracefully; we ignore it ourselves so we can clean up after.
    // SAFETY: setting a signal disposition to SIG_IGN has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = child.wait()?;
    eprintln!("control-api exited ({status}); stopping the demo");
    down()
}

/// A self-signed certificate for the agent service on 127.0.0.1 (a leaf, valid 30 days),
/// made once and reused. Agents trust it through `WEFT_AGENT_CA`.
fn dev_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    // Named after what it covers: a certificate made before the demo had nodes lacks
    // their view of the agent service (192.168.100.254).
    let (cert, key) = (dir.join("agent-nodes.crt"), dir.join("agent-nodes.key"));
    if cert.is_file() && key.is_file() {
        return Ok((cert, key));
    }
    if Command::new("openssl").arg("version").output().is_err() {
        sh::apt_install(&["openssl"])?;
    }
    fs::create_dir_all(dir)?;
    sh::output(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=weft-dev-agent-service",
            ])
            .args([
                "-addext",
                &format!(
                    "subjectAltName=IP:127.0.0.1,IP:{},DNS:localhost",
                    nodes::AGENT_SERVICE_IP
                ),
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((cert, key))
}

fn wait_ready(api_url: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("control-api exited during start-up ({status}); see .weft/control-api.log");
        }
        if http::request(api_url, "GET", "/readyz", None, None).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("control-api did not become ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Seeded {
    tenant: String,
    token: String,
    other_tenant: String,
    other_token: String,
}

/// Creates the sample data through the public API, as a user would.
fn seed(api: &str, operator: &str) -> Result<Seeded> {
    let (tenant, token) = tenant_with_owner(api, operator, "acme", "Acme Corp")?;
    let base = "/v1/tenants/acme";
    for (name, labels) in [
        ("prod-eu", json!({"env": "prod", "region": "eu"})),
        ("staging", json!({"env": "staging"})),
    ] {
        http::json(
            api,
            "POST",
            &format!("{base}/clusters"),
            &token,
            &json!({"name": name, "labels": labels}),
            201,
        )?;
    }
    http::json(
        api,
        "POST",
        &format!("{base}/clusters/prod-eu/services"),
        &token,
        &json!({
            "name": "web", "labels": {"app": "web"},
            "frontends": [{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
            "backends": [
                {"address": "10.0.1.10", "port": 8080},
                {"address": "10.0.1.11", "port": 8080},
                {"address": "10.0.2.10", "port": 8080, "weight": 2}
            ],
            "algorithm": "maglev",
            "session_affinity": {"timeout_seconds": 300}
        }),
        201,
    )?;
    http::json(
        api,
        "POST",
        &format!("{base}/clusters/prod-eu/services"),
        &token,
        &json!({
            "name": "dns", "labels": {"app": "coredns"},
            "frontends": [{"vip": "10.96.0.53", "port": 53, "protocol": "UDP"}],
            "backends": [{"address": "10.0.1.53", "port": 53}, {"address": "10.0.2.53", "port": 53}]
        }),
        201,
    )?;
    http::json(
        api,
        "POST",
        &format!("{base}/policies"),
        &token,
        &json!({
            "name": "web-from-frontend",
            "labels": {"team": "web"},
            "description": "Only the frontend reaches the web tier, on 8080/TCP",
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{
                    "fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                    "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]
                }]
            }
        }),
        201,
    )?;
    http::json(
        api,
        "POST",
        &format!("{base}/policies"),
        &token,
        &json!({
            "name": "db-no-world",
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "db"}},
                "ingressDeny": [{"fromEntities": ["world"]}],
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "web"}}],
                             "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}]}]
            }
        }),
        201,
    )?;
    let (other_tenant, other_token) = tenant_with_owner(api, operator, "globex", "Globex Inc")?;
    http::json(
        api,
        "POST",
        "/v1/tenants/globex/clusters",
        &other_token,
        &json!({"name": "prod-us", "labels": {"env": "prod"}}),
        201,
    )?;
    Ok(Seeded {
        tenant,
        token,
        other_tenant,
        other_token,
    })
}

fn tenant_with_owner(
    api: &str,
    operator: &str,
    name: &str,
    display: &str,
) -> Result<(String, String)> {
    let t = http::json(
        api,
        "POST",
        "/v1/tenants",
        operator,
        &json!({"name": name, "display_name": display}),
        201,
    )?;
    let id = t["id"].as_str().context("tenant has no id")?.to_string();
    let tok = http::json(
        api,
        "POST",
        &format!("/v1/tenants/{name}/api-tokens"),
        operator,
        &json!({"name": "demo-owner", "role": "owner"}),
        201,
    )?;
    let token = tok["token"]
        .as_str()
        .context("token response has no token")?
        .to_string();
    Ok((id, token))
}

fn read_pid(file: &Path, name: &str) -> Option<i32> {
    fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let (n, pid) = l.split_once(' ')?;
        (n == name).then(|| pid.trim().parse().ok()).flatten()
    })
}

/// Stops everything the demo started and leaves no process behind.
pub fn down() -> Result<()> {
    let pids = pids_file();
    // Everything the demo started, latest first: servers and agents (whose open streams
    // would hold up control-api's graceful shutdown), then the identity provider and
    // control-api.
    for line in fs::read_to_string(&pids).unwrap_or_default().lines().rev() {
        if let Some((name, pid)) = line.split_once(' ') {
            if let Ok(pid) = pid.trim().parse() {
                stop_process(pid, name);
            }
        }
    }
    let _ = fs::remove_file(&pids);
    // Namespaces, veths, pins and agent state, even if the agents died.
    nodes::cleanup(&state_dir());
    let _ = fs::remove_file(state_dir().join("demo.env"));
    let _ = fs::remove_file(state_dir().join("oidc-provider.json"));
    let pg_dir = state_dir().join("pg");
    if pg_dir.join("weft-cluster").is_file() {
        let cluster = pg::Cluster::open(&pg_dir)?;
        if cluster.is_running() {
            cluster.stop()?;
        }
    }
    println!("Weft demo stopped.");
    Ok(())
}

/// SIGTERM, then SIGKILL after 10 s.
pub fn stop_process(pid: i32, name: &str) {
    if !sh::alive(pid) {
        return;
    }
    sh::kill(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sh::alive(pid) && Instant::now() < deadline {
        // Reap it if it is our child; otherwise just wait for it to go.
        // SAFETY: waitpid with WNOHANG on a pid has no memory-safety preconditions.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if sh::alive(pid) {
        eprintln!("{name} (pid {pid}) ignored SIGTERM; killing it");
        sh::kill(pid, libc::SIGKILL);
    }
}
