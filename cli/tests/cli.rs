//! The real `weft` binary against a real control-api: logging in (API token and OpenID
//! Connect through the dev provider's login form), contexts and environment overrides,
//! policy apply / diff / list / get / delete (native and CiliumNetworkPolicy), status and
//! its exit codes, clusters, services, tokens, and errors that say what to do.

mod common;
#[path = "cli/observe.rs"]
mod observe;
#[path = "cli/oidc.rs"]
mod oidc;
#[path = "cli/tls.rs"]
mod tls;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{file, idp, Api};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use weft_proto::v1::{AckRequest, HealthReport, RegisterRequest};
use weft_testkit::fixtures::Rest;
use weft_testkit::server::authed;

const NATIVE: &str = r#"
name: web-from-frontend
labels: {team: web}
description: frontends reach the web tier
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

const CNPS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-from-api
  namespace: shop
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
      toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: no-world-egress
spec:
  endpointSelector: {}
  egressDeny:
    - toEntities: [world]
"#;

fn names(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn login_with_a_token_contexts_and_environment_overrides() {
    let api = Api::start().await;
    let acme = api.tenant("acme", "owner").await;
    let globex = api.tenant("globex", "owner").await;
    api.cluster("globex", "g-edge", &globex).await;

    // Nothing configured yet: the error says what to do.
    let r = api.weft(&["cluster", "list"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("weft login"), "{}", r.stderr);

    let r = api
        .weft(&["login", "--api-url", &api.url, "--token", &acme])
        .await;
    r.ok();
    assert!(r.stdout.contains("tenant acme"), "{}", r.stdout);
    assert!(
        !r.stdout.contains(&acme) && !r.stderr.contains(&acme),
        "the token is never printed"
    );
    let cfg = api.config_dir().join("config.yaml");
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials are private");

    // Another tenant from stdin, under its own context name.
    let r = api
        .weft_env(
            &[
                "login",
                "--api-url",
                &api.url,
                "--token-stdin",
                "--name",
                "g",
            ],
            &[],
            Some(&format!("{globex}\n")),
        )
        .await;
    r.ok();
    let r = api.weft(&["context", "list", "-o", "json"]).await;
    let contexts = r.ok().json();
    assert!(!r.stdout.contains(&globex) && !r.stdout.contains(&acme));
    assert_eq!(names(&contexts), ["acme", "g"]);
    let current: Vec<_> = contexts
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["current"] == true)
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["name"], "g");
    assert_eq!(current[0]["tenant"], "globex");
    assert_eq!(current[0]["credential"], "api-token");
    let table = api.weft(&["context", "list"]).await;
    assert!(table.ok().stdout.starts_with("CURRENT"), "{}", table.stdout);

    let r = api.weft(&["cluster", "list", "-o", "json"]).await;
    assert_eq!(names(&r.ok().json()), ["g-edge"]);
    api.weft(&["context", "use", "acme"]).await.ok();
    let r = api.weft(&["cluster", "list", "-o", "json"]).await;
    assert_eq!(r.ok().json(), json!([]));
    // --context picks another one for one command.
    let r = api
        .weft(&["--context", "g", "cluster", "list", "-o", "json"])
        .await;
    assert_eq!(names(&r.ok().json()), ["g-edge"]);

    // WEFT_TENANT with acme's token: globex is invisible to it, as if missing.
    let r = api
        .weft_env(&["cluster", "list"], &[("WEFT_TENANT", "globex")], None)
        .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("HTTP 404"), "{}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
    // WEFT_TOKEN + WEFT_TENANT + WEFT_API_URL work without any context.
    let r = api
        .weft_env(
            &["cluster", "list", "-o", "json"],
            &[
                ("WEFT_TOKEN", &globex),
                ("WEFT_TENANT", "globex"),
                ("WEFT_API_URL", &api.url),
                ("XDG_CONFIG_HOME", "/nonexistent"),
            ],
            None,
        )
        .await;
    assert_eq!(names(&r.ok().json()), ["g-edge"]);
    // A context's credential is not sent to another API.
    let r = api
        .weft_env(
            &["cluster", "list"],
            &[("WEFT_API_URL", "http://127.0.0.1:9")],
            None,
        )
        .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not sent elsewhere"), "{}", r.stderr);
    // An unreachable API says so.
    let r = api
        .weft_env(
            &["cluster", "list"],
            &[
                ("WEFT_API_URL", "http://127.0.0.1:9"),
                ("WEFT_TOKEN", "weft_x"),
            ],
            None,
        )
        .await;
    assert!(
        r.stderr.contains("cannot reach the Weft API"),
        "{}",
        r.stderr
    );

    // A wrong token is refused at login, and nothing is saved.
    let before = std::fs::read_to_string(&cfg).unwrap();
    let r = api
        .weft(&[
            "login",
            "--api-url",
            &api.url,
            "--token",
            "weft_not_a_real_token",
        ])
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("401") && r.stderr.contains("weft login"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), before);

    // A revoked token: 401 with the way out.
    let r = api
        .weft(&["token", "create", "short-lived", "--role", "viewer"])
        .await;
    let viewer = r.ok().stdout.trim().to_string();
    assert!(
        viewer.starts_with("weft_"),
        "the secret alone on stdout: {}",
        r.stdout
    );
    api.weft(&["token", "revoke", "short-lived"]).await.ok();
    let r = api
        .weft_env(&["cluster", "list"], &[("WEFT_TOKEN", &viewer)], None)
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("HTTP 401") && r.stderr.contains("run `weft login`"),
        "{}",
        r.stderr
    );

    // Deleting contexts.
    api.weft(&["context", "delete", "g"]).await.ok();
    let r = api.weft(&["context", "use", "g"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("weft context list"), "{}", r.stderr);
}

