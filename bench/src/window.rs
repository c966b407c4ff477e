//! Window aggregation in memory, one thread: the processor's `Aggregator`
//! against a plain hash-map fold of the same points.
//!
//! Points are built in small chunks right before each timed stretch and moved
//! in, so they are as cache-warm as in the real loop (which decodes each record
//! right before ingesting it) while their construction stays off the clock.
//! On the clock: ingest, plus the `close_ready` and `checkpoint` calls the
//! real loop makes, and freeing what the checkpoint handed out.

use std::hint::black_box;
use std::time::{Duration, Instant};

use pulse_core::anomaly::{AnomalyConfig, DetectorKind, Rule, RuleConfig};
use pulse_core::{Point, SeriesId, TimestampMs, WindowSpec};
use pulse_engine::store::Checkpoint;
use pulse_processor::judge::Judge;
use pulse_processor::window::Aggregator;
use rustc_hash::FxHashMap;

use super::data::{Series, fleet, stream_point};
use super::median;

const PARTITIONS: u32 = 4;
/// The processor closes due windows after every poll; its polls are this large.
pub const CLOSE_EVERY: usize = 10_000;
/// And it checkpoints about this often at full speed.
pub const CHECKPOINT_EVERY: usize = 100_000;
/// Points built ahead of each timed stretch: small enough to stay in cache.
pub const CHUNK: usize = 1_000;
/// Event time of the first point: a 15-minute boundary, so windows are aligned.
const BASE_MS: TimestampMs = 1_721_199_600_000;

pub struct WindowResult {
    pub points: usize,
    pub series: usize,
    pub aggregator_rate: f64,
    pub fold_rate: f64,
    /// Where the aggregator's time went, in the median run.
    pub phases: Phases,
    /// Windows closed and window definitions skipped as late, per run.
    pub closed: usize,
    pub late: usize,
}

/// The aggregator's time on the clock, split by what it was spent on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub total: Duration,
    pub close_ready: Duration,
    pub checkpoint: Duration,
    /// Dropping the checkpoint's output (raw points, results, window states),
    /// which the real loop does once the store has it.
    pub free: Duration,
}

impl Phases {
    /// Everything not in a named phase: `ingest` itself.
    pub fn ingest(&self) -> Duration {
        self.total
            .saturating_sub(self.close_ready + self.checkpoint + self.free)
    }
}

pub fn measure(points: usize, series: usize, runs: usize) -> Result<WindowResult, String> {
    let fleet = fleet(series);
    let (mut agg_runs, mut fold_rates) = (Vec::new(), Vec::new());
    let (mut closed, mut late) = (0, 0);
    for _ in 0..runs {
        let run = aggregator_run(points, &fleet, None)?;
        (closed, late) = (run.closed, run.late);
        agg_runs.push(run.phases);
        fold_rates.push(points as f64 / fold_run(points, &fleet)?.as_secs_f64());
    }
    agg_runs.sort_by_key(|p| p.total);
    let phases = agg_runs[agg_runs.len() / 2];
    Ok(WindowResult {
        points,
        series,
        aggregator_rate: points as f64 / phases.total.as_secs_f64(),
        fold_rate: median(&mut fold_rates),
        phases,
        closed,
        late,
    })
}

/// Points `from..to` of the stream as the bus would deliver them: with their
/// series' partition, a dense offset per partition and the series id as key.
fn chunk(
    from: usize,
    to: usize,
    fleet: &[Series],
    offsets: &mut [u64],
) -> Vec<(u32, u64, SeriesId, Point)> {
    (from..to)
        .map(|i| {
            let key = fleet[i % fleet.len()].id;
            let partition = key.partition(PARTITIONS);
            let offset = offsets[partition as usize];
            offsets[partition as usize] += 1;
            (
                partition,
                offset,
                key,
                stream_point(i as u64, fleet, BASE_MS),
            )
        })
        .collect()
}

struct AggregatorRun {
    phases: Phases,
    closed: usize,
    late: usize,
}

/// What the aggregator has produced so far, for the accounting check.
#[derive(Default)]
struct Tally {
    added: usize,
    late: usize,
    closed: usize,
    results: usize,
}

fn aggregator_run(
    points: usize,
    fleet: &[Series],
    mut judge: Option<&mut Judge>,
) -> Result<AggregatorRun, String> {
    let windows = WindowSpec::defaults();
    let per_point = windows
        .iter()
        .map(WindowSpec::windows_per_point)
        .sum::<usize>();
    let mut aggregator = Aggregator::new(windows, Duration::from_secs(30), Duration::from_secs(10))
        .map_err(|e| format!("window bench: {e}"))?;
    let now = Instant::now();
    let partitions: Vec<u32> = (0..PARTITIONS).collect();
    aggregator
        .assign(&partitions, &Checkpoint::default(), now)
        .map_err(|e| format!("window bench: assigning partitions failed: {e}"))?;
    let mut offsets = vec![0; PARTITIONS as usize];
    let mut tally = Tally::default();
    let mut phases = Phases::default();
    let mut done = 0;
    while done < points {
        let batch = chunk(done, (done + CHUNK).min(points), fleet, &mut offsets);
        let started = Instant::now();
        for (partition, offset, key, point) in batch {
            let outcome = aggregator.ingest(partition, offset, Some(key), point, now);
            tally.added += outcome.windows;
            tally.late += outcome.late;
            done += 1;
            if done % CLOSE_EVERY == 0 {
                close(&mut aggregator, &mut tally, &mut phases);
            }
            if done % CHECKPOINT_EVERY == 0 {
                checkpoint(
                    &mut aggregator,
                    &mut tally,
                    &mut phases,
                    judge.as_deref_mut(),
                );
            }
        }
        phases.total += started.elapsed();
    }
    // The real loop commits what it holds when it stops.
    let started = Instant::now();
    close(&mut aggregator, &mut tally, &mut phases);
    checkpoint(&mut aggregator, &mut tally, &mut phases, judge);
    phases.total += started.elapsed();
    // Every point went into each of its windows or was counted late there.
    let Tally {
        added,
        late,
        closed,
        results,
    } = tally;
    if added + late != points * per_point || results != closed {
        return Err(format!(
            "window bench: the aggregator's accounting is off: {added} window updates + {late} late for \
             {points} points × {per_point} windows; {closed} windows closed but {results} results checkpointed"
        ));
    }
    Ok(AggregatorRun {
        phases,
        closed,
        late,
    })
}

