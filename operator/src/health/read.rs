//! Reading a processor's `/metrics` (pure): the three figures `status.health`
//! is made of, summed over the processor pods, and the rate of points between
//! two readings.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::PipelineHealth;

/// Points aggregated (a counter: the rate comes from two readings).
pub const POINTS_METRIC: &str = "pulse_processor_points_total";
/// Records not yet processed, one series per partition the pod owns.
pub const LAG_METRIC: &str = "pulse_processor_bus_lag_records";
/// Unix seconds of the last stored closed window; 0 before the first.
pub const LAST_WINDOW_METRIC: &str = "pulse_processor_last_window_closed_timestamp_seconds";
/// Every metric the health is read from (the root crate's tests check that
/// the processor exports each).
pub const HEALTH_METRICS: [&str; 3] = [POINTS_METRIC, LAG_METRIC, LAST_WINDOW_METRIC];

/// What one processor pod reported.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodFigures {
    pub points: f64,
    pub lag: f64,
    pub last_window_closed: f64,
}

/// The figures of one pod's metrics text (Prometheus or OpenMetrics), or
/// what is missing from it. Series of the same name are summed (the lag has
/// one per partition); unknown lines are ignored.
pub fn pod_figures(text: &str) -> Result<PodFigures, String> {
    let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(at) if line[at..].starts_with('{') => match line.rfind('}') {
                Some(end) => (&line[..at], &line[end + 1..]),
                None => continue,
            },
            Some(at) => (&line[..at], &line[at..]),
            None => continue,
        };
        if !HEALTH_METRICS.contains(&name) {
            continue;
        }
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        *sums.entry(name).or_default() += value;
    }
    let points = *sums
        .get(POINTS_METRIC)
        .ok_or_else(|| format!("no {POINTS_METRIC} in its /metrics (is it a Pulse processor?)"))?;
    Ok(PodFigures {
        points,
        // A processor that owns no partition yet exports no lag series.
        lag: sums.get(LAG_METRIC).copied().unwrap_or(0.0),
        last_window_closed: sums.get(LAST_WINDOW_METRIC).copied().unwrap_or(0.0),
    })
}

/// One read of every running processor pod of a pipeline.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    /// Figures by pod name, for the pods that answered.
    pub pods: BTreeMap<String, PodFigures>,
    /// Running pods asked (answered or not).
    pub asked: usize,
    /// Why pods did not answer, one entry each.
    pub failures: Vec<String>,
}

/// `status.health` from the reading taken at `now`, and the one before it
/// (taken at `previous.0`) for the rate. The rate counts only pods read both
/// times whose counter did not go back (a restarted pod starts again at 0).
pub fn health(
    previous: Option<(Timestamp, &Reading)>,
    now: Timestamp,
    current: &Reading,
) -> PipelineHealth {
    let points_per_second = previous.and_then(|(then, before)| {
        let seconds = now.duration_since(then).as_secs_f64();
        let mut delta = 0.0;
        let mut common = 0;
        for (pod, figures) in &current.pods {
            if let Some(old) = before.pods.get(pod)
                && figures.points >= old.points
            {
                delta += figures.points - old.points;
                common += 1;
            }
        }
        (seconds > 0.0 && common > 0).then(|| (delta / seconds * 10.0).round() / 10.0)
    });
    let answered = !current.pods.is_empty();
    let lag = current.pods.values().map(|f| f.lag).sum::<f64>();
    let last_window = current
        .pods
        .values()
        .map(|f| f.last_window_closed)
        .fold(0.0, f64::max);
    let last_window_closed = (last_window > 0.0)
        .then_some(last_window)
        .and_then(|seconds| Timestamp::from_millisecond((seconds * 1000.0) as i64).ok())
        .map(Time);
    let message = if current.asked == 0 {
        Some("no running processor pod to read".to_string())
    } else if current.failures.is_empty() {
        None
    } else {
        Some(current.failures.join("; "))
    };
    PipelineHealth {
        points_per_second,
        consumer_lag: answered.then_some(lag as i64),
        last_window_closed,
        processors_read: format!("{}/{}", current.pods.len(), current.asked),
        observed_at: Time(now),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP pulse_processor_points Points aggregated.\n\
        # TYPE pulse_processor_points counter\n\
        pulse_processor_points_total 1200\n\
        # TYPE pulse_processor_bus_lag_records gauge\n\
        pulse_processor_bus_lag_records{partition=\"0\"} 30\n\
        pulse_processor_bus_lag_records{partition=\"3\"} 12\n\
        pulse_processor_points_totally_other 5\n\
        pulse_processor_last_window_closed_timestamp_seconds 1700000000.5\n\
        # EOF\n";

    #[test]
    fn figures_sum_the_series_of_each_metric() {
        let figures = pod_figures(TEXT).unwrap();
        assert_eq!(
            figures,
            PodFigures {
                points: 1200.0,
                lag: 42.0,
                last_window_closed: 1_700_000_000.5
            }
        );
        let error = pod_figures("# EOF\nsomething_else 1\n").unwrap_err();
        assert!(error.contains("pulse_processor_points_total"), "{error}");
    }

    fn reading(pods: &[(&str, f64, f64, f64)], asked: usize) -> Reading {
        Reading {
            pods: pods
                .iter()
                .map(|&(pod, points, lag, last)| {
                    (
                        pod.to_string(),
                        PodFigures {
                            points,
                            lag,
                            last_window_closed: last,
                        },
                    )
                })
                .collect(),
            asked,
            failures: Vec::new(),
        }
    }

    #[test]
    fn the_rate_counts_pods_read_twice_and_skips_restarted_ones() {
        let t0 = Timestamp::from_second(1_700_000_000).unwrap();
        let t1 = Timestamp::from_second(1_700_000_060).unwrap();
        let before = reading(&[("a", 1000.0, 5.0, 0.0), ("b", 5000.0, 0.0, 0.0)], 2);
        // a: +600 in 60 s; b restarted (counter back to 10): left out; c is new.
        let now = reading(
            &[
                ("a", 1600.0, 7.0, 1_700_000_050.0),
                ("b", 10.0, 3.0, 1_700_000_055.0),
                ("c", 99.0, 0.0, 0.0),
            ],
            3,
        );
        let health = health(Some((t0, &before)), t1, &now);
        assert_eq!(health.points_per_second, Some(10.0));
        assert_eq!(health.consumer_lag, Some(10));
        assert_eq!(
            health.last_window_closed,
            Some(Time(Timestamp::from_second(1_700_000_055).unwrap()))
        );
        assert_eq!(health.processors_read, "3/3");
        assert_eq!(health.message, None);
    }

    #[test]
    fn a_first_or_empty_reading_says_what_it_lacks() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let first = health(None, t, &reading(&[("a", 10.0, 1.0, 0.0)], 1));
        assert_eq!(first.points_per_second, None);
        assert_eq!(first.last_window_closed, None);
        assert_eq!(first.consumer_lag, Some(1));
        let mut none = Reading {
            asked: 2,
            ..Reading::default()
        };
        none.failures = vec!["pod x: connection refused".into()];
        let empty = health(None, t, &none);
        assert_eq!(empty.consumer_lag, None);
        assert_eq!(empty.processors_read, "0/2");
        assert_eq!(empty.message.as_deref(), Some("pod x: connection refused"));
        let idle = health(None, t, &Reading::default());
        assert_eq!(
            idle.message.as_deref(),
            Some("no running processor pod to read")
        );
    }
}
