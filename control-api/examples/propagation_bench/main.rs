//! Policy propagation benchmark, driven by `cargo xtask bench propagation [--quick]` (which
//! builds the release `control-api` and `node-agent`, starts a private PostgreSQL and passes
//! `--database-url`, `--control-api`, `--node-agent`).
//!
//! Everything runs as the processes users run: two control-api replicas on one database
//! (the agent service over TLS), and simulated agents in `node-agent sim` processes (the
//! real protocol and the agent's own decode and diff of every message; no datapath), each
//! agent on its own connection, agent `i` on replica `i mod 2`.
//!
//! For fleets of N agents in one tenant (100 and 1,000 with `--quick`, then 5,000 and
//! 10,000), 10 endpoints a node and 200 policies: a policy is changed C times through REST
//! (a `PUT` each, alternating replicas); a change's propagation time runs from the `PUT`'s
//! answer (the commit) until every agent has acked that revision ("received": until every
//! agent had it, before its ack was answered). Per fleet also: PostgreSQL's rows read and
//! written per change (`pg_stat_database`, idle rate subtracted), control-api CPU per
//! change and RSS per connected agent (both replicas, from `/proc`), and a second pass with
//! REST probes running beside the fan-out (`GET …/nodes?limit=100` on the fleet's cluster
//! and a policy `PUT` in another tenant): their p50/p99. After the largest fleet, one
//! replica is SIGKILLed and a change made through the other: the time until every agent
//! has re-homed and acked it, and whether any agent removed anything (a flush).
//! Then 1,000 agents over 100 tenants of 10 (each change is one tenant's), and the baseline
//! (a tenant with one agent, measured first) again beside them.
//!
//! A fleet whose simulated agents would not fit in memory is skipped with the measured
//! reason: every agent keeps its cluster's whole ipcache (N × 10 entries), so the agents'
//! memory grows with N².

#[path = "../common/mod.rs"]
mod common;
mod procs;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sqlx::PgPool;

use common::{percentile, rest};
use procs::{cpu_ms, mem_available_kib, postgres_cpu_ms, rss_kib, Replica, Sim, SimSpec};

/// Longest a change may take to reach every agent before the run is declared failed.
const CONVERGE: Duration = Duration::from_secs(180);
/// Longest registration of a fleet may take.
const JOIN: Duration = Duration::from_secs(1500);
const ENDPOINTS: usize = 10;
const POLICIES: usize = 200;

struct Bench {
    http: reqwest::Client,
    replicas: [Replica; 2],
    pool: PgPool,
    node_agent: PathBuf,
    ca: PathBuf,
}

impl Bench {
    async fn call(
        &self,
        via: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        rest(&self.http, &self.replicas[via % 2].rest, method, path, body).await
    }

    fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.agent.clone()).collect()
    }

    /// A tenant with cluster `prod` and `policies` policies (`bench`, which the changes
    /// rewrite, and fillers); its unlimited join token.
    async fn tenant(&self, name: &str, policies: usize) -> Result<String> {
        self.call(0, "POST", "/v1/tenants", Some(json!({"name": name})))
            .await?;
        let base = format!("/v1/tenants/{name}");
        self.call(
            0,
            "POST",
            &format!("{base}/clusters"),
            Some(json!({"name": "prod"})),
        )
        .await?;
        let token = self
            .call(
                0,
                "POST",
                &format!("{base}/clusters/prod/join-tokens"),
                Some(json!({"name": "fleet", "max_uses": 0})),
            )
            .await?["token"]
            .as_str()
            .context("join token")?
            .to_string();
        let path = format!("{base}/policies");
        self.call(0, "POST", &path, Some(policy("bench", 0, 1, 8000)))
            .await?;
        for i in 1..policies {
            let p = policy(
                &format!("filler-{i}"),
                i % 10,
                (i + 3) % 10,
                10_000 + i as u16,
            );
            self.call(i, "POST", &path, Some(p)).await?;
        }
        Ok(token)
    }

    /// Rewrites `bench` with `port` through replica `via`; the change's revision.
    async fn change(&self, via: usize, tenant: &str, port: u16) -> Result<u64> {
        let path = format!("/v1/tenants/{tenant}/policies/bench");
        let p = self
            .call(via, "PUT", &path, Some(policy("bench", 0, 1, port)))
            .await?;
        p["revision"].as_u64().context("policy revision")
    }

    fn sim(&self, tokens: &[String], agents: usize, endpoints: usize) -> Result<Sim> {
        Sim::start(SimSpec {
            bin: &self.node_agent,
            urls: &self.urls(),
            ca: &self.ca,
            tokens,
            agents,
            endpoints,
        })
    }

    /// Waits until every fleet of `sim` is registered, then makes one change per tenant
    /// and waits for it: every agent is current.
    async fn join(&self, sim: &Sim, tenants: &[String], agents: usize) -> Result<()> {
        for (f, t) in tenants.iter().enumerate() {
            sim.wait(f, JOIN, |v| v["registered"].as_u64() >= Some(agents as u64))
                .await
                .with_context(|| format!("registering {t}"))?;
        }
        for (f, t) in tenants.iter().enumerate() {
            let r = self.change(f, t, 7999).await?;
            sim.acked(f, r, JOIN)
                .await
                .with_context(|| format!("first sync of {t}"))?;
        }
        Ok(())
    }

    fn server_rss_kib(&self) -> u64 {
        self.replicas.iter().map(|r| rss_kib(r.pid())).sum()
    }

    /// The replicas' live heap (`weft_heap_live_bytes`), without what the allocator keeps.
    async fn server_heap_kib(&self) -> Result<u64> {
        let mut sum = 0;
        for r in &self.replicas {
            let text = self
                .http
                .get(format!("{}/metrics", r.rest))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            let bytes: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("weft_heap_live_bytes "))
                .context("no weft_heap_live_bytes in /metrics")?
                .trim()
                .parse()?;
            sum += bytes / 1024;
        }
        Ok(sum)
    }

    fn server_cpu_ms(&self) -> f64 {
        self.replicas.iter().map(|r| cpu_ms(r.pid())).sum()
    }
}

/// Endpoints labelled `app=app-<to>` admit `app=app-<from>` on one TCP port.
fn policy(name: &str, to: usize, from: usize, port: u16) -> Value {
    json!({
        "name": name,
        "spec": {
            "endpointSelector": {"matchLabels": {"app": format!("app-{to}")}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": format!("app-{from}")}}],
                "toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]
            }]
        }
    })
}

/// Rows PostgreSQL has read and written in this database so far (its statistics, flushed
/// first), the replicas' and PostgreSQL's CPU time, and when.
async fn sample(b: &Bench) -> Result<(f64, f64, [f64; 2], Instant)> {
    // Backends flush their counters at least once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&b.pool)
        .await?;
    let (read, written): (i64, i64) = sqlx::query_as(
        "SELECT (tup_returned + tup_fetched)::bigint, \
                (tup_inserted + tup_updated + tup_deleted)::bigint \
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&b.pool)
    .await?;
    let cpu = [b.server_cpu_ms(), postgres_cpu_ms()];
    Ok((read as f64, written as f64, cpu, Instant::now()))
}

fn fleets_from_env() -> Result<Option<Vec<(usize, usize)>>> {
    let Ok(spec) = std::env::var("WEFT_BENCH_FLEETS") else {
        return Ok(None);
    };
    let parse = |f: &str| -> Result<(usize, usize)> {
        let (n, e) = f.split_once('x').unwrap_or((f, "10"));
        Ok((n.trim().parse()?, e.trim().parse()?))
    };
    let fleets = spec
        .split(',')
        .map(|f| parse(f).with_context(|| format!("WEFT_BENCH_FLEETS: {f:?} is not N or NxE")))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(fleets))
}

