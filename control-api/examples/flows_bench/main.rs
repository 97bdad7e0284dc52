//! Flow ingest and query benchmark, driven by `cargo xtask bench flows [--quick]` (which
//! starts a private PostgreSQL and passes `--database-url`). Everything is real: the
//! control plane's REST app and agent gRPC service run in-process, agents are gRPC clients
//! over loopback, flows land in PostgreSQL.
//!
//! 1. Ingest: several concurrent `ReportFlows` streams of 1,000-flow batches; sustained
//!    flows/s through gRPC, enrichment, the writer queue and the block store. Baselines in
//!    the same run: the store's insert alone (no gRPC, no enrichment), and a raw `COPY` of
//!    the same flows into a row-per-flow table with its indexes (the design blocks
//!    replaced: `flows_rows`, as migration 0005 had it).
//! 2. Query: both are filled to the target size with the same synthetic flows, oldest
//!    first as agents send them (blocks through the store, 1,000 flows per node's batch;
//!    rows with one server-side `INSERT … SELECT generate_series`), then a fixed set of
//!    filtered queries runs through the store; baseline: the same queries written by hand
//!    over `flows_rows`.
//!
//! Writes `{"ingest_flows_per_s", "stored_flows", "query_p50_ms", "query_p99_ms"}` to
//! `--out`.

#[path = "../common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;
use weft_model::flow::{DropReason, FlowFilter, Verdict};
use weft_proto::v1::agent_client::AgentClient;
use weft_proto::v1::{EndpointReport, Flow, FlowBatch, RegisterRequest, ReportedEndpoint};

use common::*;
use support::*;

struct Sizes {
    agents: usize,
    batches_per_agent: usize,
    batch: usize,
    stored: i64,
    query_runs: usize,
}

