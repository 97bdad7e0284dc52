//! eBPF prerequisites and build (see `datapath-bpf/README.md` and `../shared/TOOLCHAIN.md`).
//!
//! `prepare` installs what is missing, idempotently and quickly when everything is present:
//! nightly `rust-src`, LLVM 22 dev packages, `bpf-linker` built against LLVM 22, a bpffs mount;
//! then builds the eBPF object with nightly and returns its path. Callers pass that path to
//! cargo as `WEFT_BPF_OBJ` so `node-agent` embeds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// bpf-linker release we build (0.13.0 reads `LLVM_PREFIX`; older ones `LLVM_SYS_221_PREFIX`).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn status(cmd: &mut Command) -> Result<bool> {
    Ok(cmd
        .status()
        .with_context(|| format!("running {cmd:?}"))?
        .success())
}

fn must(cmd: &mut Command) -> Result<()> {
    if !status(cmd)? {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_home_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

pub fn ensure_nightly() -> Result<()> {
    let toolchains =
        output_ok(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        return Ok(());
    }
    eprintln!("xtask ebpf: installing the nightly toolchain (minimal profile)");
    must(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
}

fn ensure_rust_src() -> Result<()> {
    let installed = output_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask ebpf: installing nightly rust-src");
    must(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn ensure_llvm() -> Result<()> {
    if Path::new(LLVM_PREFIX).join("lib/libLLVM.so").exists()
        && Path::new(LLVM_PREFIX).join("bin/llvm-config").exists()
    {
        return Ok(());
    }
    eprintln!("xtask ebpf: installing llvm-22-dev libpolly-22-dev");
    let install = || {
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "llvm-22-dev", "libpolly-22-dev"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install()? {
        return Ok(());
    }
    must(Command::new("apt-get").args(["update", "-q"]))?;
    if !install()? {
        bail!("apt-get install llvm-22-dev libpolly-22-dev failed");
    }
    Ok(())
}

fn ensure_bpf_linker() -> Result<()> {
    let bin = cargo_home_bin().join("bpf-linker");
    if output_ok(Command::new(&bin).arg("--version")).is_some() {
        return Ok(());
    }
    eprintln!(
        "xtask ebpf: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 3 minutes)"
    );
    must(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env_remove("CARGO_TARGET_DIR"),
    )
}

fn ensure_bpffs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    eprintln!("xtask ebpf: mounting bpffs at /sys/fs/bpf");
    must(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// Where the eBPF crate builds: `$WEFT_BPF_TARGET_DIR` or `<root>/target/bpf`.
pub fn bpf_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("WEFT_BPF_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target").join("bpf"))
}

/// Installs missing prerequisites, builds the eBPF object, returns its path.
pub fn prepare(root: &Path) -> Result<PathBuf> {
    ensure_nightly()?;
    ensure_rust_src()?;
    ensure_llvm()?;
    ensure_bpf_linker()?;
    ensure_bpffs()?;
    let target_dir = bpf_target_dir(root);
    let crate_dir = root.join("datapath-bpf").join("ebpf");
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    let mut with_bin = std::ffi::OsString::from(cargo_home_bin());
    with_bin.push(":");
    with_bin.push(&path);
    path = with_bin;
    must(
        Command::new("cargo")
            .current_dir(&crate_dir)
            .args([
                "+nightly",
                "build",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            // Never a build dir shared between checkouts: cargo hashes path crates by their
            // workspace-relative path, so two worktrees would reuse each other's eBPF object.
            .env("CARGO_BUILD_BUILD_DIR", &target_dir)
            .env("PATH", path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )
    .context("building the eBPF programs (datapath-bpf/ebpf)")?;
    let obj = target_dir.join("bpfel-unknown-none/release/weft-datapath");
    if !obj.exists() {
        bail!("eBPF build succeeded but {} is missing", obj.display());
    }
    Ok(obj)
}

/// Builds `packages` in release with the eBPF object prepared and embedded (node-agent's
/// build reads `WEFT_BPF_OBJ`).
pub fn build_release(root: &Path, packages: &[&str], what: &[&str]) -> Result<()> {
    let obj = prepare(root)?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root).args(["build", "--release"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let ok = cmd
        .args(what)
        .env("WEFT_BPF_OBJ", &obj)
        .status()
        .with_context(|| format!("building {}", packages.join(", ")))?
        .success();
    if !ok {
        bail!("cargo build --release -p {} failed", packages.join(" -p "));
    }
    Ok(())
}
