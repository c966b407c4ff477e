//! `pulse-bench` (also run as `pulse bench`): sketch, window-aggregation and end-to-end throughput, each
//! measured against a reference on the same data in the same run, printed as
//! a Markdown table. BENCHMARKS.md explains the method and keeps the results.

mod data;
mod e2e;
mod freshness;
mod kafka;
mod operator;
mod processor;
mod query;
mod sketch;
mod store;
mod ui;
mod window;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::time::Duration;

/// Options of `pulse bench`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BenchArgs {
    /// Points posted through `pulse up` in the end-to-end measurement
    /// [default: 200000, or 4000 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub points: Option<u64>,
    /// Tiny sizes, one run each: proves the bench works in seconds; the numbers
    /// mean little.
    #[arg(long)]
    pub quick: bool,
    /// Run only these measurements (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Stage>,
    /// PostgreSQL of the store and processor measurements (each run makes
    /// fresh schemas there and drops them) [default: postgres://postgres@127.0.0.1:5432/test].
    #[arg(long, env = "PULSE_BENCH_DATABASE_URL")]
    pub database: Option<String>,
}

/// One measurement of `pulse bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    Sketch,
    Window,
    E2e,
    /// Gateway → Kafka (librdkafka's in-process mock cluster).
    Kafka,
    /// Window-result writes to PostgreSQL.
    Store,
    /// The processor on Kafka and PostgreSQL.
    Processor,
    /// The web UI in headless Chromium; only when named (`--only ui`), since it
    /// needs Chromium.
    Ui,
    /// The operator's MetricPipeline reconciler over 1,000 pipelines; only
    /// when named (`--only operator`).
    Operator,
    /// The query API (`query_range` at 1 h, 6 h and 24 h, `/dashboard` at a
    /// fixed rate) on SQLite and, when it answers, PostgreSQL.
    Query,
    /// How soon a point is in the open window's partial answer, embedded and
    /// on Kafka + PostgreSQL + Redis; only when named (`--only freshness`),
    /// since it needs PostgreSQL and Redis.
    Freshness,
}

/// The throughput target of the window aggregation, per core.
pub const WINDOW_TARGET: f64 = 2_000_000.0;

/// How much of everything one run does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    sketch_values: usize,
    window_points: usize,
    window_series: usize,
    e2e_points: usize,
    e2e_series: usize,
    batch: usize,
    kafka_points: usize,
    store_rows: usize,
    processor_points: usize,
    /// Repetitions of the in-memory measurements; the median is reported.
    runs: usize,
}

impl Sizes {
    fn of(args: &BenchArgs) -> Sizes {
        let mut sizes = if args.quick {
            Sizes {
                sketch_values: 20_000,
                window_points: 20_000,
                window_series: 100,
                e2e_points: 4_000,
                e2e_series: 100,
                batch: 1_000,
                kafka_points: 4_000,
                store_rows: 2_000,
                processor_points: 20_000,
                runs: 1,
            }
        } else {
            Sizes {
                sketch_values: 2_000_000,
                window_points: 2_000_000,
                window_series: 1_000,
                e2e_points: 200_000,
                e2e_series: 1_000,
                batch: 5_000,
                kafka_points: 200_000,
                store_rows: 50_000,
                processor_points: 1_000_000,
                runs: 3,
            }
        };
        if let Some(points) = args.points {
            sizes.e2e_points = points as usize;
        }
        sizes
    }
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub rate: f64,
    pub unit: &'static str,
    pub reference: String,
    pub reference_rate: f64,
    pub target: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// Runs the measurements and prints the table.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; measure with `cargo run --release -p pulse-bench`"
        );
    }
    let report = measure(&args).await?;
    print!("{}", render(&report));
    Ok(())
}

