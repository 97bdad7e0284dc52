//! Members and invites: invites bind on sign-in with a verified e-mail, and the role
//! rules (admins manage, nobody grants above their own role, the last owner stays).

mod common;

use axum::http::StatusCode;
use common::oidc::{user, Session};
use common::Rest;
use common::{TestApp, OPERATOR};
use serde_json::json;

#[tokio::test]
async fn invites_bind_on_first_sign_in_with_a_verified_email() {
    let t = TestApp::with_oidc().await;
    t.tenant("acme").await;
    t.tenant("globex").await;
    let invite = |email: String, role: &str| {
        let body = json!({"email": email, "role": role});
        let t = &t;
        async move { t.post("/v1/tenants/acme/members", OPERATOR, body).await }
    };
    let r = invite("Bob@Weft.Test".into(), "editor").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["status"], "invited");
    assert_eq!(r.body["email"], user("bob"));
    let r = invite(user("bob"), "viewer").await;
    assert!(r.is_problem(409, "conflict"), "{}", r.body);
    assert_eq!(r.fields(), vec!["email"]);
    let r = invite(user("eve"), "viewer").await;
    assert_eq!(r.status, StatusCode::CREATED);

    let bob = t.sign_in(&user("bob")).await;
    let me = t.as_user(&bob, "GET", "/v1/me", None).await;
    assert_eq!(
        me.body["tenants"],
        json!([{"id": me.body["tenants"][0]["id"], "name": "acme", "display_name": "", "role": "editor"}])
    );
    let r = t
        .as_user(
            &bob,
            "POST",
            "/v1/tenants/acme/clusters",
            Some(json!({"name": "edge"})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "an editor changes clusters: {}",
        r.body
    );
    let r = t
        .as_user(&bob, "GET", "/v1/tenants/globex/clusters", None)
        .await;
    assert!(r.is_problem(404, "not-found"), "{}", r.body);
    let r = t.as_user(&bob, "DELETE", "/v1/tenants/acme", None).await;
    assert!(r.is_problem(403, "forbidden"), "{}", r.body);

    // eve's provider does not vouch for her e-mail: the invite waits.
    let eve = t.sign_in(&user("eve")).await;
    let me = t.as_user(&eve, "GET", "/v1/me", None).await;
    assert_eq!(me.body["tenants"], json!([]));
    let r = t
        .as_user(&eve, "GET", "/v1/tenants/acme/clusters", None)
        .await;
    assert!(r.is_problem(404, "not-found"), "{}", r.body);

    let list = t.get("/v1/tenants/acme/members", OPERATOR).await;
    let items = list.body["items"].as_array().unwrap();
    let status = |email: String| {
        items
            .iter()
            .find(|m| m["email"] == email)
            .map(|m| (m["status"].clone(), m["role"].clone()))
    };
    assert_eq!(
        status(user("bob")),
        Some((json!("active"), json!("editor")))
    );
    assert_eq!(
        status(user("eve")),
        Some((json!("invited"), json!("viewer")))
    );
    // A member cannot be invited again.
    let r = invite(user("bob"), "admin").await;
    assert!(r.is_problem(409, "conflict"), "{}", r.body);
    let r = invite("not-an-email".into(), "admin").await;
    assert_eq!(r.fields(), vec!["email"]);
}

