//! Schema upgrades (issue #19): a database at an older schema, with rows in every table, is
//! migrated to the newest schema without losing any of them; and the newest migrations run
//! online: with the flows table holding a million blocks, none rewrites, scans under lock or
//! indexes a big table.
//!
//! A migration that adds a table or a column adds a row to [`FIXTURES`] (tagged with its
//! version) that fills it: once the migration is older than the two newest, the upgrade test
//! starts from a schema that has it and fails on a table with no row.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use sqlx::migrate::{Migrate, Migration};
use sqlx::{Connection, PgConnection};

/// A table with more rows than this must not be rewritten, scanned under lock or indexed by a
/// migration (the issue: "no table rewrite under an exclusive lock on a table of > 1M rows";
/// lower here so that the check has a margin below the table it is measured with).
const BIG_TABLE_ROWS: i64 = 100_000;

/// Flow blocks in the big table. A real block packs ~1,000 flows into a few kB; these carry
/// 8 bytes of data, which keeps the fill (the bulk of the test's time) short: what a
/// rewrite or a scan would be caught by (a new file, a new validated constraint) does not
/// depend on the size of the rows.
const BIG_ROWS: i64 = 1_000_000;

/// Rows for every table, each tagged with the version of the migration whose schema it needs;
/// a schema at version V gets every fixture up to V. Later columns are set by `UPDATE`s
/// tagged with the migration that adds them, so their values are checked to survive too.
const FIXTURES: &[(i64, &str)] = &[
    (
        1,
        "UPDATE desired_state SET revision = 42;
        INSERT INTO tenants (id, name, display_name, labels, revision) VALUES
            ('a0000000-0000-4000-8000-000000000001', 'acme', 'Acme Corp', '{\"tier\": \"gold\"}', 1),
            ('a0000000-0000-4000-8000-000000000002', 'globex', '', '{}', 2);
        INSERT INTO desired_state_changes (revision, tenant_id, kind, resource_id, op) VALUES
            (1, 'a0000000-0000-4000-8000-000000000001', 'tenant', 'a0000000-0000-4000-8000-000000000001', 'create'),
            (2, 'a0000000-0000-4000-8000-000000000002', 'tenant', 'a0000000-0000-4000-8000-000000000002', 'create'),
            (3, 'a0000000-0000-4000-8000-000000000001', 'cluster', 'c0000000-0000-4000-8000-000000000001', 'create');
        INSERT INTO clusters (id, tenant_id, name, description, labels, revision) VALUES
            ('c0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'prod', 'production', '{\"env\": \"prod\"}', 3),
            ('c0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000002', 'lab', '', '{}', 4);
        INSERT INTO nodes (id, tenant_id, cluster_id, name, labels, addresses, pod_cidrs, credential_hash,
                           agent_version, kernel_version, last_seen, applied_revision, health, revision) VALUES
            ('d0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 'node-a', '{\"zone\": \"a\"}', '{10.0.0.1,fd00::1}',
             '{10.1.0.0/24,fd00:1::/64}', '\\x01', '0.1.0', '6.1.0', now(), 40, '{\"bpf\": \"ok\"}', 5),
            ('d0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000002',
             'c0000000-0000-4000-8000-000000000002', 'node-b', '{}', '{10.0.0.2}', '{10.2.0.0/24}',
             NULL, NULL, NULL, NULL, 0, '{}', 6);
        INSERT INTO join_tokens (id, tenant_id, cluster_id, name, token_hash, max_uses, uses, expires_at) VALUES
            ('e0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 'bootstrap', '\\x02', 10, 1, now() + interval '1 day');
        INSERT INTO identities (tenant_id, number, labels) VALUES
            ('a0000000-0000-4000-8000-000000000001', 256, '{\"app\": \"web\"}');
        INSERT INTO endpoints (id, tenant_id, cluster_id, node_id, name, labels, ipv4, ipv6, identity, state, revision) VALUES
            ('ee000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 'd0000000-0000-4000-8000-000000000001', 'web-0',
             '{\"app\": \"web\"}', '10.1.0.5', 'fd00:1::5', 256, 'ready', 7);
        INSERT INTO policies (id, tenant_id, name, description, labels, specs, cluster_ids, revision) VALUES
            ('b0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'allow-web',
             'web from anywhere', '{\"team\": \"web\"}',
             '[{\"endpointSelector\": {\"matchLabels\": {\"app\": \"web\"}}, \"ingress\": [{}]}]',
             '{c0000000-0000-4000-8000-000000000001}', 8),
            ('b0000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000002', 'deny-all',
             '', '{}', '[{\"endpointSelector\": {}, \"ingressDeny\": [{}]}]', NULL, 9);
        INSERT INTO services (id, tenant_id, cluster_id, name, labels, algorithm, affinity_timeout, revision) VALUES
            ('5e000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 'web', '{}', 'maglev', 300, 10);
        INSERT INTO service_frontends (service_id, tenant_id, cluster_id, position, vip, port, protocol) VALUES
            ('5e000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 0, '10.96.0.10', 80, 'TCP');
        INSERT INTO service_backends (service_id, tenant_id, position, address, port, weight, state) VALUES
            ('5e000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 0,
             '10.1.0.5', 8080, 1, 'active');
        INSERT INTO api_tokens (id, tenant_id, name, role, token_hash, expires_at) VALUES
            ('aa000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'ci', 'editor',
             '\\x03', now() + interval '30 days');",
    ),
    (
        2,
        "INSERT INTO audit_log (id, tenant_id, actor_kind, actor_id, actor_name, action, resource_kind,
                               resource_id, resource_name, request_id, before, after) VALUES
            ('ad000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 'api_token',
             'aa000000-0000-4000-8000-000000000001', 'ci', 'create', 'policy',
             'b0000000-0000-4000-8000-000000000001', 'allow-web', 'req-1', NULL, '{\"name\": \"allow-web\"}');",
    ),
    (
        3,
        "INSERT INTO users (id, issuer, subject, email, email_verified, name, last_login_at) VALUES
            ('f0000000-0000-4000-8000-000000000001', 'https://idp.example', 'sub-1', 'ada@example.com',
             true, 'Ada', now());
        INSERT INTO memberships (id, tenant_id, user_id, role) VALUES
            ('f1000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'f0000000-0000-4000-8000-000000000001', 'owner');
        INSERT INTO invitations (id, tenant_id, email, role) VALUES
            ('f2000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000002',
             'bob@example.com', 'viewer');
        INSERT INTO sessions (id_hash, user_id, csrf_hash, expires_at) VALUES
            ('\\x04', 'f0000000-0000-4000-8000-000000000001', '\\x05', now() + interval '1 hour');
        INSERT INTO oidc_logins (state_hash, pkce_verifier, nonce, return_to, expires_at) VALUES
            ('\\x06', 'verifier', 'nonce', '/console', now() + interval '5 minutes');",
    ),
    (
        6,
        "INSERT INTO node_sync_state (node_id, tenant_id, revision, state) VALUES
            ('d0000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001', 40,
             '{\"policies\": [], \"ipcache\": []}');",
    ),
    (
        8,
        "INSERT INTO test_workloads (id, tenant_id, cluster_id, node_id, name, kind, ip, labels, echo_ports, revision) VALUES
            ('7e000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 'd0000000-0000-4000-8000-000000000001', 'echo-a',
             'pod', '10.1.0.7', '{\"weft.test\": \"echo-a\"}', '{7,8080}', 11);
        INSERT INTO probes (id, tenant_id, cluster_id, node_id, from_workload, target_ip, target_port,
                            timeout_ms, labels, revision, outcome, detail, latency_us, reply_from, finished_at) VALUES
            ('9b000000-0000-4000-8000-000000000001', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 'd0000000-0000-4000-8000-000000000001', 'echo-a',
             '10.1.0.5', 8080, 1000, '{}', 12, 'connected', NULL, 250, 'web-0', now()),
            ('9b000000-0000-4000-8000-000000000002', 'a0000000-0000-4000-8000-000000000001',
             'c0000000-0000-4000-8000-000000000001', 'd0000000-0000-4000-8000-000000000001', NULL,
             '10.96.0.10', 80, 1000, '{}', 13, NULL, NULL, NULL, NULL, NULL);",
    ),
    (
        9,
        "INSERT INTO flow_blocks (tenant_id, batch, min_time, max_time, node_id, node_name, cluster_id,
                                 cluster_name, flows, keys, edges, data) VALUES
            ('a0000000-0000-4000-8000-000000000002', 1, now() - interval '1 minute', now(),
             'd0000000-0000-4000-8000-000000000002', 'node-b', 'c0000000-0000-4000-8000-000000000002',
             'lab', 2, '{verdict:DROPPED,port:53}', '{\"edges\": []}', '\\x0102');",
    ),
    (
        10,
        "UPDATE clusters SET allow_host_to_local_pods = false
            WHERE id = 'c0000000-0000-4000-8000-000000000002';
        UPDATE endpoints SET named_ports = '[{\"name\": \"http\", \"port\": 8080, \"protocol\": \"TCP\"}]';",
    ),
    (
        11,
        "INSERT INTO sent_ipcache (tenant_id, digest, entries) VALUES
            ('a0000000-0000-4000-8000-000000000001', '\\x07', '[{\"ip\": \"10.1.0.5\", \"identity\": 256}]');
        UPDATE node_sync_state SET ipcache_digest = '\\x07';",
    ),
    (12, "UPDATE node_sync_state SET local_pb = '\\x0a00', state = NULL;"),
    (
        14,
        "UPDATE clusters SET routing_mode = 'native' WHERE id = 'c0000000-0000-4000-8000-000000000001';
        UPDATE sent_ipcache SET nodes = '[{\"name\": \"node-a\"}]';",
    ),
    (15, "UPDATE test_workloads SET ip6 = 'fd00:1::7';"),
    (
        16,
        "UPDATE probes SET http_method = 'GET', http_path = '/healthz', http_status = 200
            WHERE id = '9b000000-0000-4000-8000-000000000001';",
    ),
];

/// The project's migrations, oldest first.
fn migrations() -> Vec<&'static Migration> {
    control_api::db::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect()
}

/// A new database at the schema of `applied` (recorded in `_sqlx_migrations` by sqlx itself,
/// so `control_api::db::migrate` later applies only the rest), and a connection to it.
async fn database_at(prefix: &str, applied: &[&Migration]) -> (String, PgConnection) {
    let admin = weft_testkit::db::env("WEFT_TEST_DATABASE_URL");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let url = control_api::db::create_database(&admin, &name)
        .await
        .expect("create the test database");
    let mut conn = connect(&url).await;
    conn.ensure_migrations_table()
        .await
        .expect("create _sqlx_migrations");
    for m in applied {
        conn.apply(m)
            .await
            .unwrap_or_else(|e| panic!("apply migration {}: {e}", m.version));
    }
    (url, conn)
}

/// A connection as the schema owner. Row-level security off: a count that RLS would filter
/// fails instead of silently seeing fewer rows (the test's user is a superuser, which
/// bypasses RLS; this keeps the test honest if it ever is not).
async fn connect(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql("SET row_security = off")
        .execute(&mut conn)
        .await
        .expect("row_security off");
    conn
}

fn quoted(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Runs the fixtures of the migrations in `versions`.
async fn fill(conn: &mut PgConnection, versions: impl std::ops::RangeBounds<i64>) {
    for (since, sql) in FIXTURES
        .iter()
        .filter(|(since, _)| versions.contains(since))
    {
        sqlx::raw_sql(sql)
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("fixtures of migration {since}: {e}"));
    }
}

/// Fills the flow blocks to `rows` (all in today's partition, where ingest writes).
async fn fill_flow_blocks(conn: &mut PgConnection, rows: i64) {
    sqlx::query(
        "INSERT INTO flow_blocks (tenant_id, batch, min_time, max_time, node_id, node_name,
                                  cluster_id, cluster_name, flows, keys, edges, data)
         SELECT 'a0000000-0000-4000-8000-000000000001', g / 16, now() - interval '10 seconds',
                now(), 'd0000000-0000-4000-8000-000000000001', 'node-a',
                'c0000000-0000-4000-8000-000000000001', 'prod', 1000,
                ARRAY['verdict:FORWARDED', 'port:' || g % 1000], '{}', int8send(g)
         FROM generate_series(1, $1::bigint) g",
    )
    .bind(rows)
    .execute(conn)
    .await
    .expect("fill flow_blocks");
}

/// What a table holds: its columns, and its rows as a multiset.
struct TableContent {
    columns: BTreeSet<String>,
    rows: i64,
    /// Sum of the rows' 64-bit hashes (order-independent, so no sort of a million rows).
    hash: String,
    /// The rows themselves, sorted, for a readable difference (small tables only).
    listed: Option<Vec<String>>,
}

/// Tables (not partitions: the parent holds their rows) of the public schema.
async fn tables(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
           AND NOT c.relispartition AND c.relname <> '_sqlx_migrations'
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .expect("list tables")
}

async fn columns(conn: &mut PgConnection, table: &str) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
    )
    .bind(quoted(table))
    .fetch_all(conn)
    .await
    .expect("list columns")
    .into_iter()
    .collect()
}

/// The content of `table` restricted to `keep` (the columns it had before the upgrade: a
/// column added since is not part of what must survive).
async fn content(conn: &mut PgConnection, table: &str, keep: &BTreeSet<String>) -> TableContent {
    let columns = columns(conn, table).await;
    let added: Vec<String> = columns.difference(keep).cloned().collect();
    // jsonb's text form is canonical (keys in a fixed order): equal rows, equal text.
    let row = "(to_jsonb(t) - $1::text[])::text";
    let (rows, hash): (i64, String) = sqlx::query_as(&format!(
        "SELECT count(*), coalesce(sum(hashtextextended({row}, 0)::numeric), 0)::text
         FROM {} t",
        quoted(table)
    ))
    .bind(&added)
    .fetch_one(&mut *conn)
    .await
    .unwrap_or_else(|e| panic!("read {table}: {e}"));
    let listed = if rows <= 1000 {
        Some(
            sqlx::query_scalar(&format!(
                "SELECT {row} AS r FROM {} t ORDER BY r",
                quoted(table)
            ))
            .bind(&added)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("list {table}: {e}")),
        )
    } else {
        None
    };
    TableContent {
        columns,
        rows,
        hash,
        listed,
    }
}

