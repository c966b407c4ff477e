//! Partials (open windows as they stand) in Redis.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:partial:<metric>:<window>` | hash | field = `<series id, 16 hex digits>:<window start ms>`, value = expiry (Unix ms, `i64` big-endian) + a [latest value](super#value-format) |
//! | `P:partial-live` | pub/sub channel | one message per published partial, in the latest value format |
//!
//! Redis 7.0 expires whole keys, not hash fields, so each value carries its
//! own expiry: readers skip (and delete) what has expired, and the hash as a
//! whole expires with the newest expiry written into it. Closing a window
//! (`put_latest`) deletes its field, so a partial never outlives its result.

use pulse_core::{SeriesId, TimestampMs, WindowResult};

use super::{RedisCache, decode_result, encode_result, series_field};
use crate::cache::{CacheError, Partial};

/// Partials written per pipeline round trip.
const BATCH: usize = 512;

impl RedisCache {
    /// The hash holding the partials of `metric`/`window`.
    pub fn partial_key(&self, metric: &str, window: &str) -> String {
        format!("{}:partial:{metric}:{window}", self.prefix)
    }

    /// The pub/sub channel of partials.
    pub fn partial_channel(&self) -> String {
        format!("{}:partial-live", self.prefix)
    }

    pub(super) async fn write_partials(&self, partials: &[Partial]) -> Result<(), CacheError> {
        let channel = self.partial_channel();
        let now = pulse_core::now_ms();
        for batch in partials.chunks(BATCH) {
            let mut pipe = redis::pipe();
            let mut expiry: std::collections::HashMap<String, TimestampMs> = Default::default();
            for partial in batch {
                let r = &partial.result;
                let key = self.partial_key(&r.metric, &r.window);
                let value = encode_result(r);
                let mut stored = Vec::with_capacity(8 + value.len());
                stored.extend_from_slice(&partial.expires_ms.to_be_bytes());
                stored.extend_from_slice(&value);
                pipe.cmd("HSET")
                    .arg(&key)
                    .arg(field(r.series_id, r.start_ms))
                    .arg(stored)
                    .ignore();
                pipe.cmd("PUBLISH").arg(&channel).arg(value).ignore();
                let newest = expiry.entry(key).or_insert(partial.expires_ms);
                *newest = (*newest).max(partial.expires_ms);
            }
            for (key, expires_ms) in expiry {
                pipe.cmd("PEXPIRE")
                    .arg(key)
                    .arg((expires_ms - now).max(1))
                    .ignore();
            }
            pipe.exec_async(&mut self.connection.clone())
                .await
                .map_err(|e| self.error(&format!("writing {} partials", batch.len()), &e))?;
        }
        Ok(())
    }

    pub(super) async fn read_partials(
        &self,
        metric: &str,
        window: &str,
        now_ms: TimestampMs,
    ) -> Result<Vec<WindowResult>, CacheError> {
        let key = self.partial_key(metric, window);
        let entries: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(&format!("reading {key}"), &e))?;
        let mut results = Vec::with_capacity(entries.len());
        let mut expired = Vec::new();
        // What has expired by the wall clock is deleted; what has by the
        // caller's `now_ms` only is skipped.
        let wall = pulse_core::now_ms();
        for (name, value) in entries {
            let decoded = value
                .split_first_chunk::<8>()
                .map(|(expires, rest)| (i64::from_be_bytes(*expires), rest));
            match decoded.map(|(expires, rest)| (expires, decode_result(rest))) {
                Some((expires, _)) if expires <= wall => expired.push(name),
                Some((expires, _)) if expires <= now_ms => {}
                Some((_, Ok(result))) => results.push(result),
                Some((_, Err(error))) => {
                    tracing::warn!(key = %key, %error, "skipping an undecodable partial");
                    expired.push(name);
                }
                None => expired.push(name),
            }
        }
        if !expired.is_empty() {
            // Housekeeping only: a failure leaves them for the next reader.
            let _: Result<(), _> = redis::cmd("HDEL")
                .arg(&key)
                .arg(expired)
                .exec_async(&mut self.connection.clone())
                .await;
        }
        Ok(results)
    }

    /// Deletes the partials of the windows `results` close.
    pub(super) async fn close_partials(&self, results: &[WindowResult]) -> Result<(), CacheError> {
        for batch in results.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for r in batch {
                pipe.cmd("HDEL")
                    .arg(self.partial_key(&r.metric, &r.window))
                    .arg(field(r.series_id, r.start_ms))
                    .ignore();
            }
            pipe.exec_async(&mut self.connection.clone())
                .await
                .map_err(|e| self.error("deleting the partials of closed windows", &e))?;
        }
        Ok(())
    }
}

fn field(series: SeriesId, start_ms: TimestampMs) -> String {
    format!("{}:{start_ms}", series_field(series))
}
