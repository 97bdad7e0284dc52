//! What every handler shares. Everything durable is in Postgres; this is only handles.

use std::sync::Arc;

use sqlx::PgPool;

use crate::api::install::InstallConfig;
use crate::changes::Change;
use crate::metrics::Metrics;
use crate::oidc::Oidc;
use crate::ratelimit::FailureLimiter;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// SHA-256 of the operator's bootstrap token, if one is configured.
    pub operator_token_hash: Option<Vec<u8>>,
    pub metrics: Arc<Metrics>,
    /// OpenID Connect (console sign-in, bearer JWTs); `None` when no issuer is configured.
    pub oidc: Option<Arc<Oidc>>,
    /// Failed credential attempts per source address.
    pub auth_failures: Arc<FailureLimiter>,
    /// Committed desired-state changes, from this replica's LISTEN.
    pub changes: tokio::sync::broadcast::Sender<Change>,
    /// What `/install.sh` and `/downloads` serve.
    pub install: Arc<InstallConfig>,
    /// Where flows are stored and read.
    pub flows: crate::flows::SharedFlowStore,
    /// Stored flow batches of every replica, from this replica's LISTEN (live streams).
    pub flow_notices: tokio::sync::broadcast::Sender<crate::flows::Notice>,
    /// The ingest queue in front of `flows`, drained by a few writer tasks.
    pub flow_writer: crate::flows::writer::FlowWriter,
    /// Ingest's endpoint/identity/service lookups, cleared on each change of a tenant.
    pub enrich_cache: Arc<crate::flows::ingest::EnrichCache>,
    /// The built web console served at `/console/`, if any.
    pub console_dir: Option<Arc<std::path::Path>>,
}

impl AppState {
    /// The state of one replica over a connected pool: fresh metrics and rate limits, and
    /// this replica's change listener.
    pub fn new(
        pool: PgPool,
        operator_token_hash: Option<Vec<u8>>,
        oidc: Option<Arc<crate::oidc::Oidc>>,
        auth_failures: FailureLimiter,
    ) -> AppState {
        let changes = crate::changes::spawn_listener(pool.clone());
        let flows: crate::flows::SharedFlowStore =
            Arc::new(crate::flows::pg::PgFlowStore::new(pool.clone()));
        let enrich_cache = Arc::new(crate::flows::ingest::EnrichCache::default());
        enrich_cache.spawn_invalidation(changes.subscribe());
        use crate::flows::writer;
        AppState {
            flow_writer: writer::FlowWriter::spawn(
                flows.clone(),
                writer::WRITERS,
                writer::QUEUE_BATCHES,
            ),
            enrich_cache,
            changes,
            flows,
            flow_notices: crate::flows::spawn_notice_listener(pool.clone()),
            pool,
            operator_token_hash,
            metrics: Arc::new(Metrics::new()),
            oidc,
            auth_failures: Arc::new(auth_failures),
            install: Arc::default(),
            console_dir: None,
        }
    }

    /// The same state serving the built console in `dir` at `/console/`.
    pub fn with_console(mut self, dir: Option<std::path::PathBuf>) -> AppState {
        self.console_dir = dir.map(Arc::from);
        self
    }

    /// The same state serving this installer configuration.
    pub fn with_install(mut self, install: Arc<InstallConfig>) -> AppState {
        self.install = install;
        self
    }
}
