//! The ServiceAccount of one role of a pipeline.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;

use super::Owner;
use crate::names::{self, Component};

/// `<pipeline>-<role>`: an account per role, so the pods never run as
/// `default` (which other workloads may have been granted rights to) and each
/// role can get its own cloud identity through `annotations`. Pulse's roles
/// do not call the Kubernetes API, so no token is mounted.
pub(super) fn service_account(
    owner: &Owner<'_>,
    component: Component,
    annotations: &BTreeMap<String, String>,
) -> ServiceAccount {
    let mut metadata = owner.meta(
        &names::object_name(owner.instance, component),
        Some(component),
    );
    metadata.annotations = (!annotations.is_empty()).then(|| annotations.clone());
    ServiceAccount {
        metadata,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
