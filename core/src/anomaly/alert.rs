//! One rule's alert on one series: the detector's history, the run of
//! anomalous or clear windows, and whether it is firing. Pure; the state is
//! encoded into the processor's checkpoint so a restart neither forgets the
//! history nor judges a window twice.

use std::collections::VecDeque;

use crate::TimestampMs;

use super::detector::{Detector, History, Judgement};

/// Everything remembered of one (rule, series).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesState {
    pub history: History,
    /// Start of the newest window judged: windows starting at or before it
    /// are never judged again (a replay, or a late update of a closed window).
    pub last_start: Option<TimestampMs>,
    /// Consecutive anomalous windows.
    pub bad: u32,
    /// Consecutive clear windows.
    pub good: u32,
    pub firing: Option<Firing>,
}

/// The firing alert: what it fired on, so its resolution can name it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Firing {
    pub start_ms: TimestampMs,
    pub end_ms: TimestampMs,
    pub value: f64,
    pub judgement: Judgement,
}

/// What judging one window changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transition {
    /// The rule fired on this window (`for` anomalous windows in a row).
    Fired(Firing),
    /// The alert that fired on `firing` resolved at this window (`for` clear
    /// windows in a row).
    Resolved(Firing),
}

/// One window value to judge.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start_ms: TimestampMs,
    pub end_ms: TimestampMs,
    pub value: f64,
}

impl SeriesState {
    pub fn new(detector: &Detector) -> SeriesState {
        SeriesState {
            history: detector.fresh(),
            last_start: None,
            bad: 0,
            good: 0,
            firing: None,
        }
    }

    /// Judges one closed window. None when it was judged before (its start is
    /// not after the last judged one): that is what makes judging exactly once.
    pub fn step(
        &mut self,
        detector: &Detector,
        for_windows: u32,
        window: Window,
    ) -> Option<Option<Transition>> {
        if self.last_start.is_some_and(|last| window.start_ms <= last) {
            return None;
        }
        self.last_start = Some(window.start_ms);
        let judgement = detector.judge(&mut self.history, window.value);
        match judgement {
            Some(j) if j.anomalous => {
                self.bad = self.bad.saturating_add(1);
                self.good = 0;
                if self.firing.is_none() && self.bad >= for_windows {
                    let firing = Firing {
                        start_ms: window.start_ms,
                        end_ms: window.end_ms,
                        value: window.value,
                        judgement: j,
                    };
                    self.firing = Some(firing);
                    return Some(Some(Transition::Fired(firing)));
                }
            }
            // A window in the warm-up counts as clear.
            _ => {
                self.good = self.good.saturating_add(1);
                self.bad = 0;
                if self.good >= for_windows
                    && let Some(firing) = self.firing.take()
                {
                    return Some(Some(Transition::Resolved(firing)));
                }
            }
        }
        Some(None)
    }

    /// The state as bytes for the checkpoint (versioned, little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        put_opt_i64(&mut out, self.last_start);
        out.extend(self.bad.to_le_bytes());
        out.extend(self.good.to_le_bytes());
        match &self.firing {
            None => out.push(0),
            Some(f) => {
                out.push(1);
                out.extend(f.start_ms.to_le_bytes());
                out.extend(f.end_ms.to_le_bytes());
                for v in [f.value, f.judgement.expected, f.judgement.score] {
                    out.extend(v.to_le_bytes());
                }
            }
        }
        match &self.history {
            History::Threshold => out.push(0),
            History::MovingAverage(values) => {
                out.push(1);
                out.extend((values.len() as u32).to_le_bytes());
                for v in values {
                    out.extend(v.to_le_bytes());
                }
            }
            History::Ewma { mean, var, seen } => {
                out.push(2);
                out.extend(mean.to_le_bytes());
                out.extend(var.to_le_bytes());
                out.extend(seen.to_le_bytes());
            }
        }
        out
    }

    /// Reads [`encode`](Self::encode)'s bytes. A state whose detector kind no
    /// longer matches the rule (the rule was edited) starts afresh but keeps
    /// the firing alert, so it still resolves.
    pub fn decode(bytes: &[u8], detector: &Detector) -> Result<SeriesState, String> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err("unknown detector state version".into());
        }
        let last_start = match r.u8()? {
            0 => None,
            _ => Some(r.i64()?),
        };
        let bad = r.u32()?;
        let good = r.u32()?;
        let firing = match r.u8()? {
            0 => None,
            _ => Some(Firing {
                start_ms: r.i64()?,
                end_ms: r.i64()?,
                value: r.f64()?,
                judgement: Judgement {
                    anomalous: true,
                    expected: r.f64()?,
                    score: r.f64()?,
                },
            }),
        };
        let history = match r.u8()? {
            0 => History::Threshold,
            1 => {
                let n = r.u32()? as usize;
                let mut values = VecDeque::with_capacity(n.min(super::rule::MAX_HISTORY));
                for _ in 0..n {
                    values.push_back(r.f64()?);
                }
                History::MovingAverage(values)
            }
            2 => History::Ewma {
                mean: r.f64()?,
                var: r.f64()?,
                seen: r.u32()?,
            },
            other => return Err(format!("unknown detector kind {other}")),
        };
        let history = match (&history, detector.fresh()) {
            (History::MovingAverage(values), History::MovingAverage(_)) => {
                let skip = values.len().saturating_sub(detector.windows);
                History::MovingAverage(values.iter().skip(skip).copied().collect())
            }
            (History::Ewma { .. }, History::Ewma { .. })
            | (History::Threshold, History::Threshold) => history,
            (_, fresh) => fresh,
        };
        Ok(SeriesState {
            history,
            last_start,
            bad,
            good,
            firing,
        })
    }
}

