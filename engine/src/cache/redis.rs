//! The production cache: Redis, shared by every processor and dashboard replica
//! of a pipeline, so any dashboard answers from the windows any processor closed.
//!
//! # Keys
//!
//! Everything lives under the pipeline's prefix `P` (e.g. `pulse:<namespace>:<pipeline>`),
//! so pipelines can share one Redis without seeing each other's data:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:latest:<metric>:<window>` | hash | field = series id as 16 lowercase hex digits, value = the newest result of that series ([value format](#value-format)) |
//! | `P:live` | pub/sub channel | one message per newly closed window, same value format |
//! | `P:partial:<metric>:<window>`, `P:partial-live` | hash, pub/sub channel | the open windows' partials ([`partial`]) |
//!
//! Metric names may contain `:` but window labels (`5m`, `10m/1m`) never do, so
//! the last `:` of a latest key always separates the two.
//!
//! Each latest hash expires `ttl` after its last write: a pipeline that stops
//! (deleted, or its processors down) leaves nothing behind, and the dashboard
//! then sees a cold cache and answers from the store instead of serving stale
//! windows forever. Choose the TTL well above the longest window's size plus
//! the allowed lateness, or long windows go cold between two closings.
//!
//! # Writes
//!
//! [`Cache::put_latest`] runs one Lua script per batch of results (at most
//! [`MAX_RESULTS_PER_SCRIPT`]): for each result it compares the start of the
//! cached value with the new one and writes only when the new one is not older,
//! then refreshes the expiry of every hash it touched. Scripts run atomically
//! in Redis, so two processors (e.g. during a rebalance, or a restarted one
//! replaying) can race without an older window ever replacing a newer one.
//!
//! # Value format
//!
//! Version 1, all integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version, `1` |
//! | 8 | window start, Unix ms, `i64` |
//! | 8 | window end, Unix ms, `i64` |
//! | 8 | series id, `u64` |
//! | 2 | length `n` of the window label, `u16` |
//! | n | window label, UTF-8 |
//! | rest | metric, tags and aggregate: [`pulse_core::codec::state::encode_state`] (its own version byte + protobuf `pulse.v1.WindowState`) |
//!
//! The start sits at a fixed offset (byte 1) so the write script can read it
//! without understanding the rest; a new layout gets a new version byte.
//!
//! # Failures
//!
//! Every Redis error becomes [`CacheError::Unavailable`] naming the operation
//! and the server. Connections go through [`ConnectionManager`], which
//! reconnects on its own after an I/O error; connection attempts and replies
//! are bounded by timeouts so a dead or black-holed Redis costs a caller
//! seconds, never a hang.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use pulse_core::codec::state::{decode_state, encode_state};
use pulse_core::{SeriesId, TimestampMs, WindowResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ClientTlsConfig, RedisError, Script, TlsCertificates};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Cache, CacheError, Partial};

mod partial;

/// The version byte of [the value format](self#value-format).
pub const VALUE_VERSION: u8 = 1;
/// Fixed-size head of a value: version, start, end, series id, label length.
const HEAD_LEN: usize = 1 + 8 + 8 + 8 + 2;

/// How long one TCP connect + handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one command may wait for its reply. A latest hash of a metric with
/// many thousand series is still a few MB at most, read in well under this.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connection attempts after the first one, per (re)connect. Few, because the
/// manager tries again on the next command anyway; many would only make a
/// caller of a down Redis wait longer before it falls back to the store.
const CONNECT_RETRIES: usize = 2;
/// Upper bound of the backoff between those attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Results written by one script run. A script blocks Redis while it runs, so
/// a huge batch is split to keep other clients' latency in the microseconds.
pub const MAX_RESULTS_PER_SCRIPT: usize = 256;
/// How many live windows a slow subscriber may fall behind before newer ones
/// are dropped for it (as with the embedded cache, the UI re-queries on
/// reconnect). Without this bound, the Redis client would buffer without limit.
const LIVE_BUFFER: usize = 4096;