/// Runs the measurements `args` select and returns what they found.
pub async fn measure(args: &BenchArgs) -> Result<Report, String> {
    let sizes = Sizes::of(args);
    let wanted = |stage| args.only.is_empty() || args.only.contains(&stage);
    let mut report = Report::default();
    let mut rss = Vec::new();
    // First: its memory target is the operator's, so the process must not yet
    // hold what the other measurements allocated (mimalloc keeps freed pages).
    if args.only.contains(&Stage::Operator) {
        operator::stage(if args.quick { 100 } else { 1_000 }, &mut report).await?;
    }
    if wanted(Stage::Sketch) {
        sketch_stage(&sizes, &mut report)?;
    }
    if wanted(Stage::Window) {
        window_stage(&sizes, &mut report)?;
        anomaly_stage(&sizes, &mut report)?;
    }
    if wanted(Stage::Sketch) || wanted(Stage::Window) {
        rss.push(format!("in-memory measurements {}", peak_rss_text()));
    }
    if wanted(Stage::E2e) {
        rss.push(e2e_stage(&sizes, &mut report).await?);
    }
    if wanted(Stage::Kafka) {
        let (points, batch, series) = (sizes.kafka_points, sizes.batch, sizes.e2e_series);
        kafka::stage(points, batch, series, sizes.runs, &mut report).await?;
    }
    if wanted(Stage::Store) || wanted(Stage::Processor) {
        postgres_stages(args, &sizes, &mut report).await?;
    }
    if wanted(Stage::Query) {
        query_stage(args, &mut report).await?;
    }
    if args.only.contains(&Stage::Ui) {
        ui::stage(args.quick, &mut report).await?;
    }
    if args.only.contains(&Stage::Freshness) {
        let url = args
            .database
            .clone()
            .unwrap_or_else(|| store::DEFAULT_DATABASE.into());
        freshness::stage(args.quick, &url, &mut report).await?;
    }
    if !rss.is_empty() {
        report
            .notes
            .push(format!("Peak RSS (VmHWM): {}.", rss.join("; ")));
    }
    Ok(report)
}

/// The measurements that need PostgreSQL: skipped with a notice in a full run
/// when it does not answer, an error when named with `--only`.
async fn postgres_stages(
    args: &BenchArgs,
    sizes: &Sizes,
    report: &mut Report,
) -> Result<(), String> {
    let url = database_url(args);
    if let Err(why) = store::connect(&url).await {
        if args.only.is_empty() {
            let skip = format!(
                "Skipped the store and processor measurements: {why} (set --database or PULSE_BENCH_DATABASE_URL)."
            );
            eprintln!("bench: {skip}");
            report.notes.push(skip);
            return Ok(());
        }
        return Err(format!(
            "the store and processor measurements need PostgreSQL: {why}; start it there or set \
             --database / PULSE_BENCH_DATABASE_URL"
        ));
    }
    let only = |stage| args.only.is_empty() || args.only.contains(&stage);
    if only(Stage::Store) {
        let (rows, series) = (sizes.store_rows, sizes.e2e_series);
        store::stage(&url, rows, series, sizes.batch, sizes.runs, report).await?;
    }
    if only(Stage::Processor) {
        processor::stage(&url, sizes.processor_points, sizes.e2e_series, report).await?;
    }
    Ok(())
}

/// The query API: on SQLite always, on PostgreSQL when it answers (named
/// with `--only query`, an unreachable PostgreSQL is an error).
async fn query_stage(args: &BenchArgs, report: &mut Report) -> Result<(), String> {
    let url = database_url(args);
    let database = match store::connect(&url).await {
        Ok(_) => Some(url.as_str()),
        Err(why) if args.only.contains(&Stage::Query) => {
            return Err(format!(
                "the query measurement needs PostgreSQL: {why}; start it there or set --database / PULSE_BENCH_DATABASE_URL"
            ));
        }
        Err(_) => None,
    };
    let sizes = if args.quick {
        query::QuerySizes {
            range_requests: 3,
            dashboard_seconds: 1,
            minutes: 120,
        }
    } else {
        query::QuerySizes {
            range_requests: 30,
            dashboard_seconds: 10,
            minutes: 24 * 60,
        }
    };
    query::stage(database, sizes, report).await
}

/// `--database`, else `PULSE_BENCH_DATABASE_URL`, else the local default.
fn database_url(args: &BenchArgs) -> String {
    args.database
        .clone()
        .or_else(|| std::env::var("PULSE_BENCH_DATABASE_URL").ok())
        .unwrap_or_else(|| store::DEFAULT_DATABASE.into())
}

