//! The Postgres flow store: one multi-row `INSERT … SELECT FROM unnest(…)` per batch
//! (arrays bound per column), queries translated from [`FlowFilter`] with bind parameters
//! only, and the service map aggregated in SQL.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;
use weft_model::flow::{Criterion, FlowFilter, FlowRecord, Peer, Protocol, Side, TcpFlags};
use weft_model::labels::Labels;
use weft_model::selector::{normalize_selector_key, LabelSelector, SelectorOperator};

use super::{Cursor, FlowStore, MapEdge, MapNode, NewFlow, Notice, Origin, ServiceMap};
use crate::auth::set_tenant;
use crate::error::{ApiError, Result};

pub struct PgFlowStore {
    pool: PgPool,
}

impl PgFlowStore {
    /// Over the API's pool (the `weft_app` role: row-level security applies).
    pub fn new(pool: PgPool) -> Self {
        PgFlowStore { pool }
    }
}

/// Columns read back into a [`FlowRecord`].
const SELECT: &str = "SELECT time, id, verdict, drop_reason, \
    host(src_ip) AS src_ip, src_port, src_endpoint_name, src_identity, src_labels, \
    host(dst_ip) AS dst_ip, dst_port, dst_endpoint_name, dst_identity, dst_labels, \
    protocol, node_name, cluster_name, service_name, direction, observation_point, \
    tcp_flags, bytes, packets, count FROM flows";

#[derive(FromRow)]
struct Row {
    time: DateTime<Utc>,
    id: i64,
    verdict: String,
    drop_reason: Option<String>,
    src_ip: String,
    src_port: i32,
    src_endpoint_name: Option<String>,
    src_identity: i64,
    src_labels: Json<Labels>,
    dst_ip: String,
    dst_port: i32,
    dst_endpoint_name: Option<String>,
    dst_identity: i64,
    dst_labels: Json<Labels>,
    protocol: i16,
    node_name: String,
    cluster_name: String,
    service_name: Option<String>,
    direction: String,
    observation_point: String,
    tcp_flags: i16,
    bytes: i64,
    packets: i64,
    count: i64,
}

impl Row {
    fn into_record(self) -> Result<(FlowRecord, Cursor)> {
        let bad =
            |what: &str| ApiError::Internal(anyhow::anyhow!("stored flow {}: {what}", self.id));
        let peer =
            |ip: &str, port: i32, endpoint: Option<String>, identity: i64, labels: Labels| {
                Ok::<_, ApiError>(Peer {
                    endpoint,
                    identity: u32::try_from(identity).map_err(|_| bad("identity"))?,
                    labels,
                    ip: ip.parse().map_err(|_| bad("ip"))?,
                    port: u16::try_from(port).map_err(|_| bad("port"))?,
                })
            };
        let record = FlowRecord {
            time: self.time,
            verdict: self.verdict.parse().map_err(|_| bad("verdict"))?,
            drop_reason: self
                .drop_reason
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|_| bad("drop_reason"))?,
            source: peer(
                &self.src_ip,
                self.src_port,
                self.src_endpoint_name.clone(),
                self.src_identity,
                self.src_labels.0.clone(),
            )?,
            destination: peer(
                &self.dst_ip,
                self.dst_port,
                self.dst_endpoint_name.clone(),
                self.dst_identity,
                self.dst_labels.0.clone(),
            )?,
            protocol: Protocol::from_number(u32::from(self.protocol as u8)),
            node: self.node_name.clone(),
            cluster: self.cluster_name.clone(),
            service: self.service_name.clone(),
            direction: self.direction.clone(),
            observation_point: self.observation_point.clone(),
            tcp_flags: TcpFlags(self.tcp_flags as u8),
            bytes: self.bytes.unsigned_abs(),
            packets: self.packets.unsigned_abs(),
            count: self.count.unsigned_abs(),
        };
        Ok((
            record,
            Cursor {
                time: self.time,
                id: self.id,
            },
        ))
    }
}

/// The first window a list reads: the newest second before its start.
const FIRST_WINDOW: chrono::TimeDelta = chrono::TimeDelta::seconds(1);
/// Each next window is this many times as long as the one before.
const WINDOW_GROWTH: i32 = 4;
/// Windows longer than this end the walk: the last one is open towards the past.
const LAST_WINDOW: chrono::TimeDelta = chrono::TimeDelta::days(2);

