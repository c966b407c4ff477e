//! The seam between sqlx and the store's types: driver errors become
//! [`StoreError`]s that say whether to retry, columns and arguments are
//! read and bound with a typed error instead of a panic, and tags travel
//! as JSON text (`series.tags` is `jsonb`).

use pulse_core::Tags;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Postgres, Row};

use crate::store::StoreError;

/// Maps a driver error: connection trouble and transient conflicts are
/// `Unavailable` (retry), undecodable data is `Corrupt`, the rest `Other`.
pub(in crate::store) fn db_error(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed => StoreError::Unavailable(super::options::connect_failure(&e)),
        E::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            // 08 connection exception, 53 insufficient resources, 57 operator
            // intervention (shutdown, statement/lock timeout), 40001
            // serialization failure, 40P01 deadlock, 55P03 lock not available.
            let transient = code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || matches!(code.as_str(), "40001" | "40P01" | "55P03");
            if transient {
                StoreError::Unavailable(format!("{e} (SQLSTATE {code})"))
            } else {
                StoreError::Other(format!("{e} (SQLSTATE {code})"))
            }
        }
        E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Other(e.to_string()),
    }
}

/// Column `index` of `row`; a value that does not decode is `Corrupt`.
pub(in crate::store) fn col<'r, T>(row: &'r PgRow, index: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(index)
        .map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
}

/// Binds `value` as the next argument of a statement built at run time.
pub(super) fn arg<'q, T>(args: &mut PgArguments, value: T) -> Result<(), StoreError>
where
    T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value)
        .map_err(|e| StoreError::Other(format!("encoding a query argument: {e}")))
}

/// Tags as the JSON object text `series.tags` (`jsonb`) is written from.
pub(super) fn tags_json(tags: &Tags) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "{}".into())
}

/// Tags read back from `series.tags::text`.
pub(super) fn parse_tags(text: &str) -> Result<Tags, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("series tags: {e}")))
}

/// Whether `e` is a unique-key violation (SQLSTATE 23505).
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
