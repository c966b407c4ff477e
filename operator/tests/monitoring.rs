//! Watching a pipeline: the PodMonitors (or scrape annotations) the
//! reconciler applies depending on whether the Prometheus Operator's API is
//! served, and `status.health` read from the processors' `/metrics` (a real
//! HTTP server here) and written by the health watch, all against the
//! in-process API server of `fixtures`.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use pulse_operator::build::monitoring::{annotate_for_scraping, pod_monitors};
use pulse_operator::build::pipeline_objects;
use pulse_operator::controller::{Context, pipeline};
use pulse_operator::crd::MetricPipeline;
use pulse_operator::fixtures::{
    FakeApi, FakeSchemaAdmin, FakeTopicAdmin, Recorded, database_secret,
};
use pulse_operator::health::HealthWatch;
use pulse_operator::metrics::Metrics;
use pulse_operator::validate::validate_pipeline;
use serde_json::{Value, json};

const DISCOVERY: &str = "/apis/monitoring.coreos.com/v1";
const PODMONITORS: &str = "/apis/monitoring.coreos.com/v1/namespaces/shop/podmonitors";
const PIPELINE: &str = "/apis/pulse.dev/v1alpha1/namespaces/shop/metricpipelines/checkout";

fn harness() -> (FakeApi, Arc<Context>) {
    let (api, client) = FakeApi::start();
    let ctx = Arc::new(Context::new(
        client,
        FakeTopicAdmin::new(),
        FakeSchemaAdmin::new(),
        Metrics::new(),
        "ghcr.io/pulse/pulse:test".into(),
    ));
    api.insert(&database_secret());
    api.deployments_available(true);
    (api, ctx)
}

/// What the API server answers for `monitoring.coreos.com/v1` with the
/// Prometheus Operator installed.
fn monitoring_api() -> Value {
    let resource = |name: &str, kind: &str| {
        json!({"name": name, "singularName": "", "namespaced": true, "kind": kind,
               "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]})
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1",
        "resources": [resource("podmonitors", "PodMonitor"), resource("servicemonitors", "ServiceMonitor"),
                      resource("prometheusrules", "PrometheusRule")]
    })
}

fn applied<'a>(recorded: &'a [Recorded], path_end: &str) -> &'a Recorded {
    recorded
        .iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with(path_end))
        .unwrap_or_else(|| panic!("no apply of {path_end}"))
}

fn pod_annotations(deployment: &Recorded) -> Value {
    deployment.body["spec"]["template"]["metadata"]["annotations"].clone()
}

#[test]
fn pod_monitors_select_the_roles_and_the_sidecars_of_the_pipeline() {
    let validated = validate_pipeline(&MetricPipeline::test()).unwrap();
    let [roles, sidecars] = pod_monitors(&validated);
    let roles = serde_json::to_value(&roles).unwrap();
    assert_eq!(roles["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(roles["kind"], "PodMonitor");
    assert_eq!(roles["metadata"]["name"], "checkout-pulse");
    assert_eq!(roles["metadata"]["namespace"], "shop");
    assert_eq!(
        roles["metadata"]["ownerReferences"][0]["uid"],
        "uid-checkout"
    );
    assert_eq!(
        roles["spec"],
        json!({
            "selector": {"matchLabels": {"app.kubernetes.io/name": "pulse", "app.kubernetes.io/instance": "checkout"}},
            "podTargetLabels": ["app.kubernetes.io/instance", "app.kubernetes.io/component"],
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        })
    );
    let sidecars = serde_json::to_value(&sidecars).unwrap();
    assert_eq!(sidecars["metadata"]["name"], "checkout-pulse-sidecars");
    assert_eq!(
        sidecars["spec"]["selector"],
        json!({"matchLabels": {"pulse.dev/inject": "checkout"}})
    );
    assert_eq!(
        sidecars["spec"]["podMetricsEndpoints"][0]["port"],
        "pulse-admin"
    );
}

#[test]
fn scrape_annotations_name_each_role_s_own_port() {
    let validated = validate_pipeline(&MetricPipeline::test()).unwrap();
    let mut objects = pipeline_objects(
        &validated,
        "pulse:test",
        &Default::default(),
        Default::default(),
    );
    let annotated = |deployment: &mut Deployment| {
        annotate_for_scraping(deployment);
        deployment
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default()
    };
    for (deployment, port) in [
        (&mut objects.gateway, "9000"),
        (&mut objects.processor, "9100"),
    ] {
        let annotations = annotated(deployment);
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], port);
        assert_eq!(annotations["prometheus.io/path"], "/metrics");
        // The config hash that rolls the pods is kept.
        assert!(annotations.contains_key(pulse_operator::names::CONFIG_HASH_ANNOTATION));
    }
}