/// The time windows a list walks, newest first: `[lo, hi)`, `None` meaning unbounded.
/// The first is open towards the future (agents' clocks may run ahead), the last towards
/// the past, so together they cover every row exactly once; the filter's own `since` and
/// `until` still apply inside each. With only BRIN indexes on `flows`, a window costs the
/// rows stored in it: starting small and growing geometrically reads at most a few times
/// the rows a page needs for common filters, and ends in about ten windows for rare ones.
#[derive(Debug)]
pub struct Windows {
    hi: Option<Option<DateTime<Utc>>>,
    lo: DateTime<Utc>,
    width: chrono::TimeDelta,
    since: Option<DateTime<Utc>>,
}

impl Windows {
    pub fn new(now: DateTime<Utc>, filter: &FlowFilter, after: Option<Cursor>) -> Windows {
        let start = [Some(now), filter.until, after.map(|c| c.time)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        Windows {
            hi: Some(None),
            lo: start - FIRST_WINDOW,
            width: FIRST_WINDOW,
            since: filter.since,
        }
    }
}

impl Iterator for Windows {
    type Item = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

    fn next(&mut self) -> Option<Self::Item> {
        let hi = self.hi.take()?;
        let last = self.width > LAST_WINDOW || self.since.is_some_and(|s| self.lo <= s);
        if last {
            return Some((None, hi));
        }
        let lo = self.lo;
        self.hi = Some(Some(lo));
        self.width = self.width * WINDOW_GROWTH;
        self.lo = lo - self.width;
        Some((Some(lo), hi))
    }
}

/// Appends ` AND <filter>` for every part of the filter. Values are always bound.
pub fn push_filter(qb: &mut QueryBuilder<'_, Postgres>, f: &FlowFilter) {
    if let Some(s) = f.since {
        qb.push(" AND time >= ").push_bind(s);
    }
    if let Some(u) = f.until {
        qb.push(" AND time < ").push_bind(u);
    }
    for c in &f.include {
        // NULL rejects the row like false here; left bare, the condition can use indexes.
        qb.push(" AND (");
        push_criterion(qb, c);
        qb.push(")");
    }
    for c in &f.exclude {
        // Under NOT, NULL must count as "did not match" (as in memory).
        qb.push(" AND NOT coalesce((");
        push_criterion(qb, c);
        qb.push("), false)");
    }
}

/// One criterion as a boolean (NULL where a column is NULL: the caller decides).
fn push_criterion(qb: &mut QueryBuilder<'_, Postgres>, c: &Criterion) {
    match c {
        Criterion::Label(side, sels) => per_side(qb, *side, |qb, p| {
            qb.push("(false");
            for s in sels {
                qb.push(" OR ");
                push_selector(qb, &format!("{p}_labels"), s);
            }
            qb.push(")");
        }),
        Criterion::Identity(side, ids) => per_side(qb, *side, |qb, p| {
            let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
            qb.push(format!("{p}_identity = ANY("))
                .push_bind(ids)
                .push(")");
        }),
        Criterion::Endpoint(side, names) => per_side(qb, *side, |qb, p| {
            push_in(qb, &format!("{p}_endpoint_name"), names);
        }),
        Criterion::Ip(side, nets) => per_side(qb, *side, |qb, p| {
            let nets: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            qb.push(format!("{p}_ip <<= ANY("))
                .push_bind(nets)
                .push("::inet[])");
        }),
        Criterion::Port(side, ports) => per_side(qb, *side, |qb, p| {
            let ports: Vec<i32> = ports.iter().map(|&p| i32::from(p)).collect();
            qb.push(format!("{p}_port = ANY("))
                .push_bind(ports)
                .push(")");
        }),
        Criterion::Protocol(ps) => {
            let ps: Vec<i16> = ps.iter().map(|p| i16::from(p.number())).collect();
            qb.push("protocol = ANY(").push_bind(ps).push(")");
        }
        Criterion::Verdict(vs) => {
            let vs: Vec<String> = vs.iter().map(|v| v.as_str().to_string()).collect();
            push_in(qb, "verdict", &vs);
        }
        Criterion::DropReason(rs) => {
            let rs: Vec<String> = rs.iter().map(|r| r.as_str().to_string()).collect();
            qb.push("drop_reason = ANY(").push_bind(rs).push(")");
        }
        Criterion::Node(ns) => {
            qb.push("node_name = ANY(").push_bind(ns.clone()).push(")");
        }
        Criterion::Cluster(cs) => {
            qb.push("cluster_name = ANY(")
                .push_bind(cs.clone())
                .push(")");
        }
        Criterion::Service(ss) => {
            qb.push("service_name = ANY(")
                .push_bind(ss.clone())
                .push(")");
        }
        Criterion::TcpFlags(fs) => {
            qb.push("(false");
            for f in fs {
                let m = i16::from(f.0);
                qb.push(" OR tcp_flags & ")
                    .push_bind(m)
                    .push(" = ")
                    .push_bind(m);
            }
            qb.push(")");
        }
    }
}

/// `column = $1` for one value (an index walks it in time order), `= ANY($1)` for more.
fn push_in(qb: &mut QueryBuilder<'_, Postgres>, column: &str, values: &[String]) {
    match values {
        [one] => {
            qb.push(format!("{column} = ")).push_bind(one.clone());
        }
        many => {
            qb.push(format!("{column} = ANY("))
                .push_bind(many.to_vec())
                .push(")");
        }
    }
}

fn per_side(
    qb: &mut QueryBuilder<'_, Postgres>,
    side: Side,
    mut one: impl FnMut(&mut QueryBuilder<'_, Postgres>, &str),
) {
    match side {
        Side::Source => one(qb, "src"),
        Side::Destination => one(qb, "dst"),
        Side::Either => {
            qb.push("(");
            one(qb, "src");
            qb.push(" OR ");
            one(qb, "dst");
            qb.push(")");
        }
    }
}

/// A label selector over a jsonb column, with the same key normalisation as in memory.
fn push_selector(qb: &mut QueryBuilder<'_, Postgres>, column: &str, sel: &LabelSelector) {
    qb.push("(true");
    for (k, v) in &sel.match_labels {
        qb.push(format!(" AND {column}->>"))
            .push_bind(normalize_selector_key(k).to_string())
            .push(" = ")
            .push_bind(v.clone());
    }
    for r in &sel.match_expressions {
        let key = normalize_selector_key(&r.key).to_string();
        match r.operator {
            SelectorOperator::In => {
                qb.push(format!(" AND coalesce({column}->>"))
                    .push_bind(key)
                    .push(" = ANY(")
                    .push_bind(r.values.clone())
                    .push("), false)");
            }
            SelectorOperator::NotIn => {
                qb.push(format!(" AND NOT coalesce({column}->>"))
                    .push_bind(key)
                    .push(" = ANY(")
                    .push_bind(r.values.clone())
                    .push("), false)");
            }
            SelectorOperator::Exists => {
                qb.push(format!(" AND {column} ? ")).push_bind(key);
            }
            SelectorOperator::DoesNotExist => {
                qb.push(format!(" AND NOT {column} ? ")).push_bind(key);
            }
        }
    }
    qb.push(")");
}

#[tonic::async_trait]
impl FlowStore for PgFlowStore {
    async fn insert_batch(&self, o: &Origin, flows: &[NewFlow]) -> Result<Option<Notice>> {
        Ok(self.insert_batches(&[(o, flows)]).await?.pop())
    }

    async fn insert_batches(&self, batches: &[(&Origin, &[NewFlow])]) -> Result<Vec<Notice>> {
        // Tenants in order of first appearance; each gets one batch number and one notice.
        let mut tenants: Vec<Uuid> = Vec::new();
        for (o, flows) in batches {
            if !flows.is_empty() && !tenants.contains(&o.tenant_id) {
                tenants.push(o.tenant_id);
            }
        }
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        // Flows are telemetry: a crash may lose the last few hundred milliseconds of
        // committed batches (never a torn one), and in exchange a commit does not wait for
        // the WAL flush. Only this transaction is relaxed: tenant configuration, audit and
        // everything else commit synchronously.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let mut notices = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            set_tenant(&mut tx, tenant).await?;
            let batch: i64 = sqlx::query_scalar("SELECT nextval('flow_batches_seq')")
                .fetch_one(&mut *tx)
                .await?;
            let (mut min_time, mut max_time) = (None::<DateTime<Utc>>, None::<DateTime<Utc>>);
            for (o, flows) in batches.iter().filter(|(o, _)| o.tenant_id == tenant) {
                if flows.is_empty() {
                    continue;
                }
                for f in flows.iter() {
                    min_time = Some(min_time.map_or(f.time, |m| m.min(f.time)));
                    max_time = Some(max_time.map_or(f.time, |m| m.max(f.time)));
                }
                insert_rows(&mut tx, o, batch, flows).await?;
            }
            let (Some(min_time), Some(max_time)) = (min_time, max_time) else {
                continue;
            };
            let notice = Notice {
                tenant,
                batch,
                min_time,
                max_time,
            };
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(super::NOTICE_CHANNEL)
                .bind(notice.payload())
                .execute(&mut *tx)
                .await?;
            notices.push(notice);
        }
        tx.commit().await?;
        Ok(notices)
    }

    async fn query(
        &self,
        tenant: Uuid,
        filter: &FlowFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<(FlowRecord, Cursor)>> {
        let want = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let windows = Windows::new(Utc::now(), filter, after);
        let mut out = Vec::new();
        let mut tx = self.pool.begin().await?;
        set_tenant(&mut tx, tenant).await?;
        // Newest first, one window at a time: each window is older than the one before,
        // so pages concatenate in order and a window's rows are read only once.
        for (lo, hi) in windows {
            let mut qb = QueryBuilder::new(SELECT);
            qb.push(" WHERE tenant_id = ").push_bind(tenant);
            if let Some(lo) = lo {
                qb.push(" AND time >= ").push_bind(lo);
            }
            if let Some(hi) = hi {
                qb.push(" AND time < ").push_bind(hi);
            }
            push_filter(&mut qb, filter);
            if let Some(c) = after {
                qb.push(" AND (time, id) < (")
                    .push_bind(c.time)
                    .push(", ")
                    .push_bind(c.id)
                    .push(")");
            }
            qb.push(" ORDER BY time DESC, id DESC LIMIT ")
                .push_bind(i64::try_from(want - out.len()).unwrap_or(i64::MAX));
            let rows: Vec<Row> = qb.build_query_as().fetch_all(&mut *tx).await?;
            out.extend(rows);
            if out.len() >= want {
                break;
            }
        }
        tx.commit().await?;
        out.into_iter().map(Row::into_record).collect()
    }

    async fn read_batch(&self, n: &Notice) -> Result<Vec<FlowRecord>> {
        let mut tx = self.pool.begin().await?;
        set_tenant(&mut tx, n.tenant).await?;
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "{SELECT} WHERE tenant_id = $1 AND time >= $2 AND time <= $3 AND batch = $4 \
             ORDER BY time, id"
        ))
        .bind(n.tenant)
        .bind(n.min_time)
        .bind(n.max_time)
        .bind(n.batch)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| r.into_record().map(|(f, _)| f))
            .collect()
    }

    async fn service_map(&self, tenant: Uuid, since: DateTime<Utc>) -> Result<ServiceMap> {
        let mut tx = self.pool.begin().await?;
        set_tenant(&mut tx, tenant).await?;
        let rows: Vec<EdgeRow> = sqlx::query_as(SERVICE_MAP)
            .bind(tenant)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(build_map(rows))
    }
}

