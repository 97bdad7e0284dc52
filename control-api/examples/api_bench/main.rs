//! REST load benchmark, driven by `cargo xtask bench api [--quick]` (which starts a private
//! PostgreSQL, builds the release `control-api` and passes both). One control-api process
//! (the release binary) over that database holds 1,000 policies and 10,000 flows reported
//! by a node over the real agent service; then, at rising concurrency (8 → 256 clients,
//! each a loop of requests over keep-alive connections), a mix of reads and writes as a
//! console and CI pipelines make them:
//!
//! - 30% `GET …/policies?limit=50`, 25% `GET …/policies/{p}`, 20% `GET …/flows?last=100`
//!   (half of them filtered `verdict=DROPPED`), 10% `GET …/clusters/prod/nodes`,
//! - 15% `PUT …/policies/{p}` with `If-Match` (each client rewrites its own policies, so a
//!   412 is an error here, not contention).
//!
//! Each step also runs the same clients against `GET /healthz` (the HTTP floor: routing, no
//! auth, no database) in the same run. A step runs until `p99 > 250 ms` or an error
//! appears (the knee), then stops. Per step: requests/s, p50/p99, errors, control-api and
//! PostgreSQL CPU (from `/proc`). Writes `--out` (`target/bench/api.json`).

#[path = "../common/mod.rs"]
mod common;
#[allow(dead_code)] // the fleet half of it is propagation's
#[path = "../propagation_bench/procs.rs"]
mod procs;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{EndpointReport, Flow, FlowBatch, RegisterRequest, ReportedEndpoint};

use common::{authed, percentile, OPERATOR};
use procs::{cpu_ms, postgres_cpu_ms, Replica};

const POLICIES: usize = 1_000;
const FLOWS: usize = 10_000;
/// The knee: a step whose p99 passes this (or that has errors) is the last.
const P99_LIMIT_MS: f64 = 250.0;

/// What one client loop measured.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    /// The same by operation.
    by_op: std::collections::BTreeMap<&'static str, Vec<f64>>,
    errors: Vec<String>,
}

/// One step's figures.
struct Step {
    requests: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    first_error: Option<String>,
    api_cpu_pct: f64,
    pg_cpu_pct: f64,
    /// Per operation: requests, p50, p99.
    by_op: serde_json::Map<String, Value>,
}

impl Step {
    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "rps": self.rps.round(),
            "p50_ms": round2(self.p50_ms),
            "p99_ms": round2(self.p99_ms),
            "errors": self.errors,
            "first_error": self.first_error,
            "api_cpu_pct": self.api_cpu_pct.round(),
            "pg_cpu_pct": self.pg_cpu_pct.round(),
            "by_op": self.by_op,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Clone, Copy, PartialEq)]
enum Load {
    Mixed,
    Healthz,
}

struct Target {
    http: reqwest::Client,
    base: String,
}

impl Target {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        common::rest(&self.http, &self.base, method, path, body).await
    }
}

/// Policy `i`: endpoints `app=app-<i % 10>` admit `app=app-<(i + 3) % 10>` on one port.
fn policy(i: usize, port: u16) -> Value {
    json!({
        "name": format!("p-{i}"),
        "spec": {
            "endpointSelector": {"matchLabels": {"app": format!("app-{}", i % 10)}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": format!("app-{}", (i + 3) % 10)}}],
                "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]
            }]
        }
    })
}

