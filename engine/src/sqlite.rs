//! The one way the embedded engines open their SQLite files: WAL for concurrent
//! readers, `synchronous = FULL` so a committed transaction survives a machine
//! crash (the gateway's 202 and the processor's checkpoints rely on it).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Opens (creating if missing) the database at `path`; `what` names it in errors.
pub(crate) async fn open_pool(path: &Path, what: &str) -> Result<SqlitePool, String> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .map_err(|e| format!("{what} path {}: {e}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot open the {what} at {}: {e}", path.display()))
}
