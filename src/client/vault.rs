//! The vault on the client (xep/ §Vault): everything the service stores is
//! sealed here first. A key-encryption key is derived from the passphrase
//! with Argon2id (salt and parameters kept beside the wrapped keys); it
//! wraps random data keys; every blob is sealed with XChaCha20-Poly1305
//! under the current data key, its associated data binding the account,
//! the blob's name and its version. Changing the passphrase rewraps the data
//! keys only; rotating adds a data key and re-seals every blob.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use xmpp_parsers::jid::{BareJid, Jid};

use super::port::Port;
use super::session::ClientError;
use crate::store::local::VaultMark;

mod place;
pub use place::{location, set_location, Location, CLAIM_GRACE};
use place::Place;

/// The record of the wrapped data keys.
pub const KEYS: &str = "keys";
const KEYS_MAGIC: &[u8; 4] = b"XMK1";
const BLOB_MAGIC: &[u8; 4] = b"XMB1";
const NONCE: usize = 24;
const KEY: usize = 32;
/// Octets that sealing adds to a blob's plaintext: magic, key id, nonce, tag.
const SEAL_OVERHEAD: usize = BLOB_MAGIC.len() + 4 + NONCE + 16;

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
}

/// Argon2id cost: memory in KiB, passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes: affordable on a phone, costly to guess at scale.
    fn default() -> Self {
        KdfParams { m_kib: 64 * 1024, t: 3, p: 1 }
    }
}

/// The unwrapped key ring: data keys by id, and which one seals new blobs.
pub(crate) struct KeyRing {
    params: KdfParams,
    salt: [u8; 16],
    current: u32,
    keys: Vec<(u32, [u8; KEY])>,
}

/// The costliest derivation a key record may ask for: a few times the
/// defaults (xep/ §Security Considerations: the service must not make the
/// client allocate or compute at will, nor reach argon2's overflow on lanes).
const MAX_KDF: KdfParams = KdfParams { m_kib: 256 * 1024, t: 10, p: 8 };

fn kek(passphrase: &str, salt: &[u8; 16], p: KdfParams) -> Result<[u8; KEY], VaultError> {
    let params = Params::new(p.m_kib, p.t, p.p, Some(KEY)).map_err(|e| VaultError::Kdf(e.to_string()))?;
    let mut out = [0u8; KEY];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, &mut out)
        .map_err(|e| VaultError::Kdf(e.to_string()))?;
    Ok(out)
}

fn seal(key: &[u8; KEY], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE] = rand::random();
    let cipher = XChaCha20Poly1305::new(key.into());
    let ct = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad }).expect("in-memory encryption");
    [nonce.as_slice(), &ct].concat()
}

fn open(key: &[u8; KEY], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (nonce, ct) = (sealed.get(..NONCE)?, sealed.get(NONCE..)?);
    XChaCha20Poly1305::new(key.into()).decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
}

fn keys_aad(account: &BareJid) -> Vec<u8> {
    [b"xmpp-mls vault keys v1\0".as_slice(), account.as_str().as_bytes()].concat()
}

fn blob_aad(account: &BareJid, name: &str, version: u64) -> Vec<u8> {
    [
        b"xmpp-mls vault blob v1\0".as_slice(),
        account.as_str().as_bytes(),
        b"\0",
        name.as_bytes(),
        b"\0",
        &version.to_be_bytes(),
    ]
    .concat()
}

impl KeyRing {
    /// A ring of one data key, id 1.
    pub(crate) fn new(params: KdfParams, salt: [u8; 16], key: [u8; KEY]) -> Self {
        KeyRing { params, salt, current: 1, keys: vec![(1, key)] }
    }

