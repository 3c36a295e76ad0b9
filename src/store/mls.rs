//! openmls' own tables (through openmls_sqlite_storage): a client device's
//! MLS state, and the Delivery Service's `PublicGroup`s inside the
//! component's transactions.

use std::path::Path;

use openmls_sqlite_storage::{Codec, SqliteStorageProvider};
use rusqlite::Connection;

use super::StoreError;

/// JSON: openmls' storage types need a self-describing codec.
#[derive(Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// openmls' storage on its own connection (a client device's file).
pub type MlsStorage = SqliteStorageProvider<JsonCodec, Connection>;

/// openmls' storage on a borrowed connection, inside a write transaction.
pub type TxStorage<'c> = SqliteStorageProvider<JsonCodec, &'c Connection>;

fn migrate_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Batch(format!("openmls storage migrations: {e}"))
}

/// Creates openmls' tables in `conn` if needed.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(conn).run_migrations().map_err(migrate_error)
}

/// Opens openmls' storage in `path`, creating its tables if needed.
pub fn open_mls_storage(path: &Path) -> Result<MlsStorage, StoreError> {
    super::local::private_file(path)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut storage = MlsStorage::new(conn);
    storage.run_migrations().map_err(migrate_error)?;
    Ok(storage)
}

/// A scratch openmls storage in `path` holding only one group's data rows:
/// a decrypt-only copy of that group at one epoch.
pub fn storage_from_rows(path: &Path, group_key: &[u8], rows: &[(u16, String, Vec<u8>)]) -> Result<MlsStorage, StoreError> {
    let storage = open_mls_storage(path)?;
    let conn = Connection::open(path)?;
    for (version, data_type, data) in rows {
        conn.execute(
            "INSERT OR REPLACE INTO openmls_group_data (provider_version, group_id, data_type, group_data)
             VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![version, group_key, data_type, data],
        )?;
    }
    Ok(storage)
}
