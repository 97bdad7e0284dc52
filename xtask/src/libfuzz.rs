//! The cargo-fuzz targets in `fuzz/` (libFuzzer on nightly, with AddressSanitizer):
//! `cargo xtask fuzz --list` prints them, `cargo xtask fuzz <target> --seconds N` runs one
//! from its checked-in seeds (`fuzz/seeds/<target>`) with a throwaway working corpus, and
//! the full test run gives each [`CI_SECONDS`]. A crash fails the run and leaves the input
//! under `<target dir>/fuzz/artifacts/<target>/` to become a regression test.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sh;

/// The targets, each with what it checks.
pub const TARGETS: [(&str, &str); 7] = [
    (
        "cnp_yaml",
        "CNP/CCNP YAML import (model::cnp): imported specs are valid",
    ),
    (
        "policy_json",
        "native policy JSON + validation: valid specs round-trip",
    ),
    (
        "selector",
        "label selectors in query syntax (selector=, labels=)",
    ),
    (
        "flow_filter",
        "every GET /flows parameter: parsed, or the refused one named",
    ),
    (
        "time",
        "since=/until= times: RFC 3339 or a duration ago, never an overflow",
    ),
    (
        "desired_state",
        "the agent's decoding of desired-state messages: round trip or refusal",
    ),
    (
        "flow_block",
        "stored flow blocks: a corrupt one is an error naming it, never a panic",
    ),
];

/// Seconds per target in `cargo xtask test`.
pub const CI_SECONDS: u32 = 30;

/// What one run did.
pub struct Run {
    pub target: &'static str,
    pub executions: u64,
    pub seconds: u32,
    /// libFuzzer's coverage counter (`cov:`) at the end.
    pub coverage: u64,
}

fn fuzz_dir() -> PathBuf {
    sh::root().join("fuzz")
}

/// Where the fuzz builds and their artifacts go: beside the main target dir, not in the clone.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("fuzz"),
        None => sh::root().join("target/fuzz"),
    }
}

/// Installs cargo-fuzz when missing (crates.io is one of the reachable registries).
fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("xtask: installing cargo-fuzz");
        sh::run(Command::new(env!("CARGO")).args(["install", "--locked", "cargo-fuzz"]))?;
    }
    Ok(())
}

fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    // The nightly toolchain (installed with the eBPF chain) builds with the sanitizer.
    cmd.arg("+nightly")
        .arg("fuzz")
        .current_dir(fuzz_dir())
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    cmd
}

/// Builds every target once (one cargo invocation, shared dependencies).
pub fn build() -> Result<()> {
    ensure_cargo_fuzz()?;
    crate::ebpf::ensure_nightly()?;
    sh::run(cargo_fuzz().args(["build", "--release"]))
}

/// Runs `target` for `seconds`; `Err` on a crash (libFuzzer's exit status).
pub fn run_one(target: &'static str, seconds: u32) -> Result<Run> {
    let seeds = fuzz_dir().join("seeds").join(target);
    let work = weft_work_dir(target)?;
    let artifacts = target_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)?;
    let out = cargo_fuzz()
        .args(["run", "--release", target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .output()
        .with_context(|| format!("running cargo fuzz on {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&work);
    if !out.status.success() {
        bail!(
            "fuzz target {target} failed (crash input under {}):\n{}",
            artifacts.display(),
            tail(&log, 60)
        );
    }
    Ok(Run {
        target,
        executions: stat(&log, "stat::number_of_executed_units:").unwrap_or(0),
        seconds,
        coverage: last_cov(&log).unwrap_or(0),
    })
}

fn weft_work_dir(target: &str) -> Result<PathBuf> {
    let dir = target_dir()
        .join("work")
        .join(format!("{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// The last `cov: N` libFuzzer printed.
fn last_cov(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.split("cov: ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints one line per run: executions, executions/s, coverage.
pub fn report(runs: &[Run]) {
    for r in runs {
        eprintln!(
            "xtask: fuzz {:<14} {:>10} executions in {:>3} s ({:>7.0}/s), coverage {}",
            r.target,
            r.executions,
            r.seconds,
            r.executions as f64 / f64::from(r.seconds.max(1)),
            r.coverage
        );
    }
}

/// Every target for [`CI_SECONDS`] each (the full test run).
pub fn ci() -> Result<()> {
    build()?;
    let mut runs = Vec::new();
    for (t, _) in TARGETS {
        runs.push(run_one(t, CI_SECONDS)?);
    }
    report(&runs);
    Ok(())
}

/// `cargo xtask fuzz <target> [--seconds N]`.
pub fn main(target: &str, args: &[String]) -> Result<()> {
    let Some((t, _)) = TARGETS.iter().find(|(t, _)| *t == target) else {
        bail!("no fuzz target {target:?}; `cargo xtask fuzz --list` names them");
    };
    let mut seconds = 60;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s| *s > 0)
                    .context("--seconds: a positive number")?;
            }
            other => bail!("unknown option {other:?}"),
        }
    }
    build()?;
    report(&[run_one(t, seconds)?]);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_target_has_a_binary_and_seeds() {
        let root = crate::sh::root();
        let seedless: Vec<&str> = super::TARGETS
            .iter()
            .filter(|(t, _)| {
                std::fs::read_dir(root.join("fuzz/seeds").join(t)).map_or(true, |d| d.count() == 0)
            })
            .map(|(t, _)| *t)
            .collect();
        assert!(seedless.is_empty(), "targets without seeds: {seedless:?}");
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("manifest");
        for (t, _) in super::TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} is not a [[bin]] of fuzz/Cargo.toml"
            );
            assert!(
                root.join(format!("fuzz/fuzz_targets/{t}.rs")).exists(),
                "{t}"
            );
        }
    }
}