/// `flows_bench seed --agent-url URL --ca-cert PEM --join-token T --node NAME --flows N
/// --endpoints E`: the same generator against a running control plane (the console's perf
/// test): registers one node with the join token, reports E endpoints with distinct labels
/// (`app=perf-<i>`, 10.250.x.y) and sends N flows between them over `ReportFlows`, in
/// batches of 1,000 as an agent does.
async fn seed(mut it: impl Iterator<Item = String>) -> Result<()> {
    let (mut url, mut ca, mut jt, mut node) = (None, None, None, None);
    let (mut flows, mut eps): (usize, usize) = (10_000, 50);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--agent-url" => url = it.next(),
            "--ca-cert" => ca = it.next(),
            "--join-token" => jt = it.next(),
            "--node" => node = it.next(),
            "--flows" => flows = it.next().context("--flows N")?.parse()?,
            "--endpoints" => eps = it.next().context("--endpoints N")?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let url = url.context("--agent-url is required")?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())?;
    if let Some(ca) = ca {
        let pem = std::fs::read(&ca).with_context(|| format!("reading {ca}"))?;
        endpoint = endpoint.tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )?;
    }
    let eps: usize = eps.clamp(1, 250);
    let ip = |i: usize| format!("10.250.{}.{}", i / 250, i % 250 + 1);
    let mut c = AgentClient::new(
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?,
    );
    let r = c
        .register(RegisterRequest {
            join_token: jt.context("--join-token is required")?,
            node_name: node.unwrap_or_else(|| "perf-node".into()),
            capability_version: weft_proto::CAPABILITY_VERSION,
            ..Default::default()
        })
        .await?
        .into_inner();
    let endpoints = (0..eps)
        .map(|i| ReportedEndpoint {
            named_ports: Vec::new(),
            name: format!("perf-{i}"),
            labels: [("app".to_string(), format!("perf-{i}"))].into(),
            ips: vec![ip(i)],
        })
        .collect();
    c.report_endpoints(authed(EndpointReport { endpoints }, &r.node_credential))
        .await?;
    let batches: Vec<FlowBatch> = (0..flows.div_ceil(1000))
        .map(|b| FlowBatch {
            flows: (b * 1000..((b + 1) * 1000).min(flows))
                .map(|i| Flow {
                    src_ip: ip(i % eps),
                    dst_ip: ip((i / 7 + 1 + i % eps) % eps),
                    ..synthetic(i, flows)
                })
                .collect(),
            lost: 0,
        })
        .collect();
    c.report_flows(authed(tokio_stream::iter(batches), &r.node_credential))
        .await?;
    println!("seeded {flows} flows between {eps} endpoints");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut it = std::env::args().skip(1).peekable();
    if it.peek().map(String::as_str) == Some("seed") {
        it.next();
        return seed(it).await;
    }
    let a = args()?;
    let sz = if a.quick {
        Sizes {
            agents: 4,
            batches_per_agent: 25,
            batch: 1000,
            stored: 300_000,
            query_runs: 10,
        }
    } else {
        Sizes {
            agents: 4,
            batches_per_agent: 150,
            batch: 1000,
            stored: 10_000_000,
            query_runs: 30,
        }
    };
    let (state, url) = control_plane(&a.database_url, "bench").await?;
    let app_pool = state.pool.clone();
    let owner = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    for ddl in ROWS_TABLE {
        sqlx::query(ddl).execute(&owner).await?;
    }
    let app = control_api::app::app(state.clone());

    // A tenant, a cluster, nodes and their endpoints, through the real API.
    call(&app, "POST", "/v1/tenants", json!({"name": "bench"})).await?;
    call(
        &app,
        "POST",
        "/v1/tenants/bench/clusters",
        json!({"name": "prod"}),
    )
    .await?;
    let jt = call(
        &app,
        "POST",
        "/v1/tenants/bench/clusters/prod/join-tokens",
        json!({"name": "fleet", "max_uses": 0}),
    )
    .await?["token"]
        .as_str()
        .context("join token")?
        .to_string();
    let endpoint = weft_testkit::server::agent_url(state.clone()).await;
    let mut creds = Vec::new();
    for n in 0..sz.agents {
        let mut c = AgentClient::connect(endpoint.clone()).await?;
        let r = c
            .register(RegisterRequest {
                join_token: jt.clone(),
                node_name: format!("node-{n}"),
                capability_version: weft_proto::CAPABILITY_VERSION,
                ..Default::default()
            })
            .await?
            .into_inner();
        let eps = (0..50)
            .map(|i| ReportedEndpoint {
                named_ports: Vec::new(),
                name: format!("ep-{n}-{i}"),
                labels: [("app".to_string(), format!("app-{}", i % 10))].into(),
                ips: vec![format!("10.{n}.{}.{}", i / 200, i % 200 + 1)],
            })
            .collect();
        c.report_endpoints(authed(
            EndpointReport { endpoints: eps },
            &r.node_credential,
        ))
        .await?;
        creds.push(r.node_credential);
    }

    // 1. Ingest through gRPC.
    println!(
        "ingest: {} agents x {} batches x {} flows over gRPC",
        sz.agents, sz.batches_per_agent, sz.batch
    );
    let batches: Arc<Vec<FlowBatch>> = Arc::new(
        (0..sz.batches_per_agent)
            .map(|b| FlowBatch {
                flows: (0..sz.batch)
                    .map(|i| synthetic(b * sz.batch + i, sz.batches_per_agent * sz.batch))
                    .collect(),
                lost: 0,
            })
            .collect(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, cred) in creds.iter().enumerate() {
        let (endpoint, cred, batches) = (endpoint.clone(), cred.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = AgentClient::connect(endpoint).await?;
            let own: Vec<FlowBatch> = batches
                .iter()
                .map(|b| FlowBatch {
                    flows: b
                        .flows
                        .iter()
                        .map(|f| Flow {
                            src_ip: f.src_ip.replacen("10.0.", &format!("10.{n}."), 1),
                            ..f.clone()
                        })
                        .collect(),
                    lost: 0,
                })
                .collect();
            c.report_flows(authed(tokio_stream::iter(own), &cred))
                .await?;
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let grpc_secs = started.elapsed().as_secs_f64();
    let ingested = (sz.agents * sz.batches_per_agent * sz.batch) as f64;
    let ingest_rate = ingested / grpc_secs;
    let stored_now: i64 = sqlx::query_scalar(STORED).fetch_one(&owner).await?;
    if stored_now as f64 != ingested {
        bail!("ingested {ingested} flows but {stored_now} are stored");
    }

    // Baselines: the store's insert alone, and raw COPY of the same rows.
    let (tenant_id, node_id, cluster_id): (Uuid, Uuid, Uuid) = sqlx::query_as(
        "SELECT n.tenant_id, n.id, n.cluster_id FROM nodes n WHERE n.name = 'node-0'",
    )
    .fetch_one(&owner)
    .await?;
    let origin = control_api::flows::Origin {
        tenant_id,
        node_id,
        node_name: "node-0".into(),
        cluster_id,
        cluster_name: "prod".into(),
    };
    let enriched =
        control_api::flows::ingest::enrich(&app_pool, &state.enrich_cache, tenant_id, &batches[0])
            .await?;
    let store_batches = sz.batches_per_agent.min(50);
    // Under a tenant of its own: copies of one batch, all in the same second, would
    // otherwise stand in front of the queried tenant's newest flows.
    call(&app, "POST", "/v1/tenants", json!({"name": "bench-store"})).await?;
    let store_tenant: Uuid =
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'bench-store'")
            .fetch_one(&owner)
            .await?;
    let store_origin = control_api::flows::Origin {
        tenant_id: store_tenant,
        ..origin.clone()
    };
    let started = Instant::now();
    let mut store_tasks = Vec::new();
    for _ in 0..sz.agents {
        let (store, origin, flows) = (
            state.flows.clone(),
            store_origin.clone(),
            enriched.flows.clone(),
        );
        store_tasks.push(tokio::spawn(async move {
            for _ in 0..store_batches {
                store.insert_batch(&origin, &flows).await?;
            }
            Ok::<_, control_api::error::ApiError>(())
        }));
    }
    for t in store_tasks {
        t.await??;
    }
    let store_rate =
        (sz.agents * store_batches * sz.batch) as f64 / started.elapsed().as_secs_f64();
    let copy_rate = copy_baseline(&url, sz.agents, store_batches, &origin, &enriched.flows).await?;
    // Where the CPU goes outside PostgreSQL, per flow, on one core: the agent's encode,
    // the server's decode, and enrichment with a warm cache.
    let runs = 200;
    let t = Instant::now();
    let mut bytes = Vec::new();
    for _ in 0..runs {
        bytes = prost::Message::encode_to_vec(&batches[0]);
    }
    let encode_us = t.elapsed().as_secs_f64() * 1e6 / (runs * sz.batch) as f64;
    let t = Instant::now();
    for _ in 0..runs {
        let b: FlowBatch = prost::Message::decode(bytes.as_slice())?;
        std::hint::black_box(b);
    }
    let decode_us = t.elapsed().as_secs_f64() * 1e6 / (runs * sz.batch) as f64;
    let t = Instant::now();
    for _ in 0..runs {
        let e = control_api::flows::ingest::enrich(
            &app_pool,
            &state.enrich_cache,
            tenant_id,
            &batches[0],
        )
        .await?;
        std::hint::black_box(e);
    }
    let enrich_us = t.elapsed().as_secs_f64() * 1e6 / (runs * sz.batch) as f64;
    let t = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(control_api::flows::block::encode(&enriched.flows));
    }
    let pack_us = t.elapsed().as_secs_f64() * 1e6 / (runs * sz.batch) as f64;
    let packed = control_api::flows::block::encode(&enriched.flows).context("empty batch")?;
    println!(
        "  through gRPC + enrichment + insert: {ingest_rate:>10.0} flows/s ({ingested} flows in {grpc_secs:.1} s)"
    );
    println!("  store insert alone (blocks):        {store_rate:>10.0} flows/s");
    println!("  baseline, raw COPY into flows_rows: {copy_rate:>10.0} flows/s");
    println!(
        "  ratios: ingest / rows COPY {:.2}, store insert / rows COPY {:.2}",
        ingest_rate / copy_rate,
        store_rate / copy_rate
    );
    println!(
        "  per flow, one core: protobuf encode {encode_us:.2} us, decode {decode_us:.2} us, \
         enrichment (warm cache) {enrich_us:.2} us, block packing {pack_us:.2} us \
         ({:.1} bytes/flow before lz4)",
        packed.data.len() as f64 / packed.flows as f64
    );

    // 2. Fill both to the target size with the same flows.
    let have: i64 = sqlx::query_scalar(STORED).fetch_one(&owner).await?;
    let fill = (sz.stored - have).max(0);
    println!("fill: {fill} more flows into blocks (through the store) and rows (server-side)");
    let started = Instant::now();
    let blocks_rate = fill_blocks(&state, &owner, tenant_id, fill).await?;
    let blocks_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let chunk = 1_000_000i64;
    let mut done = 0;
    while done < fill {
        let n = chunk.min(fill - done);
        sqlx::query(FILL_ROWS)
            .bind(tenant_id)
            .bind(node_id)
            .bind(cluster_id)
            .bind(n)
            .bind(done)
            .bind(fill)
            .execute(&owner)
            .await?;
        done += n;
    }
    let rows_secs = started.elapsed().as_secs_f64();
    sqlx::query("ANALYZE flows_rows").execute(&owner).await?;
    sqlx::query("ANALYZE flow_blocks").execute(&owner).await?;
    let stored: i64 = sqlx::query_scalar(STORED).fetch_one(&owner).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM flows_rows")
        .fetch_one(&owner)
        .await?;
    println!(
        "  {stored} flows in blocks ({blocks_secs:.0} s, {blocks_rate:.0} flows/s into the store), \
         {rows} in rows ({rows_secs:.0} s, server-side generate_series)"
    );

    // 3. Queries: ours vs hand-written, same page size, same tenant transaction.
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    println!(
        "query: {} filtered queries x {} runs (limit 100, newest first)",
        QUERIES.len(),
        sz.query_runs
    );
    println!("  {:<52} {:>9} {:>9}", "filter", "ours ms", "hand ms");
    for (q, hand) in QUERIES {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)?;
        let filter = FlowFilter::parse(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            Utc::now(),
        )
        .map_err(|e| anyhow::anyhow!("{q}: {e}"))?;
        let (mut o, mut h) = (Vec::new(), Vec::new());
        for _ in 0..sz.query_runs {
            let t = Instant::now();
            let rows = state.flows.query(tenant_id, &filter, None, 100).await?;
            o.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let n = hand_query(&app_pool, tenant_id, hand).await?;
            h.push(t.elapsed().as_secs_f64() * 1e3);
            if n != rows.len() {
                bail!("{q}: ours returned {} rows, hand-written {n}", rows.len());
            }
        }
        println!(
            "  {:<52} {:>9.2} {:>9.2}",
            q,
            median(&mut o),
            median(&mut h)
        );
        ours.extend(o);
        theirs.extend(h);
    }
    let (p50, p99) = (percentile(&mut ours, 0.50), percentile(&mut ours, 0.99));
    let (b50, b99) = (percentile(&mut theirs, 0.50), percentile(&mut theirs, 0.99));
    println!(
        "  ours p50 {p50:.2} ms, p99 {p99:.2} ms; hand-written p50 {b50:.2} ms, p99 {b99:.2} ms"
    );
    println!(
        "  ratios: p50 ours / hand {:.2}, p99 ours / hand {:.2}",
        p50 / b50,
        p99 / b99
    );

    let out = json!({
        "ingest_flows_per_s": ingest_rate.round(),
        "stored_flows": stored,
        "store_insert_flows_per_s": store_rate.round(),
        "rows_copy_flows_per_s": copy_rate.round(),
        "ingest_over_rows_copy": (ingest_rate / copy_rate * 100.0).round() / 100.0,
        "hand_rows_query_p50_ms": (b50 * 100.0).round() / 100.0,
        "hand_rows_query_p99_ms": (b99 * 100.0).round() / 100.0,
        "query_p50_ms": (p50 * 100.0).round() / 100.0,
        "query_p99_ms": (p99 * 100.0).round() / 100.0,
    });
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)?;
    println!("wrote {}", a.out.display());
    app_pool.close().await;
    owner.close().await;
    Ok(())
}

