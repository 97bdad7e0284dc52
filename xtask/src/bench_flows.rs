//! `cargo xtask bench flows [--quick]`: starts a private PostgreSQL (as `xtask test` does),
//! builds the release benchmark (`control-api/examples/flows_bench.rs`) and runs it: ingest
//! over real gRPC from several agent connections, then query latency over a table filled to
//! 10 million flows (300,000 with `--quick`). Prints ratios against baselines measured in
//! the same run and writes `<cargo target dir>/bench/flows.json`.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::{sh, test::TestPostgres};

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(other) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown argument {other:?} (only --quick)");
    }
    let root = sh::root();
    let ok = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "control-api",
            "--example",
            "flows_bench",
        ])
        .status()
        .context("building the flows benchmark")?
        .success();
    if !ok {
        bail!("cargo build --release --example flows_bench failed");
    }
    let pg = TestPostgres::start()?;
    let url = pg
        .cluster
        .as_ref()
        .map(|c| c.url("postgres"))
        .context("no PostgreSQL cluster")?;
    let exe = sh::target_dir().join("release/examples/flows_bench");
    let out = sh::target_dir().join("bench/flows.json");
    let mut cmd = Command::new(&exe);
    cmd.arg("--database-url").arg(&url).arg("--out").arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    let ok = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?
        .success();
    drop(pg);
    if !ok {
        bail!("the flows benchmark failed");
    }
    Ok(())
}
