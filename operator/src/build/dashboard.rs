//! The boards ConfigMap of a pipeline's dashboard server: every `Dashboard`
//! over the pipeline in one boards file, which the server re-reads when the
//! kubelet updates the mounted volume (no restart, no config-hash change).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use pulse_core::board::{BoardError, Boards};

use super::Owner;
use crate::names::{self, Component};
use crate::validate::{BOARDS_KEY, ValidatedDashboard};

/// The boards of `dashboards` (sorted by name, so the file, and with it the
/// ConfigMap, only changes when a board does).
pub fn boards(dashboards: &[ValidatedDashboard]) -> Result<Boards, BoardError> {
    let mut boards: Vec<_> = dashboards.iter().map(|d| d.board.clone()).collect();
    boards.sort_by(|a, b| a.name.cmp(&b.name));
    Boards::new(boards)
}

/// `<pipeline>-dashboard-boards`, holding the boards file under [`BOARDS_KEY`].
pub(super) fn boards_config_map(owner: &Owner<'_>, text: String) -> ConfigMap {
    ConfigMap {
        metadata: owner.meta(
            &names::boards_config_map_name(owner.instance),
            Some(Component::Dashboard),
        ),
        data: Some(BTreeMap::from([(BOARDS_KEY.to_string(), text)])),
        ..ConfigMap::default()
    }
}
