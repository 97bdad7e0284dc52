//! Tenant isolation: the route table × callers matrix, row-level security as the second
//! wall, and the audit log.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Rest, TestApp, OPERATOR};
use serde_json::json;
use uuid::Uuid;

/// Row counts of every table plus the revision: "nothing was written" is this unchanged.
async fn fingerprint(t: &TestApp) -> Vec<i64> {
    let mut out = vec![t.revision().await];
    for table in [
        "tenants",
        "clusters",
        "nodes",
        "endpoints",
        "identities",
        "policies",
        "services",
        "service_frontends",
        "service_backends",
        "api_tokens",
        "memberships",
        "invitations",
        "audit_log",
        "desired_state_changes",
        "test_workloads",
        "probes",
    ] {
        out.push(t.count(table).await);
    }
    let revoked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE revoked_at IS NOT NULL")
            .fetch_one(&t.pool)
            .await
            .expect("count");
    out.push(revoked);
    out
}

struct Fixture {
    endpoint: String,
    probe: String,
    viewer: String,
    revoked: String,
    foreign_owner: String,
}

/// acme with one of everything; globex beside it.
async fn fixture(t: &TestApp) -> Fixture {
    let owner = t.tenant("acme").await;
    let foreign_owner = t.tenant("globex").await;
    let viewer = t.token("acme", "viewer", &owner).await;
    let revoked = t.token("acme", "owner", OPERATOR).await;
    t.created(
        "/v1/tenants/acme/api-tokens",
        &owner,
        json!({"name": "ci", "role": "editor"}),
    )
    .await;
    let r = t.cluster("acme", "prod", &owner).await;
    let cluster: Uuid = r["id"].as_str().unwrap().parse().unwrap();
    t.created(
        "/v1/tenants/acme/clusters/prod/services",
        &owner,
        json!({"name": "web", "frontends": [{"vip": "10.96.0.1", "port": 80, "protocol": "TCP"}]}),
    )
    .await;
    t.created(
        "/v1/tenants/acme/policies",
        &owner,
        json!({"name": "p", "spec": {"endpointSelector": {}}}),
    )
    .await;
    t.created(
        "/v1/tenants/acme/members",
        &owner,
        json!({"email": "ada@example.com", "role": "editor"}),
    )
    .await;
    let tenant: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let node = Uuid::now_v7();
    sqlx::query("INSERT INTO nodes (id, tenant_id, cluster_id, name, revision) VALUES ($1, $2, $3, 'node-1', 1)")
        .bind(node)
        .bind(tenant)
        .bind(cluster)
        .execute(&t.pool)
        .await
        .unwrap();
    let endpoint = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO endpoints (id, tenant_id, cluster_id, node_id, name, revision) VALUES ($1, $2, $3, $4, 'web-1', 1)",
    )
    .bind(endpoint)
    .bind(tenant)
    .bind(cluster)
    .bind(node)
    .execute(&t.pool)
    .await
    .unwrap();
    t.created(
        "/v1/tenants/acme/clusters/prod/test-workloads",
        &owner,
        json!({"name": "echo-w", "node": "node-1", "kind": "world", "echo_ports": [8080]}),
    )
    .await;
    let r = t
        .created(
            "/v1/tenants/acme/clusters/prod/probes",
            &owner,
            json!({"from": "echo-w", "target": "10.0.1.5:80"}),
        )
        .await;
    let probe = r["id"].as_str().unwrap().to_string();
    let revoked_name: String =
        sqlx::query_scalar("SELECT name FROM api_tokens WHERE token_hash = $1")
            .bind(control_api::auth::hash_token(&revoked))
            .fetch_one(&t.pool)
            .await
            .unwrap();
    let r = t
        .delete(
            &format!("/v1/tenants/acme/api-tokens/{revoked_name}"),
            &owner,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    Fixture {
        endpoint: endpoint.to_string(),
        probe,
        viewer,
        revoked,
        foreign_owner,
    }
}

/// Routes a viewer may not even read.
fn admin_only(path: &str) -> bool {
    path.contains("/api-tokens") || path.contains("/audit-log") || path.contains("/join-tokens")
}

