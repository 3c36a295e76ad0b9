//! The vault on the client (xep/ §Vault): everything its place stores is
//! sealed here first, under data keys that the key record locks under the
//! passphrase and the keys of enrolled devices ([`keys`]). Changing the
//! passphrase or enrolling a device rewrites the key record only; rotating
//! adds a data key and re-seals every blob.

use std::collections::BTreeMap;

use xmpp_parsers::jid::{BareJid, Jid};

use super::port::Port;
use super::session::ClientError;
use crate::store::local::VaultMark;

mod backup;
mod keys;
mod place;
pub(crate) use keys::KeyRing;
pub use backup::{backed_up_devices, backup_device, restore_device, Backup};
pub use keys::{enrollment_code, DeviceKey, KdfParams, Unlock};
use keys::SEAL_OVERHEAD;
pub use place::{location, set_location, Location, CLAIM_GRACE};
use place::Place;

/// The record of the locked data keys.
pub const KEYS: &str = "keys";
/// Where a new device asks to be enrolled: `enroll/<device-id>`, holding
/// its public key (xep/ §Enrolling a Device).
const ENROLL: &str = "enroll/";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("the vault is not set up: run `vault init`")]
    NotInitialised,
    #[error("the vault is set up already")]
    Exists,
    #[error("blob {0} does not open: tampered with, or from another account or version")]
    Corrupt(String),
    #[error("{0} changed meanwhile (now version {1}); read it again")]
    Conflict(String, u64),
    #[error("key derivation: {0}")]
    Kdf(String),
    /// The `keys` record is older than one this device opened before: a
    /// rollback by the service: (version, current key ID) served, and the
    /// highest seen.
    #[error("the vault's keys record went back to version {} (key {}) after version {} (key {})", .0.0, .0.1, .1.0, .1.1)]
    Rollback((u64, u32), (u64, u32)),
    #[error("device storage: {0}")]
    Device(String),
    #[error("blob {0} is larger than the new place takes ({1} octets of plaintext)")]
    TooBig(String, usize),
    #[error("the data keys changed: this needs the passphrase")]
    PassphraseNeeded,
    #[error("this vault has no passphrase: open it with an enrolled device")]
    NoPassphrase,
    #[error("this device is not enrolled in the vault")]
    NotEnrolled,
    #[error("no enrollment request has that code")]
    NoSuchEnrollment,
}

/// Octets (sealed) and blobs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub octets: u64,
    pub blobs: usize,
}

impl Room {
    fn add(&mut self, size: usize) {
        (self.octets, self.blobs) = (self.octets + size as u64, self.blobs + 1);
    }
}

/// What a vault's blobs take (xep/ §History on a New Device, §Device Backups).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Per group (the localpart of its JID), per epoch: its snapshot and its sent copies.
    pub groups: BTreeMap<String, BTreeMap<u64, (Room, Room)>>,
    /// Per device: its backup.
    pub backups: BTreeMap<String, Room>,
    /// Anything else (enrollment requests, other clients' blobs).
    pub other: Room,
}

impl Usage {
    /// Sorts (name, version, sealed size) by what the names say.
    pub fn of(blobs: &[(String, u64, usize)]) -> Self {
        let mut usage = Usage::default();
        for (name, _, size) in blobs {
            let parts: Vec<&str> = name.split('/').collect();
            let epoch = |group: &str, e: &str| Some((group.to_owned(), e.parse::<u64>().ok()?));
            match parts.as_slice() {
                ["history", group, e] => match epoch(group, e) {
                    Some((g, e)) => usage.groups.entry(g).or_default().entry(e).or_default().0.add(*size),
                    None => usage.other.add(*size),
                },
                ["sent", group, e, _, _] => match epoch(group, e) {
                    Some((g, e)) => usage.groups.entry(g).or_default().entry(e).or_default().1.add(*size),
                    None => usage.other.add(*size),
                },
                ["device", device, _] => usage.backups.entry((*device).to_owned()).or_default().add(*size),
                _ => usage.other.add(*size),
            }
        }
        usage
    }
}

/// An open vault: the account's keys, unwrapped, and where its blobs are.
pub struct Vault {
    account: BareJid,
    place: Place,
    ring: KeyRing,
    keys_version: u64,
    /// The largest blob the place takes.
    max_blob: usize,
    /// Octets of sealed blobs written through this handle.
    written: std::sync::atomic::AtomicU64,
}

