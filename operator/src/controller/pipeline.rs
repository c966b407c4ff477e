//! Reconciling a `MetricPipeline`: finalizer -> validate -> topics -> schema ->
//! build -> apply -> status, and cleanup by its deletion policy.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};

use super::monitoring;
use super::status::{self, Check};
use super::{Context, Error, error_policy as requeue_policy, key, objects};
use crate::admin::topics::{TopicSpec, TopicsOutcome, ensure_topics};
use crate::build::{Cluster, pipeline_objects};
use crate::crd::{DeletionPolicy, MetricPipeline, MetricPipelineStatus, SecretKeyRef};
use crate::kafka_access;
use crate::names;
use crate::validate::{ValidatedPipeline, validate_pipeline};

/// The kind label of metrics and logs.
pub const KIND: &str = "MetricPipeline";

/// The reconcile entry point kube-runtime's `Controller` calls.
pub async fn reconcile(pipeline: Arc<MetricPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(KIND);
    let Some(namespace) = pipeline.namespace() else {
        // Only a cluster-scoped copy could lack one; nothing to reconcile.
        return Ok(Action::await_change());
    };
    let object_key = key(pipeline.as_ref());
    let api: Api<MetricPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, names::FINALIZER, pipeline, |event| async {
        match event {
            Finalizer::Apply(pipeline) => apply_pipeline(&pipeline, &ctx).await,
            Finalizer::Cleanup(pipeline) => cleanup(&pipeline, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.succeeded(&object_key);
    }
    result
}

/// Requeues a failed pipeline reconcile with backoff.
pub fn error_policy(pipeline: Arc<MetricPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_policy(KIND, pipeline.as_ref(), error, &ctx)
}

/// The pipeline's topics as the spec wants them.
fn topic_specs(pipeline: &ValidatedPipeline) -> [TopicSpec; 2] {
    let topics = &pipeline.topics;
    let retention_ms = i64::try_from(topics.retention.as_millis()).unwrap_or(i64::MAX);
    [&topics.points, &topics.anomalies].map(|name| TopicSpec {
        name: name.clone(),
        partitions: topics.partitions,
        replication_factor: topics.replication_factor,
        retention_ms,
    })
}

async fn apply_pipeline(pipeline: &MetricPipeline, ctx: &Context) -> Result<Action, Error> {
    let validated = match validate_pipeline(pipeline) {
        Ok(validated) => validated,
        Err(invalid) => {
            ctx.metrics.failure(KIND, "InvalidSpec");
            let failed = Check::failed(status::READY, "InvalidSpec", invalid.to_string());
            let checks = [
                Check::unknown(status::TOPICS_READY),
                Check::unknown(status::SCHEMA_READY),
                Check::unknown(status::GATEWAY_READY),
                Check::unknown(status::PROCESSOR_READY),
                Check::unknown(status::DASHBOARD_READY),
                failed,
            ];
            write_status(pipeline, ctx, &checks).await?;
            // A spec change wakes the controller; until then, look rarely.
            return Ok(Action::requeue(status::RESYNC));
        }
    };
    let mut checks = Vec::new();
    let brokers = &validated.topics.brokers;
    if let Err(error) = configure_kafka_access(ctx, &validated).await {
        return fail(pipeline, ctx, checks, Some(status::TOPICS_READY), error).await;
    }
    match ensure_topics(ctx.topics.as_ref(), brokers, &topic_specs(&validated)).await {
        Ok(TopicsOutcome::Ready) => checks.push(Check::ok(
            status::TOPICS_READY,
            "TopicsReady",
            format!(
                "topics {} and {} match the spec",
                validated.topics.points, validated.topics.anomalies
            ),
        )),
        Ok(TopicsOutcome::DecreaseRefused {
            topic,
            current,
            desired,
        }) => checks.push(Check::failed(
            status::TOPICS_READY,
            "PartitionDecreaseRefused",
            format!(
                "topic {topic} has {current} partitions and spec.kafka.partitions asks for {desired}; Kafka \
                 cannot remove partitions, so set spec.kafka.partitions to {current} or more"
            ),
        )),
        Err(error) => return fail(
                pipeline,
                ctx,
                checks,
                Some(status::TOPICS_READY),
                error.into(),
            ).await,
    }
    let migrated = async {
        let url = database_url(ctx, &validated.namespace, &validated.database_url_secret).await?;
        let schema = ctx
            .schemas
            .claim(&url, &validated.namespace, validated.name.as_str())
            .await?;
        ctx.schemas.migrate(&url, &schema).await?;
        Ok::<_, Error>(schema)
    }
    .await;
    match migrated {
        Ok(schema) => checks.push(Check::ok(
            status::SCHEMA_READY,
            "Migrated",
            format!("schema {schema} is migrated"),
        )),
        Err(error) => return fail(pipeline, ctx, checks, Some(status::SCHEMA_READY), error).await,
    }
    let ns = validated.namespace.as_str();
    let applied = async {
        let boards = objects::boards(ctx, &validated).await?;
        let cluster = Cluster {
            keda: validated.roles.processor_scaling.is_some()
                && objects::keda_installed(ctx).await?,
        };
        let mut built = pipeline_objects(&validated, &ctx.image, &boards, cluster);
        let pod_monitors = monitoring::prepare(&ctx.client, &validated, &mut built).await?;
        let applied = objects::apply_all(ctx, ns, validated.name.as_str(), &built).await?;
        monitoring::apply_pod_monitors(&ctx.client, ns, &pod_monitors).await?;
        Ok::<_, Error>((applied, cluster, built.backup))
    }
    .await;
    let (applied, cluster, backup) = match applied {
        Ok(applied) => applied,
        // No condition of its own: Ready carries the API's refusal.
        Err(error) => return fail(pipeline, ctx, checks, None, error).await,
    };
    checks.extend(objects::deployment_checks(&applied));
    match super::backup::reconcile(&ctx.client, pipeline, ns, backup.as_ref()).await {
        Ok(check) => checks.extend(check),
        Err(error) => return fail(pipeline, ctx, checks, None, error).await,
    }
    let again = status::conclude(&mut checks);
    // Not part of Ready: without KEDA the pipeline runs, at its fixed replicas.
    checks.extend(objects::autoscaling_check(&validated, cluster));
    write_status(pipeline, ctx, &checks).await?;
    Ok(Action::requeue(again))
}

/// Records a failed step in the status (the steps before it as checked, the
/// ones after it unknown), publishes a Warning, and returns the error so the
/// error policy requeues with backoff. A failure without a condition of its
/// own (`step` `None`: applying the objects) shows in `Ready`.
async fn fail(
    pipeline: &MetricPipeline,
    ctx: &Context,
    mut checks: Vec<Check>,
    step: Option<&'static str>,
    error: Error,
) -> Result<Action, Error> {
    let failed = |type_| Check::failed(type_, error.reason(), error.to_string());
    if let Some(step) = step {
        checks.push(failed(step));
    }
    for later in [
        status::TOPICS_READY,
        status::SCHEMA_READY,
        status::GATEWAY_READY,
        status::PROCESSOR_READY,
        status::DASHBOARD_READY,
    ] {
        if !checks.iter().any(|c| c.type_ == later) {
            checks.push(Check::unknown(later));
        }
    }
    let ready = match step {
        Some(_) => status::ready(&checks),
        None => failed(status::READY),
    };
    checks.push(ready);
    if let Err(status_error) = write_status(pipeline, ctx, &checks).await {
        tracing::warn!(message = "Cannot record a failure in the status.", %status_error);
    }
    Err(error)
}

/// Writes the conditions (server-side apply on /status) and publishes an
/// Event when they changed: Normal when the pipeline became ready, Warning
/// naming the failing condition otherwise.
async fn write_status(
    pipeline: &MetricPipeline,
    ctx: &Context,
    checks: &[Check],
) -> Result<(), Error> {
    let namespace = pipeline.namespace().unwrap_or_default();
    let name = pipeline.name_any();
    let previous = pipeline
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions = status::conditions(
        previous,
        checks,
        pipeline.meta().generation,
        Timestamp::now(),
    );
    let changed = status::changed(previous, &conditions);
    let ready = checks.iter().find(|c| c.type_ == status::READY).cloned();
    let body = serde_json::json!({
        "apiVersion": MetricPipeline::api_version(&()),
        "kind": MetricPipeline::kind(&()),
        "status": MetricPipelineStatus {
            conditions,
            observed_generation: pipeline.meta().generation,
            gateway_endpoint: Some(names::gateway_url(&namespace, &name)),
            // Kept by the health watch under its own field manager.
            health: None,
        },
    });
    let api: Api<MetricPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(names::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube(format!(
        "writing the status of MetricPipeline {namespace}/{name}"
    )))?;
    if let (true, Some(ready)) = (changed, ready) {
        let type_ = if ready.ok == Some(true) {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish(
            &pipeline.object_ref(&()),
            type_,
            &ready.reason,
            "Reconcile",
            ready.message,
        )
        .await;
    }
    Ok(())
}

/// The database URL from the Secret the spec names.
async fn database_url(
    ctx: &Context,
    namespace: &str,
    secret: &SecretKeyRef,
) -> Result<String, Error> {
    secret_text(ctx, namespace, secret, |problem| Error::DatabaseSecret {
        namespace: namespace.to_string(),
        name: secret.name.clone(),
        key: secret.key.clone(),
        problem: problem.to_string(),
    })
    .await
}

/// Tells the topic admin how to reach the pipeline's Kafka (TLS, SASL), from
/// the Secrets `spec.kafka` names, read anew each reconcile so a rotated
/// Secret is followed.
async fn configure_kafka_access(ctx: &Context, validated: &ValidatedPipeline) -> Result<(), Error> {
    let mut values = HashMap::new();
    for secret in kafka_access::admin_secrets(&validated.kafka) {
        let value = secret_text(ctx, &validated.namespace, &secret, |problem| {
            Error::KafkaSecret {
                namespace: validated.namespace.clone(),
                name: secret.name.clone(),
                key: secret.key.clone(),
                problem: problem.to_string(),
            }
        })
        .await?;
        values.insert(secret, value);
    }
    let properties = kafka_access::admin_properties(&validated.kafka, |secret| {
        values.get(secret).cloned().unwrap_or_default()
    });
    ctx.topics.configure(&validated.topics.brokers, properties);
    Ok(())
}

/// The text of one Secret key; `problem` makes the error naming the spec field.
async fn secret_text(
    ctx: &Context,
    namespace: &str,
    secret: &SecretKeyRef,
    problem: impl Fn(&str) -> Error,
) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let found = api
        .get_opt(&secret.name)
        .await
        .map_err(Error::kube(format!(
            "reading Secret {namespace}/{}",
            secret.name
        )))?
        .ok_or_else(|| problem("the Secret does not exist"))?;
    let value = found
        .data
        .as_ref()
        .and_then(|data| data.get(&secret.key))
        .ok_or_else(|| problem("the Secret has no such key"))?;
    String::from_utf8(value.0.clone()).map_err(|_| problem("the value is not UTF-8 text"))
}

/// Cleanup on deletion: `Retain` keeps topics and schema, `Delete` drops them.
/// The owned objects go with the resource through their owner references.
/// The annotation `pulse.dev/skip-cleanup: "true"` skips the external
/// cleanup, for when Kafka or the database is gone for good.
async fn cleanup(pipeline: &MetricPipeline, ctx: &Context) -> Result<Action, Error> {
    let namespace = pipeline.namespace().unwrap_or_default();
    let name = pipeline.name_any();
    let regarding = pipeline.object_ref(&());
    let points = names::points_topic(&namespace, &name);
    let anomalies = names::anomalies_topic(&namespace, &name);
    let skip = pipeline
        .annotations()
        .get(names::SKIP_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true");
    if skip || pipeline.spec.deletion_policy == DeletionPolicy::Retain {
        let why = if skip {
            format!("{} is \"true\"", names::SKIP_CLEANUP_ANNOTATION)
        } else {
            "deletionPolicy is Retain".to_string()
        };
        ctx.publish(
            &regarding,
            EventType::Normal,
            "DataRetained",
            "Cleanup",
            format!("topics {points}, {anomalies} and the pipeline's schema are kept: {why}"),
        )
        .await;
        return Ok(Action::await_change());
    }
    let dropped = async {
        let brokers = &pipeline.spec.kafka.brokers;
        ctx.topics.delete(brokers, &points).await?;
        ctx.topics.delete(brokers, &anomalies).await?;
        let url = database_url(ctx, &namespace, &pipeline.spec.database.url_secret_ref).await?;
        // Only a schema this pipeline claimed: never one it merely maps to.
        let schema = ctx.schemas.owned(&url, &namespace, &name).await?;
        if let Some(schema) = &schema {
            ctx.schemas.drop_schema(&url, schema).await?;
        }
        Ok::<_, Error>(schema)
    }
    .await;
    match dropped {
        Ok(schema) => {
            let schema = match schema {
                Some(schema) => format!("schema {schema}"),
                None => "no schema (the pipeline had claimed none)".to_string(),
            };
            ctx.publish(
                &regarding,
                EventType::Normal,
                "DataDeleted",
                "Cleanup",
                format!("topics {points}, {anomalies} and {schema} are deleted"),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(error) => {
            ctx.publish(
                &regarding,
                EventType::Warning,
                "CleanupFailed",
                "Cleanup",
                format!(
                    "{error}. Deletion waits for the cleanup; to delete without it, annotate the resource \
                     with {}=true",
                    names::SKIP_CLEANUP_ANNOTATION
                ),
            )
            .await;
            Err(error)
        }
    }
}
