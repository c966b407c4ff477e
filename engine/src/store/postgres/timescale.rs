//! TimescaleDB mode's own SQL: retention and compression policies on the two
//! hypertables, and the check that TimescaleDB really scheduled them.
//!
//! Every TimescaleDB function is called qualified by the schema the extension
//! lives in (read from `pg_extension`): the pool's `search_path` holds only
//! the pipeline's schema, so an unqualified `add_retention_policy` is not
//! found on a default install (extension in `public`).

use std::time::Duration;

use sqlx::{Executor, PgConnection, Row};

use super::{StoreError, db_error};

/// Retention and compression of the hypertables, installed as TimescaleDB
/// policies when the schema runs in TimescaleDB mode (native partitioning
/// drops partitions in the retention pass instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimescalePolicies {
    pub raw_retention: Duration,
    pub result_retention: Duration,
    /// Chunks whose newest possible row is older than this are compressed.
    pub compress_after: Duration,
}

/// How one hypertable is compressed.
struct Compression {
    table: &'static str,
    /// Columns every reading query filters on by equality: each compressed
    /// batch holds one value of them, so a query decompresses only its own.
    segment_by: &'static str,
    /// The order rows are kept in within a batch (and whose min/max per
    /// batch lets a query skip batches outside its time range).
    order_by: &'static str,
}

/// The dashboard reads `window_results` by metric and window, newest windows
/// first (`range`: `ORDER BY window_start DESC, series_id DESC`; `latest`:
/// `max(window_start)`, then that start's rows), so segments are one metric
/// and window and rows run newest first in the same order. `raw_points` is
/// only written and expired, so it is segmented by series, oldest first.
/// Measured in BENCHMARKS.md ("TimescaleDB compression").
const COMPRESSION: [Compression; 2] = [
    Compression {
        table: "raw_points",
        segment_by: "series_id",
        order_by: "ts",
    },
    Compression {
        table: "window_results",
        segment_by: "metric, window_label",
        order_by: "window_start DESC, series_id DESC",
    },
];

/// The schema the timescaledb extension is installed in, if it is installed.
pub(super) async fn extension_schema(
    conn: &mut PgConnection,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname = 'timescaledb'",
    )
    .fetch_optional(conn)
    .await
    .map_err(db_error)
}

/// `name` as a quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One policy job TimescaleDB must have for the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Job {
    pub table: String,
    /// `policy_retention` or `policy_compression`.
    pub proc_name: String,
    /// Its `drop_after` / `compress_after`, in milliseconds.
    pub after_ms: i64,
}

impl Job {
    fn describe(&self) -> String {
        let what = match self.proc_name.as_str() {
            "policy_retention" => "retention",
            "policy_compression" => "compression",
            other => other,
        };
        format!("{what} of {} after {} ms", self.table, self.after_ms)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The policy jobs `policies` ask for.
pub(super) fn expected_jobs(policies: &TimescalePolicies) -> Vec<Job> {
    let job = |table: &str, proc_name: &str, after: Duration| Job {
        table: table.into(),
        proc_name: proc_name.into(),
        after_ms: millis(after),
    };
    vec![
        job("raw_points", "policy_retention", policies.raw_retention),
        job("raw_points", "policy_compression", policies.compress_after),
        job(
            "window_results",
            "policy_retention",
            policies.result_retention,
        ),
        job(
            "window_results",
            "policy_compression",
            policies.compress_after,
        ),
    ]
}

/// The expected jobs not among `found` (same table, kind and age).
pub(super) fn missing_jobs(expected: &[Job], found: &[Job]) -> Vec<Job> {
    expected
        .iter()
        .filter(|job| !found.contains(job))
        .cloned()
        .collect()
}

/// The statements that install `policies` on `schema`'s hypertables, with
/// TimescaleDB's functions in `ext`. Each policy is removed and added again,
/// so a changed config takes effect on the next start. The time columns are
/// milliseconds since the epoch, so TimescaleDB needs a function giving "now"
/// in that unit.
fn policy_statements(ext: &str, schema: &str, policies: &TimescalePolicies) -> Vec<String> {
    let ext = ident(ext);
    let now_ms = format!("{}.pulse_now_ms", ident(schema));
    let mut statements = vec![format!(
        "CREATE OR REPLACE FUNCTION {now_ms}() RETURNS BIGINT LANGUAGE SQL STABLE AS \
         $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$"
    )];
    for c in &COMPRESSION {
        let table = format!("{}.{}", ident(schema), c.table);
        let retention = match c.table {
            "raw_points" => policies.raw_retention,
            _ => policies.result_retention,
        };
        statements.extend([
            format!(
                "SELECT {ext}.set_integer_now_func('{table}', '{now_ms}', replace_if_exists => true)"
            ),
            // Only when not yet enabled: settings cannot change while chunks
            // are compressed.
            format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables \
                 WHERE format('%I.%I', hypertable_schema, hypertable_name)::regclass = '{table}'::regclass \
                 AND compression_enabled) THEN ALTER TABLE {table} SET (timescaledb.compress, \
                 timescaledb.compress_segmentby = '{}', timescaledb.compress_orderby = '{}'); \
                 END IF; END $$",
                c.segment_by, c.order_by
            ),
            format!("SELECT {ext}.remove_compression_policy('{table}', if_exists => true)"),
            format!(
                "SELECT {ext}.add_compression_policy('{table}', compress_after => {}::bigint)",
                millis(policies.compress_after)
            ),
            format!("SELECT {ext}.remove_retention_policy('{table}', if_exists => true)"),
            format!(
                "SELECT {ext}.add_retention_policy('{table}', drop_after => {}::bigint)",
                millis(retention)
            ),
        ]);
    }
    statements
}

