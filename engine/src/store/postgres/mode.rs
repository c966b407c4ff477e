//! How a schema stores its two time series tables (`raw_points`,
//! `window_results`). A schema keeps the mode it was created with; a new
//! one uses TimescaleDB when the extension can be created.

use std::sync::atomic::{AtomicBool, Ordering};

/// The storage of the time series tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// TimescaleDB hypertables with one-day chunks; retention and
    /// compression are TimescaleDB policies.
    TimescaleDb,
    /// Native range partitions, one per UTC day, made by the store.
    Native,
}

impl Mode {
    /// The mode of a schema whose `raw_points` exists with this `relkind`:
    /// `p` (a partitioned table) is native, anything else a hypertable.
    pub(super) fn of_relkind(relkind: &str) -> Mode {
        if relkind == "p" {
            Mode::Native
        } else {
            Mode::TimescaleDb
        }
    }

    /// The name `/readyz`, the logs and `schema_migrations.mode` show.
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::TimescaleDb => "timescaledb",
            Mode::Native => "native-partitioning",
        }
    }
}

/// The current [`Mode`] of a store, shared by its tasks: decided at
/// connect, settled by `migrate` (which may find it cannot create the
/// extension), read by every commit.
#[derive(Debug)]
pub(super) struct ModeCell(AtomicBool);

impl ModeCell {
    pub(super) fn new(mode: Mode) -> ModeCell {
        ModeCell(AtomicBool::new(mode == Mode::TimescaleDb))
    }

    pub(super) fn get(&self) -> Mode {
        if self.0.load(Ordering::Relaxed) {
            Mode::TimescaleDb
        } else {
            Mode::Native
        }
    }

    pub(super) fn set(&self, mode: Mode) {
        self.0.store(mode == Mode::TimescaleDb, Ordering::Relaxed);
    }
}
