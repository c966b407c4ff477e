//! Every identity Pulse derives from a pipeline's `(namespace, name)`: Kafka
//! topics, the consumer group, the Redis key prefix, the PostgreSQL schema,
//! the Kubernetes object names and URLs, and the ports they listen on.
//!
//! Each mapping is injective: two different pairs never get the same topic,
//! group, prefix, schema or object name, since a shared name means shared
//! offsets, shared data, and a `deletionPolicy: Delete` of one pipeline
//! dropping another's. Two techniques, chosen per target alphabet:
//!
//! - **Escaping** where the alphabet has room for an escape character: the
//!   separator and the escape character are percent-escaped inside each part,
//!   so the first separator splits the pair again (group, cache prefix).
//! - **A readable prefix plus a hash of the exact pair** where it has not, or
//!   where the limit is shorter than the pair can be: PostgreSQL schemas
//!   (`[a-z0-9_]`, 63 bytes), and topics whose namespace holds a `.`.
//!   64 bits of xxh64 over a length-framed encoding of the pair.
//!
//! Names are kept equal to those of earlier releases wherever those were
//! already unambiguous (topics of every Kubernetes namespace, groups and
//! prefixes of namespaces without `-`), so an upgrade finds its topics. The
//! schema changed for everyone; [`legacy_schema`] gives the old one, which the
//! store keeps when it exists and no other pipeline claimed it
//! (`pulse_engine::store::postgres::claim_schema`).

use xxhash_rust::xxh64::xxh64;

/// Kafka's longest topic name.
const MAX_TOPIC_BYTES: usize = 249;
/// PostgreSQL's longest identifier (`NAMEDATALEN - 1`).
pub const MAX_SCHEMA_BYTES: usize = 63;

/// Container port of the gateway (`gateway.listen`'s default).
pub const GATEWAY_PORT: u16 = 9000;
/// Health and metrics port of the processor (`processor.listen`'s default).
pub const PROCESSOR_PORT: u16 = 9100;
/// Port of the dashboard (`dashboard.listen`'s default).
pub const DASHBOARD_PORT: u16 = 8080;
/// The sidecar's HTTP receiver port.
pub const SIDECAR_HTTP_PORT: u16 = 9091;
/// The sidecar's admin port (`/healthz`, `/readyz`, `/metrics`).
pub const SIDECAR_ADMIN_PORT: u16 = 9092;
/// The sidecar's StatsD (UDP) receiver port.
pub const SIDECAR_STATSD_PORT: u16 = 8125;
/// The sidecar's OTLP/HTTP receiver port.
pub const SIDECAR_OTLP_PORT: u16 = 4318;

/// The Kafka topic of a pipeline's points: `pulse.<namespace>.<name>.points`.
pub fn points_topic(namespace: &str, name: &str) -> String {
    topic(namespace, name, "points")
}

/// The Kafka topic of a pipeline's anomalies: `pulse.<namespace>.<name>.anomalies`.
pub fn anomalies_topic(namespace: &str, name: &str) -> String {
    topic(namespace, name, "anomalies")
}

/// `pulse.<namespace>.<name>.<kind>` when the namespace holds no `.` (the
/// first `.` after `pulse.` then ends it) and the whole is a valid topic;
/// otherwise `pulse..<readable>.<hash>.<kind>`, whose empty namespace field
/// no plain name has.
fn topic(namespace: &str, name: &str, kind: &str) -> String {
    let plain = format!("pulse.{namespace}.{name}.{kind}");
    let fits = !namespace.is_empty()
        && !namespace.contains('.')
        && plain.len() <= MAX_TOPIC_BYTES
        && plain.bytes().all(is_topic_byte);
    if fits {
        return plain;
    }
    let readable = readable(&format!("{namespace}_{name}"), 200, |b| {
        is_topic_byte(b) && b != b'.'
    });
    format!("pulse..{readable}.{}.{kind}", pair_hash(namespace, name))
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// The Kafka consumer group of a pipeline's processors:
/// `pulse-<namespace>-<name>`, with `-` and `%` of the namespace and `%` of
/// the name percent-escaped (`team-a` → `team%2da`). The group holds no
/// state (offsets live in the store), so a changed group loses nothing.
pub fn consumer_group(namespace: &str, name: &str) -> String {
    format!("pulse-{}-{}", escape(namespace, b"-%"), escape(name, b"%"))
}

/// The prefix of every Redis key of a pipeline: `pulse:<namespace>:<name>`,
/// with `:` and `%` percent-escaped in both parts, so no prefix is another's
/// prefix followed by `:`.
pub fn cache_prefix(namespace: &str, name: &str) -> String {
    format!("pulse:{}:{}", escape(namespace, b":%"), escape(name, b":%"))
}

/// The PostgreSQL schema of a pipeline:
/// `pulse_<namespace>_<name>_<16 hex digits>`, the readable part lowercased
/// with every other character `_` and cut so the whole fits 63 bytes, the
/// hex digits a hash of the exact pair (the readable part alone is
/// ambiguous: `a-b`/`c` and `a`/`b-c`).
pub fn schema(namespace: &str, name: &str) -> String {
    let budget = MAX_SCHEMA_BYTES - "pulse__".len() - 16;
    let readable = readable(&format!("{namespace}_{name}"), budget, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit()
    });
    format!("pulse_{readable}_{}", pair_hash(namespace, name))
}

