//! A device of an account: its identity (id, Ed25519 signature key) and its
//! MLS state, kept in a [`DeviceStorage`] (by default one SQLite file).

use std::path::Path;

use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage, MlsMessageOut,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::types::SignatureScheme;
use openmls_traits::OpenMlsProvider;
use tls_codec::Serialize as _;
use xmpp_parsers::jid::BareJid;

use crate::protocol::devices::Device as DeviceItem;
use crate::protocol::keypackages::{credential_identity, ref_hex};
use crate::protocol::now;
use super::storage::{DeviceStorage, SqliteStorage, StateRow};
use crate::store::local::{DeviceRecord, LastSeen};
use crate::store::StoreError;

/// The cipher suite this client uses (RFC 9420 code point 1).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    #[error("openmls storage: {0}")]
    Storage(String),
    #[error("MLS: {0}")]
    Mls(String),
    #[error("no device in {0}: run `device init` first")]
    Missing(String),
    #[error("the device's storage holds a device of {found}, not {wanted}")]
    OtherAccount { found: String, wanted: String },
}

fn mls(e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Mls(e.to_string())
}

/// The openmls provider of a device: RustCrypto and the device's storage.
pub struct DeviceProvider<S: DeviceStorage = SqliteStorage> {
    crypto: RustCrypto,
    storage: S,
}

impl<S: DeviceStorage> DeviceProvider<S> {
    pub fn new(storage: S) -> Self {
        DeviceProvider { crypto: RustCrypto::default(), storage }
    }
}

