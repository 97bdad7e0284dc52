//! Faults the control plane must survive. PostgreSQL going away: the API's pool reaches the
//! database through a TCP relay the test cuts (every open connection reset, new ones
//! refused, as when PostgreSQL stops or its host drops off the network) and restores, while
//! REST writers and an agent (a `Sync` stream, flow reports) are at work.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_proto::v1 as pb;
use weft_proto::v1::agent_client::AgentClient;
use weft_testkit::server::authed;

/// A relay to the database that can be cut and restored.
struct Relay {
    port: u16,
    /// `false`: cut (open connections are reset, new ones closed at once).
    up: watch::Sender<bool>,
}

impl Relay {
    async fn start(to: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (up, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*rx.borrow() {
                    drop(client);
                    continue;
                }
                let (to, mut rx) = (to.clone(), rx.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&to).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                    // Dropped: both sides see the connection end.
                });
            }
        });
        Relay { port, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// `url` with its host and port replaced by the relay's.
fn through(url: &str, port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (auth, rest) = rest.rsplit_once('@').expect("credentials in the URL");
    let (hostport, path) = rest.split_once('/').expect("database");
    (
        format!("{scheme}://{auth}@127.0.0.1:{port}/{path}"),
        hostport.to_string(),
    )
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value, Duration) {
    let started = Instant::now();
    let mut rq = http
        .request(method, url)
        .bearer_auth(common::OPERATOR)
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        rq = rq
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    match rq.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, v, started.elapsed())
        }
        Err(e) => (0, json!({"transport": e.to_string()}), started.elapsed()),
    }
}

