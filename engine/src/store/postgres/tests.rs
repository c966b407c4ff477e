//! The store against a real PostgreSQL (and, opt-in, TimescaleDB): every
//! test that depends on the mode runs in both.

use std::time::Duration;

use pulse_core::{Aggregate, SeriesId, Tags, WindowResult};

use super::calendar::{DAY_MS, today};
use super::partitions::{DAYS_AHEAD, TsTable, partition_name};
use super::query::{latest_statement, range_statement};
use super::testing::{TestDb, unique_name as unique_schema};
use super::{PostgresStore, TimescalePolicies, timescale};
use crate::store::{
    Commit, PartitionCheckpoint, RawPoint, ResultQuery, RetentionReport, Store, StoreError,
};

/// Runs each named store test once per mode: `native` against the plain
/// PostgreSQL test database, `timescaledb` against TimescaleDB (see
/// [`TestDb::timescale`], ignored unless asked for).
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn native() {
                if let Some(db) = super::TestDb::native_or_skip() {
                    super::$name(db).await;
                }
            }

            #[tokio::test]
            #[ignore = "needs PULSE_TEST_TIMESCALE_URL (a database with the timescaledb extension); run with --ignored"]
            async fn timescaledb() {
                super::$name(super::TestDb::timescale()).await;
            }
        }
    )*};
}

in_both_modes!(
    migrations_are_idempotent_and_safe_concurrently,
    a_window_written_again_merges_into_the_stored_one,
    partitions_are_created_on_demand_and_dropped_by_retention,
    latest_and_range_queries_use_indexes,
    policies_are_scheduled_with_the_configured_ages,
    writes_into_compressed_chunks_replace_and_add_rows,
);

/// The raw points and windows both retention tests commit: two days
/// before the cutoff, around the cutoff's edge, and one day after.
fn retention_fixture(old: i64, edge: i64, later: i64) -> Commit {
    Commit {
        raw_points: vec![
            point("cpu", old * DAY_MS + 1, 1.0),
            point("cpu", old * DAY_MS + 2, 2.0),
            point("cpu", edge, 3.0),
            point("cpu", edge + 7_200_000, 4.0),
            point("cpu", later * DAY_MS + 10, 5.0),
        ],
        results: vec![
            window("cpu", "a", old * DAY_MS),
            window("cpu", "b", old * DAY_MS),
            window("cpu", "a", edge),
            window("cpu", "a", edge + 7_200_000),
        ],
        ..Default::default()
    }
}

/// `(range start, range end)` of each chunk of `table`, in ms, sorted.
async fn chunk_ranges(store: &PostgresStore, table: &str) -> Vec<(i64, i64)> {
    sqlx::query_as(
        "SELECT range_start_integer, range_end_integer FROM timescaledb_information.chunks \
         WHERE hypertable_schema = $1 AND hypertable_name = $2 ORDER BY 1",
    )
    .bind(&store.schema)
    .bind(table)
    .fetch_all(&store.pool)
    .await
    .unwrap()
}

