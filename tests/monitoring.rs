//! Watching Pulse: the chart's ServiceMonitor, PrometheusRule and Grafana
//! dashboards, and the operator's PodMonitors, as a cluster would get them.
//!
//! - Every metric the alert rules and the dashboards query is one Pulse
//!   exports: the names are collected from the `/metrics` of a running
//!   `pulse up` (gateway, processor, dashboard), the sidecar's registry and
//!   the operator's, and every PromQL expression is checked against them.
//! - `promtool check rules` (Debian's `prometheus` package) parses the rules.
//! - The Prometheus Operator's kinds validate against their published JSON
//!   schemas, checked in under tests/data/monitoring.coreos.com/, with the
//!   `jsonschema` Python module kubernetes-validate brings.
//!
//! Without helm, promtool or that module these tests skip with a note,
//! unless env CI is set: then they fail, as .ci/run installs all three.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use prometheus_client::registry::Registry;
use pulse_core::config::Config;
use serde::Deserialize;
use serde_json::Value;

use common::tools;

const NAMESPACE: &str = "pulse-system";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The chart rendered with `values` (a file under charts/pulse/ci/, or the
/// defaults with `--set` pairs), `None` without helm.
fn render(values: &[&str]) -> Option<Vec<Value>> {
    let helm = tools::helm_program();
    let missing: Vec<String> = tools::helm_missing(&helm).into_iter().collect();
    if !tools::present_or_skip("the monitoring chart tests", &missing) {
        return None;
    }
    let mut args: Vec<String> = [
        "template",
        "pulse",
        &repo().join("charts/pulse").display().to_string(),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.37.0",
    ]
    .map(String::from)
    .into();
    args.extend(values.iter().map(|v| v.to_string()));
    let out = tools::helm(&helm, &args);
    assert!(
        out.status.success(),
        "helm template {values:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    Some(
        serde_norway::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).expect("helm renders valid YAML"))
            .filter(|doc: &Value| !doc.is_null())
            .collect(),
    )
}

/// Everything on: charts/pulse/ci/all-values.yaml.
fn render_all() -> Option<Vec<Value>> {
    let file = repo().join("charts/pulse/ci/all-values.yaml");
    render(&["--values", &file.display().to_string()])
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn dashboards(objects: &[Value]) -> Vec<&Value> {
    of_kind(objects, "ConfigMap")
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["grafana_dashboard"].is_string())
        .collect()
}

// ---- What Pulse exports ----

/// The sample names a `# TYPE name kind` line announces (a counter `x` is
/// served as `x_total`, a histogram as `x_bucket`, `x_sum`, `x_count`).
fn announced(text: &str, names: &mut BTreeSet<String>) {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
}

