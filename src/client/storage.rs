//! Where a device keeps its state: openmls' storage of its MLS state and
//! the device's own records beside it. [`SqliteStorage`] (one SQLite file)
//! is the implementation this crate ships; a host with a storage of its own
//! implements [`DeviceStorage`] over it.

use std::path::{Path, PathBuf};

use openmls_traits::storage::{StorageProvider, CURRENT_VERSION};

use super::device::{group_key, DeviceError};
pub use crate::store::local::{DeviceRecord, LastSeen};
use crate::store::local::{open_mls_storage, LocalStore, MlsStorage};

/// One row of a group's MLS state: (provider version, data type, data).
pub type StateRow = (u16, String, Vec<u8>);

/// A device's state: its MLS state and its records.
pub trait DeviceStorage {
    /// openmls' storage of the device's MLS state (groups, keys, KeyPackages).
    type Mls: StorageProvider<CURRENT_VERSION>;
    fn mls(&self) -> &Self::Mls;

    /// Who the device is, once created.
    fn device(&self) -> Result<Option<DeviceRecord>, DeviceError>;
    fn save_device(&self, record: &DeviceRecord, now: i64) -> Result<(), DeviceError>;

    /// The groups the device is in, as JIDs, and their last archive item applied.
    fn add_group(&self, group_id: &[u8], jid: &str) -> Result<(), DeviceError>;
    fn forget_group(&self, group_id: &[u8]) -> Result<(), DeviceError>;
    fn groups(&self) -> Result<Vec<String>, DeviceError>;
    fn last_seen(&self, group_id: &[u8]) -> Result<Option<LastSeen>, DeviceError>;
    fn set_last_seen(&self, group_id: &[u8], seen: &LastSeen) -> Result<(), DeviceError>;
    /// A group found forked (its epoch check differed): nothing is sent into it.
    fn mark_forked(&self, group_id: &[u8]) -> Result<(), DeviceError>;
    fn is_forked(&self, group_id: &[u8]) -> Result<bool, DeviceError>;

    /// Own messages sent and not echoed yet (serialised), in sending order.
    fn add_unechoed(&self, id: &str, stanza: &str) -> Result<(), DeviceError>;
    fn remove_unechoed(&self, id: &str) -> Result<(), DeviceError>;
    fn unechoed(&self) -> Result<Vec<(String, String)>, DeviceError>;

    /// The current last-resort KeyPackage: reference and creation time.
    fn last_resort(&self) -> Result<Option<(String, i64)>, DeviceError>;
    fn set_last_resort(&self, kp_ref: &str, now: i64) -> Result<(), DeviceError>;

    /// The highest vault `keys` record the device opened, as (version,
    /// current data key ID), and raising it (see [`crate::store::local::VaultMark`]).
    fn vault_high_water(&self) -> Result<Option<crate::store::local::VaultMark>, DeviceError>;
    fn raise_vault_high_water(&self, mark: &crate::store::local::VaultMark) -> Result<(), DeviceError>;