/// Every flow becomes an edge from its source vertex to its destination vertex; a flow
/// through a load-balanced service goes to the service's vertex. Workloads are keyed by
/// identity (same labels, same vertex, across endpoints), reserved identities collapse to
/// `host` (1) and `world` (everything else below 256).
const SERVICE_MAP: &str = "WITH f AS (
    SELECT
        CASE WHEN src_identity >= 256 THEN 'identity:' || src_identity
             WHEN src_identity = 1 THEN 'host' ELSE 'world' END AS s,
        CASE WHEN service_id IS NOT NULL THEN 'service:' || service_id
             WHEN dst_identity >= 256 THEN 'identity:' || dst_identity
             WHEN dst_identity = 1 THEN 'host' ELSE 'world' END AS d,
        src_identity, src_labels, src_endpoint_name,
        dst_identity, dst_labels, dst_endpoint_name, service_name,
        service_id IS NOT NULL AS via_service,
        verdict, dst_port, count, bytes
    FROM flows WHERE tenant_id = $1 AND time >= $2
)
SELECT s, d,
    sum(count)::bigint AS connections,
    sum(bytes)::bigint AS bytes,
    coalesce(sum(count) FILTER (WHERE verdict IN ('FORWARDED', 'REDIRECTED', 'TRANSLATED')), 0)::bigint AS forwarded,
    coalesce(sum(count) FILTER (WHERE verdict = 'DROPPED'), 0)::bigint AS dropped,
    array_agg(DISTINCT dst_port ORDER BY dst_port) AS ports,
    min(src_identity) AS src_identity,
    (array_agg(src_labels))[1] AS src_labels,
    min(src_endpoint_name) AS src_name,
    bool_or(via_service) AS via_service,
    min(dst_identity) AS dst_identity,
    (array_agg(dst_labels))[1] AS dst_labels,
    min(coalesce(service_name, dst_endpoint_name)) AS dst_name
