//! `weft_cluster` through the real terraform against a real control-api.

mod common;

use common::{Api, Workspace};
use serde_json::json;

const ONE: &str = r#"
resource "weft_cluster" "c" {
  name        = "prod"
  description = "production"
  labels      = { env = "prod" }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lifecycle_create_rename_drift_destroy() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);

    // Create: the cluster exists over REST, and a second plan has nothing to do.
    ws.config(ONE);
    ws.apply().await.ok();
    let (s, c) = api
        .call("GET", "/v1/tenants/acme/clusters/prod", &token, None)
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["description"], "production");
    assert_eq!(c["labels"], json!({"env": "prod"}));
    let id = c["id"].as_str().expect("id").to_string();
    let plan = ws.plan().await;
    assert_eq!(
        plan.code, 0,
        "plan after apply:\n{}\n{}",
        plan.stdout, plan.stderr
    );

    // Rename: an update in place, the id kept.
    ws.config(&ONE.replace("\"prod\"\n", "\"production\"\n"));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("1 to change, 0 to destroy"),
        "a rename is an update in place:\n{}",
        plan.stdout
    );
    ws.apply().await.ok();
    let (s, c) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/clusters/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["name"], "production");
    assert_eq!(c["id"], id.as_str());

    // Drift: a change made over REST shows in the next plan, and apply restores the config.
    let (s, b) = api
        .call(
            "PATCH",
            &format!("/v1/tenants/acme/clusters/{id}"),
            &token,
            Some(json!({"description": "changed by hand"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains("changed by hand"), "{}", plan.stdout);
    ws.apply().await.ok();
    let (_, c) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/clusters/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(c["description"], "production");
    assert_eq!(ws.plan().await.code, 0);

    // Destroy: gone over REST.
    ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"])
        .await
        .ok();
    let (s, _) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/clusters/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_mode_is_set_changed_and_refused_by_name_when_unknown() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);
    let (api_ref, token_ref) = (&api, &token);
    let routing = |mode: &'static str| async move {
        let (s, c) = api_ref
            .call("GET", "/v1/tenants/acme/clusters/prod", token_ref, None)
            .await;
        assert_eq!(s, 200, "{c}");
        c["routing"]["mode"].as_str().unwrap_or_default() == mode
    };

    // Unset: the server's default, and no diff after.
    ws.config("resource \"weft_cluster\" \"c\" {\n  name = \"prod\"\n}\n");
    ws.apply().await.ok();
    assert!(routing("tunnel").await);
    assert_eq!(ws.plan().await.code, 0);

    // Set: native over REST; a change made by hand is drift the next apply undoes.
    let native =
        "resource \"weft_cluster\" \"c\" {\n  name = \"prod\"\n  routing_mode = \"native\"\n}\n";
    ws.config(native);
    ws.apply().await.ok();
    assert!(routing("native").await);
    assert_eq!(ws.plan().await.code, 0);
    let (s, b) = api
        .call(
            "PATCH",
            "/v1/tenants/acme/clusters/prod",
            &token,
            Some(json!({"routing": {"mode": "tunnel"}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains("routing_mode"), "{}", plan.stdout);
    ws.apply().await.ok();
    assert!(routing("native").await);

    // Unknown: refused at plan, naming the attribute and the modes.
    ws.config(&native.replace("native", "overlay"));
    let plan = ws.plan().await;
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stderr.contains("Invalid routing mode"),
        "{}",
        plan.stderr
    );
    assert!(plan.stderr.contains("tunnel, native"), "{}", plan.stderr);
    assert!(routing("native").await, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_name_fails_at_plan_naming_the_attribute() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, &token);
    ws.config("resource \"weft_cluster\" \"c\" {\n  name = \"Not_A_Name\"\n}\n");
    let plan = ws.plan().await;
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stderr.contains("Invalid cluster name"),
        "{}",
        plan.stderr
    );
    assert!(plan.stderr.contains("name"), "{}", plan.stderr);
    let (s, b) = api
        .call("GET", "/v1/tenants/acme/clusters", &token, None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["items"], json!([]), "nothing was created: {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_named_at_configure() {
    let api = Api::start().await;
    api.tenant("acme", "editor").await;
    let ws = Workspace::new(&api, "weft_not-a-real-token");
    ws.config(ONE);
    let plan = ws.plan().await;
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stderr.contains("token invalid, expired or revoked"),
        "{}",
        plan.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_the_token_does_not_see_is_named_with_those_it_sees() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    api.tenant("globex", "editor").await;
    let mut ws = Workspace::new(&api, &token);
    ws.tenant = Some("globex".into());
    ws.config(ONE);
    let plan = ws.plan().await;
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stderr
            .contains("tenant \"globex\" is not one this token sees"),
        "{}",
        plan.stderr
    );
    assert!(
        plan.stderr.contains("the token sees: acme"),
        "{}",
        plan.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_with_a_private_ca_is_trusted_with_ca_cert_file() {
    let api = Api::start().await;
    let token = api.tenant("acme", "editor").await;
    let dir = weft_testkit::tmp::dir("tf-tls");
    let (url, cert) = weft_testkit::server::serve_rest_tls(api.state.clone(), dir.path()).await;
    let mut ws = Workspace::new(&api, &token);
    ws.api_url = url;

    // Not trusted: the diagnostic says it is the certificate, and what to set.
    ws.config(ONE);
    let plan = ws.plan().await;
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stderr.contains("certificate") && plan.stderr.contains("ca_cert_file"),
        "{}",
        plan.stderr
    );

    ws.config_with_provider(&format!(" ca_cert_file = \"{}\" ", cert.display()), ONE);
    ws.apply().await.ok();
    let (s, c) = api
        .call("GET", "/v1/tenants/acme/clusters/prod", &token, None)
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["description"], "production");
}