    /// `XMK1 | m t p | salt | current | n | (id, sealed key)*`, each sealed
    /// key bound to the account.
    pub(crate) fn encode(&self, passphrase: &str, account: &BareJid) -> Result<Vec<u8>, VaultError> {
        let kek = kek(passphrase, &self.salt, self.params)?;
        let mut out = KEYS_MAGIC.to_vec();
        for v in [self.params.m_kib, self.params.t, self.params.p] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&(self.keys.len() as u16).to_be_bytes());
        for (id, key) in &self.keys {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&seal(&kek, &keys_aad(account), key));
        }
        Ok(out)
    }

    pub(crate) fn decode(bytes: &[u8], passphrase: &str, account: &BareJid) -> Result<Self, VaultError> {
        let corrupt = || VaultError::Corrupt(KEYS.into());
        let u32_at = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
        if bytes.get(..4) != Some(KEYS_MAGIC) {
            return Err(corrupt());
        }
        let params = KdfParams { m_kib: u32_at(4).ok_or_else(corrupt)?, t: u32_at(8).ok_or_else(corrupt)?, p: u32_at(12).ok_or_else(corrupt)? };
        if params.m_kib > MAX_KDF.m_kib || params.t > MAX_KDF.t || params.p > MAX_KDF.p {
            return Err(corrupt());
        }
        let salt: [u8; 16] = bytes.get(16..32).ok_or_else(corrupt)?.try_into().expect("16 bytes");
        let current = u32_at(32).ok_or_else(corrupt)?;
        let n = u16::from_be_bytes(bytes.get(36..38).ok_or_else(corrupt)?.try_into().expect("2 bytes"));
        let kek = kek(passphrase, &salt, params)?;
        let entry = 4 + NONCE + KEY + 16;
        let mut keys = Vec::new();
        for i in 0..n as usize {
            let at = 38 + i * entry;
            let id = u32_at(at).ok_or_else(corrupt)?;
            let sealed = bytes.get(at + 4..at + entry).ok_or_else(corrupt)?;
            let key = open(&kek, &keys_aad(account), sealed).ok_or(VaultError::WrongPassphrase)?;
            keys.push((id, key.try_into().map_err(|_| corrupt())?));
        }
        let ring = KeyRing { params, salt, current, keys };
        // New blobs are sealed with the current key: a ring without it (or
        // without any key, which no passphrase check guards) does not open.
        ring.key(current).ok_or_else(corrupt)?;
        Ok(ring)
    }

    fn key(&self, id: u32) -> Option<&[u8; KEY]> {
        self.keys.iter().find(|(i, _)| *i == id).map(|(_, k)| k)
    }

    /// A blob record, `XMB1 | key id | sealed`, under the current key.
    pub(crate) fn seal_blob(&self, account: &BareJid, name: &str, version: u64, plaintext: &[u8]) -> Vec<u8> {
        let key = self.key(self.current).expect("the current key is in the ring");
        let mut data = BLOB_MAGIC.to_vec();
        data.extend_from_slice(&self.current.to_be_bytes());
        data.extend_from_slice(&seal(key, &blob_aad(account, name, version), plaintext));
        data
    }

    pub(crate) fn open_blob(&self, account: &BareJid, name: &str, version: u64, data: &[u8]) -> Result<Vec<u8>, VaultError> {
        let corrupt = || VaultError::Corrupt(name.to_owned());
        if data.get(..4) != Some(BLOB_MAGIC) {
            return Err(corrupt());
        }
        let id = u32::from_be_bytes(data.get(4..8).ok_or_else(corrupt)?.try_into().expect("4 bytes"));
        let key = self.key(id).ok_or_else(corrupt)?;
        open(key, &blob_aad(account, name, version), &data[8..]).ok_or_else(corrupt)
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
}

impl Vault {
    /// Sets the account's vault up at `location`: a first data key, wrapped
    /// under the passphrase. The location record is left as it is.
    pub async fn create(port: &Port, location: impl Into<Location>, passphrase: &str, params: KdfParams) -> Result<Self, VaultError> {
        let ring = KeyRing::new(params, rand::random(), rand::random());
        Self::create_with(port, location.into(), ring, passphrase).await
    }

    async fn create_with(port: &Port, location: Location, ring: KeyRing, passphrase: &str) -> Result<Self, VaultError> {
        let account = port.jid().to_bare();
        let place = Place::new(&account, location);
        let max_blob = place.max_blob(port).await?;
        let data = ring.encode(passphrase, &account)?;
        let keys_version = place.put_keys(port, 0, data).await.map_err(|e| match e {
            VaultError::Conflict(..) => VaultError::Exists,
            other => other,
        })?;
        Ok(Vault { account, place, ring, keys_version, max_blob })
    }

