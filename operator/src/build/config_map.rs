//! The ConfigMap holding a rendered `pulse.toml`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::Owner;
use crate::names;

/// `pulse.toml` under [`names::CONFIG_KEY`], the file the pods mount.
pub(super) fn config_map(owner: &Owner<'_>, name: &str, config_toml: &str) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(name, None),
        data: Some(BTreeMap::from([(
            names::CONFIG_KEY.to_string(),
            config_toml.to_string(),
        )])),
        ..ConfigMap::default()
    }
}
