//! Group commit for the per-node writes every change causes (what each node was sent, what
//! each node acked). A change reaches every connected node at once, so these writes arrive
//! together: one task per kind takes whatever is queued and writes it in one transaction
//! of a few statements, and every caller waits for the commit of the batch it joined. The
//! queue is bounded: when PostgreSQL falls behind, callers (the agents' streams) wait.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::error::{ApiError, Result};
use crate::store::{self, nodes};
use crate::tasks::Tasks;

/// Writes queued at most (per kind): beyond it callers wait.
const QUEUE: usize = 4096;
/// Writes in one batch at most (one statement's arrays).
const BATCH: usize = 1024;

/// One write of one node, the merge of two writes of the same node in a batch, and the
/// statements that write one tenant's part of a batch.
pub trait NodeWrite: Send + Sync + Sized + 'static {
    fn node(&self) -> Uuid;
    fn tenant(&self) -> Uuid;
    /// `self` then `later` as one write.
    fn merge(self, later: Self) -> Self;
    /// Writes `rows` (one tenant's, at most one per node) in the caller's transaction.
    fn write(
        conn: &mut PgConnection,
        tenant: Uuid,
        rows: &[Self],
    ) -> impl Future<Output = Result<()>> + Send;
}

type Reply = oneshot::Sender<std::result::Result<(), String>>;

pub struct GroupCommit<W> {
    queue: mpsc::Sender<(W, Reply)>,
}

impl<W: NodeWrite> GroupCommit<W> {
    /// Starts the writer task: each batch is one transaction, each tenant's part of it
    /// written under that tenant (RLS) by [`NodeWrite::write`].
    pub fn spawn(pool: PgPool, tasks: &Tasks, name: &'static str) -> Arc<GroupCommit<W>> {
        let (queue, mut rx) = mpsc::channel::<(W, Reply)>(QUEUE);
        tasks.spawn(name, async move {
            let mut batch = Vec::with_capacity(BATCH);
            // A connection of the writer's own, kept while it works (no acquire per batch).
            // A batch is one large statement and a connection keeps a write buffer as large
            // as the largest it sent: `commit` shrinks it after each batch, as the pool does
            // on release (before either, batches spread over the pool left one in every
            // connection: ~55 MB a replica at 1,000 agents, found with heaptrack).
            let mut conn = None;
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                let (writes, replies): (Vec<W>, Vec<Reply>) = batch.drain(..).unzip();
                let res = commit(&pool, &mut conn, by_tenant(writes))
                    .await
                    .map_err(|e| e.to_string());
                if let Err(e) = &res {
                    tracing::warn!(task = name, error = %e, "group commit failed");
                }
                for reply in replies {
                    let _ = reply.send(res.clone());
                }
            }
        });
        Arc::new(GroupCommit { queue })
    }

    /// Queues `write` and waits until the batch it joined is committed.
    pub async fn submit(&self, write: W) -> Result<()> {
        let (reply, done) = oneshot::channel();
        let stopped = || ApiError::Unavailable("the control plane is shutting down".into());
        self.queue
            .send((write, reply))
            .await
            .map_err(|_| stopped())?;
        done.await
            .map_err(|_| stopped())?
            .map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))
    }
}

/// One batch in one transaction, on the writer's connection (`held`, taken from the pool
/// when there is none). A failed batch gives its connection back (it may be broken).
async fn commit<W: NodeWrite>(
    pool: &PgPool,
    held: &mut Option<PoolConnection<Postgres>>,
    groups: Vec<(Uuid, Vec<W>)>,
) -> Result<()> {
    // Checked as the pool checks what it hands out: a connection the server closed while
    // idle (a restart) is replaced instead of failing the batch.
    let mut conn = match held.take() {
        Some(mut c) => match sqlx::Connection::ping(&mut *c).await {
            Ok(()) => c,
            Err(_) => pool.acquire().await?,
        },
        None => pool.acquire().await?,
    };
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for (tenant, rows) in groups {
        store::set_tenant(&mut tx, tenant).await?;
        W::write(&mut tx, tenant, &rows).await?;
    }
    tx.commit().await?;
    // The batch was one large statement: its buffer is not kept until the next.
    sqlx::Connection::shrink_buffers(&mut *conn);
    *held = Some(conn);
    Ok(())
}