/// Writes results unless the cached one of the same series is newer.
///
/// `KEYS`: the latest hashes of the batch. `ARGV[1]`: TTL in ms; then four
/// arguments per result: index into `KEYS`, field, start (decimal ms), value.
/// A cached value that is not version 1 (or is too short to hold a start) is
/// replaced: the new one is at least readable. `struct` is part of every Redis
/// Lua environment since 2.6. Returns how many results were written.
const PUT_LATEST_LUA: &str = r"
local ttl = tonumber(ARGV[1])
local written = 0
for i = 2, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  local field = ARGV[i + 1]
  local start = tonumber(ARGV[i + 2])
  local old = redis.call('HGET', key, field)
  local newer_cached = false
  if old and string.len(old) >= 9 and string.byte(old, 1) == 1 then
    newer_cached = struct.unpack('>i8', old, 2) > start
  end
  if not newer_cached then
    redis.call('HSET', key, field, ARGV[i + 3])
    written = written + 1
  end
end
for _, key in ipairs(KEYS) do
  redis.call('PEXPIRE', key, ttl)
end
return written
";

/// The Redis engine of [`Cache`]: one per pipeline (its `prefix`), cheap to
/// share (`&self` everywhere; the connection is multiplexed).
pub struct RedisCache {
    client: Client,
    connection: ConnectionManager,
    /// `host:port` (or socket path) for messages; never the URL, which may
    /// carry a password.
    target: String,
    prefix: String,
    live_channel: String,
    ttl_ms: i64,
    put_latest: Script,
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]`,
    /// `rediss://` for TLS trusting the system's roots, `unix://`) and keeps
    /// every key under `prefix`; latest hashes expire `ttl` after their last
    /// write. [`RedisCache::connect_tls`] adds a CA and a client certificate.
    ///
    /// Connects eagerly, so a wrong address or password shows at start-up
    /// rather than on the first query; fails within a few seconds when Redis
    /// cannot be reached. After that the connection heals on its own.
    pub async fn connect(url: &str, prefix: &str, ttl: Duration) -> Result<RedisCache, CacheError> {
        Self::connect_tls(url, prefix, ttl, &TlsFiles::default()).await
    }

    /// [`RedisCache::connect`] to a `rediss://` URL with the CA (instead of
    /// the system's roots) and the client certificate in `tls`.
    pub async fn connect_tls(
        url: &str,
        prefix: &str,
        ttl: Duration,
        tls: &TlsFiles,
    ) -> Result<RedisCache, CacheError> {
        let ttl_ms = i64::try_from(ttl.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                CacheError::Unavailable(format!(
                    "the Redis cache TTL must be between 1ms and i64::MAX ms, got {ttl:?}"
                ))
            })?;
        if prefix.is_empty() {
            return Err(CacheError::Unavailable(
                "the Redis cache needs a non-empty key prefix (e.g. pulse:<namespace>:<pipeline>) \
                 so pipelines sharing a Redis stay apart"
                    .into(),
            ));
        }
        let client = open_client(url, tls)?;
        let target = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_max_delay(MAX_RETRY_DELAY);
        let connection = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| unavailable(&target, "connect", &e))?;
        tracing::info!(target_addr = %target, prefix, ttl_ms, "Redis cache connected");
        Ok(RedisCache {
            client,
            connection,
            target,
            prefix: prefix.to_string(),
            live_channel: format!("{prefix}:live"),
            ttl_ms,
            put_latest: Script::new(PUT_LATEST_LUA),
        })
    }

    /// The hash holding the latest results of `metric`/`window`.
    pub fn latest_key(&self, metric: &str, window: &str) -> String {
        format!("{}:latest:{metric}:{window}", self.prefix)
    }

    /// The pub/sub channel of newly closed windows.
    pub fn live_channel(&self) -> &str {
        &self.live_channel
    }

    fn error(&self, what: &str, e: &RedisError) -> CacheError {
        unavailable(&self.target, what, e)
    }
}

fn unavailable(target: &str, what: &str, e: &RedisError) -> CacheError {
    let cause = crate::tls::explain(e, "cache.tls_ca_file").unwrap_or_else(|| e.to_string());
    CacheError::Unavailable(format!("Redis at {target}: {what} failed: {cause}"))
}

/// The files of a TLS connection to Redis (`cache.tls_ca_file`,
/// `cache.tls_cert_file`, `cache.tls_key_file`), all PEM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    /// The CA that signed the server's certificate; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, for a Redis that asks for one
    /// (`tls-auth-clients yes`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A client for `url` with the TLS files in `tls` (read now, so a missing