#[tokio::test]
async fn with_the_prometheus_operator_a_pipeline_gets_pod_monitors_and_no_annotations() {
    let (api, ctx) = harness();
    api.insert_path(DISCOVERY, monitoring_api());
    let mp = MetricPipeline::test().finalized();
    api.insert(&mp);
    pipeline::reconcile(Arc::new(mp), ctx)
        .await
        .expect("reconcile");
    let recorded = api.recorded();
    let lines = api.lines();
    let discovery = lines.iter().position(|l| l == &format!("GET {DISCOVERY}"));
    let first_apply = lines.iter().position(|l| l.starts_with("PATCH"));
    assert!(
        discovery.is_some() && discovery < first_apply,
        "discovery first: {lines:?}"
    );
    for name in ["checkout-pulse", "checkout-pulse-sidecars"] {
        let monitor = applied(&recorded, &format!("podmonitors/{name}"));
        assert_eq!(monitor.path, format!("{PODMONITORS}/{name}"));
        assert!(
            monitor.query.contains("fieldManager=pulse-operator"),
            "{}",
            monitor.query
        );
        assert_eq!(monitor.body["kind"], "PodMonitor");
    }
    for role in ["gateway", "processor"] {
        let deployment = applied(&recorded, &format!("deployments/checkout-{role}"));
        assert_eq!(
            pod_annotations(deployment).get("prometheus.io/scrape"),
            None,
            "{role}: the PodMonitor scrapes it, annotations would scrape it twice"
        );
    }
}

#[tokio::test]
async fn without_the_prometheus_operator_the_roles_pods_get_scrape_annotations() {
    let (api, ctx) = harness();
    let mp = MetricPipeline::test().finalized();
    api.insert(&mp);
    pipeline::reconcile(Arc::new(mp), ctx)
        .await
        .expect("reconcile");
    let recorded = api.recorded();
    assert!(
        !api.lines().iter().any(|l| l.contains("podmonitors")),
        "{:?}",
        api.lines()
    );
    for (role, port) in [("gateway", "9000"), ("processor", "9100")] {
        let annotations =
            pod_annotations(applied(&recorded, &format!("deployments/checkout-{role}")));
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{role}");
        assert_eq!(annotations["prometheus.io/port"], port, "{role}");
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{role}");
    }
}

/// A processor's `/metrics` served over real HTTP on 127.0.0.1, its text
/// replaceable between reads.
async fn processor_metrics(text: Arc<Mutex<String>>) -> u16 {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = text.clone();
            async move { text.lock().unwrap().clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn pod(name: &str, component: &str, phase: &str, ip: &str, port: u16) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {
            "app.kubernetes.io/name": "pulse", "app.kubernetes.io/instance": "checkout",
            "app.kubernetes.io/component": component}},
        "spec": {"containers": [{"name": component, "ports": [{"name": "http", "containerPort": port}]}]},
        "status": {"phase": phase, "podIP": ip},
    }))
    .unwrap()
}

