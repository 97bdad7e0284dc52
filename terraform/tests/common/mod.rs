//! The harness of the provider tests (after `cli/tests/common`): a real control-api on a
//! loopback port over a fresh database on the private PostgreSQL of `cargo xtask test`, and
//! the real terraform (`$WEFT_TERRAFORM`, never one on PATH) running this provider through a
//! per-test CLI configuration with `dev_overrides`.
#![allow(dead_code)]

use std::path::Path;

use weft_testkit::db::env;
use weft_testkit::server::Loopback;

pub const OPERATOR: &str = "operator-token-for-terraform-tests-0123456789";

/// control-api on loopback (`url`, `state`, `call`, `tenant`).
pub struct Api(Loopback);

impl std::ops::Deref for Api {
    type Target = Loopback;
    fn deref(&self) -> &Loopback {
        &self.0
    }
}

impl Api {
    pub async fn start() -> Api {
        Api(Loopback::start("tf", OPERATOR, None).await)
    }
}

pub use weft_testkit::run::Run;

/// A terraform working directory whose CLI configuration points `weft/weft` at this build.
pub struct Workspace {
    pub dir: weft_testkit::tmp::TempDir,
    /// `WEFT_API_URL`.
    pub api_url: String,
    token: String,
    /// `WEFT_TENANT`, when set.
    pub tenant: Option<String>,
}

impl Workspace {
    pub fn new(api: &Api, token: &str) -> Workspace {
        let dir = weft_testkit::tmp::dir("tf");
        let bin = Path::new(env!("CARGO_BIN_EXE_terraform-provider-weft"));
        let rc = format!(
            "provider_installation {{\n  dev_overrides {{\n    \"weft/weft\" = \"{}\"\n  }}\n  direct {{}}\n}}\n",
            bin.parent().expect("bin dir").display()
        );
        std::fs::write(dir.path().join("terraform.rc"), rc).expect("write terraform.rc");
        Workspace {
            dir,
            api_url: api.url.clone(),
            token: token.to_string(),
            tenant: None,
        }
    }

    /// Writes main.tf: the provider block (settings from the environment) plus `resources`.
    pub fn config(&self, resources: &str) {
        self.config_with_provider("", resources);
    }

    /// Writes main.tf with `provider` as the provider block's body (on one line: tests
    /// count the lines before the resources).
    pub fn config_with_provider(&self, provider: &str, resources: &str) {
        let text = format!(
            "terraform {{\n  required_providers {{\n    weft = {{ source = \"weft/weft\" }}\n  }}\n}}\n\nprovider \"weft\" {{{provider}}}\n\n{resources}\n"
        );
        std::fs::write(self.dir.path().join("main.tf"), text).expect("write main.tf");
    }

    pub async fn terraform(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(env("WEFT_TERRAFORM"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("TF_CLI_CONFIG_FILE", self.dir.path().join("terraform.rc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("WEFT_API_URL", &self.api_url)
            .env("WEFT_TOKEN", &self.token)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(t) = &self.tenant {
            cmd.env("WEFT_TENANT", t);
        }
        let out = cmd.output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(300), out)
            .await
            .expect("terraform finishes within 5 minutes")
            .expect("terraform runs");
        Run::of("terraform", &out)
    }

    pub async fn apply(&self) -> Run {
        self.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"])
            .await
    }

    /// `plan -detailed-exitcode`: 0 = no changes, 2 = changes, 1 = error.
    pub async fn plan(&self) -> Run {
        self.terraform(&["plan", "-detailed-exitcode", "-input=false", "-no-color"])
            .await
    }
}
