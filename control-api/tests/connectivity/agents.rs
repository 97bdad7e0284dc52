//! What agents are sent over real gRPC (their own workloads and probes, by capability) and the
//! results and readiness they report.

use super::*;

#[tokio::test]
async fn agents_get_their_own_workloads_and_probes_and_report_results() {
    let mut s = setup().await;
    let n1 = s.node("node-1", &["10.0.1.0/24"], &[]).await;
    let n2 = s.node("node-2", &["10.0.2.0/24"], &[]).await;
    let pod_ip = s.workload("echo-a", "node-1", "pod").await;
    let world_ip = s.workload("out-1", "node-2", "world").await;
    let p1 = s
        .probe(json!({"from": "echo-a", "target": format!("{world_ip}:8080"), "timeout_ms": 500}))
        .await;
    let p2 = s
        .probe(json!({"from": null, "node": "node-2", "target": format!("{pod_ip}:8080")}))
        .await;

    let mut st1 = s.sync(&n1, weft_proto::CAPABILITY_VERSION).await;
    let msg = next_change(&mut st1).await;
    let Some(Kind::Snapshot(snap)) = msg.kind else {
        panic!("a snapshot first")
    };
    assert_eq!(snap.workloads.len(), 1, "{:?}", snap.workloads);
    let w = &snap.workloads[0];
    assert_eq!(
        (w.name.as_str(), w.ip.as_str(), &w.echo_ports),
        ("echo-a", pod_ip.as_str(), &vec![8080])
    );
    assert_eq!(w.kind, weft_proto::v1::WorkloadKind::Pod as i32);
    assert_eq!(w.labels.get("test").map(String::as_str), Some("conn"));
    assert_eq!(snap.probes.len(), 1, "{:?}", snap.probes);
    let p = &snap.probes[0];
    assert_eq!(
        (
            p.id.as_str(),
            p.from_workload.as_str(),
            p.target_ip.as_str(),
            p.target_port,
            p.timeout_ms
        ),
        (p1.as_str(), "echo-a", world_ip.as_str(), 8080, 500)
    );

    let mut st2 = s.sync(&n2, weft_proto::CAPABILITY_VERSION).await;
    let Some(Kind::Snapshot(snap2)) = next_change(&mut st2).await.kind else {
        panic!("a snapshot first")
    };
    assert_eq!(
        snap2
            .workloads
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["out-1"]
    );
    assert_eq!(
        snap2.workloads[0].kind,
        weft_proto::v1::WorkloadKind::World as i32
    );
    assert_eq!(snap2.probes.len(), 1);
    assert_eq!(snap2.probes[0].id, p2);
    assert_eq!(snap2.probes[0].from_workload, "", "from the node itself");

    // A new probe reaches its node as a delta.
    let p3 = s
        .probe(json!({"from": "echo-a", "target": format!("{pod_ip}:8080"),
                      "http": {"method": "GET", "path": "/public"},
                      "resolve": {"name": "echo.allowed.test", "server": "198.51.100.53"}}))
        .await;
    let Some(Kind::Delta(d)) = next_change(&mut st1).await.kind else {
        panic!("a delta")
    };
    assert_eq!(
        d.upsert_probes
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        [p3.as_str()]
    );
    let l7 = &d.upsert_probes[0];
    assert_eq!(
        (
            l7.http_method.as_str(),
            l7.http_path.as_str(),
            l7.resolve_name.as_str(),
            l7.resolver.as_str()
        ),
        ("GET", "/public", "echo.allowed.test", "198.51.100.53")
    );
    assert!(d.upsert_workloads.is_empty() && d.remove_probes.is_empty());

    // node-2 cannot report node-1's probe; unknown and malformed ids are ignored too.
    let result = |id: &str| ProbeResult {
        id: id.into(),
        outcome: ProbeOutcome::Connected as i32,
        detail: String::new(),
        latency_us: 420,
        reply_from: "out-1".into(),
        http_status: 0,
        dns_rcode: String::new(),
    };
    s.client
        .report_probes(authed(
            ProbeReport {
                results: vec![
                    result(&p1),
                    result(&uuid::Uuid::now_v7().to_string()),
                    result("nonsense"),
                ],
            },
            &n2.node_credential,
        ))
        .await
        .expect("ignored, not refused");
    let r = s.get(&format!("{PROBES}/{p1}")).await;
    assert_eq!(r.body["status"], "pending", "{}", r.body);

    // node-1 reports it: stored, and the probe leaves node-1's desired state.
    s.client
        .report_probes(authed(
            ProbeReport {
                results: vec![result(&p1)],
            },
            &n1.node_credential,
        ))
        .await
        .expect("report");
    let r = s.get(&format!("{PROBES}/{p1}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "done", "{}", r.body);
    let res = &r.body["result"];
    assert_eq!(
        keys(res),
        [
            "outcome",
            "detail",
            "latency_us",
            "reply_from",
            "http_status",
            "dns_rcode",
            "finished_at"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(res["outcome"], "connected");
    assert_eq!(res["latency_us"], 420);
    assert_eq!(res["reply_from"], "out-1");
    assert!(res["http_status"].is_null() && res["dns_rcode"].is_null());
    let msg = next_change(&mut st1).await;
    let Some(Kind::Delta(d)) = msg.kind else {
        panic!("a delta")
    };
    assert_eq!(d.remove_probes, [p1.as_str()]);
    assert!(d.upsert_probes.is_empty());

    // A second report of the same probe changes nothing.
    let rev = s.t.revision().await;
    s.client
        .report_probes(authed(
            ProbeReport {
                results: vec![ProbeResult {
                    outcome: ProbeOutcome::Timeout as i32,
                    ..result(&p1)
                }],
            },
            &n1.node_credential,
        ))
        .await
        .expect("report");
    assert_eq!(s.t.revision().await, rev);
    let r = s.get(&format!("{PROBES}/{p1}")).await;
    assert_eq!(r.body["result"]["outcome"], "connected");

    // Lists show both states; a refused one from node-2 is stored with its detail.
    s.client
        .report_probes(authed(
            ProbeReport {
                results: vec![ProbeResult {
                    id: p2.clone(),
                    outcome: ProbeOutcome::Refused as i32,
                    detail: "connection refused".into(),
                    latency_us: 0,
                    reply_from: String::new(),
                    http_status: 0,
                    dns_rcode: String::new(),
                }],
            },
            &n2.node_credential,
        ))
        .await
        .expect("report");
    let r = s.get(PROBES).await;
    let status: Vec<_> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["status"].as_str().unwrap().to_string(),
                p["result"]["outcome"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            (p1.clone(), "done".into(), "connected".into()),
            (p2.clone(), "done".into(), "refused".into()),
            (p3.clone(), "pending".into(), "-".into()),
        ]
    );
    let r = s.get(&format!("{PROBES}/{p2}")).await;
    assert_eq!(r.body["result"]["detail"], "connection refused");
    assert!(r.body["result"]["reply_from"].is_null());

    // An L7 probe's answer: the HTTP status and the DNS response code.
    s.client
        .report_probes(authed(
            ProbeReport {
                results: vec![ProbeResult {
                    http_status: 403,
                    dns_rcode: "NOERROR".into(),
                    ..result(&p3)
                }],
            },
            &n1.node_credential,
        ))
        .await
        .expect("report");
    let r = s.get(&format!("{PROBES}/{p3}")).await;
    assert_eq!(r.body["result"]["http_status"], 403, "{}", r.body);
    assert_eq!(r.body["result"]["dns_rcode"], "NOERROR");
    let Some(Kind::Delta(d)) = next_change(&mut st1).await.kind else {
        panic!("a delta")
    };
    assert_eq!(d.remove_probes, [p3.as_str()]);

    // Deleting a pending probe withdraws it; deleting the workload stops it.
    let p4 = s
        .probe(json!({"from": "echo-a", "target": format!("{pod_ip}:8080")}))
        .await;
    let Some(Kind::Delta(d)) = next_change(&mut st1).await.kind else {
        panic!("a delta")
    };
    assert_eq!(d.upsert_probes.len(), 1);
    let r = s.t.delete(&format!("{PROBES}/{p4}"), &s.owner).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let Some(Kind::Delta(d)) = next_change(&mut st1).await.kind else {
        panic!("a delta")
    };
    assert_eq!(d.remove_probes, [p4]);
    let r = s.t.delete(&format!("{WL}/echo-a"), &s.owner).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let Some(Kind::Delta(d)) = next_change(&mut st1).await.kind else {
        panic!("a delta")
    };
    assert_eq!(d.remove_workloads, ["echo-a"]);
    let r = s.t.delete(&format!("{PROBES}?selector="), &s.owner).await;
    assert_eq!(r.body, json!({"deleted": 3}));
}

#[tokio::test]
async fn ready_once_the_agent_applied_it_and_reported_the_endpoint() {
    let mut s = setup().await;
    let n1 = s.node("node-1", &["10.0.1.0/24"], &[]).await;
    let ip = s.workload("echo-a", "node-1", "pod").await;
    s.workload("out-1", "node-1", "world").await;
    let ready = |r: &Reply| r.body["ready"].as_bool().expect("ready");
    assert!(!ready(&s.get(&format!("{WL}/echo-a")).await));
    assert!(!ready(&s.get(&format!("{WL}/out-1")).await));

    let mut st = s.sync(&n1, weft_proto::CAPABILITY_VERSION).await;
    let rev = next_change(&mut st).await.revision;
    common::ack(&mut s.client, &n1.node_credential, rev).await;
    assert!(
        ready(&s.get(&format!("{WL}/out-1")).await),
        "a world workload is ready once applied"
    );
    assert!(
        !ready(&s.get(&format!("{WL}/echo-a")).await),
        "a pod also needs its endpoint"
    );
    s.report(&n1, &[("echo-a", ip.as_str())]).await;
    let r = s.get(&format!("{WL}/echo-a")).await;
    assert!(ready(&r), "{}", r.body);
    let r = s.get(WL).await;
    assert!(r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["ready"] == true));
}

#[tokio::test]
async fn older_agents_get_only_the_workloads_and_probes_they_speak() {
    let mut s = setup().await;
    let n1 = s.node("node-1", &["10.0.1.0/24"], &[]).await;
    s.workload("echo-a", "node-1", "pod").await;
    s.probe(json!({"from": "echo-a", "target": "10.0.1.5:80"}))
        .await;
    let mut st = s.sync(&n1, 1).await;
    let Some(Kind::Snapshot(snap)) = next_change(&mut st).await.kind else {
        panic!("a snapshot first")
    };
    assert!(
        snap.workloads.is_empty() && snap.probes.is_empty(),
        "{snap:?}"
    );
    // A new probe is no change for it; the next change it sees carries none either.
    s.probe(json!({"from": "echo-a", "target": "10.0.1.6:80"}))
        .await;
    let r = s
        .post(
            "/v1/tenants/acme/clusters/prod/services",
            json!({"name": "web", "frontends": [{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
                   "backends": [{"address": "10.0.1.5", "port": 8080}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let Some(Kind::Delta(d)) = next_change(&mut st).await.kind else {
        panic!("a delta")
    };
    assert_eq!(d.upsert_services.len(), 1);
    assert!(
        d.upsert_probes.is_empty() && d.upsert_workloads.is_empty(),
        "{d:?}"
    );
    // The same node speaking capability 2 gets them, but for a probe that sends HTTP: an
    // agent without the L7 proxy would run it as a plain connect.
    drop(st);
    s.probe(json!({"from": "echo-a", "target": "10.0.1.7:80",
                   "http": {"method": "GET", "path": "/health"}}))
        .await;
    let mut st = s.sync(&n1, weft_proto::CAPABILITY_PROBES).await;
    let Some(Kind::Snapshot(snap)) = next_change(&mut st).await.kind else {
        panic!("a snapshot first")
    };
    assert_eq!(snap.workloads.len(), 1);
    assert_eq!(snap.probes.len(), 2, "{snap:?}");
    assert!(
        snap.probes.iter().all(|p| p.http_method.is_empty()),
        "{snap:?}"
    );
    drop(st);
    let mut st = s.sync(&n1, weft_proto::CAPABILITY_L7).await;
    let Some(Kind::Snapshot(snap)) = next_change(&mut st).await.kind else {
        panic!("a snapshot first")
    };
    assert_eq!(snap.probes.len(), 3, "{snap:?}");
}