impl Vault {
    /// Sets the account's vault up at `location`: a first data key, wrapped
    /// under the passphrase. The location record is left as it is.
    pub async fn create(port: &Port, location: impl Into<Location>, passphrase: &str, params: KdfParams) -> Result<Self, VaultError> {
        let ring = KeyRing::new(params, rand::random(), rand::random());
        let data = ring.encode(&port.jid().to_bare(), Some(passphrase))?;
        Self::create_with(port, location.into(), ring, data).await
    }

    /// Writes `data`, the record of `ring`, as the key record at `location`.
    async fn create_with(port: &Port, location: Location, ring: KeyRing, data: Vec<u8>) -> Result<Self, VaultError> {
        let account = port.jid().to_bare();
        let place = Place::new(&account, location);
        let max_blob = place.max_blob(port).await?;
        let keys_version = place.put_keys(port, 0, data).await.map_err(|e| match e {
            VaultError::Conflict(..) => VaultError::Exists,
            other => other,
        })?;
        Ok(Vault { account, place, ring, keys_version, max_blob, written: Default::default() })
    }

    /// Opens the account's vault where its location record says (at
    /// `service` if there is none); a wrong passphrase fails without
    /// changing anything.
    pub async fn open(port: &Port, service: &Jid, passphrase: &str) -> Result<Self, VaultError> {
        let location = place::location(port, service).await?;
        Self::open_at(port, location, Unlock::Passphrase(passphrase)).await
    }

    /// [`Self::open`] with this device's enrolled key instead of the passphrase.
    pub async fn open_with_key(port: &Port, service: &Jid, key: &DeviceKey) -> Result<Self, VaultError> {
        let location = place::location(port, service).await?;
        Self::open_at(port, location, Unlock::Device(key)).await
    }

    /// Opens the vault at `location`, whatever the location record says.
    pub async fn open_at(port: &Port, location: Location, unlock: Unlock<'_>) -> Result<Self, VaultError> {
        let account = port.jid().to_bare();
        let place = Place::new(&account, location);
        let (keys_version, data) = place.keys(port).await?.ok_or(VaultError::NotInitialised)?;
        let ring = KeyRing::decode(&data, &account, unlock)?;
        let max_blob = place.max_blob(port).await?;
        Ok(Vault { account, place, ring, keys_version, max_blob, written: Default::default() })
    }

    pub fn location(&self) -> &Location {
        &self.place.location
    }

    /// Refuses a `keys` record older than the newest `device` opened: at
    /// the same location a lower version, anywhere a lower current data key
    /// ID (IDs only grow, and the version is the place's to state), then
    /// raises the device's mark to this one.
    pub fn check_high_water<S: super::storage::DeviceStorage>(&self, device: &super::Device<S>) -> Result<(), VaultError> {
        let storage = |e: super::DeviceError| VaultError::Device(e.to_string());
        let got = VaultMark {
            location: self.place.location.jid(&self.account).to_string(),
            version: self.keys_version,
            key_id: self.ring.current(),
        };
        if let Some(seen) = device.vault_high_water().map_err(storage)? {
            let older = (seen.location == got.location && got.version < seen.version) || got.key_id < seen.key_id;
            if older {
                return Err(VaultError::Rollback((got.version, got.key_id), (seen.version, seen.key_id)));
            }
        }
        device.raise_vault_high_water(&got).map_err(storage)
    }

    /// Seals and stores `plaintext` under `name`, replacing version
    /// `if_version` (0: new); returns the new version.
    pub async fn put(&self, port: &Port, name: &str, if_version: u64, plaintext: &[u8]) -> Result<u64, VaultError> {
        let data = self.ring.seal_blob(&self.account, name, if_version + 1, plaintext);
        self.written.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.place.put(port, name, if_version, data).await
    }

    /// Stores `plaintext` under `name` whatever its current version.
    pub async fn put_latest(&self, port: &Port, name: &str, plaintext: &[u8]) -> Result<u64, VaultError> {
        let current = self.place.get(port, name).await?.map_or(0, |(v, _)| v);
        self.put(port, name, current, plaintext).await
    }

    /// The blob's version and plaintext (None: absent).
    pub async fn get(&self, port: &Port, name: &str) -> Result<Option<(u64, Vec<u8>)>, VaultError> {
        let Some((version, data)) = self.place.get(port, name).await? else { return Ok(None) };
        Ok(Some((version, self.ring.open_blob(&self.account, name, version, &data)?)))
    }

    /// The names of the sealed blobs (the key record and enrollment
    /// requests excluded), in octet order.
    pub async fn list(&self, port: &Port) -> Result<Vec<String>, VaultError> {
        Ok(self.place.names(port, "").await?.into_iter().filter(|n| !n.starts_with(ENROLL)).collect())
    }

