//! The anomaly rules, applied to every window result of a checkpoint before it
//! is written: anomalies and changed detector states go into the same
//! commit as the results, so they are stored exactly when the results are,
//! and a restart resumes from the states that match the stored offsets.
//! Pure: no I/O.

use std::collections::BTreeMap;

use pulse_core::SeriesId;
use pulse_core::anomaly::{AlertState, Rule, SeriesState, Transition, Window};
use pulse_engine::store::{AnomalyChange, DetectorState};
use rustc_hash::FxHashMap;

use crate::window::Checkpointed;

/// Every rule's state of every series of the assigned partitions.
pub struct Judge {
    rules: Vec<Rule>,
    /// Rule indexes by metric, so a result of an unwatched metric costs one lookup.
    by_metric: FxHashMap<String, Vec<usize>>,
    states: FxHashMap<(u32, usize, SeriesId), SeriesState>,
}

/// What judging one checkpoint did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub evaluations: u64,
    pub fired: u64,
    pub resolved: u64,
}

impl Judge {
    pub fn new(rules: Vec<Rule>) -> Judge {
        let mut by_metric: FxHashMap<String, Vec<usize>> = FxHashMap::default();
        for (i, rule) in rules.iter().enumerate() {
            by_metric.entry(rule.metric.clone()).or_default().push(i);
        }
        Judge {
            rules,
            by_metric,
            states: FxHashMap::default(),
        }
    }

    /// Takes the stored states of newly assigned partitions. States of rules
    /// no longer configured are dropped; unreadable ones start afresh.
    /// Returns how many could not be read.
    pub fn restore(&mut self, stored: &[DetectorState]) -> usize {
        let mut unreadable = 0;
        for s in stored {
            let Some(index) = self.rules.iter().position(|r| r.name == s.rule) else {
                continue;
            };
            match SeriesState::decode(&s.state, &self.rules[index].detector) {
                Ok(state) => {
                    self.states.insert((s.partition, index, s.series_id), state);
                }
                Err(_) => unreadable += 1,
            }
        }
        unreadable
    }

    /// Forgets the states of partitions taken away (after their last commit).
    pub fn revoke(&mut self, partitions: &[u32]) {
        self.states.retain(|(p, _, _), _| !partitions.contains(p));
    }

    /// Judges the checkpoint's results, series by series in window order, and
    /// adds anomalies and changed states to its commit.
    pub fn judge(&mut self, checkpointed: &mut Checkpointed) -> Judged {
        let mut judged = Judged::default();
        if self.rules.is_empty() {
            return judged;
        }
        let commit = &mut checkpointed.commit;
        // (partition, rule, series, window start) -> result index: sorted, so
        // a series' windows are judged oldest first.
        let mut due: BTreeMap<(u32, usize, SeriesId, i64), usize> = BTreeMap::new();
        let mut at = 0;
        for &(partition, count) in &checkpointed.result_partitions {
            for index in at..at + count {
                let result = &commit.results[index];
                let Some(rules) = self.by_metric.get(&result.metric) else {
                    continue;
                };
                for &rule in rules {
                    if self.rules[rule].applies(result) {
                        due.insert((partition, rule, result.series_id, result.start_ms), index);
                    }
                }
            }
            at += count;
        }
        let mut changed: Vec<(u32, usize, SeriesId)> = Vec::new();
        for ((partition, index, series, _), at) in due {
            let rule = &self.rules[index];
            let result = &commit.results[at];
            let Some(value) = result.value(rule.aggregation) else {
                continue;
            };
            let state = self
                .states
                .entry((partition, index, series))
                .or_insert_with(|| SeriesState::new(&rule.detector));
            let window = Window {
                start_ms: result.start_ms,
                end_ms: result.end_ms,
                value,
            };
            let Some(transition) = state.step(&rule.detector, rule.for_windows, window) else {
                continue;
            };
            judged.evaluations += 1;
            if changed.last() != Some(&(partition, index, series)) {
                changed.push((partition, index, series));
            }
            let anomaly = match transition {
                None => continue,
                Some(Transition::Fired(firing)) => {
                    judged.fired += 1;
                    rule.anomaly(result, &firing, AlertState::Firing)
                }
                Some(Transition::Resolved(firing)) => {
                    judged.resolved += 1;
                    let mut anomaly = rule.anomaly(result, &firing, AlertState::Resolved);
                    anomaly.resolved_ms = Some(result.end_ms);
                    anomaly
                }
            };
            commit.anomalies.push(AnomalyChange { partition, anomaly });
        }
        commit.detectors.extend(
            changed
                .into_iter()
                .map(|key @ (partition, index, series_id)| DetectorState {
                    partition,
                    rule: self.rules[index].name.clone(),
                    series_id,
                    state: self.states[&key].encode(),
                }),
        );
        judged
    }
}

