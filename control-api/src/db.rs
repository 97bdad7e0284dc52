//! Postgres: pool and embedded migrations.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context;
use futures_core::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// The schema, in order. Embedded so the binary carries its own schema; a test checks this
/// list against `db/migrations/` so a new file cannot be forgotten.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../db/migrations/0001_init.sql")),
    (
        2,
        "rls_audit",
        include_str!("../../db/migrations/0002_rls_audit.sql"),
    ),
    (
        3,
        "users_sessions",
        include_str!("../../db/migrations/0003_users_sessions.sql"),
    ),
    (
        4,
        "agents",
        include_str!("../../db/migrations/0004_agents.sql"),
    ),
    (
        5,
        "flows",
        include_str!("../../db/migrations/0005_flows.sql"),
    ),
    (
        6,
        "node_sync_state",
        include_str!("../../db/migrations/0006_node_sync_state.sql"),
    ),
    (
        8,
        "test_workloads",
        include_str!("../../db/migrations/0008_test_workloads.sql"),
    ),
    (
        9,
        "flow_blocks",
        include_str!("../../db/migrations/0009_flow_blocks.sql"),
    ),
    (
        10,
        "policy_fields",
        include_str!("../../db/migrations/0010_policy_fields.sql"),
    ),
];

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, desc, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*desc),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub async fn migrator() -> anyhow::Result<Migrator> {
    Migrator::new(Embedded)
        .await
        .context("loading embedded migrations")
}

/// Creates a new, empty database `name` on the server of `admin_url` and returns its URL
/// (tests and tools: each test gets its own database).
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "database name {name:?} must be lowercase letters, digits and '_'"
    );
    let opts: PgConnectOptions = admin_url.parse().context("parsing the database URL")?;
    let mut conn = PgConnection::connect_with(&opts)
        .await
        .context("connecting to Postgres")?;
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .with_context(|| format!("creating database {name}"))?;
    conn.close().await.context("closing the admin connection")?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("the database URL has no database part")?;
    Ok(format!("{base}/{name}"))
}

/// The role requests run as: it cannot bypass row-level security (migration 0002).
pub const APP_ROLE: &str = "weft_app";

/// Applies the migrations over one connection as the URL's own user (the schema owner).
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let opts: PgConnectOptions = url.parse().context("parsing the database URL")?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect_with(&opts))
        .await
        .context("connecting to Postgres: timed out after 5 s")?
        .context("connecting to Postgres")?;
    migrator()
        .await?
        .run(&mut conn)
        .await
        .context("applying database migrations")?;
    conn.close()
        .await
        .context("closing the migration connection")?;
    Ok(())
}

/// Connects the request pool. Every connection switches to [`APP_ROLE`], so row-level
/// security applies to every query the API makes. Fails fast (5 s) when Postgres is not
/// there.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let opts: PgConnectOptions = url.parse().context("parsing the database URL")?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(format!("SET ROLE {APP_ROLE}").as_str())
                    .await?;
                Ok(())
            })
        })
        .connect_with(opts)
        .await
        .context("connecting to Postgres")
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_migrations_match_the_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../db/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("db/migrations exists")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = super::MIGRATIONS
            .iter()
            .map(|(v, d, _)| format!("{v:04}_{d}.sql"))
            .collect();
        assert_eq!(files, embedded, "add new migration files to db::MIGRATIONS");
    }
}
