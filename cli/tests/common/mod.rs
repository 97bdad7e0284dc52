//! The harness of the CLI tests: a real control-api (REST on a loopback port, the agent
//! service on another) over a fresh database on the private PostgreSQL that
//! `cargo xtask test` starts, and the real `weft` binary run against it with its own
//! configuration directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use weft_testkit::db::env;
use weft_testkit::server::Loopback;

pub const OPERATOR: &str = "operator-token-for-cli-tests-0123456789abcdef";

pub struct Api {
    /// control-api on loopback (`url`, `state`, `call`, `tenant`, `token`).
    pub api: Loopback,
    /// The CLI's `$XDG_CONFIG_HOME`.
    pub home: weft_testkit::tmp::TempDir,
}

impl std::ops::Deref for Api {
    type Target = Loopback;
    fn deref(&self) -> &Loopback {
        &self.api
    }
}

pub use weft_testkit::run::Run;

/// The dev OIDC provider's issuer, API audience, test password and CLI client id.
pub fn idp() -> (String, String, String, String) {
    (
        env("WEFT_TEST_OIDC_ISSUER"),
        env("WEFT_TEST_OIDC_AUDIENCE"),
        env("WEFT_TEST_OIDC_PASSWORD"),
        env("WEFT_TEST_OIDC_CLI_CLIENT_ID"),
    )
}

impl Api {
    pub async fn start() -> Api {
        Self::start_with(None).await
    }

    /// The API configured to take access tokens from the dev provider.
    pub async fn with_oidc() -> Api {
        let cfg = control_api::config::OidcConfig {
            oidc_issuer: Some(env("WEFT_TEST_OIDC_ISSUER")),
            oidc_client_id: Some(env("WEFT_TEST_OIDC_CLIENT_ID")),
            oidc_client_secret: Some(env("WEFT_TEST_OIDC_CLIENT_SECRET")),
            oidc_redirect_url: Some(env("WEFT_TEST_OIDC_REDIRECT_URL")),
            oidc_audience: Some(env("WEFT_TEST_OIDC_AUDIENCE")),
            session_ttl_seconds: 3600,
        };
        let oidc = control_api::oidc::Oidc::from_config(&cfg)
            .expect("OIDC config")
            .expect("issuer");
        Self::start_with(Some(Arc::new(oidc))).await
    }

    async fn start_with(oidc: Option<Arc<control_api::oidc::Oidc>>) -> Api {
        Api {
            api: Loopback::start("cli", OPERATOR, oidc).await,
            home: weft_testkit::tmp::dir("cli-home"),
        }
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("weft")
    }

    /// Runs `weft` with only the environment given (no WEFT_* leaks in from the test's).
    pub async fn weft_env(&self, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Run {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("XDG_CONFIG_HOME", self.home.path())
            .env("HOME", self.home.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("weft runs");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).await.expect("write stdin");
        }
        drop(input);
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            child.wait_with_output(),
        )
        .await
        .expect("weft finishes within 2 minutes")
        .expect("weft output");
        Run::of("weft", &out)
    }

    pub async fn weft(&self, args: &[&str]) -> Run {
        self.weft_env(args, &[], None).await
    }

    /// Creates a tenant, logs the CLI in as its owner (API token); returns the token.
    pub async fn owner_logged_in(&self, tenant: &str) -> String {
        let owner = self.tenant(tenant, "owner").await;
        self.weft(&["login", "--api-url", &self.url, "--token", &owner])
            .await
            .ok();
        owner
    }

    /// The global desired-state revision.
    pub async fn revision(&self) -> i64 {
        sqlx::query_scalar("SELECT revision FROM desired_state")
            .fetch_one(&self.state.pool)
            .await
            .expect("revision")
    }

    /// Serves the agent service (plain gRPC) on a loopback port; returns a client.
    pub async fn agent(
        &self,
    ) -> weft_proto::v1::agent_client::AgentClient<tonic::transport::Channel> {
        weft_testkit::server::serve_agents(self.state.clone()).await
    }
}

/// Writes `text` to `dir/name` and returns its path as a string.
pub fn file(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.to_string_lossy().into_owned()
}
