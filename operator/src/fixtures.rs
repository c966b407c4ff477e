//! Test builders and fakes for the reconcilers (after kube-rs controller-rs's
//! `fixtures.rs`): resources that read like `MetricPipeline::test().finalized()`,
//! in-memory topic and schema admins, and an in-process API server behind
//! `tower_test::mock::pair()` that answers every request the reconcilers make
//! and records them in order, so a test checks method, path and body of each.
//! Public because the `pulse bench --only operator` measurement uses them too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use pulse_core::sync::lock;

use async_trait::async_trait;
use http::{Request, Response, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::admin::{
    SchemaAdmin, SchemaAdminError, TopicAdmin, TopicAdminError, TopicSpec, TopicState,
};
use crate::crd::{Dashboard, DeletionPolicy, MetricPipeline};
use crate::names;

/// Namespace of the test resources.
pub const NAMESPACE: &str = "shop";
/// Name of the test pipeline.
pub const PIPELINE: &str = "checkout";
/// The Secret and key holding the test pipeline's database URL.
pub const DATABASE_SECRET: &str = "checkout-db";
pub const DATABASE_KEY: &str = "url";
/// The database URL the test Secret holds.
pub const DATABASE_URL: &str = "postgres://pulse@db.shop.svc:5432/pulse";
/// The test pipeline's Kafka brokers.
pub const BROKERS: &str = "kafka-0.kafka:9092";

impl MetricPipeline {
    /// A valid pipeline `shop/checkout`, generation 1, without finalizer.
    pub fn test() -> MetricPipeline {
        MetricPipeline::named(PIPELINE)
    }

    /// A valid pipeline `shop/<name>` (uid derived from the name).
    pub fn named(name: &str) -> MetricPipeline {
        let spec = serde_json::from_value(json!({
            "kafka": {"brokers": BROKERS},
            "database": {"urlSecretRef": {"name": DATABASE_SECRET, "key": DATABASE_KEY}},
        }))
        .unwrap_or_else(|e| unreachable!("the fixture spec is valid JSON for the CRD: {e}"));
        let mut pipeline = MetricPipeline::new(name, spec);
        pipeline.metadata.namespace = Some(NAMESPACE.into());
        pipeline.metadata.uid = Some(format!("uid-{name}"));
        pipeline.metadata.generation = Some(1);
        pipeline
    }

    /// With the operator's finalizer, as after the first reconcile.
    pub fn finalized(mut self) -> MetricPipeline {
        self.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        self
    }

    /// Being deleted (deletionTimestamp set).
    pub fn deleting(mut self) -> MetricPipeline {
        self.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self
    }

    pub fn deletion_policy(mut self, policy: DeletionPolicy) -> MetricPipeline {
        self.spec.deletion_policy = policy;
        self
    }

    pub fn partitions(mut self, partitions: i32) -> MetricPipeline {
        self.spec.kafka.partitions = partitions;
        self
    }

    pub fn annotated(mut self, key: &str, value: &str) -> MetricPipeline {
        self.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }

    /// With an anomaly rule notifying a Slack receiver whose URL is in the
    /// Secret `alerts`, key `slack`.
    pub fn alerting(mut self) -> MetricPipeline {
        let (anomaly, alerting) = serde_json::from_value(json!([
            {"rules": [{"name": "cpu-spike", "metric": "cpu", "detector": "ewma", "notify": ["chat"]}]},
            {"receivers": [{"name": "chat", "kind": "slack", "urlSecretRef": {"name": "alerts", "key": "slack"}}]},
        ]))
        .unwrap_or_else(|e| unreachable!("the fixture rules are valid JSON for the CRD: {e}"));
        self.spec.anomaly = Some(anomaly);
        self.spec.alerting = Some(alerting);
        self
    }

    /// With a window the validation refuses.
    pub fn invalid(mut self) -> MetricPipeline {
        self.spec.windows = vec!["7 fortnights".into()];
        self
    }
}

impl Dashboard {
    /// A valid dashboard `shop/storefront` over the pipeline `checkout`.
    pub fn test() -> Dashboard {
        let spec = serde_json::from_value(json!({
            "pipeline": PIPELINE,
            "panels": [{"metric": "cpu_usage", "window": "5m", "aggs": ["avg", "p95"]}],
        }))
        .unwrap_or_else(|e| unreachable!("the fixture spec is valid JSON for the CRD: {e}"));
        let mut dashboard = Dashboard::new("storefront", spec);
        dashboard.metadata.namespace = Some(NAMESPACE.into());
        dashboard.metadata.uid = Some("uid-storefront".into());
        dashboard.metadata.generation = Some(1);
        dashboard
    }
}

/// The Secret holding the test pipeline's database URL.
pub fn database_secret() -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(DATABASE_SECRET.into()),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            DATABASE_KEY.to_string(),
            ByteString(DATABASE_URL.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// An in-memory [`TopicAdmin`]: topics by name, a switch that makes every
/// call fail as if Kafka were down, and a log of the calls.
#[derive(Default)]
pub struct FakeTopicAdmin {
    topics: Mutex<HashMap<String, TopicState>>,
    down: Mutex<bool>,
    calls: Mutex<Vec<String>>,
}

impl FakeTopicAdmin {
    pub fn new() -> Arc<FakeTopicAdmin> {
        Arc::new(FakeTopicAdmin::default())
    }

    /// Makes every call fail with [`TopicAdminError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    /// Puts a topic in place, as if it existed before.
    pub fn insert(&self, topic: &str, partitions: i32, retention_ms: i64) {
        lock(&self.topics).insert(
            topic.into(),
            TopicState {
                partitions,
                retention_ms: Some(retention_ms),
            },
        );
    }

    pub fn topic(&self, topic: &str) -> Option<TopicState> {
        lock(&self.topics).get(topic).cloned()
    }

    /// The calls made so far, like `create pulse.shop.checkout.points`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn call(&self, brokers: &str, what: String) -> Result<(), TopicAdminError> {
        lock(&self.calls).push(what.clone());
        if *lock(&self.down) {
            return Err(TopicAdminError::Unavailable {
                brokers: brokers.into(),
                operation: what,
                detail: "connection refused (fake)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl TopicAdmin for FakeTopicAdmin {
    async fn describe(
        &self,
        brokers: &str,
        topic: &str,
    ) -> Result<Option<TopicState>, TopicAdminError> {
        self.call(brokers, format!("describe {topic}"))?;
        Ok(self.topic(topic))
    }

    async fn create(&self, brokers: &str, spec: &TopicSpec) -> Result<(), TopicAdminError> {
        self.call(brokers, format!("create {}", spec.name))?;
        self.insert(&spec.name, spec.partitions, spec.retention_ms);
        Ok(())
    }

    async fn grow_partitions(
        &self,
        brokers: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<(), TopicAdminError> {
        self.call(brokers, format!("grow {topic} {partitions}"))?;
        if let Some(state) = lock(&self.topics).get_mut(topic) {
            state.partitions = partitions;
        }
        Ok(())
    }

    async fn set_retention(
        &self,
        brokers: &str,
        topic: &str,
        retention_ms: i64,
    ) -> Result<(), TopicAdminError> {
        self.call(brokers, format!("retention {topic} {retention_ms}"))?;
        if let Some(state) = lock(&self.topics).get_mut(topic) {
            state.retention_ms = Some(retention_ms);
        }
        Ok(())
    }

    async fn delete(&self, brokers: &str, topic: &str) -> Result<(), TopicAdminError> {
        self.call(brokers, format!("delete {topic}"))?;
        lock(&self.topics).remove(topic);
        Ok(())
    }
}

/// An in-memory [`SchemaAdmin`]: the set of migrated schemas, a down switch,
/// and the URLs it was called with.
#[derive(Default)]
pub struct FakeSchemaAdmin {
    schemas: Mutex<HashSet<String>>,
    down: Mutex<bool>,
    urls: Mutex<Vec<String>>,
}

impl FakeSchemaAdmin {
    pub fn new() -> Arc<FakeSchemaAdmin> {
        Arc::new(FakeSchemaAdmin::default())
    }

    pub fn set_down(&self, down: bool) {
        *lock(&self.down) = down;
    }

    pub fn has(&self, schema: &str) -> bool {
        lock(&self.schemas).contains(schema)
    }

    /// The database URLs the calls were given (read from the Secret).
    pub fn urls(&self) -> Vec<String> {
        lock(&self.urls).clone()
    }

    fn call(
        &self,
        url: &str,
        schema: &str,
        operation: &'static str,
    ) -> Result<(), SchemaAdminError> {
        lock(&self.urls).push(url.into());
        if *lock(&self.down) {
            return Err(SchemaAdminError::Unavailable {
                schema: schema.into(),
                operation,
                detail: "connection refused (fake)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SchemaAdmin for FakeSchemaAdmin {
    async fn claim(
        &self,
        url: &str,
        namespace: &str,
        name: &str,
    ) -> Result<String, SchemaAdminError> {
        let schema = pulse_core::names::schema(namespace, name);
        self.call(url, &schema, "claiming")?;
        Ok(schema)
    }

    async fn owned(
        &self,
        url: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<String>, SchemaAdminError> {
        let schema = pulse_core::names::schema(namespace, name);
        self.call(url, &schema, "looking up")?;
        Ok(lock(&self.schemas).contains(&schema).then_some(schema))
    }

    async fn migrate(&self, url: &str, schema: &str) -> Result<(), SchemaAdminError> {
        self.call(url, schema, "migrating")?;
        lock(&self.schemas).insert(schema.into());
        Ok(())
    }

    async fn drop_schema(&self, url: &str, schema: &str) -> Result<(), SchemaAdminError> {
        self.call(url, schema, "dropping")?;
        lock(&self.schemas).remove(schema);
        Ok(())
    }
}

/// One request the fake API server answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query (`fieldManager=pulse-operator&force=true`), empty when none.
    pub query: String,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

impl Recorded {
    /// `"PATCH /apis/apps/v1/namespaces/shop/deployments/checkout-gateway"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct ApiState {
    /// Stored objects by path (`/api/v1/namespaces/shop/secrets/checkout-db`).
    objects: HashMap<String, Value>,
    recorded: Vec<Recorded>,
    /// Whether applied Deployments report all replicas available.
    deployments_available: bool,
    /// Requests answered, recorded or not.
    answered: usize,
    /// Whether requests are kept in `recorded` (a benchmark turns it off).
    forget: bool,
    /// Requests whose path contains this are refused with 403 Forbidden.
    refused: Option<String>,
}

/// An in-process Kubernetes API server for the reconcilers: stores the
/// objects a test puts in or creates, answers GETs from them, echoes server-side
/// applies (a Deployment's status says its replicas are available when
/// [`FakeApi::deployments_available`] is on), applies finalizer patches, and
/// records every request in order.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    /// The server and a client talking to it; the server runs on the current
    /// tokio runtime until the client (and its clones) are dropped.
    pub fn start() -> (FakeApi, Client) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = server.answer(request).await;
                respond.send_response(response);
            }
        });
        (api, Client::new(service, NAMESPACE))
    }

    /// Stores a namespaced object where GETs find it.
    pub fn insert<K>(&self, object: &K)
    where
        K: Resource<DynamicType = ()> + serde::Serialize,
    {
        let path = object_path::<K>(
            object.meta().namespace.as_deref().unwrap_or(NAMESPACE),
            object.meta().name.as_deref().unwrap_or_default(),
        );
        let value = serde_json::to_value(object).unwrap_or(Value::Null);
        lock(&self.state).objects.insert(path, value);
    }

    /// Stores `value` at `path` as is (an API discovery document such as
    /// `/apis/keda.sh/v1alpha1`, which says an API is served, or a
    /// cluster-scoped object) where GETs find it.
    pub fn insert_path(&self, path: &str, value: Value) {
        lock(&self.state).objects.insert(path.into(), value);
    }

    pub fn deployments_available(&self, available: bool) {
        lock(&self.state).deployments_available = available;
    }

    /// Every request so far, in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        lock(&self.state).recorded.clone()
    }

    /// `METHOD path` of every request so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.recorded().iter().map(Recorded::line).collect()
    }

    /// Stops keeping requests (they are still answered and counted), so a
    /// long run measures the reconciler, not the record.
    pub fn forget_requests(&self) {
        lock(&self.state).forget = true;
    }

    /// Refuses (403 Forbidden, as missing RBAC would) every request whose
    /// path contains `fragment`.
    pub fn refuse(&self, fragment: &str) {
        lock(&self.state).refused = Some(fragment.into());
    }

    /// How many requests were answered so far.
    pub fn answered(&self) -> usize {
        lock(&self.state).answered
    }

    /// Forgets the recorded requests (stored objects stay).
    pub fn clear(&self) {
        lock(&self.state).recorded.clear();
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().to_string();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let body = match request.into_body().collect_bytes().await {
            Ok(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        let mut state = lock(&self.state);
        state.answered += 1;
        if !state.forget {
            state.recorded.push(Recorded {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: body.clone(),
            });
        }
        if state
            .refused
            .as_deref()
            .is_some_and(|fragment| path.contains(fragment))
        {
            return respond(
                StatusCode::FORBIDDEN,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("{path} is forbidden"), "reason": "Forbidden", "code": 403
                }),
            );
        }
        let answer = match method.as_str() {
            "GET" => state
                .objects
                .get(&path)
                .cloned()
                .or_else(|| list(&state, &path, &query)),
            "POST" => {
                // A create: kept, so the next GET finds it.
                if let Some(name) = body["metadata"]["name"].as_str() {
                    let stored = format!("{path}/{name}");
                    state.objects.insert(stored, body.clone());
                }
                Some(body)
            }
            "DELETE" => Some(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
            "PATCH" => patch(&mut state, &path, body),
            _ => None,
        };
        match answer {
            Some(value) => respond(StatusCode::OK, &value),
            None => respond(
                StatusCode::NOT_FOUND,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("{path} not found"), "reason": "NotFound", "code": 404
                }),
            ),
        }
    }
}

/// Answers a GET of a namespaced collection (`/api/v1/namespaces/shop/pods`)
/// with the stored objects under it that match the `labelSelector` of the
/// query (`k=v` terms, comma-separated); `None` for any other path.
fn list(state: &ApiState, path: &str, query: &str) -> Option<Value> {
    let (_, scoped) = path.split_once("/namespaces/")?;
    if scoped.split('/').count() != 2 {
        return None;
    }
    let selector = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("labelSelector="))
        .map(|s| {
            s.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
        .unwrap_or_default();
    let terms: Vec<(&str, &str)> = selector
        .split(',')
        .filter_map(|term| term.split_once('='))
        .collect();
    let prefix = format!("{path}/");
    let mut items: Vec<(&String, &Value)> = state
        .objects
        .iter()
        .filter(|(stored, _)| stored.starts_with(&prefix) && !stored[prefix.len()..].contains('/'))
        .filter(|(_, object)| {
            terms
                .iter()
                .all(|(key, value)| object["metadata"]["labels"][*key] == *value)
        })
        .collect();
    items.sort_by_key(|(stored, _)| *stored);
    Some(json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": "1"},
        "items": items.into_iter().map(|(_, object)| object.clone()).collect::<Vec<_>>(),
    }))
}

/// Answers a PATCH: a status apply merges into the stored object, a JSON
/// patch of a stored object (the finalizer) is applied to it, any other
/// apply is echoed as stored.
fn patch(state: &mut ApiState, path: &str, body: Value) -> Option<Value> {
    if let Some(object_path) = path.strip_suffix("/status") {
        let stored = state.objects.get_mut(object_path)?;
        stored["status"] = body.get("status").cloned().unwrap_or(Value::Null);
        return Some(stored.clone());
    }
    if let Value::Array(operations) = &body {
        let stored = state.objects.get_mut(path)?;
        for operation in operations {
            let add = operation.get("op").and_then(Value::as_str) == Some("add");
            let target = operation.get("path").and_then(Value::as_str);
            let value = operation.get("value").cloned().unwrap_or(Value::Null);
            match (add, target) {
                (true, Some("/metadata/finalizers")) => stored["metadata"]["finalizers"] = value,
                (true, Some("/metadata/finalizers/-")) => {
                    if let Some(list) = stored["metadata"]["finalizers"].as_array_mut() {
                        list.push(value);
                    }
                }
                _ => {}
            }
        }
        if operations
            .iter()
            .any(|o| o.get("op").and_then(Value::as_str) == Some("remove"))
        {
            stored["metadata"]["finalizers"] = json!([]);
        }
        return Some(stored.clone());
    }
    let mut applied = body;
    if path.contains("/deployments/") {
        let replicas = applied["spec"]["replicas"].as_i64().unwrap_or(1);
        let available = if state.deployments_available {
            replicas
        } else {
            0
        };
        applied["status"] = json!({"replicas": replicas, "availableReplicas": available});
    }
    // An apply to a stored object (a Lease) merges into it, as server-side
    // apply keeps the fields it does not set; applies of objects nothing
    // reads back are echoed without being kept, so a long benchmark measures
    // the operator's memory, not the fake's.
    if let Some(stored) = state.objects.get_mut(path) {
        merge(stored, applied);
        return Some(stored.clone());
    }
    Some(applied)
}

/// Merges `applied` into `stored`, object fields recursively (enough of
/// server-side apply for the objects a test stores).
fn merge(stored: &mut Value, applied: Value) {
    match (stored, applied) {
        (Value::Object(stored), Value::Object(applied)) => {
            for (key, value) in applied {
                merge(stored.entry(key).or_insert(Value::Null), value);
            }
        }
        (stored, applied) => *stored = applied,
    }
}

fn respond(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response
}

/// The API path of a namespaced object of kind `K`.
pub fn object_path<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
    let group = K::group(&());
    let prefix = if group.is_empty() {
        format!("/api/{}", K::version(&()))
    } else {
        format!("/apis/{group}/{}", K::version(&()))
    };
    format!("{prefix}/namespaces/{namespace}/{}/{name}", K::plural(&()))
}
