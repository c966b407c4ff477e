//! Behaviour every engine of a trait must show, written once and run against
//! each implementation (embedded here; Kafka, PostgreSQL and Redis beside them).

use std::time::Duration;

use pulse_core::{Aggregate, Point, SeriesId, Tags, WindowResult};

use crate::bus::{BusConsumer, BusProducer, ConsumerEvent, OutgoingRecord};
use crate::cache::Cache;
use crate::store::{
    Commit, LateCount, OpenWindowKey, OpenWindowState, PartitionCheckpoint, ResultQuery, Store,
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
    let commit = Commit {
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
        raw_points: vec![
            Point {
                metric: "cpu".into(),
                tags: raw_tags.clone(),
                value: 1.0,
                timestamp_ms: 10,
            },
            Point {
                metric: "cpu".into(),
                tags: raw_tags.clone(),
                value: 2.0,
                timestamp_ms: 20,
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

    let checkpoint = store.load_checkpoint(&[1]).await.unwrap();
    assert_eq!(checkpoint.partitions, commit.partitions);
    assert_eq!(checkpoint.open, commit.upsert_open);
    assert!(
        store.load_checkpoint(&[0]).await.unwrap().open.is_empty(),
        "state is per partition"
    );

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
    assert_eq!(raw, vec![commit.raw_points[0].clone()]);

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
    async fn memory_cache_conforms() {
        super::cache_suite(&MemoryCache::new()).await;
    }
}