/// The writes grouped by tenant (RLS: each group is written under its tenant), at most one
/// per node (two writes of a node in one batch merged, in the order they came).
pub fn by_tenant<W: NodeWrite>(writes: Vec<W>) -> Vec<(Uuid, Vec<W>)> {
    let mut order: Vec<Uuid> = Vec::new();
    let mut nodes: HashMap<Uuid, W> = HashMap::with_capacity(writes.len());
    for w in writes {
        match nodes.remove(&w.node()) {
            Some(earlier) => {
                let merged = earlier.merge(w);
                nodes.insert(merged.node(), merged);
            }
            None => {
                order.push(w.node());
                nodes.insert(w.node(), w);
            }
        }
    }
    let mut tenants: Vec<(Uuid, Vec<W>)> = Vec::new();
    for node in order {
        let Some(w) = nodes.remove(&node) else {
            continue;
        };
        match tenants.iter_mut().find(|(t, _)| *t == w.tenant()) {
            Some((_, ws)) => ws.push(w),
            None => tenants.push((w.tenant(), vec![w])),
        }
    }
    tenants
}

impl NodeWrite for nodes::Sent {
    fn node(&self) -> Uuid {
        self.node
    }
    fn tenant(&self) -> Uuid {
        self.tenant
    }
    fn merge(self, later: Self) -> Self {
        nodes::Sent {
            revision: self.revision.max(later.revision),
            state: later.state.or(self.state),
            ..later
        }
    }
    async fn write(conn: &mut PgConnection, tenant: Uuid, rows: &[Self]) -> Result<()> {
        nodes::record_sent(conn, tenant, rows).await
    }
}

impl NodeWrite for nodes::Acked {
    fn node(&self) -> Uuid {
        self.node
    }
    fn tenant(&self) -> Uuid {
        self.tenant
    }
    fn merge(self, later: Self) -> Self {
        nodes::Acked {
            applied: self.applied.max(later.applied),
            ..later
        }
    }
    async fn write(conn: &mut PgConnection, _tenant: Uuid, rows: &[Self]) -> Result<()> {
        nodes::ack(conn, rows).await
    }
}

/// The replica's group commits of per-node sync writes.
pub struct NodeWrites {
    pub sent: Arc<GroupCommit<nodes::Sent>>,
    pub acked: Arc<GroupCommit<nodes::Acked>>,
}

impl NodeWrites {
    pub fn spawn(pool: PgPool, tasks: &Tasks) -> NodeWrites {
        NodeWrites {
            sent: GroupCommit::spawn(pool.clone(), tasks, "sent-state writer"),
            acked: GroupCommit::spawn(pool, tasks, "ack writer"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{by_tenant, NodeWrite};
    use uuid::Uuid;

    #[derive(Debug, PartialEq)]
    struct W(Uuid, Uuid, Vec<u32>);

    impl NodeWrite for W {
        fn node(&self) -> Uuid {
            self.0
        }
        fn tenant(&self) -> Uuid {
            self.1
        }
        fn merge(mut self, later: W) -> W {
            self.2.extend(later.2);
            self
        }
        // Only the grouping is under test here.
        async fn write(
            _: &mut sqlx::PgConnection,
            _: Uuid,
            _: &[Self],
        ) -> crate::error::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_write_per_node_grouped_by_tenant_in_arrival_order() {
        let id = |_| Uuid::now_v7();
        let [t1, t2, a, b, c]: [Uuid; 5] = [0; 5].map(id);
        let groups = by_tenant(vec![
            W(a, t1, vec![1]),
            W(c, t2, vec![2]),
            W(b, t1, vec![3]),
            W(a, t1, vec![4]),
        ]);
        assert_eq!(
            groups,
            vec![
                (t1, vec![W(a, t1, vec![1, 4]), W(b, t1, vec![3])]),
                (t2, vec![W(c, t2, vec![2])]),
            ]
        );
    }
}