#[tokio::test]
async fn role_rules_for_members() {
    let t = TestApp::with_oidc().await;
    let alice = t.sign_in(&user("alice")).await;
    let r = t
        .as_user(&alice, "POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (name, role) in [("bob", "admin"), ("carol", "editor")] {
        let r = t
            .as_user(
                &alice,
                "POST",
                "/v1/tenants/acme/members",
                Some(json!({"email": user(name), "role": role})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let bob = t.sign_in(&user("bob")).await;
    let carol = t.sign_in(&user("carol")).await;
    let path = |who: &str| format!("/v1/tenants/acme/members/{}", user(who));

    let members = "/v1/tenants/acme/members";
    let invite = |who: &str, role: &str| Some(json!({"email": user(who), "role": role}));
    let role = |role: &str| Some(json!({"role": role}));
    use Want::{Conflict, Forbidden, NotFound, Status};
    #[rustfmt::skip]
    let steps: Vec<Step> = vec![
        // An admin can neither make nor touch an owner, nor grant above their role ...
        ("admin invites an owner", &bob, "POST", members.into(), invite("dave", "owner"), Forbidden),
        ("admin grants owner", &bob, "PATCH", path("carol"), role("owner"), Forbidden),
        ("admin demotes the owner", &bob, "PATCH", path("alice"), role("viewer"), Forbidden),
        ("admin removes the owner", &bob, "DELETE", path("alice"), None, Forbidden),
        // ... but manages the rest.
        ("admin invites an editor", &bob, "POST", members.into(), invite("dave", "editor"), Status(StatusCode::CREATED)),
        ("admin demotes an editor", &bob, "PATCH", path("carol"), role("viewer"), Status(StatusCode::OK)),
        ("admin withdraws an invite", &bob, "DELETE", path("dave"), None, Status(StatusCode::NO_CONTENT)),
        // A viewer reads members but manages none.
        ("viewer reads members", &carol, "GET", members.into(), None, Status(StatusCode::OK)),
        ("viewer invites", &carol, "POST", members.into(), invite("dave", "viewer"), Forbidden),
        ("viewer removes an admin", &carol, "DELETE", path("bob"), None, Forbidden),
        // The last owner can be neither demoted nor removed, even by themselves.
        ("last owner steps down", &alice, "PATCH", path("alice"), role("admin"), Conflict),
        ("last owner leaves", &alice, "DELETE", path("alice"), None, Conflict),
        // With a second owner, the first may step down.
        ("owner makes a second owner", &alice, "PATCH", path("bob"), role("owner"), Status(StatusCode::OK)),
        ("first owner leaves", &alice, "DELETE", path("alice"), None, Status(StatusCode::NO_CONTENT)),
        ("who left reads nothing", &alice, "GET", members.into(), None, NotFound),
        // A viewer may leave on their own.
        ("viewer leaves", &carol, "DELETE", path("carol"), None, Status(StatusCode::NO_CONTENT)),
    ];
    for (why, who, method, path, body, want) in steps {
        let r = t.as_user(who, method, &path, body).await;
        assert!(
            want.holds(&r),
            "{why}: {method} {path}: {} {}",
            r.status,
            r.body
        );
    }
    let r = t.as_user(&bob, "GET", members, None).await;
    let roles: Vec<(String, String)> = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            (
                m["email"].as_str().unwrap_or("").to_string(),
                m["role"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(roles, [(user("bob"), "owner".to_string())], "{}", r.body);
    let owners: i64 = sqlx::query_scalar("SELECT count(*) FROM memberships WHERE role = 'owner'")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(owners, 1);

    // Another tenant's people see nothing of these members.
    let other = t.tenant("globex").await;
    let r = t.get("/v1/tenants/acme/members", &other).await;
    assert!(r.is_problem(404, "not-found"), "{}", r.body);
}

#[tokio::test]
async fn member_changes_are_audited_with_the_person() {
    let t = TestApp::with_oidc().await;
    let alice = t.sign_in(&user("alice")).await;
    t.as_user(&alice, "POST", "/v1/tenants", Some(json!({"name": "acme"})))
        .await;
    let r = t
        .as_user(
            &alice,
            "POST",
            "/v1/tenants/acme/members",
            Some(json!({"email": user("bob"), "role": "viewer"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    t.sign_in(&user("bob")).await;
    let r = t
        .as_user(
            &alice,
            "PATCH",
            &format!("/v1/tenants/acme/members/{}", user("bob")),
            Some(json!({"role": "editor"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let log = t
        .as_user(
            &alice,
            "GET",
            "/v1/tenants/acme/audit-log?resource_kind=member",
            None,
        )
        .await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.body);
    let items = log.body["items"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = items
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["actor_name"].as_str().unwrap(),
            )
        })
        .collect();
    let alice_email = user("alice");
    let bob_email = user("bob");
    assert_eq!(
        seen,
        [
            ("invite", alice_email.as_str()),
            ("accept-invite", bob_email.as_str()),
            ("update", alice_email.as_str())
        ]
    );
    assert!(items.iter().all(|e| e["actor_kind"] == "user"));
    // Written by SQL at sign-in, yet time-ordered like the API's own ids.
    let accepted: uuid::Uuid = items[1]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(accepted.get_version_num(), 7);
    assert_eq!(items[2]["before"]["role"], "viewer");
    assert_eq!(items[2]["after"]["role"], "editor");
}

#[tokio::test]
async fn memberships_are_behind_row_level_security() {
    let t = TestApp::with_oidc().await;
    let alice = t.sign_in(&user("alice")).await;
    let bob = t.sign_in(&user("bob")).await;
    for (who, tenant) in [(&alice, "acme"), (&bob, "globex")] {
        let r = t
            .as_user(who, "POST", "/v1/tenants", Some(json!({"name": tenant})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let id = |email: String| {
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM users WHERE email = $1")
                .bind(email)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let alice_id = id(user("alice")).await;
    // As the API runs: no tenant and no person set, no memberships, whatever the query.
    let app = control_api::db::connect(&t.url, 1).await.unwrap();
    let mut tx = app.begin().await.unwrap();
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM memberships")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(all, 0);
    // A person sees their own memberships and tenants, not another's.
    control_api::auth::set_user(&mut tx, alice_id)
        .await
        .unwrap();
    let users: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT user_id FROM memberships")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(users, vec![alice_id]);
    let tenants: Vec<String> = sqlx::query_scalar("SELECT name FROM tenants")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec!["acme".to_string()]);
    // ... and cannot write themselves into another tenant.
    let globex: uuid::Uuid = sqlx::query_scalar("SELECT id FROM weft_resolve_tenant('globex')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let sneak = sqlx::query(
        "INSERT INTO memberships (id, tenant_id, user_id, role) VALUES (gen_random_uuid(), $1, $2, 'owner')",
    )
    .bind(globex)
    .bind(alice_id)
    .execute(&mut *tx)
    .await;
    // RLS refuses a membership outside the transaction's tenant.
    weft_testkit::db::assert_refused(
        sneak,
        "42501",
        "new row violates row-level security policy for table \"memberships\"",
    );
    tx.rollback().await.unwrap();
    let r = t
        .as_user(&alice, "GET", "/v1/tenants/globex/members", None)
        .await;
    assert!(r.is_problem(404, "not-found"), "{}", r.body);
}

/// A step of a role table: why, who, method, path, body, and what it must answer.
type Step<'a> = (
    &'a str,
    &'a Session,
    &'a str,
    String,
    Option<serde_json::Value>,
    Want,
);

/// What a step of a role table must answer.
enum Want {
    Status(StatusCode),
    Forbidden,
    Conflict,
    NotFound,
}

impl Want {
    fn holds(&self, r: &common::Reply) -> bool {
        match self {
            Want::Status(s) => r.status == *s,
            Want::Forbidden => r.is_problem(403, "forbidden"),
            Want::Conflict => r.is_problem(409, "conflict"),
            Want::NotFound => r.is_problem(404, "not-found"),
        }
    }
}