/// What the fleets so far used, to tell whether the next fits: the simulated agents grow
/// as `a·N + c·N²·E` (each of N agents keeps its cluster's N·E-entry ipcache), the
/// replicas linearly.
#[derive(Default)]
struct Memory {
    /// (agents, endpoints per node, sim RSS KiB, replicas' RSS KiB).
    points: Vec<(usize, usize, f64, f64)>,
}

impl Memory {
    fn need_kib(&self, n: usize, e: usize) -> Option<(f64, f64)> {
        let &(m, f, sim, server) = self.points.last()?;
        let (n, e, m, f) = (n as f64, e as f64, m as f64, f as f64);
        // Two points give both terms; one, the quadratic one alone (an overestimate).
        let fit = self
            .points
            .iter()
            .rev()
            .nth(1)
            .and_then(|&(m0, f0, sim0, _)| {
                let (m0, f0) = (m0 as f64, f0 as f64);
                let c = (sim / m - sim0 / m0) / (m * f - m0 * f0);
                let a = sim / m - c * m * f;
                (a >= 0.0 && c >= 0.0 && m != m0).then_some(a * n + c * n * n * e)
            });
        let sim_need = fit.unwrap_or(sim * (n * n * e) / (m * m * f));
        Some((sim_need, server / m * n))
    }

    /// Why a fleet of `n` agents with `e` endpoints each would not fit, if it would not.
    fn wont_fit(&self, n: usize, e: usize) -> Option<String> {
        let (sim, server) = self.need_kib(n, e)?;
        let have = mem_available_kib() as f64;
        let gib = |k: f64| k / 1_048_576.0;
        (sim + server > have * 0.8).then(|| {
            format!(
                "the simulated agents would need ~{:.1} GiB and the replicas ~{:.1} GiB \
                 (extrapolated from the fleets that ran: each agent keeps its cluster's \
                 {}-entry ipcache, so the agents' memory grows with N²); {:.1} GiB available",
                gib(sim),
                gib(server),
                n * e,
                gib(have)
            )
        })
    }
}

/// Rows written and read per table so far (`pg_stat_user_tables`).
async fn tables(b: &Bench) -> Result<std::collections::BTreeMap<String, (i64, i64)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, (n_tup_ins + n_tup_upd + n_tup_del)::bigint, \
                (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::bigint \
         FROM pg_stat_user_tables",
    )
    .fetch_all(&b.pool)
    .await?;
    Ok(rows.into_iter().map(|(t, w, r)| (t, (w, r))).collect())
}

/// The tables with the most rows written per change between two [`tables`] samples
/// (idle time included): `{"table": [written, read]}`.
fn per_table(
    before: &std::collections::BTreeMap<String, (i64, i64)>,
    after: &std::collections::BTreeMap<String, (i64, i64)>,
    changes: usize,
) -> Value {
    let mut d: Vec<(String, f64, f64)> = after
        .iter()
        .map(|(t, (w, r))| {
            let (w0, r0) = before.get(t).copied().unwrap_or((0, 0));
            let n = changes as f64;
            (
                t.clone(),
                ((w - w0) as f64 / n).round(),
                ((r - r0) as f64 / n).round(),
            )
        })
        .filter(|(_, w, r)| *w > 0.0 || *r > 0.0)
        .collect();
    d.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    d.truncate(6);
    d.into_iter()
        .map(|(t, w, r)| (t, json!([w, r])))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A fleet to change: its tenant and where its progress is.
struct Target<'a> {
    tenant: String,
    sim: &'a Sim,
    fleet: usize,
}

