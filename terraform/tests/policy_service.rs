//! `weft_policy` and `weft_service` through the real terraform against a real control-api:
//! create, no diff for the same spec written differently, in place vs replace, drift,
//! import, 412, plan-time validation.

mod common;

use common::{Api, Workspace};
use serde_json::{json, Value};

const CLUSTER: &str = r#"
resource "weft_cluster" "prod" {
  name = "prod"
}
"#;

fn policy(labels: &str, spec: &str) -> String {
    format!(
        r#"
resource "weft_policy" "web" {{
  name     = "web-from-frontend"
  labels   = {labels}
  clusters = [weft_cluster.prod.name]
  spec     = {spec}
}}
"#
    )
}

const SPEC: &str = r#"jsonencode({
    endpointSelector = { matchLabels = { app = "web" } }
    ingress = [{
      fromEndpoints = [{ matchLabels = { app = "frontend" } }]
      toPorts       = [{ ports = [{ port = "80", protocol = "TCP" }] }]
    }]
  })"#;

/// The same rule as YAML: keys in another order, the port a number, `protocol: ANY` and
/// empty lists the API drops.
const SPEC_YAML: &str = r#"jsonencode(yamldecode(<<-EOT
    ingress:
    - toPorts:
      - ports:
        - protocol: TCP
          port: 80
      fromEndpoints:
      - matchLabels:
          app: frontend
    egress: []
    endpointSelector:
      matchLabels:
        app: web
    EOT
  ))"#;

fn service(cluster: &str) -> String {
    format!(
        r#"
resource "weft_service" "api" {{
  cluster = {cluster}
  name    = "api"
  frontends = [{{ vip = "10.96.0.10", port = 80, protocol = "TCP" }}]
  backends = [
    {{ address = "10.0.1.5", port = 8080 }},
    {{ address = "10.0.1.6", port = 8080, weight = 3 }},
  ]
  session_affinity = {{ timeout_seconds = 300 }}
}}
"#
    )
}

async fn get(api: &Api, token: &str, path: &str) -> (u16, Value) {
    api.call("GET", &format!("/v1/tenants/acme{path}"), token, None)
        .await
}

