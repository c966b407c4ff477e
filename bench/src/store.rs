//! Window-result writes to PostgreSQL: `Store::commit` of the processor's
//! commits against a plain binary `COPY` of the same rows into an identical
//! table of a second fresh schema.

use std::time::{Duration, Instant};

use pulse_core::names::schema as schema_name;
use pulse_core::{Aggregate, WindowResult};
use pulse_engine::store::postgres::PostgresStore;
use pulse_engine::store::{Commit, Store};
use sqlx::{Connection, PgConnection};

use super::data::{fleet, skewed};
use super::median;
use super::{Report, Row, met, thousands};

/// A PostgreSQL database the bench may create and drop schemas in.
pub const DEFAULT_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";
/// Values in each window result: a 1m window of a series reporting every second.
pub const VALUES_PER_WINDOW: usize = 60;
/// One UTC day, in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// Connects to `url` within a few seconds, or says why not.
pub async fn connect(url: &str) -> Result<PgConnection, String> {
    let where_ = pulse::engines::redact_url(url);
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("PostgreSQL at {where_} is unreachable: {e}")),
        Err(_) => Err(format!(
            "PostgreSQL at {where_} is unreachable: no answer within 5 s"
        )),
    }
}

/// Fresh schemas of the bench, dropped by [`Schemas::drop_all`].
pub struct Schemas {
    url: String,
    names: Vec<String>,
}

impl Schemas {
    pub fn new(url: &str) -> Schemas {
        Schemas {
            url: url.to_string(),
            names: Vec::new(),
        }
    }

    /// Drops `schema` with the others (one a store claimed by its pipeline).
    pub fn adopt(&mut self, schema: String) {
        self.names.push(schema);
    }

    /// A migrated store in a new schema named after `what`, this process and
    /// the time, so no other run shares it.
    pub async fn store(&mut self, what: &str) -> Result<PostgresStore, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = schema_name("bench", &format!("{what}_{}_{nanos}", std::process::id()));
        self.names.push(schema.clone());
        self.reopen(&schema).await
    }

    /// A new, migrated connection to `schema`, as a process starting on it
    /// gets: no series or partitions known yet.
    pub async fn reopen(&self, schema: &str) -> Result<PostgresStore, String> {
        let store = PostgresStore::connect(&self.url, schema)
            .await
            .map_err(|e| format!("bench store {schema}: {e}"))?;
        store
            .migrate()
            .await
            .map_err(|e| format!("bench store {schema}: {e}"))?;
        Ok(store)
    }

    /// Drops every schema made; reports (does not fail on) what it could not drop.
    pub async fn drop_all(self) {
        let mut conn = match connect(&self.url).await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!(
                    "warning: cannot drop the bench schemas {:?}: {e}",
                    self.names
                );
                return;
            }
        };
        for schema in &self.names {
            let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
            if let Err(e) = sqlx::query(&drop).execute(&mut conn).await {
                eprintln!("warning: cannot drop the bench schema {schema}: {e}");
            }
        }
        let _ = conn.close().await;
    }
}

pub struct StoreBenchResult {
    pub rows: usize,
    pub series: usize,
    pub batch: usize,
    /// Median over the runs, rows per second.
    pub commit_rate: f64,
    pub copy_rate: f64,
    /// Mean encoded sketch size of a row.
    pub sketch_bytes: usize,
    /// `native-partitioning` or `timescaledb`.
    pub mode: &'static str,
    pub runs: usize,
}

/// `rows` window results of `series` series: 1m windows one after the other,
/// every series' window of a minute before the next minute's (the order the
/// processor closes them in), each with [`VALUES_PER_WINDOW`] Pareto values.
/// The windows start an hour into the current UTC day, so they all land in
/// a partition `migrate` made.
pub fn window_results(rows: usize, series: usize) -> Vec<WindowResult> {
    let fleet = fleet(series);
    let now = pulse_core::now_ms();
    let base = now - now.rem_euclid(DAY_MS) + 3_600_000;
    (0..rows)
        .map(|i| {
            let s = &fleet[i % fleet.len()];
            let start = base + (i / fleet.len()) as i64 * 60_000;
            let mut agg = Aggregate::new();
            for v in 0..VALUES_PER_WINDOW {
                let n = (i * VALUES_PER_WINDOW + v) as u64;
                agg.add(skewed(n) * 10.0, start + v as i64 * 1_000);
            }
            WindowResult {
                series_id: s.id,
                metric: s.metric.clone(),
                tags: s.tags.clone(),
                window: "1m".into(),
                start_ms: start,
                end_ms: start + 60_000,
                agg,
            }
        })
        .collect()
}