/// file shows at start-up, named by its key).
fn open_client(url: &str, tls: &TlsFiles) -> Result<Client, CacheError> {
    let invalid = |why: String| CacheError::Unavailable(why);
    let tls_url = url.starts_with("rediss://");
    // The parse errors do not repeat the URL, which may hold a password.
    if *tls == TlsFiles::default() {
        return Client::open(url)
            .map_err(|e| invalid(format!("the Redis URL does not parse: {e}")));
    }
    if !tls_url {
        return Err(invalid(
            "cache.tls_ca_file, cache.tls_cert_file and cache.tls_key_file need a rediss:// \
             cache.redis_url (TLS); the URL asks for a plain connection"
                .into(),
        ));
    }
    let read = |key: &str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, CacheError> {
        path.as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|e| {
                    invalid(format!(
                        "{key} names {}, which cannot be read: {e}",
                        path.display()
                    ))
                })
            })
            .transpose()
    };
    let root_cert = read("cache.tls_ca_file", &tls.ca_file)?;
    let client_tls = match (
        read("cache.tls_cert_file", &tls.cert_file)?,
        read("cache.tls_key_file", &tls.key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig {
            client_cert,
            client_key,
        }),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "cache.tls_cert_file and cache.tls_key_file go together: set both for a client \
                 certificate, or neither"
                    .into(),
            ));
        }
    };
    Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| {
        invalid(format!(
            "the Redis URL or its TLS files are not usable (check that the files are PEM): {e}"
        ))
    })
}

/// The hash field of a series: fixed width, so fields sort like ids.
fn series_field(id: SeriesId) -> String {
    format!("{:016x}", id.0)
}

#[async_trait]
impl Cache for RedisCache {
    async fn put_latest(&self, results: &[WindowResult]) -> Result<(), CacheError> {
        self.close_partials(results).await?;
        for batch in results.chunks(MAX_RESULTS_PER_SCRIPT) {
            // KEYS are 1-based in Lua; results of one hash share an index.
            let mut keys: Vec<String> = Vec::new();
            let mut index: HashMap<(&str, &str), usize> = HashMap::new();
            let mut invocation = self.put_latest.prepare_invoke();
            invocation.arg(self.ttl_ms);
            for result in batch {
                let key_index = *index
                    .entry((result.metric.as_str(), result.window.as_str()))
                    .or_insert_with(|| {
                        keys.push(self.latest_key(&result.metric, &result.window));
                        keys.len()
                    });
                invocation
                    .arg(key_index)
                    .arg(series_field(result.series_id))
                    .arg(result.start_ms)
                    .arg(encode_result(result));
            }
            for key in &keys {
                invocation.key(key);
            }
            let written: usize = invocation
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(|e| {
                    self.error(
                        &format!(
                            "writing {} latest results of {} hashes",
                            batch.len(),
                            keys.len()
                        ),
                        &e,
                    )
                })?;
            tracing::debug!(
                prefix = %self.prefix,
                results = batch.len(),
                hashes = keys.len(),
                written,
                skipped_older = batch.len().saturating_sub(written),
                "cached latest results"
            );
        }
        Ok(())
    }

    async fn latest(
        &self,
        metric: &str,
        window: &str,
    ) -> Result<Option<Vec<WindowResult>>, CacheError> {
        let key = self.latest_key(metric, window);
        // Raw HGETALL: values are binary, and a missing key reads as empty.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| self.error(&format!("reading {key}"), &e))?;
        if entries.is_empty() {
            return Ok(None);
        }
        let mut results = Vec::with_capacity(entries.len());
        for (field, value) in &entries {
            match decode_result(value) {
                Ok(result) => results.push(result),
                Err(error) => tracing::warn!(
                    key = %key,
                    field = %String::from_utf8_lossy(field),
                    %error,
                    "skipping an undecodable cached result"
                ),
            }
        }
        // Nothing readable is no better than nothing cached: let the caller
        // answer from the store.
        let Some(newest) = results.iter().map(|r| r.start_ms).max() else {
            return Ok(None);
        };
        results.retain(|r| r.start_ms == newest);
        Ok(Some(results))
    }