fn sketch_stage(sizes: &Sizes, report: &mut Report) -> Result<(), String> {
    eprintln!(
        "bench: sketch inserts ({} values, {} run(s))...",
        sizes.sketch_values, sizes.runs
    );
    let s = sketch::measure(sizes.sketch_values, sizes.runs)?;
    let met = if s.max_relative_error <= 0.01 {
        "met"
    } else {
        "NOT met"
    };
    report.rows.push(Row {
        what: format!(
            "Sketch inserts: `Aggregate::add`, {} Pareto values",
            thousands(s.values)
        ),
        rate: s.sketch_rate,
        unit: "values/s",
        reference: "exact: push into a `Vec<f64>`, sort, read p50/p90/p95/p99".into(),
        reference_rate: s.exact_rate,
        target: format!("quantiles within 1 % (the design target): {met}"),
    });
    report.notes.push(format!(
        "Sketch: largest relative error of p50/p90/p95/p99 against the exact values {:.3} %; \
         the encoded sketch takes {} bytes against {} bytes for the kept values.",
        s.max_relative_error * 100.0,
        thousands(s.sketch_bytes),
        thousands(s.values * 8)
    ));
    Ok(())
}

/// Window aggregation with 100 anomaly rules over 1,000 series, against the
/// same run without rules (issue 13's target: at least 90 % of its rate).
fn anomaly_stage(sizes: &Sizes, report: &mut Report) -> Result<(), String> {
    eprintln!(
        "bench: window aggregation with {} anomaly rules ({} points, 1,000 series, {} run(s))...",
        window::RULES,
        sizes.window_points,
        sizes.runs
    );
    let r = window::measure_rules(sizes.window_points, 1_000, sizes.runs)?;
    let ratio = r.judged_rate / r.plain_rate;
    let met = if ratio >= 0.9 { "met" } else { "NOT met" };
    report.rows.push(Row {
        what: format!(
            "Window aggregation with {} anomaly rules judged at every checkpoint, {} series × 3 windows, {} points",
            window::RULES,
            thousands(r.series),
            thousands(r.points)
        ),
        rate: r.judged_rate,
        unit: "points/s",
        reference: "the same aggregation without rules, same run".into(),
        reference_rate: r.plain_rate,
        target: format!("≥ 90 % of the rate without rules ({:.1} %): {met}", ratio * 100.0),
    });
    Ok(())
}

fn window_stage(sizes: &Sizes, report: &mut Report) -> Result<(), String> {
    eprintln!(
        "bench: window aggregation ({} points, {} series, {} run(s))...",
        sizes.window_points, sizes.window_series, sizes.runs
    );
    let w = window::measure(sizes.window_points, sizes.window_series, sizes.runs)?;
    let met = if w.aggregator_rate >= WINDOW_TARGET {
        "met"
    } else {
        "NOT met"
    };
    report.rows.push(Row {
        what: format!(
            "Window aggregation, 1 thread: `Aggregator`, {} series × 3 windows (1m, 5m, 15m), {} points",
            thousands(w.series),
            thousands(w.points)
        ),
        rate: w.aggregator_rate,
        unit: "points/s",
        reference: "`FxHashMap` fold of count/sum/min/max per (series, window)".into(),
        reference_rate: w.fold_rate,
        target: format!("≥ 2 M points/s per core: {met}"),
    });
    let p = &w.phases;
    let share = |d: Duration| 100.0 * d.as_secs_f64() / p.total.as_secs_f64();
    let per_point = |d: Duration| d.as_secs_f64() * 1e9 / w.points as f64;
    report.notes.push(format!(
        "Window aggregation, where the `Aggregator`'s {:.0} ns per point go: `ingest` {:.0} % ({:.0} ns), \
         `close_ready` every {} points {:.0} %, `checkpoint` every {} points {:.0} %, freeing each checkpoint's \
         output (raw points, results, window states) {:.0} % ({:.0} ns). Per run: {} windows closed, {} \
         (point, window) pairs late.",
        per_point(p.total),
        share(p.ingest()),
        per_point(p.ingest()),
        thousands(window::CLOSE_EVERY),
        share(p.close_ready),
        thousands(window::CHECKPOINT_EVERY),
        share(p.checkpoint),
        share(p.free),
        per_point(p.free),
        thousands(w.closed),
        thousands(w.late)
    ));
    Ok(())
}

