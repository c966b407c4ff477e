//! What every store engine must do with anomalies (part of
//! `conformance::store_suite`): upsert by id, an outbox row per receiver and
//! the bus, delivered in order and never queued twice, detector states per
//! partition, the API's filters, and retention (resolved anomalies with the
//! results, delivered outbox rows with the raw points, nothing undelivered).

use pulse_core::anomaly::{AlertState, Anomaly};
use pulse_core::{SeriesId, Tags};

use super::{AnomalyChange, AnomalyQuery, BUS_RECEIVER, DeliveryOutcome, DetectorState};
use crate::store::{Commit, Store};

fn anomaly(id: &str, host: &str, start: i64, state: AlertState) -> Anomaly {
    Anomaly {
        id: id.into(),
        rule: "spike".into(),
        metric_name: "cpu".into(),
        tags: Tags::from([
            ("env".to_string(), "prod".to_string()),
            ("host".to_string(), host.to_string()),
        ]),
        window: "1m".into(),
        window_start_ms: start,
        window_end_ms: start + 60_000,
        value: 95.5,
        expected: 50.25,
        score: 4.5,
        state,
        message: "spike: cpu was 95.5".into(),
        resolved_ms: (state == AlertState::Resolved).then_some(start + 180_000),
        notify: vec!["ops".into()],
    }
}

fn change(partition: u32, a: Anomaly) -> Commit {
    Commit {
        anomalies: vec![AnomalyChange {
            partition,
            anomaly: a,
        }],
        ..Commit::default()
    }
}

pub async fn anomaly_suite(store: &dyn Store) {
    let state = |partition, rule: &str, bytes: &[u8]| DetectorState {
        partition,
        rule: rule.into(),
        series_id: SeriesId::from_i64(42),
        state: bytes.to_vec(),
    };
    let mut first = change(
        7,
        anomaly("aaaa000000000001", "a", 60_000, AlertState::Firing),
    );
    first.detectors = vec![state(7, "spike", &[1, 2]), state(8, "spike", &[3])];
    store.commit(&first).await.unwrap();
    store
        .commit(&change(
            7,
            anomaly("aaaa000000000002", "b", 120_000, AlertState::Firing),
        ))
        .await
        .unwrap();
    // Resolving updates the same anomaly; a replayed change queues nothing new.
    let mut resolve = change(
        7,
        anomaly("aaaa000000000001", "a", 60_000, AlertState::Resolved),
    );
    resolve.detectors = vec![state(7, "spike", &[9])];
    store.commit(&resolve).await.unwrap();
    store.commit(&resolve).await.unwrap();

    let mut detectors = store.load_detectors(&[7]).await.unwrap();
    detectors.sort_by(|a, b| a.rule.cmp(&b.rule));
    assert_eq!(
        detectors,
        vec![state(7, "spike", &[9])],
        "per partition, upserted"
    );

    let query = |tags: Tags, state: Option<AlertState>| AnomalyQuery {
        metric: Some("cpu".into()),
        rule: Some("spike".into()),
        tags,
        state,
        from_ms: 0,
        to_ms: 1_000_000,
        limit: 10,
    };
    let all = store.anomalies(&query(Tags::new(), None)).await.unwrap();
    let mut expected = anomaly("aaaa000000000001", "a", 60_000, AlertState::Resolved);
    expected.notify = Vec::new();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0], expected,
        "ordered by window start, resolved in place"
    );
    let b = Tags::from([("host".to_string(), "b".to_string())]);
    let only_b = store.anomalies(&query(b, None)).await.unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].id, "aaaa000000000002");
    let firing = store
        .anomalies(&query(Tags::new(), Some(AlertState::Firing)))
        .await
        .unwrap();
    assert_eq!(firing.len(), 1);
    let none = AnomalyQuery {
        metric: Some("mem".into()),
        ..query(Tags::new(), None)
    };
    assert!(store.anomalies(&none).await.unwrap().is_empty());

    // Outbox: (ops, bus) × (a firing, b firing, a resolved), oldest first, for partition 7 only.
    assert!(
        store
            .pending_deliveries(&[8], 100)
            .await
            .unwrap()
            .is_empty()
    );
    let pending = store.pending_deliveries(&[7], 100).await.unwrap();
    let rows: Vec<(&str, &str, AlertState)> = pending
        .iter()
        .map(|d| (d.anomaly.id.as_str(), d.receiver.as_str(), d.anomaly.state))
        .collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert_eq!(rows[0].0, "aaaa000000000001");
    assert_eq!(rows[0].2, AlertState::Firing);
    assert!(rows.iter().any(|r| r.1 == BUS_RECEIVER));
    assert_eq!(rows[5].2, AlertState::Resolved);

    let (sent, failed) = (&pending[0], &pending[1]);
    store
        .mark_delivery(sent.seq, &DeliveryOutcome::Sent { at_ms: 5 })
        .await
        .unwrap();
    store
        .mark_delivery(
            failed.seq,
            &DeliveryOutcome::Failed {
                retry_at_ms: 99_000,
                error: "503".into(),
            },
        )
        .await
        .unwrap();
    let after = store.pending_deliveries(&[7], 100).await.unwrap();
    assert_eq!(after.len(), 5, "the sent row is gone");
    let retried = after.iter().find(|d| d.seq == failed.seq).unwrap();
    assert_eq!((retried.attempts, retried.next_attempt_ms), (1, 99_000));
    assert_eq!(store.pending_deliveries(&[7], 2).await.unwrap().len(), 2);

    // Retention: a's resolving window ended at 240 000 and the row was sent at 5;
    // both cutoffs are exclusive.
    let report = store.enforce_retention(5, 240_000).await.unwrap();
    assert_eq!((report.anomalies, report.deliveries), (0, 0));
    let report = store.enforce_retention(6, 240_001).await.unwrap();
    assert_eq!(
        (report.anomalies, report.deliveries),
        (1, 1),
        "the resolved anomaly and the sent row"
    );
    let kept = store.anomalies(&query(Tags::new(), None)).await.unwrap();
    assert_eq!(
        kept.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["aaaa000000000002"],
        "a firing anomaly is kept however old"
    );
    assert_eq!(
        store.pending_deliveries(&[7], 100).await.unwrap().len(),
        5,
        "undelivered rows are never pruned"
    );
}