/// Every sample name Pulse exports: the three roles of a running `pulse up`
/// (their real `/metrics`), the sidecar's and the operator's registries.
fn exported() -> BTreeSet<String> {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut names = BTreeSet::new();
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = Config::from_toml(&common::config_toml(dir.path(), "2s")).expect("config");
        let running = pulse::up::start(config).await.expect("pulse up starts");
        let client = reqwest::Client::new();
        // Labelled families show once they count something: points in (an
        // old one, a new one that closes its window, the old one again, now
        // late), one query out.
        let now = pulse_core::now_ms() as f64 / 1000.0;
        for at in [now - 600.0, now, now - 600.0] {
            let point = serde_json::json!({
                "metric_name": "cpu_usage", "value": 1, "timestamp": at, "tags": {"host": "a"}
            });
            let accepted = client
                .post(format!("http://{}/metrics", running.gateway))
                .json(&point)
                .send()
                .await
                .expect("the gateway answers");
            assert_eq!(accepted.status(), 202);
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        client
            .get(format!("http://{}/api/v1/metrics", running.dashboard))
            .send()
            .await
            .expect("the dashboard answers");
        // Per-partition families show once the processor owns partitions.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for addr in [running.gateway, running.processor, running.dashboard] {
            loop {
                let text = client
                    .get(format!("http://{addr}/metrics"))
                    .send()
                    .await
                    .expect("/metrics answers")
                    .text()
                    .await
                    .expect("its text");
                let owning = addr != running.processor
                    || (text.contains("# TYPE pulse_processor_bus_lag_records ")
                        && text.contains("# TYPE pulse_processor_late_points "));
                if owning || std::time::Instant::now() > deadline {
                    announced(&text, &mut names);
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        running.stop().await.expect("pulse up stops");
    });
    let mut registry = Registry::default();
    // The sidecar's labelled families, each with one child, as a running
    // sidecar has once it received, refused, scraped and forwarded.
    let sidecar = pulse_sidecar::metrics::Metrics::register(&mut registry);
    {
        use pulse_sidecar::metrics::{OutcomeLabels, ReceiverLabels, RejectLabels};
        let outcome = OutcomeLabels { outcome: "ok" };
        sidecar
            .points_accepted
            .get_or_create(&ReceiverLabels { receiver: "http" })
            .inc();
        sidecar
            .points_rejected
            .get_or_create(&RejectLabels {
                receiver: "http",
                reason: "invalid",
            })
            .inc();
        sidecar.scrapes.get_or_create(&outcome).inc();
        sidecar.forward_requests.get_or_create(&outcome).inc();
        sidecar
            .forward_request_duration
            .get_or_create(&outcome)
            .observe(0.01);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    announced(&text, &mut names);
    // The operator's families, after one reconcile and one failure.
    let operator = pulse_operator::metrics::Metrics::new();
    drop(operator.reconcile("MetricPipeline"));
    operator.failure("MetricPipeline", "Kube");
    announced(&operator.render(), &mut names);
    names
}

// ---- What the rules and dashboards query ----

/// PromQL words that are neither metrics nor functions: binary and
/// modifier keywords, and the aggregation operators, which may come before
/// their parenthesis (`sum by (le) (...)`).
const KEYWORDS: [&str; 21] = [
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression selects: every identifier that is
/// not a function, a keyword, a label (in `{...}` or a `by (...)` list), a
/// string, a duration or a Grafana variable (`$namespace`).
fn metric_names(expr: &str) -> Vec<String> {
    // Strings, label matchers and range selectors out.
    let mut cleaned = String::new();
    let (mut quote, mut braces, mut brackets) = (None, 0usize, 0usize);
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            _ if braces > 0 || brackets > 0 => {}
            c => cleaned.push(c),
        }
        if matches!(c, '{' | '}' | '[' | ']') {
            cleaned.push(' ');
        }
    }
    let chars: Vec<char> = cleaned.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let word = |i: &mut usize| {
            let start = *i;
            while *i < chars.len()
                && (chars[*i].is_ascii_alphanumeric() || matches!(chars[*i], '_' | ':' | '.' | '$'))
            {
                *i += 1;
            }
            chars[start..*i].iter().collect::<String>()
        };
        if c.is_ascii_digit() || c == '$' {
            word(&mut i);
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let ident = word(&mut i);
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let call = chars.get(next) == Some(&'(');
        if call && LABEL_LISTS.contains(&ident.as_str()) {
            // Skip the label list.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            continue;
        }
        if call || KEYWORDS.contains(&ident.as_str()) {
            continue;
        }
        names.push(ident);
    }
    names
}

/// The expression of a Grafana variable query: the selector of
/// `label_values(<selector>, <label>)`, or the query itself.
fn variable_expr(query: &str) -> String {
    match query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|inner| inner.strip_suffix(')'))
    {
        Some(inner) => inner
            .rsplit_once(',')
            .map_or(inner, |(selector, _label)| selector)
            .to_string(),
        None => query.to_string(),
    }
}

/// Every PromQL expression of the rendered rules and dashboards, with where
/// it comes from.
fn queries(objects: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for rule_set in of_kind(objects, "PrometheusRule") {
        for group in rule_set["spec"]["groups"].as_array().expect("groups") {
            for rule in group["rules"].as_array().expect("rules") {
                let name = rule["alert"]
                    .as_str()
                    .or(rule["record"].as_str())
                    .unwrap_or("?");
                out.push((
                    format!("rule {name}"),
                    rule["expr"].as_str().expect("expr").into(),
                ));
            }
        }
    }
    for (file, board) in dashboard_json(objects) {
        for panel in board["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("a PromQL target");
                out.push((format!("{file} panel {}", panel["title"]), expr.into()));
            }
        }
        for variable in board["templating"]["list"].as_array().expect("templating") {
            if variable["type"] == "query" {
                let query = variable["query"]["query"].as_str().expect("a query");
                out.push((
                    format!("{file} variable {}", variable["name"]),
                    variable_expr(query),
                ));
            }
        }
    }
    out
}

/// Each dashboard ConfigMap's JSON, parsed, by file name.
fn dashboard_json(objects: &[Value]) -> Vec<(String, Value)> {
    dashboards(objects)
        .into_iter()
        .flat_map(|map| map["data"].as_object().expect("data").clone())
        .map(|(file, text)| {
            let board = serde_json::from_str(text.as_str().expect("text"))
                .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
            (file, board)
        })
        .collect()
}

