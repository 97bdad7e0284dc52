//! The web console (`web-console/`): built for the demo, checked by `cargo xtask test`.
//!
//! - [`ensure_built`]: `npm ci` when `node_modules` is missing, `npm run build` when a
//!   source is newer than `dist/` (the demo serves `dist/` with `--console-dir`).
//! - [`checks`]: `npm ci`, `tsc --noEmit`, vitest, the build and its size budget.
//! - [`e2e`]: against a running demo, the browser tests (`web-console/e2e/`, node's test
//!   runner + playwright-core driving Debian's Chromium, installed here when missing);
//!   screenshots and `perf.json` go to `<target dir>/console-e2e/`. The perf test seeds
//!   cluster `perf` with `control-api/examples/flows_bench/`'s generator (built here).
//! - `cargo xtask console-test`: all of it on its own (checks, demo, e2e, down).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::{demo, oidc, sh};

pub fn dir() -> PathBuf {
    sh::root().join("web-console")
}

fn npm(args: &[&str]) -> Result<()> {
    sh::run(Command::new("npm").current_dir(dir()).args(args))
}

/// Newest modification time under `p` (a file or a folder, recursively).
fn newest(p: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(p)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// The built console for the demo: installs and builds only what is missing or stale.
pub fn ensure_built() -> Result<PathBuf> {
    oidc::ensure_installed()?; // Node.js and npm from Debian when absent
    let dir = dir();
    if !dir.join("node_modules/.package-lock.json").is_file() {
        eprintln!("xtask: installing the console's npm packages (npm ci)");
        npm(&["ci", "--no-audit", "--no-fund", "--loglevel=error"])?;
    }
    let dist = dir.join("dist");
    let built = newest(&dist.join("index.html"));
    let sources = [
        "src",
        "public",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ]
    .iter()
    .filter_map(|s| newest(&dir.join(s)))
    .max();
    if built.is_none() || sources > built {
        eprintln!("xtask: building the console (npm run build)");
        npm(&["run", "build", "--silent"])?;
    }
    Ok(dist)
}

/// What `cargo xtask test` checks without a browser: locked install, types, unit tests
/// (field path → YAML range, filters ⇄ URL, drop reasons in words, generated types
/// current), the production build and its size budget.
pub fn checks() -> Result<()> {
    oidc::ensure_installed()?;
    eprintln!("xtask: console: npm ci");
    npm(&["ci", "--no-audit", "--no-fund", "--loglevel=error"])?;
    eprintln!("xtask: console: tsc --noEmit");
    npm(&["run", "typecheck", "--silent"])?;
    eprintln!("xtask: console: vitest");
    npm(&["test", "--silent"])?;
    eprintln!("xtask: console: build and size budget");
    npm(&["run", "build", "--silent"])?;
    Ok(())
}

/// Debian's Chromium (playwright cannot download browsers here).
pub fn ensure_chromium() -> Result<PathBuf> {
    let bin = PathBuf::from("/usr/bin/chromium");
    if !bin.is_file() {
        sh::apt_install(&["chromium"])?;
    }
    Ok(bin)
}

/// The flows benchmark's generator, which the perf test runs to seed cluster `perf` through
/// the real `ReportFlows` path (`flows_bench seed …`).
fn flows_seeder() -> Result<PathBuf> {
    sh::run(Command::new(env!("CARGO")).current_dir(sh::root()).args([
        "build",
        "-p",
        "control-api",
        "--example",
        "flows_bench",
    ]))
    .context("building the flows generator (control-api/examples/flows_bench/)")?;
    Ok(sh::target_dir().join("debug/examples/flows_bench"))
}

/// The browser tests against the running demo (its `.weft/demo.env`).
pub fn e2e() -> Result<()> {
    let chromium = ensure_chromium()?;
    let seeder = flows_seeder()?;
    let out = sh::target_dir().join("console-e2e");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    eprintln!(
        "xtask: console: browser tests (screenshots in {})",
        out.display()
    );
    sh::run(
        Command::new("node")
            .current_dir(dir())
            .args([
                "--test",
                "--test-concurrency=1",
                "--test-reporter=spec",
                "e2e/",
            ])
            .env("WEFT_DEMO_ENV", sh::root().join(".weft/demo.env"))
            .env("WEFT_CHROMIUM", chromium)
            .env("WEFT_FLOWS_SEEDER", seeder)
            .env("WEFT_E2E_OUT", &out),
    )
    .context("console browser tests")
}

/// `cargo xtask console-test`: the console's checks, then the browser tests against a
/// fresh detached demo, brought down whatever happened.
pub fn console_test() -> Result<()> {
    checks()?;
    ensure_chromium()?;
    demo::demo(true).context("starting the demo")?;
    let result = e2e();
    let down = demo::down();
    result?;
    down
}
