//! `weft observe` on reported flows, and the connectivity test's checks and cleanup.

use super::*;

fn flow(verdict: &str, drop_reason: &str, dst_port: u32, tcp_flags: u32) -> weft_proto::v1::Flow {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    weft_proto::v1::Flow {
        time_unix_nanos: now,
        src_ip: "10.0.1.5".into(),
        dst_ip: "10.0.2.7".into(),
        src_port: 43122,
        dst_port,
        proto: 6,
        src_identity: 2,
        verdict: verdict.into(),
        drop_reason: drop_reason.into(),
        direction: "ingress".into(),
        tcp_flags,
        bytes: 60,
        packets: 1,
        observation_point: "endpoint-ingress".into(),
        count: 1,
        ..Default::default()
    }
}

/// Runs `weft observe …` until it prints what `done` wants (ingestion may lag a little).
async fn observe_until(api: &Api, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..40 {
        let r = api.weft(args).await;
        last = r.ok().stdout.clone();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "`weft {}` never printed what was expected; last:\n{last}",
        args.join(" ")
    );
}

#[tokio::test]
async fn observe_shows_reported_flows() {
    let api = Api::start().await;
    api.owner_logged_in("acme").await;
    api.weft(&["cluster", "create", "edge"]).await.ok();
    let r = api.weft(&["cluster", "join-token", "create", "edge"]).await;
    let join = r.ok().stdout.trim().to_string();
    let mut agent = api.agent().await;
    let node = agent
        .register(register(&join, "node-1"))
        .await
        .expect("register")
        .into_inner();
    let report = |flows: Vec<weft_proto::v1::Flow>| {
        let batch = weft_proto::v1::FlowBatch { flows, lost: 0 };
        authed(tokio_stream::iter(vec![batch]), &node.node_credential)
    };
    agent
        .report_flows(report(vec![
            flow("DROPPED", "POLICY_DENIED", 80, 0x02),
            flow("DROPPED", "POLICY_DENIED", 81, 0x02),
            flow("FORWARDED", "", 443, 0x12),
        ]))
        .await
        .expect("flows accepted");

    let out = observe_until(
        &api,
        &[
            "observe",
            "--verdict",
            "DROPPED",
            "--last",
            "20",
            "-o",
            "json",
        ],
        |o| {
            serde_json::from_str::<Value>(o)
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 2))
        },
    )
    .await;
    let flows: Value = serde_json::from_str(&out).unwrap();
    for f in flows.as_array().unwrap() {
        assert_eq!(f["verdict"], "DROPPED", "{f}");
        assert_eq!(f["destination"]["ip"], "10.0.2.7", "{f}");
    }
    let r = api
        .weft(&["observe", "--verdict", "DROPPED", "--to-port", "81"])
        .await;
    let line = r.ok().stdout.trim().to_string();
    assert!(
        line.contains("10.0.1.5:43122 (world) -> 10.0.2.7:81"),
        "{line}"
    );
    assert!(
        line.ends_with("policy-denied DROPPED (TCP Flags: SYN)"),
        "{line}"
    );
    let r = api
        .weft(&["observe", "--not-verdict", "DROPPED", "-o", "jsonl"])
        .await;
    let lines: Vec<&str> = r.ok().stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        serde_json::from_str::<Value>(lines[0]).unwrap()["destination"]["port"],
        443
    );

    // --follow prints flows as they arrive.
    let mut follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["observe", "--follow", "--to-port", "8443", "-o", "jsonl"])
        .env_clear()
        .env("XDG_CONFIG_HOME", api.home.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            agent
                .report_flows(report(vec![flow("FORWARDED", "", 8443, 0x02)]))
                .await
                .unwrap();
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(500), out.next_line()).await
            {
                return line;
            }
        }
    })
    .await
    .expect("a followed flow arrives");
    assert_eq!(
        serde_json::from_str::<Value>(&got).unwrap()["destination"]["port"],
        8443
    );
    follow.kill().await.ok();
}

