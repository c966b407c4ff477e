//! Per-writer rate limits: one GCRA bucket per writer (governor), refilled at
//! `gateway.rate_limit` points per second and holding `gateway.rate_burst`.
//!
//! A writer is the bearer token a request was authenticated with; without
//! tokens every client shares one bucket, since anything else a client sends
//! (an address behind a proxy, a made-up header) is not an identity. A request
//! takes all its valid points from the bucket or none: a refused request is
//! answered 429 and resent whole after `Retry-After`, never half-accepted.
//! The limits hold per gateway replica.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use pulse_core::auth::bearer_token;
use pulse_core::config::GatewayConfig;

/// The buckets of one gateway; no buckets when `gateway.rate_limit` is 0.
pub(crate) struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    /// Writers are told apart by token only when tokens are configured:
    /// otherwise any header a client makes up would open a fresh bucket.
    by_token: bool,
    rate: u32,
}

impl RateLimits {
    pub(crate) fn new(settings: &GatewayConfig) -> RateLimits {
        let limiter = NonZeroU32::new(settings.rate_limit).map(|rate| {
            let burst = match settings.rate_burst {
                0 => u32::try_from(settings.max_points_per_request).unwrap_or(u32::MAX),
                burst => burst,
            };
            let burst = NonZeroU32::new(burst.max(rate.get())).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimits {
            limiter,
            by_token: !settings.tokens.is_empty() || settings.tokens_file.is_some(),
            rate: settings.rate_limit,
        }
    }

    /// Takes `points` from the bucket of the writer whose `Authorization`
    /// header this is; on refusal, how long until they would fit.
    pub(crate) fn take(&self, authorization: Option<&str>, points: usize) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(cells) = NonZeroU32::new(u32::try_from(points).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let writer = match self.by_token {
            true => bearer_token(authorization).unwrap_or_default(),
            false => "",
        };
        match limiter.check_key_n(&writer.to_string(), cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(limiter.clock().now())),
            // More points than the bucket holds. Config validation keeps the
            // burst at or above `max_points_per_request`, so this is not
            // reached; were it, the answer is still a wait, not a panic.
            Err(_) => Err(Duration::from_secs_f64(
                points as f64 / f64::from(self.rate),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u32, burst: u32, tokens: &[&str]) -> GatewayConfig {
        GatewayConfig {
            rate_limit: rate,
            rate_burst: burst,
            max_points_per_request: 100,
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn no_rate_means_no_limit() {
        let limits = RateLimits::new(&settings(0, 0, &[]));
        for _ in 0..1000 {
            assert_eq!(limits.take(None, 100_000), Ok(()));
        }
    }

    #[test]
    fn a_writer_gets_its_burst_then_waits_for_the_refill() {
        let limits = RateLimits::new(&settings(10, 0, &[]));
        // The burst defaults to max_points_per_request (100).
        assert_eq!(limits.take(None, 60), Ok(()));
        assert_eq!(limits.take(None, 40), Ok(()));
        let wait = limits.take(None, 20).expect_err("the bucket is empty");
        // 20 points at 10/s: up to two seconds, less whatever time has passed.
        assert!(
            wait > Duration::from_secs(1) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert_eq!(
            limits.take(None, 0),
            Ok(()),
            "a request with no valid point takes nothing"
        );
    }

    #[test]
    fn each_token_has_its_own_bucket_and_anonymous_clients_share_one() {
        let limits = RateLimits::new(&settings(1, 100, &["a", "b"]));
        assert_eq!(limits.take(Some("Bearer a"), 100), Ok(()));
        assert!(limits.take(Some("Bearer a"), 1).is_err());
        assert_eq!(limits.take(Some("Bearer b"), 100), Ok(()));

        let open = RateLimits::new(&settings(1, 100, &[]));
        assert_eq!(open.take(Some("Bearer a"), 100), Ok(()));
        // Without tokens a made-up header is not a new writer.
        assert!(open.take(Some("Bearer b"), 1).is_err());
    }
}
