//! The anomaly tables in the embedded (SQLite) store.

use pulse_core::anomaly::{AlertState, Anomaly};
use pulse_core::{SeriesId, Tags};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{
    AnomalyChange, AnomalyQuery, Delivery, DeliveryOutcome, DetectorState, body, outbox_rows,
    parse_body,
};
use crate::store::StoreError;

const CHUNK: usize = 1_000;

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Writes a commit's anomalies, outbox rows and detector states on `tx`.
pub async fn write(
    tx: &mut SqliteConnection,
    changes: &[AnomalyChange],
    detectors: &[DetectorState],
) -> Result<(), StoreError> {
    for c in changes {
        let a = &c.anomaly;
        sqlx::query(
            "INSERT INTO anomalies (id, rule, metric, tags, window_label, window_start, window_end, \
             value, expected, score, state, message, resolved_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) \
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, resolved_ms = excluded.resolved_ms",
        )
        .bind(&a.id)
        .bind(&a.rule)
        .bind(&a.metric_name)
        .bind(serde_json::to_string(&a.tags).unwrap_or_default())
        .bind(&a.window)
        .bind(a.window_start_ms)
        .bind(a.window_end_ms)
        .bind(a.value)
        .bind(a.expected)
        .bind(a.score)
        .bind(a.state.as_str())
        .bind(&a.message)
        .bind(a.resolved_ms)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    for chunk in outbox_rows(changes).chunks(CHUNK) {
        let mut sql = QueryBuilder::<Sqlite>::new(
            "INSERT OR IGNORE INTO anomaly_outbox (partition, anomaly_id, state, receiver, body) ",
        );
        sql.push_values(chunk, |mut b, (c, receiver)| {
            b.push_bind(i64::from(c.partition))
                .push_bind(&c.anomaly.id)
                .push_bind(c.anomaly.state.as_str())
                .push_bind(*receiver)
                .push_bind(body(&c.anomaly));
        });
        sql.build().execute(&mut *tx).await.map_err(unavailable)?;
    }
    for chunk in detectors.chunks(CHUNK) {
        let mut sql = QueryBuilder::<Sqlite>::new(
            "INSERT INTO detector_states (partition, rule, series_id, state) ",
        );
        sql.push_values(chunk, |mut b, d| {
            b.push_bind(i64::from(d.partition))
                .push_bind(&d.rule)
                .push_bind(d.series_id.as_i64())
                .push_bind(&d.state);
        });
        sql.push(" ON CONFLICT (partition, rule, series_id) DO UPDATE SET state = excluded.state");
        sql.build().execute(&mut *tx).await.map_err(unavailable)?;
    }
    Ok(())
}

pub async fn load_detectors(
    pool: &SqlitePool,
    partitions: &[u32],
) -> Result<Vec<DetectorState>, StoreError> {
    let mut out = Vec::new();
    for &partition in partitions {
        let rows =
            sqlx::query("SELECT rule, series_id, state FROM detector_states WHERE partition = ?")
                .bind(i64::from(partition))
                .fetch_all(pool)
                .await
                .map_err(unavailable)?;
        out.extend(rows.into_iter().map(|row| DetectorState {
            partition,
            rule: row.get(0),
            series_id: SeriesId::from_i64(row.get(1)),
            state: row.get(2),
        }));
    }
    Ok(out)
}

fn anomaly_from_row(row: &SqliteRow) -> Result<Anomaly, StoreError> {
    let tags: String = row.get(3);
    let tags: Tags = serde_json::from_str(&tags)
        .map_err(|e| StoreError::Corrupt(format!("anomaly tags: {e}")))?;
    let state: String = row.get(10);
    Ok(Anomaly {
        id: row.get(0),
        rule: row.get(1),
        metric_name: row.get(2),
        tags,
        window: row.get(4),
        window_start_ms: row.get(5),
        window_end_ms: row.get(6),
        value: row.get(7),
        expected: row.get(8),
        score: row.get(9),
        state: AlertState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("anomaly state `{state}`")))?,
        message: row.get(11),
        resolved_ms: row.get(12),
        notify: Vec::new(),
    })
}