fn metrics_text(points: u64, lags: [u64; 2], last_window: &str) -> String {
    format!(
        "# TYPE pulse_processor_points counter\npulse_processor_points_total {points}\n\
         # TYPE pulse_processor_bus_lag_records gauge\n\
         pulse_processor_bus_lag_records{{partition=\"0\"}} {}\n\
         pulse_processor_bus_lag_records{{partition=\"1\"}} {}\n\
         # TYPE pulse_processor_last_window_closed_timestamp_seconds gauge\n\
         pulse_processor_last_window_closed_timestamp_seconds {last_window}\n# EOF\n",
        lags[0], lags[1]
    )
}

#[tokio::test]
async fn the_health_watch_reads_every_running_processor_and_writes_status_health() {
    let (api, client) = FakeApi::start();
    let mp = MetricPipeline::test().finalized();
    api.insert(&mp);
    let text = Arc::new(Mutex::new(metrics_text(500, [40, 2], "1700000000")));
    let port = processor_metrics(text.clone()).await;
    // Nothing listens where the second processor says it does.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    api.insert(&pod(
        "checkout-processor-a",
        "processor",
        "Running",
        "127.0.0.1",
        port,
    ));
    api.insert(&pod(
        "checkout-processor-b",
        "processor",
        "Running",
        "127.0.0.1",
        closed_port,
    ));
    // Neither a pending processor nor the gateway is read.
    api.insert(&pod(
        "checkout-processor-c",
        "processor",
        "Pending",
        "127.0.0.1",
        port,
    ));
    api.insert(&pod(
        "checkout-gateway-a",
        "gateway",
        "Running",
        "127.0.0.1",
        closed_port,
    ));

    let watch = HealthWatch::new();
    let first = watch.refresh(&client, &mp).await.expect("refresh");
    assert_eq!(first.consumer_lag, Some(42));
    assert_eq!(first.points_per_second, None, "one reading has no rate");
    assert_eq!(first.processors_read, "1/2");
    assert_eq!(
        first.last_window_closed.as_ref().map(|t| t.0.as_second()),
        Some(1_700_000_000)
    );
    let message = first.message.clone().unwrap_or_default();
    assert!(
        message.contains("checkout-processor-b") && message.contains(&closed_port.to_string()),
        "{message}"
    );

    let lines = api.lines();
    let list = api
        .recorded()
        .into_iter()
        .find(|r| r.line() == "GET /api/v1/namespaces/shop/pods")
        .unwrap_or_else(|| panic!("the pods are listed: {lines:?}"));
    assert!(list.query.contains("labelSelector="), "{}", list.query);
    let patch = api
        .recorded()
        .into_iter()
        .find(|r| r.line() == format!("PATCH {PIPELINE}/status"))
        .unwrap_or_else(|| panic!("status.health is written: {lines:?}"));
    assert!(
        patch.query.contains("fieldManager=pulse-operator-health"),
        "{}",
        patch.query
    );
    assert!(patch.query.contains("force=true"), "{}", patch.query);
    let health = &patch.body["status"]["health"];
    assert_eq!(health["consumerLag"], 42);
    assert_eq!(health["processorsRead"], "1/2");
    assert_eq!(health["lastWindowClosed"], "2023-11-14T22:13:20Z");
    assert_eq!(
        patch.body["status"].as_object().map(|s| s.len()),
        Some(1),
        "only status.health: the reconciler owns the rest"
    );

    *text.lock().unwrap() = metrics_text(900, [5, 0], "1700000030");
    let second = watch.refresh(&client, &mp).await.expect("refresh");
    assert_eq!(second.consumer_lag, Some(5));
    let rate = second.points_per_second.expect("two readings give a rate");
    assert!(rate > 0.0, "400 more points read: {rate}");
    assert_eq!(
        second.last_window_closed.as_ref().map(|t| t.0.as_second()),
        Some(1_700_000_030)
    );
}