    async fn publish(&self, results: &[WindowResult]) -> Result<(), CacheError> {
        if results.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for result in results {
            pipe.cmd("PUBLISH")
                .arg(&self.live_channel)
                .arg(encode_result(result))
                .ignore();
        }
        pipe.exec_async(&mut self.connection.clone())
            .await
            .map_err(|e| {
                self.error(
                    &format!(
                        "publishing {} results on {}",
                        results.len(),
                        self.live_channel
                    ),
                    &e,
                )
            })
    }

    /// Opens a dedicated pub/sub connection (see [`RedisCache::subscribe_to`]).
    async fn subscribe(&self) -> Result<BoxStream<'static, WindowResult>, CacheError> {
        self.subscribe_to(self.live_channel.clone()).await
    }

    async fn put_partial(&self, partials: &[Partial]) -> Result<(), CacheError> {
        self.write_partials(partials).await
    }

    async fn partials(
        &self,
        metric: &str,
        window: &str,
        now_ms: TimestampMs,
    ) -> Result<Vec<WindowResult>, CacheError> {
        self.read_partials(metric, window, now_ms).await
    }

    async fn subscribe_partial(&self) -> Result<BoxStream<'static, WindowResult>, CacheError> {
        self.subscribe_to(self.partial_channel()).await
    }
}

impl RedisCache {
    /// Opens a dedicated pub/sub connection (a subscribed Redis connection can
    /// do nothing else) and returns once Redis confirmed the subscription, so
    /// everything published after this returns is received.
    ///
    /// The stream ends when the connection is lost; it does not resubscribe,
    /// since windows published meanwhile would be missing without a sign. The
    /// live endpoint's client reconnects and re-queries instead.
    async fn subscribe_to(
        &self,
        channel: String,
    ) -> Result<BoxStream<'static, WindowResult>, CacheError> {
        let what = format!("subscribing to {channel}");
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| {
                CacheError::Unavailable(format!(
                    "Redis at {}: {what} failed: no connection within {CONNECT_TIMEOUT:?}",
                    self.target
                ))
            })?
            .map_err(|e| self.error(&what, &e))?;
        tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(&channel))
            .await
            .map_err(|_| {
                CacheError::Unavailable(format!(
                    "Redis at {}: {what} failed: no confirmation within {RESPONSE_TIMEOUT:?}",
                    self.target
                ))
            })?
            .map_err(|e| self.error(&what, &e))?;

        let (sender, receiver) = mpsc::channel(LIVE_BUFFER);
        let messages = pubsub.into_on_message();
        tokio::spawn(relay_live(messages, sender, channel.clone()));
        tracing::debug!(channel = %channel, target_addr = %self.target, "live subscription opened");
        Ok(ReceiverStream::new(receiver).boxed())
    }
}

