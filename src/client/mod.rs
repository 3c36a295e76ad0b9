//! The client library: what a device needs to use an xmpp-mls service.
//! Feature modules carry the same names as in `service/` and `store/`.

mod device;
mod devices;
mod drivers;
#[cfg(test)]
mod flows;
pub(crate) mod groups;
mod history;
mod keypackages;
mod port;
mod session;
mod storage;
mod transport;
mod vault;

pub use device::{Device, DeviceError, DeviceProvider, CIPHERSUITE};
pub use storage::{DeviceRecord, DeviceStorage, LastSeen, SqliteStorage, StateRow};
pub use devices::directory_jid;
pub use crate::protocol::content::{Content, ContentError};
pub use drivers::{Done, GroupClient, Machine, Operation};
pub use groups::{fingerprint, Core, GroupError, GroupEvent, LeafKey};
pub use port::Port;
pub use history::{pack_snapshot, KEEP_EPOCHS, ArchivePage, History, HistoryEntry, Unreadable};
pub use keypackages::{ClaimError, RefillError, RefillReport, VerifiedClaim, POOL_TARGET};
pub use session::{describe, iq_element, ClientError, ConnectOptions, Session};
pub use vault::{
    backed_up_devices, backup_device, enrollment_code, Backup, location, request_enrollment, restore_device, set_location, DeviceKey,
    KdfParams, Location, Room, Unlock, Usage, Vault, VaultError, CLAIM_GRACE, KEYS,
};
pub(crate) use vault::KeyRing;