#[cfg(test)]
mod tests {
    use pulse_core::{Aggregate, Tags, WindowResult};
    use pulse_engine::store::Commit;

    use super::*;

    fn judge(toml: &str) -> Judge {
        let config = pulse_core::config::Config::from_toml(toml).unwrap();
        Judge::new(Rule::compile(&config.anomaly, "1m").unwrap())
    }

    const RULES: &str = r#"
[processor]
windows = ["1m"]
[[alerting.receivers]]
name = "ops"
kind = "webhook"
url = "http://127.0.0.1:1/hook"
[[anomaly.rules]]
name = "spike"
metric = "cpu"
tags = { env = "prod" }
detector = "moving_average"
windows = 3
notify = ["ops"]
"#;

    fn result(metric: &str, env: &str, minute: i64, value: f64) -> WindowResult {
        let tags: Tags = [("env".to_string(), env.to_string())].into();
        let mut agg = Aggregate::new();
        agg.add(value, minute * 60_000);
        WindowResult {
            series_id: SeriesId::of(metric, &tags),
            metric: metric.into(),
            tags,
            window: "1m".into(),
            start_ms: minute * 60_000,
            end_ms: (minute + 1) * 60_000,
            agg,
        }
    }

    fn checkpoint(results: Vec<WindowResult>) -> Checkpointed {
        Checkpointed {
            result_partitions: vec![(0, results.len())],
            closed: results.len(),
            merged: vec![],
            commit: Commit {
                results,
                ..Commit::default()
            },
            offsets: vec![],
            forgotten: Default::default(),
        }
    }

    #[test]
    fn windows_are_judged_in_order_once_and_the_state_carries_over_a_restore() {
        let mut j = judge(RULES);
        // Out of order within the checkpoint, plus series no rule watches.
        let mut first: Vec<_> = [10.0, 10.0, 10.0, 10.0]
            .iter()
            .enumerate()
            .rev()
            .map(|(m, &v)| result("cpu", "prod", m as i64, v))
            .collect();
        first.push(result("cpu", "dev", 0, 99.0));
        first.push(result("mem", "prod", 0, 99.0));
        let mut c = checkpoint(first);
        let judged = j.judge(&mut c);
        assert_eq!(
            judged,
            Judged {
                evaluations: 4,
                fired: 0,
                resolved: 0
            }
        );
        assert_eq!(c.commit.detectors.len(), 1);

        // A restarted processor restores the state and fires on the spike.
        let mut restarted = judge(RULES);
        assert_eq!(restarted.restore(&c.commit.detectors), 0);
        let mut c = checkpoint(vec![
            result("cpu", "prod", 4, 50.0),
            result("cpu", "prod", 3, 99.0),
        ]);
        let judged = restarted.judge(&mut c);
        assert_eq!(
            judged.evaluations, 1,
            "minute 3 was judged before the restart"
        );
        let fired = &c.commit.anomalies[0].anomaly;
        assert_eq!(
            (fired.window_start_ms, fired.value, fired.state),
            (240_000, 50.0, AlertState::Firing)
        );
        assert_eq!(fired.notify, vec!["ops".to_string()]);

        let mut c = checkpoint(vec![result("cpu", "prod", 5, 10.0)]);
        restarted.judge(&mut c);
        let resolved = &c.commit.anomalies[0].anomaly;
        assert_eq!(resolved.id, fired.id);
        assert_eq!(
            (resolved.state, resolved.resolved_ms),
            (AlertState::Resolved, Some(360_000))
        );

        restarted.revoke(&[0]);
        let mut c = checkpoint(vec![result("cpu", "prod", 6, 10.0)]);
        assert_eq!(restarted.judge(&mut c).evaluations, 1);
        assert!(
            c.commit.anomalies.is_empty(),
            "a revoked partition's state is gone: warming up"
        );
    }
}
