//! The Postgres flow store: flows are kept in [`block`](super::block)s, one row per
//! node's batch, in the daily partitions of `flow_blocks`. A list walks the tenant's
//! blocks newest first (by their newest flow), skips those whose keys rule the filter
//! out, unpacks the rest and merges their flows into one newest-first page; the service
//! map sums the edges each block carries.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, QueryBuilder};
use uuid::Uuid;
use weft_model::flow::{Criterion, FlowFilter, FlowRecord};
use weft_model::labels::Labels;

use super::block::{self, Decoded, EdgeAgg, EdgeMap};
use super::{Cursor, FlowStore, MapEdge, MapNode, NewFlow, Notice, Origin, ServiceMap};
use crate::error::{ApiError, Result};
use crate::store::set_tenant;

pub struct PgFlowStore {
    pool: PgPool,
}

impl PgFlowStore {
    /// Over the API's pool (the `weft_app` role: row-level security applies).
    pub fn new(pool: PgPool) -> Self {
        PgFlowStore { pool }
    }
}

/// Blocks a list reads per round trip: few first (a page of recent flows usually needs one
/// or two blocks), more while a selective filter keeps finding little.
const FIRST_FETCH: i64 = 2;
const MAX_FETCH: i64 = 64;

#[derive(FromRow)]
struct BlockRow {
    id: i64,
    max_time: DateTime<Utc>,
    node_name: String,
    cluster_name: String,
    data: Vec<u8>,
}

impl From<block::CorruptBlock> for ApiError {
    fn from(e: block::CorruptBlock) -> Self {
        ApiError::Internal(e.into())
    }
}

impl BlockRow {
    fn decode(
        &self,
        filter: &FlowFilter,
        admit: impl FnMut(DateTime<Utc>, i64) -> bool,
    ) -> Result<Vec<Decoded>> {
        block::decode(
            self.id,
            &self.node_name,
            &self.cluster_name,
            &self.data,
            filter,
            admit,
        )
        .map_err(Into::into)
    }
}

/// Appends the block-level part of a filter: time bounds, node and cluster (a block is
/// one node's), and for each keyed criterion "has at least one of its keys".
fn push_block_filter(qb: &mut QueryBuilder<'_, sqlx::Postgres>, f: &FlowFilter) {
    if let Some(s) = f.since {
        qb.push(" AND max_time >= ").push_bind(s);
    }
    if let Some(u) = f.until {
        qb.push(" AND min_time < ").push_bind(u);
    }
    for (criteria, not) in [(&f.include, ""), (&f.exclude, "NOT ")] {
        for c in criteria {
            let (column, names) = match c {
                Criterion::Node(ns) => ("node_name", ns),
                Criterion::Cluster(cs) => ("cluster_name", cs),
                _ => continue,
            };
            qb.push(format!(" AND {not}{column} = ANY("))
                .push_bind(names.clone())
                .push(")");
        }
    }
    for any in block::required_keys(&f.include) {
        qb.push(" AND keys && ").push_bind(any).push("::text[]");
    }
}

/// Newest first: by time, then id.
fn newer(a: &Decoded, b: &Decoded) -> std::cmp::Ordering {
    (b.record.time, b.id).cmp(&(a.record.time, a.id))
}

#[tonic::async_trait]
impl FlowStore for PgFlowStore {
    async fn insert_batch(&self, o: &Origin, flows: &[NewFlow]) -> Result<Option<Notice>> {
        Ok(self.insert_batches(&[(o, flows)]).await?.pop())
    }

