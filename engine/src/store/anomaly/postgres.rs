//! The anomaly tables in the PostgreSQL store.

use pulse_core::anomaly::{AlertState, Anomaly};
use pulse_core::{SeriesId, Tags};
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Postgres, QueryBuilder};

use super::{
    AnomalyChange, AnomalyQuery, Delivery, DeliveryOutcome, DetectorState, body, outbox_rows,
    parse_body,
};
use crate::store::StoreError;
use crate::store::postgres::{col, db_error};

const CHUNK: usize = 1_000;

/// Writes a commit's anomalies, outbox rows and detector states on `tx`.
pub async fn write(
    tx: &mut PgConnection,
    changes: &[AnomalyChange],
    detectors: &[DetectorState],
) -> Result<(), StoreError> {
    for c in changes {
        let a = &c.anomaly;
        sqlx::query(
            "INSERT INTO anomalies (id, rule, metric, tags, window_label, window_start, window_end, \
             value, expected, score, state, message, resolved_ms) \
             VALUES ($1,$2,$3,$4::jsonb,$5,$6,$7,$8,$9,$10,$11,$12,$13) \
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
        .map_err(db_error)?;
    }
    for chunk in outbox_rows(changes).chunks(CHUNK) {
        let mut sql = QueryBuilder::<Postgres>::new(
            "INSERT INTO anomaly_outbox (partition, anomaly_id, state, receiver, body) ",
        );
        sql.push_values(chunk, |mut b, (c, receiver)| {
            b.push_bind(i64::from(c.partition))
                .push_bind(c.anomaly.id.clone())
                .push_bind(c.anomaly.state.as_str())
                .push_bind(receiver.to_string())
                .push_bind(body(&c.anomaly));
        });
        sql.push(" ON CONFLICT DO NOTHING");
        sql.build().execute(&mut *tx).await.map_err(db_error)?;
    }
    // Sorted, so concurrent commits lock rows in one order.
    let mut sorted: Vec<&DetectorState> = detectors.iter().collect();
    sorted.sort_by(|a, b| {
        (a.partition, &a.rule, a.series_id).cmp(&(b.partition, &b.rule, b.series_id))
    });
    for chunk in sorted.chunks(CHUNK) {
        let mut sql = QueryBuilder::<Postgres>::new(
            "INSERT INTO detector_states (partition, rule, series_id, state) ",
        );
        sql.push_values(chunk, |mut b, d| {
            b.push_bind(i64::from(d.partition))
                .push_bind(d.rule.clone())
                .push_bind(d.series_id.as_i64())
                .push_bind(d.state.clone());
        });
        sql.push(" ON CONFLICT (partition, rule, series_id) DO UPDATE SET state = excluded.state");
        sql.build().execute(&mut *tx).await.map_err(db_error)?;
    }
    Ok(())
}

pub async fn load_detectors(
    pool: &PgPool,
    partitions: &[u32],
) -> Result<Vec<DetectorState>, StoreError> {
    let ids: Vec<i64> = partitions.iter().map(|&p| i64::from(p)).collect();
    let rows = sqlx::query(
        "SELECT partition, rule, series_id, state FROM detector_states WHERE partition = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            let p: i64 = col(row, 0)?;
            Ok(DetectorState {
                partition: u32::try_from(p)
                    .map_err(|_| StoreError::Corrupt(format!("partition {p}")))?,
                rule: col(row, 1)?,
                series_id: SeriesId::from_i64(col(row, 2)?),
                state: col(row, 3)?,
            })
        })
        .collect()
}

fn anomaly_from_row(row: &PgRow) -> Result<Anomaly, StoreError> {
    let tags: String = col(row, 3)?;
    let tags: Tags = serde_json::from_str(&tags)
        .map_err(|e| StoreError::Corrupt(format!("anomaly tags: {e}")))?;
    let state: String = col(row, 10)?;
    Ok(Anomaly {
        id: col(row, 0)?,
        rule: col(row, 1)?,
        metric_name: col(row, 2)?,
        tags,
        window: col(row, 4)?,
        window_start_ms: col(row, 5)?,
        window_end_ms: col(row, 6)?,
        value: col(row, 7)?,
        expected: col(row, 8)?,
        score: col(row, 9)?,
        state: AlertState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("anomaly state `{state}`")))?,
        message: col(row, 11)?,
        resolved_ms: col(row, 12)?,
        notify: Vec::new(),
    })
}

pub async fn query(pool: &PgPool, q: &AnomalyQuery) -> Result<Vec<Anomaly>, StoreError> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "SELECT id, rule, metric, tags::text, window_label, window_start, window_end, value, expected, \
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
    if !q.tags.is_empty() {
        sql.push(" AND tags @> ")
            .push_bind(serde_json::to_string(&q.tags).unwrap_or_default())
            .push("::jsonb");
    }
    sql.push(" ORDER BY window_start DESC, id LIMIT ")
        .push_bind(q.limit as i64);
    let rows = sql.build().fetch_all(pool).await.map_err(db_error)?;
    let mut out = rows
        .iter()
        .map(anomaly_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok(out)
}

pub async fn pending(
    pool: &PgPool,
    partitions: &[u32],
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let ids: Vec<i64> = partitions.iter().map(|&p| i64::from(p)).collect();
    let rows = sqlx::query(
        "SELECT seq, receiver, attempts, next_attempt, body FROM anomaly_outbox \
         WHERE sent_ms IS NULL AND partition = ANY($1) ORDER BY seq LIMIT $2",
    )
    .bind(&ids)
    .bind(limit as i64)
    .fetch_all(pool)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(Delivery {
                seq: col(row, 0)?,
                receiver: col(row, 1)?,
                attempts: col::<i64>(row, 2)? as u32,
                next_attempt_ms: col(row, 3)?,
                anomaly: parse_body(&col::<String>(row, 4)?)?,
            })
        })
        .collect()
}

pub async fn mark(pool: &PgPool, seq: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
    let q = match outcome {
        DeliveryOutcome::Sent { at_ms } => sqlx::query(
            "UPDATE anomaly_outbox SET sent_ms = $1, attempts = attempts + 1, last_error = NULL WHERE seq = $2",
        )
        .bind(*at_ms),
        DeliveryOutcome::Failed { retry_at_ms, error } => sqlx::query(
            "UPDATE anomaly_outbox SET next_attempt = $1, attempts = attempts + 1, last_error = $2 WHERE seq = $3",
        )
        .bind(*retry_at_ms)
        .bind(error.clone()),
    };
    q.bind(seq).execute(pool).await.map_err(db_error)?;
    Ok(())
}

/// Deletes resolved anomalies whose resolving window ended before
/// `results_before_ms` and outbox rows sent before `raw_before_ms`
/// (see `Store::enforce_retention`); returns how many of each.
pub async fn retain(
    pool: &PgPool,
    raw_before_ms: i64,
    results_before_ms: i64,
) -> Result<(u64, u64), StoreError> {
    let anomalies =
        sqlx::query("DELETE FROM anomalies WHERE state = 'resolved' AND resolved_ms < $1")
            .bind(results_before_ms)
            .execute(pool)
            .await
            .map_err(db_error)?;
    let deliveries =
        sqlx::query("DELETE FROM anomaly_outbox WHERE sent_ms IS NOT NULL AND sent_ms < $1")
            .bind(raw_before_ms)
            .execute(pool)
            .await
            .map_err(db_error)?;
    Ok((anomalies.rows_affected(), deliveries.rows_affected()))
}
