//! A role's placement on its pod template: the spec's scheduling fields, the
//! default spread, and the spec's pod labels and annotations under the
//! operator's own.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::crd::PlacementSpec;

/// The topology keys of the default spread: zones first, then nodes.
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";
pub const NODE_KEY: &str = "kubernetes.io/hostname";

/// Sets `placement` on `pod` and its template `meta`. Without
/// `topologySpreadConstraints`, the pods spread softly over zones and nodes
/// (`ScheduleAnyway`: a cluster of one zone, or a full node, still schedules
/// them). The operator's labels (`selector`) and annotations are set already
/// and win over the spec's, so a pod label can never take a pod out of its
/// Service or PodDisruptionBudget.
pub(super) fn place(
    pod: &mut PodSpec,
    meta: &mut ObjectMeta,
    placement: &PlacementSpec,
    selector: &BTreeMap<String, String>,
) {
    pod.affinity.clone_from(&placement.affinity);
    pod.tolerations = (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone());
    pod.node_selector =
        (!placement.node_selector.is_empty()).then(|| placement.node_selector.clone());
    pod.priority_class_name
        .clone_from(&placement.priority_class_name);
    let spread = placement
        .topology_spread_constraints
        .clone()
        .unwrap_or_else(|| default_spread(selector));
    pod.topology_spread_constraints = (!spread.is_empty()).then_some(spread);
    under(&mut meta.labels, &placement.pod_labels);
    under(&mut meta.annotations, &placement.pod_annotations);
}

/// Adds `extra` to `map` without replacing what `map` holds.
fn under(map: &mut Option<BTreeMap<String, String>>, extra: &BTreeMap<String, String>) {
    if extra.is_empty() {
        return;
    }
    let map = map.get_or_insert_with(BTreeMap::new);
    for (key, value) in extra {
        map.entry(key.clone()).or_insert_with(|| value.clone());
    }
}

/// One pod per zone and per node more than the least loaded, where possible,
/// counted per rollout (`pod-template-hash`), so a new ReplicaSet spreads on
/// its own rather than around the old one's pods.
pub fn default_spread(selector: &BTreeMap<String, String>) -> Vec<TopologySpreadConstraint> {
    [ZONE_KEY, NODE_KEY]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            match_label_keys: Some(vec!["pod-template-hash".into()]),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}
