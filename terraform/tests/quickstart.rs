//! `examples/quickstart` as users run it: the provider installed in a filesystem mirror,
//! `terraform init` (which writes the lock file), apply, a clean plan, destroy.

mod common;

use std::path::Path;

use common::{Api, Workspace};
use serde_json::Value;
use weft_testkit::fixtures::Rest;

const PLATFORM: &str = if cfg!(target_arch = "aarch64") {
    "linux_arm64"
} else {
    "linux_amd64"
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_through_a_filesystem_mirror_and_init() {
    let api = Api::start().await;
    let token = api.tenant("acme", "admin").await;
    api.cluster("acme", "prod-eu", &token).await;

    let ws = Workspace::new(&api, &token);
    let dir = ws.dir.path();
    let mirror = dir.join("mirror");
    let pkg = mirror.join(format!("registry.terraform.io/weft/weft/0.1.0/{PLATFORM}"));
    std::fs::create_dir_all(&pkg).expect("mirror dir");
    std::fs::copy(
        env!("CARGO_BIN_EXE_terraform-provider-weft"),
        pkg.join("terraform-provider-weft_v0.1.0"),
    )
    .expect("copy the provider");
    std::fs::write(
        dir.join("terraform.rc"),
        format!(
            "provider_installation {{\n  filesystem_mirror {{\n    path    = \"{}\"\n    include = [\"registry.terraform.io/weft/*\"]\n  }}\n  direct {{\n    exclude = [\"registry.terraform.io/weft/*\"]\n  }}\n}}\n",
            mirror.display()
        ),
    )
    .expect("terraform.rc");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    for f in ["main.tf", "web-from-frontend.yaml"] {
        std::fs::copy(example.join(f), dir.join(f)).expect("copy the example");
    }

    ws.terraform(&["init", "-input=false", "-no-color"])
        .await
        .ok();
    assert!(
        dir.join(".terraform.lock.hcl").is_file(),
        "init writes the lock file"
    );
    ws.apply().await.ok();
    let (s, p) = api
        .call(
            "GET",
            "/v1/tenants/acme/policies/tf-web-from-frontend",
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        p["specs"][0]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
        "8080"
    );
    let out = ws.terraform(&["output", "-json"]).await;
    out.ok();
    let out: Value = serde_json::from_str(&out.stdout).expect("output -json");
    assert_eq!(out["install_command"]["sensitive"], true);
    assert!(
        out["install_command"]["value"]
            .as_str()
            .is_some_and(|c| c.contains("WEFT_JOIN_TOKEN=weft_join_")),
        "{out}"
    );
    let plan = ws.plan().await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await
        .ok();
    let (s, _) = api
        .call(
            "GET",
            "/v1/tenants/acme/policies/tf-web-from-frontend",
            &token,
            None,
        )
        .await;
    assert_eq!(s, 404);
}
