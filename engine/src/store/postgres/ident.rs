//! Identifier rules: which schema names the store accepts. Every schema
//! name is spliced into SQL (`SET search_path`, DDL), so it is checked once,
//! at connect, against an alphabet that needs no quoting or escaping.

use crate::store::StoreError;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Accepts `schema` if it is `[a-z0-9_]`, at most 63 bytes, and starts with
/// neither a digit nor `pg_` (reserved for the system).
pub(super) fn check_schema(schema: &str) -> Result<(), StoreError> {
    let valid = !schema.is_empty()
        && schema.len() <= MAX_IDENTIFIER_BYTES
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && !schema.starts_with("pg_")
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "invalid store schema name `{schema}`: use [a-z0-9_], at most 63 bytes, not starting \
             with a digit or `pg_` (pulse_core::names::schema makes one)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_schemas_pass_the_check() {
        for (ns, name) in [("x", "y"), ("Team-A", "web.v2"), ("ns", "prod☃")] {
            check_schema(&pulse_core::names::schema(ns, name)).unwrap();
        }
        check_schema(&pulse_core::names::schema(&"n".repeat(63), &"p".repeat(50))).unwrap();
    }

    #[test]
    fn invalid_schemas_are_refused() {
        for bad in ["", "Pulse", "a;drop", "9x", "pg_x", "a\"b", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }
}
