//! Delivering the buffer to the gateway: the oldest sealed segment first, one
//! request per segment, one request at a time (so points of a series arrive in
//! the order they were taken), deleting a segment only after a 2xx.
//!
//! Failures are retried with exponential backoff and jitter, and a
//! `Retry-After` from the gateway is honoured. After
//! `forward.breaker_failures` consecutive failures the circuit opens: nothing
//! is sent for `forward.breaker_cooldown`, then a single probe; while probes
//! fail the cooldown doubles (up to `forward.backoff_max`). Points keep
//! flowing into the buffer meanwhile.
//!
//! A segment is sent again when the sidecar stops between the gateway's 2xx
//! and the deletion of the segment, or when that 2xx is lost on the way back.
//! Every request of a segment carries the segment's idempotency key (derived
//! from what the buffer holds: its sequence number, creation time and bytes,
//! so the same after a restart) and the index of its first point within the
//! segment, so the pipeline drops what it took before (`segment_key`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use tokio::sync::watch;

use pulse_core::backoff::Backoff;
use pulse_core::idempotency::{KEY_HEADER, OFFSET_HEADER};

use crate::buffer::{Batch, Buffer, SegmentInfo};
use crate::config::ForwardConfig;
use crate::encode::content_encoding;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::split::{self, Piece};

/// The longest `Retry-After` taken at its word.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// How often the token file is checked for a new token.
const TOKEN_RECHECK: Duration = Duration::from_secs(10);

/// What to do with a segment after an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The gateway took the batch; `rejected` of its points were invalid and
    /// will never be taken.
    Delivered { rejected: u64 },
    /// Try again later: the gateway, the bus or the network is not available,
    /// or the token is refused (it may be rotated).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The batch is over one of the gateway's request limits: sent in smaller
    /// pieces it may pass (see `split`).
    TooLarge { reason: String },
    /// The batch itself is unacceptable (corrupt, unsupported encoding):
    /// sending it again cannot succeed.
    Drop { reason: String },
}

/// Classifies a gateway answer. Pure, so every status is tested.
pub fn classify(status: StatusCode, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    let error = serde_json::from_slice::<serde_json::Value>(body).ok();
    let code = error
        .as_ref()
        .and_then(|e| e["error"]["code"].as_str())
        .unwrap_or_default()
        .to_string();
    let message = match &error {
        Some(e) => e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        None => String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string(),
    };
    let mut reason = status.to_string();
    if !code.is_empty() {
        reason = format!("{reason} {code}");
    }
    if !message.is_empty() {
        reason = format!("{reason}: {message}");
    }
    let after = retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    match status.as_u16() {
        200..=299 => Outcome::Delivered { rejected: 0 },
        400 if code == "invalid_points" => {
            let rejected = error
                .as_ref()
                .and_then(|e| e["error"]["details"]["rejected"].as_u64())
                .unwrap_or(0);
            Outcome::Delivered { rejected }
        }
        413 => Outcome::TooLarge { reason },
        400 | 415 => Outcome::Drop { reason },
        // 401/403 (a token about to be rotated), 404 (a wrong URL being
        // fixed), 408, 429, 5xx: the points are fine, keep them.
        _ => Outcome::Retry { after, reason },
    }
}

