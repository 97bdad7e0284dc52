//! What the release-example benchmarks (`bench api`, `bench compile`, `bench flows`,
//! `bench propagation`) share: their one flag, building the example, a private PostgreSQL
//! for those that need one, and running it with its JSON output under the target dir.

use std::ffi::OsStr;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::sh;
use crate::test::TestPostgres;

/// `--quick` or nothing: the only argument these benchmarks take.
pub fn quick(args: &[String]) -> Result<bool> {
    if let Some(other) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown argument {other:?} (only --quick)");
    }
    Ok(!args.is_empty())
}

/// `cargo build --release -p <package> --example <name>`.
pub fn build(package: &str, name: &str) -> Result<()> {
    let ok = Command::new(env!("CARGO"))
        .current_dir(sh::root())
        .args(["build", "--release", "-p", package, "--example", name])
        .status()
        .with_context(|| format!("building the {name} benchmark"))?
        .success();
    if !ok {
        bail!("cargo build --release --example {name} failed");
    }
    Ok(())
}

/// Runs the built example `name` with `args`, `--out <target>/bench/<out>.json` and
/// `--quick` when asked.
pub fn run<S: AsRef<OsStr>>(name: &str, out: &str, args: &[S], quick: bool) -> Result<()> {
    let exe = sh::target_dir().join("release/examples").join(name);
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .arg("--out")
        .arg(sh::target_dir().join("bench").join(format!("{out}.json")));
    if quick {
        cmd.arg("--quick");
    }
    let ok = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?
        .success();
    if !ok {
        bail!("the {out} benchmark failed");
    }
    Ok(())
}

/// `bench flows` and `bench propagation`: builds the release example `name` of
/// control-api, starts a private PostgreSQL (as `xtask test` does) and runs the example
/// with `--database-url`; its figures go to `<target dir>/bench/<out>.json`.
pub fn with_postgres(name: &str, out: &str, args: &[String]) -> Result<()> {
    with_postgres_and(name, out, args, &[])
}

/// As [`with_postgres`], passing `extra` arguments too.
fn with_postgres_and(name: &str, out: &str, args: &[String], extra: &[String]) -> Result<()> {
    let quick = quick(args)?;
    build("control-api", name)?;
    let pg = TestPostgres::start()?;
    let url = pg
        .cluster
        .as_ref()
        .map(|c| c.url("postgres"))
        .context("no PostgreSQL cluster")?;
    let mut all = vec!["--database-url".to_string(), url];
    all.extend_from_slice(extra);
    let result = run(name, out, &all, quick);
    drop(pg);
    result
}

/// `bench propagation`: also builds the release `control-api` and `node-agent` (with the
/// eBPF object it embeds), which the benchmark runs as processes: the replicas and the
/// simulated agents (`node-agent sim`).
pub fn propagation(args: &[String]) -> Result<()> {
    crate::ebpf::build_release(&sh::root(), &["control-api", "node-agent"], &["--bins"])?;
    let extra = [
        "--control-api".to_string(),
        bin("control-api"),
        "--node-agent".to_string(),
        bin("node-agent"),
    ];
    with_postgres_and("propagation_bench", "propagation", args, &extra)
}

/// A release binary's path.
fn bin(name: &str) -> String {
    sh::target_dir()
        .join("release")
        .join(name)
        .display()
        .to_string()
}

/// `bench api`: builds the release `control-api`, which the benchmark runs as a process
/// (its CPU is measured apart from the load generator's).
pub fn api(args: &[String]) -> Result<()> {
    crate::ebpf::build_release(&sh::root(), &["control-api"], &["--bins"])?;
    let extra = ["--control-api".to_string(), bin("control-api")];
    with_postgres_and("api_bench", "api", args, &extra)
}