/// Compresses every chunk of `table` now, as the compression policy
/// does once they are old enough; returns how many are compressed.
async fn compress_all(store: &PostgresStore, table: &str) -> i64 {
    let mut conn = store.pool.acquire().await.unwrap();
    let ext = timescale::extension_schema(&mut conn)
        .await
        .unwrap()
        .unwrap();
    let sql = format!(
        "SELECT \"{ext}\".compress_chunk(c, if_not_compressed => true) \
         FROM \"{ext}\".show_chunks('{}') c",
        store.qualified(table)
    );
    sqlx::query(&sql).execute(&mut *conn).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM timescaledb_information.chunks \
         WHERE hypertable_schema = $1 AND hypertable_name = $2 AND is_compressed",
    )
    .bind(&store.schema)
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn unreachable_database_is_unavailable_and_named() {
    let err = PostgresStore::connect("postgres://pulse@127.0.0.1:1/metricsdb", "pulse_x_y")
        .await
        .err()
        .expect("nothing listens on port 1");
    match err {
        StoreError::Unavailable(message) => {
            assert!(message.contains("127.0.0.1:1/metricsdb"), "{message}");
            assert!(message.contains("check that the server runs"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        PostgresStore::connect("postgres://x@127.0.0.1:1/db", "Bad-Name").await,
        Err(StoreError::Other(_))
    ));
}

async fn table_count(store: &PostgresStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

async fn migrations_are_idempotent_and_safe_concurrently(db: TestDb) {
    let (one, two) = (unique_schema("mig_a"), unique_schema("mig_b"));
    db.run(&[&one, &two], async {
        let a1 = db.store(&one).await;
        let a2 = db.store(&one).await;
        let b = db.store(&two).await;
        let (r1, r2, r3) = tokio::join!(a1.migrate(), a2.migrate(), b.migrate());
        r1.unwrap();
        r2.unwrap();
        r3.unwrap();
        a1.migrate().await.unwrap();
        a2.migrate().await.unwrap();
        for store in [&a1, &b] {
            let versions: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
            assert_eq!(
                versions,
                vec![1, 2, 3, 4, 5, 6, 7],
                "each schema has its own versions"
            );
            assert_eq!(store.mode(), db.mode());
            // The time series tables are what the mode makes them.
            let kinds: Vec<(String, String)> = sqlx::query_as(
                "SELECT c.relname::text, c.relkind::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname IN ('raw_points', 'window_results') \
                 ORDER BY 1",
            )
            .bind(&store.schema)
            .fetch_all(&store.pool)
            .await
            .unwrap();
            let kind = if db.timescale { "r" } else { "p" };
            assert_eq!(
                kinds,
                [
                    ("raw_points".into(), kind.into()),
                    ("window_results".into(), kind.into())
                ]
            );
            if db.timescale {
                let dimensions: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT hypertable_name::text, column_name::text, integer_interval \
                     FROM timescaledb_information.dimensions WHERE hypertable_schema = $1 \
                     ORDER BY 1",
                )
                .bind(&store.schema)
                .fetch_all(&store.pool)
                .await
                .unwrap();
                assert_eq!(
                    dimensions,
                    [
                        ("raw_points".into(), "ts".into(), DAY_MS),
                        ("window_results".into(), "window_start".into(), DAY_MS)
                    ],
                    "hypertables with one-day chunks"
                );
            }
        }
        // Each schema holds its own tables.
        a1.commit(&Commit {
            partitions: vec![PartitionCheckpoint {
                partition: 0,
                next_offset: 5,
                max_event_ts: None,
                watermark: None,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(a2.load_checkpoint(&[0]).await.unwrap().partitions.len(), 1);
        assert!(b.load_checkpoint(&[0]).await.unwrap().partitions.is_empty());
    })
    .await;
}

fn point(metric: &str, ts: i64, value: f64) -> RawPoint {
    RawPoint {
        series_id: SeriesId::of(metric, &[("host".to_string(), "a".to_string())].into()),
        timestamp_ms: ts,
        value,
    }
}

fn window(metric: &str, host: &str, start: i64) -> WindowResult {
    let tags: Tags = [("host".to_string(), host.to_string())].into();
    let mut agg = Aggregate::new();
    agg.add(1.0, start);
    WindowResult {
        series_id: SeriesId::of(metric, &tags),
        metric: metric.into(),
        tags,
        window: "1m".into(),
        start_ms: start,
        end_ms: start + 60_000,
        agg,
    }
}

/// Results go in with a plain COPY; a window already stored makes it
/// fail, and the savepoint's fallback must then write the whole batch,
/// merging the stored window with the new part, with the rest of the
/// commit intact.
async fn a_window_written_again_merges_into_the_stored_one(db: TestDb) {
    let schema = unique_schema("rewrite");
    db.run(&[&schema], async {
        let store = db.store(&schema).await;
        store.migrate().await.unwrap();
        let start = today() * DAY_MS;
        store
            .commit(&Commit {
                results: vec![window("cpu", "a", start)],
                ..Default::default()
            })
            .await
            .unwrap();
        let mut again = window("cpu", "a", start);
        again.agg.add(5.0, start + 1);
        let merged = store
            .commit(&Commit {
                results: vec![again, window("cpu", "b", start), window("mem", "a", start)],
                raw_points: vec![point("cpu", start + 1, 5.0), point("cpu", start, 1.0)],
                partitions: vec![PartitionCheckpoint {
                    partition: 0,
                    next_offset: 7,
                    max_event_ts: Some(start + 1),
                    watermark: None,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            merged
                .iter()
                .map(|r| (r.tags["host"].as_str(), r.agg.count))
                .collect::<Vec<_>>(),
            [("a", 3)],
            "the commit names the merged window, as stored"
        );
        let query = ResultQuery {
            metric: "cpu".into(),
            window: "1m".into(),
            tags: Tags::new(),
            from_ms: start,
            to_ms: start + DAY_MS,
            limit: 10,
        };
        let stored = store.range(&query).await.unwrap();
        let summary: Vec<(String, u64, f64)> = stored
            .iter()
            .map(|r| (r.tags["host"].clone(), r.agg.count, r.agg.max))
            .collect();
        assert_eq!(
            summary,
            vec![("a".into(), 3, 5.0), ("b".into(), 1, 1.0)],
            "{stored:?}"
        );
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM window_results").await,
            3
        );
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM raw_points").await,
            2
        );
        let checkpoint = store.load_checkpoint(&[0]).await.unwrap();
        assert_eq!(checkpoint.partitions[0].next_offset, 7);
    })
    .await;
}

async fn partitions_are_created_on_demand_and_dropped_by_retention(db: TestDb) {
    let schema = unique_schema("parts");
    db.run(&[&schema], async {
        let store = db.store(&schema).await;
        store.migrate().await.unwrap();
        assert_eq!(store.mode(), db.mode());
        if db.timescale {
            chunks_are_created_on_demand_and_emptied_by_retention(&store).await;
            return;
        }
        let today = today();
        let exists = |table: TsTable, day: i64| {
            let store = &store;
            async move {
                store
                    .list_partitions(table)
                    .await
                    .unwrap()
                    .iter()
                    .any(|(_, d)| *d == day)
            }
        };
        for day in today..=today + DAYS_AHEAD {
            assert!(exists(TsTable::Raw, day).await && exists(TsTable::Results, day).await);
        }

        // A row with no partition of its own lands in DEFAULT ...
        let later = today + 30;
        sqlx::query("INSERT INTO raw_points (series_id, ts, value) VALUES (1, $1, 1.0)")
            .bind(later * DAY_MS + 5)
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM raw_points_default").await,
            1
        );

        let old = today - 10;
        let edge = (today - 5) * DAY_MS; // retention cutoff - 1h
        let cutoff = edge + 3_600_000;
        store
            .commit(&retention_fixture(old, edge, later))
            .await
            .unwrap();
        // ... and moves into the partition made for that day later.
        assert!(exists(TsTable::Raw, later).await && exists(TsTable::Raw, old).await);
        assert!(exists(TsTable::Results, old).await);
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM raw_points_default").await,
            0
        );
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM window_results_default").await,
            0
        );
        let later_part = partition_name(TsTable::Raw, later);
        assert_eq!(
            table_count(&store, &format!("SELECT count(*) FROM {later_part}")).await,
            2
        );

        let report = store.enforce_retention(cutoff, cutoff).await.unwrap();
        assert_eq!(
            report,
            RetentionReport {
                raw_points: 3,
                results: 3,
                ..RetentionReport::default()
            },
            "two rows by dropping the old day's partition, one leftover row each"
        );
        assert!(!exists(TsTable::Raw, old).await && !exists(TsTable::Results, old).await);
        assert!(
            exists(TsTable::Raw, today - 5).await,
            "the partition of the cutoff stays"
        );
        assert!(exists(TsTable::Raw, today).await);
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM raw_points").await,
            3
        );
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM window_results").await,
            1
        );

        // A day whose partition was dropped is made again when written to.
        store
            .commit(&Commit {
                raw_points: vec![point("cpu", old * DAY_MS + 3, 6.0)],
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(exists(TsTable::Raw, old).await);
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM raw_points_default").await,
            0
        );
    })
    .await;
}

async fn latest_and_range_queries_use_indexes(db: TestDb) {
    let schema = unique_schema("explain");
    db.run(&[&schema], async {
        let store = db.store(&schema).await;
        store.migrate().await.unwrap();
        let base = today() * DAY_MS;
        // 20 metrics x 50 series x 20 windows = 20,000 results.
        let mut results = Vec::new();
        for m in 0..20 {
            for s in 0..50 {
                for w in 0..20 {
                    results.push(window(
                        &format!("m{m}"),
                        &format!("h{s}"),
                        base + w * 60_000,
                    ));
                }
            }
        }
        store
            .commit(&Commit {
                results,
                ..Default::default()
            })
            .await
            .unwrap();
        sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
        // The tables holding the rows: daily partitions, or chunks.
        let populated: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid \
             JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace \
             WHERE n.nspname = $1 AND p.relname = 'window_results' AND c.reltuples > 0",
        )
        .bind(&schema)
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(populated.len(), 1, "one day of rows: {populated:?}");

        let query = |tags: Tags| ResultQuery {
            metric: "m7".into(),
            window: "1m".into(),
            tags,
            from_ms: base,
            to_ms: base + DAY_MS,
            limit: 100,
        };
        let host: Tags = [("host".to_string(), "h3".to_string())].into();
        let statements = [
            ("latest", latest_statement(&query(Tags::new())).unwrap()),
            (
                "latest with tags",
                latest_statement(&query(host.clone())).unwrap(),
            ),
            ("range", range_statement(&query(Tags::new())).unwrap()),
            (
                "range with tags",
                range_statement(&query(host.clone())).unwrap(),
            ),
        ];
        for (what, (sql, args)) in statements {
            let plan: Vec<String> = sqlx::query_scalar_with(&format!("EXPLAIN {sql}"), args)
                .fetch_all(&store.pool)
                .await
                .unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains("Index"), "{what} uses an index:\n{plan}");
            for relation in &populated {
                assert!(
                    !plan.contains(&format!("Seq Scan on {relation} ")),
                    "{what} scans {relation} sequentially:\n{plan}"
                );
            }
        }

        // And the answers are right at this size.
        let latest = store.latest(&query(Tags::new())).await.unwrap();
        assert_eq!(latest.len(), 50);
        assert!(latest.iter().all(|r| r.start_ms == base + 19 * 60_000));
        let latest = store.latest(&query(host.clone())).await.unwrap();
        assert_eq!(latest.len(), 1);
        let range = store.range(&query(Tags::new())).await.unwrap();
        assert_eq!(range.len(), 100);
        assert!(range.iter().all(|r| r.start_ms >= base + 18 * 60_000));
        assert_eq!(store.range(&query(host)).await.unwrap().len(), 20);
    })
    .await;
}

/// TimescaleDB mode of the test above: a chunk per day written to, one
/// day wide, and the retention pass deletes the same rows as natively.
async fn chunks_are_created_on_demand_and_emptied_by_retention(store: &PostgresStore) {
    let today = today();
    let (old, later) = (today - 10, today + 30);
    let edge = (today - 5) * DAY_MS; // retention cutoff - 1h
    let cutoff = edge + 3_600_000;
    assert!(chunk_ranges(store, "raw_points").await.is_empty());
    store
        .commit(&retention_fixture(old, edge, later))
        .await
        .unwrap();
    let days = |days: &[i64]| -> Vec<(i64, i64)> {
        days.iter()
            .map(|d| (d * DAY_MS, (d + 1) * DAY_MS))
            .collect()
    };
    assert_eq!(
        chunk_ranges(store, "raw_points").await,
        days(&[old, today - 5, later])
    );
    assert_eq!(
        chunk_ranges(store, "window_results").await,
        days(&[old, today - 5])
    );

    let report = store.enforce_retention(cutoff, cutoff).await.unwrap();
    assert_eq!(
        report,
        RetentionReport {
            raw_points: 3,
            results: 3,
            ..RetentionReport::default()
        }
    );
    assert_eq!(
        table_count(store, "SELECT count(*) FROM raw_points").await,
        2
    );
    assert_eq!(
        table_count(store, "SELECT count(*) FROM window_results").await,
        1
    );
}

fn policies(days: u64) -> TimescalePolicies {
    TimescalePolicies {
        raw_retention: Duration::from_secs(7 * 86_400),
        result_retention: Duration::from_secs(days * 86_400),
        compress_after: Duration::from_secs(2 * 86_400),
    }
}

/// The jobs TimescaleDB scheduled on the store's tables:
/// `(table, kind, age in ms)`, sorted.
async fn jobs(store: &PostgresStore) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT hypertable_name::text, proc_name::text, \
                COALESCE(config->>'drop_after', config->>'compress_after')::bigint \
         FROM timescaledb_information.jobs WHERE hypertable_schema = $1 ORDER BY 1, 2",
    )
    .bind(&store.schema)
    .fetch_all(&store.pool)
    .await
    .unwrap()
}

