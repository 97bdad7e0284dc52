//! Postgres: pool and embedded migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool};

/// The schema, in order: `db/migrations/NNNN_name.sql`, embedded at build time so the binary
/// carries its own schema (`build.rs` rebuilds when the folder changes; a test checks the
/// embedded list against the folder so a stale build cannot go unnoticed).
pub static MIGRATOR: Migrator = sqlx::migrate!("../db/migrations");

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
    MIGRATOR
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
        // A connection keeps buffers as large as the largest statement it sent and the
        // largest row it read (a tenant view, a batch of node states: megabytes at 1,000
        // nodes); back to their default on release, an idle pool holds kilobytes.
        .after_release(|conn, _| {
            Box::pin(async move {
                conn.shrink_buffers();
                Ok(true)
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
        let embedded: Vec<String> = super::MIGRATOR
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.description.replace(' ', "_")))
            .collect();
        assert_eq!(
            files, embedded,
            "the embedded migrations are stale: rebuild control-api (build.rs watches db/migrations)"
        );
    }
}
