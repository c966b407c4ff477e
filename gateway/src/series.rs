//! The active-series limit: how many distinct series one gateway replica lets in.
//!
//! A series (metric name and tags) is active while its points keep arriving,
//! and stops counting `gateway.series_idle` after its last one. Once
//! `gateway.max_active_series` are active, points of a *new* series are
//! refused one by one (`too_many_series`) while the known series keep flowing:
//! a cardinality explosion (a request id put in a tag) is stopped at the door
//! without cutting the existing dashboards off. Memory stays bounded by the
//! limit: about 40 bytes per series.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use pulse_core::sync::lock;

use pulse_core::config::GatewayConfig;
use pulse_core::series::SeriesId;

/// How often, at most, a full gateway looks for idle series to forget: the
/// sweep visits every entry, so it is not done for each refused point.
const SWEEP_EVERY_MS: i64 = 1_000;

/// The series one gateway replica has admitted, with when each was last seen.
pub(crate) struct ActiveSeries {
    limit: usize,
    idle_ms: i64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_seen: HashMap<SeriesId, i64>,
    swept_at_ms: i64,
}

impl ActiveSeries {
    /// `None` when `gateway.max_active_series` is 0 (no limit).
    pub(crate) fn new(settings: &GatewayConfig) -> Option<ActiveSeries> {
        (settings.max_active_series > 0).then(|| ActiveSeries {
            limit: settings.max_active_series,
            idle_ms: i64::try_from(settings.series_idle.as_millis()).unwrap_or(i64::MAX),
            state: Mutex::default(),
        })
    }

    /// The most series admitted at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether each of `series` may pass at `now_ms`, in order: known series
    /// always, new ones while there is room for them (a new series repeated in
    /// the request takes one place). Nothing is admitted yet: a request that
    /// is refused later (rate limit, bus) must not use up places, so the
    /// series of an accepted request are admitted by [`ActiveSeries::commit`].
    pub(crate) fn check(&self, series: &[SeriesId], now_ms: i64) -> Vec<bool> {
        let mut state = lock(&self.state);
        let new_ones = series.iter().any(|id| !state.last_seen.contains_key(id));
        if new_ones {
            self.sweep_if_full(&mut state, now_ms);
        }
        let room = self.limit.saturating_sub(state.last_seen.len());
        let mut new: HashSet<SeriesId> = HashSet::new();
        series
            .iter()
            .map(|id| {
                if state.last_seen.contains_key(id) || new.contains(id) {
                    true
                } else if new.len() < room {
                    new.insert(*id);
                    true
                } else {
                    false
                }
            })
            .collect()
    }

    /// Admits the series of an accepted request as seen at `now_ms`. Requests
    /// checked at the same time may together bring more new series than
    /// there is room for; those beyond the limit are not remembered (their
    /// points went through), so the table never grows past the limit.
    pub(crate) fn commit(&self, series: impl IntoIterator<Item = SeriesId>, now_ms: i64) {
        let mut state = lock(&self.state);
        for id in series {
            if let Some(seen) = state.last_seen.get_mut(&id) {
                *seen = now_ms;
            } else if state.last_seen.len() < self.limit {
                state.last_seen.insert(id, now_ms);
            }
        }
    }

    /// Forgets idle series when the table is full, at most once every
    /// [`SWEEP_EVERY_MS`].
    fn sweep_if_full(&self, state: &mut State, now_ms: i64) {
        if state.last_seen.len() >= self.limit
            && now_ms.saturating_sub(state.swept_at_ms) >= SWEEP_EVERY_MS
        {
            state.swept_at_ms = now_ms;
            let idle_ms = self.idle_ms;
            state
                .last_seen
                .retain(|_, seen| now_ms.saturating_sub(*seen) < idle_ms);
        }
    }

    /// How many series count as active now (until the next sweep, this
    /// includes idle ones not yet forgotten).
    pub(crate) fn len(&self) -> usize {
        let state = lock(&self.state);
        state.last_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn active(limit: usize, idle: Duration) -> ActiveSeries {
        ActiveSeries::new(&GatewayConfig {
            max_active_series: limit,
            series_idle: idle,
            ..GatewayConfig::default()
        })
        .expect("a limit is set")
    }

    /// Checks and commits a request, as an accepted one is.
    impl ActiveSeries {
        fn admit(&self, series: &[SeriesId], now_ms: i64) -> Vec<bool> {
            let admitted = self.check(series, now_ms);
            let passed = series.iter().zip(&admitted).filter(|(_, ok)| **ok);
            self.commit(passed.map(|(id, _)| *id), now_ms);
            admitted
        }
    }

    #[test]
    fn a_checked_request_takes_no_place_until_committed() {
        let series = active(1, Duration::from_secs(60));
        let (a, b) = (SeriesId(1), SeriesId(2));
        assert_eq!(series.check(&[a], 0), [true]);
        assert_eq!(series.len(), 0, "a refused request leaves no trace");
        assert_eq!(series.check(&[b], 0), [true]);
        series.commit([b], 0);
        assert_eq!(series.check(&[a], 0), [false]);
    }

    #[test]
    fn no_limit_means_no_tracking() {
        assert!(ActiveSeries::new(&GatewayConfig::default()).is_none());
    }

    #[test]
    fn known_series_pass_and_new_ones_wait_for_room() {
        let series = active(2, Duration::from_secs(60));
        let (a, b, c) = (SeriesId(1), SeriesId(2), SeriesId(3));
        assert_eq!(series.admit(&[a, a, b, c], 0), [true, true, true, false]);
        // Known series keep flowing at the limit, in the same request as a refusal.
        assert_eq!(series.admit(&[c, b, a], 1_000), [false, true, true]);
        assert_eq!(series.len(), 2);
    }

    #[test]
    fn idle_series_make_room_once_their_idle_time_has_passed() {
        let series = active(2, Duration::from_secs(60));
        let (a, b, c) = (SeriesId(1), SeriesId(2), SeriesId(3));
        assert_eq!(series.admit(&[a, b], 0), [true, true]);
        assert_eq!(series.admit(&[b], 30_000), [true]);
        // At 59 s `a` is not idle yet; at 61 s it is, `b` (seen at 30 s) is not.
        assert_eq!(series.admit(&[c], 59_000), [false]);
        assert_eq!(series.admit(&[c], 61_000), [true]);
        assert_eq!(series.admit(&[a], 62_000), [false], "b and c are active");
    }

    #[test]
    fn a_full_gateway_sweeps_at_most_once_a_second() {
        let series = active(1, Duration::from_millis(10));
        let (a, b) = (SeriesId(1), SeriesId(2));
        assert_eq!(series.admit(&[a], 0), [true]);
        // The sweep at 1 s forgets `a` and admits `b`; `a` coming back 500 ms
        // later finds no room, as the next sweep is not due until 2 s.
        assert_eq!(series.admit(&[b], 1_000), [true]);
        assert_eq!(series.admit(&[a], 1_500), [false]);
        assert_eq!(series.admit(&[a], 2_000), [true]);
    }
}