    /// The device's vault key pair (public, private), if it made one; and
    /// keeping one unless it has one (returns the one kept).
    fn vault_device_key(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>, DeviceError>;
    fn keep_vault_device_key(&self, public: &[u8], private: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DeviceError>;

    /// One group's MLS state as rows: what a decrypt-only snapshot for a
    /// new device of the account carries.
    fn group_rows(&self, group_id: &[u8]) -> Result<Vec<StateRow>, DeviceError>;
    /// A consistent copy of the whole state, for a backup of the device.
    fn backup(&self) -> Result<Vec<u8>, DeviceError>;
}

/// The device in one SQLite file (mode 0600): openmls' tables through
/// openmls_sqlite_storage, and the device's records beside them.
pub struct SqliteStorage {
    path: PathBuf,
    records: LocalStore,
    mls: MlsStorage,
}

impl SqliteStorage {
    pub fn open(path: &Path) -> Result<Self, DeviceError> {
        Ok(Self { path: path.to_owned(), records: LocalStore::open(path)?, mls: open_mls_storage(path)? })
    }

    /// A scratch file holding one group's rows only (decrypt-only copies).
    pub fn scratch(path: &Path, group_id: &[u8], rows: &[StateRow]) -> Result<Self, DeviceError> {
        let mls = crate::store::mls::storage_from_rows(path, &group_key(group_id)?, rows)?;
        Ok(Self { path: path.to_owned(), records: LocalStore::open(path)?, mls })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl DeviceStorage for SqliteStorage {
    type Mls = MlsStorage;

    fn mls(&self) -> &MlsStorage {
        &self.mls
    }
    fn device(&self) -> Result<Option<DeviceRecord>, DeviceError> {
        Ok(self.records.device()?)
    }
    fn save_device(&self, record: &DeviceRecord, now: i64) -> Result<(), DeviceError> {
        Ok(self.records.save_device(record, now)?)
    }
    fn add_group(&self, group_id: &[u8], jid: &str) -> Result<(), DeviceError> {
        Ok(self.records.add_group(group_id, jid)?)
    }
    fn forget_group(&self, group_id: &[u8]) -> Result<(), DeviceError> {
        Ok(self.records.forget_group(group_id)?)
    }
    fn groups(&self) -> Result<Vec<String>, DeviceError> {
        Ok(self.records.groups()?)
    }
    fn last_seen(&self, group_id: &[u8]) -> Result<Option<LastSeen>, DeviceError> {
        Ok(self.records.last_seen(group_id)?)
    }
    fn set_last_seen(&self, group_id: &[u8], seen: &LastSeen) -> Result<(), DeviceError> {
        Ok(self.records.set_last_seen(group_id, seen)?)
    }
    fn mark_forked(&self, group_id: &[u8]) -> Result<(), DeviceError> {
        Ok(self.records.mark_forked(group_id)?)
    }
    fn is_forked(&self, group_id: &[u8]) -> Result<bool, DeviceError> {
        Ok(self.records.is_forked(group_id)?)
    }
    fn add_unechoed(&self, id: &str, stanza: &str) -> Result<(), DeviceError> {
        Ok(self.records.add_unechoed(id, stanza)?)
    }
    fn remove_unechoed(&self, id: &str) -> Result<(), DeviceError> {
        Ok(self.records.remove_unechoed(id)?)
    }
    fn unechoed(&self) -> Result<Vec<(String, String)>, DeviceError> {
        Ok(self.records.unechoed()?)
    }
    fn last_resort(&self) -> Result<Option<(String, i64)>, DeviceError> {
        Ok(self.records.last_resort()?)
    }
    fn set_last_resort(&self, kp_ref: &str, now: i64) -> Result<(), DeviceError> {
        Ok(self.records.set_last_resort(kp_ref, now)?)
    }
    fn vault_high_water(&self) -> Result<Option<crate::store::local::VaultMark>, DeviceError> {
        Ok(self.records.vault_high_water()?)
    }
    fn raise_vault_high_water(&self, mark: &crate::store::local::VaultMark) -> Result<(), DeviceError> {
        Ok(self.records.raise_vault_high_water(mark)?)
    }
    fn vault_device_key(&self) -> Result<Option<(Vec<u8>, Vec<u8>)>, DeviceError> {
        Ok(self.records.vault_device_key()?)
    }
    fn keep_vault_device_key(&self, public: &[u8], private: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DeviceError> {
        Ok(self.records.keep_vault_device_key(public, private)?)
    }
    fn group_rows(&self, group_id: &[u8]) -> Result<Vec<StateRow>, DeviceError> {
        Ok(self.records.group_rows(&group_key(group_id)?)?)
    }
    fn backup(&self) -> Result<Vec<u8>, DeviceError> {
        Ok(self.records.snapshot(&self.path.with_extension("snapshot"))?)
    }
}
