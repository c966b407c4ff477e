//! StatsD timers: what the sidecar sends and spends for 10,000 timer samples
//! a second, one sketch per series per flush (today) against forwarding
//! every sample as a point (the path before sketches), in the same run on
//! the same samples.
//!
//! ```sh
//! cargo bench -p pulse-sidecar --bench timers                 # 60 s of load
//! cargo bench -p pulse-sidecar --bench timers -- --seconds 20
//! ```
//!
//! Both paths start from the same StatsD lines (`checkout.latency:<ms>|ms|#host:<h>`,
//! 10 names × 10 hosts, log-normal latencies) and end in what the forwarder
//! sends: validated points as NDJSON, compressed with zstd as a segment is.
//! "every sample" writes a batch every 200 ms (the old sample interval);
//! "sketches" feeds the StatsD aggregator and flushes every 10 s
//! (`statsd.flush_interval`). The load is processed as fast as one thread
//! can, and each path's CPU is that thread's user + system time
//! (`/proc/thread-self/stat`), reported per second of load (10,000
//! samples). Accuracy: every flushed sketch of a metric merged, against the
//! exact quantiles of all its samples.

use std::time::Duration;

use pulse_core::validate::{Limits, UncheckedPoint, validate};
use pulse_core::{Distribution, Point};
use pulse_sidecar::aggregate::Aggregator;
use pulse_sidecar::config::Compression;
use pulse_sidecar::encode::{Compressor, ndjson};
use pulse_sidecar::parse::statsd::{Values, parse_line};

const RATE: usize = 10_000;
const NAMES: usize = 10;
const HOSTS: usize = 10;
const BATCH_EVERY: Duration = Duration::from_millis(200);
const FLUSH_EVERY: Duration = Duration::from_secs(10);

fn main() {
    let seconds: usize = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let lines = load(seconds);
    let start_ms = pulse_core::now_ms();
    let every = every_sample(&lines, start_ms);
    let sketches = sketches(&lines, start_ms);
    let per_second = |x: f64| x / seconds as f64;
    println!("| path | bytes sent per s | CPU ms per 10k samples | points per s |");
    println!("|---|---:|---:|---:|");
    for (name, run) in [("every sample", &every), ("sketches", &sketches)] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} |",
            per_second(run.bytes as f64),
            per_second(run.cpu.as_secs_f64() * 1000.0),
            per_second(run.points as f64)
        );
    }
    println!(
        "\n{:.1}x fewer bytes, {:.1}x less CPU",
        every.bytes as f64 / sketches.bytes as f64,
        every.cpu.as_secs_f64() / sketches.cpu.as_secs_f64()
    );
    let mut worst = 0f64;
    for name in 0..NAMES {
        let mut exact: Vec<f64> = lines
            .iter()
            .filter(|(_, l)| l.starts_with(&format!("svc{name}.latency:")))
            .map(|(_, l)| value_of(l))
            .collect();
        exact.sort_by(f64::total_cmp);
        let merged = sketches.merged.get(name).expect("a sketch per metric");
        assert_eq!(merged.count() as usize, exact.len(), "counts are exact");
        for q in [0.5, 0.95, 0.99] {
            let truth = exact[((q * (exact.len() - 1) as f64).floor()) as usize];
            let got = merged.quantile(q).expect("a quantile");
            worst = worst.max((got - truth).abs() / truth);
        }
    }
    println!(
        "worst relative error of p50/p95/p99 across metrics: {:.3} %",
        worst * 100.0
    );
}

/// `(offset from the start, line)` for every sample, `RATE` per second.
fn load(seconds: usize) -> Vec<(Duration, String)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..seconds * RATE)
        .map(|i| {
            let at = Duration::from_micros((i as u64) * 1_000_000 / RATE as u64);
            // Log-normal latency around 40 ms (Box-Muller).
            let normal = (-2.0 * uniform().max(1e-12).ln()).sqrt()
                * (2.0 * std::f64::consts::PI * uniform()).cos();
            let ms = (40f64.ln() + 0.6 * normal).exp();
            let line = format!(
                "svc{}.latency:{ms:.3}|ms|#host:web-{}",
                i % NAMES,
                (i / NAMES) % HOSTS
            );
            (at, line)
        })
        .collect()
}