/// REST calls beside the fan-out: `GET …/nodes?limit=100` of the fleet's cluster and
/// `GET …/policies?limit=100` (both with status), and a policy `PUT` in the baseline
/// tenant, alternating replicas; their latencies in ms.
fn probe(
    b: &Bench,
    fleet_tenant: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<[Vec<f64>; 3]> {
    let http = b.http.clone();
    let bases: Vec<String> = b.replicas.iter().map(|r| r.rest.clone()).collect();
    let nodes = format!("/v1/tenants/{fleet_tenant}/clusters/prod/nodes?limit=100");
    let policies = format!("/v1/tenants/{fleet_tenant}/policies?limit=100");
    tokio::spawn(async move {
        let (mut gets, mut lists, mut puts) = (Vec::new(), Vec::new(), Vec::new());
        let mut i = 0usize;
        while !stop.load(Ordering::Acquire) {
            let base = &bases[i % 2];
            let t = Instant::now();
            if rest(&http, base, "GET", &nodes, None).await.is_ok() {
                gets.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let t = Instant::now();
            if rest(&http, base, "GET", &policies, None).await.is_ok() {
                lists.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let t = Instant::now();
            let p = policy("probe", 2, 3, 20_000 + (i % 1000) as u16);
            if rest(
                &http,
                base,
                "PUT",
                "/v1/tenants/solo/policies/probe",
                Some(p),
            )
            .await
            .is_ok()
            {
                puts.push(t.elapsed().as_secs_f64() * 1e3);
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        [gets, lists, puts]
    })
}

/// Runs `changes` changes over the targets (alternating targets and replicas); their
/// figures. With `with_probe`, REST probes run beside them and their latencies are added
/// (rows and CPU then include the probes' work, so the clean pass is the one to read).
async fn measure(
    b: &Bench,
    targets: &[Target<'_>],
    changes: usize,
    with_probe: bool,
) -> Result<Value> {
    // Fresh statistics, so no autovacuum or autoanalyze reads into the counts.
    sqlx::query("VACUUM ANALYZE").execute(&b.pool).await?;
    let (r0, w0, c0, t0) = sample(b).await?;
    let (r1, w1, c1, t1) = sample(b).await?;
    let tables_before = tables(b).await?;
    let idle_s = (t1 - t0).as_secs_f64();
    let idle = [
        (r1 - r0) / idle_s,
        (w1 - w0) / idle_s,
        (c1[0] - c0[0]) / idle_s,
        (c1[1] - c0[1]) / idle_s,
    ];
    let before: Vec<Value> = targets.iter().map(|t| t.sim.progress(t.fleet)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let probes = with_probe.then(|| probe(b, &targets[0].tenant, stop.clone()));
    let (mut acked, mut received) = (Vec::with_capacity(changes), Vec::with_capacity(changes));
    for c in 0..changes {
        let t = &targets[c % targets.len()];
        let revision = b.change(c, &t.tenant, 8001 + c as u16).await?;
        let since = Instant::now();
        t.sim
            .wait(t.fleet, CONVERGE, |v| {
                v["received"].as_u64() >= Some(revision)
            })
            .await
            .with_context(|| format!("change {c} of {}", t.tenant))?;
        received.push(since.elapsed().as_secs_f64() * 1e3);
        t.sim.acked(t.fleet, revision, CONVERGE).await?;
        acked.push(since.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Release);
    let rest = match probes {
        Some(p) => Some(p.await?),
        None => None,
    };
    let (r2, w2, c2, t2) = sample(b).await?;
    let by_table = per_table(&tables_before, &tables(b).await?, changes);
    let busy_s = (t2 - t1).as_secs_f64();
    let per_change = |total: f64, idle: f64| ((total - idle * busy_s) / changes as f64).max(0.0);
    let sum =
        |k: &str, vs: &[Value]| -> u64 { vs.iter().map(|v| v[k].as_u64().unwrap_or(0)).sum() };
    let after: Vec<Value> = targets.iter().map(|t| t.sim.progress(t.fleet)).collect();
    let delta = |k: &str| sum(k, &after) - sum(k, &before);
    let mut v = json!({
        "agents": sum("agents", &after) / targets.len() as u64,
        "tenants": targets.len(),
        "changes": changes,
        "p50_ms": percentile(&mut acked.clone(), 0.5),
        "p99_ms": percentile(&mut acked, 0.99),
        "received_p50_ms": percentile(&mut received.clone(), 0.5),
        "received_p99_ms": percentile(&mut received, 0.99),
        "rows_read_per_change": per_change(r2 - r1, idle[0]).round(),
        "rows_written_per_change": per_change(w2 - w1, idle[1]).round(),
        "control_api_cpu_ms_per_change": (per_change(c2[0] - c1[0], idle[2]) * 10.0).round() / 10.0,
        "postgres_cpu_ms_per_change": (per_change(c2[1] - c1[1], idle[3]) * 10.0).round() / 10.0,
        "idle_rows_read_per_s": idle[0].round(),
        "rows_per_change_by_table": by_table,
        "messages": delta("snapshots") + delta("deltas"),
        "removals": delta("removals"),
        "reconnects": delta("reconnects"),
        "refused": delta("refused"),
    });
    if let Some([mut gets, mut lists, mut puts]) = rest {
        v["rest"] = json!({
            "get_nodes_p50_ms": percentile(&mut gets.clone(), 0.5),
            "get_nodes_p99_ms": percentile(&mut gets, 0.99),
            "get_policies_p50_ms": percentile(&mut lists.clone(), 0.5),
            "get_policies_p99_ms": percentile(&mut lists, 0.99),
            "put_policy_p50_ms": percentile(&mut puts.clone(), 0.5),
            "put_policy_p99_ms": percentile(&mut puts, 0.99),
            "calls": gets.len() + lists.len() + puts.len(),
        });
    }
    Ok(v)
}

/// SIGKILLs replica 1 and makes a change through replica 0: how long until every agent
/// (half of them on the dead replica) has re-homed and acked it, and what the agents did.
async fn rehome(b: &mut Bench, sim: &Sim, tenant: &str) -> Result<Value> {
    let before = sim.progress(0);
    b.replicas[1].kill().await?;
    let since = Instant::now();
    let revision = b.change(0, tenant, 9999).await?;
    sim.acked(0, revision, CONVERGE).await?;
    let s = since.elapsed().as_secs_f64();
    let after = sim.progress(0);
    let d = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    b.replicas[1].restart(&b.http).await?;
    Ok(json!({
        "agents": after["agents"],
        "seconds": (s * 100.0).round() / 100.0,
        "reconnects": d("reconnects"),
        "snapshots": d("snapshots"),
        // A removal would be an agent flushing what is still desired.
        "removals": d("removals"),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = common::args()?;
    // (agents, endpoints per node).
    let sizes: &[(usize, usize)] = if a.quick {
        &[(100, ENDPOINTS), (1000, ENDPOINTS)]
    } else {
        // 10,000 agents again with one endpoint each, should 10 not fit.
        &[
            (100, ENDPOINTS),
            (1000, ENDPOINTS),
            (5000, ENDPOINTS),
            (10_000, ENDPOINTS),
            (10_000, 1),
        ]
    };
    // `WEFT_BENCH_FLEETS=5000,10000x1`: other fleets (agents, or agents x endpoints).
    let chosen = fleets_from_env()?;
    let sizes = chosen.as_deref().unwrap_or(sizes);
    let changes = if a.quick { 10 } else { 20 };
    let name = format!("propagation_{}", uuid::Uuid::new_v4().simple());
    let db_url = control_api::db::create_database(&a.database_url, &name).await?;
    let dir = std::env::temp_dir().join(format!("weft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let tls = weft_testkit::server::self_signed(&dir, [127, 0, 0, 1].into());
    let http = reqwest::Client::new();
    let control_api = a.control_api.context("--control-api is required")?;
    let replicas = [
        Replica::start(&control_api, &db_url, &tls, &http).await?,
        Replica::start(&control_api, &db_url, &tls, &http).await?,
    ];
    let mut b = Bench {
        http,
        replicas,
        // The database's owner: reads its statistics and vacuums.
        pool: sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&db_url)
            .await?,
        node_agent: a.node_agent.context("--node-agent is required")?,
        ca: tls.0.clone(),
    };
    let result = run(&mut b, sizes, changes).await;
    let _ = std::fs::remove_dir_all(&dir);
    let out = result?;
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

async fn run(b: &mut Bench, sizes: &[(usize, usize)], changes: usize) -> Result<Value> {
    let solo_token = b.tenant("solo", POLICIES).await?;
    b.call(
        0,
        "POST",
        "/v1/tenants/solo/policies",
        Some(policy("probe", 2, 3, 20_000)),
    )
    .await?;
    let solo = b.sim(&[solo_token], 1, ENDPOINTS)?;
    b.join(&solo, &["solo".into()], 1).await?;
    let solo_t = [Target {
        tenant: "solo".into(),
        sim: &solo,
        fleet: 0,
    }];
    let base = measure(b, &solo_t, changes, false).await?;
    print_row("1 agent (baseline)", &base, &base);
    let rss_base = b.server_rss_kib();
    let heap_base = b.server_heap_kib().await?;

    let mut by_agents = serde_json::Map::new();
    let mut largest: Option<(usize, Value)> = None;
    let mut rehomed = serde_json::Map::new();
    let mut memory = Memory::default();
    for (k, &(n, e)) in sizes.iter().enumerate() {
        let label = if e == ENDPOINTS {
            n.to_string()
        } else {
            format!("{n}x{e}")
        };
        if let Some(why) = memory.wont_fit(n, e) {
            println!("{label} agents: skipped: {why}");
            by_agents.insert(
                label,
                json!({"agents": n, "endpoints_per_node": e, "skipped": why}),
            );
            continue;
        }
        let tenant = format!("fleet-{label}");
        let token = b.tenant(&tenant, POLICIES).await?;
        let started = Instant::now();
        let sim = b.sim(&[token], n, e)?;
        if let Err(err) = b.join(&sim, std::slice::from_ref(&tenant), n).await {
            println!("{label} agents: {err:#}");
            by_agents.insert(label, json!({"agents": n, "error": format!("{err:#}")}));
            sim.stop().await;
            continue;
        }
        let joined_s = started.elapsed().as_secs_f64();
        println!("{n} agents x {e} endpoints registered and synced in {joined_s:.1} s");
        let t = [Target {
            tenant: tenant.clone(),
            sim: &sim,
            fleet: 0,
        }];
        let mut v = match measure(b, &t, changes, false).await {
            Ok(v) => v,
            Err(err) => {
                println!("{label} agents: {err:#}");
                by_agents.insert(label, json!({"agents": n, "error": format!("{err:#}")}));
                sim.stop().await;
                continue;
            }
        };
        let server = b.server_rss_kib();
        let sim_kib = rss_kib(sim.pid());
        v["endpoints_per_node"] = json!(e);
        v["join_s"] = json!((joined_s * 10.0).round() / 10.0);
        v["rss_per_agent_kib"] = json!((server.saturating_sub(rss_base)) / n as u64);
        v["control_api_rss_mib"] = json!(server / 1024);
        let heap = b.server_heap_kib().await?;
        v["heap_per_agent_kib"] = json!((heap.saturating_sub(heap_base)) / n as u64);
        v["sim_rss_mib"] = json!(sim_kib / 1024);
        print_row(&format!("fleet of {label}"), &v, &base);
        let probed = measure(b, &t, changes, true).await?;
        println!(
            "{:>20}  beside the fan-out: GET nodes?limit=100 p99 {:.1} ms, GET policies?limit=100 p99 {:.1} ms, policy PUT p99 {:.1} ms (propagation p50 {:.1} ms then)",
            "",
            probed["rest"]["get_nodes_p99_ms"].as_f64().unwrap_or(0.0),
            probed["rest"]["get_policies_p99_ms"].as_f64().unwrap_or(0.0),
            probed["rest"]["put_policy_p99_ms"].as_f64().unwrap_or(0.0),
            probed["p50_ms"].as_f64().unwrap_or(0.0)
        );
        v["rest_during_fanout"] = probed["rest"].clone();
        v["rest_during_fanout"]["propagation_p50_ms"] = probed["p50_ms"].clone();
        memory.points.push((n, e, sim_kib as f64, server as f64));
        // Re-homing is measured on each fleet after which none larger runs.
        let next_runs = sizes
            .get(k + 1)
            .is_some_and(|&(m, f)| memory.wont_fit(m, f).is_none());
        if !next_runs {
            let r = rehome(b, &sim, &tenant).await?;
            println!(
                "re-homing {n} agents after SIGKILL of a replica: {} s, {} removals, {} snapshots",
                r["seconds"], r["removals"], r["snapshots"]
            );
            rehomed.insert(label.clone(), r);
        }
        // The headline figures: the last fleet with 10 endpoints a node, else the last one.
        if e == ENDPOINTS
            || largest
                .as_ref()
                .is_none_or(|(_, l)| l["endpoints_per_node"] != ENDPOINTS)
        {
            largest = Some((n, v.clone()));
        }
        // Each fleet's figures as they come, should a later one not finish.
        println!("{label}: {v}");
        by_agents.insert(label, v);
        sim.stop().await;
    }
    // 1,000 agents over 100 tenants of 10: each change is one tenant's.
    let (tenants, per) = (100, 10);
    let mut names = Vec::with_capacity(tenants);
    let mut tokens = Vec::with_capacity(tenants);
    for t in 0..tenants {
        let name = format!("spread-{t}");
        tokens.push(b.tenant(&name, 20).await?);
        names.push(name);
    }
    let spread = b.sim(&tokens, per, ENDPOINTS)?;
    b.join(&spread, &names, per).await?;
    let targets: Vec<Target<'_>> = names
        .iter()
        .enumerate()
        .map(|(f, n)| Target {
            tenant: n.clone(),
            sim: &spread,
            fleet: f,
        })
        .collect();
    let multi = measure(b, &targets, changes, false).await?;
    print_row("1 of 100 tenants", &multi, &base);
    // The one-agent tenant again, beside 1,000 agents of other tenants.
    let beside = measure(b, &solo_t, changes, false).await?;
    print_row("1 agent beside them", &beside, &base);
    spread.stop().await;

    let (max_n, top) = largest.context("no fleet ran")?;
    // The slowest of the probed calls.
    let rest_p99 = [
        "get_nodes_p99_ms",
        "get_policies_p99_ms",
        "put_policy_p99_ms",
    ]
    .iter()
    .filter_map(|k| top["rest_during_fanout"][k].as_f64())
    .fold(0.0, f64::max);
    let mut out = json!({
        "agents": max_n,
        "changes": changes,
        "p50_ms": top["p50_ms"],
        "p99_ms": top["p99_ms"],
        "by_agents": by_agents,
        "multi_tenant_1000": multi,
        "baseline": base,
        "baseline_beside_other_tenants": beside,
        "rest_p99_ms_during_fanout": rest_p99,
    });
    for r in rehomed.values() {
        if let Some(n) = r["agents"].as_u64() {
            out[format!("rehome_{n}_s")] = r["seconds"].clone();
        }
    }
    out["rehome"] = rehomed.into();
    drop(solo);
    Ok(out)
}

/// One line of figures, with the ratios to the baseline.
fn print_row(name: &str, v: &Value, base: &Value) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let ratio = |k: &str| f(v, k) / f(base, k).max(1e-9);
    println!(
        "{name:>20}: {:>5} agents  p50 {:>8.1} ms ({:.1}x; received {:.1})  p99 {:>8.1} ms ({:.1}x)  rows read/change {:>8} ({:.1}x)  written {:>6} ({:.1}x)  cpu/change {:>7.1} ms ({:.1}x) + postgres {:.1} ms  rss/agent {} KiB (live heap {} KiB)",
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
        f(v, "control_api_cpu_ms_per_change"),
        ratio("control_api_cpu_ms_per_change"),
        f(v, "postgres_cpu_ms_per_change"),
        v["rss_per_agent_kib"],
        v["heap_per_agent_kib"],
    );
}
