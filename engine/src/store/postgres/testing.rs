//! Helpers for tests that need a real PostgreSQL (or TimescaleDB).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use sqlx::postgres::PgConnectOptions;

use super::PostgresStore;

pub(crate) const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database (`PULSE_TEST_DATABASE_URL`, default [`DEFAULT_URL`]),
/// or `None` with a skip notice when it does not answer. With `CI` set an
/// unreachable database fails the test instead: CI must run these.
pub(crate) fn pg_url_or_skip() -> Option<String> {
    let url = std::env::var("PULSE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let options = PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("PULSE_TEST_DATABASE_URL is not a PostgreSQL url: {e}"));
    if options.get_socket().is_some() {
        return Some(url);
    }
    let address = format!("{}:{}", options.get_host(), options.get_port());
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
        });
    if reachable {
        return Some(url);
    }
    pulse_core::test_policy::skip_or_fail(
        &format!("PostgreSQL is unreachable at {address}"),
        "start PostgreSQL there or point PULSE_TEST_DATABASE_URL at one",
    );
    None
}

/// A name (schema, key prefix) no other test or test process uses.
pub(crate) fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "pulse_test_{tag}_{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `test`, then drops `schemas` whether it passed or panicked.
pub(crate) async fn dropping_schemas<T>(
    url: &str,
    schemas: &[&str],
    test: impl Future<Output = T>,
) -> T {
    let outcome = AssertUnwindSafe(test).catch_unwind().await;
    match sqlx::PgPool::connect(url).await {
        Ok(pool) => {
            for schema in schemas {
                let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                if let Err(e) = sqlx::query(&drop).execute(&pool).await {
                    eprintln!("could not drop test schema {schema}: {e}");
                }
            }
            pool.close().await;
        }
        Err(e) => eprintln!("could not drop test schemas {schemas:?}: {e}"),
    }
    match outcome {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The mode a store test runs in, and the database it runs against.
pub(crate) struct TestDb {
    pub(crate) url: String,
    /// Whether the store must come up as TimescaleDB hypertables (else
    /// native partitions: the plain PostgreSQL test database has no
    /// TimescaleDB).
    pub(crate) timescale: bool,
}

impl TestDb {
    /// Native partitioning: the plain PostgreSQL test database
    /// (`PULSE_TEST_DATABASE_URL`, which must not have TimescaleDB).
    pub(crate) fn native_or_skip() -> Option<TestDb> {
        Some(TestDb {
            url: pg_url_or_skip()?,
            timescale: false,
        })
    }

    /// TimescaleDB mode, opt-in: the database at `PULSE_TEST_TIMESCALE_URL`.
    /// No registry offers a TimescaleDB server CI could run (README, "A real
    /// TimescaleDB in tests"), so these tests are `#[ignore]`d, shown as
    /// ignored in every run, and run with `--ignored`; asked for without
    /// the variable, they fail rather than pass without testing anything.
    pub(crate) fn timescale() -> TestDb {
        let url = std::env::var("PULSE_TEST_TIMESCALE_URL").expect(
            "set PULSE_TEST_TIMESCALE_URL to a database where the timescaledb extension is available",
        );
        TestDb {
            url,
            timescale: true,
        }
    }

    /// What the store reports as its mode in this test.
    pub(crate) fn mode(&self) -> &'static str {
        if self.timescale {
            "timescaledb"
        } else {
            "native-partitioning"
        }
    }

    /// A store for `schema`, not migrated yet.
    pub(crate) async fn store(&self, schema: &str) -> PostgresStore {
        PostgresStore::connect(&self.url, schema)
            .await
            .unwrap_or_else(|e| panic!("store of {schema} at {}: {e}", self.url))
    }

    /// Runs `test`, then drops `schemas`.
    pub(crate) async fn run<T>(&self, schemas: &[&str], test: impl Future<Output = T>) -> T {
        dropping_schemas(&self.url, schemas, test).await
    }
}