/// Every table's content; asserts that every table has rows, so that a table the fixtures
/// miss cannot pass the upgrade check by being empty.
async fn snapshot(conn: &mut PgConnection) -> BTreeMap<String, TableContent> {
    let mut all = BTreeMap::new();
    for table in tables(conn).await {
        let cols = columns(conn, &table).await;
        all.insert(table.clone(), content(conn, &table, &cols).await);
    }
    let empty: Vec<&String> = all
        .iter()
        .filter(|(_, c)| c.rows == 0)
        .map(|(t, _)| t)
        .collect();
    assert!(
        empty.is_empty(),
        "tables without a row before the upgrade (add them to FIXTURES): {empty:?}"
    );
    all
}

/// What the upgrade lost or changed of `before`: one line per problem.
async fn losses(conn: &mut PgConnection, before: &BTreeMap<String, TableContent>) -> Vec<String> {
    let now: HashSet<String> = tables(conn).await.into_iter().collect();
    let mut problems = Vec::new();
    for (table, old) in before {
        if !now.contains(table) {
            problems.push(format!("{table}: the table is gone ({} rows)", old.rows));
            continue;
        }
        let new = content(conn, table, &old.columns).await;
        let dropped: Vec<&String> = old.columns.difference(&new.columns).collect();
        if !dropped.is_empty() {
            problems.push(format!("{table}: columns gone: {dropped:?}"));
        }
        if (new.rows, &new.hash) == (old.rows, &old.hash) {
            continue;
        }
        let mut line = format!("{table}: {} rows before, {} after", old.rows, new.rows);
        if let (Some(old), Some(new)) = (&old.listed, &new.listed) {
            let gone: Vec<&String> = old.iter().filter(|r| !new.contains(r)).collect();
            let came: Vec<&String> = new.iter().filter(|r| !old.contains(r)).collect();
            line += &format!("; gone: {gone:?}; new or changed: {came:?}");
        } else {
            line += "; the rows' content differs";
        }
        problems.push(line);
    }
    problems
}

