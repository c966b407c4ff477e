//! The reconcilers: one kube-runtime `Controller` per kind, each owning the
//! objects it applies, so a changed or deleted Deployment, Service or
//! ConfigMap brings its owner back to the desired state.
//!
//! A reconcile follows the Stackable shape: validate (spec -> a validated
//! value) -> external systems (topics, schema) -> build (pure) -> server-side
//! apply of every object with one field manager -> status conditions and
//! Events. Errors requeue with a per-object exponential backoff and are
//! counted by reason; a bad spec is a condition, never a crash.

pub mod backup;
pub mod dashboard;
pub mod error;
pub mod monitoring;
pub mod objects;
pub mod pipeline;
pub mod status;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use pulse_core::backoff::Backoff;

use crate::admin::{SchemaAdmin, TopicAdmin};
use crate::crd::{Dashboard, MetricPipeline};
use crate::metrics::Metrics;
use crate::names;

pub use error::Error;

/// Wait after the first failure and longest wait before retrying a failed
/// reconcile (the full pauses; half of each is random).
const BACKOFF_MIN: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A failing object is retried at least every [`BACKOFF_MAX`], so an entry
/// that has not failed for twice that long belongs to a deleted object.
const FORGET_AFTER: Duration = Duration::from_secs(2 * BACKOFF_MAX.as_secs());

/// What every reconcile shares: the API client, the external systems' admins,
/// metrics, the Event recorder, and the default image of the pods.
pub struct Context {
    pub client: Client,
    pub topics: Arc<dyn TopicAdmin>,
    pub schemas: Arc<dyn SchemaAdmin>,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// The pulse image the Deployments run unless a spec names one.
    pub image: String,
    /// Consecutive failures per object (`kind/namespace/name`), for the
    /// backoff, with when each last failed (see [`FORGET_AFTER`]).
    failures: Mutex<HashMap<String, (Backoff, Instant)>>,
}

impl Context {
    pub fn new(
        client: Client,
        topics: Arc<dyn TopicAdmin>,
        schemas: Arc<dyn SchemaAdmin>,
        metrics: Metrics,
        image: String,
    ) -> Context {
        let reporter = Reporter {
            controller: names::MANAGED_BY.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            topics,
            schemas,
            metrics,
            image,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The wait before the next try of an object that failed again: about
    /// 5 s, 10 s, 20 s ... up to 5 minutes, half of each random.
    fn backoff(&self, key: String) -> Duration {
        let mut failures = pulse_core::sync::lock(&self.failures);
        record_failure(&mut failures, key, Instant::now())
    }

    /// Forgets an object's failures after a successful reconcile.
    fn succeeded(&self, key: &str) {
        pulse_core::sync::lock(&self.failures).remove(key);
    }

    /// Publishes an Event about `regarding`; a failure to publish is logged,
    /// never fails the reconcile.
    async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, regarding).await {
            tracing::warn!(message = "Cannot publish an Event.", reason, %error);
        }
    }
}

/// Counts a failure of `key` at `now` and gives its wait, forgetting the
/// objects that have not failed for [`FORGET_AFTER`]: one deleted while
/// failing never succeeds, so nothing else would remove its entry.
fn record_failure(
    failures: &mut HashMap<String, (Backoff, Instant)>,
    key: String,
    now: Instant,
) -> Duration {
    failures.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
    let (backoff, last) = failures
        .entry(key)
        .or_insert_with(|| (Backoff::new(BACKOFF_MIN, BACKOFF_MAX), now));
    *last = now;
    backoff.fail()
}

/// Events take at most 1 kB of note.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The backoff key of an object.
fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Requeues a failed reconcile with the object's backoff and counts the
/// failure by reason.
fn error_policy<K: Resource<DynamicType = ()>>(
    kind: &'static str,
    object: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    ctx.metrics.failure(kind, error.reason());
    let delay = ctx.backoff(key(object));
    tracing::warn!(
        message = "Reconcile failed; retrying.",
        kind,
        namespace = object.namespace().unwrap_or_default(),
        name = object.name_any(),
        reason = error.reason(),
        %error,
        retry_in_s = delay.as_secs()
    );
    Action::requeue(delay)
}

/// Server-side applies `object` in `namespace` with the operator's field
/// manager (forcing ownership of the fields it sets) and returns the object
/// as the API server stored it.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(Error::kube(format!(
        "applying {} {namespace}/{name}",
        K::kind(&())
    )))
}

/// Runs both controllers until the returned future is dropped.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    // status.health of every pipeline, from its processors' metrics.
    let health = crate::health::HealthWatch::new().run(client.clone());
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    ));
    let pipelines = Controller::new(
        Api::<MetricPipeline>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .owns(Api::<Deployment>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
    // A Dashboard added, changed or removed changes its pipeline's boards.
    .watches(
        Api::<Dashboard>::all(client.clone()),
        watcher::Config::default(),
        |dashboard| dashboard::pipeline_of(&dashboard),
    )
    .run(pipeline::reconcile, pipeline::error_policy, ctx.clone())
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(message = "Pipeline reconcile ended in error.", %error);
        }
    });
    let dashboards = Controller::new(
        Api::<Dashboard>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let known = dashboards.store();
    let dashboards = dashboards
        .watches(
            Api::<MetricPipeline>::all(client),
            watcher::Config::default(),
            move |pipeline| dashboard::dashboards_of(&pipeline, known.state()),
        )
        .run(dashboard::reconcile, dashboard::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(message = "Dashboard reconcile ended in error.", %error);
            }
        });
    futures::join!(pipelines, dashboards, health);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_a_char_boundary() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("short".into(), 100), "short");
    }

    #[test]
    fn a_failing_object_backs_off_and_a_deleted_one_is_forgotten() {
        let mut failures = HashMap::new();
        let start = Instant::now();
        let first = record_failure(&mut failures, "a".into(), start);
        let second = record_failure(&mut failures, "a".into(), start);
        assert!(
            first <= BACKOFF_MIN && second >= BACKOFF_MIN,
            "{first:?} {second:?}"
        );
        assert_eq!(failures["a"].0.failures(), 2);
        // "a" was deleted: it never fails (nor succeeds) again.
        let later = start + FORGET_AFTER;
        record_failure(&mut failures, "b".into(), later - Duration::from_secs(1));
        assert!(failures.contains_key("a"), "kept while it may still retry");
        record_failure(&mut failures, "b".into(), later);
        assert_eq!(failures.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(failures["b"].0.failures(), 2);
    }
}
