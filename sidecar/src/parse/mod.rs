//! Pure parsers of the formats apps already speak, each turning bytes into
//! unchecked points (or a reason per rejected item). No I/O here: the receivers
//! feed these, so the parsers are tested, property-tested and fuzzed on their own.
//!
//! Every point still goes through `pulse_core::validate`, so the sidecar never
//! buffers a point the gateway would refuse.

pub mod otlp;
pub mod otlp_buckets;
pub mod prometheus;
pub mod statsd;

/// Why one item of an input was refused. `reason` is a short fixed label (the
/// `reason` of the rejected-points metric); `message` says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
        }
    }

    pub fn malformed(message: impl Into<String>) -> Rejection {
        Rejection::new("malformed", message)
    }
}

/// A metric name in Pulse's alphabet (`[A-Za-z_][A-Za-z0-9_.:-]*`): every other
/// character becomes `_`, and a leading digit gets a `_` in front, the way
/// StatsD servers and OpenTelemetry's Prometheus exporter sanitise names, so a
/// slightly unusual name is kept rather than lost.
pub fn sanitize_name(name: &str) -> String {
    sanitize(name, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
    })
}

/// A tag key in Pulse's alphabet (`[A-Za-z_][A-Za-z0-9_.-]*`), sanitised the
/// same way as names.
pub fn sanitize_tag_key(key: &str) -> String {
    sanitize(key, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
    })
}

/// The one spelling of a bucket bound (`le`) or quantile, whichever source
/// wrote it: OpenMetrics' (and Prometheus 3's) canonical float text, `5.0`,
/// `0.25`, `+Inf`, so `le="5"` from one exporter and `le="5.0"` from another
/// are the same series. Text that is not a number is kept as it is.
pub fn canonical_bound(text: &str) -> String {
    match text.parse::<f64>() {
        Ok(value) => bound_text(value),
        Err(_) => text.to_string(),
    }
}

/// [`canonical_bound`] of a number.
pub fn bound_text(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // `{:?}` is the shortest text that reads back to the same float and
        // always has a `.` or an exponent (`5.0`, `0.005`, `1e21`).
        format!("{value:?}")
    }
}

fn sanitize(text: &str, allowed: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(text.len() + 1);
    if text.starts_with(|c: char| !(c.is_ascii_alphabetic() || c == '_')) {
        out.push('_');
    }
    out.extend(text.chars().map(|c| if allowed(c) { c } else { '_' }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys_are_sanitised_not_refused() {
        assert_eq!(
            sanitize_name("http.server.duration"),
            "http.server.duration"
        );
        assert_eq!(sanitize_name("a b/c"), "a_b_c");
        assert_eq!(sanitize_name("5xx"), "_5xx");
        assert_eq!(sanitize_name("-x"), "_-x");
        assert_eq!(sanitize_tag_key("k8s.pod:name"), "k8s.pod_name");
        assert_eq!(sanitize_name(""), "");
    }

    #[test]
    fn bucket_bounds_have_one_spelling() {
        assert_eq!(canonical_bound("5"), "5.0");
        assert_eq!(canonical_bound("5.0"), "5.0");
        assert_eq!(canonical_bound("0.005"), "0.005");
        assert_eq!(canonical_bound("+Inf"), "+Inf");
        assert_eq!(canonical_bound("1e3"), "1000.0");
        assert_eq!(bound_text(0.25), "0.25");
        assert_eq!(canonical_bound("x"), "x");
    }
}