    /// What the blobs take, by group and epoch and by device backup: at a
    /// service from its listing, in PEP by reading every blob.
    pub async fn usage(&self, port: &Port) -> Result<Usage, VaultError> {
        Ok(Usage::of(&self.place.stat(port, "").await?))
    }

    /// The names of the blobs that start with `prefix`, in octet order.
    pub async fn list_prefix(&self, port: &Port, prefix: &str) -> Result<Vec<String>, VaultError> {
        Ok(self.place.names(port, prefix).await?)
    }

    pub async fn delete(&self, port: &Port, name: &str, if_version: u64) -> Result<(), VaultError> {
        self.place.delete(port, name, if_version).await.map(drop)
    }

    /// Deletes every blob whose name starts with `prefix`.
    pub async fn delete_prefix(&self, port: &Port, prefix: &str) -> Result<(), VaultError> {
        self.place.delete_prefix(port, prefix).await
    }

    /// Deletes `name` whatever its version; false if it was absent.
    pub async fn delete_any(&self, port: &Port, name: &str) -> Result<bool, VaultError> {
        match self.place.get(port, name).await? {
            Some((version, _)) => self.place.delete(port, name, version).await,
            None => Ok(false),
        }
    }

    /// Octets of sealed blobs this handle wrote (the key record not counted).
    pub fn written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The largest plaintext whose sealed blob the place accepts.
    pub fn max_plaintext(&self) -> usize {
        self.max_blob.saturating_sub(SEAL_OVERHEAD)
    }

    /// Locks the data keys under a new passphrase: one write, whatever the
    /// vault's size. Fails (changing nothing) if the keys changed meanwhile.
    pub async fn change_passphrase(&mut self, port: &Port, new: &str, params: KdfParams) -> Result<(), VaultError> {
        self.write_keys(port, self.ring.with_passphrase(params), Some(new)).await
    }

    /// A new data key for new blobs, then every blob re-sealed under it,
    /// then the old keys dropped; a crash in between loses nothing (blobs
    /// name their key, and the ring keeps old keys until the end). The
    /// passphrase is needed if the vault has one.
    pub async fn rotate(&mut self, port: &Port, passphrase: Option<&str>) -> Result<(), VaultError> {
        self.rotate_from(port, self.ring.clone(), passphrase).await
    }

    /// [`Self::rotate`] from `ring`: this ring, or it with a lock fewer.
    async fn rotate_from(&mut self, port: &Port, ring: KeyRing, passphrase: Option<&str>) -> Result<(), VaultError> {
        self.write_keys(port, ring.with_next_key(), passphrase).await?;
        for name in self.list(port).await? {
            if let Some((version, plaintext)) = self.get(port, &name).await? {
                self.put(port, &name, version, &plaintext).await?;
            }
        }
        self.write_keys(port, self.ring.with_current_only(), passphrase).await
    }

    async fn write_keys(&mut self, port: &Port, ring: KeyRing, passphrase: Option<&str>) -> Result<(), VaultError> {
        let data = ring.encode(&self.account, passphrase)?;
        self.keys_version = self.place.put_keys(port, self.keys_version, data).await?;
        self.ring = ring;
        Ok(())
    }

    /// Data keys in the ring (1 except during a rotation).
    pub fn key_count(&self) -> usize {
        self.ring.key_ids().len()
    }

    /// Whether the passphrase opens this vault.
    pub fn has_passphrase(&self) -> bool {
        self.ring.has_passphrase()
    }

    /// The devices enrolled by key.
    pub fn enrolled(&self) -> Vec<String> {
        self.ring.devices()
    }

    /// Enrolls the device whose request has the code `code` (xep/
    /// §Enrolling a Device): its key gets the data keys, and its request
    /// is deleted. The passphrase is not needed. Returns the device's ID.
    pub async fn enroll(&mut self, port: &Port, code: &str) -> Result<String, VaultError> {
        for name in self.place.names(port, ENROLL).await? {
            let Some((version, public)) = self.place.get(port, &name).await? else { continue };
            let Ok(public) = <[u8; 32]>::try_from(public.as_slice()) else { continue };
            if !keys::same_code(code, &enrollment_code(&self.account, &public)) {
                continue;
            }
            let device = name[ENROLL.len()..].to_owned();
            self.write_keys(port, self.ring.with_device(&device, public)?, None).await?;
            self.place.delete(port, &name, version).await?;
            return Ok(device);
        }
        Err(VaultError::NoSuchEnrollment)
    }