#[tokio::test]
async fn isolation_matrix_from_the_route_table() {
    // Many revoked-token attempts on purpose: lift the failed-attempt limit.
    let limiter =
        control_api::ratelimit::FailureLimiter::new(u32::MAX, std::time::Duration::from_secs(60));
    let t = TestApp::with_limiter(limiter).await;
    let f = fixture(&t).await;
    let spec = serde_json::to_value(control_api::api::openapi()).unwrap();
    let mut checked = 0;
    for (template, item) in spec["paths"].as_object().unwrap() {
        if !template.contains("{tenant}") {
            continue;
        }
        let path = template
            .replace("{tenant}", "acme")
            .replace("{cluster}", "prod")
            .replace("{service}", "web")
            .replace("{policy}", "p")
            .replace("{node}", "node-1")
            .replace("{endpoint}", &f.endpoint)
            .replace("{workload}", "echo-w")
            .replace("{probe}", &f.probe)
            .replace("{member}", "ada@example.com")
            .replace(
                "{token}",
                if template.contains("join-tokens") {
                    "rack-1"
                } else {
                    "ci"
                },
            );
        assert!(
            !path.contains('{'),
            "no fixture for a parameter of {template}"
        );
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let write = method != "GET";
            let request = |token: Option<&str>| {
                let mut b = Request::builder()
                    .method(method.as_str())
                    .uri(path.as_str());
                if let Some(tok) = token {
                    b = b.header(header::AUTHORIZATION, format!("Bearer {tok}"));
                }
                if write {
                    let ctype = if path.ends_with("/import") {
                        "application/yaml"
                    } else {
                        "application/json"
                    };
                    b = b.header(header::CONTENT_TYPE, ctype);
                    return b.body(Body::from("{}")).unwrap();
                }
                b.body(Body::empty()).unwrap()
            };
            let before = fingerprint(&t).await;
            let cases: [(&str, Option<&str>, u16); 4] = [
                ("no token", None, 401),
                ("revoked token", Some(&f.revoked), 401),
                ("other tenant's owner", Some(&f.foreign_owner), 404),
                (
                    "viewer",
                    Some(&f.viewer),
                    if write || admin_only(&path) { 403 } else { 200 },
                ),
            ];
            for (who, token, want) in cases {
                let r = t.send(request(token)).await;
                assert_eq!(
                    r.status.as_u16(),
                    want,
                    "{method} {template} as {who}: {}",
                    r.body
                );
                if want != 200 {
                    assert_eq!(
                        r.headers.get(header::CONTENT_TYPE).unwrap(),
                        "application/problem+json",
                        "{method} {template} as {who}"
                    );
                }
            }
            assert_eq!(
                fingerprint(&t).await,
                before,
                "{method} {template}: a refused request wrote something"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} tenant routes in the table");
}

#[tokio::test]
async fn row_level_security_is_the_second_wall() {
    let t = TestApp::new().await;
    let acme = t.tenant("acme").await;
    let globex = t.tenant("globex").await;
    for (tok, tenant) in [(&acme, "acme"), (&globex, "globex")] {
        t.cluster(tenant, "prod", tok).await;
    }
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tenants ORDER BY name")
        .fetch_all(&t.pool)
        .await
        .unwrap();
    // The role the API runs as, exactly as the API connects.
    let app = control_api::db::connect(&t.url, 1).await.unwrap();
    let mut tx = app.begin().await.unwrap();
    let unscoped: i64 = sqlx::query_scalar("SELECT count(*) FROM clusters")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(unscoped, 0, "no tenant set: no rows, even without a WHERE");
    control_api::auth::set_tenant(&mut tx, ids[0])
        .await
        .unwrap();
    let scoped: Vec<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM clusters")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(scoped, vec![ids[0]], "only the transaction's tenant");
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, 1);
    let cross = sqlx::query(
        "INSERT INTO clusters (id, tenant_id, name, revision) VALUES ($1, $2, 'sneaky', 1)",
    )
    .bind(Uuid::now_v7())
    .bind(ids[1])
    .execute(&mut *tx)
    .await;
    // Writing another tenant's row is refused by the policy, not for any other reason.
    weft_testkit::db::assert_refused(
        cross,
        "42501",
        "new row violates row-level security policy for table \"clusters\"",
    );
    tx.rollback().await.unwrap();
    // Nor can the role turn the wall off.
    let mut conn = app.acquire().await.unwrap();
    let off = sqlx::query("ALTER TABLE clusters DISABLE ROW LEVEL SECURITY")
        .execute(&mut *conn)
        .await;
    weft_testkit::db::assert_refused(off, "42501", "must be owner of table clusters");
    let bypass: bool = sqlx::query_scalar(
        "SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(!bypass);
}

#[tokio::test]
async fn every_tenant_owned_table_has_forced_rls() {
    let t = TestApp::new().await;
    let tables: Vec<(String, bool, bool, i64)> = sqlx::query_as(
        "SELECT c.relname::text, c.relrowsecurity, c.relforcerowsecurity, \
                (SELECT count(*) FROM pg_policies p WHERE p.tablename = c.relname) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND (c.relname = 'tenants' OR EXISTS ( \
           SELECT 1 FROM information_schema.columns col \
           WHERE col.table_name = c.relname AND col.column_name = 'tenant_id'))",
    )
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 12, "{tables:?}");
    for (name, enabled, forced, policies) in tables {
        assert!(
            enabled && forced && policies > 0,
            "{name}: RLS enabled={enabled} forced={forced} policies={policies}"
        );
    }
}

