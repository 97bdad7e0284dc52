//! The local OpenID Connect provider for the demo and the tests: `dev/oidc-provider`
//! (npm `oidc-provider` v9) on 127.0.0.1, installed with `npm ci` when missing, run with
//! `node`, and stopped when its guard is dropped (unless detached for the demo).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::{demo, http, pg, sh};

/// The audience (RFC 8707 resource indicator) of access tokens for the Weft API.
pub const AUDIENCE: &str = "https://api.weft.local";
/// Another resource the provider issues tokens for: a Weft API must refuse them.
pub const OTHER_AUDIENCE: &str = "https://other.weft.local";

pub struct User {
    pub email: String,
    pub password: String,
    pub email_verified: bool,
}

pub struct Client {
    pub id: String,
    pub secret: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<&'static str>,
    /// Lifetime of this client's access tokens in seconds (default 10 minutes).
    pub access_token_ttl: Option<u32>,
    /// A public client (the `weft` CLI): no secret, PKCE, loopback redirects on any port.
    pub public: bool,
}

/// A running provider. Dropping it stops the process.
pub struct Provider {
    child: Option<Child>,
    pub issuer: String,
}

fn provider_dir() -> PathBuf {
    sh::root().join("dev/oidc-provider")
}

/// Node.js from Debian if absent, then the provider's locked npm dependencies.
pub fn ensure_installed() -> Result<()> {
    let has_node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_node {
        sh::apt_install(&["nodejs", "npm"])?;
    }
    let dir = provider_dir();
    if !dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
    {
        eprintln!("xtask: installing the dev OIDC provider (npm ci)");
        sh::run(Command::new("npm").current_dir(&dir).args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ]))?;
    }
    Ok(())
}

impl Provider {
    /// Starts the provider on a free loopback port, with its configuration and log in
    /// `dir`, and waits until its discovery document is served.
    pub fn start(dir: &Path, users: &[User], clients: &[Client], detach: bool) -> Result<Self> {
        ensure_installed()?;
        fs::create_dir_all(dir)?;
        let port = pg::free_port()?;
        let issuer = format!("http://127.0.0.1:{port}");
        let config = json!({
            "issuer": issuer,
            "port": port,
            "default_resource": AUDIENCE,
            "resources": {
                AUDIENCE: {"scope": "weft", "access_token_ttl": 600},
                OTHER_AUDIENCE: {"scope": "other", "access_token_ttl": 600},
            },
            "users": users.iter().map(|u| json!({
                "email": u.email, "password": u.password, "email_verified": u.email_verified,
            })).collect::<Vec<_>>(),
            "clients": clients.iter().map(|c| json!({
                "client_id": c.id,
                "client_secret": c.secret,
                "redirect_uris": c.redirect_uris,
                "grant_types": c.grant_types,
                "access_token_ttl": c.access_token_ttl,
                "public": c.public,
            })).collect::<Vec<_>>(),
        });
        // Secrets go in a private file, not on a command line or in the environment.
        let config_file = dir.join("oidc-provider.json");
        fs::write(&config_file, serde_json::to_vec_pretty(&config)?)?;
        fs::set_permissions(&config_file, fs::Permissions::from_mode(0o600))?;
        let log = fs::File::create(dir.join("oidc-provider.log"))?;
        let mut cmd = Command::new("node");
        cmd.current_dir(provider_dir())
            .arg("server.js")
            .env("WEFT_OIDC_PROVIDER_CONFIG", &config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if detach {
            // SAFETY: setsid is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .context("starting the dev OIDC provider (node dev/oidc-provider/server.js)")?;
        let mut provider = Provider {
            child: Some(child),
            issuer,
        };
        provider.wait_ready(&dir.join("oidc-provider.log"))?;
        Ok(provider)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the dev OIDC provider exited during start-up ({status}); see {}",
                        log.display()
                    );
                }
            }
            let ready = http::request(
                &self.issuer,
                "GET",
                "/.well-known/openid-configuration",
                None,
                None,
            )
            .is_ok_and(|r| r.status == 200);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the dev OIDC provider did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Leaves the provider running after the guard is gone (`cargo xtask down` stops it).
    pub fn detach(mut self) {
        self.child = None;
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                demo::stop_process(pid, "oidc-provider");
            }
            let _ = child.wait();
        }
    }
}