FROM f GROUP BY s, d ORDER BY s, d";

#[derive(FromRow)]
struct EdgeRow {
    s: String,
    d: String,
    connections: i64,
    bytes: i64,
    forwarded: i64,
    dropped: i64,
    ports: Vec<i32>,
    src_identity: i64,
    src_labels: Json<Labels>,
    src_name: Option<String>,
    via_service: bool,
    dst_identity: i64,
    dst_labels: Json<Labels>,
    dst_name: Option<String>,
}

fn vertex(id: &str, identity: i64, labels: Labels, name: Option<String>, service: bool) -> MapNode {
    let (kind, identity, labels) = if service {
        ("service", None, Labels::new())
    } else if id == "host" || id == "world" {
        (id, None, Labels::new())
    } else {
        ("workload", u32::try_from(identity).ok(), labels)
    };
    MapNode {
        id: id.to_string(),
        kind: kind.to_string(),
        identity,
        labels,
        name: name.unwrap_or_else(|| match kind {
            "workload" => format!("identity {}", identity.unwrap_or_default()),
            k => k.to_string(),
        }),
    }
}

fn build_map(rows: Vec<EdgeRow>) -> ServiceMap {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    let mut edges = Vec::with_capacity(rows.len());
    for r in rows {
        nodes
            .entry(r.s.clone())
            .or_insert_with(|| vertex(&r.s, r.src_identity, r.src_labels.0, r.src_name, false));
        nodes.entry(r.d.clone()).or_insert_with(|| {
            vertex(
                &r.d,
                r.dst_identity,
                r.dst_labels.0,
                r.dst_name,
                r.via_service,
            )
        });
        edges.push(MapEdge {
            source: r.s,
            destination: r.d,
            connections: r.connections,
            bytes: r.bytes,
            forwarded: r.forwarded,
            dropped: r.dropped,
            ports: r
                .ports
                .into_iter()
                .filter_map(|p| u16::try_from(p).ok())
                .collect(),
        });
    }
    ServiceMap {
        nodes: nodes.into_values().collect(),
        edges,
    }
}

