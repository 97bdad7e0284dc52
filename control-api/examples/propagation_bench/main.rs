//! Policy propagation benchmark, driven by `cargo xtask bench propagation [--quick]` (which
//! starts a private PostgreSQL and passes `--database-url`). Two control-api replicas (REST
//! app and agent service each, with their own pools, change listeners, shared views and
//! writers) run in-process on one database; agents are gRPC clients over loopback, their
//! connections alternating between the replicas, that register with a join token, report
//! their endpoints, hold a `Sync` stream and acknowledge every revision they receive (they
//! program nothing: this measures the control plane).
//!
//! For fleets of N agents, each its own tenant (100 and 1,000 with `--quick`, then 3,000),
//! then 1,000 more agents spread over 100 tenants of 10, and, as the baseline in the same
//! run, a tenant with one agent: a policy is changed C times through REST (a `PUT` each, one
//! after the other, alternating replicas); each change's propagation time runs from the
//! `PUT`'s answer until every agent of the tenant has received that revision. PostgreSQL's
//! own counters (`pg_stat_database`: `tup_returned + tup_fetched`, `tup_inserted +
//! tup_updated + tup_deleted`) give the rows read and written per change.
//!
//! The one-agent tenant is measured twice: alone, and again once the fleets are connected
//! (a change in one tenant should cost nothing for another tenant's agents). Prints p50/p99
//! propagation and rows read and written per change for each, as ratios to the first, and
//! the process's RSS (control plane and simulated agents together); writes them to `--out`
//! as JSON.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{AckRequest, EndpointReport, RegisterRequest, ReportedEndpoint, SyncRequest};

use common::*;

/// Agents that share one HTTP/2 connection (as agents behind one NAT would not, but
/// thousands of sockets on one loopback would only measure the kernel).
const AGENTS_PER_CONNECTION: usize = 50;
/// Longest a change may take to reach every agent before the run is declared failed.
const CONVERGE_LIMIT: Duration = Duration::from_secs(120);

struct Sizes {
    agents: Vec<usize>,
    endpoints_per_agent: usize,
    changes: usize,
}

/// The last revision each agent of a tenant acknowledged (the ack answered), and received.
struct Fleet {
    tenant: String,
    seen: Arc<Vec<AtomicU64>>,
    received: Arc<Vec<AtomicU64>>,
    changed: Arc<Notify>,
}

impl Fleet {
    /// Waits until every agent has acknowledged `revision`; how long that took.
    async fn reached(&self, revision: u64, since: Instant) -> Result<Duration> {
        self.all(&self.seen, revision, since).await
    }

    /// Waits until every agent of `slots` (`seen` or `received`) has `revision`.
    async fn all(&self, slots: &[AtomicU64], revision: u64, since: Instant) -> Result<Duration> {
        let deadline = since + CONVERGE_LIMIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if slots.iter().all(|s| s.load(Ordering::Acquire) >= revision) {
                return Ok(since.elapsed());
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                let behind = slots
                    .iter()
                    .filter(|s| s.load(Ordering::Acquire) < revision)
                    .count();
                bail!(
                    "{behind} of {} agents of {} lack revision {revision} after {CONVERGE_LIMIT:?}",
                    self.seen.len(),
                    self.tenant
                );
            }
        }
    }
}

/// Two control-api replicas on one database: their REST apps and agent service URLs.
struct Replicas {
    apps: [axum::Router; 2],
    agent_urls: [String; 2],
}

