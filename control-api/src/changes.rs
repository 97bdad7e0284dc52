//! Every replica LISTENs for committed desired-state changes, so agents connected to any
//! replica learn of a change made through any other.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;
use weft_telemetry::TraceParent;

use crate::store::CHANGES_CHANNEL;
use crate::tasks::Tasks;

/// A committed change. `tenant: None` means "something may have been missed; everyone
/// recompute" (sent after the listener reconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub revision: i64,
    pub tenant: Option<Uuid>,
    /// Trace context of the request that made the change, when it was traced: the pushes
    /// it causes on every replica join that trace.
    pub trace: Option<TraceParent>,
}

/// Parses a NOTIFY payload `revision:tenant:kind:id:op[:traceparent]` (see
/// `store::record_change`).
pub fn parse(payload: &str) -> Option<Change> {
    let mut parts = payload.split(':');
    let revision = parts.next()?.parse().ok()?;
    let tenant = parts.next()?.parse().ok()?;
    let trace = parts.nth(3).and_then(|t| t.parse().ok());
    Some(Change {
        revision,
        tenant: Some(tenant),
        trace,
    })
}

/// Starts the replica's listener task and returns the channel it broadcasts on.
pub fn spawn_listener(pool: PgPool, tasks: &Tasks) -> broadcast::Sender<Change> {
    let (tx, _) = broadcast::channel(1024);
    let out = tx.clone();
    tasks.spawn("change listener", async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match listen(&pool, &tx).await {
                Ok(never) => match never {},
                Err(e) => {
                    tracing::warn!(error = %e, "change listener lost its connection; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    // Notifications may have been missed meanwhile.
                    let _ = tx.send(Change {
                        revision: 0,
                        tenant: None,
                        trace: None,
                    });
                }
            }
        }
    });
    out
}

async fn listen(
    pool: &PgPool,
    tx: &broadcast::Sender<Change>,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    loop {
        // `try_recv` surfaces a lost connection as `None` instead of reconnecting silently.
        let Some(n) = listener.try_recv().await? else {
            return Err(sqlx::Error::Protocol("listener connection closed".into()));
        };
        match parse(n.payload()) {
            Some(change) => {
                // No receivers is fine: no agent is connected to this replica right now.
                let _ = tx.send(change);
            }
            None => tracing::warn!(payload = n.payload(), "unparseable change notification"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_notify_payloads() {
        let t = uuid::Uuid::now_v7();
        let c = super::parse(&format!("42:{t}:policy:{t}:update")).expect("parses");
        assert_eq!(c.revision, 42);
        assert_eq!(c.tenant, Some(t));
        assert_eq!(c.trace, None);
        assert_eq!(super::parse("x:y"), None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = super::parse(&format!("42:{t}:policy:{t}:update:{tp}")).expect("parses");
        assert_eq!(c.trace.map(|t| t.to_string()).as_deref(), Some(tp));
    }
}