/// The circuit breaker's state, as the `circuit_state` gauge reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// A circuit breaker over consecutive failures, with the retry backoff it
/// shares them with. Pure but for the backoffs' random part: time is passed in.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    /// The pause before the next request after a failure.
    retry: Backoff,
    /// How long the circuit stays open: about the base cooldown when it
    /// opens, twice as long for each failed probe.
    cooldown: Backoff,
    open_until: Option<Instant>,
    /// A backoff or `Retry-After` holding the next request back.
    retry_at: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, retry: Backoff, cooldown: Backoff) -> Breaker {
        Breaker {
            threshold,
            retry,
            cooldown,
            open_until: None,
            retry_at: None,
        }
    }

    pub fn state(&self, now: Instant) -> Circuit {
        match self.open_until {
            None => Circuit::Closed,
            Some(until) if now < until => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.retry.failures()
    }

    /// How long to wait before the next request may go (zero: now).
    pub fn wait(&self, now: Instant) -> Duration {
        [self.open_until, self.retry_at]
            .into_iter()
            .flatten()
            .map(|until| until.saturating_duration_since(now))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub fn on_success(&mut self) {
        self.retry.reset();
        self.cooldown.reset();
        self.open_until = None;
        self.retry_at = None;
    }

    /// Holds the next request back for at least `delay` (a backoff or a
    /// `Retry-After`), without changing the circuit's state.
    pub fn delay_at_least(&mut self, now: Instant, delay: Duration) {
        let until = now + delay;
        if self.retry_at.is_none_or(|at| at < until) {
            self.retry_at = Some(until);
        }
    }

    /// Counts a failure and returns the retry pause it earns; opens the
    /// circuit at the threshold, and re-opens it for twice as long when a
    /// half-open probe fails.
    pub fn on_failure(&mut self, now: Instant) -> Duration {
        let pause = self.retry.fail();
        match self.state(now) {
            Circuit::HalfOpen => self.open_until = Some(now + self.cooldown.fail()),
            Circuit::Closed if self.failures() >= self.threshold => {
                self.open_until = Some(now + self.cooldown.fail());
            }
            _ => {}
        }
        pause
    }
}

/// The token a token file holds: its first one. The file is the pipeline's
/// ingest token Secret, which may list several tokens (newline or comma
/// separated) for the gateway to accept while they are rotated.
fn first_token(text: &str) -> &str {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .find(|token| !token.is_empty())
        .unwrap_or_default()
}

/// The bearer token, from a file that is re-read when it changes (a rotated
/// Secret), at most every [`TOKEN_RECHECK`], or at once after a 401/403.
pub struct Token {
    path: Option<PathBuf>,
    value: Option<String>,
    checked: Option<Instant>,
    stamp: Option<(SystemTime, u64)>,
}

impl Token {
    pub fn new(path: Option<PathBuf>) -> Token {
        Token {
            path,
            value: None,
            checked: None,
            stamp: None,
        }
    }

    /// The current token; `refresh` forces a look at the file.
    pub fn get(&mut self, refresh: bool) -> Option<&str> {
        let path = self.path.as_ref()?;
        let due = refresh || self.checked.is_none_or(|at| at.elapsed() >= TOKEN_RECHECK);
        if due {
            self.checked = Some(Instant::now());
            match std::fs::metadata(path) {
                Ok(meta) => {
                    let stamp = meta.modified().ok().map(|m| (m, meta.len()));
                    if stamp.is_none() || stamp != self.stamp || self.value.is_none() {
                        match std::fs::read_to_string(path) {
                            Ok(text) => {
                                let token = first_token(&text).to_string();
                                if self.value.is_some() && self.value.as_deref() != Some(&token) {
                                    tracing::info!(message = "The token file changed; using the new token.", path = %path.display());
                                }
                                self.value = (!token.is_empty()).then_some(token);
                                self.stamp = stamp;
                            }
                            Err(error) => {
                                tracing::warn!(message = "Cannot read the token file; keeping the last token.", path = %path.display(), %error);
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(message = "Cannot read the token file; keeping the last token.", path = %path.display(), %error);
                }
            }
        }
        self.value.as_deref()
    }
}

/// Sends the buffer to the gateway until told to stop.
pub struct Forwarder {
    pub buffer: Arc<Buffer>,
    pub client: reqwest::Client,
    pub url: String,
    pub token: Token,
    pub config: ForwardConfig,
    pub metrics: Arc<Metrics>,
    pub circuit: Arc<std::sync::Mutex<(Circuit, u32)>>,
    /// Bound on the NDJSON of one segment when it is decompressed to be cut.
    pub max_segment_text: usize,
}

impl Forwarder {
    /// Delivers segments as they are sealed. Once `stop` carries a deadline it
    /// keeps going until the buffer is empty or the deadline has passed (a
    /// dropped sender means now); what is left stays on
    /// disk for the next start.
    pub async fn run(mut self, mut stop: watch::Receiver<Option<Instant>>) {
        let mut breaker = Breaker::new(
            self.config.breaker_failures,
            Backoff::new(self.config.backoff_min, self.config.backoff_max),
            Backoff::new(self.config.breaker_cooldown, self.config.backoff_max),
        );
        let mut deadline: Option<Instant> = None;
        // The segment being sent, and its pieces not yet delivered.
        let mut current: Option<(SegmentInfo, Batch, VecDeque<Piece>)> = None;
        let mut key = String::new();
        let mut refresh_token = false;
        loop {
            if current.is_none() {
                let info = loop {
                    if let Some(info) = self.buffer.take_next() {
                        break Some(info);
                    }
                    if deadline.is_some() {
                        break None;
                    }
                    tokio::select! {
                        () = self.buffer.sealed() => {}
                        _ = stop.changed() => deadline = Some(stop.borrow().unwrap_or_else(Instant::now)),
                    }
                };
                let Some(info) = info else {
                    tracing::info!(message = "Buffer delivered; forwarder stopped.");
                    return;
                };
                match self.load(&info).await {
                    Some((body, batch)) => {
                        key = segment_key(&batch, &body);
                        let pieces = self.fit(&info, &batch, body);
                        current = Some((info, batch, pieces));
                    }
                    None => continue,
                }
            }
            let Some((info, batch, pieces)) = &mut current else {
                continue;
            };
            let Some(piece) = pieces.front().cloned() else {
                self.delivered(info, batch);
                current = None;
                continue;
            };
            // Wait out the breaker or the backoff, but not past the deadline.
            let now = Instant::now();
            let wait = breaker.wait(now);
            if !wait.is_zero() {
                let until = deadline.map_or(now + wait, |d| d.min(now + wait));
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {}
                    _ = stop.changed(), if deadline.is_none() => deadline = Some(stop.borrow().unwrap_or_else(Instant::now)),
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    self.buffer.release(info.seq);
                    tracing::warn!(
                        message = "Shutdown grace period over; undelivered points stay in the buffer directory.",
                        points = self.buffer.depth().1
                    );
                    return;
                }
                if !breaker.wait(Instant::now()).is_zero() {
                    continue;
                }
            }
            self.set_circuit(&breaker);
            let token = self.token.get(refresh_token).map(str::to_string);
            refresh_token = false;
            let started = Instant::now();
            let outcome = self.send(&piece, &key, batch, token.as_deref()).await;
            let elapsed = started.elapsed().as_secs_f64();
            let label = match &outcome {
                Outcome::Delivered { rejected: 0 } => "delivered",
                Outcome::Delivered { .. } => "partially_rejected",
                Outcome::Retry { .. } => "retry",
                Outcome::TooLarge { .. } if piece.points > 1 => "split",
                Outcome::TooLarge { .. } | Outcome::Drop { .. } => "dropped",
            };
            self.metrics
                .forward_requests
                .get_or_create(&OutcomeLabels { outcome: label })
                .inc();
            self.metrics
                .forward_request_duration
                .get_or_create(&OutcomeLabels { outcome: label })
                .observe(elapsed);
            match outcome {
                Outcome::Delivered { rejected } => {
                    if breaker.failures() > 0 {
                        tracing::info!(
                            message = "The gateway takes batches again.",
                            after_failures = breaker.failures()
                        );
                    }
                    breaker.on_success();
                    let delivered = piece.points.saturating_sub(rejected);
                    self.metrics.forwarded_points.inc_by(delivered);
                    if rejected > 0 {
                        self.metrics.dropped("rejected_by_gateway", rejected);
                        tracing::warn!(
                            message = "The gateway rejected points of a batch as invalid; they are dropped.",
                            rejected,
                            segment = info.seq
                        );
                    }
                    pieces.pop_front();
                }
                Outcome::TooLarge { reason } if piece.points > 1 => {
                    breaker.on_success();
                    let halved = split::halve(
                        batch.codec,
                        &piece,
                        self.config.max_decompressed_bytes,
                        self.max_segment_text,
                    );
                    pieces.pop_front();
                    match halved {
                        Ok(halves) => {
                            tracing::info!(message = "The gateway refused a batch as too large; sending it in smaller pieces.", %reason, points = piece.points, pieces = halves.len(), segment = info.seq);
                            for half in halves.into_iter().rev() {
                                pieces.push_front(half);
                            }
                        }
                        Err(error) => {
                            self.metrics.dropped("corrupt", piece.points);
                            tracing::error!(message = "Cannot split a batch the gateway refused as too large; its points are dropped.", %error, points = piece.points, segment = info.seq);
                        }
                    }
                }
                Outcome::TooLarge { reason } => {
                    breaker.on_success();
                    self.metrics.dropped("too_large", piece.points);
                    tracing::error!(message = "The gateway refused a single point as too large for its limits; it is dropped, since sending it again cannot succeed.", %reason, segment = info.seq);
                    pieces.pop_front();
                }
                Outcome::Drop { reason } => {
                    breaker.on_success();
                    self.metrics.dropped("rejected_by_gateway", piece.points);
                    tracing::error!(message = "The gateway refused a batch as a whole; it is dropped, since sending it again cannot succeed.", %reason, points = piece.points, segment = info.seq);
                    pieces.pop_front();
                }
                Outcome::Retry { after, reason } => {
                    let pause = breaker.on_failure(Instant::now());
                    self.metrics.forward_retries.inc();
                    refresh_token = reason.starts_with("401") || reason.starts_with("403");
                    let delay = pause.max(after.unwrap_or_default());
                    breaker.delay_at_least(Instant::now(), delay);
                    tracing::warn!(message = "Cannot deliver a batch to the gateway; it stays in the buffer and is retried.", %reason, failures = breaker.failures(), retry_in_ms = delay.as_millis() as u64, circuit = ?breaker.state(Instant::now()), queued_points = self.buffer.depth().1);
                }
            }
            self.set_circuit(&breaker);
        }
    }

    /// The segment's pieces: its body as it is, or cut to the gateway's
    /// `max_points_per_request` when it holds more (written before the limit
    /// was known, or by a larger `batch.max_points`).
    fn fit(&self, info: &SegmentInfo, batch: &Batch, body: Bytes) -> VecDeque<Piece> {
        let whole = Piece {
            body,
            points: batch.points,
            first: 0,
        };
        let max_points = self.config.max_points_per_request;
        if batch.points <= max_points as u64 {
            return VecDeque::from([whole]);
        }
        let cut =
            split::decompress(batch.codec, &whole.body, self.max_segment_text).and_then(|text| {
                split::pieces(
                    batch.codec,
                    &text,
                    max_points,
                    self.config.max_decompressed_bytes,
                    0,
                )
                .map_err(|e| e.to_string())
            });
        match cut {
            Ok(pieces) => pieces.into(),
            Err(error) => {
                // Sent whole: a 413 tries the split again, piece by piece.
                tracing::warn!(message = "Cannot cut a batch to the gateway's limits; sending it whole.", %error, segment = info.seq);
                VecDeque::from([whole])
            }
        }
    }

    /// Every piece of the segment is answered: count it and let it go.
    fn delivered(&self, info: &SegmentInfo, batch: &Batch) {
        let delay_ms = pulse_core::now_ms().saturating_sub(batch.created_ms).max(0);
        self.metrics.forward_delay.observe(delay_ms as f64 / 1000.0);
        self.buffer.ack(info.seq);
    }

    /// Reads a segment for sending; a segment that cannot be read is dropped.
    async fn load(&self, info: &SegmentInfo) -> Option<(Bytes, Batch)> {
        let buffer = Arc::clone(&self.buffer);
        let info = *info;
        let read = tokio::task::spawn_blocking(move || buffer.read(&info)).await;
        match read {
            Ok(Ok(mut batch)) if batch.points > 0 => {
                let body = Bytes::from(std::mem::take(&mut batch.body));
                Some((body, batch))
            }
            Ok(Ok(_)) => {
                self.buffer.ack(info.seq);
                None
            }
            Ok(Err(error)) => {
                tracing::error!(message = "Cannot read a buffer segment; it is dropped.", segment = info.seq, %error);
                self.metrics.dropped("corrupt", info.points);
                self.buffer.ack(info.seq);
                None
            }
            Err(error) => {
                tracing::error!(message = "Reading a buffer segment failed.", segment = info.seq, %error);
                self.buffer.release(info.seq);
                None
            }
        }
    }

    async fn send(&self, piece: &Piece, key: &str, batch: &Batch, token: Option<&str>) -> Outcome {
        let mut request = self
            .client
            .post(&self.url)
            .timeout(self.config.timeout)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::CONTENT_ENCODING, content_encoding(batch.codec))
            .header(KEY_HEADER, key)
            .header(OFFSET_HEADER, piece.first)
            .body(piece.body.clone());
        if let Some(token) = token {
            match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(value) => request = request.header(header::AUTHORIZATION, value),
                Err(_) => tracing::warn!(
                    message =
                        "The token holds characters a header cannot carry; sending without it."
                ),
            }
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = response.bytes().await.unwrap_or_default();
                classify(status, retry_after.as_deref(), &body)
            }
            Err(error) => Outcome::Retry {
                after: None,
                reason: format!("request failed: {}", error_chain(&error)),
            },
        }
    }

    fn set_circuit(&self, breaker: &Breaker) {
        let state = breaker.state(Instant::now());
        self.metrics.circuit_state.set(state as i64);
        *pulse_core::sync::lock(&self.circuit) = (state, breaker.failures());
    }
}