/// Filter (as a query string) and the same query written by hand.
const QUERIES: &[(&str, &str)] = &[
    ("", "true"),
    ("verdict=DROPPED", "verdict = 'DROPPED'"),
    ("from_endpoint=ep-1-7", "src_endpoint_name = 'ep-1-7'"),
    (
        "to_port=5432&protocol=tcp",
        "dst_port = 5432 AND protocol = 6",
    ),
    ("from_label=app%3Dapp-3", "src_labels->>'app' = 'app-3'"),
    (
        "to_ip=10.2.0.0/16&not_verdict=FORWARDED",
        "dst_ip <<= '10.2.0.0/16' AND verdict <> 'FORWARDED'",
    ),
    (
        "since=1h&drop_reason=POLICY_DENIED",
        "time >= now() - interval '1 hour' AND drop_reason = 'POLICY_DENIED'",
    ),
    (
        "tcp_flags=SYN,ACK&node=node-1",
        "tcp_flags & 18 = 18 AND node_name = 'node-1'",
    ),
];

/// The queried tenant's flows stored in blocks.
const STORED: &str = "SELECT coalesce(sum(flows), 0)::int8 FROM flow_blocks \
    WHERE tenant_id = (SELECT id FROM tenants WHERE name = 'bench')";

/// The baseline: one row per flow, with the indexes its queries needed (migration 0005),
/// walled per tenant like the blocks. Not partitioned: one table is the best case for it.
const ROWS_TABLE: &[&str] = &[
    "CREATE TABLE flows_rows (time timestamptz NOT NULL, \
       id bigint GENERATED ALWAYS AS IDENTITY, batch bigint NOT NULL, tenant_id uuid NOT NULL, \
       node_id uuid NOT NULL, node_name text NOT NULL, cluster_id uuid NOT NULL, \
       cluster_name text NOT NULL, src_ip inet NOT NULL, src_port integer NOT NULL, \
       src_endpoint_id uuid, src_endpoint_name text, src_identity bigint NOT NULL, \
       src_labels jsonb NOT NULL DEFAULT '{}', dst_ip inet NOT NULL, dst_port integer NOT NULL, \
       dst_endpoint_id uuid, dst_endpoint_name text, dst_identity bigint NOT NULL, \
       dst_labels jsonb NOT NULL DEFAULT '{}', service_id uuid, service_name text, \
       protocol smallint NOT NULL, verdict text NOT NULL, drop_reason text, \
       direction text NOT NULL, observation_point text NOT NULL, tcp_flags smallint NOT NULL, \
       bytes bigint NOT NULL, packets bigint NOT NULL, count bigint NOT NULL)",
    "CREATE INDEX ON flows_rows (tenant_id, time DESC, id DESC)",
    "CREATE INDEX ON flows_rows (tenant_id, verdict, time DESC)",
    "CREATE INDEX ON flows_rows (tenant_id, src_endpoint_name, time DESC)",
    "CREATE INDEX ON flows_rows (tenant_id, dst_endpoint_name, time DESC)",
    "ALTER TABLE flows_rows ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY tenant_isolation ON flows_rows USING (tenant_id = weft_tenant())",
    "GRANT SELECT ON flows_rows TO weft_app",
];

