//! What agents report: applied revisions, health, the endpoints they run, probe results.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;
use weft_model::error::FieldError;
use weft_model::labels::{validate_labels, Labels};
use weft_model::names::validate_name;
use weft_model::policy::NamedPort;
use weft_model::workload::ProbeOutcome;
use weft_proto::v1::{
    self as pb, AckRequest, EndpointReport, FlowBatch, HealthReport, ProbeReport,
};

use super::NodeCtx;
use crate::error::{ApiError, Result};
use crate::state::AppState;
use crate::store::{self, Op};

pub async fn ack(st: &AppState, node: &NodeCtx, req: AckRequest) -> Result<()> {
    let revision = i64::try_from(req.revision)
        .map_err(|_| ApiError::invalid_field("revision", "out of range"))?;
    let errors: Vec<_> = req
        .errors
        .iter()
        .map(|e| serde_json::json!({"item": e.item, "message": e.message}))
        .collect();
    // A revision with items the node could not program is not realized there: the errors
    // are recorded, the applied revision stays where it was (the node retries them).
    let complete = errors.is_empty();
    let mut tx = st.pool.begin().await?;
    store::set_tenant(&mut tx, node.tenant_id).await?;
    sqlx::query(
        "UPDATE nodes SET applied_revision = CASE WHEN $4 THEN greatest(applied_revision, $2) \
         ELSE applied_revision END, last_seen = now(), \
         health = jsonb_set(health, '{apply_errors}', $3) WHERE id = $1",
    )
    .bind(node.id)
    .bind(revision)
    .bind(serde_json::Value::Array(errors))
    .bind(complete)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if complete {
        st.metrics.sync_lag.acked(node.id, revision);
    }
    Ok(())
}

/// Starts counting a `Sync` stream's unacknowledged pushes in the sync-lag metrics, from
/// what the node has acknowledged so far.
pub async fn sync_lag_stream<'a>(
    st: &'a AppState,
    node: &NodeCtx,
) -> crate::metrics::SyncLagStream<'a> {
    let res = async {
        let mut tx = st.pool.begin().await?;
        store::set_tenant(&mut tx, node.tenant_id).await?;
        let row: (String, i64) = sqlx::query_as(
            "SELECT t.name, n.applied_revision FROM nodes n JOIN tenants t ON t.id = n.tenant_id \
             WHERE n.id = $1",
        )
        .bind(node.id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, ApiError>(row)
    }
    .await;
    let (tenant, acked) = res.unwrap_or_else(|e| {
        // Only the metric's label suffers: the tenant id stands in for its name.
        tracing::warn!(node = %node.name, error = %e, "could not read the node's tenant name");
        (node.tenant_id.to_string(), 0)
    });
    st.metrics.sync_lag.open(node.id, tenant, acked)
}