/// Policies are installed (with the pool's `search_path` holding only
/// the pipeline's schema), scheduled with the configured ages, replaced
/// when the config changes, and said in `/readyz`; natively there are none.
async fn policies_are_scheduled_with_the_configured_ages(db: TestDb) {
    let schema = unique_schema("policies");
    db.run(&[&schema], async {
        let store = db
            .store(&schema)
            .await
            .with_timescale_policies(policies(90));
        store.migrate().await.unwrap();
        let ready = store.ready().await.unwrap();
        if !db.timescale {
            assert!(!ready.contains("TimescaleDB"), "{ready}");
            return;
        }
        assert!(
            ready.contains("TimescaleDB retention and compression policies scheduled"),
            "{ready}"
        );
        let day = DAY_MS;
        let expected = |result_days: i64| {
            vec![
                ("raw_points".into(), "policy_compression".into(), 2 * day),
                ("raw_points".into(), "policy_retention".into(), 7 * day),
                (
                    "window_results".into(),
                    "policy_compression".into(),
                    2 * day,
                ),
                (
                    "window_results".into(),
                    "policy_retention".into(),
                    result_days * day,
                ),
            ]
        };
        assert_eq!(jobs(&store).await, expected(90));
        let settings: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.relname::text, s.segmentby, s.orderby \
             FROM timescaledb_information.hypertable_compression_settings s \
             JOIN pg_class c ON c.oid = s.hypertable \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 ORDER BY 1",
        )
        .bind(&schema)
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            settings,
            [
                ("raw_points".into(), "series_id".into(), "ts".into()),
                (
                    "window_results".into(),
                    "metric,window_label".into(),
                    "window_start DESC,series_id DESC".into()
                ),
            ]
        );
        drop(store);

        // A restart with another retention replaces the job, once.
        let store = db
            .store(&schema)
            .await
            .with_timescale_policies(policies(30));
        store.migrate().await.unwrap();
        assert_eq!(jobs(&store).await, expected(30));
    })
    .await;
}

