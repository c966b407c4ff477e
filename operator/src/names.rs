//! Every name, label and annotation the operator, the chart and the webhook
//! agree on (docs/ARCHITECTURE.md "Names and contracts"). The names derived
//! from a pipeline (topics, schema, objects, URLs, ports) come from
//! `pulse_core::names`, re-exported here.

/// API group of the custom resources.
pub const GROUP: &str = "pulse.dev";
/// API version of the custom resources.
pub const VERSION: &str = "v1alpha1";
/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "pulse-operator";
/// Finalizer that lets the operator drop topics and schema on `deletionPolicy: Delete`.
pub const FINALIZER: &str = "pulse.dev/cleanup";
/// Pod label that opts a pod into sidecar injection; its value names the pipeline.
pub const INJECT_LABEL: &str = "pulse.dev/inject";
/// Annotation that lets a `MetricPipeline` be deleted without cleaning up its
/// topics and schema (the escape hatch when Kafka or the database is gone for good).
pub const SKIP_CLEANUP_ANNOTATION: &str = "pulse.dev/skip-cleanup";
/// Pod template annotation holding the hash of the rendered config, so a
/// changed spec rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "pulse.dev/config-hash";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of `app.kubernetes.io/name` on everything the operator makes.
pub const APP_NAME: &str = "pulse";
/// Value of `app.kubernetes.io/managed-by` on everything the operator makes.
pub const MANAGED_BY: &str = "pulse-operator";

pub use pulse_core::names::{
    Component, DASHBOARD_PORT, GATEWAY_PORT, PROCESSOR_PORT, SIDECAR_ADMIN_PORT, SIDECAR_HTTP_PORT,
    SIDECAR_OTLP_PORT, SIDECAR_STATSD_PORT, anomalies_topic, config_map_name, gateway_url,
    object_name, points_topic, schema,
};
/// Name of the injected sidecar container (also how an injected pod is recognised).
pub const SIDECAR_CONTAINER: &str = "pulse-sidecar";
/// Pod annotation the webhook sets on a pod it injected; its value names the pipeline.
pub const INJECTED_ANNOTATION: &str = "pulse.dev/injected";
/// Path of the sidecar injection webhook on the operator's webhook port.
pub const WEBHOOK_PATH: &str = "/mutate-pods";
/// Container port (named `webhook`) the operator serves the webhook on, over TLS.
pub const WEBHOOK_PORT: u16 = 8443;

/// Name of the ConfigMap of a pipeline's boards (every `Dashboard` over it),
/// which its dashboard server mounts.
pub fn boards_config_map_name(pipeline: &str) -> String {
    format!("{pipeline}-dashboard-boards")
}

/// In-cluster URL of board `board` on `pipeline`'s dashboard server.
pub fn board_url(namespace: &str, pipeline: &str, board: &str) -> String {
    format!(
        "http://{}.{namespace}.svc:{DASHBOARD_PORT}/d/{board}",
        object_name(pipeline, Component::Dashboard)
    )
}

/// The key of `pulse.toml` in the ConfigMaps, and where pods mount it.
pub const CONFIG_KEY: &str = "pulse.toml";
pub const CONFIG_DIR: &str = "/etc/pulse";

/// Environment variables that carry Secret values into the pods (the config
/// loader reads `PULSE_<SECTION>__<KEY>`), so no secret is ever in a ConfigMap.
pub const ENV_DATABASE_URL: &str = "PULSE_STORAGE__DATABASE_URL";
pub const ENV_REDIS_URL: &str = "PULSE_CACHE__REDIS_URL";
/// The dashboards' read URL (a replica's).
pub const ENV_DATABASE_READ_URL: &str = "PULSE_DASHBOARD__DATABASE_URL";
pub const ENV_SASL_PASSWORD: &str = "PULSE_BUS__SASL_PASSWORD";

/// The variable holding the URL of the pipeline's receiver number `index`
/// (`alerting.receivers[index].url_env`). By position, as receiver names may
/// hold characters a variable name cannot; outside the config sections, so
/// the loader does not read it as a key.
pub fn receiver_url_env(index: usize) -> String {
    format!("PULSE_RECEIVER_{index}_URL")
}

/// The variable holding the PagerDuty routing key of receiver number `index`.
pub fn receiver_routing_key_env(index: usize) -> String {
    format!("PULSE_RECEIVER_{index}_ROUTING_KEY")
}

/// The CronJob of a pipeline's `spec.backup`: `<pipeline>-backup`.
pub fn backup_cron_job_name(pipeline: &str) -> String {
    format!("{pipeline}-backup")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        assert_eq!(
            object_name("checkout", Component::Gateway),
            "checkout-gateway"
        );
        assert_eq!(
            gateway_url("shop", "checkout"),
            "http://checkout-gateway.shop.svc:9000"
        );
        assert_eq!(
            points_topic("shop", "checkout"),
            "pulse.shop.checkout.points"
        );
        assert_eq!(
            anomalies_topic("shop", "checkout"),
            "pulse.shop.checkout.anomalies"
        );
    }
}
