//! Behaviour every engine of a trait must show, written once and run against
//! each implementation (embedded here; Kafka, PostgreSQL and Redis beside them).

use std::time::Duration;

use pulse_core::{Aggregate, Point, SeriesId, Tags, WindowResult};

use crate::bus::{BusConsumer, BusProducer, ConsumerEvent, OutgoingRecord};
use crate::cache::Cache;
use crate::store::{
    BatchMark, Claim, Commit, DeadLetter, LateCount, OpenWindowKey, OpenWindowState,
    PartitionCheckpoint, RawPoint, ResultQuery, SeriesRow, Store, StoreError,
};

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Reads events until `n` records arrived or `deadline` passed.
async fn read_records(consumer: &mut dyn BusConsumer, n: usize) -> Vec<crate::bus::BusRecord> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n && tokio::time::Instant::now() < deadline {
        if let ConsumerEvent::Records(records) = consumer
            .next(1000, Duration::from_millis(200))
            .await
            .unwrap()
        {
            out.extend(records);
        }
    }
    out
}

/// Bus: ordering per key, dense offsets, seek, commit, end offsets, idleness.
/// `consumer` must return a fresh consumer of the same group each call.
pub async fn bus_suite<P: BusProducer + ?Sized, C: BusConsumer>(
    producer: &P,
    mut consumer: impl FnMut() -> C,
    partitions: u32,
) {
    let mut first = consumer();
    let assigned = loop {
        match first.next(10, Duration::from_secs(5)).await.unwrap() {
            ConsumerEvent::Assigned(p) => break p,
            ConsumerEvent::Idle => continue,
            other => panic!("expected an assignment first, got {other:?}"),
        }
    };
    assert_eq!(assigned.len(), partitions as usize);

    let records: Vec<OutgoingRecord> = (0..300u64)
        .map(|i| OutgoingRecord {
            key: i % 7,
            value: i.to_be_bytes().to_vec(),
        })
        .collect();
    producer.send(records[..100].to_vec()).await.unwrap();
    producer.send(records[100..].to_vec()).await.unwrap();
    producer.send(Vec::new()).await.unwrap();

    let got = read_records(&mut first, 300).await;
    assert_eq!(got.len(), 300, "every record comes back once");
    let mut partition_of_key = std::collections::HashMap::new();
    let mut last_value_of_key: std::collections::HashMap<u64, u64> =
        std::collections::HashMap::new();
    for record in &got {
        let key = u64::from_be_bytes(record.key.clone().try_into().unwrap());
        assert_eq!(
            *partition_of_key.entry(key).or_insert(record.partition),
            record.partition,
            "one key, one partition"
        );
        let value = u64::from_be_bytes(record.value.clone().try_into().unwrap());
        if let Some(previous) = last_value_of_key.insert(key, value) {
            assert!(value > previous, "records of a key keep their order");
        }
    }
    let ends = first.end_offsets().await.unwrap();
    let total: u64 = ends.iter().map(|(_, e)| e).sum();
    assert_eq!(total, 300);

    // Seek back on one partition replays exactly its records from there.
    let (p, end) = *ends.iter().find(|(_, e)| *e >= 2).unwrap();
    first.seek(p, end - 2).await.unwrap();
    let replay = read_records(&mut first, 2).await;
    assert_eq!(
        replay
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>(),
        vec![(p, end - 2), (p, end - 1)]
    );

    assert_eq!(
        first.next(10, Duration::from_millis(100)).await.unwrap(),
        ConsumerEvent::Idle
    );

    // Committed progress is where the next consumer of the group starts.
    first.commit(&ends).await.unwrap();
    drop(first);
    producer
        .send(vec![OutgoingRecord {
            key: 3,
            value: b"after".to_vec(),
        }])
        .await
        .unwrap();
    let mut second = consumer();
    let mut got = Vec::new();
    for _ in 0..100 {
        match second.next(10, Duration::from_millis(200)).await.unwrap() {
            ConsumerEvent::Records(r) => {
                got.extend(r);
                break;
            }
            _ => continue,
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, b"after");
    assert_eq!(got[0].partition, SeriesId(3).partition(partitions));
}

fn result(metric: &str, host: &str, window: &str, start: i64, values: &[f64]) -> WindowResult {
    let tags = tags(&[("host", host), ("env", "prod")]);
    let mut agg = Aggregate::new();
    for (i, v) in values.iter().enumerate() {
        agg.add(*v, start + i as i64);
    }
    WindowResult {
        series_id: SeriesId::of(metric, &tags),
        metric: metric.into(),
        tags,
        window: window.into(),
        start_ms: start,
        end_ms: start + 60_000,
        agg,
    }
}

/// Batch marks come back with their partition's checkpoint, are replaced by
/// a later commit's and deleted by a later commit's `delete_marks`.
async fn batch_marks_change_and_are_forgotten(
    store: &dyn Store,
    loaded: &[BatchMark],
    committed: &[BatchMark],
) {
    assert_eq!(loaded, committed);
    let mark = |key: u8, state: u8| BatchMark {
        partition: 1,
        key: [key; 16],
        state: vec![state],
    };
    store
        .commit(&Commit {
            upsert_marks: vec![mark(6, 7), mark(5, 8)],
            ..Default::default()
        })
        .await
        .unwrap();
    store
        .commit(&Commit {
            delete_marks: vec![(1, [6; 16])],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        store.load_checkpoint(&[1]).await.unwrap().marks,
        [mark(5, 8)]
    );
    assert!(store.load_checkpoint(&[0]).await.unwrap().marks.is_empty());
}

/// Store: atomic commits, checkpoints, latest and range queries, raw points,
/// late counts, retention.
pub async fn store_suite(store: &dyn Store) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
    store.ready().await.unwrap();
    assert!(
        store
            .load_checkpoint(&[0, 1])
            .await
            .unwrap()
            .partitions
            .is_empty()
    );

    let open_key = OpenWindowKey {
        partition: 1,
        series_id: SeriesId(42),
        window: "1m".into(),
        start_ms: 120_000,
    };
    let raw_tags = tags(&[("host", "a"), ("env", "prod")]);
    let raw_id = SeriesId::of("cpu", &raw_tags);
    let commit = Commit {
        claims: vec![],
        partitions: vec![PartitionCheckpoint {
            partition: 1,
            next_offset: 17,
            max_event_ts: Some(130_000),
            watermark: Some(100_000),
        }],
        results: vec![
            result("cpu", "a", "1m", 0, &[1.0, 2.0]),
            result("cpu", "b", "1m", 0, &[3.0]),
            result("cpu", "a", "1m", 60_000, &[4.0]),
            result("cpu", "a", "5m", 0, &[1.0, 2.0, 4.0]),
            result("mem", "a", "1m", 0, &[9.0]),
        ],
        series: vec![SeriesRow {
            series_id: raw_id,
            metric: "cpu".into(),
            tags: raw_tags.clone(),
        }],
        raw_points: vec![
            RawPoint {
                series_id: raw_id,
                timestamp_ms: 10,
                value: 1.0,
            },
            RawPoint {
                series_id: raw_id,
                timestamp_ms: 20,
                value: 2.0,
            },
        ],
        upsert_open: vec![OpenWindowState {
            key: open_key.clone(),
            state: vec![1, 2, 3],
        }],
        delete_open: vec![],
        late: vec![LateCount {
            metric: "cpu".into(),
            window: "1m".into(),
            count: 2,
        }],
        dead_letters: vec![DeadLetter {
            partition: 1,
            offset: 16,
            reason: "unknown record format version 9".into(),
            payload: vec![9, 0, 255],
        }],
        anomalies: vec![],
        detectors: vec![],
        upsert_marks: vec![BatchMark {
            partition: 1,
            key: [5; 16],
            state: vec![4, 5],
        }],
        delete_marks: vec![],
    };
    store.commit(&commit).await.unwrap();
    store
        .commit(&Commit {
            late: vec![LateCount {
                metric: "cpu".into(),
                window: "1m".into(),
                count: 3,
            }],
            ..Default::default()
        })
        .await
        .unwrap();

    assert_eq!(store.dead_letters(10).await.unwrap(), commit.dead_letters);
    assert!(store.dead_letters(0).await.unwrap().is_empty());

    let checkpoint = store.load_checkpoint(&[1]).await.unwrap();
    assert_eq!(checkpoint.partitions, commit.partitions);
    assert_eq!(checkpoint.open, commit.upsert_open);
    assert!(
        store.load_checkpoint(&[0]).await.unwrap().open.is_empty(),
        "state is per partition"
    );
    batch_marks_change_and_are_forgotten(store, &checkpoint.marks, &commit.upsert_marks).await;

    let query = |window: &str, tags: Tags| ResultQuery {
        metric: "cpu".into(),
        window: window.into(),
        tags,
        from_ms: 0,
        to_ms: i64::MAX,
        limit: 100,
    };
    let latest = store.latest(&query("1m", Tags::new())).await.unwrap();
    assert_eq!(latest.len(), 1, "only host a has the newest 1m window");
    assert_eq!((latest[0].start_ms, latest[0].agg.max), (60_000, 4.0));
    let latest_b = store
        .latest(&query("1m", tags(&[("host", "b")])))
        .await
        .unwrap();
    assert_eq!(
        (latest_b.len(), latest_b[0].start_ms),
        (1, 0),
        "a tag filter finds that series' newest window"
    );
    assert!(
        store
            .latest(&query("1m", tags(&[("host", "zzz")])))
            .await
            .unwrap()
            .is_empty()
    );
    // A long filter is a query like any other (SQLite once failed on its
    // expression depth and reported an outage): the matching series' key plus
    // 500 pairs no series has finds nothing, and no error.
    let mut long: Tags = (0..500)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    long.insert("host".into(), "b".into());
    assert!(
        store
            .latest(&query("1m", long.clone()))
            .await
            .unwrap()
            .is_empty()
    );
    long.retain(|k, _| k == "host");
    assert_eq!(store.latest(&query("1m", long)).await.unwrap().len(), 1);
    assert!(
        store
            .latest(&query("15m", Tags::new()))
            .await
            .unwrap()
            .is_empty()
    );

    let range = store.range(&query("1m", Tags::new())).await.unwrap();
    assert_eq!(
        range.iter().map(|r| r.start_ms).collect::<Vec<_>>(),
        vec![0, 0, 60_000]
    );
    let q = store.range(&query("5m", Tags::new())).await.unwrap();
    assert_eq!(
        q[0].agg
            .value("p50".parse().unwrap())
            .map(|v| (v - 2.0).abs() < 0.03),
        Some(true),
        "sketch survives"
    );
    let cut = store
        .range(&ResultQuery {
            limit: 1,
            ..query("1m", Tags::new())
        })
        .await
        .unwrap();
    assert_eq!(cut[0].start_ms, 60_000, "a limit keeps the newest windows");
    let from = store
        .range(&ResultQuery {
            from_ms: 60_000,
            ..query("1m", Tags::new())
        })
        .await
        .unwrap();
    assert_eq!(from.len(), 1);

    let raw = store
        .raw_points("cpu", &tags(&[("host", "a")]), 0, 15)
        .await
        .unwrap();
    assert_eq!(
        raw,
        vec![Point {
            metric: "cpu".into(),
            tags: raw_tags.clone(),
            value: 1.0,
            timestamp_ms: 10,
        }]
    );

    let metrics = store.metrics().await.unwrap();
    assert_eq!(
        metrics
            .iter()
            .map(|m| (m.name.as_str(), m.series))
            .collect::<Vec<_>>(),
        vec![("cpu", 2), ("mem", 1)]
    );
    assert_eq!(metrics[0].last_window_end_ms, Some(120_000));

    assert_eq!(
        store.late_counts("cpu").await.unwrap(),
        vec![LateCount {
            metric: "cpu".into(),
            window: "1m".into(),
            count: 5
        }]
    );

    // Closing a window removes its open state in the same commit.
    store
        .commit(&Commit {
            delete_open: vec![open_key],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(store.load_checkpoint(&[1]).await.unwrap().open.is_empty());

    let report = store.enforce_retention(15, 61_000).await.unwrap();
    assert_eq!((report.raw_points, report.results), (1, 4));
    assert_eq!(
        store.range(&query("1m", Tags::new())).await.unwrap().len(),
        1
    );
    crate::store::anomaly::conformance::anomaly_suite(store).await;
}

/// Store: a partition taken by a new owner refuses the commits of the old
/// one, whole, with [`StoreError::Fenced`]; the old owner's other partitions
/// and the new owner's commits go on.
pub async fn fencing_suite(store: &dyn Store) {
    store.migrate().await.unwrap();
    let fenced_tags = tags(&[("host", "fenced")]);
    let id = SeriesId::of("fencing", &fenced_tags);
    let commit = |claims: &[Claim], partition: u32, next_offset: u64, ts: i64| Commit {
        claims: claims.to_vec(),
        partitions: vec![PartitionCheckpoint {
            partition,
            next_offset,
            max_event_ts: Some(ts),
            watermark: None,
        }],
        series: vec![SeriesRow {
            series_id: id,
            metric: "fencing".into(),
            tags: fenced_tags.clone(),
        }],
        raw_points: vec![RawPoint {
            series_id: id,
            timestamp_ms: ts,
            value: 1.0,
        }],
        ..Commit::default()
    };
    let raw = || async {
        store
            .raw_points("fencing", &Tags::new(), 0, i64::MAX)
            .await
            .unwrap()
    };

    let old = store.load_checkpoint(&[3, 4]).await.unwrap();
    assert_eq!(
        old.claims.iter().map(|c| c.partition).collect::<Vec<_>>(),
        vec![3, 4],
        "a take claims every partition it loads"
    );
    store
        .commit(&commit(&old.claims, 3, 10, 1_000))
        .await
        .unwrap();

    let new = store.load_checkpoint(&[3]).await.unwrap();
    assert!(
        new.claims[0].generation > old.claims[0].generation,
        "each take moves the generation on"
    );
    assert_eq!(
        new.partitions[0].next_offset, 10,
        "the new owner resumes where the old one committed"
    );

    // The stale owner's commit (offsets backwards, points again) is refused whole.
    match store.commit(&commit(&old.claims, 3, 5, 2_000)).await {
        Err(StoreError::Fenced { partitions }) => assert_eq!(partitions, vec![3]),
        other => panic!("a stale writer must be fenced, got {other:?}"),
    }
    assert_eq!(
        raw().await.len(),
        1,
        "nothing of a fenced commit is written"
    );

    // Its claim on partition 4 is still current; the new owner's commits land.
    let old_on_4: Vec<Claim> = old
        .claims
        .iter()
        .copied()
        .filter(|c| c.partition == 4)
        .collect();
    store.commit(&commit(&old_on_4, 4, 7, 3_000)).await.unwrap();
    assert_eq!(
        store.progress(&[3, 5]).await.unwrap(),
        vec![PartitionCheckpoint {
            partition: 3,
            next_offset: 10,
            max_event_ts: Some(1_000),
            watermark: None,
        }],
        "progress is read without taking the partition (the commit below still lands)"
    );
    store
        .commit(&commit(&new.claims, 3, 12, 4_000))
        .await
        .unwrap();
    assert_eq!(
        raw()
            .await
            .iter()
            .map(|p| p.timestamp_ms)
            .collect::<Vec<_>>(),
        vec![1_000, 3_000, 4_000]
    );
    let again = store.load_checkpoint(&[3, 4]).await.unwrap();
    assert_eq!(
        again
            .partitions
            .iter()
            .map(|p| (p.partition, p.next_offset))
            .collect::<Vec<_>>(),
        vec![(3, 12), (4, 7)]
    );
    match store.commit(&commit(&new.claims, 3, 20, 5_000)).await {
        Err(StoreError::Fenced { partitions }) => assert_eq!(partitions, vec![3]),
        other => panic!("the new owner is fenced in turn by the next take, got {other:?}"),
    }
}

/// A partial aggregate of the `merge` metric's 1m window at 0 of `host`.
fn partial(host: &str, points: &[(f64, i64)]) -> WindowResult {
    let mut r = result("merge", host, "1m", 0, &[]);
    for &(value, ts) in points {
        r.agg.add(value, ts);
    }
    r
}

fn at_offset(next_offset: u64) -> PartitionCheckpoint {
    PartitionCheckpoint {
        partition: 7,
        next_offset,
        max_event_ts: None,
        watermark: None,
    }
}

/// Store: window results merge on write. A partial of a window already
/// stored (late points, or the series' part of the window from another
/// partition) is merged into it exactly, in the commit's transaction; the
/// commit returns the merged windows as stored. A commit that fails leaves
/// nothing, merges included. `corrupt` must make the stored sketch of the
/// `merge` metric's window of host `a` unreadable (an empty `sketch`), so that
/// merging into it fails after the commit's first writes.
pub async fn results_merge_suite<F, Fut>(store: &dyn Store, corrupt: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    store.migrate().await.unwrap();
    let parts: [&[(f64, i64)]; 3] = [
        &[(1.0, 10), (2.0, 30)],
        &[(5.0, 30)],
        &[(0.5, 25), (7.0, 5)],
    ];
    let mut want = Aggregate::new();
    for &(value, ts) in parts.iter().copied().flatten() {
        want.add(value, ts);
    }
    let merged = store
        .commit(&Commit {
            results: vec![partial("a", parts[0])],
            partitions: vec![at_offset(5)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(merged.is_empty(), "a new window is stored as given");
    let merged = store
        .commit(&Commit {
            results: vec![
                partial("a", parts[1]),
                partial("b", &[(3.0, 1)]),
                partial("a", parts[2]),
            ],
            partitions: vec![at_offset(9)],
            ..Default::default()
        })
        .await
        .unwrap();
    let query = ResultQuery {
        metric: "merge".into(),
        window: "1m".into(),
        tags: tags(&[("host", "a")]),
        from_ms: 0,
        to_ms: i64::MAX,
        limit: 10,
    };
    let stored = store.range(&query).await.unwrap();
    assert_eq!(stored.len(), 1, "one row per window");
    assert_eq!(merged.len(), 1, "only host a's window was merged");
    for got in [&merged[0].agg, &stored[0].agg] {
        assert_eq!((got.count, got.sum, got.min, got.max), (5, 15.5, 0.5, 7.0));
        assert_eq!(
            (got.last_ts, got.last),
            (30, 5.0),
            "last by time, ties by value"
        );
        for p in 1..100 {
            let q: pulse_core::AggKind = format!("p{p}").parse().unwrap();
            assert_eq!(got.value(q), want.value(q), "p{p} of the merged sketch");
        }
    }

    corrupt().await;
    let failed = store
        .commit(&Commit {
            results: vec![partial("c", &[(1.0, 1)]), partial("a", &[(100.0, 50)])],
            partitions: vec![at_offset(12)],
            late: vec![LateCount {
                metric: "merge".into(),
                window: "1m".into(),
                count: 1,
            }],
            ..Default::default()
        })
        .await;
    assert!(failed.is_err(), "a merge into an unreadable window fails");
    let checkpoint = store.load_checkpoint(&[7]).await.unwrap();
    assert_eq!(
        checkpoint.partitions,
        vec![at_offset(9)],
        "offsets unchanged"
    );
    let of_c = store
        .range(&ResultQuery {
            tags: tags(&[("host", "c")]),
            ..query
        })
        .await
        .unwrap();
    assert!(
        of_c.is_empty(),
        "the new window of the failed commit is not stored"
    );
    assert!(store.late_counts("merge").await.unwrap().is_empty());
}

/// Cache: newest window per series, cold answers, live fan-out.
pub async fn cache_suite(cache: &dyn Cache) {
    use futures::StreamExt;
    assert!(
        cache.latest("cpu", "1m").await.unwrap().is_none(),
        "a cold cache says so"
    );
    cache
        .put_latest(&[
            result("cpu", "a", "1m", 60_000, &[1.0]),
            result("cpu", "b", "1m", 60_000, &[2.0]),
        ])
        .await
        .unwrap();
    cache
        .put_latest(&[result("cpu", "a", "1m", 0, &[5.0])])
        .await
        .unwrap(); // older: ignored
    let latest = cache.latest("cpu", "1m").await.unwrap().unwrap();
    assert_eq!(latest.len(), 2);
    assert!(latest.iter().all(|r| r.start_ms == 60_000));
    cache
        .put_latest(&[result("cpu", "a", "1m", 120_000, &[3.0])])
        .await
        .unwrap();
    let latest = cache.latest("cpu", "1m").await.unwrap().unwrap();
    assert_eq!(
        latest.len(),
        1,
        "only series with the newest start are answered"
    );

    let mut live = cache.subscribe().await.unwrap();
    cache
        .publish(&[result("cpu", "a", "1m", 180_000, &[7.0])])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.start_ms, got.agg.last), (180_000, 7.0));
}

mod embedded {
    use crate::bus::embedded::SqliteBus;
    use crate::cache::memory::MemoryCache;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn sqlite_bus_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let bus = SqliteBus::open(&dir.path().join("bus.db"), 4)
            .await
            .unwrap();
        super::bus_suite(bus.as_ref(), || bus.consumer(), 4).await;
    }

    #[tokio::test]
    async fn sqlite_bus_keeps_offsets_and_records_across_reopen() {
        use crate::bus::{BusConsumer, BusProducer, OutgoingRecord};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.db");
        {
            let bus = SqliteBus::open(&path, 2).await.unwrap();
            bus.send(vec![
                OutgoingRecord {
                    key: 0,
                    value: vec![1],
                },
                OutgoingRecord {
                    key: 0,
                    value: vec![2],
                },
            ])
            .await
            .unwrap();
            bus.consumer().commit(&[(0, 2)]).await.unwrap();
        }
        let bus = SqliteBus::open(&path, 2).await.unwrap();
        bus.send(vec![OutgoingRecord {
            key: 0,
            value: vec![3],
        }])
        .await
        .unwrap();
        assert_eq!(
            bus.consumer().end_offsets().await.unwrap(),
            vec![(0, 3), (1, 0)],
            "trimmed offsets are never reused"
        );
        assert!(
            SqliteBus::open(&path, 3).await.is_err(),
            "the partition count of a log is fixed"
        );
    }

    #[tokio::test]
    async fn sqlite_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"))
            .await
            .unwrap();
        super::store_suite(&store).await;
    }

    #[tokio::test]
    async fn sqlite_store_fences_stale_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("store.db"))
            .await
            .unwrap();
        super::fencing_suite(&store).await;
    }

    #[tokio::test]
    async fn sqlite_store_merges_results_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let store = SqliteStore::open(&path).await.unwrap();
        super::results_merge_suite(&store, || async {
            let pool = crate::sqlite::open_pool(&path, "test").await.unwrap();
            sqlx::query("UPDATE window_results SET sketch = x'' WHERE metric = 'merge'")
                .execute(&pool)
                .await
                .unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn memory_cache_conforms() {
        super::cache_suite(&MemoryCache::new()).await;
    }
}

mod postgres_engine {
    use crate::store::postgres::PostgresStore;
    use crate::store::postgres::testing::{
        dropping_schemas, pg_url_or_skip, unique_name as unique_schema,
    };

    #[tokio::test]
    async fn postgres_store_conforms() {
        let Some(url) = pg_url_or_skip() else { return };
        let schema = unique_schema("conform");
        dropping_schemas(&url, &[&schema], async {
            let store = PostgresStore::connect(&url, &schema).await.unwrap();
            super::store_suite(&store).await;
        })
        .await;
    }

    #[tokio::test]
    async fn postgres_store_fences_stale_writers() {
        let Some(url) = pg_url_or_skip() else { return };
        let schema = unique_schema("fencing");
        dropping_schemas(&url, &[&schema], async {
            let store = PostgresStore::connect(&url, &schema).await.unwrap();
            super::fencing_suite(&store).await;
        })
        .await;
    }

    #[tokio::test]
    async fn postgres_store_merges_results_on_write() {
        let Some(url) = pg_url_or_skip() else { return };
        let schema = unique_schema("merge");
        dropping_schemas(&url, &[&schema], async {
            let store = PostgresStore::connect(&url, &schema).await.unwrap();
            super::results_merge_suite(&store, || async {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(&format!(
                    "UPDATE \"{schema}\".window_results SET sketch = ''::bytea WHERE metric = 'merge'"
                ))
                .execute(&pool)
                .await
                .unwrap();
            })
            .await;
        })
        .await;
    }
}

mod postgres_tls {
    //! The PostgreSQL store over TLS, against a cluster of its own that
    //! refuses plain connections (see `tls_peers`).

    use crate::store::StoreError;
    use crate::store::postgres::PostgresStore;
    use crate::store::postgres::testing::unique_name as unique_schema;
    use crate::tls_peers::{PG_CERT_USER, PgTls, TestPki};

    fn url(host: &str, pg: &PgTls, user: &str, query: &str) -> String {
        format!("postgres://{user}@{host}:{}/postgres?{query}", pg.port)
    }

    async fn refusal(url: &str) -> String {
        match PostgresStore::connect(url, &unique_schema("refused")).await {
            Ok(_) => panic!("{url} connected"),
            Err(StoreError::Unavailable(message)) => message,
            Err(other) => panic!("{url}: not an unavailable store: {other}"),
        }
    }

    #[tokio::test]
    async fn postgres_store_conforms_over_verify_full_tls() {
        let pki = TestPki::new(PG_CERT_USER);
        let Some(pg) = PgTls::start(&pki) else { return };
        let ca = pki.ca.display();
        let verified = url(
            "localhost",
            &pg,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        );
        let store = PostgresStore::connect(&verified, &unique_schema("tls"))
            .await
            .unwrap();
        super::store_suite(&store).await;

        // The cluster takes TLS only, so the suite above ran encrypted.
        let plain = refusal(&url("localhost", &pg, "postgres", "sslmode=disable")).await;
        assert!(plain.contains("no encryption"), "{plain}");
    }

    #[tokio::test]
    async fn postgres_tls_refuses_a_wrong_ca_or_host_naming_the_cause() {
        let pki = TestPki::new(PG_CERT_USER);
        let Some(pg) = PgTls::start(&pki) else { return };
        let (ca, other) = (pki.ca.display(), pki.other_ca.display());

        let untrusted = refusal(&url(
            "localhost",
            &pg,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={other}"),
        ))
        .await;
        assert!(
            untrusted.contains("certificate is not trusted"),
            "{untrusted}"
        );
        assert!(untrusted.contains("sslrootcert"), "{untrusted}");
        // libpq reads `require` with a root certificate as `verify-ca`.
        let required = refusal(&url(
            "localhost",
            &pg,
            "postgres",
            &format!("sslmode=require&sslrootcert={other}"),
        ))
        .await;
        assert!(
            required.contains("certificate is not trusted"),
            "{required}"
        );

        // The certificate names `localhost`, not 127.0.0.1.
        let mismatch = refusal(&url(
            "127.0.0.1",
            &pg,
            "postgres",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .await;
        assert!(mismatch.contains("hostname mismatch"), "{mismatch}");
        PostgresStore::connect(
            &url(
                "localhost",
                &pg,
                "postgres",
                &format!("sslmode=verify-ca&sslrootcert={ca}"),
            ),
            &unique_schema("ca"),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn postgres_tls_client_certificate_logs_in_with_sslcert_and_sslkey() {
        let pki = TestPki::new(PG_CERT_USER);
        let Some(pg) = PgTls::start(&pki) else { return };
        let (ca, cert, key) = (
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display(),
        );
        let with_cert = url(
            "localhost",
            &pg,
            PG_CERT_USER,
            &format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
        );
        let store = PostgresStore::connect(&with_cert, &unique_schema("mtls"))
            .await
            .unwrap();
        crate::store::Store::migrate(&store).await.unwrap();
        let without = refusal(&url(
            "localhost",
            &pg,
            PG_CERT_USER,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ))
        .await;
        assert!(without.contains("certificate"), "{without}");
    }
}

mod redis_tls {
    //! The Redis cache over `rediss://`, against a redis-server of its own
    //! with only a TLS port (see `tls_peers`).

    use std::time::Duration;

    use crate::cache::CacheError;
    use crate::cache::redis::{RedisCache, TlsFiles};
    use crate::tls_peers::{REDIS_PASSWORD, RedisTls, TestPki};

    const TTL: Duration = Duration::from_secs(600);

    fn url(user: &str, host: &str, redis: &RedisTls) -> String {
        format!("rediss://{user}:{REDIS_PASSWORD}@{host}:{}", redis.port)
    }

    async fn refusal(url: &str, tls: &TlsFiles) -> String {
        match RedisCache::connect_tls(url, "pulse_tls_refused", TTL, tls).await {
            Ok(_) => panic!("connected"),
            Err(CacheError::Unavailable(message)) => {
                assert!(!message.contains(REDIS_PASSWORD), "{message}");
                message
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_cache_conforms_over_rediss_with_a_client_certificate() {
        let pki = TestPki::new("pulse");
        let Some(redis) = RedisTls::start(&pki, true) else {
            return;
        };
        let tls = TlsFiles {
            ca_file: Some(pki.ca.clone()),
            cert_file: Some(pki.client_cert.clone()),
            key_file: Some(pki.client_key.clone()),
        };
        // The ACL user `pulse`, as a managed Redis hands out.
        let cache =
            RedisCache::connect_tls(&url("pulse", "localhost", &redis), "pulse_tls", TTL, &tls)
                .await
                .unwrap();
        super::cache_suite(&cache).await;

        let without_cert = TlsFiles {
            ca_file: tls.ca_file.clone(),
            ..TlsFiles::default()
        };
        let refused = refusal(&url("pulse", "localhost", &redis), &without_cert).await;
        assert!(refused.contains("Redis at localhost"), "{refused}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_tls_refuses_a_wrong_ca_or_host_naming_the_cause() {
        let pki = TestPki::new("pulse");
        let Some(redis) = RedisTls::start(&pki, false) else {
            return;
        };
        let with_ca = |ca: &std::path::Path| TlsFiles {
            ca_file: Some(ca.to_path_buf()),
            ..TlsFiles::default()
        };
        let untrusted = refusal(
            &url("default", "localhost", &redis),
            &with_ca(&pki.other_ca),
        )
        .await;
        assert!(
            untrusted.contains("certificate is not trusted"),
            "{untrusted}"
        );
        assert!(untrusted.contains("cache.tls_ca_file"), "{untrusted}");
        let mismatch = refusal(&url("default", "127.0.0.1", &redis), &with_ca(&pki.ca)).await;
        assert!(mismatch.contains("hostname mismatch"), "{mismatch}");
        let plain = refusal(
            &url("default", "localhost", &redis),
            &TlsFiles {
                ca_file: Some("/nonexistent/ca.crt".into()),
                ..TlsFiles::default()
            },
        )
        .await;
        assert!(
            plain.contains("cache.tls_ca_file names /nonexistent/ca.crt"),
            "{plain}"
        );
        RedisCache::connect_tls(
            &url("default", "localhost", &redis),
            "pulse_tls_ok",
            TTL,
            &with_ca(&pki.ca),
        )
        .await
        .unwrap();
    }
}

mod kafka_engine {
    //! The Kafka engine against librdkafka's mock cluster: the real Kafka
    //! protocol on loopback, with consumer groups and commits (topics are made
    //! with the mock's own `create_topic`, as it has no CreateTopics).

    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    use crate::bus::kafka::{KafkaConsumer, KafkaProducer};
    use crate::bus::{
        BusConsumer, BusError, BusProducer, BusRecord, ConsumerEvent, OutgoingRecord,
    };

    /// Short group timeouts so rebalances in the mock settle in seconds.
    const GROUP_TIMEOUTS: &[(&str, &str)] = &[
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ];

    fn cluster(topic: &str, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
        let cluster = MockCluster::new(3).unwrap();
        cluster.create_topic(topic, partitions, 1).unwrap();
        cluster
    }

    fn consumer(brokers: &str, topic: &str, group: &str) -> KafkaConsumer {
        KafkaConsumer::with_overrides(brokers, topic, group, GROUP_TIMEOUTS).unwrap()
    }

    async fn first_assignment(consumer: &mut KafkaConsumer) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match consumer.next(10, Duration::from_millis(500)).await.unwrap() {
                ConsumerEvent::Assigned(p) => return p,
                ConsumerEvent::Idle => {}
                other => panic!("expected an assignment first, got {other:?}"),
            }
        }
        panic!("no assignment within 30s");
    }

    fn records(keys: impl Iterator<Item = u64>) -> Vec<OutgoingRecord> {
        keys.map(|key| OutgoingRecord {
            key,
            value: key.to_be_bytes().to_vec(),
        })
        .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_bus_conforms() {
        let topic = "pulse.test.conform.points";
        let cluster = cluster(topic, 4);
        let brokers = cluster.bootstrap_servers();
        let producer = KafkaProducer::new(&brokers, topic).await.unwrap();
        assert_eq!(producer.partition_count().await.unwrap(), 4);
        producer.ready().await.unwrap();
        super::bus_suite(&producer, || consumer(&brokers, topic, "pulse-conform"), 4).await;
    }

    /// What the processor does: seek the moment `Assigned` arrives, before
    /// librdkafka has started fetching, and read from exactly there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_seek_right_after_assignment() {
        let topic = "pulse.test.seek.points";
        let cluster = cluster(topic, 2);
        let brokers = cluster.bootstrap_servers();
        let producer = KafkaProducer::new(&brokers, topic).await.unwrap();
        producer
            .send(records((0..20).map(|i| i % 2)))
            .await
            .unwrap();

        let mut consumer = consumer(&brokers, topic, "pulse-seek");
        assert_eq!(first_assignment(&mut consumer).await, vec![0, 1]);
        consumer.seek(0, 7).await.unwrap();
        consumer.seek(1, 9).await.unwrap();
        consumer.seek(5, 1).await.unwrap(); // not assigned: ignored, no error
        let got = super::read_records(&mut consumer, 4).await;
        let positions: Vec<(u32, u64)> = got.iter().map(|r| (r.partition, r.offset)).collect();
        let mut sorted = positions.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec![(0, 7), (0, 8), (0, 9), (1, 9)],
            "{positions:?}"
        );
        assert_eq!(
            consumer.next(10, Duration::from_millis(300)).await.unwrap(),
            ConsumerEvent::Idle
        );
        assert_eq!(
            consumer.end_offsets().await.unwrap(),
            vec![(0, 10), (1, 10)]
        );
    }

    /// What the processor does while its store is down: pause and go on
    /// polling. The member reads nothing, stays in its group past
    /// `max.poll.interval.ms` (no revoke), and after the resume reads on from
    /// right after the last record it handed out, none skipped or repeated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_paused_consumer_stays_in_its_group_and_resumes_where_it_stopped() {
        let topic = "pulse.test.pause.points";
        let cluster = cluster(topic, 1);
        let brokers = cluster.bootstrap_servers();
        let producer = KafkaProducer::new(&brokers, topic).await.unwrap();
        producer.send(records(0..10)).await.unwrap();
        let poll_interval = Duration::from_millis(7000);
        let mut overrides = GROUP_TIMEOUTS.to_vec();
        overrides.push(("max.poll.interval.ms", "7000"));
        let mut consumer =
            KafkaConsumer::with_overrides(&brokers, topic, "pulse-pause", &overrides).unwrap();
        assert_eq!(first_assignment(&mut consumer).await, vec![0]);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < 4 && Instant::now() < deadline {
            if let ConsumerEvent::Records(r) = consumer
                .next(4 - got.len(), Duration::from_millis(200))
                .await
                .unwrap()
            {
                got.extend(r);
            }
        }
        assert_eq!(got.len(), 4);

        consumer.pause(true).await.unwrap();
        producer.send(records(10..20)).await.unwrap();
        let paused_until = Instant::now() + poll_interval + Duration::from_secs(2);
        while Instant::now() < paused_until {
            let event = consumer
                .next(100, Duration::from_millis(200))
                .await
                .unwrap();
            assert_eq!(
                event,
                ConsumerEvent::Idle,
                "a paused member reads nothing and keeps its partitions"
            );
        }

        consumer.pause(false).await.unwrap();
        got.extend(super::read_records(&mut consumer, 16).await);
        assert_eq!(
            got.iter().map(|r| r.offset).collect::<Vec<_>>(),
            (0..20).collect::<Vec<u64>>(),
            "reading goes on right after the last record handed out"
        );
    }

    /// Applies rebalance events to a set of owned partitions.
    fn apply(owned: &mut BTreeSet<u32>, event: &ConsumerEvent) {
        match event {
            ConsumerEvent::Assigned(p) => owned.extend(p.iter().copied()),
            ConsumerEvent::Revoked(p) => p.iter().for_each(|p| {
                owned.remove(p);
            }),
            _ => {}
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_group_rebalances_between_consumers() {
        let topic = "pulse.test.rebalance.points";
        let cluster = cluster(topic, 4);
        let brokers = cluster.bootstrap_servers();
        let all: BTreeSet<u32> = (0..4).collect();
        let producer = KafkaProducer::new(&brokers, topic).await.unwrap();

        let mut first = consumer(&brokers, topic, "pulse-rebalance");
        let mut owned_first: BTreeSet<u32> =
            first_assignment(&mut first).await.into_iter().collect();
        assert_eq!(owned_first, all);

        // A second member joins: the first gives up some partitions.
        let mut second = consumer(&brokers, topic, "pulse-rebalance");
        let mut owned_second = BTreeSet::new();
        let mut first_revoked = false;
        let mut received: Vec<(usize, BusRecord)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        while !(first_revoked
            && !owned_first.is_empty()
            && !owned_second.is_empty()
            && owned_first.is_disjoint(&owned_second)
            && &owned_first | &owned_second == all)
        {
            assert!(Instant::now() < deadline, "no rebalance within 40s");
            for (who, c, owned) in [
                (0, &mut first, &mut owned_first),
                (1, &mut second, &mut owned_second),
            ] {
                match c.next(100, Duration::from_millis(100)).await.unwrap() {
                    ConsumerEvent::Records(r) => received.extend(r.into_iter().map(|r| (who, r))),
                    ConsumerEvent::Idle => {}
                    event => {
                        first_revoked |= who == 0 && matches!(event, ConsumerEvent::Revoked(_));
                        apply(owned, &event);
                    }
                }
            }
        }
        assert!(received.is_empty(), "nothing was produced yet");

        // Records go to whichever member owns their partition, each once.
        producer.send(records(0..40)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while received.len() < 40 && Instant::now() < deadline {
            for (who, c) in [(0, &mut first), (1, &mut second)] {
                match c.next(100, Duration::from_millis(100)).await.unwrap() {
                    ConsumerEvent::Records(r) => received.extend(r.into_iter().map(|r| (who, r))),
                    ConsumerEvent::Idle => {}
                    other => panic!("unexpected rebalance {other:?}"),
                }
            }
        }
        assert_eq!(received.len(), 40);
        for (who, record) in &received {
            let owner = if *who == 0 {
                &owned_first
            } else {
                &owned_second
            };
            assert!(owner.contains(&record.partition), "{who} got {record:?}");
        }
        let mut offsets: Vec<(u32, u64)> = received
            .iter()
            .map(|(_, r)| (r.partition, r.offset))
            .collect();
        offsets.sort_unstable();
        offsets.dedup();
        assert_eq!(offsets.len(), 40, "no record twice");

        // The second leaves (drop closes it): the first gets everything back.
        drop(second);
        let mut saw_revoke = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while owned_first != all || !saw_revoke {
            assert!(
                Instant::now() < deadline,
                "partitions not handed back within 30s"
            );
            match first.next(100, Duration::from_millis(200)).await.unwrap() {
                ConsumerEvent::Records(r) => panic!("nothing new was produced, got {r:?}"),
                ConsumerEvent::Idle => {}
                event => {
                    saw_revoke |= matches!(event, ConsumerEvent::Revoked(_));
                    apply(&mut owned_first, &event);
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_producer_unreachable_is_unavailable() {
        let started = Instant::now();
        let producer = KafkaProducer::with_overrides(
            "127.0.0.1:1",
            "pulse.test.unreachable.points",
            &[("message.timeout.ms", "1000")],
        )
        .await
        .unwrap();
        let error = producer.send(records(0..3)).await.unwrap_err();
        match &error {
            BusError::Unavailable(reason) => {
                assert!(reason.contains("127.0.0.1:1"), "{reason}");
                assert!(reason.contains("pulse.test.unreachable.points"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            producer.ready().await,
            Err(BusError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{:?}",
            started.elapsed()
        );
    }

    /// Brokers that go away after start: deliveries time out and the send says
    /// so; once they are back, sends succeed again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kafka_producer_reports_failed_deliveries() {
        let topic = "pulse.test.down.points";
        let cluster = cluster(topic, 2);
        let brokers = cluster.bootstrap_servers();
        let producer =
            KafkaProducer::with_overrides(&brokers, topic, &[("message.timeout.ms", "2000")])
                .await
                .unwrap();
        producer.send(records(0..4)).await.unwrap();
        for broker in 1..=3 {
            cluster.broker_down(broker).unwrap();
        }
        let started = Instant::now();
        match producer.send(records(0..4)).await {
            Err(BusError::Unavailable(reason)) => {
                assert!(reason.contains("not acknowledged"), "{reason}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        for broker in 1..=3 {
            cluster.broker_up(broker).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(error) = producer.send(records(0..4)).await {
            assert!(Instant::now() < deadline, "no recovery: {error}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

mod redis_engine {

    //! The Redis engine against a real Redis: `PULSE_TEST_REDIS_URL`, by
    //! default `redis://127.0.0.1:6379`. Every test works under its own key
    //! prefix and deletes its keys afterwards, pass or fail.

    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::time::{Duration, Instant};

    use futures::FutureExt;

    use crate::cache::redis::{RedisCache, encode_result};
    use crate::cache::{Cache, CacheError};
    use crate::store::postgres::testing::unique_name;

    const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
    const TTL: Duration = Duration::from_secs(600);

    /// The test Redis's URL, or `None` after a skip notice when it does not
    /// answer; with `CI` set, an unreachable Redis fails the test instead.
    async fn redis_url_or_skip() -> Option<String> {
        let url = std::env::var("PULSE_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.into());
        let client = redis::Client::open(url.as_str())
            .unwrap_or_else(|e| panic!("PULSE_TEST_REDIS_URL is not a Redis url: {e}"));
        let ping = async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        };
        let error = match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => return Some(url),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 2s".to_string(),
        };
        let address = client.get_connection_info().addr().to_string();
        pulse_core::test_policy::skip_or_fail(
            &format!("Redis is unreachable at {address} ({error})"),
            "start Redis there or point PULSE_TEST_REDIS_URL at one",
        );
        None
    }

    async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The keys under `prefix`.
    async fn keys(url: &str, prefix: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut connection(url).await)
            .await
            .unwrap()
    }

    /// Runs `test`, then deletes every key under `prefix`, also when it panicked.
    async fn deleting_keys(url: &str, prefix: &str, test: impl Future<Output = ()>) {
        let outcome = AssertUnwindSafe(test).catch_unwind().await;
        let leftovers = keys(url, prefix).await;
        if !leftovers.is_empty() {
            redis::cmd("DEL")
                .arg(&leftovers)
                .exec_async(&mut connection(url).await)
                .await
                .unwrap();
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_cache_conforms() {
        let Some(url) = redis_url_or_skip().await else {
            return;
        };
        let prefix = unique_name("conform");
        deleting_keys(&url, &prefix, async {
            let cache = RedisCache::connect(&url, &prefix, TTL).await.unwrap();
            super::cache_suite(&cache).await;
            assert_eq!(
                keys(&url, &prefix).await,
                vec![format!("{prefix}:latest:cpu:1m")],
                "one hash per metric and window, under the prefix"
            );
        })
        .await;
        assert!(keys(&url, &prefix).await.is_empty(), "cleaned up");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_older_windows_never_replace_newer_ones_and_keys_expire() {
        let Some(url) = redis_url_or_skip().await else {
            return;
        };
        let prefix = unique_name("order");
        deleting_keys(&url, &prefix, async {
            // Two processors, as during a rebalance: the one with the older
            // window writes last.
            let first = RedisCache::connect(&url, &prefix, TTL).await.unwrap();
            let second = RedisCache::connect(&url, &prefix, TTL).await.unwrap();
            first
                .put_latest(&[super::result("cpu", "a", "1m", 120_000, &[3.0])])
                .await
                .unwrap();
            second
                .put_latest(&[super::result("cpu", "a", "1m", 60_000, &[9.0])])
                .await
                .unwrap();
            let latest = first.latest("cpu", "1m").await.unwrap().unwrap();
            assert_eq!(
                latest
                    .iter()
                    .map(|r| (r.start_ms, r.agg.last))
                    .collect::<Vec<_>>(),
                vec![(120_000, 3.0)]
            );

            // The same window again (a replay) replaces it.
            second
                .put_latest(&[super::result("cpu", "a", "1m", 120_000, &[4.0])])
                .await
                .unwrap();
            let latest = first.latest("cpu", "1m").await.unwrap().unwrap();
            assert_eq!((latest[0].start_ms, latest[0].agg.last), (120_000, 4.0));

            // Racing writers of one series, in any order: the newest wins.
            let racing: Vec<_> = (0..16i64)
                .map(|i| super::result("mem", "a", "1m", ((i * 7) % 16) * 60_000, &[1.0]))
                .collect();
            let writes = racing.iter().enumerate().map(|(i, result)| {
                let cache = if i % 2 == 0 { &first } else { &second };
                cache.put_latest(std::slice::from_ref(result))
            });
            for outcome in futures::future::join_all(writes).await {
                outcome.unwrap();
            }
            let latest = first.latest("mem", "1m").await.unwrap().unwrap();
            assert_eq!(latest.len(), 1);
            assert_eq!(latest[0].start_ms, 15 * 60_000);

            // One batch across hashes, with an older result of a series in it.
            first
                .put_latest(&[
                    super::result("cpu", "b", "1m", 120_000, &[1.0]),
                    super::result("cpu", "a", "5m", 0, &[1.0]),
                    super::result("cpu", "a", "1m", 0, &[1.0]),
                ])
                .await
                .unwrap();
            let latest = first.latest("cpu", "1m").await.unwrap().unwrap();
            assert_eq!(latest.len(), 2);
            assert!(latest.iter().all(|r| r.start_ms == 120_000));
            assert_eq!(
                first.latest("cpu", "5m").await.unwrap().unwrap()[0].start_ms,
                0
            );

            let mut redis = connection(&url).await;
            for key in keys(&url, &prefix).await {
                let ttl: i64 = redis::cmd("TTL")
                    .arg(&key)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                assert!(ttl > 0 && ttl <= 600, "{key} has TTL {ttl}");
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_undecodable_entries_are_skipped() {
        let Some(url) = redis_url_or_skip().await else {
            return;
        };
        let prefix = unique_name("garbage");
        deleting_keys(&url, &prefix, async {
            let cache = RedisCache::connect(&url, &prefix, TTL).await.unwrap();
            let mut redis = connection(&url).await;
            let key = cache.latest_key("cpu", "1m");
            redis::cmd("HSET")
                .arg(&key)
                .arg("00000000000000ff")
                .arg(b"\x09not a result".as_slice())
                .exec_async(&mut redis)
                .await
                .unwrap();
            assert!(
                cache.latest("cpu", "1m").await.unwrap().is_none(),
                "nothing readable counts as cold"
            );
            cache
                .put_latest(&[super::result("cpu", "a", "1m", 60_000, &[1.0])])
                .await
                .unwrap();
            let latest = cache.latest("cpu", "1m").await.unwrap().unwrap();
            assert_eq!(latest.len(), 1);

            // A foreign value under a series' field is replaced, not trusted.
            let series = format!("{:016x}", latest[0].series_id.0);
            redis::cmd("HSET")
                .arg(&key)
                .arg(&series)
                .arg(b"\x01\x7f".as_slice())
                .exec_async(&mut redis)
                .await
                .unwrap();
            cache
                .put_latest(&[super::result("cpu", "a", "1m", 0, &[2.0])])
                .await
                .unwrap();
            assert_eq!(
                cache.latest("cpu", "1m").await.unwrap().unwrap()[0].start_ms,
                0
            );

            // Live: a stray message is skipped, the next window arrives.
            use futures::StreamExt;
            let mut live = cache.subscribe().await.unwrap();
            redis::cmd("PUBLISH")
                .arg(cache.live_channel())
                .arg("garbage")
                .exec_async(&mut redis)
                .await
                .unwrap();
            let good = super::result("cpu", "a", "1m", 180_000, &[7.0]);
            redis::cmd("PUBLISH")
                .arg(cache.live_channel())
                .arg(encode_result(&good))
                .exec_async(&mut redis)
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), live.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((got.start_ms, got.series_id), (180_000, good.series_id));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_closed_port_is_unavailable_quickly() {
        let started = Instant::now();
        match RedisCache::connect("redis://127.0.0.1:1", "pulse_test_closed", TTL).await {
            Err(CacheError::Unavailable(reason)) => {
                assert!(reason.contains("127.0.0.1:1"), "{reason}");
                assert!(reason.contains("connect"), "{reason}");
            }
            Ok(cache) => panic!("connected to a closed port: {cache:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn redis_invalid_settings_are_refused() {
        for (url, prefix, ttl) in [
            ("not a url", "p", TTL),
            (DEFAULT_URL, "", TTL),
            (DEFAULT_URL, "p", Duration::ZERO),
            (DEFAULT_URL, "p", Duration::from_micros(10)),
        ] {
            let outcome = RedisCache::connect(url, prefix, ttl).await;
            assert!(
                matches!(outcome, Err(CacheError::Unavailable(_))),
                "{url} {prefix:?} {ttl:?}: {outcome:?}"
            );
        }
    }
}
