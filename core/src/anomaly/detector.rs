//! The detectors: given a series' history and its newest window value, is the
//! value anomalous, what was expected, and by how much it is off. Pure.

use std::collections::VecDeque;

use super::rule::{DetectorKind, RuleConfig};

/// A rule's detector with its parameters, checked at load.
#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    pub kind: DetectorKind,
    pub windows: usize,
    pub deviation: f64,
    pub above: Option<f64>,
    pub below: Option<f64>,
}

/// What a detector remembers of one series (kept in the checkpoint).
#[derive(Debug, Clone, PartialEq)]
pub enum History {
    /// The last `windows` values, oldest first.
    MovingAverage(VecDeque<f64>),
    /// Exponentially weighted mean and variance over `seen` values.
    Ewma { mean: f64, var: f64, seen: u32 },
    /// A threshold needs no history.
    Threshold,
}

/// The verdict on one window value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub anomalous: bool,
    /// The mean (moving_average, ewma) or the bound crossed (threshold).
    pub expected: f64,
    /// Standard deviations from the mean, or distance past the bound.
    pub score: f64,
}

/// The smallest standard deviation a score divides by, relative to the mean:
/// a perfectly steady series has none, and then any real change is anomalous
/// while floating-point noise in the mean is not (and no score is infinite).
const SIGMA_FLOOR: f64 = 1e-9;

impl Detector {
    pub fn of(rule: &RuleConfig) -> Detector {
        Detector {
            kind: rule.detector,
            windows: rule.windows,
            deviation: rule.deviation,
            above: rule.above,
            below: rule.below,
        }
    }

    /// The history of a series not seen yet.
    pub fn fresh(&self) -> History {
        match self.kind {
            DetectorKind::MovingAverage => History::MovingAverage(VecDeque::new()),
            DetectorKind::Ewma => History::Ewma {
                mean: 0.0,
                var: 0.0,
                seen: 0,
            },
            DetectorKind::Threshold => History::Threshold,
        }
    }

    /// Judges `value` against `history`, then adds it to the history. None
    /// while the history is warming up (fewer than `windows` values).
    ///
    /// Anomalous values join the history too: a level shift is the new normal
    /// once the history has filled with it, and after a spike the widened
    /// deviation keeps the next ordinary windows from firing.
    pub fn judge(&self, history: &mut History, value: f64) -> Option<Judgement> {
        match history {
            History::Threshold => Some(self.threshold(value)),
            History::MovingAverage(values) => {
                let verdict = (values.len() >= self.windows).then(|| {
                    let n = values.len() as f64;
                    let mean = values.iter().sum::<f64>() / n;
                    // The sample variance (n - 1): a short history underestimates
                    // the spread, and dividing by n would fire on ordinary noise.
                    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
                    self.deviates(value, mean, var)
                });
                values.push_back(value);
                while values.len() > self.windows {
                    values.pop_front();
                }
                verdict
            }
            History::Ewma { mean, var, seen } => {
                let verdict =
                    (*seen as usize >= self.windows).then(|| self.deviates(value, *mean, *var));
                if *seen == 0 {
                    *mean = value;
                    *var = 0.0;
                } else {
                    let alpha = 2.0 / (self.windows as f64 + 1.0);
                    let diff = value - *mean;
                    let step = alpha * diff;
                    *mean += step;
                    *var = (1.0 - alpha) * (*var + diff * step);
                }
                *seen = seen.saturating_add(1);
                verdict
            }
        }
    }

    fn deviates(&self, value: f64, mean: f64, var: f64) -> Judgement {
        let sigma = var.sqrt().max(SIGMA_FLOOR * mean.abs().max(1.0));
        let score = (value - mean).abs() / sigma;
        Judgement {
            anomalous: score > self.deviation,
            expected: mean,
            score,
        }
    }