fn value_of(line: &str) -> f64 {
    match parse_line(line).expect("a valid line").values {
        Values::Numbers(values) => values[0],
        _ => unreachable!("timer lines carry numbers"),
    }
}

struct Run {
    bytes: usize,
    points: usize,
    cpu: Duration,
    /// Per metric name, every sketch sent merged.
    merged: Vec<Distribution>,
}

/// Validated, encoded and compressed as the forwarder sends a batch.
fn send(points: Vec<UncheckedPoint>, now_ms: i64, compressor: &mut Compressor, run: &mut Run) {
    let limits = Limits::default();
    let valid: Vec<Point> = points
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| validate(i, p, &limits, now_ms).ok())
        .collect();
    let mut text = Vec::new();
    run.points += ndjson(&valid, &mut text);
    run.bytes += compressor.compress(&text).expect("zstd").len();
    for point in valid {
        if let Some(sketch) = point.sketch {
            let name: usize = point.metric[3..point.metric.find('.').unwrap_or(4)]
                .parse()
                .unwrap_or(0);
            run.merged[name].merge(&sketch);
        }
    }
}

fn new_run() -> Run {
    Run {
        bytes: 0,
        points: 0,
        cpu: Duration::ZERO,
        merged: (0..NAMES).map(|_| Distribution::new()).collect(),
    }
}

/// Before sketches: every sample a point, written every 200 ms.
fn every_sample(lines: &[(Duration, String)], start_ms: i64) -> Run {
    let mut run = new_run();
    let mut compressor = Compressor::new(Compression::Zstd).expect("zstd");
    let cpu = thread_cpu();
    let mut batch = Vec::new();
    let mut next = BATCH_EVERY;
    for (at, line) in lines {
        if *at >= next {
            let now = start_ms + next.as_millis() as i64;
            send(std::mem::take(&mut batch), now, &mut compressor, &mut run);
            next += BATCH_EVERY;
        }
        let line = parse_line(line).expect("a valid line");
        if let Values::Numbers(values) = line.values {
            let ts = Some((start_ms + at.as_millis() as i64) as f64 / 1000.0);
            batch.extend(
                values
                    .into_iter()
                    .map(|v| UncheckedPoint::gauge(line.name.clone(), line.tags.clone(), v, ts)),
            );
        }
    }
    send(
        batch,
        start_ms + next.as_millis() as i64,
        &mut compressor,
        &mut run,
    );
    run.cpu = thread_cpu() - cpu;
    run
}

/// Today: the StatsD aggregator, one sketch per series per 10 s flush.
fn sketches(lines: &[(Duration, String)], start_ms: i64) -> Run {
    let mut run = new_run();
    let mut compressor = Compressor::new(Compression::Zstd).expect("zstd");
    let cpu = thread_cpu();
    let mut aggregator = Aggregator::new(10_000);
    let mut next = FLUSH_EVERY;
    for (at, line) in lines {
        if *at >= next {
            let now = start_ms + next.as_millis() as i64;
            send(aggregator.flush(now), now, &mut compressor, &mut run);
            next += FLUSH_EVERY;
        }
        aggregator
            .add(parse_line(line).expect("a valid line"))
            .expect("within the series limit");
    }
    let now = start_ms + next.as_millis() as i64;
    send(aggregator.flush(now), now, &mut compressor, &mut run);
    run.cpu = thread_cpu() - cpu;
    run
}

/// This thread's user + system CPU time so far.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("Linux /proc");
    // Fields after the command (which may hold spaces) start at `) `.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5): 11 and 12 after comm.
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // USER_HZ is 100 on every Linux the sidecar runs on.
    Duration::from_millis(ticks * 10)
}
