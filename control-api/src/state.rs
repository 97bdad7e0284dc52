//! What every handler shares. Everything durable is in Postgres; this is only handles.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use axum::extract::FromRef;

use crate::auth::AuthState;
use crate::changes::Changes;
use crate::install::InstallConfig;
use crate::metrics::Metrics;
use crate::oidc::Oidc;
use crate::ratelimit::FailureLimiter;
use crate::tasks::Tasks;

/// Agent streams a replica opens at once (see [`AppState::stream_opens`]).
pub const STREAM_OPENS: usize = 16;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// SHA-256 of the operator's bootstrap token, if one is configured.
    pub operator_token_hash: Option<Arc<[u8]>>,
    pub metrics: Arc<Metrics>,
    /// OpenID Connect (console sign-in, bearer JWTs); `None` when no issuer is configured.
    pub oidc: Option<Arc<Oidc>>,
    /// Failed credential attempts per source address.
    pub auth_failures: Arc<FailureLimiter>,
    /// Committed desired-state changes, from this replica's LISTEN.
    pub changes: Changes,
    /// Tenant views shared by this replica's agent streams: one load per change.
    pub views: Arc<crate::views::Views>,
    /// What nodes were sent and acked, written in batches (one transaction per batch).
    pub node_writes: Arc<crate::group_commit::NodeWrites>,
    /// Connected nodes' `last_seen`, written for all of this replica's streams at once.
    pub heartbeats: Arc<crate::heartbeats::Heartbeats>,
    /// Node credentials this replica has checked, until a change may revoke them.
    pub node_credentials: Arc<crate::node_credentials::NodeCredentials>,
    /// Agent streams opening at once (each reads the node's state and sends a snapshot):
    /// a reconnect storm queues here instead of exhausting the database pool.
    pub stream_opens: Arc<tokio::sync::Semaphore>,
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
    /// How long a request (its body included; not a stream's events) may take: 408 after.
    pub request_timeout: Duration,
    /// The replica's background tasks: stopped by [`crate::tasks::Tasks::shutdown`], or
    /// when the last clone of this state is dropped.
    pub tasks: Arc<Tasks>,
}

impl AppState {
    /// The state of one replica over a connected pool: fresh metrics and rate limits, and
    /// this replica's background tasks (the change and flow-notice listeners, the flow
    /// writers, the heartbeats, the enrich cache's and node credentials' invalidation), owned
    /// by `tasks`.
    pub fn new(
        pool: PgPool,
        operator_token_hash: Option<Vec<u8>>,
        oidc: Option<Arc<crate::oidc::Oidc>>,
        auth_failures: FailureLimiter,
    ) -> AppState {
        let tasks = Arc::new(Tasks::new());
        let changes = crate::changes::spawn_listener(pool.clone(), &tasks);
        let flows: crate::flows::SharedFlowStore =
            Arc::new(crate::flows::pg::PgFlowStore::new(pool.clone()));
        let enrich_cache = Arc::new(crate::flows::ingest::EnrichCache::default());
        // Every change of a tenant may change what ingest looked up for it.
        changes.spawn_invalidation(
            &tasks,
            "enrich cache invalidation",
            &enrich_cache,
            |_| true,
            crate::flows::ingest::EnrichCache::invalidate,
        );
        let node_credentials = Arc::new(crate::node_credentials::NodeCredentials::default());
        changes.spawn_invalidation(
            &tasks,
            "node credential invalidation",
            &node_credentials,
            |c| c.may_revoke_nodes,
            crate::node_credentials::NodeCredentials::invalidate,
        );
        let metrics = Arc::new(Metrics::new());
        use crate::flows::writer;
        AppState {
            flow_writer: writer::FlowWriter::spawn(
                flows.clone(),
                writer::WRITERS,
                writer::QUEUE_BATCHES,
                &tasks,
            ),
            enrich_cache,
            views: Arc::new(crate::views::Views::new(pool.clone(), changes.clone())),
            node_writes: Arc::new(crate::group_commit::NodeWrites::spawn(pool.clone(), &tasks)),
            heartbeats: crate::heartbeats::Heartbeats::spawn(pool.clone(), metrics.clone(), &tasks),
            node_credentials,
            stream_opens: Arc::new(tokio::sync::Semaphore::new(STREAM_OPENS)),
            changes,
            flows,
            flow_notices: crate::flows::spawn_notice_listener(pool.clone(), &tasks),
            pool,
            operator_token_hash: operator_token_hash.map(Arc::from),
            metrics,
            oidc,
            auth_failures: Arc::new(auth_failures),
            install: Arc::default(),
            console_dir: None,
            request_timeout: Duration::from_secs(30),
            tasks,
        }
    }

    /// Also runs the periodic housekeeping a serving replica does: collecting unused
    /// identities (after `identity_grace`) and keeping flow partitions (for
    /// `flow_retention_days`). Several replicas may run it at once.
    pub fn start_housekeeping(&self, identity_grace: Duration, flow_retention_days: u32) {
        crate::identities::spawn_collector(
            &self.tasks,
            self.pool.clone(),
            identity_grace,
            Duration::from_secs(60),
        );
        crate::flows::spawn_maintenance(
            &self.tasks,
            self.pool.clone(),
            flow_retention_days,
            Duration::from_secs(3600),
        );
    }

    /// The same state serving the built console in `dir` at `/console/`.
    pub fn with_console(mut self, dir: Option<std::path::PathBuf>) -> AppState {
        self.console_dir = dir.map(Arc::from);
        self
    }

    /// The same state answering 408 to requests that take longer than `timeout`.
    pub fn with_request_timeout(mut self, timeout: Duration) -> AppState {
        self.request_timeout = timeout;
        self
    }

    /// The same state serving this installer configuration.
    pub fn with_install(mut self, install: Arc<InstallConfig>) -> AppState {
        self.install = install;
        self
    }
}

impl FromRef<AppState> for AuthState {
    fn from_ref(st: &AppState) -> AuthState {
        AuthState {
            pool: st.pool.clone(),
            operator_token_hash: st.operator_token_hash.clone(),
            oidc: st.oidc.clone(),
            failures: st.auth_failures.clone(),
        }
    }
}

impl FromRef<AppState> for Arc<crate::metrics::Metrics> {
    fn from_ref(st: &AppState) -> Self {
        st.metrics.clone()
    }
}
