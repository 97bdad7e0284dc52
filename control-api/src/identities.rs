//! Security identities outlive their last endpoint for a grace period (a workload that is
//! rescheduled keeps its number), then they are collected.

use std::time::Duration;

use sqlx::PgPool;

use crate::tasks::Tasks;

/// Deletes identities no endpoint uses that were last used more than `grace` ago; returns
/// how many.
pub async fn collect_garbage(pool: &PgPool, grace: Duration) -> sqlx::Result<i64> {
    crate::store::endpoints::collect_unused_identities(pool, grace.as_secs_f64()).await
}

/// Runs the collection every `every` until the tasks stop. Several replicas may
/// run it at once: deleting what is already gone is harmless.
pub fn spawn_collector(tasks: &Tasks, pool: PgPool, grace: Duration, every: Duration) {
    tasks.spawn("identity collector", async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match collect_garbage(&pool, grace).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(collected = n, "unused identities collected"),
                Err(e) => tracing::warn!(error = %e, "identity collection failed"),
            }
        }
    });
}