#[test]
fn metric_names_are_found_and_labels_functions_and_variables_are_not() {
    let expr = r#"histogram_quantile(0.99, sum by (le, pod) (rate(pulse_a_bucket{job="x", le=~"1.*"}[$__rate_interval])))
        / on (pod) group_left (node) pulse_b > 2e3 and time() - max(pulse_c offset 5m) > bool 0 unless nonsense_metric"#;
    assert_eq!(
        metric_names(expr),
        ["pulse_a_bucket", "pulse_b", "pulse_c", "nonsense_metric"]
    );
    assert_eq!(
        variable_expr(
            r#"label_values(pulse_x{namespace="$namespace"}, app_kubernetes_io_instance)"#
        ),
        r#"pulse_x{namespace="$namespace"}"#
    );
}

#[test]
fn the_rules_and_dashboards_query_only_metrics_pulse_exports() {
    let Some(objects) = render_all() else { return };
    let exported = exported();
    // The roles, the sidecar and the operator all answered.
    for sample in [
        "pulse_gateway_points_accepted_total",
        "pulse_processor_bus_lag_records",
        "pulse_dashboard_queries_total",
        "pulse_sidecar_buffer_dropped_points_total",
        "pulse_operator_webhook_requests_total",
        "pulse_http_request_duration_seconds_count",
    ] {
        assert!(exported.contains(sample), "{sample} not in {exported:?}");
    }
    let queries = queries(&objects);
    assert!(queries.len() > 40, "{} queries found", queries.len());
    let mut used = BTreeSet::new();
    let mut unknown = Vec::new();
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place} queries no metric: {expr}");
        for name in names {
            if !exported.contains(&name) {
                unknown.push(format!("{place}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        unknown.is_empty(),
        "not exported by Pulse:\n{}",
        unknown.join("\n")
    );
    // The ones `kubectl get mp` is made of, too.
    for name in pulse_operator::health::read::HEALTH_METRICS {
        assert!(
            exported.contains(name),
            "status.health reads {name}, not exported"
        );
    }
    assert!(used.len() > 30, "only {used:?}");
}

#[test]
fn promtool_accepts_the_rules() {
    let missing: Vec<String> = (!tools::runs(&["promtool".into(), "--version".into()]))
        .then(|| "promtool: install it with `apt-get install prometheus`".to_string())
        .into_iter()
        .collect();
    if !tools::present_or_skip("the rules check", &missing) {
        return;
    }
    for values in [vec!["--set", "metrics.prometheusRule.enabled=true"], vec![]] {
        let objects = if values.is_empty() {
            render_all()
        } else {
            render(&values)
        };
        let Some(objects) = objects else { return };
        let rules = of_kind(&objects, "PrometheusRule");
        assert_eq!(rules.len(), 1, "{values:?}");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("rules.yaml");
        let groups = serde_json::json!({"groups": rules[0]["spec"]["groups"]});
        std::fs::write(&file, serde_norway::to_string(&groups).expect("YAML")).expect("written");
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("promtool runs");
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{values:?}:\n{report}");
        assert!(report.contains("SUCCESS: 8 rules found"), "{report}");
        // A broken expression is told apart.
        let broken = groups.to_string().replace(
            "pulse_processor_bus_lag_records)",
            "pulse_processor_bus_lag_records",
        );
        std::fs::write(&file, broken).expect("written");
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("runs");
        assert!(!out.status.success(), "promtool accepts anything");
    }
}

/// Validates `object` against the published schema `tests/data/<schema>`;
/// the errors, empty when it passes. `None` without the jsonschema module.
fn schema_errors(schema: &str, object: &Value) -> Option<String> {
    const CHECK: &str = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        errors = [f\"{'/'.join(map(str, e.absolute_path))}: {e.message}\" for e in jsonschema.Draft7Validator(schema).iter_errors(json.load(sys.stdin))]\n\
        print('\\n'.join(errors))\n";
    let available = tools::runs(&["python3".into(), "-c".into(), "import jsonschema".into()]);
    let missing: Vec<String> = (!available)
        .then(|| "the jsonschema Python module: install it with `python3 -m pip install kubernetes-validate==1.37.0`".to_string())
        .into_iter()
        .collect();
    if !tools::present_or_skip("the schema check", &missing) {
        return None;
    }
    let path: PathBuf = repo().join("tests/data").join(schema);
    let mut child = Command::new("python3")
        .args(["-c", CHECK])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(object.to_string().as_bytes())
        .expect("the object is written");
    let out = child.wait_with_output().expect("python3 ends");
    assert!(
        out.status.success(),
        "the schema check failed to run on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn monitoring_objects_validate_against_the_published_schemas() {
    let Some(objects) = render_all() else { return };
    let monitor = of_kind(&objects, "ServiceMonitor");
    let rule = of_kind(&objects, "PrometheusRule");
    assert_eq!((monitor.len(), rule.len()), (1, 1));
    let Some(errors) = schema_errors("monitoring.coreos.com/servicemonitor_v1.json", monitor[0])
    else {
        return;
    };
    assert_eq!(errors, "", "ServiceMonitor: {}", monitor[0]);
    let errors =
        schema_errors("monitoring.coreos.com/prometheusrule_v1.json", rule[0]).unwrap_or_default();
    assert_eq!(errors, "", "PrometheusRule");
    // The operator's PodMonitors, as it applies them.
    let pipeline: pulse_operator::crd::MetricPipeline = serde_json::from_value(serde_json::json!({
        "apiVersion": "pulse.dev/v1alpha1", "kind": "MetricPipeline",
        "metadata": {"name": "checkout", "namespace": "shop", "uid": "u-1"},
        "spec": {"kafka": {"brokers": "kafka:9092"}, "database": {"urlSecretRef": {"name": "db", "key": "url"}}}
    }))
    .expect("a pipeline");
    let validated_pipeline = pulse_operator::validate::validate_pipeline(&pipeline).expect("valid");
    for monitor in pulse_operator::build::monitoring::pod_monitors(&validated_pipeline) {
        let object = serde_json::to_value(&monitor).expect("JSON");
        let errors =
            schema_errors("monitoring.coreos.com/podmonitor_v1.json", &object).unwrap_or_default();
        assert_eq!(errors, "", "PodMonitor {object}");
        // A misspelt field is refused: the schema is strict.
        let mut wrong = object.clone();
        wrong["spec"]["podMetricsEndpoints"][0]["prot"] = "http".into();
        let errors =
            schema_errors("monitoring.coreos.com/podmonitor_v1.json", &wrong).unwrap_or_default();
        assert!(errors.contains("prot"), "{errors}");
    }
}

#[test]
fn dashboards_are_config_maps_grafana_s_sidecar_loads() {
    let Some(objects) = render_all() else { return };
    let maps = dashboards(&objects);
    assert_eq!(maps.len(), 3, "pipelines, sidecars, operator");
    let mut uids = BTreeSet::new();
    for map in &maps {
        assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
        // all-values.yaml puts them where Grafana watches, in its folder.
        assert_eq!(map["metadata"]["namespace"], "monitoring");
        assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Pulse");
    }
    for (file, board) in dashboard_json(&objects) {
        assert!(file.ends_with(".json"), "{file}");
        assert!(
            uids.insert(board["uid"].as_str().expect("a uid").to_string()),
            "{file}: uid reused"
        );
        let panels = board["panels"].as_array().expect("panels");
        assert!(!panels.is_empty(), "{file}");
        let ids: BTreeSet<_> = panels
            .iter()
            .map(|p| p["id"].as_i64().expect("an id"))
            .collect();
        assert_eq!(ids.len(), panels.len(), "{file}: panel ids reused");
        for panel in panels {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{file} {}",
                panel["title"]
            );
            assert!(!panel["targets"].as_array().expect("targets").is_empty());
        }
    }
    // Off by default.
    let Some(defaults) = render(&[]) else { return };
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        assert!(
            of_kind(&defaults, kind).is_empty(),
            "{kind} rendered by default"
        );
    }
    assert!(
        dashboards(&defaults).is_empty(),
        "dashboards rendered by default"
    );
}

#[test]
fn the_service_monitor_scrapes_the_operator_s_metrics_service() {
    let Some(objects) = render_all() else { return };
    let monitor = of_kind(&objects, "ServiceMonitor")[0];
    let service = of_kind(&objects, "Service")
        .into_iter()
        .find(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-metrics"))
        })
        .expect("the metrics Service");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("labels");
    for (key, value) in selector {
        assert_eq!(&service["metadata"]["labels"][key], value, "{key}");
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(
        monitor["metadata"]["labels"]["release"],
        "kube-prometheus-stack"
    );
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        NAMESPACE
    );
}
