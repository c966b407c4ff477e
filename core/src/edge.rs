//! The limits of every role's HTTP edge (`[http]` in the config): what one
//! connection, one request head and all request bodies together may take.
//! They hold for the gateway and the dashboard of `pulse up` alike, and the
//! sidecar uses the defaults; the table of what a client gets over each one is
//! in the README ("Limits and protection").

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[http]`: connection, head and decoding limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// How long a client may take to send a request's headers. The same timer
    /// runs while a kept-alive connection waits for its next request, so it is
    /// also the keep-alive idle timeout.
    #[serde(with = "crate::duration::as_label")]
    pub header_timeout: Duration,
    /// How long a client may take to send a request body.
    #[serde(with = "crate::duration::as_label")]
    pub body_timeout: Duration,
    /// Open connections one role (gateway, dashboard, sidecar receiver)
    /// serves at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Longest request target (path and query), in bytes: 414 beyond it.
    pub max_url_bytes: usize,
    /// Most bytes of all request headers together: 431 beyond them.
    pub max_header_bytes: usize,
    /// Bytes all request bodies of one process may hold together while they
    /// are read and decoded (each decompressed byte counts twice: the text and
    /// the points parsed from it). A request that cannot get its share within
    /// 2 s gets 503 with `Retry-After`.
    pub max_decode_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_url_bytes: 8 << 10,
            max_header_bytes: 16 << 10,
            max_decode_bytes: 128 << 20,
        }
    }
}

impl HttpLimits {
    /// The first key whose value would lock every client out, and why.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        let zero_time = |d: Duration| d < Duration::from_millis(100);
        [
            ("http.header_timeout", zero_time(self.header_timeout)),
            ("http.body_timeout", zero_time(self.body_timeout)),
            ("http.max_connections", self.max_connections == 0),
            ("http.max_url_bytes", self.max_url_bytes < 256),
            ("http.max_header_bytes", self.max_header_bytes < 1024),
            ("http.max_decode_bytes", self.max_decode_bytes < 1 << 20),
        ]
        .into_iter()
        .find(|(_, bad)| *bad)
        .map(|(key, _)| {
            (
                key,
                "too small to serve any client: at least 100ms for timeouts, 1 connection, \
                 256 bytes of URL, 1 KiB of headers and 1 MiB of decode budget",
            )
        })
    }
}
