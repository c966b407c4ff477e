//! The reconcilers against the in-process API server of `fixtures` (a
//! `tower_test::mock::pair()` behind a kube `Client`), with fake topic and
//! schema admins: every request is checked in order (method, path, body).

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use pulse_operator::admin::SchemaAdmin;
use pulse_operator::controller::{Context, Error, dashboard, pipeline};
use pulse_operator::crd::{Dashboard, DeletionPolicy, MetricPipeline};
use pulse_operator::fixtures::{
    DATABASE_URL, FakeApi, FakeSchemaAdmin, FakeTopicAdmin, Recorded, database_secret,
};
use pulse_operator::metrics::Metrics;
use pulse_operator::names;

/// The schema of pipeline `shop/checkout`.
fn schema() -> String {
    pulse_core::names::schema("shop", "checkout")
}

const SECRET: &str = "GET /api/v1/namespaces/shop/secrets/checkout-db";
const PIPELINE: &str = "/apis/pulse.dev/v1alpha1/namespaces/shop/metricpipelines/checkout";
const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/shop/events";
const POINTS: &str = "pulse.shop.checkout.points";
const ANOMALIES: &str = "pulse.shop.checkout.anomalies";

struct Harness {
    api: FakeApi,
    topics: Arc<FakeTopicAdmin>,
    schemas: Arc<FakeSchemaAdmin>,
    ctx: Arc<Context>,
}

fn harness() -> Harness {
    let (api, client) = FakeApi::start();
    let topics = FakeTopicAdmin::new();
    let schemas = FakeSchemaAdmin::new();
    let ctx = Arc::new(Context::new(
        client,
        topics.clone(),
        schemas.clone(),
        Metrics::new(),
        "ghcr.io/pulse/pulse:test".into(),
    ));
    api.insert(&database_secret());
    api.deployments_available(true);
    Harness {
        api,
        topics,
        schemas,
        ctx,
    }
}

impl Harness {
    async fn reconcile(&self, mp: MetricPipeline) -> Result<Action, Error> {
        self.api.insert(&mp);
        pipeline::reconcile(Arc::new(mp), self.ctx.clone()).await
    }
}

fn applies(kinds: &[(&str, &str)]) -> Vec<String> {
    kinds
        .iter()
        .map(|(prefix, name)| format!("PATCH {prefix}/namespaces/shop/{name}"))
        .collect()
}

/// The Dashboards of the namespace, listed for the pipeline's boards.
const DASHBOARDS: &str = "GET /apis/pulse.dev/v1alpha1/namespaces/shop/dashboards";

/// The deletes of the optional objects a spec without autoscaling or Ingress
/// does not ask for (a 404 is fine: they were never made).
fn optional_deletes() -> Vec<String> {
    [
        "/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers/checkout-gateway",
        "/apis/keda.sh/v1alpha1/namespaces/shop/scaledobjects/checkout-processor",
        "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/checkout-gateway",
        "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/checkout-dashboard",
    ]
    .map(|path| format!("DELETE {path}"))
    .to_vec()
}

/// The server-side applies of a pipeline's objects, in the builders' order.
fn object_applies() -> Vec<String> {
    applies(&[
        ("/api/v1", "serviceaccounts/checkout-gateway"),
        ("/api/v1", "serviceaccounts/checkout-processor"),
        ("/api/v1", "serviceaccounts/checkout-dashboard"),
        ("/api/v1", "configmaps/checkout-pulse-config"),
        ("/api/v1", "configmaps/checkout-dashboard-boards"),
        ("/api/v1", "services/checkout-gateway"),
        ("/api/v1", "services/checkout-dashboard"),
        ("/apis/apps/v1", "deployments/checkout-gateway"),
        ("/apis/apps/v1", "deployments/checkout-processor"),
        ("/apis/apps/v1", "deployments/checkout-dashboard"),
        ("/apis/policy/v1", "poddisruptionbudgets/checkout-gateway"),
        ("/apis/policy/v1", "poddisruptionbudgets/checkout-processor"),
        ("/apis/policy/v1", "poddisruptionbudgets/checkout-dashboard"),
    ])
}

/// The operator asks whether PodMonitors are served before building.
const DISCOVERY: &str = "GET /apis/monitoring.coreos.com/v1";

