//! Flow visibility end to end: agents stream `FlowBatch`es over real gRPC, the control
//! plane enriches and stores them in PostgreSQL, and tenants read them back through the
//! REST filters, the live SSE stream (across replicas) and the service map.

mod common;
#[path = "flows/live.rs"]
mod live;
#[path = "flows/storage.rs"]
mod storage;

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use common::{agent_on, authed, Rest, TestApp};
use serde_json::{json, Value};
use tonic::transport::Channel;
use uuid::Uuid;
use weft_model::flow::{FlowFilter, FlowRecord};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{EndpointReport, Flow, FlowBatch, RegisterRequest, ReportedEndpoint};
use weft_testkit::sse::EventStream as Events;

/// A registered node: its credential.
struct Node {
    credential: String,
}

async fn post(t: &TestApp, token: &str, path: &str, body: Value) -> Value {
    t.created(path, token, body).await
}

/// A cluster, a join token and a node registered with it over gRPC.
async fn node(
    t: &TestApp,
    client: &mut AgentClient<Channel>,
    owner: &str,
    tenant: &str,
    cluster: &str,
    name: &str,
) -> Node {
    let r = t
        .post(
            &format!("/v1/tenants/{tenant}/clusters"),
            owner,
            json!({"name": cluster}),
        )
        .await;
    assert!(r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT);
    let tok = post(
        t,
        owner,
        &format!("/v1/tenants/{tenant}/clusters/{cluster}/join-tokens"),
        json!({"name": format!("jt-{name}")}),
    )
    .await["token"]
        .as_str()
        .expect("token")
        .to_string();
    let resp = client
        .register(RegisterRequest {
            join_token: tok,
            node_name: name.into(),
            addresses: vec!["192.0.2.10".into()],
            capability_version: weft_proto::CAPABILITY_VERSION,
            agent_version: "test".into(),
            kernel_version: "6.18".into(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    Node {
        credential: resp.node_credential,
    }
}

async fn endpoints(client: &mut AgentClient<Channel>, n: &Node, eps: &[(&str, &str, &str)]) {
    let endpoints = eps
        .iter()
        .map(|(name, app, ip)| ReportedEndpoint {
            named_ports: Vec::new(),
            name: (*name).into(),
            labels: [("app".to_string(), (*app).to_string())].into(),
            ips: vec![(*ip).into()],
        })
        .collect();
    client
        .report_endpoints(authed(EndpointReport { endpoints }, &n.credential))
        .await
        .expect("report endpoints");
}

async fn send(client: &mut AgentClient<Channel>, n: &Node, batches: Vec<FlowBatch>) {
    client
        .report_flows(authed(tokio_stream::iter(batches), &n.credential))
        .await
        .expect("report flows");
}

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().expect("in range")
}

#[allow(clippy::too_many_arguments)]
fn flow(
    time: DateTime<Utc>,
    src: (&str, u32, u32),
    dst: (&str, u32, u32),
    proto: u32,
    verdict: &str,
    reason: &str,
    flags: u32,
) -> Flow {
    Flow {
        time_unix_nanos: nanos(time),
        src_ip: src.0.into(),
        src_port: src.1,
        src_identity: src.2,
        dst_ip: dst.0.into(),
        dst_port: dst.1,
        dst_identity: dst.2,
        proto,
        verdict: verdict.into(),
        drop_reason: reason.into(),
        direction: "egress".into(),
        tcp_flags: flags,
        bytes: 100,
        packets: 1,
        observation_point: "endpoint-egress".into(),
        count: 1,
        ..Default::default()
    }
}

const SYN: u32 = 0x02;
const ACK: u32 = 0x10;
const RST: u32 = 0x04;

/// Everything a test needs: tenant `acme` with nodes `node-1` (cluster prod) and `node-2`
/// (cluster staging), endpoints web-1 (10.0.1.5), db-1 (10.0.2.7) and cache-1 on node-2,
/// a service `api`, and seven flows one to seven at `t0 + 10 s × i`.
struct World {
    t: TestApp,
    owner: String,
    client: AgentClient<Channel>,
    n1: Node,
    t0: DateTime<Utc>,
    web: u32,
    db: u32,
    service_id: String,
}

async fn identity_of(t: &TestApp, name: &str) -> u32 {
    let n: i64 = sqlx::query_scalar("SELECT identity FROM endpoints WHERE name = $1")
        .bind(name)
        .fetch_one(&t.pool)
        .await
        .expect("endpoint identity");
    u32::try_from(n).unwrap()
}

async fn world() -> World {
    let t = TestApp::new().await;
    let owner = t.tenant("acme").await;
    let mut client = agent_on(t.state.clone()).await;
    let n1 = node(&t, &mut client, &owner, "acme", "prod", "node-1").await;
    let n2 = node(&t, &mut client, &owner, "acme", "staging", "node-2").await;
    endpoints(
        &mut client,
        &n1,
        &[("web-1", "web", "10.0.1.5"), ("db-1", "db", "10.0.2.7")],
    )
    .await;
    endpoints(&mut client, &n2, &[("cache-1", "cache", "10.0.3.9")]).await;
    let web = identity_of(&t, "web-1").await;
    let db = identity_of(&t, "db-1").await;
    let svc = post(
        &t,
        &owner,
        "/v1/tenants/acme/clusters/prod/services",
        json!({"name": "api", "algorithm": "random",
               "frontends": [{"vip": "10.96.0.10", "port": 80, "protocol": "TCP"}],
               "backends": [{"address": "10.0.2.7", "port": 8080}]}),
    )
    .await;
    let service_id = svc["id"].as_str().expect("service id").to_string();
    let t0 = Utc::now() - chrono::Duration::seconds(120);
    let at = |i: i64| t0 + chrono::Duration::seconds(10 * i);
    let mut f5 = flow(
        at(5),
        ("10.0.1.5", 40003, web),
        ("10.96.0.10", 80, 0),
        6,
        "TRANSLATED",
        "",
        SYN,
    );
    f5.service = service_id.clone();
    f5.observation_point = "socket-lb".into();
    // The agent names its own endpoints by id; the control plane finds the rest by address.
    let web_id: Uuid = sqlx::query_scalar("SELECT id FROM endpoints WHERE name = 'web-1'")
        .fetch_one(&t.pool)
        .await
        .unwrap();
    let mut f1 = flow(
        at(1),
        ("10.0.1.5", 40000, web),
        ("10.0.2.7", 5432, db),
        6,
        "FORWARDED",
        "",
        SYN,
    );
    f1.src_endpoint = web_id.to_string();
    send(
        &mut client,
        &n1,
        vec![
            FlowBatch {
                flows: vec![
                    f1,
                    flow(
                        at(2),
                        ("10.0.1.5", 40001, web),
                        ("10.0.2.7", 5432, db),
                        6,
                        "DROPPED",
                        "POLICY_DENIED",
                        SYN,
                    ),
                    flow(
                        at(3),
                        ("10.0.2.7", 5432, db),
                        ("10.0.1.5", 40000, web),
                        6,
                        "forwarded",
                        "",
                        SYN | ACK,
                    ),
                ],
                lost: 0,
            },
            FlowBatch {
                flows: vec![
                    flow(
                        at(4),
                        ("10.0.1.5", 40002, web),
                        ("1.1.1.1", 53, 2),
                        17,
                        "FORWARDED",
                        "",
                        0,
                    ),
                    f5,
                    // Node-agent's human spelling of a drop reason; identity 0 resolved from
                    // the endpoint at that address.
                    flow(
                        at(6),
                        ("192.0.2.99", 5555, 2),
                        ("10.0.2.7", 5432, 0),
                        6,
                        "DROPPED",
                        "CT full",
                        RST,
                    ),
                ],
                lost: 0,
            },
        ],
    )
    .await;
    send(
        &mut client,
        &n2,
        vec![FlowBatch {
            flows: vec![flow(
                at(7),
                ("10.0.3.9", 9999, 0),
                ("10.0.1.5", 8125, 0),
                17,
                "FORWARDED",
                "",
                0,
            )],
            lost: 0,
        }],
    )
    .await;
    World {
        t,
        owner,
        client,
        n1,
        t0,
        web,
        db,
        service_id,
    }
}

/// Query parameters, repeats allowed.
type Params<'a> = Vec<(&'a str, String)>;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn query_string(params: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(params).unwrap()
}

async fn list(t: &TestApp, token: &str, params: &[(&str, String)]) -> common::Reply {
    t.get(
        &format!("/v1/tenants/acme/flows?{}", query_string(params)),
        token,
    )
    .await
}

/// The flow numbers (1..=7, by source port) of a list answer, newest first.
fn numbers(items: &Value) -> Vec<u32> {
    items
        .as_array()
        .expect("items")
        .iter()
        .map(|f| match f["source"]["port"].as_u64().unwrap() {
            40000 => 1,
            40001 => 2,
            5432 => 3,
            40002 => 4,
            40003 => 5,
            5555 => 6,
            9999 => 7,
            p => panic!("unexpected flow with source port {p}"),
        })
        .collect()
}

#[tokio::test]
async fn every_filter_selects_exactly_its_flows_in_sql_and_in_memory() {
    let w = world().await;
    let all = list(&w.t, &w.owner, &[("limit", "1000".into())]).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(numbers(&all.body["items"]), vec![7, 6, 5, 4, 3, 2, 1]);
    let records: Vec<FlowRecord> = serde_json::from_value(all.body["items"].clone()).unwrap();

    let s = |v: &str| v.to_string();
    let (web, db) = (w.web.to_string(), w.db.to_string());
    let cases: Vec<(Params, Vec<u32>)> = vec![
        (vec![("verdict", s("DROPPED"))], vec![6, 2]),
        (vec![("not_verdict", s("FORWARDED"))], vec![6, 5, 2]),
        (
            vec![("verdict", s("DROPPED")), ("verdict", s("translated"))],
            vec![6, 5, 2],
        ),
        (vec![("from_label", s("app=web"))], vec![5, 4, 2, 1]),
        (vec![("to_label", s("app in (db,cache)"))], vec![6, 2, 1]),
        (vec![("not_from_label", s("app"))], vec![6]),
        (
            vec![("from_label", s("app=web")), ("to_port", s("5432"))],
            vec![2, 1],
        ),
        (
            vec![("from_label", s("app=db")), ("from_label", s("app=cache"))],
            vec![7, 3],
        ),
        (vec![("from_identity", web.clone())], vec![5, 4, 2, 1]),
        (vec![("to_identity", db.clone())], vec![6, 2, 1]),
        (vec![("to_identity", s("2"))], vec![4]),
        (vec![("from_endpoint", s("web-1"))], vec![5, 4, 2, 1]),
        (vec![("to_endpoint", s("web-1"))], vec![7, 3]),
        (vec![("not_to_endpoint", s("db-1"))], vec![7, 5, 4, 3]),
        (vec![("from_ip", s("10.0.1.5"))], vec![5, 4, 2, 1]),
        (vec![("to_ip", s("10.0.2.0/24"))], vec![6, 2, 1]),
        (vec![("not_to_ip", s("10.0.0.0/8"))], vec![4]),
        (vec![("port", s("40000"))], vec![3, 1]),
        (vec![("from_port", s("5432"))], vec![3]),
        (vec![("to_port", s("5432"))], vec![6, 2, 1]),
        (vec![("protocol", s("udp"))], vec![7, 4]),
        (vec![("not_protocol", s("tcp"))], vec![7, 4]),
        (
            vec![("protocol", s("udp")), ("protocol", s("icmp"))],
            vec![7, 4],
        ),
        (vec![("drop_reason", s("CT_FULL"))], vec![6]),
        (
            vec![("not_drop_reason", s("POLICY_DENIED"))],
            vec![7, 6, 5, 4, 3, 1],
        ),
        (vec![("node", s("node-2"))], vec![7]),
        (vec![("cluster", s("prod"))], vec![6, 5, 4, 3, 2, 1]),
        (vec![("service", s("api"))], vec![5]),
        (vec![("not_service", s("api"))], vec![7, 6, 4, 3, 2, 1]),
        (vec![("tcp_flags", s("SYN"))], vec![5, 3, 2, 1]),
        (vec![("tcp_flags", s("SYN,ACK"))], vec![3]),
        (
            vec![("tcp_flags", s("RST")), ("tcp_flags", s("ACK,SYN"))],
            vec![6, 3],
        ),
        (
            vec![("since", rfc3339(w.t0 + chrono::Duration::seconds(45)))],
            vec![7, 6, 5],
        ),
        (
            vec![("until", rfc3339(w.t0 + chrono::Duration::seconds(25)))],
            vec![2, 1],
        ),
        (
            vec![
                ("since", rfc3339(w.t0 + chrono::Duration::seconds(15))),
                ("until", rfc3339(w.t0 + chrono::Duration::seconds(45))),
                ("not_verdict", s("DROPPED")),
            ],
            vec![4, 3],
        ),
        (vec![("since", s("1h"))], vec![7, 6, 5, 4, 3, 2, 1]),
        (vec![("last", s("2"))], vec![7, 6]),
        (
            vec![("last", s("2")), ("verdict", s("FORWARDED"))],
            vec![7, 4],
        ),
    ];
    for (params, want) in cases {
        let r = list(&w.t, &w.owner, &params).await;
        assert_eq!(r.status, StatusCode::OK, "{params:?}: {}", r.body);
        assert_eq!(numbers(&r.body["items"]), want, "SQL: {params:?}");
        // The same filter in memory (the live stream's path) agrees with SQL.
        let filter =
            FlowFilter::parse(params.iter().map(|(k, v)| (*k, v.as_str())), Utc::now()).unwrap();
        let mut in_memory: Vec<Value> = records
            .iter()
            .filter(|f| filter.matches(f))
            .map(|f| serde_json::to_value(f).unwrap())
            .collect();
        if let Some(n) = filter.last {
            in_memory.truncate(n as usize);
        }
        assert_eq!(
            numbers(&Value::Array(in_memory)),
            want,
            "memory: {params:?}"
        );
    }
}

#[tokio::test]
async fn flows_are_enriched_and_shaped_as_documented() {
    let w = world().await;
    let r = list(&w.t, &w.owner, &[]).await;
    let items = r.body["items"].as_array().unwrap();
    let by_port = |p: u64| {
        items
            .iter()
            .find(|f| f["source"]["port"] == p)
            .unwrap()
            .clone()
    };
    let f2 = by_port(40001);
    assert_eq!(f2["verdict"], "DROPPED");
    assert_eq!(f2["drop_reason"], "POLICY_DENIED");
    assert_eq!(f2["source"]["endpoint"], "web-1");
    assert_eq!(f2["source"]["labels"], json!({"app": "web"}));
    assert_eq!(f2["destination"]["endpoint"], "db-1");
    assert_eq!(f2["destination"]["identity"], w.db);
    assert_eq!(f2["protocol"], "TCP");
    assert_eq!(f2["node"], "node-1");
    assert_eq!(f2["cluster"], "prod");
    assert_eq!(f2["tcp_flags"], json!(["SYN"]));
    assert_eq!(f2["service"], Value::Null);
    assert_eq!(f2["bytes"], 100);
    assert_eq!(f2["count"], 1);
    let f5 = by_port(40003);
    assert_eq!(f5["service"], "api");
    assert_eq!(f5["drop_reason"], Value::Null);
    assert_eq!(f5["destination"]["endpoint"], Value::Null);
    assert_eq!(f5["observation_point"], "socket-lb");
    let f6 = by_port(5555);
    assert_eq!(f6["drop_reason"], "CT_FULL");
    assert_eq!(f6["source"]["labels"], json!({"reserved:world": ""}));
    assert_eq!(
        f6["destination"]["identity"], w.db,
        "identity 0 resolved from the endpoint at that address"
    );
    let f7 = by_port(9999);
    assert_eq!(f7["node"], "node-2");
    assert_eq!(f7["cluster"], "staging");
    assert_eq!(f7["source"]["endpoint"], "cache-1");

    // Viewers may read.
    let viewer = w.t.token("acme", "viewer", &w.owner).await;
    let r = list(&w.t, &viewer, &[]).await;
    assert_eq!(numbers(&r.body["items"]).len(), 7);

    // Metrics count what was stored, labelled by tenant, not by flow fields.
    let m = w.t.call("GET", "/metrics", None, None).await;
    let text = m.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains(
            r#"weft_flows_processed_total{tenant="acme",verdict="FORWARDED",protocol="TCP"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"weft_drop_total{tenant="acme",reason="CT_FULL",protocol="TCP"} 1"#),
        "{text}"
    );
    assert!(!text.contains("10.0.1.5"));
}

#[tokio::test]
async fn pages_walk_all_flows_newest_first() {
    let w = world().await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = vec![("limit", "3".to_string())];
        if let Some(c) = &cursor {
            params.push(("cursor", c.clone()));
        }
        let r = list(&w.t, &w.owner, &params).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let nums = numbers(&r.body["items"]);
        assert!(nums.len() <= 3);
        seen.extend(nums);
        pages += 1;
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(pages, 3);
    // Filters hold across pages.
    let r = list(
        &w.t,
        &w.owner,
        &[("limit", "1".into()), ("verdict", "DROPPED".into())],
    )
    .await;
    assert_eq!(numbers(&r.body["items"]), vec![6]);
    let c = r.body["next_cursor"].as_str().unwrap().to_string();
    let r = list(
        &w.t,
        &w.owner,
        &[
            ("limit", "1".into()),
            ("verdict", "DROPPED".into()),
            ("cursor", c),
        ],
    )
    .await;
    assert_eq!(numbers(&r.body["items"]), vec![2]);
}

#[tokio::test]
async fn bad_filters_are_rejected_naming_the_parameter() {
    let w = world().await;
    let cases: &[(&str, &str)] = &[
        ("verdict", "MAYBE"),
        ("from_ip", "10.0.0.300"),
        ("to_port", "http"),
        ("protocol", "sctp"),
        ("drop_reason", "BAD_LUCK"),
        ("tcp_flags", "SYN,XMAS"),
        ("since", "last tuesday"),
        ("from_label", "app in (web"),
        ("last", "0"),
        ("limit", "0"),
        ("cursor", "not-a-cursor"),
        ("colour", "red"),
        ("not_limit", "3"),
    ];
    for (k, v) in cases {
        let r = list(&w.t, &w.owner, &[(k, v.to_string())]).await;
        assert!(r.is_problem(400, "validation"), "{k}={v}: {}", r.body);
        assert_eq!(r.fields(), vec![k.to_string()], "{k}={v}");
        let r =
            w.t.get(
                &format!(
                    "/v1/tenants/acme/flows/stream?{}",
                    query_string(&[(k, v.to_string())])
                ),
                &w.owner,
            )
            .await;
        if !matches!(*k, "limit" | "cursor") {
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "stream {k}={v}");
        }
    }
    let r =
        w.t.get("/v1/tenants/acme/service-map?since=soon", &w.owner)
            .await;
    assert_eq!(r.fields(), vec!["since".to_string()]);
    let r =
        w.t.get("/v1/tenants/acme/service-map?window=1h", &w.owner)
            .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_service_map_aggregates_traffic_between_workloads() {
    let w = world().await;
    let r =
        w.t.get("/v1/tenants/acme/service-map?since=1h", &w.owner)
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let web = format!("identity:{}", w.web);
    let db = format!("identity:{}", w.db);
    let svc = format!("service:{}", w.service_id);
    let edge = |s: &str, d: &str| {
        r.body["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == s && e["destination"] == d)
            .unwrap_or_else(|| panic!("no edge {s} -> {d}: {}", r.body))
            .clone()
    };
    let e = edge(&web, &db);
    assert_eq!(e["connections"], 2);
    assert_eq!(e["forwarded"], 1);
    assert_eq!(e["dropped"], 1);
    assert_eq!(e["bytes"], 200);
    assert_eq!(e["ports"], json!([5432]));
    assert_eq!(edge(&db, &web)["ports"], json!([40000]));
    assert_eq!(edge(&web, "world")["ports"], json!([53]));
    assert_eq!(edge(&web, &svc)["forwarded"], 1);
    assert_eq!(edge("world", &db)["dropped"], 1);
    assert_eq!(r.body["edges"].as_array().unwrap().len(), 6, "{}", r.body);
    let node = |id: &str| {
        r.body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(node(&web)["kind"], "workload");
    assert_eq!(node(&web)["labels"], json!({"app": "web"}));
    assert_eq!(node(&web)["name"], "web-1");
    assert_eq!(node(&web)["identity"], w.web);
    assert_eq!(node(&svc)["kind"], "service");
    assert_eq!(node(&svc)["name"], "api");
    assert_eq!(node("world")["kind"], "world");
    // A window after everything: empty.
    let r =
        w.t.get("/v1/tenants/acme/service-map?since=1s", &w.owner)
            .await;
    assert_eq!(r.body["edges"], json!([]));
}
