//! openmls' own tables (through openmls_sqlite_storage): a client device's
//! MLS state; in the component's database, where earlier versions kept the
//! Delivery Service's groups, only until they are converted.

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

/// openmls' storage on a borrowed connection.
type TxStorage<'c> = SqliteStorageProvider<JsonCodec, &'c Connection>;

fn migrate_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Batch(format!("openmls storage migrations: {e}"))
}

/// Creates openmls' tables in `conn` if needed.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(conn).run_migrations().map_err(migrate_error)
}

/// Moves every group the Delivery Service kept in openmls' JSON tables
/// into its compact state (store/state.rs), in one transaction.
pub(super) fn convert_public_groups(conn: &mut Connection) -> Result<usize, StoreError> {
    use openmls::ciphersuite::hash_ref::ProposalRef;
    use openmls::group::{GroupId, PublicGroup};
    use openmls_traits::public_storage::PublicStorageProvider;
    let tx = conn.transaction()?;
    let legacy: Vec<(Vec<u8>, i64)> = tx
        .prepare("SELECT group_id, epoch FROM groups WHERE state IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let storage = TxStorage::new(&tx);
    let mut converted = 0;
    for (group_id, epoch) in legacy {
        let Some(state) = super::state::transcode(&storage, &group_id).map_err(migrate_error)? else { continue };
        tx.execute(
            "UPDATE groups SET state = ?2, state_epoch = epoch, state_bytes = ?3 WHERE group_id = ?1",
            rusqlite::params![group_id, state.blob, state.blob.len() as i64],
        )?;
        for (reference, proposal) in &state.proposals {
            tx.execute(
                "INSERT INTO group_proposals (group_id, epoch, ref, proposal) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![group_id, epoch, reference, proposal],
            )?;
        }
        let gid = GroupId::from_slice(&group_id);
        PublicGroup::delete(&storage, &gid).map_err(migrate_error)?;
        storage.clear_proposal_queue::<GroupId, ProposalRef>(&gid).map_err(migrate_error)?;
        converted += 1;
    }
    drop(storage);
    tx.commit()?;
    Ok(converted)
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

#[cfg(test)]
mod tests {
    use openmls::group::{GroupId, MlsGroup, MlsGroupCreateConfig, ProposalStore, PublicGroup};
    use openmls::prelude::{BasicCredential, CredentialWithKey};
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use openmls_traits::types::SignatureScheme;
    use openmls_traits::OpenMlsProvider;
    use tls_codec::Serialize as _;

    use super::*;
    use crate::store::state::StateCodec;
    use crate::config::StoreConfig;
    use crate::store::Store;

    /// A group the Delivery Service kept in openmls' JSON tables (as
    /// earlier versions did) is in the compact state once the store opens
    /// again, the same group, and openmls' rows for it are gone.
    #[tokio::test]
    async fn groups_kept_in_openmls_tables_are_converted_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { path: dir.path().join("ds.sqlite3"), ..StoreConfig::default() };
        Store::open(&config).unwrap().close().await;
        let (provider, signer) = (OpenMlsRustCrypto::default(), SignatureKeyPair::new(SignatureScheme::ED25519).unwrap());
        let credential = CredentialWithKey {
            credential: BasicCredential::new(b"xmpp:alice@example.org".to_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        let id = GroupId::from_slice(b"legacy-group-id!");
        let group = MlsGroup::new_with_group_id(
            &provider,
            &signer,
            &MlsGroupCreateConfig::builder().ciphersuite(crate::client::CIPHERSUITE).build(),
            id.clone(),
            credential,
        )
        .unwrap();
        let info = group.export_group_info(provider.crypto(), &signer, true).unwrap().tls_serialize_detached().unwrap();
        let (gi, tree) = crate::protocol::mls::group_info(&info, id.as_slice()).unwrap();
        let conn = Connection::open(&config.path).unwrap();
        let (legacy, _) = PublicGroup::from_external(provider.crypto(), &TxStorage::new(&conn), tree.unwrap(), gi, ProposalStore::new()).unwrap();
        conn.execute("INSERT INTO groups (group_id, created_at, epoch, group_info) VALUES (?1, 0, 0, ?2)", rusqlite::params![id.as_slice(), info]).unwrap();
        drop(conn);
        let store = Store::open(&config).unwrap();
        let (state, public) = store.group_snapshot(id.as_slice().to_vec()).await.unwrap().unwrap();
        assert_eq!((state.epoch, state.queued), (0, 0));
        assert_eq!(state.state_bytes, public.blob.len() as u64, "kept whole at its epoch");
        let converted = StateCodec::load(&public, id.as_slice()).unwrap().unwrap();
        let tree_of = |pg: &PublicGroup| pg.export_ratchet_tree().tls_serialize_detached().unwrap();
        assert_eq!(tree_of(&converted), tree_of(&legacy));
        assert_eq!(converted.group_context(), legacy.group_context());
        assert_eq!(converted.confirmation_tag(), legacy.confirmation_tag());
        store.close().await;
        let conn = Connection::open(&config.path).unwrap();
        assert!(PublicGroup::load(&TxStorage::new(&conn), &id).unwrap().is_none(), "openmls' rows are gone");
    }
}