/// A tenant with one cluster and `n` agents, each with its endpoints, all synced; the
/// agents' connections alternate between the replicas.
async fn fleet(rep: &Replicas, tenant: &str, n: usize, endpoints: usize) -> Result<Fleet> {
    call(&rep.apps[0], "POST", "/v1/tenants", json!({"name": tenant})).await?;
    let base = format!("/v1/tenants/{tenant}");
    call(
        &rep.apps[0],
        "POST",
        &format!("{base}/clusters"),
        json!({"name": "prod"}),
    )
    .await?;
    let token = call(
        &rep.apps[0],
        "POST",
        &format!("{base}/clusters/prod/join-tokens"),
        json!({"name": "fleet", "max_uses": 0}),
    )
    .await?["token"]
        .as_str()
        .context("join token")?
        .to_string();
    let path = format!("{base}/policies");
    call(&rep.apps[0], "POST", &path, policy(8000)).await?;

    let slots = || -> Arc<Vec<AtomicU64>> { Arc::new((0..n).map(|_| AtomicU64::new(0)).collect()) };
    let (seen, received) = (slots(), slots());
    let changed = Arc::new(Notify::new());
    let mut channel: Option<Channel> = None;
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        if i % AGENTS_PER_CONNECTION == 0 {
            channel = Some(
                Endpoint::from_shared(rep.agent_urls[(i / AGENTS_PER_CONNECTION) % 2].clone())?
                    .connect()
                    .await?,
            );
        }
        let mut client = AgentClient::new(channel.clone().context("channel")?);
        let node = client
            .register(RegisterRequest {
                join_token: token.clone(),
                node_name: format!("node-{i}"),
                capability_version: weft_proto::CAPABILITY_VERSION,
                ..Default::default()
            })
            .await?
            .into_inner();
        let credential = node.node_credential;
        let reported = (0..endpoints)
            .map(|e| {
                let k = i * endpoints + e;
                ReportedEndpoint {
                    name: format!("ep-{i}-{e}"),
                    labels: [("app".to_string(), format!("app-{}", k % 10))].into(),
                    ips: vec![format!(
                        "10.{}.{}.{}",
                        k / 62_500,
                        (k / 250) % 250,
                        k % 250 + 1
                    )],
                    named_ports: Vec::new(),
                }
            })
            .collect();
        client
            .report_endpoints(authed(
                EndpointReport {
                    endpoints: reported,
                },
                &credential,
            ))
            .await?;
        agents.push((client, credential));
    }
    // Streams open once every node is in: registrations do not fan out to the fleet.
    for (i, (mut client, credential)) in agents.into_iter().enumerate() {
        let mut stream = client
            .sync(authed(
                SyncRequest {
                    resume_from_revision: 0,
                    capability_version: weft_proto::CAPABILITY_VERSION,
                },
                &credential,
            ))
            .await?
            .into_inner();
        let (seen, received, changed) = (seen.clone(), received.clone(), changed.clone());
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                received[i].store(m.revision, Ordering::Release);
                changed.notify_waiters();
                let ack = AckRequest {
                    revision: m.revision,
                    errors: Vec::new(),
                };
                if client.ack(authed(ack, &credential)).await.is_err() {
                    break;
                }
                seen[i].store(m.revision, Ordering::Release);
                changed.notify_waiters();
            }
        });
    }
    let f = Fleet {
        tenant: tenant.to_string(),
        seen,
        received,
        changed,
    };
    // A change after the last registration: its revision is the newest.
    let revision = put_policy(rep, 0, tenant, 7999).await?;
    f.reached(revision, Instant::now()).await?;
    Ok(f)
}

/// The policy every change rewrites: app-0 admits app-1 on one TCP port.
fn policy(port: u16) -> Value {
    json!({
        "name": "bench",
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "app-0"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "app-1"}}],
                "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]
            }]
        }
    })
}

/// Rewrites the policy with `port` through replica `via` (0 or 1); the revision of the change.
async fn put_policy(rep: &Replicas, via: usize, tenant: &str, port: u16) -> Result<u64> {
    let path = format!("/v1/tenants/{tenant}/policies/bench");
    let p = call(&rep.apps[via % 2], "PUT", &path, policy(port)).await?;
    p["revision"].as_u64().context("policy revision")
}