#[tokio::test]
async fn the_database_going_away_is_503_and_every_acknowledged_write_survives() {
    let db_url = weft_testkit::db::fresh("faults").await;
    let (_, pg) = through(&db_url, 0);
    let relay = Relay::start(pg).await;
    let (relayed, _) = through(&db_url, relay.port);
    let state = weft_testkit::server::state(
        &relayed,
        common::OPERATOR,
        None,
        control_api::ratelimit::FailureLimiter::default(),
    )
    .await;
    let agent_url = weft_testkit::server::agent_url(state.clone()).await;
    let base = weft_testkit::server::serve_rest(state).await;
    let http = reqwest::Client::new();
    use reqwest::Method;
    let get = |path: &str| send(&http, Method::GET, format!("{base}{path}"), None);
    let (s, b, _) = send(
        &http,
        Method::POST,
        format!("{base}/v1/tenants"),
        Some(json!({"name": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let mut agent = Agent::join(&http, &base, &agent_url).await;

    // Writers create policies all along; each remembers what it was answered.
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<Mutex<Vec<(String, u16, Value)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..3 {
        let (http, base, stop, answered) =
            (http.clone(), base.clone(), stop.clone(), answered.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w{w}-{i}");
                let body = json!({"name": name, "spec": {
                    "endpointSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"app": format!("c{i}")}}]}]}});
                let (s, v, _) = send(
                    &http,
                    Method::POST,
                    format!("{base}/v1/tenants/acme/policies"),
                    Some(body),
                )
                .await;
                answered.lock().expect("lock").push((name, s, v));
                i += 1;
                if s != 201 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The database goes away for 10 s.
    relay.set(false);
    let cut = Instant::now();
    // Flows reported meanwhile are refused, not taken and lost: the agent keeps counting
    // them (as lost, with its next batch).
    let refused = agent.report_flows(5, 0).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.code() == tonic::Code::Unavailable),
        "{refused:?}"
    );
    let (s, v, took) = get("/readyz").await;
    assert_eq!(s, 503, "/readyz fails while the database is away: {v}");
    assert!(
        took < Duration::from_secs(8),
        "answered, not hung: {took:?}"
    );
    let (s, v, took) = get("/v1/tenants/acme/policies").await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["type"]
            .as_str()
            .is_some_and(|t| t.ends_with(":unavailable")),
        "a problem saying so: {v}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    let r = http
        .get(format!("{base}/v1/tenants/acme/clusters"))
        .bearer_auth(common::OPERATOR)
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("5"),
        "a 503 says when to come back"
    );
    let (s, _, _) = get("/healthz").await;
    assert_eq!(s, 200, "the process itself is alive");
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;

    // Back: ready again, and writes succeed again.
    relay.set(true);
    let back = Instant::now();
    loop {
        let (s, _, _) = get("/readyz").await;
        if s == 200 {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(30), "not ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = answered.lock().expect("lock").len();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok_after = answered.lock().expect("lock")[before..]
            .iter()
            .filter(|(_, s, _)| *s == 201)
            .count();
        if ok_after >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "writes do not succeed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    // The agent's stream came through the outage (or the agent reconnected): a policy made
    // now reaches it, and the flows it lost are counted.
    let (s, v, _) = send(
        &http,
        Method::POST,
        format!("{base}/v1/tenants/acme/policies"),
        Some(json!({"name": "after", "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    agent.until_enforcing().await;
    agent
        .report_flows(3, 5)
        .await
        .expect("flows after the outage");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v, _) = get("/v1/tenants/acme/clusters/prod/nodes/node-1").await;
        assert_eq!(s, 200, "{v}");
        if v["status"]["health"]["flows_lost"] == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "flows lost counted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every answer was a 201 or a 503 problem, never a 500 or a hang; some of each.
    let answered = answered.lock().expect("lock").clone();
    let by_status = |s: u16| answered.iter().filter(|(_, st, _)| *st == s).count();
    let odd: Vec<_> = answered
        .iter()
        .filter(|(_, s, _)| *s != 201 && *s != 503)
        .collect();
    assert!(odd.is_empty(), "answers other than 201 and 503: {odd:?}");
    assert!(by_status(201) > 3 && by_status(503) > 0, "{answered:?}");
    // Every acknowledged write is there.
    let (s, v, _) = get("/v1/tenants/acme/policies?limit=1000").await;
    assert_eq!(s, 200, "{v}");
    let stored: std::collections::BTreeSet<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for (name, s, _) in &answered {
        if *s == 201 {
            assert!(
                stored.contains(name.as_str()),
                "{name} was acknowledged but is gone"
            );
        }
    }
}

/// An agent of node `node-1` in cluster `prod` of `acme`, with endpoint web-1 (app=web),
/// following its `Sync` stream (reconnecting from its revision when the stream ends).
struct Agent {
    client: AgentClient<tonic::transport::Channel>,
    credential: String,
    /// Whether web-1 enforces ingress in the latest state received.
    enforcing: watch::Receiver<bool>,
}

impl Agent {
    async fn join(http: &reqwest::Client, base: &str, agent_url: &str) -> Agent {
        use reqwest::Method;
        let (s, v, _) = send(
            http,
            Method::POST,
            format!("{base}/v1/tenants/acme/clusters"),
            Some(json!({"name": "prod"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (s, v, _) = send(
            http,
            Method::POST,
            format!("{base}/v1/tenants/acme/clusters/prod/join-tokens"),
            Some(json!({"name": "n"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let mut client = AgentClient::connect(agent_url.to_string())
            .await
            .expect("connect");
        let credential = client
            .register(pb::RegisterRequest {
                join_token: v["token"].as_str().expect("token").into(),
                node_name: "node-1".into(),
                addresses: vec!["192.0.2.10".into()],
                capability_version: weft_proto::CAPABILITY_VERSION,
                ..Default::default()
            })
            .await
            .expect("register")
            .into_inner()
            .node_credential;
        let report = pb::EndpointReport {
            endpoints: vec![pb::ReportedEndpoint {
                name: "web-1".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                ips: vec!["10.0.1.5".into()],
                named_ports: Vec::new(),
            }],
        };
        client
            .report_endpoints(authed(report, &credential))
            .await
            .expect("endpoints");
        let (tx, enforcing) = watch::channel(false);
        let (mut c, cred) = (client.clone(), credential.clone());
        tokio::spawn(async move {
            let mut revision = 0;
            loop {
                let req = pb::SyncRequest {
                    resume_from_revision: revision,
                    capability_version: weft_proto::CAPABILITY_VERSION,
                };
                if let Ok(stream) = c.sync(authed(req, &cred)).await {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(m)) = stream.message().await {
                        revision = m.revision;
                        let eps = match &m.kind {
                            Some(pb::sync_response::Kind::Snapshot(s)) => s.endpoints.clone(),
                            Some(pb::sync_response::Kind::Delta(d)) => d.upsert_endpoints.clone(),
                            None => Vec::new(),
                        };
                        if let Some(e) = eps
                            .iter()
                            .find(|e| e.ips.iter().any(|ip| ip.starts_with("10.0.1.5")))
                        {
                            let _ = tx.send(e.enforce_ingress);
                        }
                        let ack = pb::AckRequest {
                            revision,
                            errors: Vec::new(),
                        };
                        let _ = c.ack(authed(ack, &cred)).await;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Agent {
            client,
            credential,
            enforcing,
        }
    }

    async fn report_flows(&mut self, n: usize, lost: u64) -> Result<(), tonic::Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        let flows = (0..n)
            .map(|i| pb::Flow {
                time_unix_nanos: now,
                src_ip: "10.0.1.9".into(),
                src_port: 40_000 + i as u32,
                dst_ip: "10.0.1.5".into(),
                dst_port: 8080,
                proto: 6,
                verdict: "FORWARDED".into(),
                direction: "ingress".into(),
                observation_point: "endpoint-ingress".into(),
                count: 1,
                ..Default::default()
            })
            .collect();
        let batch = pb::FlowBatch { flows, lost };
        self.client
            .report_flows(authed(tokio_stream::iter([batch]), &self.credential))
            .await
            .map(|_| ())
    }

    async fn until_enforcing(&mut self) {
        tokio::time::timeout(Duration::from_secs(30), self.enforcing.wait_for(|e| *e))
            .await
            .expect("the change made after the outage reaches the agent")
            .expect("agent task");
    }
}