/// Returns the peak-RSS note of the stage.
async fn e2e_stage(sizes: &Sizes, report: &mut Report) -> Result<String, String> {
    eprintln!(
        "bench: end to end through pulse up ({} points in batches of {}, {} clients)...",
        sizes.e2e_points,
        sizes.batch,
        e2e::CLIENTS
    );
    // Whether the peak mark was reset right before `pulse up` started, and
    // the RSS at that moment.
    let reset = std::cell::Cell::new((false, None));
    let e = e2e::measure(sizes.e2e_points, sizes.batch, sizes.e2e_series, || {
        reset.set((reset_peak_rss(), status_kib("VmRSS:")))
    })
    .await?;
    let reference = format!(
        "`SqliteBus::send` of the same records, {} per send, {} senders",
        thousands(e.batch),
        e2e::CLIENTS
    );
    let what = |part: &str| {
        format!(
            "End to end, {part}: `pulse up`, {} points of {} series, JSON batches of {}, {} clients",
            thousands(e.points),
            thousands(sizes.e2e_series),
            thousands(e.batch),
            e2e::CLIENTS
        )
    };
    report.rows.push(Row {
        what: what("first POST to results stored"),
        rate: e.processed_rate,
        unit: "points/s",
        reference: reference.clone(),
        reference_rate: e.bus_rate,
        target: "—".into(),
    });
    report.rows.push(Row {
        what: what("first POST to last 202 (accepted by the gateway)"),
        rate: e.accepted_rate,
        unit: "points/s",
        reference,
        reference_rate: e.bus_rate,
        target: "—".into(),
    });
    let mut detail = format!("End to end took {:.2} s", e.seconds);
    if let Some(busy) = e.busy_cores {
        let _ = write!(
            detail,
            "; the process (clients included) kept {busy:.2} of {} cores busy",
            cores()
        );
    }
    if let (Some(n), Some(s)) = (e.commits, e.commit_seconds) {
        let _ = write!(
            detail,
            "; the processor spent {s:.2} s in {n} store commit(s)"
        );
    }
    report.notes.push(format!("{detail}."));
    if e.retries > 0 {
        report.notes.push(format!(
            "The gateway pushed back (429/503) {} time(s); those requests were retried.",
            e.retries
        ));
    }
    Ok(match reset.get() {
        (true, Some(kib)) => format!(
            "end to end {} (from {} MiB when `pulse up` started, the bench's prepared requests and heap it freed earlier included)",
            peak_rss_text(),
            kib / 1024
        ),
        (true, None) => format!("end to end {}", peak_rss_text()),
        (false, _) => format!(
            "whole run {} (the peak mark could not be reset)",
            peak_rss_text()
        ),
    })
}

/// The report as Markdown: machine, table, notes.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {} core(s) available, CPU {}; {} build.\n",
        cores(),
        cpu_model(),
        profile()
    );
    // `--only ui` and `--only freshness` measure latencies, reported in the notes alone.
    if !report.rows.is_empty() {
        let _ = writeln!(
            out,
            "| what | rate | reference | reference rate | ratio | target |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---|");
    }
    for row in &report.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2}× | {} |",
            row.what,
            rate(row.rate, row.unit),
            row.reference,
            rate(row.reference_rate, row.unit),
            row.rate / row.reference_rate,
            row.target
        );
    }
    if !report.notes.is_empty() {
        out.push('\n');
    }
    for note in &report.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

/// `met` or `NOT met`.
fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// The median of `values` (mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `2.35 M points/s`, `812 k points/s`.
fn rate(value: f64, unit: &str) -> String {
    if value >= 1e6 {
        format!("{:.2} M {unit}", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0} k {unit}", value / 1e3)
    } else {
        format!("{value:.0} {unit}")
    }
}

/// `2000000` as `2,000,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug (not representative)"
    } else {
        "release"
    }
}

/// A memory line of /proc/self/status in KiB, e.g. `VmHWM:` (peak resident
/// set) or `VmRSS:`, where /proc has it.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix(field))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

fn peak_rss_text() -> String {
    status_kib("VmHWM:").map_or_else(|| "n/a".into(), |kib| format!("{} MiB", kib / 1024))
}

/// Resets the peak-RSS mark (Linux: writing 5 to clear_refs), so the next
/// reading covers only what follows. Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
