//! `weft_join_token`, `weft_api_token` and `weft_member` through the real terraform against
//! a real control-api: create, secrets in state, drift (revoked token, changed role),
//! replacement, roles, destroy revokes.

mod common;

use common::{Api, Workspace};
use serde_json::{json, Value};

fn config(join_name: &str, max_uses: u32, role: &str) -> String {
    format!(
        r#"
resource "weft_cluster" "prod" {{
  name = "prod"
}}
resource "weft_join_token" "node" {{
  cluster  = weft_cluster.prod.name
  name     = "{join_name}"
  max_uses = {max_uses}
}}
resource "weft_api_token" "ci" {{
  name = "ci"
  role = "viewer"
}}
resource "weft_member" "alice" {{
  email = "alice@example.com"
  role  = "{role}"
}}
output "install_command" {{
  value     = weft_join_token.node.install_command
  sensitive = true
}}
output "join_token" {{
  value     = weft_join_token.node.token
  sensitive = true
}}
"#
    )
}

async fn list(api: &Api, path: &str) -> Vec<Value> {
    let (s, b) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme{path}"),
            common::OPERATOR,
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b["items"].as_array().cloned().unwrap_or_default()
}

fn named<'a>(items: &'a [Value], key: &str, value: &str) -> Vec<&'a Value> {
    items.iter().filter(|i| i[key] == value).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_members_create_drift_replace_destroy() {
    let api = Api::start().await;
    let token = api.tenant("acme", "admin").await;
    let ws = Workspace::new(&api, &token);

    ws.config(&config("node-1", 2, "viewer"));
    ws.apply().await.ok();
    let joins = list(&api, "/clusters/prod/join-tokens").await;
    let first = named(&joins, "name", "node-1");
    assert_eq!(first.len(), 1, "{joins:?}");
    assert_eq!(first[0]["max_uses"], 2);
    let first_id = first[0]["id"].clone();
    let tokens = list(&api, "/api-tokens").await;
    assert_eq!(named(&tokens, "name", "ci")[0]["role"], "viewer");
    let members = list(&api, "/members").await;
    let alice = named(&members, "email", "alice@example.com");
    assert_eq!(alice[0]["role"], "viewer", "{members:?}");
    assert_eq!(alice[0]["status"], "invited");

    // The secrets are in state (sensitive outputs), from the create answer.
    let out = ws.terraform(&["output", "-json"]).await;
    out.ok();
    let out: Value = serde_json::from_str(&out.stdout).expect("output -json");
    assert!(out["join_token"]["sensitive"].as_bool().unwrap_or(false));
    assert!(
        out["join_token"]["value"]
            .as_str()
            .unwrap_or_default()
            .len()
            > 16,
        "{out}"
    );
    let plan = ws.plan().await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);

    // Drift: a revoked API token (planned again) and a changed role (updated in place).
    let (s, b) = api
        .call("DELETE", "/v1/tenants/acme/api-tokens/ci", &token, None)
        .await;
    assert!(s == 204 || s == 200, "{s} {b}");
    let (s, b) = api
        .call(
            "PATCH",
            "/v1/tenants/acme/members/alice@example.com",
            &token,
            Some(json!({"role": "editor"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("1 to add, 1 to change, 0 to destroy"),
        "exactly the drift:\n{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("weft_api_token.ci will be created"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("\"editor\" -> \"viewer\""),
        "{}",
        plan.stdout
    );
    // A revoked token keeps its name in Weft, so making it again needs another name.
    let applied = ws.apply().await;
    assert_eq!(applied.code, 1, "{}\n{}", applied.stdout, applied.stderr);
    assert!(
        applied.stderr.contains("a revoked token keeps its name"),
        "{}",
        applied.stderr
    );
    let members = list(&api, "/members").await;
    assert_eq!(
        named(&members, "email", "alice@example.com")[0]["role"],
        "viewer"
    );
    ws.config(&config("node-1", 2, "viewer").replace("name = \"ci\"", "name = \"ci-2\""));
    ws.apply().await.ok();
    let plan = ws.plan().await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);

    // A join token's max_uses (and name): replaced, the old one revoked.
    ws.config(&config("node-2", 3, "viewer").replace("name = \"ci\"", "name = \"ci-2\""));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("-/+ resource \"weft_join_token\" \"node\""),
        "{}",
        plan.stdout
    );
    ws.apply().await.ok();
    let joins = list(&api, "/clusters/prod/join-tokens").await;
    let old = joins
        .iter()
        .find(|j| j["id"] == first_id)
        .expect("old token listed");
    assert!(!old["revoked_at"].is_null(), "old token revoked: {old}");
    let new = named(&joins, "name", "node-2");
    assert_eq!(new[0]["max_uses"], 3);
    assert!(new[0]["revoked_at"].is_null());

    // Destroy: join and API tokens revoked, the member gone.
    ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await
        .ok();
    let (s, _) = api
        .call("GET", "/v1/tenants/acme/clusters/prod", &token, None)
        .await;
    assert_eq!(s, 404);
    let tokens = list(&api, "/api-tokens").await;
    assert!(
        !named(&tokens, "name", "ci-2")[0]["revoked_at"].is_null(),
        "{tokens:?}"
    );
    let members = list(&api, "/members").await;
    assert!(
        named(&members, "email", "alice@example.com").is_empty(),
        "{members:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_applying_a_join_token_is_told_it_needs_admin() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);
    ws.config(
        r#"
resource "weft_cluster" "prod" {
  name = "prod"
}
resource "weft_join_token" "node" {
  cluster = weft_cluster.prod.name
  name    = "node-1"
}
"#,
    );
    let run = ws.apply().await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("this needs the admin role"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_six_in_one_apply_each_audited_once_then_destroyed() {
    let api = Api::start().await;
    let token = api.tenant("acme", "admin").await;
    let ws = Workspace::new(&api, &token);
    let six = format!(
        "{}{}",
        config("node-1", 1, "editor"),
        r#"
resource "weft_policy" "web" {
  name = "web"
  spec = jsonencode({ endpointSelector = { matchLabels = { app = "web" } } })
}
resource "weft_service" "api" {
  cluster = weft_cluster.prod.id
  name    = "api"
  frontends = [{ vip = "10.96.0.10", port = 80, protocol = "TCP" }]
}
"#
    );
    ws.config(&six);
    ws.apply().await.ok();
    let audit = list(&api, "/audit-log?limit=1000").await;
    for (action, kind, name) in [
        ("create", "cluster", "prod"),
        ("create", "policy", "web"),
        ("create", "service", "api"),
        ("create", "join_token", "node-1"),
        ("create", "api_token", "ci"),
        ("invite", "member", "alice@example.com"),
    ] {
        let n = audit
            .iter()
            .filter(|e| {
                e["action"] == action && e["resource_kind"] == kind && e["resource_name"] == name
            })
            .count();
        assert_eq!(n, 1, "one audit {action} of {kind} {name}: {audit:#?}");
    }
    let plan = ws.plan().await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);

    // The member imported by e-mail in another working directory plans clean.
    let other = Workspace::new(&api, &token);
    other.config(
        "resource \"weft_member\" \"alice\" {\n  email = \"alice@example.com\"\n  role  = \"editor\"\n}\n",
    );
    other
        .terraform(&[
            "import",
            "-input=false",
            "-no-color",
            "weft_member.alice",
            "alice@example.com",
        ])
        .await
        .ok();
    let plan = other.plan().await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);

    ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await
        .ok();
    let (s, _) = api
        .call("GET", "/v1/tenants/acme/policies/web", &token, None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call("GET", "/v1/tenants/acme/clusters/prod", &token, None)
        .await;
    assert_eq!(s, 404, "the cluster (and its service) gone");
    let tokens = list(&api, "/api-tokens").await;
    assert!(!named(&tokens, "name", "ci")[0]["revoked_at"].is_null());
    assert!(named(&list(&api, "/members").await, "email", "alice@example.com").is_empty());
}