#[tokio::test]
async fn policy_apply_diff_list_get_delete() {
    let api = Api::start().await;
    let editor = api.tenant("acme", "editor").await;
    let dir = weft_testkit::tmp::dir("cli");
    api.weft(&["login", "--api-url", &api.url, "--token", &editor])
        .await
        .ok();

    let native = file(dir.path(), "native.yaml", NATIVE);
    let r = api.weft(&["policy", "apply", "-f", &native]).await;
    assert_eq!(r.ok().stdout, "policy/web-from-frontend created\n");
    let rev = api.revision().await;
    let r = api.weft(&["policy", "apply", "-f", &native]).await;
    assert_eq!(r.ok().stdout, "policy/web-from-frontend unchanged\n");
    assert_eq!(
        api.revision().await,
        rev,
        "an unchanged policy is not rewritten"
    );

    // Many documents: the native one changed, two CNPs new; from stdin.
    let changed = NATIVE.replace("port: \"80\"", "port: \"8080\"");
    let all = format!("{changed}---\n{CNPS}");
    let r = api
        .weft_env(&["policy", "apply", "-f", "-"], &[], Some(&all))
        .await;
    assert_eq!(
        r.ok().stdout,
        "policy/web-from-frontend configured\npolicy/db-from-api created\npolicy/no-world-egress created\n"
    );
    let (_, p) = api
        .call(
            "GET",
            "/v1/tenants/acme/policies/web-from-frontend",
            &editor,
            None,
        )
        .await;
    assert_eq!(
        p["specs"][0]["ingress"][0]["toPorts"][0]["ports"][0]["port"],
        "8080"
    );
    assert_eq!(p["description"], "frontends reach the web tier");
    let (_, p) = api
        .call(
            "GET",
            "/v1/tenants/acme/policies/db-from-api",
            &editor,
            None,
        )
        .await;
    assert!(
        p["specs"][0]["endpointSelector"]
            .to_string()
            .contains("shop"),
        "namespaced CNP is scoped: {p}"
    );
    // Re-applying the same stream changes nothing.
    let r = api
        .weft_env(
            &["policy", "apply", "-f", "-", "-o", "json"],
            &[],
            Some(&all),
        )
        .await;
    let results: Vec<String> = r
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["result"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(results, ["unchanged", "unchanged", "unchanged"]);

    // diff: nothing to show for the applied file (exit 0); the change and a new object otherwise (exit 3).
    let applied = file(dir.path(), "all.yaml", &all);
    let r = api.weft(&["policy", "diff", "-f", &applied]).await;
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{}", r.stderr);
    let next = format!(
        "{}---\nname: brand-new\nspec: {{endpointSelector: {{matchLabels: {{app: x}}}}, ingress: [{{}}]}}\n",
        all.replace("5432", "5433")
    );
    let next = file(dir.path(), "next.yaml", &next);
    let r = api.weft(&["policy", "diff", "-f", &next]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stdout.contains("--- live/policy/db-from-api"),
        "{}",
        r.stdout
    );
    let lines: Vec<&str> = r.stdout.lines().collect();
    let removed = lines
        .iter()
        .any(|l| l.starts_with("- ") && l.contains("5432"));
    let added = lines
        .iter()
        .any(|l| l.starts_with("+ ") && l.contains("5433"));
    assert!(removed && added, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("--- /dev/null\n+++ file/policy/brand-new"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("web-from-frontend"),
        "unchanged objects show no diff: {}",
        r.stdout
    );

    // Dry run: says what would happen, writes nothing.
    let rev = api.revision().await;
    let r = api
        .weft(&["policy", "apply", "-f", &next, "--dry-run"])
        .await;
    assert!(
        r.ok().stdout.contains("policy/brand-new created (dry run)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("policy/db-from-api configured (dry run)"),
        "{}",
        r.stdout
    );
    assert_eq!(api.revision().await, rev);

    // A bad document applies nothing and names the field.
    let bad = format!("{NATIVE}---\nname: broken\nspec:\n  endpointSelector: {{}}\n  ingress: [{{fromCIDR: [not-a-cidr]}}]\n");
    let r = api
        .weft_env(&["policy", "apply", "-f", "-"], &[], Some(&bad))
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("documents[1].spec.ingress[0].fromCIDR[0]"),
        "{}",
        r.stderr
    );
    assert_eq!(api.revision().await, rev);

    // list / get.
    let r = api.weft(&["policy", "list", "-o", "json"]).await;
    assert_eq!(
        names(&r.ok().json()),
        ["db-from-api", "no-world-egress", "web-from-frontend"]
    );
    let r = api.weft(&["policy", "list", "-l", "team=web"]).await;
    let out = r.ok().stdout.clone();
    assert!(
        out.starts_with("NAME")
            && out.contains("web-from-frontend")
            && !out.contains("db-from-api"),
        "{out}"
    );
    assert!(out.contains("0/0"), "realization column: {out}");
    let r = api
        .weft(&["policy", "get", "db-from-api", "-o", "yaml"])
        .await;
    assert!(r.ok().stdout.contains("name: db-from-api"), "{}", r.stdout);
    let r = api.weft(&["policy", "get", "nope"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("HTTP 404"), "{}", r.stderr);

    // A viewer may read but not apply: the problem and the way out.
    let viewer = api.token("acme", "viewer").await;
    let r = api
        .weft_env(
            &["policy", "apply", "-f", &next],
            &[("WEFT_TOKEN", &viewer)],
            None,
        )
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("HTTP 403") && r.stderr.contains("role"),
        "{}",
        r.stderr
    );

    // delete by file and by name.
    let cnps = file(dir.path(), "cnps.yaml", CNPS);
    let r = api.weft(&["policy", "delete", "-f", &cnps]).await;
    assert_eq!(
        r.ok().stdout,
        "policy/db-from-api deleted\npolicy/no-world-egress deleted\n"
    );
    api.weft(&["policy", "delete", "web-from-frontend"])
        .await
        .ok();
    let r = api.weft(&["policy", "list", "-o", "json"]).await;
    assert_eq!(r.ok().json(), json!([]));
}

fn register(token: &str, name: &str) -> RegisterRequest {
    RegisterRequest {
        join_token: token.into(),
        node_name: name.into(),
        addresses: vec!["192.0.2.10".into()],
        capability_version: weft_proto::CAPABILITY_VERSION,
        agent_version: "0.1.0-test".into(),
        kernel_version: "6.18".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn status_exit_codes_follow_nodes_and_realization() {
    let api = Api::start().await;
    api.owner_logged_in("acme").await;
    api.weft(&["cluster", "create", "edge", "--label", "env=prod"])
        .await
        .ok();

    // No node: not ready.
    let r = api.weft(&["status"]).await;
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("no node is connected"), "{}", r.stdout);

    // A node registers with a join token made by the CLI, reports health and acks.
    let r = api
        .weft(&["cluster", "join-token", "create", "edge", "--name", "n1"])
        .await;
    let join = r.ok().stdout.trim().to_string();
    assert!(r.stderr.contains("shown only now"), "{}", r.stderr);
    let mut agent = api.agent().await;
    let node = agent
        .register(register(&join, "node-1"))
        .await
        .expect("register")
        .into_inner();
    let health = HealthReport {
        agent_version: "0.2.0".into(),
        kernel_version: "6.18".into(),
        datapath_status: "ok".into(),
        ..Default::default()
    };
    agent
        .report_health(authed(health.clone(), &node.node_credential))
        .await
        .unwrap();
    let ack = |rev: i64| {
        authed(
            AckRequest {
                revision: rev as u64,
                errors: vec![],
            },
            &node.node_credential,
        )
    };
    agent.ack(ack(api.revision().await)).await.unwrap();
    let r = api.weft(&["status"]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("1/1 connected") && r.stdout.contains("Status:    ready"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("0.2.0"), "agent version: {}", r.stdout);

    // A new policy the node has not applied: not ready, and -o json says why.
    let policy = "name: p1\nspec: {endpointSelector: {matchLabels: {app: web}}, ingress: [{}]}\n";
    api.weft_env(&["policy", "apply", "-f", "-"], &[], Some(policy))
        .await
        .ok();
    let r = api.weft(&["status", "-o", "json"]).await;
    assert_eq!(r.code, 3);
    let s = r.json();
    assert_eq!(s["ready"], false);
    let problems = s["problems"].to_string();
    assert!(
        problems.contains("node edge/node-1 is at revision"),
        "{problems}"
    );
    assert!(
        problems.contains("policy p1 is realized on 0 of 1 nodes"),
        "{problems}"
    );

    // --wait gives up at its timeout...
    let r = api.weft(&["status", "--wait", "--timeout", "2s"]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("not ready after 2s"), "{}", r.stderr);
    // ...and returns as soon as the node catches up.
    let waiting = api.weft(&["status", "--wait", "--timeout", "60s"]);
    let catch_up = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        agent.ack(ack(api.revision().await)).await.unwrap();
    };
    let (r, ()) = tokio::join!(waiting, catch_up);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("waiting"),
        "progress is shown: {}",
        r.stderr
    );
    assert!(r.stdout.contains("Policies:  1/1 realized"), "{}", r.stdout);

    // An unhealthy datapath is not ready.
    let bad = HealthReport {
        datapath_status: "error".into(),
        last_error: "map full".into(),
        ..health
    };
    agent
        .report_health(authed(bad, &node.node_credential))
        .await
        .unwrap();
    let r = api.weft(&["status"]).await;
    assert_eq!(r.code, 3);
    assert!(
        r.stdout.contains("datapath is error map full"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn clusters_services_and_tokens() {
    let api = Api::start().await;
    api.owner_logged_in("acme").await;
    let dir = weft_testkit::tmp::dir("cli");

    api.weft(&[
        "cluster",
        "create",
        "edge",
        "-l",
        "env=prod",
        "--description",
        "edge PoPs",
    ])
    .await
    .ok();
    let r = api.weft(&["cluster", "get", "edge", "-o", "json"]).await;
    assert_eq!(r.ok().json()["labels"], json!({"env": "prod"}));
    let r = api.weft(&["cluster", "list"]).await;
    assert!(r.ok().stdout.contains("env=prod"), "{}", r.stdout);
    // The API's validation problem comes through with its field.
    let r = api.weft(&["cluster", "create", "Not_A_Name"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("\n  name:"), "{}", r.stderr);
    let r = api.weft(&["cluster", "create", "edge"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("HTTP 409"), "{}", r.stderr);

    let svc = "name: api\nalgorithm: maglev\nfrontends: [{vip: 10.96.1.1, port: 443, protocol: TCP}]\nbackends: [{address: 10.0.3.4, port: 8443}, {address: 10.0.3.5, port: 8443}]\n";
    let f = file(dir.path(), "svc.yaml", svc);
    let r = api
        .weft(&["service", "apply", "-f", &f, "--cluster", "edge"])
        .await;
    assert_eq!(r.ok().stdout, "service/api created\n");
    let r = api
        .weft(&["service", "apply", "-f", &f, "--cluster", "edge"])
        .await;
    assert_eq!(r.ok().stdout, "service/api unchanged\n");
    let f2 = file(
        dir.path(),
        "svc2.yaml",
        &svc.replace("10.0.3.5", "10.0.3.6"),
    );
    let r = api
        .weft(&["service", "apply", "-f", &f2, "--cluster", "edge"])
        .await;
    assert_eq!(r.ok().stdout, "service/api configured\n");
    let r = api
        .weft(&["service", "get", "api", "--cluster", "edge", "-o", "json"])
        .await;
    assert_eq!(r.ok().json()["backends"][1]["address"], "10.0.3.6");
    let r = api.weft(&["service", "list", "--cluster", "edge"]).await;
    assert!(r.ok().stdout.contains("10.96.1.1:443/TCP"), "{}", r.stdout);
    api.weft(&["service", "delete", "api", "--cluster", "edge"])
        .await
        .ok();
    let r = api
        .weft(&["service", "list", "--cluster", "edge", "-o", "json"])
        .await;
    assert_eq!(r.ok().json(), json!([]));

    // Tokens: the secret once, then it works until revoked.
    let r = api
        .weft(&["token", "create", "ci", "--role", "editor", "-o", "json"])
        .await;
    let created = r.ok().json();
    let secret = created["token"].as_str().unwrap().to_string();
    let r = api.weft(&["token", "list", "-o", "json"]).await;
    let listed = r.ok().stdout.clone();
    assert!(
        listed.contains("\"ci\"") && !listed.contains(&secret),
        "{listed}"
    );
    let r = api
        .weft_env(
            &["cluster", "list", "-o", "json"],
            &[("WEFT_TOKEN", &secret)],
            None,
        )
        .await;
    assert_eq!(names(&r.ok().json()), ["edge"]);
    api.weft(&["token", "revoke", "ci"]).await.ok();
    let r = api
        .weft_env(&["cluster", "list"], &[("WEFT_TOKEN", &secret)], None)
        .await;
    assert_eq!(r.code, 1);

    api.weft(&["cluster", "delete", "edge"]).await.ok();
    let r = api.weft(&["cluster", "list", "-o", "json"]).await;
    assert_eq!(r.ok().json(), json!([]));
}

/// Fields Weft accepts but does not enforce: `policy apply` prints the API's warnings (and
/// the local ones on a dry run); `--strict` refuses them and applies nothing.
#[tokio::test]
async fn policy_apply_warns_on_not_enforced_fields_and_strict_refuses() {
    let api = Api::start().await;
    let editor = api.tenant("acme", "editor").await;
    let dir = weft_testkit::tmp::dir("cli");
    api.weft(&["login", "--api-url", &api.url, "--token", &editor])
        .await
        .ok();
    let fqdn = "name: to-github\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEntities: [kube-apiserver]\n    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]\n";
    let path = file(dir.path(), "fqdn.yaml", fqdn);
    let rev = api.revision().await;
    let r = api
        .weft(&["policy", "apply", "-f", &path, "--strict"])
        .await;
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("policy/to-github: spec.egress[0].toEntities[0]: not enforced"),
        "{}",
        r.stderr
    );
    assert_eq!(api.revision().await, rev, "strict applies nothing");

    let r = api
        .weft(&["policy", "apply", "-f", &path, "--dry-run"])
        .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Warning: policy/to-github: spec.egress[0].toEntities[0]: not enforced"),
        "{}",
        r.stderr
    );
    let r = api.weft(&["policy", "apply", "-f", &path]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "policy/to-github created\n");
    assert_eq!(
        r.stderr
            .matches("Warning: policy/to-github: spec.egress[0].toEntities[0]: not enforced")
            .count(),
        1,
        "{}",
        r.stderr
    );
}
