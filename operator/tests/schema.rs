//! The schema admin against a real PostgreSQL (127.0.0.1:5432, database
//! `test`, user `postgres`; override with PULSE_TEST_DATABASE_URL). Skips when
//! the server is down and CI is unset; fails when CI is set.

use pulse_core::names::schema as schema_name;
use pulse_operator::admin::{PostgresSchemaAdmin, SchemaAdmin};
use sqlx::{Connection, PgConnection};

fn database_url() -> String {
    std::env::var("PULSE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A connection for checking what the admin did, or `None` (test skipped)
/// when PostgreSQL is down outside CI.
async fn connect() -> Option<PgConnection> {
    match PgConnection::connect(&database_url()).await {
        Ok(conn) => Some(conn),
        Err(error) => {
            pulse_core::test_policy::skip_or_fail(
                &format!("PostgreSQL at {} is down: {error}", database_url()),
                "start PostgreSQL there",
            );
            None
        }
    }
}

/// A schema no other test run uses.
fn fresh_schema(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    schema_name("optest", &format!("{test}-{}-{nanos}", std::process::id()))
}

async fn tables(conn: &mut PgConnection, schema: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = $1")
        .bind(schema)
        .fetch_one(conn)
        .await
        .expect("count tables")
}

async fn schema_exists(conn: &mut PgConnection, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
        .expect("look up schema")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_twice_and_concurrently_leaves_one_complete_schema() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let schema = fresh_schema("migrate");
    let (admin, url) = (PostgresSchemaAdmin, database_url());
    admin.migrate(&url, &schema).await.expect("first migration");
    let after_first = tables(&mut conn, &schema).await;
    assert!(
        after_first >= 2,
        "raw points and window results at least, got {after_first} tables"
    );
    admin
        .migrate(&url, &schema)
        .await
        .expect("second migration");
    let (a, b, c) = tokio::join!(
        admin.migrate(&url, &schema),
        admin.migrate(&url, &schema),
        admin.migrate(&url, &schema)
    );
    a.and(b).and(c).expect("concurrent migrations");
    assert_eq!(tables(&mut conn, &schema).await, after_first);
    admin.drop_schema(&url, &schema).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_of_a_new_schema_all_succeed() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let schema = fresh_schema("race");
    let (admin, url) = (PostgresSchemaAdmin, database_url());
    let (a, b) = tokio::join!(admin.migrate(&url, &schema), admin.migrate(&url, &schema));
    a.and(b).expect("both migrations of a new schema");
    assert!(tables(&mut conn, &schema).await >= 2);
    admin.drop_schema(&url, &schema).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_removes_the_schema_and_is_idempotent() {
    let Some(mut conn) = connect().await else {
        return;
    };
    let schema = fresh_schema("drop");
    let (admin, url) = (PostgresSchemaAdmin, database_url());
    admin.migrate(&url, &schema).await.expect("migrate");
    assert!(schema_exists(&mut conn, &schema).await);
    admin.drop_schema(&url, &schema).await.expect("drop");
    assert!(!schema_exists(&mut conn, &schema).await);
    admin
        .drop_schema(&url, &schema)
        .await
        .expect("dropping a missing schema is fine");
}