/// A late point rewrites a window whose chunk is compressed already:
/// the COPY, its merging fallback and raw points all write into it.
async fn writes_into_compressed_chunks_replace_and_add_rows(db: TestDb) {
    let schema = unique_schema("compressed");
    db.run(&[&schema], async {
        let store = db
            .store(&schema)
            .await
            .with_timescale_policies(policies(90));
        store.migrate().await.unwrap();
        let start = (today() - 3) * DAY_MS;
        store
            .commit(&Commit {
                results: vec![window("cpu", "a", start), window("cpu", "b", start)],
                raw_points: vec![point("cpu", start, 1.0)],
                ..Default::default()
            })
            .await
            .unwrap();
        if db.timescale {
            assert_eq!(compress_all(&store, "window_results").await, 1);
            assert_eq!(compress_all(&store, "raw_points").await, 1);
        }
        // The late point's partial of window a.
        let mut again = window("cpu", "a", start);
        again.agg = Aggregate::new();
        again.agg.add(7.0, start + 5);
        // A new window into the compressed chunk: COPY.
        store
            .commit(&Commit {
                results: vec![window("cpu", "a", start + 60_000)],
                raw_points: vec![point("cpu", start + 5, 7.0)],
                ..Default::default()
            })
            .await
            .unwrap();
        // A stored window again: COPY fails, the merge rewrites it.
        store
            .commit(&Commit {
                results: vec![again],
                ..Default::default()
            })
            .await
            .unwrap();
        let query = ResultQuery {
            metric: "cpu".into(),
            window: "1m".into(),
            tags: Tags::new(),
            from_ms: start,
            to_ms: start + DAY_MS,
            limit: 10,
        };
        let stored: Vec<(String, i64, u64, f64)> = store
            .range(&query)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.tags["host"].clone(), r.start_ms, r.agg.count, r.agg.max))
            .collect();
        assert_eq!(
            stored,
            [
                ("a".into(), start, 2, 7.0),
                ("b".into(), start, 1, 1.0),
                ("a".into(), start + 60_000, 1, 1.0)
            ]
        );
        let latest = store.latest(&query).await.unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].start_ms, start + 60_000);
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM window_results").await,
            3
        );
        assert_eq!(
            table_count(&store, "SELECT count(*) FROM raw_points").await,
            2
        );
    })
    .await;
}
