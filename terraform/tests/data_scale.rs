//! Data sources, and 200 policies by `for_each` (apply < 30 s, a no-change plan < 5 s; the
//! test fails only above twice that).

mod common;

use std::time::Instant;

use common::{Api, Workspace};
use serde_json::{json, Value};
use weft_testkit::fixtures::Rest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sources_read_the_tenant() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let c = api
        .created(
            "/v1/tenants/acme/clusters",
            &token,
            json!({"name": "prod", "labels": {"env": "prod"}}),
        )
        .await;
    let ws = Workspace::new(&api, &token);
    ws.config(
        r#"
data "weft_tenant" "t" {}
data "weft_cluster" "prod" {
  name = "prod"
}
data "weft_nodes" "prod" {
  cluster = data.weft_cluster.prod.id
}
data "weft_endpoints" "web" {
  cluster = "prod"
  labels  = "app=web"
}
data "weft_identities" "all" {}
output "tenant" { value = data.weft_tenant.t.name }
output "cluster" { value = data.weft_cluster.prod }
output "nodes" { value = data.weft_nodes.prod.nodes }
output "endpoints" { value = data.weft_endpoints.web.endpoints }
"#,
    );
    ws.apply().await.ok();
    let out = ws.terraform(&["output", "-json"]).await;
    out.ok();
    let out: Value = serde_json::from_str(&out.stdout).expect("output -json");
    assert_eq!(out["tenant"]["value"], "acme");
    assert_eq!(out["cluster"]["value"]["id"], c["id"]);
    assert_eq!(out["cluster"]["value"]["labels"], json!({"env": "prod"}));
    assert_eq!(out["nodes"]["value"], json!([]));
    assert_eq!(out["endpoints"]["value"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_policies_apply_and_plan_in_bounds() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);
    ws.config(
        r#"
resource "weft_policy" "p" {
  for_each = toset([for i in range(200) : format("p-%03d", i)])
  name     = each.key
  labels   = { set = "scale" }
  spec = jsonencode({
    endpointSelector = { matchLabels = { app = each.key } }
    ingress = [{
      fromEndpoints = [{ matchLabels = { app = "frontend" } }]
      toPorts       = [{ ports = [{ port = "443", protocol = "TCP" }] }]
    }]
  })
}
"#,
    );
    // `init`-free: dev_overrides need none; the first run pays the provider's start.
    let started = Instant::now();
    ws.apply().await.ok();
    let apply = started.elapsed();
    let (_, b) = api
        .call("GET", "/v1/tenants/acme/policies?limit=1000", &token, None)
        .await;
    assert_eq!(b["items"].as_array().map(Vec::len), Some(200));
    // The better of two no-change plans: the machine runs other tests at the same time.
    let mut times = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let plan = ws.plan().await;
        times.push(started.elapsed());
        assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    }
    let plan_time = times.iter().min().copied().unwrap_or_default();
    eprintln!("200 policies: apply {apply:?}, no-change plans {times:?}");
    assert!(
        apply.as_secs_f64() < 60.0,
        "apply took {apply:?} (target 30 s)"
    );
    assert!(
        plan_time.as_secs_f64() < 10.0,
        "plan took {plan_time:?} (target 5 s)"
    );
}