/// The policy jobs TimescaleDB has scheduled on `schema`'s tables.
async fn scheduled_jobs(conn: &mut PgConnection, schema: &str) -> Result<Vec<Job>, StoreError> {
    let rows = sqlx::query(
        "SELECT hypertable_name::text, proc_name::text, \
                COALESCE(config->>'drop_after', config->>'compress_after') \
         FROM timescaledb_information.jobs \
         WHERE hypertable_schema = $1 AND proc_name IN ('policy_retention', 'policy_compression')",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .map_err(db_error)?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            Some(Job {
                table: row.try_get(0).ok()?,
                proc_name: row.try_get(1).ok()?,
                after_ms: row.try_get::<Option<String>, _>(2).ok()??.parse().ok()?,
            })
        })
        .collect())
}

/// Installs `policies` on `schema` (under the migration lock), then checks in
/// `timescaledb_information.jobs` that each job exists with its age. Returns
/// what `/readyz` says about them; a failure is a warning, not fatal: the
/// retention pass still deletes old rows, only compression is missed.
pub(super) async fn install_policies(
    conn: &mut PgConnection,
    schema: &str,
    policies: &TimescalePolicies,
) -> String {
    let failure = match try_install(conn, schema, policies).await {
        Ok(missing) if missing.is_empty() => {
            tracing::info!(
                schema,
                raw_retention_ms = millis(policies.raw_retention),
                result_retention_ms = millis(policies.result_retention),
                compress_after_ms = millis(policies.compress_after),
                "TimescaleDB retention and compression policies installed"
            );
            return "TimescaleDB retention and compression policies scheduled".into();
        }
        Ok(missing) => format!(
            "not scheduled: {}",
            missing
                .iter()
                .map(Job::describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(error) => error,
    };
    tracing::warn!(
        schema,
        problem = %failure,
        "TimescaleDB retention/compression policies are missing; old rows are still deleted by \
         the retention pass, but chunks are not compressed (see the database log, and that the \
         database user may run the extension's functions)"
    );
    format!("TimescaleDB policies missing ({failure}); the retention pass deletes old rows")
}

/// The statements, then the jobs still missing; an error names the statement.
async fn try_install(
    conn: &mut PgConnection,
    schema: &str,
    policies: &TimescalePolicies,
) -> Result<Vec<Job>, String> {
    let ext = extension_schema(conn)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the timescaledb extension is not installed")?;
    for statement in policy_statements(&ext, schema, policies) {
        conn.execute(statement.as_str())
            .await
            .map_err(|e| format!("{statement}: {e}"))?;
    }
    let found = scheduled_jobs(conn, schema)
        .await
        .map_err(|e| e.to_string())?;
    Ok(missing_jobs(&expected_jobs(policies), &found))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> TimescalePolicies {
        TimescalePolicies {
            raw_retention: Duration::from_secs(7 * 86_400),
            result_retention: Duration::from_secs(90 * 86_400),
            compress_after: Duration::from_secs(2 * 86_400),
        }
    }

    #[test]
    fn missing_jobs_are_those_absent_or_with_another_age() {
        let expected = expected_jobs(&policies());
        assert_eq!(expected.len(), 4);
        assert!(missing_jobs(&expected, &expected).is_empty());
        let mut found = expected[1..].to_vec();
        found[0].after_ms += 1;
        let missing: Vec<String> = missing_jobs(&expected, &found)
            .iter()
            .map(Job::describe)
            .collect();
        assert_eq!(
            missing,
            [
                "retention of raw_points after 604800000 ms",
                "compression of raw_points after 172800000 ms"
            ]
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("public"), "\"public\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }
}