    fn threshold(&self, value: f64) -> Judgement {
        if let Some(above) = self.above
            && value > above
        {
            return Judgement {
                anomalous: true,
                expected: above,
                score: value - above,
            };
        }
        if let Some(below) = self.below
            && value < below
        {
            return Judgement {
                anomalous: true,
                expected: below,
                score: below - value,
            };
        }
        Judgement {
            anomalous: false,
            expected: self.above.or(self.below).unwrap_or(value),
            score: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(kind: DetectorKind) -> Detector {
        Detector {
            kind,
            windows: 10,
            deviation: 3.0,
            above: Some(90.0),
            below: None,
        }
    }

    /// The indexes of the values judged anomalous.
    fn fired(d: &Detector, series: &[f64]) -> Vec<usize> {
        let mut h = d.fresh();
        series
            .iter()
            .enumerate()
            .filter(|&(_, &v)| d.judge(&mut h, v).is_some_and(|j| j.anomalous))
            .map(|(i, _)| i)
            .collect()
    }

    /// Deterministic noise in [-1, 1]: never 3 standard deviations (0.58) out.
    fn noise(n: usize) -> Vec<f64> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                50.0 + ((x % 2001) as f64 / 1000.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn a_spike_fires_once_after_warm_up() {
        for kind in [DetectorKind::MovingAverage, DetectorKind::Ewma] {
            let d = detector(kind);
            let mut series = vec![50.0; 10];
            series.push(95.0);
            series.extend([50.0; 5]);
            assert_eq!(fired(&d, &series), vec![10], "{kind:?}");
            // The same spike inside the warm-up is not judged.
            assert_eq!(fired(&d, &[50.0, 50.0, 95.0, 50.0]), Vec::<usize>::new());
        }
    }

    #[test]
    fn noise_never_fires() {
        for kind in [DetectorKind::MovingAverage, DetectorKind::Ewma] {
            let d = Detector {
                windows: 30,
                ..detector(kind)
            };
            let series = noise(2_000);
            assert_eq!(fired(&d, &series), Vec::<usize>::new(), "{kind:?}");
        }
    }

    #[test]
    fn a_level_shift_fires_then_becomes_the_new_normal() {
        let d = detector(DetectorKind::MovingAverage);
        let mut series = noise(20);
        series.extend(noise(40).into_iter().map(|v| v + 30.0));
        let fired = fired(&d, &series);
        assert_eq!(fired.first(), Some(&20), "the shift itself fires");
        assert!(
            fired.iter().all(|&i| i < 30),
            "a full history later the new level is normal: {fired:?}"
        );
        let ewma = detector(DetectorKind::Ewma);
        let mut h = ewma.fresh();
        let verdicts: Vec<_> = series.iter().map(|&v| ewma.judge(&mut h, v)).collect();
        assert!(verdicts[20].unwrap().anomalous);
        assert!(!verdicts[59].unwrap().anomalous);
    }

    #[test]
    fn the_score_and_expected_value_are_reported() {
        let d = Detector {
            windows: 3,
            ..detector(DetectorKind::MovingAverage)
        };
        let mut h = d.fresh();
        for v in [9.0, 10.0, 11.0] {
            assert_eq!(d.judge(&mut h, v), None, "warming up");
        }
        // Mean 10, sample standard deviation 1.
        let j = d.judge(&mut h, 14.0).unwrap();
        assert_eq!((j.expected, j.score, j.anomalous), (10.0, 4.0, true));
    }

    #[test]
    fn thresholds_fire_above_and_below() {
        let d = Detector {
            kind: DetectorKind::Threshold,
            windows: 10,
            deviation: 3.0,
            above: Some(90.0),
            below: Some(10.0),
        };
        assert_eq!(fired(&d, &[50.0, 90.0, 90.5, 10.0, 9.0]), vec![2, 4]);
        let mut h = d.fresh();
        let j = d.judge(&mut h, 95.0).unwrap();
        assert_eq!((j.expected, j.score), (90.0, 5.0));
    }
}
