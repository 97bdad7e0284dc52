//! Policies: the CiliumNetworkPolicy-compatible spec, validation by field, scoping and
//! CNP YAML import.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use common::{Rest, TestApp};
use serde_json::json;

fn web_policy() -> serde_json::Value {
    json!({
        "name": "web-from-frontend",
        "labels": {"team": "web"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]
            }],
            "egressDeny": [{"toCIDRSet": [{"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}]}]
        }
    })
}

#[tokio::test]
async fn policy_crud_keeps_the_cilium_spec() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    let rev = t.revision().await;
    let r = t
        .created("/v1/tenants/acme/policies", &tok, web_policy())
        .await;
    assert_eq!(r["revision"], rev + 1);
    assert_eq!(r["specs"].as_array().unwrap().len(), 1);
    assert_eq!(
        r["specs"][0]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
        "8080"
    );
    assert_eq!(
        r["specs"][0]["egressDeny"][0]["toCIDRSet"][0]["except"][0],
        "10.0.0.0/8"
    );
    assert!(
        r.get("clusters").is_none(),
        "unscoped policies apply everywhere"
    );

    // Patch the rule's ports through `spec`, as read back.
    let r = t
        .patch("/v1/tenants/acme/policies/web-from-frontend", &tok, json!({"spec": {"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                                             "toPorts": [{"ports": [{"port": "9090", "protocol": "TCP"}]}]}]}}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["specs"][0]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
        "9090"
    );
    assert_eq!(
        r.body["specs"][0]["endpointSelector"]["matchLabels"]["app"], "web",
        "merge keeps the rest"
    );

    let r = t
        .get("/v1/tenants/acme/policies?labels=team%3Dweb", &tok)
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    let r = t
        .delete("/v1/tenants/acme/policies/web-from-frontend", &tok)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(t.count("policies").await, 0);
}

#[tokio::test]
async fn invalid_policies_name_the_field_and_write_nothing() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    let rev = t.revision().await;
    let cases = [
        (
            json!({"name": "p", "spec": {"endpointSelector": {}, "ingress": [{"fromCIDR": ["10.0.0.0/33"]}]}}),
            "spec.ingress[0].fromCIDR[0]",
        ),
        (
            json!({"name": "p", "specs": [
                {"endpointSelector": {}},
                {"endpointSelector": {}, "egress": [{"toPorts": [{"ports": [{"port": "80", "endPort": 70}]}]}]}
            ]}),
            "specs[1].egress[0].toPorts[0].ports[0].endPort",
        ),
        (
            json!({"name": "p", "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["moon"]}]}}),
            "spec.ingress[0].fromEntities[0]",
        ),
        (json!({"name": "p"}), "spec"),
        (
            json!({"name": "p", "spec": {"endpointSelector": {}}, "clusters": ["nope"]}),
            "clusters[0]",
        ),
    ];
    for (body, field) in cases {
        let r = t
            .post("/v1/tenants/acme/policies", &tok, body.clone())
            .await;
        assert!(r.is_problem(400, "validation"), "{body}: {}", r.body);
        assert!(
            r.fields().iter().any(|f| f == field),
            "{body}: want {field}, got {:?}",
            r.fields()
        );
    }
    // An unknown field inside the spec is rejected with its path, not ignored.
    let r = t
        .post(
            "/v1/tenants/acme/policies",
            &tok,
            json!({"name": "p", "spec": {"endpointSelector": {}, "ingres": []}}),
        )
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ingres"),
        "{}",
        r.body
    );
    assert_eq!(t.count("policies").await, 0);
    assert_eq!(t.revision().await, rev);
}

#[tokio::test]
async fn policies_can_be_scoped_to_clusters() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    for c in ["prod", "staging"] {
        t.cluster("acme", c, &tok).await;
    }
    let mut p = web_policy();
    p["clusters"] = json!(["staging", "prod"]);
    let r = t.created("/v1/tenants/acme/policies", &tok, p).await;
    assert_eq!(r["clusters"], json!(["prod", "staging"]));
}

const CNP_YAML: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-frontend
  labels:
    team: web
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: "/api/.*"
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: no-metadata-service
specs:
- endpointSelector: {}
  egressDeny:
  - toCIDR:
    - 169.254.169.254/32
- endpointSelector:
    matchLabels:
      app: db
  ingressDeny:
  - fromEntities:
    - world
"#;

fn yaml(tok: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri("/v1/tenants/acme/policies/import")
        .header(header::AUTHORIZATION, format!("Bearer {tok}"))
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn cnp_yaml_imports_all_or_nothing() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    let r = t.send(yaml(&tok, CNP_YAML)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["created"],
        json!(["allow-frontend", "no-metadata-service"])
    );
    assert_eq!(r.body["policies"][1]["specs"].as_array().unwrap().len(), 2);
    let p = t
        .get("/v1/tenants/acme/policies/allow-frontend", &tok)
        .await;
    assert_eq!(
        p.body["specs"][0]["ingress"][0]["toPorts"][0]["rules"]["http"][0]["path"],
        "/api/.*"
    );

    // Importing again updates in place.
    let r = t.send(yaml(&tok, CNP_YAML)).await;
    assert_eq!(
        r.body["updated"],
        json!(["allow-frontend", "no-metadata-service"]),
        "{}",
        r.body
    );
    assert_eq!(t.count("policies").await, 2);

    // One bad document: nothing from the import is written, the bad one is named.
    let bad = CNP_YAML
        .replace("169.254.169.254/32", "169.254.169.254/40")
        .replace("allow-frontend", "fresh");
    let rev = t.revision().await;
    let r = t.send(yaml(&tok, &bad)).await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert!(
        r.fields()
            .iter()
            .any(|f| f.starts_with("documents[1].") && f.contains("toCIDR[0]")),
        "{:?}",
        r.fields()
    );
    assert_eq!(t.count("policies").await, 2);
    assert_eq!(t.revision().await, rev);
    let r = t.get("/v1/tenants/acme/policies/fresh", &tok).await;
    assert!(r.is_problem(404, "not-found"));

    // Not YAML at all, or not a Cilium policy.
    let r = t.send(yaml(&tok, "kind: [unclosed")).await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    let r = t
        .send(yaml(
            &tok,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        ))
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
}

fn warnings(r: &common::Reply) -> Vec<String> {
    r.headers
        .get_all(header::WARNING)
        .iter()
        .map(|v| v.to_str().expect("ASCII warning").to_string())
        .collect()
}

/// `toFQDNs` in a policy without a DNS rule is enforced (it allows nothing until names are
/// learned) but warned about, not refused even under `strict`, and has no condition.
#[tokio::test]
async fn to_fqdns_without_dns_rules_warns() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    let body = |dns: bool| {
        let mut egress = vec![json!({"toFQDNs": [{"matchName": "api.example.com"}],
                                     "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})];
        if dns {
            egress.push(json!({"toEntities": ["world"],
                               "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}],
                                            "rules": {"dns": [{"matchPattern": "*"}]}}]}));
        }
        json!({"name": format!("fqdn-{dns}"),
               "spec": {"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": egress}})
    };
    let r = t
        .post("/v1/tenants/acme/policies?strict=true", &tok, body(false))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("299 - \"spec.egress[0].toFQDNs: names are learned only from DNS"),
        "{w:?}"
    );
    assert_eq!(r.body["status"]["conditions"], json!([]));
    let r = t.post("/v1/tenants/acme/policies", &tok, body(true)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(warnings(&r).is_empty(), "{:?}", warnings(&r));
}

/// Fields Weft accepts but does not enforce: one `Warning: 299` per field path on the write,
/// `NotEnforced` conditions on the policy, and `?strict=true` refuses them by name.
#[tokio::test]
async fn not_enforced_fields_warn_and_strict_refuses_them() {
    let t = TestApp::new().await;
    let tok = t.tenant("acme").await;
    let body = json!({
        "name": "egress-l7",
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEntities": ["health", "world"]}],
            "egress": [
                {"toEntities": ["kube-apiserver"],
                 "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
                {"toEntities": ["world", "unmanaged"],
                 "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}],
                              "rules": {"dns": [{"matchPattern": "*.example.com"}]}}]}
            ]
        }
    });
    let fields = [
        "spec.ingress[0].fromEntities[0]",
        "spec.egress[0].toEntities[0]",
        "spec.egress[1].toEntities[1]",
    ];

    // Strict: refused, each field named, nothing written.
    let rev = t.revision().await;
    let r = t
        .post("/v1/tenants/acme/policies?strict=true", &tok, body.clone())
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), fields, "{}", r.body);
    assert_eq!(t.revision().await, rev);

    // Default: accepted, with one warning per field and the conditions in the status.
    let r = t
        .post("/v1/tenants/acme/policies", &tok, body.clone())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let w = warnings(&r);
    assert_eq!(w.len(), fields.len(), "{w:?}");
    for (w, f) in w.iter().zip(fields) {
        assert!(
            w.starts_with(&format!("299 - \"{f}: not enforced: ")),
            "{w}"
        );
        assert!(w.ends_with('"'), "{w}");
    }
    let conditions = r.body["status"]["conditions"].as_array().unwrap().clone();
    assert_eq!(conditions.len(), fields.len(), "{}", r.body);
    for (c, f) in conditions.iter().zip(fields) {
        assert_eq!(c["type"], "NotEnforced");
        assert_eq!(c["field"], f);
        assert!(!c["reason"].as_str().unwrap().is_empty());
    }
    // Read back: the same conditions; an enforced policy has none.
    let r = t.get("/v1/tenants/acme/policies/egress-l7", &tok).await;
    assert_eq!(r.body["status"]["conditions"].as_array().unwrap().len(), 3);
    let r = t
        .post("/v1/tenants/acme/policies", &tok, web_policy())
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(warnings(&r).is_empty());
    assert_eq!(r.body["status"]["conditions"], json!([]));

    // Updates warn too; strict refuses an update that keeps them.
    let r = t
        .patch(
            "/v1/tenants/acme/policies/egress-l7?strict=true",
            &tok,
            json!({"description": "x"}),
        )
        .await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    let r = t
        .put("/v1/tenants/acme/policies/egress-l7", &tok, body)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(warnings(&r).len(), 3);

    // CNP import: per document path.
    let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: dns}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [kube-apiserver]\n    toPorts:\n    - ports: [{port: '443', protocol: TCP}]\n";
    let mut req = yaml(&tok, cnp);
    *req.uri_mut() = "/v1/tenants/acme/policies/import?strict=true"
        .parse()
        .unwrap();
    let r = t.send(req).await;
    assert!(r.is_problem(400, "validation"), "{}", r.body);
    assert_eq!(r.fields(), ["documents[0].spec.egress[0].toEntities[0]"]);
    let r = t.send(yaml(&tok, cnp)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(warnings(&r).len(), 1, "{:?}", warnings(&r));
    assert!(warnings(&r)[0].contains("documents[0].spec.egress[0].toEntities[0]"));
}
