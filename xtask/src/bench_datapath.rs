//! `cargo xtask bench datapath [--quick]`: builds the eBPF object and a release node-agent
//! embedding it, then runs `node-agent bench-datapath`, which prints the table and writes
//! `target/bench/datapath.json` (relative to the repository root). Needs root; everything
//! runs in namespaces/cgroups/pins the benchmark creates and removes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::ebpf;

fn ensure_iptables() -> Result<()> {
    // Both backends (Debian's `iptables` ships both).
    let present = ["iptables-legacy-restore", "iptables-nft-restore"]
        .iter()
        .all(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if present {
        return Ok(());
    }
    eprintln!("xtask bench: installing iptables (baseline, used only inside a namespace)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "iptables"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?
        .success();
    if !ok {
        let updated = Command::new("apt-get")
            .args(["update", "-q"])
            .status()?
            .success();
        let retried = updated
            && Command::new("apt-get")
                .args(["install", "-y", "-q", "iptables"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()?
                .success();
        if !retried {
            bail!("apt-get install iptables failed");
        }
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// `cargo xtask bench l7 [--quick]`: the L7 proxy against an L3/L4 allow (see
/// node-agent's `bench/l7.rs`); writes `target/bench/l7.json`.
pub fn run_l7(root: &Path, args: &[String]) -> Result<()> {
    bench_node_agent(root, "bench-l7", "l7.json", args)
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    ensure_iptables()?;
    bench_node_agent(root, "bench-datapath", "datapath.json", args)
}

/// Builds a release node-agent with the eBPF object and runs its benchmark `command`, which
/// writes `target/bench/<report>`.
fn bench_node_agent(root: &Path, command: &str, report: &str, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    ebpf::build_release(root, &["node-agent"], &[])?;
    let exe = target_dir(root).join("release").join("node-agent");
    let out = root.join("target").join("bench").join(report);
    let mut cmd = Command::new(&exe);
    cmd.arg(command).arg("--out").arg(&out);
    if quick {
        cmd.arg("--quick");
    }
    if !cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?
        .success()
    {
        bail!("node-agent {command} failed");
    }
    Ok(())
}