/// The multi-row insert: one array per column, expanded by `unnest` (node and cluster
/// are the same for the whole batch and bound once).
async fn insert_rows(
    tx: &mut sqlx::PgConnection,
    o: &Origin,
    batch: i64,
    flows: &[NewFlow],
) -> Result<()> {
    let n = flows.len();
    macro_rules! col {
        ($e:expr) => {
            flows.iter().map($e).collect::<Vec<_>>()
        };
    }
    let time = col!(|f| f.time);
    let src_ip = col!(|f| f.src.ip.to_string());
    let src_port = col!(|f| i32::from(f.src.port));
    let src_ep = col!(|f| f.src.endpoint_id);
    let src_name = col!(|f| f.src.endpoint_name.clone());
    let src_id = col!(|f| i64::from(f.src.identity));
    let src_labels = col!(|f| Json(&*f.src.labels));
    let dst_ip = col!(|f| f.dst.ip.to_string());
    let dst_port = col!(|f| i32::from(f.dst.port));
    let dst_ep = col!(|f| f.dst.endpoint_id);
    let dst_name = col!(|f| f.dst.endpoint_name.clone());
    let dst_id = col!(|f| i64::from(f.dst.identity));
    let dst_labels = col!(|f| Json(&*f.dst.labels));
    let svc_id = col!(|f| f.service_id);
    let svc_name = col!(|f| f.service_name.clone());
    let proto = col!(|f| i16::from(f.protocol));
    let verdict = col!(|f| f.verdict.as_str());
    let reason = col!(|f| f.drop_reason.map(|r| r.as_str()));
    let direction = col!(|f| f.direction.as_str());
    let point = col!(|f| f.observation_point.as_str());
    let flags = col!(|f| i16::from(f.tcp_flags));
    let bytes = col!(|f| f.bytes);
    let packets = col!(|f| f.packets);
    let count = col!(|f| f.count);
    debug_assert_eq!(time.len(), n);
    sqlx::query(
        "INSERT INTO flows (time, batch, tenant_id, node_id, node_name, cluster_id, cluster_name, \
           src_ip, src_port, src_endpoint_id, src_endpoint_name, src_identity, src_labels, \
           dst_ip, dst_port, dst_endpoint_id, dst_endpoint_name, dst_identity, dst_labels, \
           service_id, service_name, protocol, verdict, drop_reason, direction, \
           observation_point, tcp_flags, bytes, packets, count) \
         SELECT u.time, $1, $2, $3, $4, $5, $6, \
           u.src_ip::inet, u.src_port, u.src_ep, u.src_name, u.src_id, u.src_labels, \
           u.dst_ip::inet, u.dst_port, u.dst_ep, u.dst_name, u.dst_id, u.dst_labels, \
           u.svc_id, u.svc_name, u.proto, u.verdict, u.reason, u.direction, u.point, \
           u.flags, u.bytes, u.packets, u.count \
         FROM unnest($7::timestamptz[], $8::text[], $9::int4[], $10::uuid[], $11::text[], \
           $12::int8[], $13::jsonb[], $14::text[], $15::int4[], $16::uuid[], $17::text[], \
           $18::int8[], $19::jsonb[], $20::uuid[], $21::text[], $22::int2[], $23::text[], \
           $24::text[], $25::text[], $26::text[], $27::int2[], $28::int8[], $29::int8[], \
           $30::int8[]) AS u(time, src_ip, src_port, src_ep, src_name, src_id, src_labels, \
           dst_ip, dst_port, dst_ep, dst_name, dst_id, dst_labels, svc_id, svc_name, proto, \
           verdict, reason, direction, point, flags, bytes, packets, count)",
    )
    .bind(batch)
    .bind(o.tenant_id)
    .bind(o.node_id)
    .bind(&o.node_name)
    .bind(o.cluster_id)
    .bind(&o.cluster_name)
    .bind(time)
    .bind(src_ip)
    .bind(src_port)
    .bind(src_ep)
    .bind(src_name)
    .bind(src_id)
    .bind(src_labels)
    .bind(dst_ip)
    .bind(dst_port)
    .bind(dst_ep)
    .bind(dst_name)
    .bind(dst_id)
    .bind(dst_labels)
    .bind(svc_id)
    .bind(svc_name)
    .bind(proto)
    .bind(verdict)
    .bind(reason)
    .bind(direction)
    .bind(point)
    .bind(flags)
    .bind(bytes)
    .bind(packets)
    .bind(count)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn windows_cover_all_time_once_newest_first() {
        let now = at("2026-11-26T12:00:00Z");
        let w: Vec<_> = Windows::new(now, &FlowFilter::default(), None).collect();
        assert_eq!(w[0], (Some(now - FIRST_WINDOW), None), "open to the future");
        for pair in w.windows(2) {
            assert_eq!(
                pair[1].1, pair[0].0,
                "each window ends where the last began"
            );
            assert!(pair[1].0 < pair[1].1 || pair[1].0.is_none());
        }
        assert_eq!(w.last().unwrap().0, None, "open to the past");
        assert!(w.len() < 14, "{} windows", w.len());
        let width = |i: usize| w[i].1.unwrap() - w[i].0.unwrap();
        assert_eq!(width(2), width(1) * WINDOW_GROWTH);
    }

    #[test]
    fn windows_start_at_the_cursor_or_until_and_stop_at_since() {
        let now = at("2026-11-26T12:00:00Z");
        let filter = FlowFilter {
            since: Some(at("2026-11-26T11:59:00Z")),
            until: Some(at("2026-11-26T11:59:50Z")),
            ..Default::default()
        };
        let cursor = Cursor {
            time: at("2026-11-26T11:59:40Z"),
            id: 7,
        };
        let w: Vec<_> = Windows::new(now, &filter, Some(cursor)).collect();
        assert_eq!(w[0], (Some(at("2026-11-26T11:59:39Z")), None));
        let last = *w.last().unwrap();
        assert_eq!(last.0, None, "since is applied by the filter itself");
        assert!(last.1.unwrap() > at("2026-11-26T11:59:00Z"));
        assert!(w.len() <= 4, "{w:?}");
    }
}
