//! Versioned schema migrations (SQLite `user_version`). Append, never edit.

use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

use super::StoreError;

const MIGRATIONS: &[M<'static>] = &[
    // 1: groups the Delivery Service follows, keyed by MLS group_id.
    M::up(
        "CREATE TABLE groups (
            group_id   BLOB PRIMARY KEY,
            created_at INTEGER NOT NULL
        ) STRICT;",
    ),
];

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    Migrations::from_slice(MIGRATIONS).to_latest(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        rusqlite_migration::Migrations::from_slice(super::MIGRATIONS).validate().unwrap();
    }
}
