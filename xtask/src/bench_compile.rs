//! `cargo xtask bench compile [--quick]`: builds the release benchmark
//! (`model/examples/compile_bench.rs`) and runs it: one node's desired-state compile for
//! tenants of growing size, each as a ratio to the smallest measured in the same run, and a
//! one-endpoint diff against a full compile. Pure CPU, no root, no database. Writes
//! `<cargo target dir>/bench/compile.json`.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::sh;

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(other) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown argument {other:?} (only --quick)");
    }
    let ok = Command::new(env!("CARGO"))
        .current_dir(sh::root())
        .args([
            "build",
            "--release",
            "-p",
            "weft-model",
            "--example",
            "compile_bench",
        ])
        .status()
        .context("building the compile benchmark")?
        .success();
    if !ok {
        bail!("cargo build --release --example compile_bench failed");
    }
    let exe = sh::target_dir().join("release/examples/compile_bench");
    let out = sh::target_dir().join("bench/compile.json");
    let mut cmd = Command::new(&exe);
    cmd.arg("--out").arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    let ok = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?
        .success();
    if !ok {
        bail!("the compile benchmark failed");
    }
    Ok(())
}
