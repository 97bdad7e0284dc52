//! Turning an agent's `FlowBatch` into stored flows: checked, named and labelled from the
//! tenant's desired state with a handful of queries per batch (never one per flow), then
//! written in one statement.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;
use weft_model::flow::{DropReason, Protocol, Verdict};
use weft_model::identity;
use weft_model::labels::Labels;
use weft_proto::v1::{Flow, FlowBatch};

use super::{NewFlow, NewPeer, Origin};
use crate::auth::set_tenant;
use crate::error::Result;

/// The node a stream comes from, with the names stored beside each flow; looked up once
/// per `ReportFlows` stream, under the node's tenant.
pub async fn origin(pool: &PgPool, node: &crate::agent::NodeCtx) -> Result<(Origin, String)> {
    let mut tx = pool.begin().await?;
    set_tenant(&mut tx, node.tenant_id).await?;
    let (cluster_name, tenant_name): (String, String) = sqlx::query_as(
        "SELECT c.name, t.name FROM clusters c JOIN tenants t ON t.id = c.tenant_id \
         WHERE c.id = $1",
    )
    .bind(node.cluster_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        Origin {
            tenant_id: node.tenant_id,
            node_id: node.id,
            node_name: node.name.clone(),
            cluster_id: node.cluster_id,
            cluster_name,
        },
        tenant_name,
    ))
}

#[derive(Debug, Clone)]
struct Endpoint {
    id: Uuid,
    name: String,
    identity: Option<u32>,
}

/// What one batch refers to, looked up once: the cache for the batch.
#[derive(Default)]
struct Lookup {
    by_id: HashMap<Uuid, Endpoint>,
    by_ip: HashMap<IpAddr, Endpoint>,
    identities: HashMap<u32, Labels>,
    services: HashMap<Uuid, String>,
}

/// A flow as received, its fields parsed.
struct Parsed<'a> {
    raw: &'a Flow,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    src_port: u16,
    dst_port: u16,
    src_ep: Option<Uuid>,
    dst_ep: Option<Uuid>,
    service: Option<Uuid>,
}

