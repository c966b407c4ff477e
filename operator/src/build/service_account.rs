//! The ServiceAccount of a pipeline's pods.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::Owner;

/// An account of its own, so the pipeline's pods never run as `default`
/// (which other workloads may have been granted rights to); Pulse's roles do
/// not call the Kubernetes API, so no token is mounted.
pub(super) fn service_account(owner: &Owner<'_>, name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: owner.meta(name, None),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