/// The idempotency key of a segment: a hash of its sequence number, creation
/// time and compressed bytes, all read back from the buffer, so it is the same
/// for every send of the segment, before and after a restart, and differs
/// between segments (and between sidecars, whose segments hold other points
/// or were made at other times).
pub fn segment_key(batch: &Batch, body: &[u8]) -> String {
    let mut identity = batch.seq.to_le_bytes().to_vec();
    identity.extend_from_slice(&batch.created_ms.to_le_bytes());
    let key = pulse_core::idempotency::batch_key(&identity, body);
    let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
    format!("pulse-sidecar-{hex}")
}

/// `error: cause: cause` — reqwest's top-level message alone hides the cause
/// (connection refused, timed out).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_what_a_resend_could_change() {
        assert_eq!(
            classify(
                StatusCode::ACCEPTED,
                None,
                br#"{"accepted":3,"rejected":0}"#
            ),
            Outcome::Delivered { rejected: 0 }
        );
        let partial = br#"{"error":{"code":"invalid_points","message":"m","details":{"accepted":2,"rejected":3}}}"#;
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, None, partial),
            Outcome::Delivered { rejected: 3 }
        );
        assert!(matches!(
            classify(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                br#"{"error":{"code":"too_many_points","message":"m"}}"#
            ),
            Outcome::TooLarge { .. }
        ));
        for status in [StatusCode::BAD_REQUEST, StatusCode::UNSUPPORTED_MEDIA_TYPE] {
            assert!(matches!(
                classify(
                    status,
                    None,
                    br#"{"error":{"code":"invalid_json","message":"m"}}"#
                ),
                Outcome::Drop { .. }
            ));
        }
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, Some("7"), b"{}"),
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "503 Service Unavailable".into()
            }
        );
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some("100000"), b""),
            Outcome::Retry {
                after: Some(MAX_RETRY_AFTER),
                ..
            }
        ));
        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
        ] {
            assert!(
                matches!(
                    classify(status, None, b"oops"),
                    Outcome::Retry { after: None, .. }
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn the_breaker_opens_at_the_threshold_probes_and_backs_off_while_probes_fail() {
        let t0 = Instant::now();
        let cooldown = Duration::from_secs(5);
        let retry = Backoff::seeded(Duration::from_millis(100), Duration::from_secs(30), 1);
        let opening = Backoff::seeded(cooldown, Duration::from_secs(30), 2);
        let mut breaker = Breaker::new(3, retry, opening);
        let first = breaker.on_failure(t0);
        assert!(first <= Duration::from_millis(100), "{first:?}");
        breaker.on_failure(t0);
        assert_eq!(breaker.state(t0), Circuit::Closed);
        let third = breaker.on_failure(t0);
        assert!(
            third > Duration::from_millis(200),
            "the retry pause doubles: {third:?}"
        );
        assert_eq!(breaker.state(t0), Circuit::Open);
        let open = breaker.wait(t0);
        assert!(open >= cooldown / 2 && open <= cooldown, "{open:?}");
        let probe = t0 + open;
        assert_eq!(breaker.state(probe), Circuit::HalfOpen);
        assert_eq!(breaker.wait(probe), Duration::ZERO);
        breaker.on_failure(probe);
        assert_eq!(breaker.state(probe), Circuit::Open);
        let reopened = breaker.wait(probe);
        assert!(
            reopened >= cooldown && reopened <= cooldown * 2,
            "a failed probe doubles the cooldown: {reopened:?}"
        );
        breaker.on_success();
        assert_eq!(breaker.state(probe), Circuit::Closed);
        assert_eq!(breaker.failures(), 0);
        breaker.delay_at_least(probe, Duration::from_secs(2));
        assert_eq!(breaker.state(probe), Circuit::Closed);
        assert_eq!(breaker.wait(probe), Duration::from_secs(2));
    }

    #[test]
    fn the_token_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut token = Token::new(Some(path.clone()));
        assert_eq!(token.get(false), Some("first"));
        std::fs::write(&path, "second-and-longer").unwrap();
        assert_eq!(
            token.get(false),
            Some("first"),
            "checked at most every 10 s"
        );
        assert_eq!(token.get(true), Some("second-and-longer"));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            token.get(true),
            Some("second-and-longer"),
            "a vanished file keeps the last token"
        );
        assert_eq!(Token::new(None).get(true), None);
    }

    #[test]
    fn a_token_file_listing_several_tokens_gives_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for (text, expected) in [
            ("new-token\nold-token\n", Some("new-token")),
            (" new-token, old-token", Some("new-token")),
            ("\n\n  only\n", Some("only")),
            (" \n,\n", None),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                Token::new(Some(path.clone())).get(true),
                expected,
                "{text:?}"
            );
        }
    }
}