pub async fn query(pool: &SqlitePool, q: &AnomalyQuery) -> Result<Vec<Anomaly>, StoreError> {
    let mut sql = QueryBuilder::<Sqlite>::new(
        "SELECT id, rule, metric, tags, window_label, window_start, window_end, value, expected, \
         score, state, message, resolved_ms FROM anomalies WHERE window_start >= ",
    );
    sql.push_bind(q.from_ms)
        .push(" AND window_start < ")
        .push_bind(q.to_ms);
    if let Some(metric) = &q.metric {
        sql.push(" AND metric = ").push_bind(metric.clone());
    }
    if let Some(rule) = &q.rule {
        sql.push(" AND rule = ").push_bind(rule.clone());
    }
    if let Some(state) = q.state {
        sql.push(" AND state = ").push_bind(state.as_str());
    }
    for (key, value) in &q.tags {
        sql.push(" AND json_extract(tags, ")
            .push_bind(format!("$.\"{}\"", key.replace('"', "")))
            .push(") = ")
            .push_bind(value.clone());
        if key.contains('"') {
            sql.push(" AND 0");
        }
    }
    sql.push(" ORDER BY window_start DESC, id LIMIT ")
        .push_bind(q.limit as i64);
    let rows = sql.build().fetch_all(pool).await.map_err(unavailable)?;
    let mut out = rows
        .iter()
        .map(anomaly_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

pub async fn pending(
    pool: &SqlitePool,
    partitions: &[u32],
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut sql = QueryBuilder::<Sqlite>::new(
        "SELECT seq, receiver, attempts, next_attempt, body FROM anomaly_outbox \
         WHERE sent_ms IS NULL AND partition IN (",
    );
    let mut list = sql.separated(", ");
    for &p in partitions {
        list.push_bind(i64::from(p));
    }
    sql.push(") ORDER BY seq LIMIT ").push_bind(limit as i64);
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sql.build().fetch_all(pool).await.map_err(unavailable)?;
    rows.iter()
        .map(|row| {
            Ok(Delivery {
                seq: row.get(0),
                receiver: row.get(1),
                attempts: row.get::<i64, _>(2) as u32,
                next_attempt_ms: row.get(3),
                anomaly: parse_body(&row.get::<String, _>(4))?,
            })
        })
        .collect()
}

pub async fn mark(
    pool: &SqlitePool,
    seq: i64,
    outcome: &DeliveryOutcome,
) -> Result<(), StoreError> {
    let q = match outcome {
        DeliveryOutcome::Sent { at_ms } => sqlx::query(
            "UPDATE anomaly_outbox SET sent_ms = ?, attempts = attempts + 1, last_error = NULL WHERE seq = ?",
        )
        .bind(*at_ms),
        DeliveryOutcome::Failed { retry_at_ms, error } => sqlx::query(
            "UPDATE anomaly_outbox SET next_attempt = ?, attempts = attempts + 1, last_error = ? WHERE seq = ?",
        )
        .bind(*retry_at_ms)
        .bind(error.clone()),
    };
    q.bind(seq).execute(pool).await.map_err(unavailable)?;
    Ok(())
}

/// Deletes resolved anomalies whose resolving window ended before
/// `results_before_ms` and outbox rows sent before `raw_before_ms`
/// (see `Store::enforce_retention`); returns how many of each.
pub async fn retain(
    pool: &SqlitePool,
    raw_before_ms: i64,
    results_before_ms: i64,
) -> Result<(u64, u64), StoreError> {
    let anomalies =
        sqlx::query("DELETE FROM anomalies WHERE state = 'resolved' AND resolved_ms < ?")
            .bind(results_before_ms)
            .execute(pool)
            .await
            .map_err(unavailable)?;
    let deliveries =
        sqlx::query("DELETE FROM anomaly_outbox WHERE sent_ms IS NOT NULL AND sent_ms < ?")
            .bind(raw_before_ms)
            .execute(pool)
            .await
            .map_err(unavailable)?;
    Ok((anomalies.rows_affected(), deliveries.rows_affected()))
}