/// The tenant `bench`: cluster `prod`, [`POLICIES`] policies, one node that reported 50
/// endpoints and [`FLOWS`] flows over the agent service.
async fn seed(t: &Target, agent_url: &str, ca: &std::path::Path, db_url: &str) -> Result<()> {
    t.call("POST", "/v1/tenants", Some(json!({"name": "bench"})))
        .await?;
    t.call(
        "POST",
        "/v1/tenants/bench/clusters",
        Some(json!({"name": "prod"})),
    )
    .await?;
    // Eight writers at a time.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..8 {
        let (t, next) = (
            Target {
                http: t.http.clone(),
                base: t.base.clone(),
            },
            next.clone(),
        );
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= POLICIES {
                    return Ok::<_, anyhow::Error>(());
                }
                t.call(
                    "POST",
                    "/v1/tenants/bench/policies",
                    Some(policy(i, 10_000 + i as u16)),
                )
                .await?;
            }
        }));
    }
    for w in writers {
        w.await??;
    }
    let jt = t
        .call(
            "POST",
            "/v1/tenants/bench/clusters/prod/join-tokens",
            Some(json!({"name": "bench", "max_uses": 0})),
        )
        .await?["token"]
        .as_str()
        .context("join token")?
        .to_string();
    let pem = std::fs::read(ca)?;
    let endpoint = tonic::transport::Endpoint::from_shared(agent_url.to_string())?.tls_config(
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
    )?;
    let mut c = AgentClient::new(endpoint.connect().await?);
    let r = c
        .register(RegisterRequest {
            join_token: jt,
            node_name: "node-0".into(),
            capability_version: weft_proto::CAPABILITY_VERSION,
            ..Default::default()
        })
        .await?
        .into_inner();
    let ip = |i: usize| format!("10.250.0.{}", i % 50 + 1);
    let endpoints = (0..50)
        .map(|i| ReportedEndpoint {
            name: format!("ep-{i}"),
            labels: [("app".to_string(), format!("app-{}", i % 10))].into(),
            ips: vec![ip(i)],
            named_ports: Vec::new(),
        })
        .collect();
    c.report_endpoints(authed(EndpointReport { endpoints }, &r.node_credential))
        .await?;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let batches: Vec<FlowBatch> = (0..FLOWS / 1000)
        .map(|b| FlowBatch {
            flows: (b * 1000..(b + 1) * 1000)
                .map(|i| Flow {
                    time_unix_nanos: now - 60_000_000_000 + 6_000_000 * i as i64,
                    src_ip: ip(i),
                    dst_ip: ip(i / 7 + 3),
                    src_port: 30_000 + (i % 30_000) as u32,
                    dst_port: [80, 443, 8080][i % 3],
                    proto: 6,
                    verdict: if i % 20 == 0 { "DROPPED" } else { "FORWARDED" }.into(),
                    drop_reason: if i % 20 == 0 { "POLICY_DENIED" } else { "" }.into(),
                    direction: "ingress".into(),
                    observation_point: "endpoint-ingress".into(),
                    packets: 1,
                    bytes: 60,
                    count: 1,
                    ..Default::default()
                })
                .collect(),
            lost: 0,
        })
        .collect();
    c.report_flows(authed(tokio_stream::iter(batches), &r.node_credential))
        .await?;
    // The writer batches: wait until every flow is stored (the database's owner counts).
    let owner = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db_url)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT coalesce(sum(flows), 0) FROM flow_blocks")
            .fetch_one(&owner)
            .await?;
        if n >= FLOWS as i64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{n} of {FLOWS} flows stored after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One client: requests until `stop`, as `load` says.
