//! The objects of one `Dashboard`: its config, Deployment and Service.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};

use super::{Owner, config_hash, config_map, deployment, service};
use crate::names::{self, Component};
use crate::validate::ValidatedDashboard;

/// Every object of one dashboard, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardObjects {
    pub config_map: ConfigMap,
    pub service: Service,
    pub deployment: Deployment,
}

/// The objects of `dashboard`; its pods run `image` unless the dashboard or its
/// pipeline names one.
pub fn dashboard_objects(dashboard: &ValidatedDashboard, image: &str) -> DashboardObjects {
    let owner = Owner {
        namespace: &dashboard.namespace,
        instance: dashboard.name.as_str(),
        reference: &dashboard.owner,
    };
    let config_map_name = names::dashboard_config_map_name(dashboard.name.as_str());
    let hash = config_hash(&dashboard.config_toml);
    let mounts = dashboard.connections.dashboard();
    let mut env = deployment::secret_env([
        (
            names::ENV_DATABASE_URL,
            Some(&dashboard.database_url_secret),
        ),
        (names::ENV_REDIS_URL, dashboard.redis_url_secret.as_ref()),
    ]);
    env.extend(mounts.env);
    DashboardObjects {
        config_map: config_map::config_map(&owner, &config_map_name, &dashboard.config_toml),
        service: service::service(&owner, Component::Dashboard),
        deployment: deployment::deployment(
            &owner,
            deployment::Role {
                component: Component::Dashboard,
                workload: &dashboard.workload,
                image: dashboard.image.as_deref().unwrap_or(image),
                config_map: &config_map_name,
                config_hash: &hash,
                env,
                volumes: mounts.volumes,
                service_account: None,
            },
        ),
    }
}
