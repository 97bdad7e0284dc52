//! What the release-example benchmarks (`bench compile`, `bench flows`) share: their one
//! flag, building the example, and running it with its JSON output under the target dir.

use std::ffi::OsStr;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::sh;

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
