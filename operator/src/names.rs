//! Every name, label and port the operator, the chart and the webhook agree
//! on, in one place (docs/ARCHITECTURE.md "Names and contracts").

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

/// Container ports of the roles (the defaults of `pulse_core::config`).
pub const GATEWAY_PORT: u16 = 9000;
pub const PROCESSOR_PORT: u16 = 9100;
pub const DASHBOARD_PORT: u16 = 8080;
/// The sidecar's HTTP receiver and admin ports.
pub const SIDECAR_HTTP_PORT: u16 = 9091;
pub const SIDECAR_ADMIN_PORT: u16 = 9092;
/// The sidecar's StatsD (UDP) and OTLP/HTTP receiver ports.
pub const SIDECAR_STATSD_PORT: u16 = 8125;
pub const SIDECAR_OTLP_PORT: u16 = 4318;
/// Name of the injected sidecar container (also how an injected pod is recognised).
pub const SIDECAR_CONTAINER: &str = "pulse-sidecar";
/// Pod annotation the webhook sets on a pod it injected; its value names the pipeline.
pub const INJECTED_ANNOTATION: &str = "pulse.dev/injected";
/// Path of the sidecar injection webhook on the operator's webhook port.
pub const WEBHOOK_PATH: &str = "/mutate-pods";
/// Container port (named `webhook`) the operator serves the webhook on, over TLS.
pub const WEBHOOK_PORT: u16 = 8443;

/// A role of the data path the operator deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Gateway,
    Processor,
    Dashboard,
}

impl Component {
    /// The `app.kubernetes.io/component` value and the `pulse <role>` subcommand.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Processor => "processor",
            Component::Dashboard => "dashboard",
        }
    }
}

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

/// The key of `pulse.toml` in the ConfigMaps, and where pods mount it.
pub const CONFIG_KEY: &str = "pulse.toml";
pub const CONFIG_DIR: &str = "/etc/pulse";

/// Environment variables that carry Secret values into the pods (the config
/// loader reads `PULSE_<SECTION>__<KEY>`), so no secret is ever in a ConfigMap.
pub const ENV_DATABASE_URL: &str = "PULSE_STORAGE__DATABASE_URL";
pub const ENV_REDIS_URL: &str = "PULSE_CACHE__REDIS_URL";
pub const ENV_INGEST_TOKENS: &str = "PULSE_GATEWAY__TOKENS";
pub const ENV_READ_TOKENS: &str = "PULSE_DASHBOARD__READ_TOKENS";

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

pub use pulse_core::config::{anomalies_topic, points_topic};

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