/// A batch handed to the flow writer, with what to count once it is stored.
pub struct QueuedFlows {
    pending: crate::flows::writer::Pending,
    processed: HashMap<(&'static str, String), u64>,
    drops: HashMap<(&'static str, String), u64>,
}

impl QueuedFlows {
    /// Waits until the batch is committed, then counts it.
    pub async fn stored(self, st: &AppState, tenant_name: &str) -> Result<()> {
        use crate::metrics::{DropLabels, FlowLabels};
        self.pending.stored().await?;
        for ((verdict, protocol), n) in self.processed {
            st.metrics
                .flows_processed
                .get_or_create(&FlowLabels {
                    tenant: tenant_name.to_string(),
                    verdict: verdict.to_string(),
                    protocol,
                })
                .inc_by(n);
        }
        for ((reason, protocol), n) in self.drops {
            st.metrics
                .drops
                .get_or_create(&DropLabels {
                    tenant: tenant_name.to_string(),
                    reason: reason.to_string(),
                    protocol,
                })
                .inc_by(n);
        }
        Ok(())
    }
}

/// Enriches one batch of flows and queues it for storage (waiting while the queue is
/// full), and accumulates what the agent lost (in `weft_flows_lost_total` and the node's
/// `health.flows_lost`).
pub async fn flows(
    st: &AppState,
    node: &NodeCtx,
    origin: &Arc<crate::flows::Origin>,
    tenant_name: &str,
    batch: &FlowBatch,
) -> Result<QueuedFlows> {
    use crate::metrics::LostLabels;
    let enriched =
        crate::flows::ingest::enrich(&st.pool, &st.enrich_cache, node.tenant_id, batch).await?;
    if enriched.invalid > 0 {
        tracing::warn!(node = %node.name, records = enriched.invalid,
            "flow records with unparseable addresses or ids; counted as lost");
    }
    // Counted per batch, not per flow: one label set per (verdict, protocol) seen.
    let mut processed: HashMap<(&'static str, String), u64> = HashMap::new();
    let mut drops: HashMap<(&'static str, String), u64> = HashMap::new();
    for f in &enriched.flows {
        let protocol = weft_model::flow::Protocol::from_number(u32::from(f.protocol)).name();
        if let Some(r) = f.drop_reason {
            *drops.entry((r.as_str(), protocol.clone())).or_default() += 1;
        }
        *processed.entry((f.verdict.as_str(), protocol)).or_default() += 1;
    }
    let pending = st
        .flow_writer
        .submit(origin.clone(), enriched.flows)
        .await?;
    let lost = batch.lost.saturating_add(enriched.invalid);
    if lost > 0 {
        st.metrics
            .flows_lost
            .get_or_create(&LostLabels {
                tenant: tenant_name.to_string(),
                node: node.name.clone(),
            })
            .inc_by(lost);
        let mut tx = st.pool.begin().await?;
        store::set_tenant(&mut tx, node.tenant_id).await?;
        sqlx::query(
            "UPDATE nodes SET health = jsonb_set(health, '{flows_lost}', \
               to_jsonb(coalesce((health->>'flows_lost')::bigint, 0) + $2)) WHERE id = $1",
        )
        .bind(node.id)
        .bind(i64::try_from(lost).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(QueuedFlows {
        pending,
        processed,
        drops,
    })
}

pub async fn health(st: &AppState, node: &NodeCtx, req: HealthReport) -> Result<()> {
    let health = serde_json::json!({
        "datapath_status": req.datapath_status,
        "map_fill": req.map_fill.iter().collect::<BTreeMap<_, _>>(),
        "lost_events": req.lost_events,
        "last_error": req.last_error,
    });
    let mut tx = st.pool.begin().await?;
    store::set_tenant(&mut tx, node.tenant_id).await?;
    sqlx::query(
        "UPDATE nodes SET agent_version = $2, kernel_version = $3, last_seen = now(), \
         health = $4 || jsonb_build_object('apply_errors', coalesce(health->'apply_errors', '[]'::jsonb), \
                                           'flows_lost', coalesce(health->'flows_lost', '0'::jsonb)) \
         WHERE id = $1",
    )
    .bind(node.id)
    .bind(&req.agent_version)
    .bind(&req.kernel_version)
    .bind(health)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// An endpoint row as stored: id, name, labels, IPv4, IPv6, named ports.
type StoredEndpoint = (
    Uuid,
    String,
    sqlx::types::Json<Labels>,
    Option<String>,
    Option<String>,
    sqlx::types::Json<Vec<NamedPort>>,
);

struct Reported {
    name: String,
    labels: Labels,
    ipv4: Option<IpAddr>,
    ipv6: Option<IpAddr>,
    named_ports: Vec<NamedPort>,
}

fn check(report: &EndpointReport) -> Result<Vec<Reported>> {
    let mut errs = Vec::new();
    let mut out = Vec::new();
    for (i, e) in report.endpoints.iter().enumerate() {
        if let Err(err) = validate_name(&e.name) {
            errs.push(FieldError::new(
                format!("endpoints[{i}].name"),
                err.to_string(),
            ));
        }
        let labels: Labels = e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Err(mut le) = validate_labels(&labels) {
            errs.append(&mut le);
        }
        let (mut ipv4, mut ipv6) = (None, None);
        for ip in &e.ips {
            match ip.parse::<IpAddr>() {
                Ok(ip @ IpAddr::V4(_)) => ipv4 = Some(ip),
                Ok(ip @ IpAddr::V6(_)) => ipv6 = Some(ip),
                Err(_) => errs.push(FieldError::new(
                    format!("endpoints[{i}].ips"),
                    format!("{ip:?} is not an IP address"),
                )),
            }
        }
        let mut named_ports = Vec::new();
        for (j, p) in e.named_ports.iter().enumerate() {
            let proto = match p.proto {
                6 => "TCP",
                17 => "UDP",
                132 => "SCTP",
                _ => "?",
            };
            match format!("{}={}/{proto}", p.name, p.port).parse::<NamedPort>() {
                Ok(np) => named_ports.push(np),
                Err(why) => errs.push(FieldError::new(
                    format!("endpoints[{i}].named_ports[{j}]"),
                    why,
                )),
            }
        }
        named_ports.sort();
        named_ports.dedup();
        out.push(Reported {
            name: e.name.clone(),
            labels,
            ipv4,
            ipv6,
            named_ports,
        });
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::validation(errs))
    }
}

/// Same label set, same number, across every cluster of the tenant. Numbers start at
/// 256 (below are reserved); allocation is serialised per tenant by an advisory lock.
pub async fn identity_for(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    labels: &Labels,
) -> Result<i64> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 42))")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let number: i64 = sqlx::query_scalar(
        "INSERT INTO identities (tenant_id, number, labels) \
         SELECT $1, coalesce(max(number), 255) + 1, $2 FROM identities WHERE tenant_id = $1 \
         ON CONFLICT (tenant_id, labels) DO UPDATE SET last_used_at = now() RETURNING number",
    )
    .bind(tenant)
    .bind(sqlx::types::Json(labels))
    .fetch_one(&mut *tx)
    .await?;
    Ok(number)
}

/// The node's complete set of endpoints: new ones are added (with identities), changed
/// ones updated, absent ones removed. One revision bump when anything changed.
pub async fn endpoints(st: &AppState, node: &NodeCtx, report: EndpointReport) -> Result<()> {
    let reported = check(&report)?;
    let mut tx = st.pool.begin().await?;
    store::set_tenant(&mut tx, node.tenant_id).await?;
    let current: Vec<StoredEndpoint> =
        sqlx::query_as(
            "SELECT id, name, labels, host(ipv4), host(ipv6), named_ports FROM endpoints WHERE node_id = $1 FOR UPDATE",
        )
        .bind(node.id)
        .fetch_all(&mut *tx)
        .await?;
    let mut changed = false;
    for r in &reported {
        let same = current.iter().any(|(_, name, labels, v4, v6, ports)| {
            *name == r.name
                && labels.0 == r.labels
                && ports.0 == r.named_ports
                && v4.as_deref() == r.ipv4.map(|i| i.to_string()).as_deref()
                && v6.as_deref() == r.ipv6.map(|i| i.to_string()).as_deref()
        });
        if same {
            continue;
        }
        changed = true;
        let identity = identity_for(&mut tx, node.tenant_id, &r.labels).await?;
        let id = current
            .iter()
            .find(|(_, name, ..)| *name == r.name)
            .map(|(id, ..)| *id)
            .unwrap_or_else(Uuid::now_v7);
        let op = if current.iter().any(|(cid, ..)| *cid == id) {
            Op::Update
        } else {
            Op::Create
        };
        let rev = store::bump_revision(&mut tx, node.tenant_id, "endpoint", id, op).await?;
        sqlx::query(
            "INSERT INTO endpoints (id, tenant_id, cluster_id, node_id, name, labels, ipv4, ipv6, identity, revision, named_ports) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::inet, $8::inet, $9, $10, $11) \
             ON CONFLICT (id) DO UPDATE SET labels = $6, ipv4 = $7::inet, ipv6 = $8::inet, \
               identity = $9, revision = $10, named_ports = $11, updated_at = now()",
        )
        .bind(id)
        .bind(node.tenant_id)
        .bind(node.cluster_id)
        .bind(node.id)
        .bind(&r.name)
        .bind(sqlx::types::Json(&r.labels))
        .bind(r.ipv4.map(|i| i.to_string()))
        .bind(r.ipv6.map(|i| i.to_string()))
        .bind(identity)
        .bind(rev)
        .bind(sqlx::types::Json(&r.named_ports))
        .execute(&mut *tx)
        .await?;
    }
    for (id, name, ..) in &current {
        if reported.iter().any(|r| r.name == *name) {
            continue;
        }
        changed = true;
        store::bump_revision(&mut tx, node.tenant_id, "endpoint", *id, Op::Delete).await?;
        sqlx::query("DELETE FROM endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("UPDATE nodes SET last_seen = now() WHERE id = $1")
        .bind(node.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    if changed {
        tracing::info!(node = %node.name, endpoints = reported.len(), "endpoints reported");
    }
    Ok(())
}

/// Longest probe `detail` / `reply_from` kept (an agent's text, stored as given otherwise).
const MAX_PROBE_TEXT: usize = 1024;

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_PROBE_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Stores the results of the node's own pending probes; each leaves the node's desired
/// state (one change each). Unknown ids, other nodes' probes and repeated results are
/// ignored, never refused: an agent must not retry a report forever.
pub async fn probes(st: &AppState, node: &NodeCtx, report: ProbeReport) -> Result<()> {
    let mut tx = st.pool.begin().await?;
    store::set_tenant(&mut tx, node.tenant_id).await?;
    let mut stored = 0usize;
    for r in &report.results {
        let Ok(id) = Uuid::parse_str(&r.id) else {
            tracing::debug!(node = %node.name, id = %r.id, "probe result for a malformed id ignored");
            continue;
        };
        let (outcome, detail) = match pb::ProbeOutcome::try_from(r.outcome) {
            Ok(pb::ProbeOutcome::Connected) => (ProbeOutcome::Connected, clip(&r.detail)),
            Ok(pb::ProbeOutcome::Refused) => (ProbeOutcome::Refused, clip(&r.detail)),
            Ok(pb::ProbeOutcome::Timeout) => (ProbeOutcome::Timeout, clip(&r.detail)),
            Ok(pb::ProbeOutcome::Error) => (ProbeOutcome::Error, clip(&r.detail)),
            Ok(pb::ProbeOutcome::Unspecified) | Err(_) => (
                ProbeOutcome::Error,
                format!("the agent reported no known outcome ({})", r.outcome),
            ),
        };
        let updated: Option<Uuid> = sqlx::query_scalar(
            "UPDATE probes SET outcome = $3, detail = $4, latency_us = $5,              reply_from = nullif($6, ''), finished_at = now()              WHERE id = $1 AND node_id = $2 AND outcome IS NULL RETURNING id",
        )
        .bind(id)
        .bind(node.id)
        .bind(outcome.as_str())
        .bind(detail)
        .bind(i64::try_from(r.latency_us).unwrap_or(i64::MAX))
        .bind(clip(&r.reply_from))
        .fetch_optional(&mut *tx)
        .await?;
        if updated.is_none() {
            tracing::debug!(node = %node.name, %id, "result for no pending probe of this node ignored");
            continue;
        }
        let rev = store::bump_revision(&mut tx, node.tenant_id, "probe", id, Op::Update).await?;
        sqlx::query("UPDATE probes SET revision = $2 WHERE id = $1")
            .bind(id)
            .bind(rev)
            .execute(&mut *tx)
            .await?;
        stored += 1;
    }
    tx.commit().await?;
    if stored > 0 {
        tracing::info!(node = %node.name, stored, reported = report.results.len(), "probe results stored");
    }
    Ok(())
}
