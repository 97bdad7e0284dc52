//! The store: row types and queries on a `&mut PgConnection` (or the pool, for the few
//! lookups made before a tenant is known). The REST handlers (`api`) and the agent
//! service (`agent`) both stand on it; it imports neither.
//!
//! - [`tenant`]: the tenant transaction (`set_tenant`), roles and the acting tenant;
//! - [`revision`]: the desired-state revision bump, change log and NOTIFY;
//! - [`audit`]: the audit log, written in the same transaction as the change, and read;
//! - [`lookup`]: credential and tenant lookups across tenants;
//! - [`rows`]: any resource's row by id or name, and its lock for a guarded write;
//! - [`view`]: the tenant's view the desired-state compiler reads;
//! - one module per resource, its rows and queries: [`tenants`], [`members`],
//!   [`api_tokens`], [`clusters`], [`join_tokens`], [`policies`], [`services`],
//!   [`workloads`], [`probes`], [`inventory`] (nodes, endpoints, identities as the API
//!   shows them), [`me`], [`logins`], [`users`] and [`sessions`] (people and their
//!   console sessions);
//! - what agents write: [`nodes`] (registration, sync state, acks, health) and
//!   [`endpoints`] (reported endpoints and their identities).

pub mod api_tokens;
pub mod audit;
pub mod clusters;
pub mod endpoints;
pub mod inventory;
pub mod join_tokens;
pub mod logins;
pub mod lookup;
pub mod me;
pub mod members;
pub mod nodes;
pub mod policies;
pub mod probes;
pub mod revision;
pub mod rows;
pub mod services;
pub mod sessions;
pub mod tenant;
pub mod tenants;
pub mod users;
pub mod view;
pub mod workloads;

pub use revision::{
    announce, bump_revision, lock_revisions, next_revision, record_change, Op, CHANGES_CHANNEL,
};
pub use tenant::{set_tenant, set_user, TenantCtx};

/// Whether Postgres answers (readiness).
pub async fn ping(pool: &sqlx::PgPool) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}