/// The client id of the `weft` CLI at the dev provider.
pub const CLI_CLIENT_ID: &str = "weft-cli";

/// The `weft` CLI as a public client: code flow with PKCE through a loopback redirect
/// (any port), and refresh tokens.
pub fn cli_client(access_token_ttl: Option<u32>) -> Client {
    Client {
        id: CLI_CLIENT_ID.into(),
        secret: String::new(),
        redirect_uris: vec!["http://127.0.0.1/callback".into()],
        grant_types: vec!["authorization_code", "refresh_token"],
        access_token_ttl,
        public: true,
    }
}

/// A random secret, hex-encoded.
pub fn secret(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The provider the integration tests use, and the environment that tells them about it.
///
/// Users `alice`, `bob`, `carol`, `dave` `@weft.test` (verified e-mail) and `eve@weft.test`
/// (unverified), all with the password in `WEFT_TEST_OIDC_PASSWORD`; clients
/// `weft-test-console` (code flow), `weft-test-machine` (client credentials) and
/// `weft-test-short` (client credentials, 1-second tokens), all with the secret in
/// `WEFT_TEST_OIDC_CLIENT_SECRET`; and the public client `weft-cli`
/// (`WEFT_TEST_OIDC_CLI_CLIENT_ID`) for `weft login`.
pub fn start_for_tests(dir: &Path) -> Result<(Provider, Vec<(&'static str, String)>)> {
    const REDIRECT: &str = "http://127.0.0.1:8080/auth/callback";
    let password = secret(12)?;
    let client_secret = secret(24)?;
    let mut users: Vec<User> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|n| User {
            email: format!("{n}@weft.test"),
            password: password.clone(),
            email_verified: true,
        })
        .collect();
    users.push(User {
        email: "eve@weft.test".into(),
        password: password.clone(),
        email_verified: false,
    });
    let client = |id: &str, grants: Vec<&'static str>, ttl| Client {
        id: id.into(),
        secret: client_secret.clone(),
        redirect_uris: if grants.contains(&"authorization_code") {
            vec![REDIRECT.into()]
        } else {
            vec![]
        },
        grant_types: grants,
        access_token_ttl: ttl,
        public: false,
    };
    let clients = [
        client("weft-test-console", vec!["authorization_code"], None),
        client("weft-test-machine", vec!["client_credentials"], None),
        client("weft-test-short", vec!["client_credentials"], Some(1)),
        // `weft login`: a public client with refresh tokens, whose access tokens live 1 s
        // so that every CLI call after the first exercises the refresh.
        cli_client(Some(1)),
    ];
    let provider = Provider::start(dir, &users, &clients, false)?;
    let env = vec![
        ("WEFT_TEST_OIDC_ISSUER", provider.issuer.clone()),
        ("WEFT_TEST_OIDC_AUDIENCE", AUDIENCE.to_string()),
        ("WEFT_TEST_OIDC_OTHER_AUDIENCE", OTHER_AUDIENCE.to_string()),
        ("WEFT_TEST_OIDC_CLIENT_ID", "weft-test-console".to_string()),
        ("WEFT_TEST_OIDC_CLIENT_SECRET", client_secret),
        ("WEFT_TEST_OIDC_REDIRECT_URL", REDIRECT.to_string()),
        ("WEFT_TEST_OIDC_PASSWORD", password),
        ("WEFT_TEST_OIDC_CLI_CLIENT_ID", CLI_CLIENT_ID.to_string()),
    ];
    Ok((provider, env))
}
