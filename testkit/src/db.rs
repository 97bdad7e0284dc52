//! A fresh database per test on the private PostgreSQL that `cargo xtask test` starts, and
//! the environment the harnesses read from it.

/// The environment variable `name`, which `cargo xtask test` sets; a clear panic otherwise.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with `cargo xtask test`, which starts a private \
             PostgreSQL and the OIDC provider and installs terraform"
        )
    })
}

/// Test logs at `filter` (the first call in a test binary wins).
pub fn init_tracing(filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A new database named `{prefix}_{uuid}` on `WEFT_TEST_DATABASE_URL`, with every migration
/// applied; returns its URL.
pub async fn fresh(prefix: &str) -> String {
    let url = env("WEFT_TEST_DATABASE_URL");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let db_url = control_api::db::create_database(&url, &name)
        .await
        .expect("create the test database");
    control_api::db::migrate(&db_url).await.expect("migrate");
    db_url
}

/// Asserts that a statement was refused by PostgreSQL with `sqlstate` (e.g. `42501`,
/// insufficient privilege) and a message containing `message`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, sqlx::Error>,
    sqlstate: &str,
    message: &str,
) {
    let err = result.expect_err("the statement is refused");
    let db = err
        .as_database_error()
        .unwrap_or_else(|| panic!("a database error, not {err:?}"));
    assert_eq!(db.code().as_deref(), Some(sqlstate), "{}", db.message());
    assert!(
        db.message().contains(message),
        "`{}` does not say `{message}`",
        db.message()
    );
}