    /// Removes `device`'s key, then rotates the data key so that what it
    /// may have kept opens nothing written from now on, and no blob.
    pub async fn remove_device(&mut self, port: &Port, device: &str, passphrase: Option<&str>) -> Result<(), VaultError> {
        let ring = self.ring.without_device(device).ok_or(VaultError::NotEnrolled)?;
        self.rotate_from(port, ring, passphrase).await
    }

    /// What the vault holds, as one SHA-256: each blob's name and
    /// plaintext in name order, then the data key IDs and the current one.
    /// Equal before and after a move (versions and sealing differ).
    pub async fn digest(&self, port: &Port) -> Result<[u8; 32], VaultError> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for name in self.list(port).await? {
            let (_, plaintext) = self.get(port, &name).await?.ok_or_else(|| VaultError::Corrupt(name.clone()))?;
            for part in [name.as_bytes(), &(plaintext.len() as u64).to_be_bytes(), &plaintext] {
                hash.update(part);
            }
        }
        for id in self.ring.key_ids() {
            hash.update(id.to_be_bytes());
        }
        hash.update(self.ring.current().to_be_bytes());
        Ok(hash.finalize().into())
    }

    /// Moves the vault to `to` (xep/ §Moving the Vault): copies the key
    /// record and every blob there, checks that the copy reads back to the
    /// same digest, then points the location record at it, and only then
    /// erases the old place. Returns the digest. A failure before the
    /// location record changes leaves the vault where it was.
    pub async fn move_to(&mut self, port: &Port, to: Location) -> Result<[u8; 32], VaultError> {
        if to == self.place.location {
            return Err(VaultError::Exists);
        }
        let digest = self.digest(port).await?;
        // The key record as read (the passphrase's lock) or sealed anew (devices' locks).
        let record = self.ring.encode(&self.account, None)?;
        let copy = Vault::create_with(port, to.clone(), self.ring.clone(), record.clone()).await?;
        for name in self.list(port).await? {
            let (_, plaintext) = self.get(port, &name).await?.ok_or_else(|| VaultError::Corrupt(name.clone()))?;
            if plaintext.len() > copy.max_plaintext() {
                return Err(VaultError::TooBig(name, copy.max_plaintext()));
            }
            copy.put_latest(port, &name, &plaintext).await?;
        }
        let stored = copy.place.keys(port).await?.map(|(_, data)| data);
        if stored.as_ref() != Some(&record) || copy.digest(port).await? != digest {
            return Err(VaultError::Corrupt("the copy does not read back as the original".into()));
        }
        place::set_location(port, &to).await?;
        (self.keys_version, self.max_blob) = (copy.keys_version, copy.max_blob);
        let old = std::mem::replace(&mut self.place, copy.place);
        old.erase(port).await?;
        Ok(digest)
    }
}

/// Asks to be enrolled (xep/ §Enrolling a Device): writes this device's
/// public key to the account's vault, where its location record says (at
/// `service` if there is none), and returns the code that the user gives
/// an enrolled device.
pub async fn request_enrollment(port: &Port, service: &Jid, device_id: &str, key: &DeviceKey) -> Result<String, VaultError> {
    let place = Place::new(&port.jid().to_bare(), place::location(port, service).await?);
    let name = format!("{ENROLL}{device_id}");
    let current = place.get(port, &name).await?.map_or(0, |(v, _)| v);
    place.put(port, &name, current, key.public().to_vec()).await?;
    Ok(enrollment_code(&port.jid().to_bare(), key.public()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_sorts_blobs_by_group_epoch_and_device() {
        let blobs: Vec<(String, u64, usize)> = [
            ("history/g1/2", 100),
            ("sent/g1/2/dev1/0-63", 2000),
            ("sent/g1/2/dev2/0", 40),
            ("sent/g1/10/dev1/0", 50),
            ("history/g2/0", 300),
            ("device/dev1/manifest", 120),
            ("device/dev1/00ff", 5000),
            ("enroll/dev3", 32),
            ("history/g1/x", 7),
        ]
        .iter()
        .map(|(n, s)| (n.to_string(), 1, *s))
        .collect();
        let usage = Usage::of(&blobs);
        let room = |octets, blobs| Room { octets, blobs };
        let g1: Vec<(u64, (Room, Room))> = usage.groups["g1"].iter().map(|(e, r)| (*e, *r)).collect();
        assert_eq!(g1, vec![(2, (room(100, 1), room(2040, 2))), (10, (room(0, 0), room(50, 1)))]);
        assert_eq!(usage.groups["g2"][&0], (room(300, 1), room(0, 0)));
        assert_eq!(usage.backups["dev1"], room(5120, 2));
        assert_eq!(usage.other, room(39, 2));
    }
}