#[tokio::test]
async fn connectivity_test_says_what_it_needs_before_creating_anything() {
    let api = Api::start().await;
    api.owner_logged_in("acme").await;
    let r = api.weft(&["connectivity", "test"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has no cluster"), "{}", r.stderr);
    for c in ["edge", "core"] {
        api.weft(&["cluster", "create", c]).await.ok();
    }
    // Two clusters, neither with a connected node: nothing to pick.
    let r = api.weft(&["connectivity", "test"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("2 clusters (core, edge), 0 of them with connected nodes"),
        "{}",
        r.stderr
    );
    let r = api
        .weft(&["connectivity", "test", "--cluster", "edge"])
        .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cluster edge has no connected node")
            && r.stderr.contains("join-token create edge"),
        "{}",
        r.stderr
    );
    // Nothing was created on the way.
    let r = api.weft(&["policy", "list", "-o", "json"]).await;
    assert_eq!(r.ok().json(), json!([]));
}

#[tokio::test]
async fn connectivity_cleanup_removes_what_a_killed_run_left_and_nothing_else() {
    let api = Api::start().await;
    let owner = api.owner_logged_in("acme").await;
    api.weft(&["cluster", "create", "edge"]).await.ok();
    let join = api
        .weft(&["cluster", "join-token", "create", "edge", "--name", "n1"])
        .await;
    let join = join.ok().stdout.trim().to_string();
    let mut agent = api.agent().await;
    agent
        .register(register(&join, "node-1"))
        .await
        .expect("register");
    // What a run killed with SIGKILL leaves: a workload, a probe, a policy, a service.
    let base = "/v1/tenants/acme/clusters/edge";
    let run = json!({"weft-ct-run": "dead01"});
    let made = [
        (
            format!("{base}/test-workloads"),
            json!({"name": "ct-dead01-world", "node": "node-1", "kind": "world",
                   "labels": run, "echo_ports": [8080]}),
        ),
        (
            format!("{base}/probes"),
            json!({"from": null, "node": "node-1", "target": "198.51.100.254:8080", "labels": run}),
        ),
        (
            "/v1/tenants/acme/policies".to_string(),
            json!({"name": "ct-dead01-default-deny", "labels": run, "clusters": ["edge"],
                   "spec": {"endpointSelector": {"matchLabels": run}, "enableDefaultDeny": {"ingress": true}}}),
        ),
        (
            format!("{base}/services"),
            json!({"name": "ct-dead01-echo", "labels": run,
                   "frontends": [{"vip": "10.96.255.254", "port": 80, "protocol": "TCP"}]}),
        ),
    ];
    for (path, body) in made {
        let (s, b) = api.call("POST", &path, &owner, Some(body)).await;
        assert_eq!(s, 201, "{path}: {b}");
    }
    // The tenant's own policy stays.
    api.weft(&[
        "policy",
        "apply",
        "-f",
        &file(weft_testkit::tmp::dir("cli").path(), "p.yaml", NATIVE),
    ])
    .await
    .ok();

    let r = api
        .weft(&["connectivity", "cleanup", "--cluster", "edge"])
        .await;
    assert!(
        r.ok().stderr.contains("removed 4 object(s)"),
        "{}",
        r.stderr
    );
    for path in [
        format!("{base}/test-workloads"),
        format!("{base}/probes"),
        format!("{base}/services"),
    ] {
        let (s, b) = api.call("GET", &path, &owner, None).await;
        assert_eq!((s, &b["items"]), (200, &json!([])), "{path}");
    }
    let r = api.weft(&["policy", "list", "-o", "json"]).await;
    assert_eq!(names(&r.ok().json()), ["web-from-frontend"]);
}

#[tokio::test]
async fn node_list_shows_registered_nodes_and_delete_removes_one() {
    let api = Api::start().await;
    api.owner_logged_in("acme").await;
    api.weft(&["cluster", "create", "edge"]).await.ok();
    let join = api
        .weft(&[
            "cluster",
            "join-token",
            "create",
            "edge",
            "--name",
            "n",
            "--max-uses",
            "0",
        ])
        .await;
    let join = join.ok().stdout.trim().to_string();
    let mut agent = api.agent().await;
    for name in ["node-1", "node-2"] {
        agent
            .register(register(&join, name))
            .await
            .expect("register");
    }
    let r = api.weft(&["node", "list", "--cluster", "edge"]).await;
    let out = &r.ok().stdout;
    assert!(
        out.contains("node-1") && out.contains("192.0.2.10"),
        "{out}"
    );
    let r = api
        .weft(&["node", "get", "node-2", "--cluster", "edge", "-o", "json"])
        .await;
    assert_eq!(r.ok().json()["status"]["connected"], json!(false));

    let r = api
        .weft(&["node", "delete", "node-1", "--cluster", "edge"])
        .await;
    assert!(r.ok().stdout.contains("node/node-1 deleted"));
    let r = api
        .weft(&["node", "list", "--cluster", "edge", "-o", "json"])
        .await;
    assert_eq!(names(&r.ok().json()), ["node-2"]);
    // A node that is not there is named in the error.
    let r = api
        .weft(&["node", "delete", "node-1", "--cluster", "edge"])
        .await;
    assert!(r.code != 0 && r.stderr.contains("node-1"), "{}", r.stderr);
}

#[tokio::test]
async fn cluster_routing_is_set_at_create_changed_by_update_and_refused_when_unknown() {
    let api = Api::start().await;
    api.owner_logged_in("acme").await;
    let r = api
        .weft(&[
            "cluster",
            "create",
            "edge",
            "--routing",
            "native",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(r.ok().json()["routing"], json!({"mode": "native"}));
    api.weft(&["cluster", "create", "core"]).await.ok();
    let r = api.weft(&["cluster", "list"]).await;
    let table = r.ok().stdout.clone();
    assert!(table.contains("ROUTING"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("core") && l.contains("tunnel")),
        "the default: {table}"
    );
    let r = api
        .weft(&[
            "cluster",
            "update",
            "edge",
            "--routing",
            "tunnel",
            "-o",
            "json",
        ])
        .await;
    let c = r.ok().json();
    assert_eq!(c["routing"], json!({"mode": "tunnel"}));
    let r = api
        .weft(&["cluster", "update", "edge", "--routing", "geneve"])
        .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("tunnel, native"), "{}", r.stderr);
    let r = api.weft(&["cluster", "update", "edge"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nothing to change"), "{}", r.stderr);
}