impl<S: DeviceStorage> OpenMlsProvider for DeviceProvider<S> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = S::Mls;

    fn storage(&self) -> &Self::StorageProvider {
        self.storage.mls()
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

pub struct Device<S: DeviceStorage = SqliteStorage> {
    account: BareJid,
    record: DeviceRecord,
    signer: SignatureKeyPair,
    provider: DeviceProvider<S>,
}

impl Device {
    /// Creates a device with a random id and a fresh Ed25519 key in the
    /// SQLite file `path`.
    pub fn create(path: &Path, account: BareJid, label: Option<String>) -> Result<Self, DeviceError> {
        Device::create_in(SqliteStorage::open(path)?, account, label)
    }

    /// Opens the device kept in the SQLite file `path`, which must belong to `account`.
    pub fn open(path: &Path, account: &BareJid) -> Result<Self, DeviceError> {
        let storage = SqliteStorage::open(path)?;
        if storage.device()?.is_none() {
            return Err(DeviceError::Missing(path.display().to_string()));
        }
        Device::open_in(storage, account)
    }
}

impl<S: DeviceStorage> Device<S> {
    /// Creates a device with a random id and a fresh Ed25519 key in `storage`.
    pub fn create_in(storage: S, account: BareJid, label: Option<String>) -> Result<Self, DeviceError> {
        let provider = DeviceProvider::new(storage);
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(mls)?;
        signer.store(provider.storage()).map_err(|e| DeviceError::Storage(e.to_string()))?;
        let id: [u8; 6] = rand::random();
        let record = DeviceRecord {
            account: account.to_string(),
            device_id: data_encoding::HEXLOWER.encode(&id),
            signature_key: signer.to_public_vec(),
            label,
        };
        provider.storage.save_device(&record, now())?;
        Ok(Self { account, record, signer, provider })
    }

    /// Opens the device kept in `storage`, which must belong to `account`.
    pub fn open_in(storage: S, account: &BareJid) -> Result<Self, DeviceError> {
        let record = storage.device()?.ok_or_else(|| DeviceError::Missing("the device's storage".into()))?;
        if record.account != account.as_str() {
            return Err(DeviceError::OtherAccount { found: record.account, wanted: account.to_string() });
        }
        let provider = DeviceProvider::new(storage);
        let signer = SignatureKeyPair::read(provider.storage(), &record.signature_key, SignatureScheme::ED25519)
            .ok_or_else(|| DeviceError::Storage("signature key missing".into()))?;
        Ok(Self { account: account.clone(), record, signer, provider })
    }

    /// One group's MLS state, as rows (decrypt-only snapshots).
    pub fn group_rows(&self, group_id: &[u8]) -> Result<Vec<StateRow>, DeviceError> {
        self.store().group_rows(group_id)
    }

    /// A consistent copy of the device's whole state (backups).
    pub fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        self.store().backup()
    }

    fn store(&self) -> &S {
        &self.provider.storage
    }

    pub fn id(&self) -> &str {
        &self.record.device_id
    }

    pub fn account(&self) -> &BareJid {
        &self.account
    }

    pub fn signature_key(&self) -> &[u8] {
        &self.record.signature_key
    }

    pub fn provider(&self) -> &DeviceProvider<S> {
        &self.provider
    }

    pub fn signer(&self) -> &SignatureKeyPair {
        &self.signer
    }

    /// The device-list item to publish; `expires` None = the service's maximum.
    pub fn item(&self, expires: Option<i64>) -> DeviceItem {
        DeviceItem {
            id: self.record.device_id.clone(),
            signature_key: self.record.signature_key.clone(),
            label: self.record.label.clone(),
            expires,
        }
    }

    /// A BasicCredential naming the account, with the device's key.
    pub fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(credential_identity(&self.account)).into(),
            signature_key: self.record.signature_key.clone().into(),
        }
    }

    /// New KeyPackages, as MLSMessages ready to upload; their private keys
    /// stay in the device's storage for the Welcomes to come.
    pub fn key_packages(&self, count: usize) -> Result<Vec<Vec<u8>>, DeviceError> {
        (0..count).map(|_| self.key_package(false).map(|(m, _)| m)).collect()
    }

    /// A new last-resort KeyPackage; remembered as the current one once
    /// [`Self::last_resort_uploaded`] confirms the upload.
    pub fn last_resort_key_package(&self) -> Result<(Vec<u8>, String), DeviceError> {
        self.key_package(true)
    }

    pub fn last_resort_uploaded(&self, kp_ref: &str) -> Result<(), DeviceError> {
        self.store().set_last_resort(kp_ref, now())
    }

    /// Records that the device is in a group, or no longer is.
    pub fn remember_group(&self, group_id: &[u8], jid: &str, member: bool) -> Result<(), DeviceError> {
        if member { self.store().add_group(group_id, jid) } else { self.store().forget_group(group_id) }
    }

    /// The last archive item of the group this device applied.
    pub fn last_seen(&self, group_id: &[u8]) -> Result<Option<LastSeen>, DeviceError> {
        self.store().last_seen(group_id)
    }

    pub fn set_last_seen(&self, group_id: &[u8], stanza_id: &str, position: Option<u64>) -> Result<(), DeviceError> {
        self.store().set_last_seen(group_id, &LastSeen { stanza_id: stanza_id.to_owned(), position })
    }

    /// Marks a group forked: nothing is sent into it any more.
    pub fn mark_forked(&self, group_id: &[u8]) -> Result<(), DeviceError> {
        self.store().mark_forked(group_id)
    }

    pub fn is_forked(&self, group_id: &[u8]) -> Result<bool, DeviceError> {
        self.store().is_forked(group_id)
    }

    /// Keeps a sent message until it is echoed.
    pub fn keep_unechoed(&self, id: &str, stanza: &minidom::Element) -> Result<(), DeviceError> {
        self.store().add_unechoed(id, &String::from(stanza))
    }

    pub fn echoed(&self, id: &str) -> Result<(), DeviceError> {
        self.store().remove_unechoed(id)
    }

    /// The messages sent and not echoed yet, in sending order.
    pub fn unechoed(&self) -> Result<Vec<(String, minidom::Element)>, DeviceError> {
        let rows = self.store().unechoed()?;
        Ok(rows.into_iter().filter_map(|(id, stanza)| Some((id, stanza.parse().ok()?))).collect())
    }

    /// The JIDs of the groups the device is in.
    pub fn groups(&self) -> Result<Vec<String>, DeviceError> {
        self.store().groups()
    }

    /// The current last-resort package's reference and creation time.
    pub fn last_resort(&self) -> Result<Option<(String, i64)>, DeviceError> {
        self.store().last_resort()
    }

    /// The highest vault `keys` record this device opened: (version,
    /// current data key ID).
    pub fn vault_high_water(&self) -> Result<Option<crate::store::local::VaultMark>, DeviceError> {
        self.store().vault_high_water()
    }

    pub fn raise_vault_high_water(&self, mark: &crate::store::local::VaultMark) -> Result<(), DeviceError> {
        self.store().raise_vault_high_water(mark)
    }

    /// The device's key for the vault (xep/ §Enrolling a Device), made and
    /// kept in its state on first use.
    pub fn vault_key(&self) -> Result<super::DeviceKey, DeviceError> {
        let (public, private) = match self.store().vault_device_key()? {
            Some(pair) => pair,
            None => {
                let key = super::DeviceKey::generate().map_err(|e| DeviceError::Storage(e.to_string()))?;
                self.store().keep_vault_device_key(key.public(), key.private())?
            }
        };
        super::DeviceKey::from_parts(&public, private).ok_or_else(|| DeviceError::Storage("a vault key of the wrong size".into()))
    }

    /// The device's vault key, if it made one (None: it was never enrolled).
    pub fn enrolled_key(&self) -> Result<Option<super::DeviceKey>, DeviceError> {
        Ok(self.store().vault_device_key()?.and_then(|(public, private)| super::DeviceKey::from_parts(&public, private)))
    }

    fn key_package(&self, last_resort: bool) -> Result<(Vec<u8>, String), DeviceError> {
        // Listing LastResort in the leaf's capabilities is what makes a
        // last-resort package valid (RFC 9420 §7.2 via the extension draft).
        let capabilities = Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build();
        let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities);
        if last_resort {
            builder = builder.mark_as_last_resort();
        }
        let bundle = builder
            .build(CIPHERSUITE, &self.provider, &self.signer, self.credential_with_key())
            .map_err(mls)?;
        let kp = bundle.key_package().clone();
        let kp_ref = ref_hex(kp.hash_ref(self.provider.crypto()).map_err(mls)?.as_slice());
        let message = MlsMessageOut::from(kp).tls_serialize_detached().map_err(mls)?;
        Ok((message, kp_ref))
    }
}

/// A group id as openmls' storage encodes it (its key in the tables).
pub fn group_key(group_id: &[u8]) -> Result<Vec<u8>, DeviceError> {
    use openmls_sqlite_storage::Codec;
    crate::store::mls::JsonCodec::to_vec(&openmls::prelude::GroupId::from_slice(group_id)).map_err(mls)
}

impl DeviceProvider {
    /// A provider over a scratch copy of one group's rows (decrypt-only).
    pub fn scratch(path: &Path, group_id: &[u8], rows: &[StateRow]) -> Result<Self, DeviceError> {
        Ok(DeviceProvider::new(SqliteStorage::scratch(path, group_id, rows)?))
    }
}