/// The schema earlier releases derived, `pulse_<namespace>_<name>` with every
/// character outside `[a-z0-9_]` as `_` (cut with an FNV hash beyond 63
/// bytes). Not injective: only for finding a pipeline's data after an upgrade.
pub fn legacy_schema(namespace: &str, name: &str) -> String {
    let sanitise = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '_') => c,
                _ => '_',
            })
            .collect()
    };
    let full = format!("pulse_{}_{}", sanitise(namespace), sanitise(name));
    if full.len() <= MAX_SCHEMA_BYTES {
        return full;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    format!("{}_{hash:08x}", &full[..MAX_SCHEMA_BYTES - 9])
}

/// A role of the data path the operator deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Gateway,
    Processor,
    Dashboard,
}

impl Component {
    /// Every role, in the order `pulse up` starts them.
    pub const ALL: [Component; 3] = [
        Component::Gateway,
        Component::Processor,
        Component::Dashboard,
    ];

    /// The `app.kubernetes.io/component` value and the `pulse <role>` subcommand.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Processor => "processor",
            Component::Dashboard => "dashboard",
        }
    }

    /// What the role serves on its listener, for the start-up banner.
    pub fn routes(self) -> &'static str {
        match self {
            Component::Gateway => "POST /metrics, POST /v1/metrics, /healthz, /readyz, /metrics",
            Component::Processor => "/healthz, /readyz, /metrics",
            Component::Dashboard => {
                "web UI at /, GET /dashboard, /api/v1/query_range, /api/v1/metrics, /api/v1/anomalies, /api/v1/live, \
                 /healthz, /readyz, /metrics"
            }
        }
    }

    /// Whether the role writes to or reads from the bus.
    pub fn uses_bus(self) -> bool {
        matches!(self, Component::Gateway | Component::Processor)
    }

    /// Whether the role reads or writes the store and cache.
    pub fn uses_store(self) -> bool {
        matches!(self, Component::Processor | Component::Dashboard)
    }
}

// Kubernetes object names live in the owner's namespace and are made from
// the owner's name alone. Each kind of object gets a suffix no other name of
// that kind ends with (`-gateway`, `-processor`, `-dashboard`, `-pulse`,
// `-pulse-config`, `-dashboard-config`), so distinct owners never share one.
// Owners are at most 50 characters (CEL rules of both CRDs), so every name
// fits a Service's 63-character DNS label.

/// Name of an object the operator makes for `owner` (a pipeline or dashboard):
/// `<owner>-<component>`, e.g. `checkout-gateway`.
pub fn object_name(owner: &str, component: Component) -> String {
    format!("{owner}-{}", component.as_str())
}

/// Name of a pipeline's ConfigMap holding the rendered `pulse.toml`.
pub fn config_map_name(pipeline: &str) -> String {
    format!("{pipeline}-pulse-config")
}

/// Name of a dashboard's ConfigMap holding its `pulse.toml` (the pipeline's
/// config plus the dashboard's panels); not `config_map_name`, so a dashboard
/// and a pipeline of the same name do not collide.
pub fn dashboard_config_map_name(dashboard: &str) -> String {
    format!("{dashboard}-dashboard-config")
}

/// Name of the ServiceAccount a pipeline's pods run as.
pub fn service_account_name(pipeline: &str) -> String {
    format!("{pipeline}-pulse")
}

/// In-cluster URL of a dashboard's page.
pub fn dashboard_url(namespace: &str, dashboard: &str) -> String {
    format!(
        "http://{}.{namespace}.svc:{DASHBOARD_PORT}/d/{dashboard}",
        object_name(dashboard, Component::Dashboard)
    )
}

/// In-cluster URL of a pipeline's gateway, as the sidecar and docs use it.
pub fn gateway_url(namespace: &str, pipeline: &str) -> String {
    format!(
        "http://{}.{namespace}.svc:{GATEWAY_PORT}",
        object_name(pipeline, Component::Gateway)
    )
}