/// Asserts that `_sqlx_migrations` records every migration, each applied successfully.
async fn assert_fully_migrated(conn: &mut PgConnection) {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(conn)
            .await
            .expect("read _sqlx_migrations");
    let all: Vec<i64> = migrations().iter().map(|m| m.version).collect();
    assert_eq!(applied, all, "migrations recorded after the upgrade");
}

/// A relation with storage: a table, one of its indexes, or its TOAST table.
struct File {
    /// The table it belongs to.
    table: i64,
    name: String,
    is_index: bool,
    filenode: i64,
}

/// The catalog facts that show a schema change doing work proportional to a table's size.
struct Catalog {
    /// Tables by oid, with their names and rows.
    tables: HashMap<i64, (String, i64)>,
    files: HashMap<i64, File>,
    /// CHECK and FOREIGN KEY (and, from PostgreSQL 18, NOT NULL) constraints by (table,
    /// name): whether validated.
    constraints: HashMap<(i64, String), bool>,
    /// Columns by (table, name): whether NOT NULL.
    not_null: HashMap<(i64, String), bool>,
}

impl Catalog {
    async fn read(conn: &mut PgConnection) -> Catalog {
        // Partitions are tables of their own here: the one holding the rows is the big one.
        let tables: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT c.oid::int8, c.relname::text,
                    (xpath('/row/n/text()', query_to_xml(
                        format('SELECT count(*) AS n FROM ONLY %s', c.oid::regclass),
                        false, true, '')))[1]::text::int8
             FROM pg_class c
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'm')",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("count rows per table");
        let files: Vec<(i64, i64, String, bool, i64)> = sqlx::query_as(
            "SELECT r.oid::int8, t.oid::int8, r.relname::text, r.relkind = 'i',
                    pg_relation_filenode(r.oid)::int8
             FROM pg_class t
             JOIN pg_class r ON r.oid = t.oid OR r.oid = t.reltoastrelid
                             OR r.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = t.oid)
             WHERE t.relnamespace = 'public'::regnamespace AND t.relkind IN ('r', 'm')",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("list relation files");
        let constraints: Vec<(i64, String, bool)> = sqlx::query_as(
            "SELECT conrelid::int8, conname::text, convalidated FROM pg_constraint
             WHERE connamespace = 'public'::regnamespace AND contype IN ('c', 'f', 'n')",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("list constraints");
        let not_null: Vec<(i64, String, bool)> = sqlx::query_as(
            "SELECT a.attrelid::int8, a.attname::text, a.attnotnull FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'm')
               AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("list columns");
        Catalog {
            tables: tables
                .into_iter()
                .map(|(oid, name, rows)| (oid, (name, rows)))
                .collect(),
            files: files
                .into_iter()
                .map(|(oid, table, name, is_index, filenode)| {
                    let file = File {
                        table,
                        name,
                        is_index,
                        filenode,
                    };
                    (oid, file)
                })
                .collect(),
            constraints: constraints
                .into_iter()
                .map(|(table, name, valid)| ((table, name), valid))
                .collect(),
            not_null: not_null
                .into_iter()
                .map(|(table, name, nn)| ((table, name), nn))
                .collect(),
        }
    }

    /// The table `oid`'s name and rows if it had more than [`BIG_TABLE_ROWS`] rows.
    fn big(&self, oid: i64) -> Option<&(String, i64)> {
        self.tables
            .get(&oid)
            .filter(|(_, rows)| *rows > BIG_TABLE_ROWS)
    }
}

/// What a change between `before` and `after` did to big tables that is not online: one line
/// per problem. A rewrite gives the table (or its index or TOAST) a new file; a new validated
/// CHECK or FOREIGN KEY constraint, or SET NOT NULL, was checked by a full scan under an
/// exclusive lock (add it NOT VALID, then VALIDATE it: that scan lets writes through); a new
/// index was built by a scan that blocks writes (CREATE INDEX CONCURRENTLY, outside the
/// migration's transaction, does not).
fn offline_work(before: &Catalog, after: &Catalog) -> Vec<String> {
    let mut problems = Vec::new();
    for (oid, old) in &before.files {
        let Some((table, rows)) = before.big(old.table) else {
            continue;
        };
        if after
            .files
            .get(oid)
            .is_some_and(|new| new.filenode != old.filenode)
        {
            problems.push(format!(
                "rewrites {table} ({rows} rows): {} has a new file",
                old.name
            ));
        }
    }
    for (oid, new) in &after.files {
        let Some((table, rows)) = before.big(new.table) else {
            continue;
        };
        if new.is_index && !before.files.contains_key(oid) {
            problems.push(format!(
                "builds index {} on {table} ({rows} rows), blocking writes",
                new.name
            ));
        }
    }
    for ((oid, name), valid) in &after.constraints {
        let Some((table, rows)) = before.big(*oid) else {
            continue;
        };
        if *valid && !before.constraints.contains_key(&(*oid, name.clone())) {
            problems.push(format!(
                "adds constraint {name} to {table} ({rows} rows) validated: a scan under lock \
                 (add it NOT VALID, then VALIDATE it)"
            ));
        }
    }
    for ((oid, column), nn) in &after.not_null {
        let Some((table, rows)) = before.big(*oid) else {
            continue;
        };
        if *nn && before.not_null.get(&(*oid, column.clone())) == Some(&false) {
            problems.push(format!(
                "sets {table}.{column} NOT NULL ({rows} rows): a scan under lock"
            ));
        }
    }
    problems.sort();
    problems
}

/// A schema change whose work the checker measures.
enum Change<'a> {
    Migration(&'a Migration),
    Sql(&'a str),
}

/// Applies `change` and returns how long it took and what it did offline to big tables.
async fn apply_checked(conn: &mut PgConnection, change: Change<'_>) -> (Duration, Vec<String>) {
    let before = Catalog::read(conn).await;
    let started = Instant::now();
    match change {
        Change::Migration(m) => {
            conn.apply(m)
                .await
                .unwrap_or_else(|e| panic!("apply migration {}: {e}", m.version));
        }
        Change::Sql(sql) => {
            sqlx::raw_sql(sql)
                .execute(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    let took = started.elapsed();
    (took, offline_work(&before, &Catalog::read(conn).await))
}

fn name(m: &Migration) -> String {
    format!("{:04}_{}", m.version, m.description.replace(' ', "_"))
}

/// Upgrades from the previous release, taken as every migration but the two newest, so the
/// test keeps upgrading across the newest changes as migrations are added. The newest ones
/// are what a running install will apply next: each is applied on its own, with the flows
/// table at a million blocks, and must be online.
#[tokio::test]
async fn upgrading_from_the_previous_release_keeps_every_row_and_runs_online() {
    let all = migrations();
    assert!(all.len() > 2, "fewer than three migrations");
    let (old, new) = all.split_at(all.len() - 2);
    let started = Instant::now();
    let (url, mut conn) = database_at("upgrade_prev", old).await;
    let version = old.last().expect("an old migration").version;
    fill(&mut conn, ..=version).await;
    let filling = Instant::now();
    fill_flow_blocks(&mut conn, BIG_ROWS).await;
    eprintln!(
        "filled flow_blocks with {BIG_ROWS} rows in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    let before = snapshot(&mut conn).await;
    assert!(
        before.get("flow_blocks").is_some_and(|t| t.rows > BIG_ROWS),
        "flow_blocks holds the fill"
    );

    let mut offline = Vec::new();
    for m in new {
        let (took, problems) = apply_checked(&mut conn, Change::Migration(m)).await;
        eprintln!("{}: {:.3} s", name(m), took.as_secs_f64());
        offline.extend(problems.into_iter().map(|p| format!("{}: {p}", name(m))));
    }
    assert!(
        offline.is_empty(),
        "migrations that are not online:\n{}",
        offline.join("\n")
    );

    // The application's own migrator accepts the result (same checksums, nothing left).
    migrate_without_loss(&url, &mut conn, &before).await;
    // The newest migrations' fixtures work on the schema they were written for, so they
    // will when the test starts from it.
    fill(&mut conn, version + 1..).await;
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
}

/// Runs the application's own migrator on `url` (same checksums, nothing left to apply)
/// and checks no row of `before` was lost.
async fn migrate_without_loss(
    url: &str,
    conn: &mut PgConnection,
    before: &BTreeMap<String, TableContent>,
) {
    control_api::db::migrate(url)
        .await
        .expect("migrate the upgraded database");
    assert_fully_migrated(conn).await;
    let lost = losses(conn, before).await;
    assert!(
        lost.is_empty(),
        "the upgrade lost data:\n{}",
        lost.join("\n")
    );
}

/// Upgrades from the oldest schema (0001 only) with `control_api::db::migrate`, as an
/// install that skipped every release would: every later migration then runs over existing
/// rows at least once (an ADD CONSTRAINT or a data fix that only works on empty tables
/// fails here, not at a user's).
#[tokio::test]
async fn upgrading_from_the_first_schema_keeps_every_row() {
    let all = migrations();
    let (url, mut conn) = database_at("upgrade_first", &all[..1]).await;
    fill(&mut conn, ..=all[0].version).await;
    let before = snapshot(&mut conn).await;
    assert!(before.contains_key("tenants") && before.contains_key("policies"));

    migrate_without_loss(&url, &mut conn, &before).await;
}

/// The online checker itself, on a scratch schema: it must report a rewrite, a validated
/// constraint, SET NOT NULL and an index on a big (partitioned) table, and nothing for the
/// online forms or for a small table.
#[tokio::test]
async fn the_online_check_reports_work_on_big_tables() {
    let (_, mut conn) = database_at("upgrade_checker", &[]).await;
    sqlx::raw_sql(&format!(
        "CREATE TABLE big (at date NOT NULL, id bigint NOT NULL, v integer) PARTITION BY RANGE (at);
         CREATE TABLE big_p PARTITION OF big FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
         CREATE TABLE big_empty PARTITION OF big FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
         INSERT INTO big SELECT '2020-06-01', g, g FROM generate_series(1, {}) g;
         CREATE TABLE small (id bigint, v integer);
         INSERT INTO small SELECT g, g FROM generate_series(1, 10) g;",
        BIG_TABLE_ROWS + 1
    ))
    .execute(&mut conn)
    .await
    .expect("scratch tables");

    let cases: &[(&str, Option<&str>)] = &[
        (
            "ALTER TABLE big ALTER COLUMN v TYPE bigint",
            Some("rewrites big_p"),
        ),
        ("ALTER TABLE small ALTER COLUMN v TYPE bigint", None),
        (
            "ALTER TABLE big ADD COLUMN w integer NOT NULL DEFAULT 0",
            None,
        ),
        (
            "ALTER TABLE big ADD COLUMN u uuid DEFAULT gen_random_uuid()",
            Some("rewrites big_p"),
        ),
        (
            "ALTER TABLE big ADD CONSTRAINT big_v_positive CHECK (v > 0) NOT VALID",
            None,
        ),
        ("ALTER TABLE big VALIDATE CONSTRAINT big_v_positive", None),
        (
            "ALTER TABLE big ADD CONSTRAINT big_v_bounded CHECK (v < 1000000000)",
            Some("adds constraint big_v_bounded to big_p"),
        ),
        (
            "ALTER TABLE big ALTER COLUMN v SET NOT NULL",
            Some("sets big_p.v NOT NULL"),
        ),
        ("CREATE INDEX big_v ON big (v)", Some("builds index")),
        ("CREATE INDEX small_v ON small (v)", None),
        ("ALTER TABLE big ADD COLUMN note text", None),
        (
            "ALTER TABLE big ALTER COLUMN note SET STORAGE EXTERNAL",
            None,
        ),
    ];
    for (sql, expected) in cases {
        let (_, problems) = apply_checked(&mut conn, Change::Sql(sql)).await;
        match expected {
            None => assert!(problems.is_empty(), "{sql}: reported {problems:?}"),
            Some(what) => assert!(
                problems.iter().any(|p| p.contains(what)),
                "{sql}: expected `{what}`, reported {problems:?}"
            ),
        }
    }
}

/// The loss check itself: a changed row, a dropped column and a dropped table are reported,
/// in a small table (by row) and in a large one (by hash); a column added is not a loss.
#[tokio::test]
async fn the_loss_check_reports_changed_rows_and_dropped_tables() {
    let (_, mut conn) = database_at("upgrade_losses", &[]).await;
    sqlx::raw_sql(
        "CREATE TABLE kept (id integer PRIMARY KEY, v text);
         INSERT INTO kept VALUES (1, 'a'), (2, 'b');
         CREATE TABLE untouched (id integer);
         INSERT INTO untouched VALUES (1);
         CREATE TABLE large (id integer, v integer);
         INSERT INTO large SELECT g, g FROM generate_series(1, 5000) g;
         CREATE TABLE gone (id integer);
         INSERT INTO gone VALUES (1);",
    )
    .execute(&mut conn)
    .await
    .expect("scratch tables");
    let before = snapshot(&mut conn).await;
    sqlx::raw_sql(
        "UPDATE kept SET v = 'changed' WHERE id = 2;
         ALTER TABLE kept ADD COLUMN added integer NOT NULL DEFAULT 0;
         ALTER TABLE untouched ADD COLUMN added integer NOT NULL DEFAULT 0;
         ALTER TABLE large DROP COLUMN v;
         DROP TABLE gone;",
    )
    .execute(&mut conn)
    .await
    .expect("the damage");
    let lost = losses(&mut conn, &before).await;
    let line = |table: &str, what: &str| {
        lost.iter()
            .any(|l| l.starts_with(&format!("{table}: ")) && l.contains(what))
    };
    assert!(line("gone", "the table is gone"), "{lost:#?}");
    assert!(line("kept", "2 rows before, 2 after"), "{lost:#?}");
    assert!(
        line("kept", "gone: [") && line("kept", "changed"),
        "{lost:#?}"
    );
    assert!(line("large", "columns gone: [\"v\"]"), "{lost:#?}");
    assert!(line("large", "the rows' content differs"), "{lost:#?}");
    // Nothing else: `untouched` only gained a column.
    assert_eq!(lost.len(), 4, "{lost:#?}");
}