const VERSION: u8 = 1;

fn put_opt_i64(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend(v.to_le_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("detector state is truncated".into());
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(head.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::rule::DetectorKind;

    fn moving_average() -> Detector {
        Detector {
            kind: DetectorKind::MovingAverage,
            windows: 3,
            deviation: 3.0,
            above: None,
            below: None,
        }
    }

    fn threshold() -> Detector {
        Detector {
            kind: DetectorKind::Threshold,
            windows: 10,
            deviation: 3.0,
            above: Some(90.0),
            below: None,
        }
    }

    /// Feeds values as consecutive one-minute windows; what each one did.
    fn run(d: &Detector, for_windows: u32, values: &[f64]) -> Vec<&'static str> {
        let mut s = SeriesState::new(d);
        values
            .iter()
            .enumerate()
            .map(|(i, &value)| {
                let start_ms = i as i64 * 60_000;
                let w = Window {
                    start_ms,
                    end_ms: start_ms + 60_000,
                    value,
                };
                match s.step(d, for_windows, w).expect("new window") {
                    None => ".",
                    Some(Transition::Fired(_)) => "fire",
                    Some(Transition::Resolved(_)) => "resolve",
                }
            })
            .collect()
    }

    #[test]
    fn fires_after_for_windows_and_resolves_after_as_many_clear_ones() {
        let d = threshold();
        assert_eq!(
            run(&d, 1, &[1.0, 95.0, 96.0, 1.0, 1.0]),
            [".", "fire", ".", "resolve", "."]
        );
        assert_eq!(
            run(&d, 2, &[95.0, 1.0, 95.0, 95.0, 95.0, 1.0, 95.0, 1.0, 1.0]),
            [".", ".", ".", "fire", ".", ".", ".", ".", "resolve"]
        );
    }

    #[test]
    fn a_window_is_judged_once() {
        let d = threshold();
        let mut s = SeriesState::new(&d);
        let w = Window {
            start_ms: 60_000,
            end_ms: 120_000,
            value: 95.0,
        };
        assert!(matches!(s.step(&d, 1, w), Some(Some(Transition::Fired(_)))));
        assert_eq!(s.step(&d, 1, w), None, "the same window again");
        let earlier = Window { start_ms: 0, ..w };
        assert_eq!(s.step(&d, 1, earlier), None, "an older window");
    }

    #[test]
    fn the_state_survives_encoding_and_keeps_judging_the_same() {
        let d = moving_average();
        let mut s = SeriesState::new(&d);
        for (i, v) in [10.0, 10.0, 10.0, 50.0].into_iter().enumerate() {
            let start_ms = i as i64 * 1000;
            s.step(
                &d,
                1,
                Window {
                    start_ms,
                    end_ms: start_ms + 1000,
                    value: v,
                },
            );
        }
        assert!(s.firing.is_some());
        let restored = SeriesState::decode(&s.encode(), &d).unwrap();
        assert_eq!(restored, s);
        let ewma = Detector {
            kind: DetectorKind::Ewma,
            ..d.clone()
        };
        let mut e = SeriesState::new(&ewma);
        e.step(
            &ewma,
            1,
            Window {
                start_ms: 0,
                end_ms: 1,
                value: 3.0,
            },
        );
        assert_eq!(SeriesState::decode(&e.encode(), &ewma).unwrap(), e);
        // An edited rule (other detector) keeps the firing alert, not the history.
        let changed = SeriesState::decode(&s.encode(), &ewma).unwrap();
        assert_eq!(changed.firing, s.firing);
        assert_eq!(changed.history, ewma.fresh());
        assert!(SeriesState::decode(&s.encode()[..10], &d).is_err());
        assert!(SeriesState::decode(&[], &d).is_err());
    }
}
