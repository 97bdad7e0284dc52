//! `cargo xtask test`: every check and test of the project, with the services they need
//! started here and removed afterwards, even on failure.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::{oidc, pg, sh};

/// A throw-away Postgres cluster for one test (or benchmark) run.
pub struct TestPostgres {
    pub cluster: Option<pg::Cluster>,
    pub dir: PathBuf,
}

impl TestPostgres {
    pub fn start() -> Result<Self> {
        // Under /tmp, not the checkout: the postgres user must reach the folder, and a
        // clone may live somewhere it cannot (a home directory with mode 0700).
        let dir = std::env::temp_dir().join(format!("weft-test-pg-{}", std::process::id()));
        let mut guard = TestPostgres {
            cluster: None,
            dir: dir.clone(),
        };
        let cluster = pg::Cluster::init(&dir.join("data"), pg::free_port()?)?;
        cluster.start()?;
        // Roles are per cluster, not per database: migration 0002's check-then-create of
        // the API's role races when many test databases migrate at once. Create it once
        // here, so every migration finds it.
        cluster.psql(
            "CREATE ROLE weft_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE; \
             GRANT weft_app TO CURRENT_USER",
        )?;
        guard.cluster = Some(cluster);
        Ok(guard)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Some(c) = &self.cluster {
            if let Err(e) = c.stop() {
                eprintln!("xtask: stopping the test PostgreSQL: {e:#}");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn cargo() -> Command {
    Command::new(env!("CARGO"))
}

pub fn ensure_nextest() -> Result<()> {
    let ok = cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("xtask: installing cargo-nextest");
        sh::run(cargo().args(["install", "--locked", "cargo-nextest"]))?;
    }
    Ok(())
}

/// protoc checks that the checked-in gRPC code matches the contract; the Terraform
/// provider's tf-provider crate also compiles tfplugin6, which imports protobuf's
/// well-known types (libprotobuf-dev).
pub fn ensure_protoc() -> Result<()> {
    if Command::new("protoc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && std::path::Path::new("/usr/include/google/protobuf/empty.proto").exists()
    {
        return Ok(());
    }
    sh::apt_install(&["protobuf-compiler", "libprotobuf-dev"])
}

pub fn test(args: &[String]) -> Result<()> {
    let root = sh::root();
    ensure_nextest()?;
    ensure_protoc()?;
    // The datapath tests load real eBPF programs: build them first, and make a missing
    // object or kernel feature a failure rather than a skip.
    let bpf_obj = crate::ebpf::prepare(&root)?;
    std::env::set_var("WEFT_BPF_OBJ", &bpf_obj);
    std::env::set_var("WEFT_REQUIRE_BPF", "1");
    let lint = !args.iter().any(|a| a == "--no-lint");
    if lint {
        eprintln!("xtask: cargo fmt --check");
        sh::run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
        eprintln!("xtask: cargo clippy");
        sh::run(cargo().current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        eprintln!("xtask: import graph (cargo xtask imports)");
        crate::imports::main(&[])?;
        shellcheck(&root)?;
    }
    let pg = TestPostgres::start()?;
    let url = pg
        .cluster
        .as_ref()
        .map(|c| c.url("postgres"))
        .unwrap_or_default();
    let (provider, oidc_env) = oidc::start_for_tests(&pg.dir.join("oidc"))?;
    crate::terraform::prepare()?; // sets WEFT_TERRAFORM for the provider's tests
    eprintln!("xtask: cargo nextest run --workspace");
    let passthrough: Vec<&String> = args
        .iter()
        .filter(|a| !["--no-lint", "--demo", "--schemathesis", "--fuzz"].contains(&a.as_str()))
        .collect();
    // The demo check runs in a full run (no test filter), or when asked for.
    let demo = passthrough.is_empty() || args.iter().any(|a| a == "--demo");
    // The API fuzzer (about 3 minutes) runs in a full run, or when asked for.
    let fuzz = passthrough.is_empty() || args.iter().any(|a| a == "--schemathesis");
    // The cargo-fuzz targets (30 s each) too.
    let libfuzz = passthrough.is_empty() || args.iter().any(|a| a == "--fuzz");
    let nextest = sh::run(
        cargo()
            .current_dir(&root)
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(passthrough)
            .env("WEFT_TEST_DATABASE_URL", url)
            .envs(oidc_env),
    );
    let fuzz = match &pg.cluster {
        Some(c) if fuzz => crate::schemathesis::run(c, &pg.dir, crate::schemathesis::Budget::CI),
        _ => Ok(()),
    };
    drop(provider);
    drop(pg);
    nextest?;
    fuzz?;
    if libfuzz {
        crate::libfuzz::ci()?;
    }
    if demo {
        crate::console::checks()?;
        crate::demo_check::check()?;
    }
    Ok(())
}

/// The shell we ship (the install script users pipe into `sh`) and CI's entry point, checked
/// with ShellCheck (installed from the distribution when missing).
fn shellcheck(root: &std::path::Path) -> Result<()> {
    let present = Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        sh::apt_install(&["shellcheck"])?;
    }
    eprintln!("xtask: shellcheck");
    sh::run(Command::new("shellcheck").current_dir(root).args([
        "-s",
        "sh",
        "control-api/src/api/install/install.sh",
    ]))?;
    sh::run(Command::new("shellcheck").current_dir(root).arg(".ci/run"))
}
