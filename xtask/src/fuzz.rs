//! `cargo xtask fuzz --list` and `cargo xtask fuzz <target> [--seconds N]`: the cargo-fuzz
//! targets (see `libfuzz`).
//!
//! `cargo xtask fuzz policy [--minutes N] [--seed S]`: the kernel-vs-model differential test
//! (`node-agent/tests/policy_diff.rs`) for as long as asked, instead of CI's 10,000 cases.
//! Prints the cases run and every mismatch with a shrunk reproducer.
//!
//! `cargo xtask fuzz api [--minutes N] [--seed S]`: Schemathesis against the API as in CI
//! (same checks and baseline) for N minutes (default 10) instead of CI's ~3, with a new seed
//! each run unless given.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::sh;

pub fn run(args: &[String]) -> Result<()> {
    let mut minutes = "10".to_string();
    let mut seed = None;
    let mut it = args.iter();
    let target = match it.next().map(String::as_str) {
        Some(t @ ("policy" | "api")) => t,
        Some("--list") => {
            for (t, what) in crate::libfuzz::TARGETS {
                println!("{t}\t{what}");
            }
            return Ok(());
        }
        Some(t) => return crate::libfuzz::main(t, &args[1..]),
        None => bail!(
            "usage: cargo xtask fuzz --list | <target> [--seconds N] | policy|api [--minutes N] [--seed S]"
        ),
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().context("--minutes needs a value")?.clone(),
            "--seed" => seed = Some(it.next().context("--seed needs a value")?.clone()),
            other => bail!("unknown option {other:?}"),
        }
    }
    let m = minutes
        .parse::<f64>()
        .ok()
        .filter(|m| *m > 0.0)
        .context("--minutes: a positive number")?;
    if target == "api" {
        let seed = match seed {
            Some(s) => s.parse().context("--seed: a number")?,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
        };
        return crate::schemathesis::standalone(crate::schemathesis::Budget {
            seconds: (m * 60.0).round().max(1.0) as u32,
            seed,
        });
    }
    let root = sh::root();
    let bpf_obj = crate::ebpf::prepare(&root)?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(&root)
        .args([
            "test",
            "-p",
            "node-agent",
            "--test",
            "policy_diff",
            "kernel_agrees_with_the_model",
            "--",
            "--nocapture",
        ])
        .env("WEFT_BPF_OBJ", &bpf_obj)
        .env("WEFT_REQUIRE_BPF", "1")
        .env("WEFT_FUZZ_MINUTES", &minutes);
    if let Some(s) = seed {
        cmd.env("WEFT_DIFF_SEED", s);
    }
    sh::run(&mut cmd)
}
