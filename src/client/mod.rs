//! The client library: what a device needs to use an xmpp-mls service.
//! Feature modules carry the same names as in `service/` and `store/`.

mod device;
mod devices;
mod groups;
mod history;
mod keypackages;
mod session;
mod transport;
mod vault;

pub use device::{Device, DeviceError, DeviceProvider, CIPHERSUITE};
pub use devices::directory_jid;
pub use crate::protocol::content::{Content, ContentError};
pub use groups::{GroupClient, GroupError, GroupEvent};
pub use history::{pack_snapshot, ArchivePage, History, HistoryEntry, Unreadable};
pub use keypackages::{ClaimError, RefillError, RefillReport, VerifiedClaim, POOL_TARGET};
pub use session::{describe, iq_element, ClientError, ConnectOptions, Session};
pub use vault::{backed_up_devices, backup_device, restore_device, KdfParams, Vault, VaultError, KEYS};
pub(crate) use vault::KeyRing;
