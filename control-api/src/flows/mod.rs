//! Flow visibility: what agents report is enriched ([`ingest`]), queued for a few
//! writers ([`writer`]), stored behind [`FlowStore`] (Postgres today, [`pg`], in packed
//! [`block`]s), announced to every replica (NOTIFY on
//! [`NOTICE_CHANNEL`], [`spawn_notice_listener`]) for live streams, and aged out by
//! dropping daily partitions ([`spawn_maintenance`]).

pub mod block;
pub mod ingest;
pub mod pg;
pub mod writer;

pub use block::{NewFlow, NewPeer};

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;
use weft_model::flow::{FlowFilter, FlowRecord};
use weft_model::labels::Labels;

use crate::error::Result;
use crate::tasks::Tasks;

/// Channel on which each stored batch is announced to every replica.
pub const NOTICE_CHANNEL: &str = "weft_flows";

/// The node a batch came from (authenticated), with names for denormalized storage.
#[derive(Debug, Clone)]
pub struct Origin {
    pub tenant_id: Uuid,
    pub node_id: Uuid,
    pub node_name: String,
    pub cluster_id: Uuid,
    pub cluster_name: String,
}

/// A stored batch, as announced: enough for a follower to read exactly it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    pub tenant: Uuid,
    pub batch: i64,
    pub min_time: DateTime<Utc>,
    pub max_time: DateTime<Utc>,
}

impl Notice {
    pub fn payload(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.tenant,
            self.batch,
            self.min_time.timestamp_micros(),
            self.max_time.timestamp_micros()
        )
    }

    pub fn parse(s: &str) -> Option<Notice> {
        let mut p = s.split(':');
        let tenant = p.next()?.parse().ok()?;
        let batch = p.next()?.parse().ok()?;
        let min_time = DateTime::from_timestamp_micros(p.next()?.parse().ok()?)?;
        let max_time = DateTime::from_timestamp_micros(p.next()?.parse().ok()?)?;
        Some(Notice {
            tenant,
            batch,
            min_time,
            max_time,
        })
    }
}

/// Where a page of flows continues: strictly older than (time, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time: DateTime<Utc>,
    pub id: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}.{}",
            self.time.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (t, id) = raw.split_once('.')?;
        Some(Cursor {
            time: DateTime::from_timestamp_micros(t.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

/// A service-map vertex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MapNode {
    /// `identity:<n>` for workloads, `service:<id>`, `world`, `host`.
    pub id: String,
    /// `workload`, `service`, `world` or `host`.
    pub kind: String,
    pub identity: Option<u32>,
    #[schema(value_type = Object)]
    pub labels: Labels,
    /// An endpoint name of the workload, the service's name, or `world` / `host`.
    pub name: String,
}

/// Traffic from one vertex to another over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MapEdge {
    pub source: String,
    pub destination: String,
    /// Flow records (datapath events, counting aggregation) from source to destination.
    pub connections: i64,
    pub bytes: i64,
    pub forwarded: i64,
    pub dropped: i64,
    /// Destination ports seen, ascending.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceMap {
    pub nodes: Vec<MapNode>,
    pub edges: Vec<MapEdge>,
}

/// Flow storage. Postgres ([`pg::PgFlowStore`]) is the only implementation; a columnar
/// store can take over behind this trait.
#[tonic::async_trait]
pub trait FlowStore: Send + Sync {
    /// Stores one batch of a node's flows and announces it to every replica.
    async fn insert_batch(&self, origin: &Origin, flows: &[NewFlow]) -> Result<Option<Notice>>;
    /// Stores several nodes' batches in one transaction (the ingest writers coalesce what
    /// is waiting): one batch number and one notice per tenant, in order of appearance.
    async fn insert_batches(&self, batches: &[(&Origin, &[NewFlow])]) -> Result<Vec<Notice>>;
    /// One page, newest first, strictly older than `after`; `limit + 1` rows at most are
    /// read so the caller can tell whether there is more.
    async fn query(
        &self,
        tenant: Uuid,
        filter: &FlowFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<(FlowRecord, Cursor)>>;
    /// The flows of an announced batch (oldest first), as the tenant sees them.
    async fn read_batch(&self, notice: &Notice) -> Result<Vec<FlowRecord>>;
    /// Workloads, services and the traffic between them since `since`.
    async fn service_map(&self, tenant: Uuid, since: DateTime<Utc>) -> Result<ServiceMap>;
}

pub type SharedFlowStore = Arc<dyn FlowStore>;

/// Starts this replica's listener for stored batches and returns its channel.
pub fn spawn_notice_listener(pool: PgPool, tasks: &Tasks) -> broadcast::Sender<Notice> {
    let (tx, _) = broadcast::channel(4096);
    let out = tx.clone();
    tasks.spawn("flow notice listener", async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Err(e) = listen(&pool, &tx).await {
                tracing::warn!(error = %e, "flow notice listener lost its connection; reconnecting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    });
    out
}

async fn listen(
    pool: &PgPool,
    tx: &broadcast::Sender<Notice>,
) -> std::result::Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTICE_CHANNEL).await?;
    loop {
        let Some(n) = listener.try_recv().await? else {
            return Err(sqlx::Error::Protocol("listener connection closed".into()));
        };
        match Notice::parse(n.payload()) {
            // No receivers is fine: nobody follows flows on this replica right now.
            Some(notice) => {
                let _ = tx.send(notice);
            }
            None => tracing::warn!(payload = n.payload(), "unparseable flow notice"),
        }
    }
}

/// Days of partitions kept ahead of today.
pub const PARTITIONS_AHEAD: i32 = 2;

/// Creates the coming days' partitions and drops those older than `retention_days`.
/// Returns (created, dropped).
pub async fn maintain(pool: &PgPool, retention_days: u32) -> Result<(i32, i32)> {
    let retention = i32::try_from(retention_days).unwrap_or(i32::MAX);
    let row: (i32, i32) =
        sqlx::query_as("SELECT created, dropped FROM weft_maintain_flow_partitions(1, $1, $2)")
            .bind(PARTITIONS_AHEAD)
            .bind(retention)
            .fetch_one(pool)
            .await?;
    Ok(row)
}

/// Runs [`maintain`] now and then every `every`, on every replica (idempotent).
pub fn spawn_maintenance(tasks: &Tasks, pool: PgPool, retention_days: u32, every: Duration) {
    tasks.spawn("flow partition maintenance", async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match maintain(&pool, retention_days).await {
                Ok((created, dropped)) if created + dropped > 0 => {
                    tracing::info!(created, dropped, "flow partitions maintained")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "flow partition maintenance failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_and_cursors_round_trip() {
        let t = DateTime::from_timestamp_micros(1_764_158_400_123_456).unwrap();
        let n = Notice {
            tenant: Uuid::new_v4(),
            batch: 42,
            min_time: t,
            max_time: t,
        };
        assert_eq!(Notice::parse(&n.payload()), Some(n));
        let c = Cursor { time: t, id: 7 };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("garbage!"), None);
    }
}