    async fn insert_batches(&self, batches: &[(&Origin, &[NewFlow])]) -> Result<Vec<Notice>> {
        // Packed before the transaction: the connection is held for the writes only.
        let mut blocks: Vec<(&Origin, block::Encoded)> = Vec::new();
        for (o, flows) in batches {
            for chunk in flows.chunks(block::MAX_FLOWS) {
                blocks.extend(block::encode(chunk).map(|b| (*o, b)));
            }
        }
        // Tenants in order of first appearance; each gets one batch number and one notice.
        let mut tenants: Vec<Uuid> = Vec::new();
        for (o, _) in &blocks {
            if !tenants.contains(&o.tenant_id) {
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
            let mine: Vec<&(&Origin, block::Encoded)> = blocks
                .iter()
                .filter(|(o, _)| o.tenant_id == tenant)
                .collect();
            let mut qb = QueryBuilder::new(
                "INSERT INTO flow_blocks (tenant_id, batch, min_time, max_time, node_id, \
                 node_name, cluster_id, cluster_name, flows, keys, edges, data) ",
            );
            qb.push_values(&mine, |mut row, (o, b)| {
                row.push_bind(tenant)
                    .push_bind(batch)
                    .push_bind(b.min_time)
                    .push_bind(b.max_time)
                    .push_bind(o.node_id)
                    .push_bind(&o.node_name)
                    .push_bind(o.cluster_id)
                    .push_bind(&o.cluster_name)
                    .push_bind(i32::try_from(b.flows).unwrap_or(i32::MAX))
                    .push_bind(&b.keys)
                    .push_bind(Json(&b.edges))
                    .push_bind(&b.data);
            });
            qb.build().execute(&mut *tx).await?;
            let notice = Notice {
                tenant,
                batch,
                min_time: mine
                    .iter()
                    .map(|(_, b)| b.min_time)
                    .min()
                    .unwrap_or_default(),
                max_time: mine
                    .iter()
                    .map(|(_, b)| b.max_time)
                    .max()
                    .unwrap_or_default(),
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
        let mut out: Vec<Decoded> = Vec::new();
        // Flows of blocks read so far that may still be in the page, newest first: only
        // the `want - out.len()` newest can ever be, so it never holds more than a page.
        let mut pending: Vec<Decoded> = Vec::new();
        let mut ahead: VecDeque<BlockRow> = VecDeque::new();
        let mut last: Option<(DateTime<Utc>, i64)> = None;
        let mut fetch = FIRST_FETCH;
        let mut exhausted = false;
        let mut tx = self.pool.begin().await?;
        set_tenant(&mut tx, tenant).await?;
        loop {
            if ahead.is_empty() && !exhausted {
                let mut qb = QueryBuilder::new(
                    "SELECT id, max_time, node_name, cluster_name, data FROM flow_blocks \
                     WHERE tenant_id = ",
                );
                qb.push_bind(tenant);
                push_block_filter(&mut qb, filter);
                if let Some(c) = after {
                    qb.push(" AND min_time <= ").push_bind(c.time);
                }
                if let Some((t, id)) = last {
                    qb.push(" AND (max_time, id) < (")
                        .push_bind(t)
                        .push(", ")
                        .push_bind(id)
                        .push(")");
                }
                qb.push(" ORDER BY max_time DESC, id DESC LIMIT ")
                    .push_bind(fetch);
                let rows: Vec<BlockRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
                exhausted = (rows.len() as i64) < fetch;
                fetch = (fetch * 2).min(MAX_FETCH);
                last = rows.last().map(|b| (b.max_time, b.id));
                ahead.extend(rows);
            }
            // Unread blocks hold nothing newer than the next one's newest flow: what is
            // newer than that is final.
            let bound = ahead.front().map(|b| b.max_time);
            let ready = pending
                .iter()
                .take_while(|d| bound.is_none_or(|m| d.record.time > m))
                .count();
            out.extend(pending.drain(..ready.min(want - out.len())));
            if out.len() >= want {
                break;
            }
            let Some(b) = ahead.pop_front() else { break };
            // Once the page's remainder is full, only flows newer than its oldest can
            // still make it: the rest are not even built.
            let need = want - out.len();
            let floor = (pending.len() >= need)
                .then(|| pending.last().map(|d| (d.record.time, d.id)))
                .flatten();
            pending.extend(b.decode(filter, |time, id| {
                after.is_none_or(|c| (time, id) < (c.time, c.id))
                    && floor.is_none_or(|f| (time, id) > f)
            })?);
            pending.sort_by(newer);
            pending.truncate(need);
        }
        tx.commit().await?;
        Ok(out
            .into_iter()
            .map(|d| {
                let cursor = Cursor {
                    time: d.record.time,
                    id: d.id,
                };
                (d.record, cursor)
            })
            .collect())
    }

    async fn read_batch(&self, n: &Notice) -> Result<Vec<FlowRecord>> {
        let mut tx = self.pool.begin().await?;
        set_tenant(&mut tx, n.tenant).await?;
        let rows: Vec<BlockRow> = sqlx::query_as(
            "SELECT id, max_time, node_name, cluster_name, data FROM flow_blocks \
             WHERE tenant_id = $1 AND max_time >= $2 AND min_time <= $3 AND batch = $4 \
             ORDER BY id",
        )
        .bind(n.tenant)
        .bind(n.min_time)
        .bind(n.max_time)
        .bind(n.batch)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut flows = Vec::new();
        for b in &rows {
            flows.extend(b.decode(&FlowFilter::default(), |_, _| true)?);
        }
        flows.sort_by(|a, b| newer(b, a));
        Ok(flows.into_iter().map(|d| d.record).collect())
    }

    async fn service_map(&self, tenant: Uuid, since: DateTime<Utc>) -> Result<ServiceMap> {
        let mut tx = self.pool.begin().await?;
        set_tenant(&mut tx, tenant).await?;
        // Blocks wholly inside the window contribute the edges computed at ingest; one
        // that straddles its start is unpacked to count only its flows since then.
        type MapRow = (
            i64,
            String,
            String,
            Option<Json<Vec<EdgeAgg>>>,
            Option<Vec<u8>>,
        );
        let rows: Vec<MapRow> = sqlx::query_as(
            "SELECT id, node_name, cluster_name, \
                CASE WHEN min_time >= $2 THEN edges END, \
                CASE WHEN min_time < $2 THEN data END \
             FROM flow_blocks WHERE tenant_id = $1 AND max_time >= $2",
        )
        .bind(tenant)
        .bind(since)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut map = EdgeMap::default();
        for (id, node, cluster, edges, data) in rows {
            if let Some(Json(edges)) = edges {
                map.merge(edges);
            } else if let Some(data) = data {
                let window = FlowFilter {
                    since: Some(since),
                    ..Default::default()
                };
                let flows = block::decode(id, &node, &cluster, &data, &window, |_, _| true)?;
                for f in &flows {
                    map.add_decoded(f);
                }
            }
        }
        Ok(build_map(map.into_edges()))
    }
}

fn vertex(id: &str, identity: u32, labels: Labels, name: Option<String>, service: bool) -> MapNode {
    let (kind, identity, labels) = if service {
        ("service", None, Labels::new())
    } else if id == "host" || id == "world" {
        (id, None, Labels::new())
    } else {
        ("workload", Some(identity), labels)
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

fn build_map(edges: Vec<EdgeAgg>) -> ServiceMap {
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let edges = edges
        .into_iter()
        .map(|e| {
            nodes
                .entry(e.s.clone())
                .or_insert_with(|| vertex(&e.s, e.src_identity, e.src_labels, e.src_name, false));
            nodes.entry(e.d.clone()).or_insert_with(|| {
                vertex(
                    &e.d,
                    e.dst_identity,
                    e.dst_labels,
                    e.dst_name,
                    e.via_service,
                )
            });
            MapEdge {
                source: e.s,
                destination: e.d,
                connections: count(e.connections),
                bytes: count(e.bytes),
                forwarded: count(e.forwarded),
                dropped: count(e.dropped),
                ports: e.ports.into_iter().collect(),
            }
        })
        .collect();
    ServiceMap {
        nodes: nodes.into_values().collect(),
        edges,
    }
}
