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
use crate::metrics::LostLabels;
use crate::state::AppState;
use crate::store::endpoints::{self, EndpointWrite};
use crate::store::nodes;
use crate::store::probes::{self, ProbeResult};
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
    st.node_writes
        .acked
        .submit(nodes::Acked {
            node: node.id,
            tenant: node.tenant_id,
            applied: complete.then_some(revision),
            errors: serde_json::Value::Array(errors),
        })
        .await?;
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
        let row = nodes::tenant_name_and_applied(&mut tx, node.id).await?;
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
        nodes::add_flows_lost(&mut tx, node.id, i64::try_from(lost).unwrap_or(i64::MAX)).await?;
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
        "fqdn_addresses_evicted": req.fqdn_addresses_evicted,
    });
    let mut tx = st.pool.begin().await?;
    store::set_tenant(&mut tx, node.tenant_id).await?;
    let tenant = nodes::health(
        &mut tx,
        node.id,
        &req.agent_version,
        &req.kernel_version,
        health,
    )
    .await?;
    tx.commit().await?;
    // A series per node only once its agent evicted something (thousands of nodes that
    // never do stay out of the scrape).
    let evicted = i64::try_from(req.fqdn_addresses_evicted).unwrap_or(i64::MAX);
    let labels = LostLabels {
        tenant,
        node: node.name.clone(),
    };
    if evicted > 0 || st.metrics.fqdn_evicted.get(&labels).is_some() {
        st.metrics.fqdn_evicted.get_or_create(&labels).set(evicted);
    }
    Ok(())
}

/// An endpoint row as stored: id, name, labels, IPv4, IPv6, named ports.
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

/// The node's complete set of endpoints: new ones are added (with identities), changed
/// ones updated, absent ones removed. One revision bump when anything changed.
pub async fn endpoints(st: &AppState, node: &NodeCtx, report: EndpointReport) -> Result<()> {
    let reported = check(&report)?;
    let mut tx = st.pool.begin().await?;
    store::set_tenant(&mut tx, node.tenant_id).await?;
    let current = endpoints::lock_of_node(&mut tx, node.id).await?;
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
        let identity = endpoints::identity_for(&mut tx, node.tenant_id, &r.labels).await?;
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
        endpoints::upsert(
            &mut tx,
            EndpointWrite {
                id,
                tenant: node.tenant_id,
                cluster: node.cluster_id,
                node: node.id,
                name: &r.name,
                labels: &r.labels,
                ipv4: r.ipv4.map(|i| i.to_string()),
                ipv6: r.ipv6.map(|i| i.to_string()),
                identity,
                named_ports: &r.named_ports,
                revision: rev,
            },
        )
        .await?;
    }
    for (id, name, ..) in &current {
        if reported.iter().any(|r| r.name == *name) {
            continue;
        }
        changed = true;
        store::bump_revision(&mut tx, node.tenant_id, "endpoint", *id, Op::Delete).await?;
        endpoints::delete(&mut tx, *id).await?;
    }
    nodes::touch(&mut tx, node.id).await?;
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
        let updated = probes::record_result(
            &mut tx,
            node.id,
            id,
            ProbeResult {
                outcome: outcome.as_str(),
                detail,
                latency_us: i64::try_from(r.latency_us).unwrap_or(i64::MAX),
                reply_from: clip(&r.reply_from),
                http_status: r.http_status,
                dns_rcode: clip(&r.dns_rcode),
            },
        )
        .await?;
        if !updated {
            tracing::debug!(node = %node.name, %id, "result for no pending probe of this node ignored");
            continue;
        }
        let rev = store::bump_revision(&mut tx, node.tenant_id, "probe", id, Op::Update).await?;
        probes::set_revision(&mut tx, id, rev).await?;
        stored += 1;
    }
    tx.commit().await?;
    if stored > 0 {
        tracing::info!(node = %node.name, stored, reported = report.results.len(), "probe results stored");
    }
    Ok(())
}