/// Rows PostgreSQL has read and written in this database so far (its statistics, flushed
/// first), and when.
async fn rows(pool: &PgPool) -> Result<(f64, f64, Instant)> {
    // Backends flush their counters at least once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(pool)
        .await?;
    let (read, written): (i64, i64) = sqlx::query_as(
        "SELECT (tup_returned + tup_fetched)::bigint,                 (tup_inserted + tup_updated + tup_deleted)::bigint          FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await?;
    Ok((read as f64, written as f64, Instant::now()))
}

/// Runs the changes on one fleet; its figures. Rows per change leave out what the control
/// plane reads and writes while idle (heartbeats, background tasks), measured just before.
async fn measure(rep: &Replicas, pool: &PgPool, fleets: &[Fleet], changes: usize) -> Result<Value> {
    // Fresh statistics, so no autovacuum or autoanalyze reads into the counts.
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    let (r0, w0, t0) = rows(pool).await?;
    let (r1, w1, t1) = rows(pool).await?;
    let idle_s = (t1 - t0).as_secs_f64();
    let (idle_r, idle_w) = ((r1 - r0) / idle_s, (w1 - w0) / idle_s);
    let (mut times, mut sent) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
    for c in 0..changes {
        // Changes alternate between the replicas (and between the fleets, when several).
        let f = &fleets[c % fleets.len()];
        let revision = put_policy(rep, c, &f.tenant, 8001 + c as u16).await?;
        let since = Instant::now();
        sent.push(f.all(&f.received, revision, since).await?.as_secs_f64() * 1e3);
        times.push(f.reached(revision, since).await?.as_secs_f64() * 1e3);
    }
    let (r2, w2, t2) = rows(pool).await?;
    let busy_s = (t2 - t1).as_secs_f64();
    let per_change =
        |total: f64, idle: f64| ((total - idle * busy_s) / changes as f64).max(0.0).round();
    Ok(json!({
        "agents": fleets.iter().map(|f| f.seen.len()).sum::<usize>(),
        "tenants": fleets.len(),
        "changes": changes,
        "p50_ms": percentile(&mut times.clone(), 0.5),
        "p99_ms": percentile(&mut times, 0.99),
        // Until every agent had the revision, before its ack was answered.
        "received_p50_ms": percentile(&mut sent, 0.5),
        "rows_read_per_change": per_change(r2 - r1, idle_r),
        "rows_written_per_change": per_change(w2 - w1, idle_w),
        "idle_rows_read_per_s": idle_r.round(),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    // Fleets of these sizes, each its own tenant, measured one after the other (the smaller
    // ones stay connected: other tenants' agents). 10 endpoints per node as in issue #17.
    let sz = if a.quick {
        Sizes {
            agents: vec![100, 1000],
            endpoints_per_agent: 10,
            changes: 10,
        }
    } else {
        Sizes {
            agents: vec![100, 1000, 3000],
            endpoints_per_agent: 10,
            changes: 20,
        }
    };
    let (state, url) = control_plane(&a.database_url, "propagation").await?;
    let other = replica(&url).await?;
    // The database's owner: reads its statistics and vacuums.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await?;
    let rep = Replicas {
        apps: [
            control_api::app::app(state.clone()),
            control_api::app::app(other.clone()),
        ],
        agent_urls: [
            weft_testkit::server::agent_url(state.clone()).await,
            weft_testkit::server::agent_url(other.clone()).await,
        ],
    };
    let loads = || state.views.loads() + other.views.loads();

    let solo = vec![fleet(&rep, "solo", 1, sz.endpoints_per_agent).await?];
    let base = measure(&rep, &pool, &solo, sz.changes).await?;
    let mut fleets = Vec::new();
    for &n in &sz.agents {
        let started = Instant::now();
        let loads_before = loads();
        let many = match fleet(&rep, &format!("fleet-{n}"), n, sz.endpoints_per_agent).await {
            Ok(f) => vec![f],
            Err(e) => {
                println!("{n} agents: {e:#}");
                fleets.push(json!({"agents": n, "error": format!("{e:#}")}));
                break;
            }
        };
        println!(
            "{n} agents x {} endpoints registered and synced in {:.1} s",
            sz.endpoints_per_agent,
            started.elapsed().as_secs_f64()
        );
        let joined_loads = loads() - loads_before;
        let loads_before = loads();
        match measure(&rep, &pool, &many, sz.changes).await {
            Ok(mut v) => {
                v["view_loads_while_joining"] = json!(joined_loads);
                v["view_loads_per_change"] =
                    json!((loads() - loads_before) as f64 / sz.changes as f64);
                v["rss_mib"] = json!(rss_mib());
                print_row(&format!("fleet of {n}"), &v, &base);
                fleets.push(v);
            }
            Err(e) => {
                println!("{n} agents: {e:#}");
                fleets.push(json!({"agents": n, "error": format!("{e:#}")}));
                break;
            }
        }
    }
    // As many agents again, spread over 100 tenants of 10: each change is one tenant's.
    let (tenants, per) = (100, 10);
    let mut spread = Vec::with_capacity(tenants);
    for t in 0..tenants {
        spread.push(fleet(&rep, &format!("spread-{t}"), per, sz.endpoints_per_agent).await?);
    }
    let mut spread_v = measure(&rep, &pool, &spread, sz.changes).await?;
    spread_v["agents"] = json!(per);
    spread_v["rss_mib"] = json!(rss_mib());
    print_row("1 of 100 tenants", &spread_v, &base);
    // The one-agent tenant again, now beside the fleets: what other tenants' agents cost it.
    let beside = measure(&rep, &pool, &solo, sz.changes).await?;
    print_row("1 agent (baseline)", &base, &base);
    print_row("1 agent beside them", &beside, &base);
    let out = json!({
        "baseline": base,
        "fleets": fleets,
        "one_of_100_tenants": spread_v,
        "beside_fleets": beside,
    });
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

/// One line of figures, with the ratios to the baseline.
fn print_row(name: &str, v: &Value, base: &Value) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let ratio = |k: &str| f(v, k) / f(base, k).max(1e-9);
    println!(
        "{name:>20}: {:>5} agents  p50 {:>8.1} ms ({:.1}x; received {:.1} ms)  p99 {:>8.1} ms ({:.1}x)  rows read/change {:>9} ({:.1}x)  written {:>7} ({:.1}x)  rss {} MiB",
        v["agents"],
        f(v, "p50_ms"),
        ratio("p50_ms"),
        f(v, "received_p50_ms"),
        f(v, "p99_ms"),
        ratio("p99_ms"),
        v["rows_read_per_change"],
        ratio("rows_read_per_change"),
        v["rows_written_per_change"],
        ratio("rows_written_per_change"),
        v["rss_mib"],
    );
}

/// This process's resident memory (control plane and simulated agents together).
fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