#[tokio::test]
async fn audit_log_records_every_change() {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    let viewer = t.token("acme", "viewer", &owner).await;
    let r = t.cluster("acme", "prod", &owner).await;
    let cluster_id = r["id"].as_str().unwrap().to_string();
    t.patch(
        "/v1/tenants/acme/clusters/prod",
        &owner,
        json!({"labels": {"env": "prod"}}),
    )
    .await;
    let r = t
        .post(
            "/v1/tenants/acme/api-tokens",
            &owner,
            json!({"name": "ci", "role": "editor"}),
        )
        .await;
    let secret = r.body["token"].as_str().unwrap().to_string();
    t.delete("/v1/tenants/acme/api-tokens/ci", &owner).await;
    t.delete("/v1/tenants/acme/clusters/prod", &owner).await;
    // Refused: no entry.
    t.post("/v1/tenants/acme/clusters", &viewer, json!({"name": "x"}))
        .await;

    let r = t
        .get("/v1/tenants/acme/audit-log?resource_kind=cluster", &owner)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let items = r.body["items"].as_array().unwrap();
    let actions: Vec<_> = items
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create", "update", "delete"]);
    assert!(items
        .iter()
        .all(|e| e["resource_id"] == cluster_id.as_str()));
    assert!(items
        .iter()
        .all(|e| e["actor_kind"] == "api_token" && e["request_id"].as_str().unwrap().len() > 8));
    assert!(items[0]["before"].is_null());
    assert_eq!(items[1]["before"]["labels"], json!({}));
    assert_eq!(items[1]["after"]["labels"], json!({"env": "prod"}));
    assert!(items[2]["after"].is_null());

    let r = t
        .get("/v1/tenants/acme/audit-log?resource_kind=api_token", &owner)
        .await;
    let actions: Vec<_> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.ends_with(&["create", "revoke"]), "{actions:?}");
    let all = t.get("/v1/tenants/acme/audit-log?limit=1000", &owner).await;
    assert!(
        !all.body.to_string().contains(&secret),
        "secrets never reach the audit log"
    );
    let total = all.body["items"].as_array().unwrap().len();
    let r = t.get("/v1/tenants/acme/audit-log?limit=2", &owner).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    assert!(r.body["next_cursor"].is_string());
    assert_eq!(total, t.count("audit_log").await as usize);

    let r = t.get("/v1/tenants/acme/audit-log", &viewer).await;
    assert!(r.is_problem(403, "forbidden"));
}
