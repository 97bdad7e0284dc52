//! The benchmark's pieces: hand-written baselines (query, block fill, COPY), the synthetic
//! flow generator, calls through the real API, and statistics.

use super::*;

/// The same query written by hand over the row-per-flow table.
pub(crate) async fn hand_query(pool: &PgPool, tenant: Uuid, cond: &str) -> Result<usize> {
    let mut tx = pool.begin().await?;
    control_api::auth::set_tenant(&mut tx, tenant).await?;
    let rows = sqlx::query(&format!(
        "SELECT time, id, verdict, drop_reason, host(src_ip), src_port, src_endpoint_name, \
         src_identity, src_labels, host(dst_ip), dst_port, dst_endpoint_name, dst_identity, \
         dst_labels, protocol, node_name, cluster_name, service_name, direction, \
         observation_point, tcp_flags, bytes, packets, count FROM flows_rows \
         WHERE tenant_id = $1 AND {cond} ORDER BY time DESC, id DESC LIMIT 101"
    ))
    .bind(tenant)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Fills the block store with `fill` flows of [`FILL_ROWS`]'s distribution, oldest first,
/// as agents send them: each node's flows in batches of 1,000, 20 batches per write.
/// Returns the store's rate.
pub(crate) async fn fill_blocks(
    state: &control_api::state::AppState,
    owner: &PgPool,
    tenant: Uuid,
    fill: i64,
) -> Result<f64> {
    use control_api::flows::{NewFlow, NewPeer, Origin};
    let nodes: Vec<(Uuid, String, Uuid)> =
        sqlx::query_as("SELECT id, name, cluster_id FROM nodes WHERE tenant_id = $1 ORDER BY name")
            .bind(tenant)
            .fetch_all(owner)
            .await?;
    if nodes.len() != 4 {
        bail!("expected 4 nodes, found {}", nodes.len());
    }
    let origins: Vec<Origin> = nodes
        .into_iter()
        .map(|(node_id, node_name, cluster_id)| Origin {
            tenant_id: tenant,
            node_id,
            node_name,
            cluster_id,
            cluster_name: "prod".into(),
        })
        .collect();
    let apps: Vec<Arc<weft_model::labels::Labels>> = (0..10)
        .map(|a| Arc::new([("app".to_string(), format!("app-{a}"))].into()))
        .collect();
    let now = Utc::now();
    let span = chrono::Duration::hours(20);
    let flow = |g: i64| -> Result<NewFlow> {
        let d = g / 7;
        let dropped = g % 50 == 0;
        Ok(NewFlow {
            time: now - span + span * i32::try_from(g * 1000 / fill.max(1))? / 1000,
            src: NewPeer {
                ip: format!("10.{}.0.{}", g % 4, g % 50 + 1).parse()?,
                port: u16::try_from(30000 + g % 30000)?,
                endpoint_id: None,
                endpoint_name: Some(format!("ep-{}-{}", g % 4, g % 50)),
                identity: u32::try_from(256 + g % 10)?,
                labels: apps[(g % 10) as usize].clone(),
            },
            dst: NewPeer {
                ip: format!("10.{}.0.{}", d % 4, d % 50 + 1).parse()?,
                port: [80, 443, 5432, 53, 8080][((g / 3) % 5) as usize],
                endpoint_id: None,
                endpoint_name: Some(format!("ep-{}-{}", d % 4, d % 50)),
                identity: u32::try_from(256 + d % 10)?,
                labels: apps[(d % 10) as usize].clone(),
            },
            service_id: None,
            service_name: None,
            protocol: if g % 5 == 3 { 17 } else { 6 },
            verdict: if dropped {
                Verdict::Dropped
            } else if g % 97 == 0 {
                Verdict::Translated
            } else {
                Verdict::Forwarded
            },
            drop_reason: dropped.then_some(if g % 100 == 0 {
                DropReason::PolicyDenied
            } else {
                DropReason::CtFull
            }),
            direction: "egress".into(),
            observation_point: "endpoint-egress".into(),
            tcp_flags: [2, 18, 16, 17, 4][(g % 5) as usize],
            bytes: 100 + g % 1400,
            packets: 1,
            count: 1,
            l7: None,
        })
    };
    let mut pending: Vec<Vec<NewFlow>> = vec![Vec::new(); 4];
    let mut ready: Vec<(usize, Vec<NewFlow>)> = Vec::new();
    let mut spent = std::time::Duration::ZERO;
    for g in 1..=fill {
        let n = (g % 4) as usize;
        pending[n].push(flow(g)?);
        if pending[n].len() == 1000 || g == fill {
            for (i, p) in pending.iter_mut().enumerate() {
                if p.len() == 1000 || (g == fill && !p.is_empty()) {
                    ready.push((i, std::mem::take(p)));
                }
            }
        }
        if ready.len() >= 20 || (g == fill && !ready.is_empty()) {
            let batches: Vec<(&Origin, &[NewFlow])> = ready
                .iter()
                .map(|(i, f)| (&origins[*i], f.as_slice()))
                .collect();
            let t = Instant::now();
            state.flows.insert_batches(&batches).await?;
            spent += t.elapsed();
            ready.clear();
        }
    }
    Ok(fill as f64 / spent.as_secs_f64().max(1e-9))
}

/// Flow `i` of `total` an agent sends: in time order over the last minute, as agents
/// report what they saw (each batch a contiguous slice of time).
pub(crate) fn synthetic(i: usize, total: usize) -> Flow {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let minute = 60_000_000_000i64;
    Flow {
        time_unix_nanos: now - minute + minute * i as i64 / total.max(1) as i64,
        src_ip: format!("10.0.0.{}", i % 50 + 1),
        dst_ip: format!("10.{}.0.{}", (i / 7) % 4, (i / 7) % 50 + 1),
        src_port: 30000 + (i % 30000) as u32,
        dst_port: [80, 443, 5432, 53, 8080][(i / 3) % 5],
        proto: if i % 5 == 3 { 17 } else { 6 },
        verdict: if i.is_multiple_of(50) {
            "DROPPED"
        } else {
            "FORWARDED"
        }
        .into(),
        drop_reason: if i.is_multiple_of(50) {
            "POLICY_DENIED"
        } else {
            ""
        }
        .into(),
        direction: "egress".into(),
        tcp_flags: [2, 18, 16, 17, 4][i % 5],
        bytes: 100 + (i % 1400) as u64,
        packets: 1,
        observation_point: "endpoint-egress".into(),
        count: 1,
        ..Default::default()
    }
}

/// Raw COPY (text format) of the same enriched rows, `agents` connections in parallel.
pub(crate) async fn copy_baseline(
    url: &str,
    agents: usize,
    batches: usize,
    o: &control_api::flows::Origin,
    flows: &[control_api::flows::NewFlow],
) -> Result<f64> {
    let mut text = String::new();
    for f in flows {
        let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "\\N".into());
        let optu = |u: &Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_else(|| "\\N".into());
        let labels = |l: &std::sync::Arc<weft_model::labels::Labels>| {
            serde_json::to_string(&**l).unwrap_or_default()
        };
        let row = [
            f.time.to_rfc3339(),
            "0".into(),
            o.tenant_id.to_string(),
            o.node_id.to_string(),
            o.node_name.clone(),
            o.cluster_id.to_string(),
            o.cluster_name.clone(),
            f.src.ip.to_string(),
            f.src.port.to_string(),
            optu(&f.src.endpoint_id),
            opt(&f.src.endpoint_name),
            f.src.identity.to_string(),
            labels(&f.src.labels),
            f.dst.ip.to_string(),
            f.dst.port.to_string(),
            optu(&f.dst.endpoint_id),
            opt(&f.dst.endpoint_name),
            f.dst.identity.to_string(),
            labels(&f.dst.labels),
            optu(&f.service_id),
            opt(&f.service_name),
            f.protocol.to_string(),
            f.verdict.as_str().into(),
            f.drop_reason
                .map(|r| r.as_str().to_string())
                .unwrap_or_else(|| "\\N".into()),
            f.direction.clone(),
            f.observation_point.clone(),
            f.tcp_flags.to_string(),
            f.bytes.to_string(),
            f.packets.to_string(),
            f.count.to_string(),
        ];
        text.push_str(&row.join("\t"));
        text.push('\n');
    }
    let text = Arc::new(text);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..agents {
        let (url, text) = (url.to_string(), text.clone());
        tasks.push(tokio::spawn(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            for _ in 0..batches {
                let mut copy = conn
                    .copy_in_raw(
                        "COPY flows_rows (time, batch, tenant_id, node_id, node_name, cluster_id, \
                         cluster_name, src_ip, src_port, src_endpoint_id, src_endpoint_name, \
                         src_identity, src_labels, dst_ip, dst_port, dst_endpoint_id, \
                         dst_endpoint_name, dst_identity, dst_labels, service_id, service_name, \
                         protocol, verdict, drop_reason, direction, observation_point, \
                         tcp_flags, bytes, packets, count) FROM STDIN",
                    )
                    .await?;
                copy.send(text.as_bytes()).await?;
                copy.finish().await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((agents * batches * flows.len()) as f64 / started.elapsed().as_secs_f64())
}
