//! The one retry backoff of every role: exponential, capped, with "equal
//! jitter" (half of each pause fixed, half random).
//!
//! Every retry loop in Pulse (engines unreachable at start, the processor's
//! store and bus, the sidecar's forwarder and circuit breaker, the operator's
//! reconciles) uses [`Backoff`], so they all behave alike: the pause doubles
//! per consecutive failure from `first` up to `cap`, and the random half keeps
//! replicas that failed together (a database restart hits every processor at
//! once) from retrying in lockstep. The fixed half keeps the pause from
//! collapsing to nothing, so a down server is never hammered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Consecutive failures and the pause they earn.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    failures: u32,
    random: Random,
}

impl Backoff {
    /// Pauses from about `first` (after one failure) up to `cap`; a `cap`
    /// below `first` is raised to it.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff::seeded(first, cap, Random::seed())
    }

    /// Like [`Backoff::new`] with a fixed random seed, for reproducible tests.
    pub fn seeded(first: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            first,
            cap: cap.max(first),
            failures: 0,
            random: Random(seed | 1),
        }
    }

    /// Counts one more failure and returns the pause before the next try.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let random = self.random.unit();
        delay(self.first, self.cap, self.failures, random)
    }

    /// Forgets the failures after a success: the next pause is short again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The pause after `failures` consecutive failures (1 = the first) for a
/// `random` draw in [0, 1): half of `first · 2^(failures-1)` (capped at
/// `cap`) plus a random part of the other half. Pure, so tests pin it.
pub fn delay(first: Duration, cap: Duration, failures: u32, random: f64) -> Duration {
    let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
    let full = first.saturating_mul(doubling).min(cap.max(first));
    full / 2 + full.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

/// A small non-cryptographic random source (xorshift64) for jitter. Seeded
/// from the clock, the process id and a per-process counter, so backoffs
/// made together (in one process or in replicas started together) differ.
#[derive(Debug, Clone)]
struct Random(u64);

impl Random {
    fn seed() -> u64 {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let count = MADE.fetch_add(1, Ordering::Relaxed);
        nanos ^ (u64::from(std::process::id()) << 32) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_pause_doubles_up_to_the_cap_with_half_of_it_random() {
        let (first, cap) = (100 * MS, Duration::from_secs(30));
        assert_eq!(delay(first, cap, 1, 0.0), 50 * MS);
        assert_eq!(delay(first, cap, 1, 1.0), 100 * MS);
        assert_eq!(delay(first, cap, 4, 1.0), 800 * MS);
        assert_eq!(delay(first, cap, 4, 0.5), 600 * MS);
        assert_eq!(delay(first, cap, 40, 1.0), cap);
        assert_eq!(delay(first, cap, 40, 0.0), cap / 2);
        assert_eq!(delay(first, cap, u32::MAX, 0.0), cap / 2);
        assert_eq!(
            delay(first, MS, 1, 1.0),
            first,
            "a cap below first is raised"
        );
    }

    #[test]
    fn failures_count_up_and_a_success_resets_them() {
        let (first, cap) = (100 * MS, 1000 * MS);
        let mut backoff = Backoff::seeded(first, cap, 7);
        let pauses: Vec<Duration> = (0..8).map(|_| backoff.fail()).collect();
        assert_eq!(backoff.failures(), 8);
        for (i, pause) in pauses.iter().enumerate() {
            let full = (first * 2u32.pow(i as u32)).min(cap);
            assert!(*pause >= full / 2 && *pause <= full, "{i}: {pause:?}");
        }
        backoff.reset();
        assert!(backoff.fail() <= first);
    }

    #[test]
    fn the_random_part_varies_and_stays_in_the_unit_interval() {
        let mut random = Random(Random::seed() | 1);
        let draws: Vec<f64> = (0..10_000).map(|_| random.unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
        assert_ne!(
            Random::seed(),
            Random::seed(),
            "two backoffs made together differ"
        );
    }
}