fn close(aggregator: &mut Aggregator, tally: &mut Tally, phases: &mut Phases) {
    let started = Instant::now();
    tally.closed += aggregator.close_ready();
    phases.close_ready += started.elapsed();
}

fn checkpoint(
    aggregator: &mut Aggregator,
    tally: &mut Tally,
    phases: &mut Phases,
    judge: Option<&mut Judge>,
) {
    let started = Instant::now();
    let mut checkpointed = black_box(aggregator.checkpoint(None));
    // The processor judges every checkpoint's results before writing it.
    if let Some(judge) = judge {
        black_box(judge.judge(&mut checkpointed));
    }
    let made = Instant::now();
    // Closed windows only: late parts follow them in `results` (see `Checkpointed`).
    tally.results += checkpointed.closed;
    drop(checkpointed);
    phases.checkpoint += made - started;
    phases.free += made.elapsed();
}

/// Per window: count, sum, min, max. No sketch, no raw points, no lateness.
type Fold = FxHashMap<(SeriesId, u16, TimestampMs), (u64, f64, f64, f64)>;

fn fold_run(points: usize, fleet: &[Series]) -> Result<Duration, String> {
    let windows = WindowSpec::defaults();
    let mut fold = Fold::default();
    let mut offsets = vec![0; PARTITIONS as usize];
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < points {
        let batch = chunk(done, (done + CHUNK).min(points), fleet, &mut offsets);
        done += batch.len();
        let started = Instant::now();
        for (_, _, series, point) in batch {
            let v = point.value;
            for (index, spec) in windows.iter().enumerate() {
                for start in spec.starts(point.timestamp_ms) {
                    let w = fold.entry((series, index as u16, start)).or_insert((
                        0,
                        0.0,
                        f64::INFINITY,
                        f64::NEG_INFINITY,
                    ));
                    w.0 += 1;
                    w.1 += v;
                    w.2 = w.2.min(v);
                    w.3 = w.3.max(v);
                }
            }
            // The point is dropped here, on the clock, as the aggregator's are.
        }
        elapsed += started.elapsed();
    }
    let per_point = windows
        .iter()
        .map(WindowSpec::windows_per_point)
        .sum::<usize>();
    let counted: u64 = black_box(&fold).values().map(|w| w.0).sum();
    if counted != (points * per_point) as u64 {
        return Err(format!(
            "window bench: the reference fold counted {counted} updates, expected {}",
            points * per_point
        ));
    }
    Ok(elapsed)
}

/// Anomaly rules in the bench: this many, over the fleet's metrics.
pub const RULES: usize = 100;

/// The same window aggregation with and without [`RULES`] anomaly rules.
pub struct RulesResult {
    pub points: usize,
    pub series: usize,
    pub plain_rate: f64,
    pub judged_rate: f64,
}

/// `RULES` rules: every metric of the fleet watched by ten, cycling through
/// the three detectors and the three windows, each matching every series of
/// its metric (`env=prod`), so each closed window meets about ten rules.
fn rules(fleet: &[Series]) -> Result<Vec<Rule>, String> {
    let mut metrics: Vec<&str> = fleet.iter().map(|s| s.metric.as_str()).collect();
    metrics.sort_unstable();
    metrics.dedup();
    let windows = ["1m", "5m", "15m"];
    let rules = (0..RULES)
        .map(|i| {
            let detector = [
                DetectorKind::MovingAverage,
                DetectorKind::Ewma,
                DetectorKind::Threshold,
            ][i % 3];
            RuleConfig {
                name: format!("r{i}"),
                metric: metrics[i % metrics.len()].to_string(),
                tags: [("env".to_string(), "prod".to_string())].into(),
                window: Some(windows[(i / 3) % 3].to_string()),
                aggregation: "avg".into(),
                detector,
                windows: 10,
                deviation: 3.0,
                above: (detector == DetectorKind::Threshold).then_some(1e12),
                below: None,
                for_windows: 1,
                notify: Vec::new(),
            }
        })
        .collect();
    Rule::compile(&AnomalyConfig { rules }, "1m")
}

pub fn measure_rules(points: usize, series: usize, runs: usize) -> Result<RulesResult, String> {
    let fleet = fleet(series);
    let rules = rules(&fleet)?;
    let (mut plain, mut judged) = (Vec::new(), Vec::new());
    // Alternated, so both see the same machine, and each goes first in every
    // other round, so neither always runs on the heap the other left behind.
    for round in 0..runs {
        for judging in [round % 2 == 1, round % 2 == 0] {
            let mut judge = judging.then(|| Judge::new(rules.clone()));
            let run = aggregator_run(points, &fleet, judge.as_mut())?;
            let rate = points as f64 / run.phases.total.as_secs_f64();
            if judging { &mut judged } else { &mut plain }.push(rate);
        }
    }
    Ok(RulesResult {
        points,
        series,
        plain_rate: median(&mut plain),
        judged_rate: median(&mut judged),
    })
}