fn parse(f: &Flow) -> Option<Parsed<'_>> {
    let id = |s: &str| {
        if s.is_empty() {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    Some(Parsed {
        raw: f,
        src_ip: f.src_ip.parse().ok()?,
        dst_ip: f.dst_ip.parse().ok()?,
        src_port: u16::try_from(f.src_port).ok()?,
        dst_port: u16::try_from(f.dst_port).ok()?,
        src_ep: id(&f.src_endpoint)?,
        dst_ep: id(&f.dst_endpoint)?,
        service: id(&f.service)?,
    })
}

/// Labels shown for a reserved identity (Cilium's `reserved:` source).
fn reserved_labels(n: u32) -> Labels {
    let name = match n {
        identity::HOST => "host",
        identity::WORLD => "world",
        identity::UNMANAGED => "unmanaged",
        identity::HEALTH => "health",
        identity::INIT => "init",
        identity::REMOTE_NODE => "remote-node",
        identity::KUBE_APISERVER => "kube-apiserver",
        identity::INGRESS => "ingress",
        _ => return Labels::new(),
    };
    [(format!("reserved:{name}"), String::new())].into()
}

/// The enriched flows of a batch, and how many records were unusable (bad addresses or
/// ids: counted with the lost events, never silently dropped).
pub struct Enriched {
    pub flows: Vec<NewFlow>,
    pub invalid: u64,
}

/// Parses and enriches a batch within the node's tenant. Agent clocks are trusted within
/// a day back and an hour ahead; outside that (no partition may exist) the receive time
/// is used.
pub async fn enrich(pool: &PgPool, tenant: Uuid, batch: &FlowBatch) -> Result<Enriched> {
    let parsed: Vec<Parsed<'_>> = batch.flows.iter().filter_map(parse).collect();
    let invalid = (batch.flows.len() - parsed.len()) as u64;
    let lookup = look_up(pool, tenant, &parsed).await?;
    let now = Utc::now();
    let flows = parsed
        .iter()
        .map(|p| {
            let f = p.raw;
            let time = DateTime::from_timestamp_nanos(f.time_unix_nanos);
            let time = if time < now - Duration::hours(24) || time > now + Duration::hours(1) {
                now
            } else {
                time
            };
            let verdict = Verdict::from_agent(&f.verdict);
            let drop_reason = if verdict == Verdict::Dropped {
                Some(DropReason::from_agent(&f.drop_reason).unwrap_or(DropReason::Unknown))
            } else {
                None
            };
            NewFlow {
                time,
                src: peer(&lookup, p.src_ip, p.src_port, p.src_ep, f.src_identity),
                dst: peer(&lookup, p.dst_ip, p.dst_port, p.dst_ep, f.dst_identity),
                service_id: p.service.filter(|s| lookup.services.contains_key(s)),
                service_name: p.service.and_then(|s| lookup.services.get(&s).cloned()),
                protocol: Protocol::from_number(f.proto).number(),
                verdict,
                drop_reason,
                direction: f.direction.to_ascii_lowercase(),
                observation_point: f.observation_point.clone(),
                tcp_flags: (f.tcp_flags & 0x3f) as u8,
                bytes: i64::try_from(f.bytes).unwrap_or(i64::MAX),
                packets: i64::try_from(f.packets).unwrap_or(i64::MAX),
                count: i64::from(f.count.max(1)),
            }
        })
        .collect();
    Ok(Enriched { flows, invalid })
}

fn peer(l: &Lookup, ip: IpAddr, port: u16, ep: Option<Uuid>, identity: u32) -> NewPeer {
    // An endpoint id of another tenant, or a stale one, is simply unknown here (RLS).
    let endpoint = ep
        .and_then(|id| l.by_id.get(&id))
        .or_else(|| l.by_ip.get(&ip));
    let identity = match (identity, endpoint.and_then(|e| e.identity)) {
        (0, Some(known)) => known,
        (n, _) => n,
    };
    let labels = if identity::is_allocated(identity) {
        l.identities.get(&identity).cloned().unwrap_or_default()
    } else {
        reserved_labels(identity)
    };
    NewPeer {
        ip,
        port,
        endpoint_id: endpoint.map(|e| e.id),
        endpoint_name: endpoint.map(|e| e.name.clone()),
        identity,
        labels,
    }
}

type EndpointRow = (Uuid, String, Option<String>, Option<String>, Option<i64>);

async fn look_up(pool: &PgPool, tenant: Uuid, flows: &[Parsed<'_>]) -> Result<Lookup> {
    let mut ids = HashSet::new();
    let mut ips = HashSet::new();
    let mut services = HashSet::new();
    let mut identities: HashSet<i64> = HashSet::new();
    for p in flows {
        ids.extend(p.src_ep);
        ids.extend(p.dst_ep);
        ips.insert(p.src_ip);
        ips.insert(p.dst_ip);
        services.extend(p.service);
        for n in [p.raw.src_identity, p.raw.dst_identity] {
            if identity::is_allocated(n) {
                identities.insert(i64::from(n));
            }
        }
    }
    let mut out = Lookup::default();
    if flows.is_empty() {
        return Ok(out);
    }
    let mut tx = pool.begin().await?;
    set_tenant(&mut tx, tenant).await?;
    let ids: Vec<Uuid> = ids.into_iter().collect();
    let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    let rows: Vec<EndpointRow> = sqlx::query_as(
        "SELECT id, name, host(ipv4), host(ipv6), identity FROM endpoints \
         WHERE tenant_id = $1 AND (id = ANY($2) OR ipv4 = ANY($3::inet[]) OR ipv6 = ANY($3::inet[]))",
    )
    .bind(tenant)
    .bind(&ids)
    .bind(&ips)
    .fetch_all(&mut *tx)
    .await?;
    for (id, name, v4, v6, ident) in rows {
        let ep = Endpoint {
            id,
            name,
            identity: ident.and_then(|n| u32::try_from(n).ok()),
        };
        if let Some(n) = ep.identity.filter(|&n| identity::is_allocated(n)) {
            identities.insert(i64::from(n));
        }
        for ip in [v4, v6].into_iter().flatten() {
            if let Ok(ip) = ip.parse() {
                out.by_ip.insert(ip, ep.clone());
            }
        }
        out.by_id.insert(id, ep);
    }
    let identities: Vec<i64> = identities.into_iter().collect();
    if !identities.is_empty() {
        let rows: Vec<(i64, Json<Labels>)> = sqlx::query_as(
            "SELECT number, labels FROM identities WHERE tenant_id = $1 AND number = ANY($2)",
        )
        .bind(tenant)
        .bind(&identities)
        .fetch_all(&mut *tx)
        .await?;
        for (n, labels) in rows {
            if let Ok(n) = u32::try_from(n) {
                out.identities.insert(n, labels.0);
            }
        }
    }
    let services: Vec<Uuid> = services.into_iter().collect();
    if !services.is_empty() {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, name FROM services WHERE tenant_id = $1 AND id = ANY($2)")
                .bind(tenant)
                .bind(&services)
                .fetch_all(&mut *tx)
                .await?;
        out.services.extend(rows);
    }
    tx.commit().await?;
    Ok(out)
}