/// `part` with every byte of `special`, and every byte outside printable
/// ASCII, written `%xx`. `%` must be in `special`, which makes the encoding
/// decodable and so injective.
fn escape(part: &str, special: &[u8]) -> String {
    debug_assert!(special.contains(&b'%'));
    let mut out = String::with_capacity(part.len());
    for &b in part.as_bytes() {
        if special.contains(&b) || !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("%{b:02x}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// `text` lowercased where `keep` refuses the byte as it is, every byte `keep`
/// still refuses as `_`, cut to `max` bytes: the human-readable part of a
/// hashed name, which the hash makes unique.
fn readable(text: &str, max: usize, keep: impl Fn(u8) -> bool) -> String {
    text.bytes()
        .map(|b| {
            let lower = b.to_ascii_lowercase();
            if keep(b) {
                char::from(b)
            } else if keep(lower) {
                char::from(lower)
            } else {
                '_'
            }
        })
        .take(max)
        .collect()
}

/// 16 hex digits of xxh64 over the pair, framed by the namespace's length so
/// that no two pairs hash the same input.
fn pair_hash(namespace: &str, name: &str) -> String {
    let mut framed = Vec::with_capacity(8 + namespace.len() + name.len());
    framed.extend_from_slice(&(namespace.len() as u64).to_be_bytes());
    framed.extend_from_slice(namespace.as_bytes());
    framed.extend_from_slice(name.as_bytes());
    format!("{:016x}", xxh64(&framed, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every derived identity of a pair, labelled.
    fn identities(ns: &str, name: &str) -> [(&'static str, String); 5] {
        [
            ("points topic", points_topic(ns, name)),
            ("anomalies topic", anomalies_topic(ns, name)),
            ("consumer group", consumer_group(ns, name)),
            ("cache prefix", cache_prefix(ns, name)),
            ("schema", schema(ns, name)),
        ]
    }

    #[test]
    fn the_collision_of_the_issue_is_gone() {
        for ((what, a), (_, b)) in identities("a-b", "c")
            .into_iter()
            .zip(identities("a", "b-c"))
        {
            assert_ne!(a, b, "{what}");
        }
        assert_eq!(legacy_schema("a-b", "c"), legacy_schema("a", "b-c"));
    }

    #[test]
    fn names_stay_those_of_earlier_releases_where_they_were_unambiguous() {
        assert_eq!(
            points_topic("shop", "checkout"),
            "pulse.shop.checkout.points"
        );
        assert_eq!(
            anomalies_topic("team-a", "web.v2"),
            "pulse.team-a.web.v2.anomalies"
        );
        assert_eq!(consumer_group("shop", "check-out"), "pulse-shop-check-out");
        assert_eq!(consumer_group("team-a", "web"), "pulse-team%2da-web");
        assert_eq!(cache_prefix("team-a", "web"), "pulse:team-a:web");
        assert_eq!(legacy_schema("Team-A", "web.v2"), "pulse_team_a_web_v2");
    }

    #[test]
    fn hashed_names_are_readable_bounded_and_stable() {
        let s = schema("shop", "checkout");
        assert!(s.starts_with("pulse_shop_checkout_"), "{s}");
        assert_eq!(s, schema("shop", "checkout"), "stable");
        // Pinned: a changed hash would orphan every pipeline's schema.
        assert_eq!(s, "pulse_shop_checkout_90a15031ac4748b4");
        assert_eq!(
            schema("local", "default"),
            "pulse_local_default_54faf70a259caf19"
        );
        let long = schema(&"n".repeat(63), &"p".repeat(50));
        assert_eq!(long.len(), MAX_SCHEMA_BYTES);
        let t = points_topic("a.b", "c");
        assert!(
            t.starts_with("pulse..a_b_c.") && t.ends_with(".points"),
            "{t}"
        );
        assert!(points_topic(&"x".repeat(200), &"y".repeat(200)).len() <= MAX_TOPIC_BYTES);
    }

    fn valid_schema(s: &str) -> bool {
        s.len() <= MAX_SCHEMA_BYTES
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    fn valid_topic(t: &str) -> bool {
        !t.is_empty() && t.len() <= MAX_TOPIC_BYTES && t.bytes().all(is_topic_byte)
    }

    /// Parts that make collisions likely: few letters, many separators and
    /// escape characters, some non-ASCII, and long ones for the cut names.
    fn part() -> impl Strategy<Value = String> {
        prop_oneof!["[ab.:%_-]{1,6}", "[a-zA-Z0-9.:%_☃-]{1,12}", "[ab-]{40,70}",]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn distinct_pairs_never_collide(a in (part(), part()), b in (part(), part())) {
            prop_assume!(a != b);
            for ((what, x), (_, y)) in identities(&a.0, &a.1).into_iter().zip(identities(&b.0, &b.1)) {
                prop_assert_ne!(x, y, "{} of {:?} and {:?}", what, a, b);
            }
        }

        #[test]
        fn names_fit_their_systems(ns in part(), name in part()) {
            prop_assert!(valid_schema(&schema(&ns, &name)));
            prop_assert!(valid_topic(&points_topic(&ns, &name)));
            prop_assert!(valid_topic(&anomalies_topic(&ns, &name)));
        }

        /// A pair that shares one part with another still never collides:
        /// the shapes a hand-written strategy would most likely miss.
        #[test]
        fn shifting_a_separator_between_parts_never_collides(
            head in "[a-z]{1,5}", tail in "[a-z]{1,5}", sep in "[-._:%]"
        ) {
            let left = (format!("{head}{sep}{tail}"), tail.clone());
            let right = (head.clone(), format!("{tail}{sep}{tail}"));
            for ((what, x), (_, y)) in identities(&left.0, &left.1).into_iter().zip(identities(&right.0, &right.1)) {
                prop_assert_ne!(x, y, "{}", what);
            }
        }
    }
}