/// The rows as `COPY ... FROM STDIN (FORMAT binary)` data, in the column
/// order of [`COPY_COLUMNS`].
fn copy_binary(rows: &[WindowResult]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(rows.len() * 400);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for r in rows {
        out.extend_from_slice(&12i16.to_be_bytes());
        field(&mut out, r.metric.as_bytes());
        field(&mut out, r.window.as_bytes());
        field(&mut out, &r.start_ms.to_be_bytes());
        field(&mut out, &r.series_id.as_i64().to_be_bytes());
        field(&mut out, &r.end_ms.to_be_bytes());
        field(&mut out, &(r.agg.count as i64).to_be_bytes());
        field(&mut out, &r.agg.sum.to_be_bytes());
        field(&mut out, &r.agg.min.to_be_bytes());
        field(&mut out, &r.agg.max.to_be_bytes());
        field(&mut out, &r.agg.last.to_be_bytes());
        field(&mut out, &r.agg.last_ts.to_be_bytes());
        field(&mut out, &r.agg.sketch_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

const COPY_COLUMNS: &str = "metric, window_label, window_start, series_id, window_end, count, \
     sum, min, max, last, last_ts, sketch";

/// One `COPY` (its own transaction) per batch of `batch` rows into
/// `schema`'s `window_results`, encoding on the clock.
async fn copy_rows(
    conn: &mut PgConnection,
    schema: &str,
    rows: &[WindowResult],
    batch: usize,
) -> Result<Duration, String> {
    let statement =
        format!("COPY \"{schema}\".window_results ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)");
    let started = Instant::now();
    for chunk in rows.chunks(batch) {
        let data = copy_binary(chunk);
        let mut copy = conn
            .copy_in_raw(&statement)
            .await
            .map_err(|e| format!("COPY into {schema}: {e}"))?;
        copy.send(data)
            .await
            .map_err(|e| format!("COPY into {schema}: {e}"))?;
        let copied = copy
            .finish()
            .await
            .map_err(|e| format!("COPY into {schema}: {e}"))?;
        if copied != chunk.len() as u64 {
            return Err(format!(
                "COPY into {schema} wrote {copied} of {} rows",
                chunk.len()
            ));
        }
    }
    Ok(started.elapsed())
}

async fn truncate(conn: &mut PgConnection, schema: &str) -> Result<(), String> {
    sqlx::query(&format!(
        "TRUNCATE \"{schema}\".window_results, \"{schema}\".series"
    ))
    .execute(&mut *conn)
    .await
    .map(|_| ())
    .map_err(|e| format!("emptying {schema}: {e}"))
}

async fn count_rows(conn: &mut PgConnection, schema: &str) -> Result<i64, String> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".window_results"))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| format!("counting the rows of {schema}: {e}"))
}

/// `runs` alternating runs of the COPY reference and of `Store::commit`, each
/// into an emptied table; the medians are reported.
pub async fn measure(
    url: &str,
    rows: usize,
    series: usize,
    batch: usize,
    runs: usize,
) -> Result<StoreBenchResult, String> {
    let results = window_results(rows, series);
    let sketch_bytes = results
        .iter()
        .map(|r| r.agg.sketch_bytes().len())
        .sum::<usize>()
        / rows.max(1);
    let commits: Vec<Commit> = results
        .chunks(batch)
        .map(|chunk| Commit {
            results: chunk.to_vec(),
            ..Commit::default()
        })
        .collect();
    let mut schemas = Schemas::new(url);
    let outcome = async {
        let mut store = schemas.store("store").await?;
        let reference = schemas.store("copy").await?;
        let mut conn = connect(url).await?;
        let (mut commit_rates, mut copy_rates) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            truncate(&mut conn, reference.schema()).await?;
            let copied = copy_rows(&mut conn, reference.schema(), &results, batch).await?;
            copy_rates.push(rows as f64 / copied.as_secs_f64());

            truncate(&mut conn, store.schema()).await?;
            // A fresh store per run: its first commit writes the series.
            store = schemas.reopen(store.schema()).await?;
            let started = Instant::now();
            for commit in &commits {
                store
                    .commit(commit)
                    .await
                    .map_err(|e| format!("Store::commit: {e}"))?;
            }
            commit_rates.push(rows as f64 / started.elapsed().as_secs_f64());
            for schema in [store.schema(), reference.schema()] {
                let n = count_rows(&mut conn, schema).await?;
                if n != rows as i64 {
                    return Err(format!("{schema} holds {n} window results, not {rows}"));
                }
            }
        }
        let _ = conn.close().await;
        Ok::<_, String>(StoreBenchResult {
            rows,
            series,
            batch,
            commit_rate: median(&mut commit_rates),
            copy_rate: median(&mut copy_rates),
            sketch_bytes,
            mode: store.mode(),
            runs,
        })
    }
    .await;
    schemas.drop_all().await;
    outcome
}

/// Measures and adds the row and a note to `report`.
pub async fn stage(
    url: &str,
    rows: usize,
    series: usize,
    batch: usize,
    runs: usize,
    report: &mut Report,
) -> Result<(), String> {
    eprintln!(
        "bench: window-result writes to PostgreSQL ({rows} rows, {batch} per commit, {runs} run(s))..."
    );
    let s = measure(url, rows, series, batch, runs).await?;
    let ratio = s.commit_rate / s.copy_rate;
    report.rows.push(Row {
        what: format!(
            "Window-result writes: `Store::commit` (PostgreSQL, {}), {} rows of {} series, {} per commit",
            s.mode,
            thousands(s.rows),
            thousands(s.series),
            thousands(s.batch)
        ),
        rate: s.commit_rate,
        unit: "rows/s",
        reference: format!(
            "binary `COPY` of the same rows, {} per `COPY`, into an identical fresh table",
            thousands(s.batch)
        ),
        reference_rate: s.copy_rate,
        target: format!("≥ 0.9× COPY: {}", met(ratio >= 0.9)),
    });
    report.notes.push(format!(
        "Window-result writes: 1m windows of {VALUES_PER_WINDOW} values each (sketches of {} bytes on average); \
         median of {} alternating runs, each into an emptied table through a newly connected store, whose first commit also writes the {} series.",
        s.sketch_bytes,
        s.runs,
        thousands(s.series)
    ));
    Ok(())
}
