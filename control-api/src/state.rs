//! What every handler shares. Everything durable is in Postgres; this is only handles.

use std::sync::Arc;

use sqlx::PgPool;

use crate::changes::Change;
use crate::metrics::Metrics;
use crate::ratelimit::FailureLimiter;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// SHA-256 of the operator's bootstrap token, if one is configured.
    pub operator_token_hash: Option<Vec<u8>>,
    pub metrics: Arc<Metrics>,
    /// Failed credential attempts per source address.
    pub auth_failures: Arc<FailureLimiter>,
    /// Committed desired-state changes, from this replica's LISTEN.
    pub changes: tokio::sync::broadcast::Sender<Change>,
}