/// Moves live messages from the pub/sub connection into the subscriber's
/// bounded buffer, decoding them on the way. Reading never waits for the
/// subscriber, so a slow one loses windows instead of growing memory; the
/// task (and with it the connection) ends when the subscriber drops its
/// stream or the connection is lost.
async fn relay_live(
    mut messages: redis::aio::PubSubStream,
    sender: mpsc::Sender<WindowResult>,
    channel: String,
) {
    let mut dropped: u64 = 0;
    loop {
        let message = tokio::select! {
            () = sender.closed() => break,
            message = messages.next() => message,
        };
        let Some(message) = message else {
            tracing::warn!(channel = %channel, "live subscription lost its Redis connection");
            break;
        };
        let result = match decode_result(message.get_payload_bytes()) {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(channel = %channel, %error, "skipping an undecodable live message");
                continue;
            }
        };
        match sender.try_send(result) {
            Ok(()) => {
                if dropped > 0 {
                    tracing::warn!(channel = %channel, dropped, "slow live subscriber skipped windows");
                    dropped = 0;
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => dropped += 1,
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
}

/// Why a cached value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("cached value is {0} bytes, shorter than its {HEAD_LEN}-byte head")]
    Truncated(usize),
    #[error(
        "cached value format version {0} is unknown to this build (it reads version {VALUE_VERSION})"
    )]
    UnknownVersion(u8),
    #[error("cached value's window label is cut short or not UTF-8")]
    BadWindow,
    #[error("cached value's aggregate: {0}")]
    State(#[from] pulse_core::codec::record::RecordError),
}

/// Encodes `result` in [the value format](self#value-format).
pub fn encode_result(result: &WindowResult) -> Vec<u8> {
    let state = encode_state(&result.metric, &result.tags, &result.agg, &[]);
    // Labels are a few bytes; one longer than u16 would be a bug upstream, and
    // is cut rather than written with a length that lies.
    let window = truncate_utf8(&result.window, usize::from(u16::MAX));
    let mut out = Vec::with_capacity(HEAD_LEN + window.len() + state.len());
    out.push(VALUE_VERSION);
    out.extend_from_slice(&result.start_ms.to_be_bytes());
    out.extend_from_slice(&result.end_ms.to_be_bytes());
    out.extend_from_slice(&result.series_id.0.to_be_bytes());
    out.extend_from_slice(&(window.len() as u16).to_be_bytes());
    out.extend_from_slice(window.as_bytes());
    out.extend_from_slice(&state);
    out
}

/// Decodes what [`encode_result`] wrote.
pub fn decode_result(bytes: &[u8]) -> Result<WindowResult, ValueError> {
    if bytes.len() < HEAD_LEN {
        return Err(ValueError::Truncated(bytes.len()));
    }
    let (head, rest) = bytes.split_at(HEAD_LEN);
    if head[0] != VALUE_VERSION {
        return Err(ValueError::UnknownVersion(head[0]));
    }
    let be8 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        b
    };
    let start_ms = i64::from_be_bytes(be8(1));
    let end_ms = i64::from_be_bytes(be8(9));
    let series_id = SeriesId(u64::from_be_bytes(be8(17)));
    let window_len = usize::from(u16::from_be_bytes([head[25], head[26]]));
    let (window, state) = rest
        .split_at_checked(window_len)
        .ok_or(ValueError::BadWindow)?;
    let window = std::str::from_utf8(window).map_err(|_| ValueError::BadWindow)?;
    let state = decode_state(state)?;
    Ok(WindowResult {
        series_id,
        metric: state.metric,
        tags: state.tags,
        window: window.to_string(),
        start_ms,
        end_ms,
        agg: state.agg,
    })
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use pulse_core::{Aggregate, Tags};

    use super::*;

    fn sample() -> WindowResult {
        let tags: Tags = [("host".to_string(), "a".to_string())].into();
        let mut agg = Aggregate::new();
        for i in 0..50 {
            agg.add(f64::from(i), i64::from(i));
        }
        WindowResult {
            series_id: SeriesId::of("cpu:usage", &tags),
            metric: "cpu:usage".into(),
            tags,
            window: "10m/1m".into(),
            start_ms: -60_000,
            end_ms: 540_000,
            agg,
        }
    }

    #[test]
    fn values_round_trip() {
        let result = sample();
        let back = decode_result(&encode_result(&result)).unwrap();
        assert_eq!(
            (
                back.series_id,
                &back.metric,
                &back.tags,
                &back.window,
                back.start_ms,
                back.end_ms
            ),
            (
                result.series_id,
                &result.metric,
                &result.tags,
                &result.window,
                result.start_ms,
                result.end_ms
            )
        );
        for kind in pulse_core::AggKind::defaults() {
            assert_eq!(back.agg.value(kind), result.agg.value(kind), "{kind}");
        }
    }

    #[test]
    fn the_start_sits_where_the_write_script_reads_it() {
        let bytes = encode_result(&sample());
        assert_eq!(bytes[0], VALUE_VERSION);
        assert_eq!(i64::from_be_bytes(bytes[1..9].try_into().unwrap()), -60_000);
    }

    #[test]
    fn broken_values_are_errors_not_panics() {
        let good = encode_result(&sample());
        // Every cut through the head, the label or the state's version byte.
        for cut in 0..=HEAD_LEN + "10m/1m".len() {
            assert!(decode_result(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut other_version = good.clone();
        other_version[0] = 2;
        assert!(matches!(
            decode_result(&other_version),
            Err(ValueError::UnknownVersion(2))
        ));
        let mut long_label = good;
        long_label[25] = 0xff;
        assert!(matches!(
            decode_result(&long_label),
            Err(ValueError::BadWindow)
        ));
    }
}