/// The audit log (read as the operator: it needs admin).
async fn audit(api: &Api, _token: &str) -> Vec<Value> {
    let (s, b) = get(api, common::OPERATOR, "/audit-log?limit=1000").await;
    assert_eq!(s, 200, "{b}");
    b["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_service_create_no_diff_in_place_replace_drift_destroy() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);

    // Create: each exists over REST, with one audit `create` each.
    let config = |labels: &str, spec: &str, cluster: &str| {
        format!(
            "{CLUSTER}\nresource \"weft_cluster\" \"staging\" {{\n  name = \"staging\"\n}}\n{}{}",
            policy(labels, spec),
            service(cluster)
        )
    };
    ws.config(&config("{ team = \"web\" }", SPEC, "weft_cluster.prod.id"));
    ws.apply().await.ok();
    let (s, p) = get(&api, &token, "/policies/web-from-frontend").await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["clusters"], json!(["prod"]));
    assert_eq!(p["labels"], json!({"team": "web"}));
    let (s, svc) = get(&api, &token, "/clusters/prod/services/api").await;
    assert_eq!(s, 200, "{svc}");
    assert_eq!(svc["backends"][1]["weight"], 3);
    assert_eq!(svc["session_affinity"], json!({"timeout_seconds": 300}));
    let creates: Vec<String> = audit(&api, &token)
        .await
        .iter()
        .filter(|e| e["action"] == "create")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource_kind"].as_str().unwrap_or_default(),
                e["resource_name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    for want in ["policy/web-from-frontend", "service/api", "cluster/prod"] {
        assert_eq!(
            creates.iter().filter(|c| c.as_str() == want).count(),
            1,
            "one audit create of {want}: {creates:?}"
        );
    }
    let plan = ws.plan().await;
    assert_eq!(
        plan.code, 0,
        "plan after apply:\n{}\n{}",
        plan.stdout, plan.stderr
    );

    // The same spec written differently: no diff.
    ws.config(&config(
        "{ team = \"web\" }",
        SPEC_YAML,
        "weft_cluster.prod.id",
    ));
    let plan = ws.plan().await;
    assert_eq!(
        plan.code, 0,
        "same spec as YAML:\n{}\n{}",
        plan.stdout, plan.stderr
    );

    // Labels and spec: in place, same id, higher revision.
    let (policy_id, rev) = (p["id"].clone(), p["revision"].as_i64().unwrap());
    ws.config(&config(
        "{ team = \"web\", tier = \"front\" }",
        &SPEC_YAML.replace("port: 80", "port: 8080"),
        "weft_cluster.prod.id",
    ));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("0 to add, 1 to change, 0 to destroy"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("~ resource \"weft_policy\" \"web\""),
        "{}",
        plan.stdout
    );
    ws.apply().await.ok();
    let (_, p) = get(&api, &token, "/policies/web-from-frontend").await;
    assert_eq!(p["id"], policy_id);
    assert!(p["revision"].as_i64().unwrap() > rev, "{p}");
    assert_eq!(
        p["specs"][0]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
        "8080"
    );
    assert_eq!(ws.plan().await.code, 0);

    // A service's cluster: replaced (-/+), new id, the old one gone.
    let old_service = svc["id"].as_str().unwrap().to_string();
    ws.config(&config(
        "{ team = \"web\", tier = \"front\" }",
        &SPEC_YAML.replace("port: 80", "port: 8080"),
        "weft_cluster.staging.id",
    ));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("-/+ resource \"weft_service\" \"api\""),
        "{}",
        plan.stdout
    );
    ws.apply().await.ok();
    let (s, _) = get(
        &api,
        &token,
        &format!("/clusters/prod/services/{old_service}"),
    )
    .await;
    assert_eq!(s, 404);
    let (s, moved) = get(&api, &token, "/clusters/staging/services/api").await;
    assert_eq!(s, 200, "{moved}");
    assert_ne!(moved["id"], old_service.as_str());
    assert_eq!(ws.plan().await.code, 0);

    // Drift of a service's backends: the plan shows it, apply writes the config's back.
    let (s, b) = api
        .call(
            "PATCH",
            "/v1/tenants/acme/clusters/staging/services/api",
            &token,
            Some(json!({"backends": [
                {"address": "10.0.1.5", "port": 8080},
                {"address": "10.0.1.6", "port": 8080, "weight": 5},
            ]})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("0 to add, 1 to change, 0 to destroy")
            && plan.stdout.contains("~ resource \"weft_service\" \"api\""),
        "{}",
        plan.stdout
    );
    ws.apply().await.ok();
    let (_, svc) = get(&api, &token, "/clusters/staging/services/api").await;
    assert_eq!(svc["backends"][1]["weight"], 3, "{svc}");
    assert_eq!(ws.plan().await.code, 0);

    // Drift: a REST PATCH of the policy's spec and a deleted service show in the plan.
    let (s, b) = api
        .call(
            "PATCH",
            "/v1/tenants/acme/policies/web-from-frontend",
            &token,
            Some(json!({"spec": {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"fromEntities": ["world"]}]}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = api
        .call(
            "DELETE",
            "/v1/tenants/acme/clusters/staging/services/api",
            &token,
            None,
        )
        .await;
    assert!(s == 204 || s == 200, "{s} {b}");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("1 to add, 1 to change, 0 to destroy"),
        "exactly the drift:\n{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("world"), "{}", plan.stdout);
    ws.apply().await.ok();
    let (_, p) = get(&api, &token, "/policies/web-from-frontend").await;
    assert_eq!(
        p["specs"][0]["ingress"][0]["fromEndpoints"][0]["matchLabels"]["app"],
        "frontend"
    );
    let (s, _) = get(&api, &token, "/clusters/staging/services/api").await;
    assert_eq!(s, 200);
    let plan = ws.plan().await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);

    // Destroy: all gone.
    ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await
        .ok();
    let (_, b) = get(&api, &token, "/policies").await;
    assert_eq!(b["items"], json!([]));
    let (_, b) = get(&api, &token, "/clusters").await;
    assert_eq!(b["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_by_name_and_generated_config_plan_clean() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let call = |m: &'static str, path: &'static str, body: Value| {
        let (api, token) = (&api, token.clone());
        async move {
            let (s, b) = api
                .call(m, &format!("/v1/tenants/acme{path}"), &token, Some(body))
                .await;
            assert_eq!(s, 201, "{b}");
        }
    };
    call(
        "POST",
        "/clusters",
        json!({"name": "prod", "labels": {"env": "prod"}}),
    )
    .await;
    call(
        "POST",
        "/policies",
        json!({"name": "web-from-frontend", "spec": {"endpointSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                            "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}}),
    )
    .await;
    call(
        "POST",
        "/clusters/prod/services",
        json!({"name": "api", "frontends": [{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
               "backends": [{"address": "10.0.1.5", "port": 8080}]}),
    )
    .await;

    // `terraform import` by name, with the config written by hand.
    let ws = Workspace::new(&api, &token);
    ws.config(&format!(
        r#"
resource "weft_cluster" "prod" {{
  name   = "prod"
  labels = {{ env = "prod" }}
}}
resource "weft_policy" "web" {{
  name = "web-from-frontend"
  spec = {SPEC}
}}
resource "weft_service" "api" {{
  cluster = "prod"
  name    = "api"
  frontends = [{{ vip = "10.96.0.10", port = 80, protocol = "TCP" }}]
  backends  = [{{ address = "10.0.1.5", port = 8080 }}]
}}
"#
    ));
    for (addr, id) in [
        ("weft_cluster.prod", "prod"),
        ("weft_policy.web", "web-from-frontend"),
        ("weft_service.api", "prod/api"),
    ] {
        ws.terraform(&["import", "-input=false", "-no-color", addr, id])
            .await
            .ok();
    }
    let plan = ws.plan().await;
    assert_eq!(
        plan.code, 0,
        "after import:\n{}\n{}",
        plan.stdout, plan.stderr
    );

    // `import` blocks with `plan -generate-config-out`: the generated config plans clean.
    let ws = Workspace::new(&api, &token);
    ws.config(
        r#"
import {
  to = weft_cluster.prod
  id = "prod"
}
import {
  to = weft_policy.web
  id = "web-from-frontend"
}
import {
  to = weft_service.api
  id = "prod/api"
}
"#,
    );
    let run = ws
        .terraform(&[
            "plan",
            "-input=false",
            "-no-color",
            "-generate-config-out=generated.tf",
        ])
        .await;
    run.ok();
    ws.apply().await.ok();
    let plan = ws.plan().await;
    let generated = std::fs::read_to_string(ws.dir.path().join("generated.tf")).unwrap_or_default();
    assert_eq!(
        plan.code, 0,
        "generated config:\n{generated}\nplan:\n{}\n{}",
        plan.stdout, plan.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_plan_is_refused_with_412_and_the_rest_change_stays() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);
    ws.config(&format!("{CLUSTER}{}", policy("{ v = \"1\" }", SPEC)));
    ws.apply().await.ok();
    ws.config(&format!("{CLUSTER}{}", policy("{ v = \"2\" }", SPEC)));
    let plan = ws
        .terraform(&["plan", "-input=false", "-no-color", "-out=tfplan"])
        .await;
    plan.ok();
    let (s, b) = api
        .call(
            "PATCH",
            "/v1/tenants/acme/policies/web-from-frontend",
            &token,
            Some(json!({"description": "by hand"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let run = ws
        .terraform(&["apply", "-input=false", "-no-color", "tfplan"])
        .await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("changed outside Terraform since it was read (revision"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("run plan again"), "{}", run.stderr);
    let (_, p) = get(&api, &token, "/policies/web-from-frontend").await;
    assert_eq!(p["description"], "by hand");
    assert_eq!(p["labels"], json!({"v": "1"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_at_plan_on_its_attribute_and_writes_nothing() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);
    let before = audit(&api, &token).await.len();
    let cases: [(&str, &[&str], usize); 11] = [
        (
            "resource \"weft_policy\" \"p\" {\n  name = \"p\"\n  spec = jsonencode({\n    endpointSelector = {}\n    ingress = [{ fromCIDR = [\"10.0.0.0/33\"] }]\n  })\n}\n",
            &["Invalid policy spec", "ingress[0].fromCIDR[0]", "10.0.0.0/33"],
            3,
        ),
        (
            "resource \"weft_policy\" \"p\" {\n  name = \"p\"\n  spec = jsonencode({\n    endpointSelector = {}\n    ingress = [{ fromRequires = [{}] }]\n  })\n}\n",
            &["Invalid policy spec", "fromRequires"],
            3,
        ),
        (
            "resource \"weft_policy\" \"p\" {\n  name  = \"p\"\n  spec  = jsonencode({ endpointSelector = {} })\n  specs = [jsonencode({ endpointSelector = {} })]\n}\n",
            &["not both"],
            3,
        ),
        (
            "resource \"weft_policy\" \"p\" {\n  name   = \"p\"\n  labels = { \"bad key!\" = \"x\" }\n  spec   = jsonencode({ endpointSelector = {} })\n}\n",
            &["Invalid labels"],
            3,
        ),
        (
            "resource \"weft_service\" \"s\" {\n  cluster = \"prod\"\n  name    = \"s\"\n  frontends = [{ vip = \"10.96.0.300\", port = 80, protocol = \"TCP\" }]\n}\n",
            &["frontends[0].vip", "not an IP address"],
            4,
        ),
        (
            "resource \"weft_service\" \"s\" {\n  cluster = \"prod\"\n  name    = \"s\"\n  frontends = [{ vip = \"10.96.0.10\", port = 80, protocol = \"TCP\" }]\n  session_affinity = { timeout_seconds = 0 }\n}\n",
            &["session_affinity.timeout_seconds", "1-86400"],
            5,
        ),
        (
            "resource \"weft_service\" \"s\" {\n  cluster = \"prod\"\n  name    = \"s\"\n  frontends = [{ vip = \"10.96.0.10\", port = 80, protocol = \"TCP\" }]\n  backends = [\n    { address = \"10.0.1.5\", port = 8080 },\n    { address = \"10.0.1.6\", port = 70000 },\n  ]\n}\n",
            // Terraform resolves the element steps: the second backend's line.
            &["backends[1].port: must be a number 1-65535"],
            7,
        ),
        (
            "resource \"weft_service\" \"s\" {\n  cluster = \"prod\"\n  name    = \"s\"\n  frontends = [{ vip = \"10.96.0.10\", port = 80 }]\n}\n",
            &["frontends[0].protocol: required"],
            4,
        ),
        (
            "resource \"weft_service\" \"s\" {\n  cluster = \"prod\"\n  name    = \"s\"\n  frontends = { vip = \"10.96.0.10\", port = 80, protocol = \"TCP\" }\n}\n",
            &["frontends: must be a list of objects"],
            4,
        ),
        (
            "resource \"weft_service\" \"s\" {\n  cluster = \"prod\"\n  name    = \"s\"\n  frontends = [{ vip = \"10.96.0.10\", port = 80, protocol = \"TCP\" }]\n  backends = [{ address = \"10.96.0.10\", port = 80 }]\n}\n",
            &["backends[0]"],
            5,
        ),
        (
            "resource \"weft_service\" \"s\" {\n  cluster = \"prod\"\n  name    = \"s\"\n}\n",
            &["frontends"],
            1,
        ),
    ];
    for (config, wanted, line) in cases {
        ws.config(config);
        let plan = ws
            .terraform(&["plan", "-input=false", "-no-color", "-json"])
            .await;
        assert_eq!(plan.code, 1, "{config}\n{}\n{}", plan.stdout, plan.stderr);
        let diags: Vec<Value> = plan
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["type"] == "diagnostic" && m["diagnostic"]["severity"] == "error")
            .map(|m| m["diagnostic"].clone())
            .collect();
        assert_eq!(diags.len(), 1, "one diagnostic for {config}: {diags:#?}");
        let d = &diags[0];
        let text = format!("{} {}", d["summary"], d["detail"]);
        for w in wanted {
            assert!(text.contains(w), "{w:?} in {d:#}");
        }
        // The main.tf written by `config` has the provider block on lines 1-7 before it.
        let start = d["range"]["start"]["line"].as_i64().unwrap_or(0);
        assert_eq!(start, 8 + line as i64, "source line of {config}: {d:#}");
    }
    assert_eq!(audit(&api, &token).await.len(), before, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_an_existing_policy_says_how_to_import_it() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let (s, b) = api
        .call(
            "POST",
            "/v1/tenants/acme/policies",
            &token,
            Some(json!({"name": "web", "spec": {"endpointSelector": {}}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let ws = Workspace::new(&api, &token);
    ws.config(
        "resource \"weft_policy\" \"web\" {\n  name = \"web\"\n  spec = jsonencode({ endpointSelector = {} })\n}\n",
    );
    let run = ws.apply().await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(
            "policy \"web\" already exists in tenant acme: import it with terraform import weft_policy.web web"
        ),
        "{}",
        run.stderr
    );
}