async fn client(t: Arc<Target>, id: usize, load: Load, stop: Instant) -> Tally {
    use reqwest::Method;
    let mut tally = Tally::default();
    let mut rng_state = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move |n: u64| {
        // xorshift: cheap, and the same sequence every run.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    // Each client rewrites its own policy (no two clients share one: a 412 is an error).
    let own = id % POLICIES;
    let mut etag: Option<String> = None;
    let mut port = 20_000u16;
    while Instant::now() < stop {
        let started = Instant::now();
        let result: Result<&'static str> = async {
            if load == Load::Healthz {
                let r = t.http.get(format!("{}/healthz", t.base)).send().await?;
                if !r.status().is_success() {
                    bail!("GET /healthz: {}", r.status());
                }
                r.bytes().await?;
                return Ok("healthz");
            }
            let (op, method, path) = match next(100) {
                0..30 => (
                    "list_policies",
                    Method::GET,
                    "/v1/tenants/bench/policies?limit=50".to_string(),
                ),
                30..55 => (
                    "get_policy",
                    Method::GET,
                    format!("/v1/tenants/bench/policies/p-{}", next(POLICIES as u64)),
                ),
                55..65 => (
                    "flows",
                    Method::GET,
                    "/v1/tenants/bench/flows?last=100".to_string(),
                ),
                65..75 => (
                    "flows_dropped",
                    Method::GET,
                    "/v1/tenants/bench/flows?last=100&verdict=DROPPED".to_string(),
                ),
                75..85 => (
                    "list_nodes",
                    Method::GET,
                    "/v1/tenants/bench/clusters/prod/nodes".to_string(),
                ),
                _ => (
                    "put_policy",
                    Method::PUT,
                    format!("/v1/tenants/bench/policies/p-{own}"),
                ),
            };
            let mut rq = t
                .http
                .request(method.clone(), format!("{}{path}", t.base))
                .bearer_auth(OPERATOR);
            if method == Method::PUT {
                let Some(tag) = etag.clone() else {
                    // The first write of this client learns the ETag (not measured).
                    let r = t
                        .http
                        .get(format!("{}{path}", t.base))
                        .bearer_auth(OPERATOR)
                        .send()
                        .await?;
                    etag = r
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    r.bytes().await?;
                    return Err(anyhow::anyhow!("__etag__"));
                };
                port = port.wrapping_add(1).max(20_000);
                rq = rq
                    .header("if-match", tag)
                    .header("content-type", "application/json")
                    .body(policy(own, port).to_string());
            }
            let r = rq.send().await?;
            let status = r.status();
            if method == Method::PUT {
                etag = r
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
            }
            let body = r.bytes().await?;
            if !status.is_success() {
                bail!(
                    "{method} {path}: {status} {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
            }
            Ok(op)
        }
        .await;
        match result {
            Ok(op) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                tally.latencies_ms.push(ms);
                tally.by_op.entry(op).or_default().push(ms);
            }
            Err(e) if e.to_string() == "__etag__" => {}
            Err(e) => tally.errors.push(format!("{e:#}")),
        }
    }
    tally
}

