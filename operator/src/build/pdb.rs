//! The PodDisruptionBudget of a role.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use crate::names::{self, Component};

/// At most one pod of the role evicted at a time: a drain never takes the
/// whole gateway (or every processor) down, whatever the replica count.
pub(super) fn pdb(owner: &Owner<'_>, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.meta(
            &names::object_name(owner.instance, component),
            Some(component),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(owner.selector(Some(component))),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
