//! Deterministic data shared by the measurements: the same seed gives the same
//! values, series and timestamps on every machine, so runs are comparable.

use pulse_core::{Point, SeriesId, Tags, TimestampMs};

const METRICS: [&str; 10] = [
    "http_request_duration_ms",
    "cpu_usage",
    "mem_used_bytes",
    "disk_io_wait_ms",
    "queue_depth",
    "gc_pause_ms",
    "db_query_ms",
    "cache_hit_ratio",
    "net_rx_bytes",
    "net_tx_bytes",
];
const REGIONS: [&str; 4] = ["eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"];

/// SplitMix64: a stateless mix, so point `i` can be generated without its
/// predecessors (chunks are built independently and still match a full run).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A heavily right-skewed value (Pareto, shape 1.2, scale 1), like latencies:
/// most values near 1, a long tail over several orders of magnitude.
pub fn skewed(i: u64) -> f64 {
    let u = ((mix(i ^ 0x5EED) >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
    1.0 / u.powf(1.0 / 1.2)
}

/// `n` skewed values.
pub fn skewed_values(n: usize) -> Vec<f64> {
    (0..n as u64).map(skewed).collect()
}

/// One series of the synthetic fleet.
pub struct Series {
    pub metric: String,
    pub tags: Tags,
    pub id: SeriesId,
}

/// `n` series: 10 metrics on `n / 10` hosts, each with `host`, `region` and
/// `env` tags (a typical service fleet).
pub fn fleet(n: usize) -> Vec<Series> {
    (0..n)
        .map(|i| {
            let metric = METRICS[i % METRICS.len()].to_string();
            let host = i / METRICS.len();
            let tags: Tags = [
                ("env", "prod".to_string()),
                ("host", format!("host-{host:04}")),
                ("region", REGIONS[host % REGIONS.len()].to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let id = SeriesId::of(&metric, &tags);
            Series { metric, tags, id }
        })
        .collect()
}

/// What the window measurement feeds in: point `i` of a stream where every
/// series reports once per second of event time, round-robin.
///
/// 94.9 % of points are in order, 5 % up to 20 s out of order (within the 30 s
/// allowed lateness, so still aggregated) and 0.1 % ten minutes behind (late for
/// the 1m and 5m windows, counted as late rather than aggregated there).
pub fn stream_point(i: u64, fleet: &[Series], base_ms: TimestampMs) -> Point {
    let n = fleet.len() as u64;
    let series = &fleet[(i % n) as usize];
    let round = (i / n) as i64;
    let mut ts = base_ms + round * 1_000 + ((i % n) * 1_000 / n) as i64;
    let roll = mix(i ^ 0x0DD5);
    if roll.is_multiple_of(1_000) {
        ts -= 600_000;
    } else if roll % 100 < 5 {
        ts -= ((roll >> 20) % 20_000) as i64;
    }
    Point {
        metric: series.metric.clone(),
        tags: series.tags.clone(),
        value: skewed(i) * 10.0,
        timestamp_ms: ts,
    },
    kind: pulse_core::MetricKind::Gauge,
    sketch: None,
  kind: pulse_core::MetricKind::Gauge,
        sketch: None,
    }
}