/// The request whose line ends with `path_end` (an object's kind and name).
fn request<'a>(recorded: &'a [Recorded], path_end: &str) -> &'a Recorded {
    recorded
        .iter()
        .find(|r| r.path.ends_with(path_end))
        .unwrap_or_else(|| panic!("no request to {path_end}"))
}

/// Every request of a pipeline's objects after the Secret: the Dashboards
/// listed, the objects applied, the optional ones deleted.
fn pipeline_applies() -> Vec<String> {
    let mut lines = vec![DASHBOARDS.to_string(), DISCOVERY.to_string()];
    lines.extend(object_applies());
    lines.extend(optional_deletes());
    lines
}

/// Where the applies are in the record (after the Secret, the list and the
/// discovery).
const APPLIES: std::ops::Range<usize> = 3..16;

/// The condition `type_` of a status patch body: (status, reason).
fn condition(patch: &Recorded, type_: &str) -> (String, String) {
    let conditions = patch.body["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let found = conditions
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {}", patch.body));
    (
        found["status"].as_str().unwrap_or_default().to_string(),
        found["reason"].as_str().unwrap_or_default().to_string(),
    )
}

/// Whether a query is a forced server-side apply by the operator's field manager.
fn forced_apply(query: &str) -> bool {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs == ["fieldManager=pulse-operator", "force=true"]
}

fn cond(status: &str, reason: &str) -> (String, String) {
    (status.to_string(), reason.to_string())
}

fn status_patch(recorded: &[Recorded]) -> Recorded {
    let patches: Vec<_> = recorded
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/status"))
        .collect();
    assert_eq!(patches.len(), 1, "one status patch expected");
    patches[0].clone()
}

fn event_reasons(recorded: &[Recorded]) -> Vec<String> {
    recorded
        .iter()
        .filter(|r| r.line() == EVENT)
        .map(|r| r.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_new_pipeline_first_gets_the_finalizer_and_nothing_else() {
    let h = harness();
    let action = h
        .reconcile(MetricPipeline::test())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    let recorded = h.api.recorded();
    assert_eq!(h.api.lines(), vec![format!("PATCH {PIPELINE}")]);
    let operations = recorded[0].body.as_array().cloned().unwrap_or_default();
    assert!(
        operations
            .iter()
            .any(|op| op["op"] == "add" && op["value"] == serde_json::json!([names::FINALIZER])),
        "{}",
        recorded[0].body
    );
    assert!(
        h.topics.calls().is_empty(),
        "no topic work before the finalizer"
    );
}

#[tokio::test]
async fn a_finalized_pipeline_gets_topics_schema_objects_and_a_ready_status() {
    let h = harness();
    let action = h
        .reconcile(MetricPipeline::test().finalized())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    let mut expected = vec![SECRET.to_string()];
    expected.extend(pipeline_applies());
    expected.push(format!("PATCH {PIPELINE}/status"));
    expected.push(EVENT.to_string());
    assert_eq!(h.api.lines(), expected);

    let recorded = h.api.recorded();
    for apply in &recorded[APPLIES] {
        assert!(forced_apply(&apply.query), "{}", apply.line());
        assert_eq!(
            apply.body["metadata"]["ownerReferences"][0]["uid"],
            "uid-checkout"
        );
        assert_eq!(
            apply.body["metadata"]["labels"][names::LABEL_MANAGED_BY],
            names::MANAGED_BY
        );
    }
    let gateway = request(&recorded, "deployments/checkout-gateway");
    assert_eq!(
        gateway.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/pulse/pulse:test"
    );
    let status = status_patch(&recorded);
    assert!(forced_apply(&status.query), "{}", status.query);
    for type_ in [
        "TopicsReady",
        "SchemaReady",
        "GatewayReady",
        "ProcessorReady",
        "DashboardReady",
        "Ready",
    ] {
        assert_eq!(
            condition(&status, type_).0,
            "True",
            "{type_}: {}",
            status.body
        );
    }
    assert_eq!(status.body["status"]["observedGeneration"], 1);
    assert_eq!(
        status.body["status"]["gatewayEndpoint"],
        "http://checkout-gateway.shop.svc:9000"
    );
    assert_eq!(event_reasons(&recorded), vec!["Reconciled"]);

    let points = h.topics.topic(POINTS).expect("points topic created");
    assert_eq!(points.partitions, 6);
    assert!(h.topics.topic(ANOMALIES).is_some());
    assert!(h.schemas.has(&schema()));
    assert_eq!(
        h.schemas.urls(),
        vec![DATABASE_URL.to_string(); 2],
        "claimed, then migrated"
    );
}

#[tokio::test]
async fn a_second_reconcile_changes_nothing_and_publishes_no_event() {
    let h = harness();
    h.reconcile(MetricPipeline::test().finalized())
        .await
        .expect("first");
    // The stored object now carries the status of the first reconcile.
    let stored = status_patch(&h.api.recorded()).body["status"].clone();
    let mut again = MetricPipeline::test().finalized();
    again.status = serde_json::from_value(stored).ok();
    h.api.clear();
    h.reconcile(again).await.expect("second");
    assert!(
        event_reasons(&h.api.recorded()).is_empty(),
        "{:?}",
        h.api.lines()
    );
    let creates: Vec<_> = h
        .topics
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("describe"))
        .collect();
    assert_eq!(
        creates,
        vec![format!("create {POINTS}"), format!("create {ANOMALIES}")]
    );
}

#[tokio::test]
async fn kafka_down_is_a_false_topics_condition_and_a_backoff_requeue() {
    let h = harness();
    h.topics.set_down(true);
    let mp = MetricPipeline::test().finalized();
    let error = h.reconcile(mp.clone()).await.expect_err("kafka is down");
    assert_eq!(error.reason(), "KafkaUnavailable");
    assert_eq!(
        h.api.lines(),
        vec![format!("PATCH {PIPELINE}/status"), EVENT.to_string()]
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(
        condition(&status, "TopicsReady"),
        cond("False", "KafkaUnavailable")
    );
    assert_eq!(
        condition(&status, "SchemaReady"),
        cond("Unknown", "NotChecked")
    );
    assert_eq!(
        condition(&status, "Ready"),
        cond("False", "KafkaUnavailable")
    );
    assert_eq!(event_reasons(&h.api.recorded()), vec!["KafkaUnavailable"]);

    let mp = Arc::new(mp);
    let first = pipeline::error_policy(mp.clone(), &error, h.ctx.clone());
    let second = pipeline::error_policy(mp, &error, h.ctx.clone());
    // About 5 s, then 10 s, half of each random (`Action` shows its wait only
    // through `Debug`).
    let wait = |action: &Action| -> f64 {
        let text = format!("{action:?}");
        let inner = text.split("Some(").nth(1).expect(&text);
        inner.split("s)").next().unwrap().parse().expect(&text)
    };
    assert!((2.5..=5.0).contains(&wait(&first)), "{first:?}");
    assert!((5.0..=10.0).contains(&wait(&second)), "{second:?}");
    assert!(h.ctx.metrics.render().contains(
        "pulse_operator_reconcile_errors_total{kind=\"MetricPipeline\",reason=\"KafkaUnavailable\"} 2"
    ));
}

#[tokio::test]
async fn database_down_is_a_false_schema_condition_after_ready_topics() {
    let h = harness();
    h.schemas.set_down(true);
    let error = h
        .reconcile(MetricPipeline::test().finalized())
        .await
        .expect_err("database is down");
    assert_eq!(error.reason(), "DatabaseUnavailable");
    assert_eq!(
        h.api.lines(),
        vec![
            SECRET.to_string(),
            format!("PATCH {PIPELINE}/status"),
            EVENT.to_string()
        ]
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(
        condition(&status, "TopicsReady"),
        cond("True", "TopicsReady")
    );
    assert_eq!(
        condition(&status, "SchemaReady"),
        cond("False", "DatabaseUnavailable")
    );
    assert_eq!(
        condition(&status, "GatewayReady"),
        cond("Unknown", "NotChecked")
    );
    assert_eq!(
        condition(&status, "Ready"),
        cond("False", "DatabaseUnavailable")
    );
}

#[tokio::test]
async fn a_missing_database_secret_says_which_secret() {
    let (api, client) = FakeApi::start();
    let ctx = Arc::new(Context::new(
        client,
        FakeTopicAdmin::new(),
        FakeSchemaAdmin::new(),
        Metrics::new(),
        "pulse:test".into(),
    ));
    let mp = MetricPipeline::test().finalized();
    api.insert(&mp);
    let error = pipeline::reconcile(Arc::new(mp), ctx)
        .await
        .expect_err("no secret");
    assert_eq!(error.reason(), "DatabaseSecretMissing");
    assert!(error.to_string().contains("shop/checkout-db"), "{error}");
    let status = status_patch(&api.recorded());
    assert_eq!(
        condition(&status, "SchemaReady"),
        cond("False", "DatabaseSecretMissing")
    );
}

#[tokio::test]
async fn an_invalid_spec_is_a_condition_and_a_slow_requeue_not_an_error() {
    let h = harness();
    let action = h
        .reconcile(MetricPipeline::test().finalized().invalid())
        .await
        .expect("an invalid spec is not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert_eq!(
        h.api.lines(),
        vec![format!("PATCH {PIPELINE}/status"), EVENT.to_string()]
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(condition(&status, "Ready"), cond("False", "InvalidSpec"));
    let message = status.body["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str().map(String::from))
        .unwrap_or_default();
    assert!(message.contains("spec.windows"), "{message}");
    assert!(h.topics.calls().is_empty());
}

#[tokio::test]
async fn receivers_reach_the_processor_from_their_secret_and_never_the_config_map() {
    let h = harness();
    h.reconcile(MetricPipeline::test().finalized().alerting())
        .await
        .expect("reconcile");
    let mut expected = vec![SECRET.to_string()];
    expected.extend(pipeline_applies());
    expected.extend([format!("PATCH {PIPELINE}/status"), EVENT.to_string()]);
    assert_eq!(h.api.lines(), expected);
    let recorded = h.api.recorded();
    let config = request(&recorded, "configmaps/checkout-pulse-config").body["data"]
        [names::CONFIG_KEY]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let config = pulse_core::config::Config::from_toml(&config).expect("the pods read it");
    assert_eq!(config.anomaly.rules[0].name, "cpu-spike");
    assert_eq!(
        config.alerting.receivers[0].url_env.as_deref(),
        Some("PULSE_RECEIVER_0_URL")
    );
    assert_eq!(config.alerting.receivers[0].url, None);
    let env =
        |apply: &Recorded| apply.body["spec"]["template"]["spec"]["containers"][0]["env"].clone();
    let processor = env(request(&recorded, "deployments/checkout-processor"));
    let receiver = processor
        .as_array()
        .and_then(|e| e.iter().find(|v| v["name"] == "PULSE_RECEIVER_0_URL"))
        .unwrap_or_else(|| panic!("no receiver variable in {processor}"));
    assert_eq!(
        receiver["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "alerts", "key": "slack", "optional": false})
    );
    assert!(
        !env(request(&recorded, "deployments/checkout-gateway"))
            .to_string()
            .contains("PULSE_RECEIVER"),
        "the gateway gets no receiver Secret"
    );
    let status = status_patch(&recorded);
    assert_eq!(condition(&status, "Ready").0, "True", "{}", status.body);
}

#[tokio::test]
async fn a_bad_rule_is_an_invalid_spec_condition_naming_it() {
    let h = harness();
    let mut mp = MetricPipeline::test().finalized().alerting();
    if let Some(anomaly) = mp.spec.anomaly.as_mut() {
        anomaly.rules[0].window = Some("2h".into());
    }
    h.reconcile(mp)
        .await
        .expect("an invalid spec is not an error");
    assert_eq!(
        h.api.lines(),
        vec![format!("PATCH {PIPELINE}/status"), EVENT.to_string()],
        "nothing applied"
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(condition(&status, "Ready"), cond("False", "InvalidSpec"));
    let message = status.body.to_string();
    assert!(
        message.contains("anomaly.rules[0] (cpu-spike).window"),
        "{message}"
    );
}

#[tokio::test]
async fn fewer_partitions_are_refused_in_the_status_and_the_rest_still_applies() {
    let h = harness();
    h.topics.insert(POINTS, 12, 86_400_000);
    h.topics.insert(ANOMALIES, 12, 86_400_000);
    let action = h
        .reconcile(MetricPipeline::test().finalized().partitions(6))
        .await
        .expect("a refused decrease is not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let status = status_patch(&h.api.recorded());
    assert_eq!(
        condition(&status, "TopicsReady"),
        cond("False", "PartitionDecreaseRefused")
    );
    assert_eq!(
        condition(&status, "GatewayReady"),
        cond("True", "Available")
    );
    assert_eq!(
        condition(&status, "Ready"),
        cond("False", "PartitionDecreaseRefused")
    );
    assert_eq!(h.topics.topic(POINTS).map(|t| t.partitions), Some(12));
    assert!(h.topics.calls().iter().all(|c| !c.starts_with("grow")));
}

#[tokio::test]
async fn pods_not_yet_available_make_ready_false_and_requeue_sooner() {
    let h = harness();
    h.api.deployments_available(false);
    let action = h
        .reconcile(MetricPipeline::test().finalized())
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let status = status_patch(&h.api.recorded());
    assert_eq!(
        condition(&status, "GatewayReady"),
        cond("False", "Progressing")
    );
    assert_eq!(condition(&status, "Ready"), cond("False", "Progressing"));
}

#[tokio::test]
async fn deleting_with_retain_keeps_topics_and_schema_and_removes_the_finalizer() {
    let h = harness();
    h.topics.insert(POINTS, 6, 1);
    h.schemas
        .migrate(DATABASE_URL, &schema())
        .await
        .expect("fake");
    let action = h
        .reconcile(MetricPipeline::test().finalized().deleting())
        .await
        .expect("cleanup");
    assert_eq!(action, Action::await_change());
    assert_eq!(
        h.api.lines(),
        vec![EVENT.to_string(), format!("PATCH {PIPELINE}")]
    );
    assert_eq!(event_reasons(&h.api.recorded()), vec!["DataRetained"]);
    let removal = &h.api.recorded()[1];
    assert!(
        removal
            .body
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op["op"] == "remove")),
        "{}",
        removal.body
    );
    assert!(h.topics.topic(POINTS).is_some());
    assert!(h.schemas.has(&schema()));
}

#[tokio::test]
async fn deleting_with_delete_drops_topics_and_schema_then_the_finalizer() {
    let h = harness();
    h.topics.insert(POINTS, 6, 1);
    h.topics.insert(ANOMALIES, 6, 1);
    h.schemas
        .migrate(DATABASE_URL, &schema())
        .await
        .expect("fake");
    h.reconcile(
        MetricPipeline::test()
            .finalized()
            .deletion_policy(DeletionPolicy::Delete)
            .deleting(),
    )
    .await
    .expect("cleanup");
    assert_eq!(
        h.api.lines(),
        vec![
            SECRET.to_string(),
            EVENT.to_string(),
            format!("PATCH {PIPELINE}")
        ]
    );
    assert_eq!(event_reasons(&h.api.recorded()), vec!["DataDeleted"]);
    assert!(h.topics.topic(POINTS).is_none());
    assert!(h.topics.topic(ANOMALIES).is_none());
    assert!(!h.schemas.has(&schema()));
}

#[tokio::test]
async fn a_stuck_cleanup_keeps_the_finalizer_until_skip_cleanup_is_set() {
    let h = harness();
    h.topics.set_down(true);
    let mp = MetricPipeline::test()
        .finalized()
        .deletion_policy(DeletionPolicy::Delete)
        .deleting();
    let error = h.reconcile(mp.clone()).await.expect_err("kafka is down");
    assert_eq!(error.reason(), "KafkaUnavailable");
    assert_eq!(
        h.api.lines(),
        vec![EVENT.to_string()],
        "the finalizer stays"
    );
    let note = h.api.recorded()[0].body["note"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.contains(names::SKIP_CLEANUP_ANNOTATION), "{note}");

    h.api.clear();
    h.reconcile(mp.annotated(names::SKIP_CLEANUP_ANNOTATION, "true"))
        .await
        .expect("skipped cleanup");
    assert_eq!(
        h.api.lines(),
        vec![EVENT.to_string(), format!("PATCH {PIPELINE}")]
    );
    assert_eq!(event_reasons(&h.api.recorded()), vec!["DataRetained"]);
}

#[tokio::test]
async fn a_dashboard_without_its_pipeline_says_so() {
    let h = harness();
    let board = Dashboard::test();
    h.api.insert(&board);
    let action = dashboard::reconcile(Arc::new(board), h.ctx.clone())
        .await
        .expect("a missing pipeline is not an error");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let board_path = "/apis/pulse.dev/v1alpha1/namespaces/shop/dashboards/storefront";
    assert_eq!(
        h.api.lines(),
        vec![
            format!("GET {PIPELINE}"),
            format!("PATCH {board_path}/status"),
            EVENT.to_string()
        ]
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(
        condition(&status, "Ready"),
        cond("False", "PipelineNotFound")
    );
}

/// The pipeline's dashboard server, which serves every board over it.
const SERVER: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout-dashboard";

/// A pipeline on its way out (its schema may be dropped, its dashboard server
/// goes with it): the dashboard says why, and has no URL.
#[tokio::test]
async fn a_dashboard_of_a_pipeline_being_deleted_says_so() {
    let h = harness();
    h.api.insert(&MetricPipeline::test().finalized().deleting());
    let board = Dashboard::test();
    h.api.insert(&board);
    dashboard::reconcile(Arc::new(board), h.ctx.clone())
        .await
        .expect("a deleted pipeline is not an error");
    let lines = h.api.lines();
    assert_eq!(lines[0], format!("GET {PIPELINE}"));
    assert!(
        !lines.iter().any(|l| l.starts_with("PATCH /apis/apps/v1")),
        "nothing is applied: {lines:?}"
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(status.body["status"].get("url"), None);
    assert_eq!(
        condition(&status, "Ready"),
        cond("False", "PipelineNotFound")
    );
    let message = status.body["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["message"].to_string())
        .unwrap_or_default();
    assert!(message.contains("being deleted"), "{message}");
}

/// The watch of `MetricPipeline` wakes exactly the dashboards over the
/// pipeline that changed: same namespace, `spec.pipeline` naming it.
#[test]
fn a_pipeline_change_reaches_the_dashboards_over_it() {
    let over = Arc::new(Dashboard::test());
    let mut elsewhere = Dashboard::test();
    elsewhere.metadata.namespace = Some("other".into());
    let mut other_pipeline = Dashboard::test();
    other_pipeline.metadata.name = Some("other-board".into());
    other_pipeline.spec.pipeline = "payments".into();
    let woken = dashboard::dashboards_of(
        &MetricPipeline::test(),
        [over.clone(), Arc::new(elsewhere), Arc::new(other_pipeline)],
    );
    assert_eq!(
        woken,
        vec![kube::runtime::reflector::ObjectRef::from_obj(over.as_ref())]
    );
    assert!(dashboard::dashboards_of(&MetricPipeline::named("payments"), [over]).is_empty());
}

#[tokio::test]
async fn a_dashboard_over_its_pipeline_applies_nothing_and_reports_its_url_and_server() {
    let h = harness();
    h.api.insert(&MetricPipeline::test().finalized());
    let board = Dashboard::test();
    h.api.insert(&board);
    dashboard::reconcile(Arc::new(board.clone()), h.ctx.clone())
        .await
        .expect("reconcile");
    let board_path = "/apis/pulse.dev/v1alpha1/namespaces/shop/dashboards/storefront";
    assert_eq!(
        h.api.lines(),
        [
            format!("GET {PIPELINE}"),
            format!("GET {SERVER}"),
            format!("PATCH {board_path}/status"),
            EVENT.to_string()
        ]
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(
        condition(&status, "Ready"),
        cond("False", "Progressing"),
        "no server yet"
    );
    assert_eq!(
        status.body["status"]["url"],
        "http://checkout-dashboard.shop.svc:8080/d/storefront"
    );

    // Once the pipeline's server is available, the board is ready; through
    // the pipeline's Ingress with TLS, its URL is the public one.
    let server: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "checkout-dashboard", "namespace": "shop"},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"availableReplicas": 2}
        }))
        .expect("deployment");
    h.api.insert(&server);
    let mut pipeline = MetricPipeline::test().finalized();
    pipeline.spec.dashboards.ingress = serde_json::from_value(serde_json::json!(
        {"host": "metrics.example.com", "tlsSecretName": "metrics-tls"}
    ))
    .ok();
    h.api.insert(&pipeline);
    h.api.clear();
    dashboard::reconcile(Arc::new(board), h.ctx.clone())
        .await
        .expect("reconcile");
    let status = status_patch(&h.api.recorded());
    assert_eq!(condition(&status, "Ready"), cond("True", "Reconciled"));
    assert_eq!(
        status.body["status"]["url"],
        "https://metrics.example.com/d/storefront"
    );
}

/// Every valid Dashboard over the pipeline is in its boards ConfigMap: one
/// of another pipeline, and one whose panel asks for a window the pipeline
/// does not compute, are not.
#[tokio::test]
async fn the_pipeline_serves_the_valid_dashboards_over_it() {
    let h = harness();
    let mut other = Dashboard::test();
    other.metadata.name = Some("payments-board".into());
    other.spec.pipeline = "payments".into();
    let mut broken = Dashboard::test();
    broken.metadata.name = Some("broken".into());
    broken.spec.panels[0].window = Some("2h".into());
    for board in [Dashboard::test(), other, broken] {
        h.api.insert(&board);
    }
    h.reconcile(MetricPipeline::test().finalized())
        .await
        .expect("reconcile");
    let recorded = h.api.recorded();
    let boards = recorded
        .iter()
        .find(|r| r.path.ends_with("/configmaps/checkout-dashboard-boards"))
        .expect("boards applied");
    let text = boards.body["data"]["boards.toml"]
        .as_str()
        .unwrap_or_default();
    let served = pulse_core::board::Boards::from_file(text).expect("the server reads it");
    let names: Vec<_> = served.as_slice().iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["storefront"]);
}

/// A pipeline with lag autoscaling in a cluster without KEDA: a condition
/// saying what is missing, Ready unaffected, the fixed replicas kept. With
/// KEDA's API served, the ScaledObject is applied and the processors'
/// replica count left to it.
#[tokio::test]
async fn lag_autoscaling_needs_keda_and_says_so_without_it() {
    let h = harness();
    let mut mp = MetricPipeline::test().finalized();
    mp.spec.processor.autoscaling = serde_json::from_value(serde_json::json!(
        {"minReplicas": 2, "maxReplicas": 20, "lagThreshold": 5000}
    ))
    .ok();
    h.reconcile(mp.clone()).await.expect("reconcile");
    let lines = h.api.lines();
    assert!(
        lines.contains(&"GET /apis/keda.sh/v1alpha1".to_string()),
        "{lines:?}"
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(
        condition(&status, "ProcessorAutoscaling"),
        cond("False", "KedaNotInstalled")
    );
    assert_eq!(condition(&status, "Ready").0, "True");
    let processor = h
        .api
        .recorded()
        .into_iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with("/deployments/checkout-processor"))
        .expect("processor applied");
    assert_eq!(processor.body["spec"]["replicas"], 2);

    h.api.insert_path(
        "/apis/keda.sh/v1alpha1",
        serde_json::json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "keda.sh/v1alpha1",
            "resources": [{"name": "scaledobjects", "singularName": "scaledobject", "namespaced": true,
                           "kind": "ScaledObject", "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]}]
        }),
    );
    h.api.clear();
    h.reconcile(mp).await.expect("reconcile");
    let recorded = h.api.recorded();
    let scaled = recorded
        .iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with("/scaledobjects/checkout-processor"))
        .expect("ScaledObject applied");
    assert!(forced_apply(&scaled.query), "{}", scaled.query);
    assert_eq!(
        scaled.body["spec"]["maxReplicaCount"], 6,
        "capped at the partitions"
    );
    assert_eq!(
        scaled.body["spec"]["triggers"][0]["metadata"]["consumerGroup"],
        "pulse-shop-checkout"
    );
    let processor = recorded
        .iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with("/deployments/checkout-processor"))
        .expect("processor applied");
    assert_eq!(
        processor.body["spec"].get("replicas"),
        None,
        "KEDA owns the count"
    );
    let status = status_patch(&recorded);
    assert_eq!(
        condition(&status, "ProcessorAutoscaling"),
        cond("True", "ScaledObjectApplied")
    );
}

#[tokio::test]
async fn a_refused_apply_shows_in_ready_and_is_retried() {
    let h = harness();
    h.api.refuse("/deployments/");
    let error = h
        .reconcile(MetricPipeline::test().finalized())
        .await
        .expect_err("the API refuses Deployments");
    assert_eq!(error.reason(), "KubernetesApiError");
    assert!(error.to_string().contains("checkout-gateway"), "{error}");
    let lines = h.api.lines();
    assert_eq!(
        lines[lines.len() - 2..],
        [format!("PATCH {PIPELINE}/status"), EVENT.to_string()]
    );
    let status = status_patch(&h.api.recorded());
    assert_eq!(condition(&status, "SchemaReady"), cond("True", "Migrated"));
    assert_eq!(
        condition(&status, "GatewayReady"),
        cond("Unknown", "NotChecked")
    );
    assert_eq!(
        condition(&status, "Ready"),
        cond("False", "KubernetesApiError")
    );
}
