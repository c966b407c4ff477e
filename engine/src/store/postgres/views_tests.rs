//! The SQL views for SQL and Grafana users (`metrics`, `metric_windows`,
//! migration 7) against a real PostgreSQL: the original schema's query
//! answers the right rows, through the time indexes.

use pulse_core::{Aggregate, MetricKind, SeriesId, Tags, WindowResult, now_ms};

use super::testing::{TestDb, unique_name};
use crate::store::{Commit, RawPoint, SeriesRow, Store};

const METRICS: usize = 30;
const SERIES: usize = 10;
/// Points per series, one every 36 s: the last two hours.
const POINTS: i64 = 200;

/// Name, kind, count, sum, last, increase and p50 of a `metric_windows` row.
type WindowRow = (String, String, i64, f64, f64, f64, Option<f64>);

fn tags(s: usize) -> Tags {
    [("host".to_string(), format!("h{s}"))].into()
}

/// The plan of `sql`, which must not read a populated table whole.
async fn plan_of(store: &super::PostgresStore, sql: &str) -> String {
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .fetch_all(&store.pool)
        .await
        .unwrap();
    plan.join("\n")
}

#[tokio::test]
async fn the_seed_query_reads_the_views_through_their_time_indexes() {
    let Some(db) = TestDb::native_or_skip() else {
        return;
    };
    let schema = unique_name("views");
    db.run(&[&schema], async {
        let store = db.store(&schema).await;
        store.migrate().await.unwrap();
        let now = now_ms();
        let mut commit = Commit::default();
        for m in 0..METRICS {
            let metric = format!("m{m}");
            for s in 0..SERIES {
                let id = SeriesId::of(&metric, &tags(s));
                commit.series.push(SeriesRow {
                    series_id: id,
                    metric: metric.clone(),
                    tags: tags(s),
                });
                for i in 0..POINTS {
                    commit.raw_points.push(RawPoint {
                        series_id: id,
                        timestamp_ms: now - i * 36_000,
                        value: (m * 1000 + s) as f64 + 0.5,
                    });
                }
                // Two hours of 1m windows of a counter.
                for w in 1..=120 {
                    let start = (now / 60_000 - w) * 60_000;
                    let mut agg = Aggregate::new();
                    agg.add_value(10.0, start, MetricKind::Counter);
                    agg.add_value(16.0, start + 30_000, MetricKind::Counter);
                    commit.results.push(WindowResult {
                        series_id: id,
                        metric: metric.clone(),
                        tags: tags(s),
                        window: "1m".into(),
                        start_ms: start,
                        end_ms: start + 60_000,
                        agg,
                    });
                }
            }
        }
        store.commit(&commit).await.unwrap();
        sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();

        // The seed's query over raw points: the rows of the last 5 minutes
        // (points at now, now - 36 s, ..., now - 288 s: 9 per series).
        let seed = "SELECT metric_name, value, ts, tags FROM metrics \
                    WHERE metric_name = 'm7' AND ts > now() - interval '5 minutes'";
        let rows: Vec<(String, f64, String)> = sqlx::query_as(&format!(
            "SELECT metric_name, value, tags::text FROM ({seed}) q ORDER BY value"
        ))
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(rows.len(), SERIES * 9, "{rows:?}");
        assert!(rows.iter().all(|(m, _, _)| m == "m7"));
        assert_eq!(rows[0].1, 7000.5);
        let tags: serde_json::Value = serde_json::from_str(&rows[0].2).unwrap();
        assert_eq!(tags["host"], "h0");
        let plan = plan_of(&store, seed).await;
        assert!(
            plan.contains("Index Cond") && plan.contains("to_timestamp"),
            "the time condition is an index condition:\n{plan}"
        );
        // Only the empty partitions of the coming days are scanned (costing
        // nothing); the one holding the points is read through the index.
        assert!(
            plan.lines()
                .filter(|l| l.contains("Seq Scan on raw_points"))
                .all(|l| l.contains("cost=0.00..0.00")),
            "{plan}"
        );

        // The windows: readable columns, percentiles next to the sketch.
        let seed = "SELECT metric_name, kind, count, sum, last, increase, p50, p99 \
                    FROM metric_windows \
                    WHERE metric_name = 'm7' AND ts > now() - interval '5 minutes'";
        let rows: Vec<WindowRow> = sqlx::query_as(&format!(
            "SELECT metric_name, kind, count, sum, last, increase, p50 FROM ({seed}) q"
        ))
        .fetch_all(&store.pool)
        .await
        .unwrap();
        // Windows starting within the last five minutes: 4 or 5 per series.
        assert!(
            rows.len() == SERIES * 4 || rows.len() == SERIES * 5,
            "{}",
            rows.len()
        );
        for (metric, kind, count, sum, last, increase, p50) in &rows {
            assert_eq!((metric.as_str(), kind.as_str()), ("m7", "counter"));
            assert_eq!((*count, *sum, *last, *increase), (2, 26.0, 16.0, 6.0));
            let p50 = p50.unwrap();
            assert!((p50 - 10.0).abs() <= 0.1, "p50 {p50}");
        }
        let plan = plan_of(&store, seed).await;
        assert!(
            plan.contains("Index Cond") && plan.contains("to_timestamp"),
            "the time condition is an index condition:\n{plan}"
        );
        assert!(
            plan.lines()
                .filter(|l| l.contains("Seq Scan on window_results"))
                .all(|l| l.contains("cost=0.00..0.00")),
            "{plan}"
        );
    })
    .await;
}