    /// Opens the account's vault where its location record says (at
    /// `service` if there is none); a wrong passphrase fails without
    /// changing anything.
    pub async fn open(port: &Port, service: &Jid, passphrase: &str) -> Result<Self, VaultError> {
        let location = place::location(port, service).await?;
        Self::open_at(port, location, passphrase).await
    }

    /// Opens the vault at `location`, whatever the location record says.
    pub async fn open_at(port: &Port, location: Location, passphrase: &str) -> Result<Self, VaultError> {
        let account = port.jid().to_bare();
        let place = Place::new(&account, location);
        let (keys_version, data) = place.keys(port).await?.ok_or(VaultError::NotInitialised)?;
        let ring = KeyRing::decode(&data, passphrase, &account)?;
        let max_blob = place.max_blob(port).await?;
        Ok(Vault { account, place, ring, keys_version, max_blob })
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
            key_id: self.ring.current,
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

    /// The names of the blobs (the key record excluded), in octet order.
    pub async fn list(&self, port: &Port) -> Result<Vec<String>, VaultError> {
        Ok(self.place.names(port, "").await?)
    }

    /// The names of the blobs that start with `prefix`, in octet order.
    pub async fn list_prefix(&self, port: &Port, prefix: &str) -> Result<Vec<String>, VaultError> {
        Ok(self.place.names(port, prefix).await?)
    }

    pub async fn delete(&self, port: &Port, name: &str, if_version: u64) -> Result<(), VaultError> {
        self.place.delete(port, name, if_version).await.map(drop)
    }

    /// Deletes `name` whatever its version; false if it was absent.
    pub async fn delete_any(&self, port: &Port, name: &str) -> Result<bool, VaultError> {
        match self.place.get(port, name).await? {
            Some((version, _)) => self.place.delete(port, name, version).await,
            None => Ok(false),
        }
    }

    /// The largest plaintext whose sealed blob the place accepts.
    pub fn max_plaintext(&self) -> usize {
        self.max_blob.saturating_sub(SEAL_OVERHEAD)
    }

    /// Rewraps the data keys under a new passphrase: one write, whatever the
    /// vault's size. Fails (changing nothing) if the keys changed meanwhile.
    pub async fn change_passphrase(&mut self, port: &Port, new: &str, params: KdfParams) -> Result<(), VaultError> {
        let ring = KeyRing { params, salt: rand::random(), current: self.ring.current, keys: self.ring.keys.clone() };
        self.write_keys(port, ring, new).await
    }

    /// A new data key for new blobs, then every blob re-sealed under it,
    /// then the old keys dropped; a crash in between loses nothing (blobs
    /// name their key, and the ring keeps old keys until the end).
    pub async fn rotate(&mut self, port: &Port, passphrase: &str) -> Result<(), VaultError> {
        let next = self.ring.keys.iter().map(|(i, _)| *i).max().unwrap_or(0) + 1;
        let mut keys = self.ring.keys.clone();
        keys.push((next, rand::random()));
        let ring = KeyRing { params: self.ring.params, salt: self.ring.salt, current: next, keys };
        self.write_keys(port, ring, passphrase).await?;
        for name in self.list(port).await? {
            if let Some((version, plaintext)) = self.get(port, &name).await? {
                self.put(port, &name, version, &plaintext).await?;
            }
        }
        let keys = self.ring.keys.iter().filter(|(i, _)| *i == next).cloned().collect();
        let ring = KeyRing { params: self.ring.params, salt: self.ring.salt, current: next, keys };
        self.write_keys(port, ring, passphrase).await
    }

    async fn write_keys(&mut self, port: &Port, ring: KeyRing, passphrase: &str) -> Result<(), VaultError> {
        let data = ring.encode(passphrase, &self.account)?;
        self.keys_version = self.place.put_keys(port, self.keys_version, data).await?;
        self.ring = ring;
        Ok(())
    }

    /// Data keys in the ring (1 except during a rotation).
    pub fn key_count(&self) -> usize {
        self.ring.keys.len()
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
        for (id, _) in &self.ring.keys {
            hash.update(id.to_be_bytes());
        }
        hash.update(self.ring.current.to_be_bytes());
        Ok(hash.finalize().into())
    }

    /// Moves the vault to `to` (xep/ §Moving the Vault): copies the key
    /// record and every blob there, checks that the copy reads back to the
    /// same digest, then points the location record at it, and only then
    /// erases the old place. Returns the digest. A failure before the
    /// location record changes leaves the vault where it was.
    pub async fn move_to(&mut self, port: &Port, to: Location, passphrase: &str) -> Result<[u8; 32], VaultError> {
        if to == self.place.location {
            return Err(VaultError::Exists);
        }
        let digest = self.digest(port).await?;
        let ring = KeyRing { keys: self.ring.keys.clone(), ..self.ring };
        let copy = Vault::create_with(port, to.clone(), ring, passphrase).await?;
        for name in self.list(port).await? {
            let (_, plaintext) = self.get(port, &name).await?.ok_or_else(|| VaultError::Corrupt(name.clone()))?;
            if plaintext.len() > copy.max_plaintext() {
                return Err(VaultError::TooBig(name, copy.max_plaintext()));
            }
            copy.put_latest(port, &name, &plaintext).await?;
        }
        let reopened = Vault::open_at(port, to.clone(), passphrase).await?;
        if reopened.digest(port).await? != digest {
            return Err(VaultError::Corrupt("the copy does not read back as the original".into()));
        }
        place::set_location(port, &to).await?;
        let old = std::mem::replace(&mut self.place, reopened.place);
        (self.keys_version, self.max_blob) = (reopened.keys_version, reopened.max_blob);
        old.erase(port).await?;
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams { m_kib: 1024, t: 1, p: 1 };

    #[test]
    fn key_ring_round_trip_and_wrong_passphrase() {
        let account = BareJid::new("alice@example.org").unwrap();
        let ring = KeyRing { params: FAST, salt: [3; 16], current: 2, keys: vec![(1, [1; 32]), (2, [2; 32])] };
        let bytes = ring.encode("right", &account).unwrap();
        let back = KeyRing::decode(&bytes, "right", &account).unwrap();
        assert_eq!((back.current, back.keys.clone()), (2, ring.keys.clone()));
        assert!(matches!(KeyRing::decode(&bytes, "wrong", &account), Err(VaultError::WrongPassphrase)));
        let bob = BareJid::new("bob@example.org").unwrap();
        assert!(KeyRing::decode(&bytes, "right", &bob).is_err(), "bound to the account");
    }

    /// Found by fuzzing (fuzz/regressions/vault_record): the service hands
    /// the key record back, so its costs and contents are not trusted.
    #[test]
    fn key_records_that_must_not_open() {
        let account = BareJid::new("alice@example.org").unwrap();
        let ring = KeyRing { params: FAST, salt: [3; 16], current: 1, keys: vec![] };
        assert!(matches!(KeyRing::decode(&ring.encode("any", &account).unwrap(), "other", &account), Err(VaultError::Corrupt(k)) if k == KEYS));
        let ring = KeyRing { current: 2, ..KeyRing::new(FAST, [3; 16], [1; 32]) };
        assert!(matches!(KeyRing::decode(&ring.encode("right", &account).unwrap(), "right", &account), Err(VaultError::Corrupt(_))));
        let above = [
            KdfParams { m_kib: MAX_KDF.m_kib + 1, ..FAST },
            KdfParams { t: MAX_KDF.t + 1, ..FAST },
            KdfParams { p: MAX_KDF.p + 1, ..FAST },
            KdfParams { p: 0xfb00_0000, ..FAST }, // argon2's 8 * p overflowed
        ];
        let valid = KeyRing::new(FAST, [3; 16], [1; 32]).encode("right", &account).unwrap();
        for costly in above {
            let mut bytes = valid.clone();
            for (at, v) in [(4, costly.m_kib), (8, costly.t), (12, costly.p)] {
                bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            assert!(matches!(KeyRing::decode(&bytes, "right", &account), Err(VaultError::Corrupt(_))));
        }
    }

    #[test]
    fn blobs_are_bound_to_account_name_and_version() {
        let account = BareJid::new("alice@example.org").unwrap();
        let key = [9u8; 32];
        let sealed = seal(&key, &blob_aad(&account, "a", 1), b"secret");
        assert_eq!(open(&key, &blob_aad(&account, "a", 1), &sealed).unwrap(), b"secret");
        assert!(open(&key, &blob_aad(&account, "b", 1), &sealed).is_none());
        assert!(open(&key, &blob_aad(&account, "a", 2), &sealed).is_none());
    }
}

/// Largest chunk of a device backup (smaller if the place's blob limit
/// is): within PEP's limit, so that a backup moves to any place unchanged.
const CHUNK: usize = crate::protocol::vault::PEP_MAX_BLOB - SEAL_OVERHEAD;

fn manifest_name(device_id: &str) -> String {
    format!("device/{device_id}/manifest")
}

/// Backs the device's whole state up (its key, its KeyPackages' private
/// keys, its groups): a zstd-compressed copy of its file, sealed in chunks,
/// then a manifest naming their count, size and SHA-256.
pub async fn backup_device<S: super::storage::DeviceStorage>(vault: &Vault, port: &Port, device: &super::Device<S>) -> Result<usize, VaultError> {
    use sha2::{Digest, Sha256};
    let snapshot = device.snapshot().map_err(|e| VaultError::Corrupt(e.to_string()))?;
    let packed = zstd::encode_all(snapshot.as_slice(), 9).map_err(|e| VaultError::Corrupt(e.to_string()))?;
    let chunks: Vec<&[u8]> = packed.chunks(CHUNK.min(vault.max_plaintext()).max(1)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        vault.put_latest(port, &format!("device/{}/{i}", device.id()), chunk).await?;
    }
    let hash = data_encoding::HEXLOWER.encode(&Sha256::digest(&packed));
    let manifest = format!("{}\n{}\n{hash}", chunks.len(), packed.len());
    vault.put_latest(port, &manifest_name(device.id()), manifest.as_bytes()).await?;
    Ok(packed.len())
}

/// The devices with a backup in the vault.
pub async fn backed_up_devices(vault: &Vault, port: &Port) -> Result<Vec<String>, VaultError> {
    let names = vault.list_prefix(port, "device/").await?;
    Ok(names.into_iter().filter_map(|n| n.strip_prefix("device/")?.strip_suffix("/manifest").map(str::to_owned)).collect())
}

/// Writes the backed-up state of `device_id` to `path` (which must not
/// exist); open it with [`super::Device::open`] and catch up.
pub async fn restore_device(vault: &Vault, port: &Port, device_id: &str, path: &std::path::Path) -> Result<(), VaultError> {
    use sha2::{Digest, Sha256};
    let corrupt = || VaultError::Corrupt(manifest_name(device_id));
    let (_, manifest) = vault.get(port, &manifest_name(device_id)).await?.ok_or_else(corrupt)?;
    let manifest = String::from_utf8(manifest).map_err(|_| corrupt())?;
    let mut lines = manifest.lines();
    let count: usize = lines.next().and_then(|l| l.parse().ok()).ok_or_else(corrupt)?;
    let _size: usize = lines.next().and_then(|l| l.parse().ok()).ok_or_else(corrupt)?;
    let hash = lines.next().ok_or_else(corrupt)?;
    let mut packed = Vec::new();
    for i in 0..count {
        let (_, chunk) = vault.get(port, &format!("device/{device_id}/{i}")).await?.ok_or_else(corrupt)?;
        packed.extend_from_slice(&chunk);
    }
    if data_encoding::HEXLOWER.encode(&Sha256::digest(&packed)) != hash {
        return Err(corrupt());
    }
    let snapshot = zstd::decode_all(packed.as_slice()).map_err(|_| corrupt())?;
    crate::store::local::write_private(path, &snapshot).map_err(|e| VaultError::Corrupt(e.to_string()))
}