/// Synthetic rows spread evenly over the last 20 hours, oldest first: 50 endpoints per
/// node, 10 apps, mostly forwarded, some drops, a spread of ports and addresses.
const FILL_ROWS: &str = "INSERT INTO flows_rows (time, batch, tenant_id, node_id, node_name, cluster_id, \
    cluster_name, src_ip, src_port, src_endpoint_name, src_identity, src_labels, dst_ip, \
    dst_port, dst_endpoint_name, dst_identity, dst_labels, protocol, verdict, drop_reason, \
    direction, observation_point, tcp_flags, bytes, packets, count) \
  SELECT now() - interval '20 hours' * (1 - g::float8 / $6), 0, $1, $2, \
    'node-' || (g % 4), $3, 'prod', \
    ('10.' || (g % 4) || '.0.' || (g % 50 + 1))::inet, 30000 + g % 30000, \
    'ep-' || (g % 4) || '-' || (g % 50), 256 + g % 10, jsonb_build_object('app', 'app-' || (g % 10)), \
    ('10.' || ((g / 7) % 4) || '.0.' || ((g / 7) % 50 + 1))::inet, \
    (ARRAY[80, 443, 5432, 53, 8080])[1 + (g / 3) % 5], \
    'ep-' || ((g / 7) % 4) || '-' || ((g / 7) % 50), 256 + (g / 7) % 10, \
    jsonb_build_object('app', 'app-' || ((g / 7) % 10)), \
    CASE WHEN g % 5 = 3 THEN 17 ELSE 6 END, \
    CASE WHEN g % 50 = 0 THEN 'DROPPED' WHEN g % 97 = 0 THEN 'TRANSLATED' ELSE 'FORWARDED' END, \
    CASE WHEN g % 50 = 0 THEN (CASE WHEN g % 100 = 0 THEN 'POLICY_DENIED' ELSE 'CT_FULL' END) END, \
    'egress', 'endpoint-egress', (ARRAY[2, 18, 16, 17, 4])[1 + g % 5], 100 + g % 1400, 1, 1 \
  FROM generate_series($5::bigint + 1, $5::bigint + $4) g";