/// `clients` clients for `secs`; the step's figures.
async fn step(t: &Arc<Target>, pid: u32, clients: usize, load: Load, secs: f64) -> Step {
    let (api0, pg0, started) = (cpu_ms(pid), postgres_cpu_ms(), Instant::now());
    let stop = started + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(t.clone(), id, load, stop)))
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        if let Ok(mut tally) = task.await {
            all.latencies_ms.append(&mut tally.latencies_ms);
            for (op, mut ms) in tally.by_op {
                all.by_op.entry(op).or_default().append(&mut ms);
            }
            all.errors.append(&mut tally.errors);
        }
    }
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let requests = all.latencies_ms.len();
    Step {
        requests,
        rps: requests as f64 / (wall_ms / 1000.0),
        p50_ms: percentile(&mut all.latencies_ms, 0.5),
        p99_ms: percentile(&mut all.latencies_ms, 0.99),
        errors: all.errors.len(),
        first_error: all.errors.first().cloned(),
        by_op: all
            .by_op
            .iter_mut()
            .map(|(op, ms)| {
                let v = json!({
                    "requests": ms.len(),
                    "p50_ms": round2(percentile(ms, 0.5)),
                    "p99_ms": round2(percentile(ms, 0.99)),
                });
                (op.to_string(), v)
            })
            .collect(),
        api_cpu_pct: 100.0 * (cpu_ms(pid) - api0) / wall_ms,
        pg_cpu_pct: 100.0 * (postgres_cpu_ms() - pg0) / wall_ms,
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = common::args()?;
    let (levels, secs): (&[usize], f64) = if a.quick {
        (&[8, 32], 2.0)
    } else {
        (&[8, 16, 32, 64, 128, 256], 8.0)
    };
    let name = format!("api_{}", uuid::Uuid::new_v4().simple());
    let db_url = control_api::db::create_database(&a.database_url, &name).await?;
    let dir = std::env::temp_dir().join(format!("weft-api-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tls = weft_testkit::server::self_signed(&dir, [127, 0, 0, 1].into());
    // Enough idle connections for the largest step: no reconnect inside a step.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let bin = a.control_api.context("--control-api is required")?;
    let replica = Replica::start(&bin, &db_url, &tls, &http).await?;
    let result = run(&db_url, &replica, &http, &tls.0, levels, secs).await;
    let _ = std::fs::remove_dir_all(&dir);
    let out = result?;
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, serde_json::to_vec_pretty(&out)?)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

async fn run(
    db_url: &str,
    replica: &Replica,
    http: &reqwest::Client,
    ca: &std::path::Path,
    levels: &[usize],
    secs: f64,
) -> Result<Value> {
    let t = Arc::new(Target {
        http: http.clone(),
        base: replica.rest.clone(),
    });
    let seeding = Instant::now();
    seed(&t, &replica.agent, ca, db_url).await?;
    println!(
        "seeded {POLICIES} policies and {FLOWS} flows in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    println!(
        "{:>7} | {:>8} {:>8} {:>8} {:>6} {:>5} {:>5} | {:>8} {:>8} {:>8} | {:>5}",
        "clients",
        "mixed/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "api%",
        "pg%",
        "healthz",
        "p50 ms",
        "p99 ms",
        "ratio"
    );
    let mut steps = Vec::new();
    let mut knee = None;
    for &clients in levels {
        let floor = step(&t, replica.pid(), clients, Load::Healthz, secs / 2.0).await;
        let mixed = step(&t, replica.pid(), clients, Load::Mixed, secs).await;
        let ratio = mixed.rps / floor.rps.max(1e-9);
        println!(
            "{clients:>7} | {:>8.0} {:>8.2} {:>8.2} {:>6} {:>5.0} {:>5.0} | {:>8.0} {:>8.2} {:>8.2} | {:>5.3}",
            mixed.rps,
            mixed.p50_ms,
            mixed.p99_ms,
            mixed.errors,
            mixed.api_cpu_pct,
            mixed.pg_cpu_pct,
            floor.rps,
            floor.p50_ms,
            floor.p99_ms,
            ratio
        );
        let ops: Vec<String> = mixed
            .by_op
            .iter()
            .map(|(op, v)| format!("{op} {}/{}", v["p50_ms"], v["p99_ms"]))
            .collect();
        println!("        p50/p99 ms: {}", ops.join(", "));
        if let Some(e) = &mixed.first_error {
            println!("        first error: {e}");
        }
        let over = mixed.p99_ms > P99_LIMIT_MS || mixed.errors > 0;
        steps.push(json!({
            "clients": clients,
            "mixed": mixed.json(),
            "healthz": floor.json(),
            "mixed_vs_healthz_rps": round2(ratio),
        }));
        if over {
            knee = Some(clients);
            break;
        }
    }
    // The best step below the knee (the knee itself when the first step passed it).
    let best = steps
        .iter()
        .filter(|s| Some(s["clients"].as_u64().unwrap_or(0) as usize) != knee)
        .max_by(|a, b| {
            a["mixed"]["rps"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["mixed"]["rps"].as_f64().unwrap_or(0.0))
        })
        .or(steps.first())
        .cloned()
        .unwrap_or(Value::Null);
    Ok(json!({
        "policies": POLICIES,
        "flows": FLOWS,
        "p99_limit_ms": P99_LIMIT_MS,
        "step_seconds": secs,
        "knee_clients": knee,
        "best": best,
        "steps": steps,
    }))
}
