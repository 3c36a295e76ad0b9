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

use super::devices::directory_jid;
use super::port::Port;
use super::session::ClientError;
use crate::protocol::mam::Cursor;
use crate::protocol::vault::{parse_list_page, parse_vault_result, parse_version_mismatch, VaultItem, VaultRequest};

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

/// An open vault: the account's keys, unwrapped.
pub struct Vault {
    account: BareJid,
    at: Jid,
    ring: KeyRing,
    keys_version: u64,
    /// The service's max-vault-blob-size.
    max_blob: usize,
}

/// The service's max-vault-blob-size, from its limits form.
async fn max_blob_size(port: &Port, service: &Jid) -> Result<usize, ClientError> {
    let limits = port.service_limits(service).await?;
    limits
        .iter()
        .find(|(var, _)| var == "max-vault-blob-size")
        .and_then(|(_, values)| values.first()?.parse().ok())
        .ok_or_else(|| ClientError::Malformed("no max-vault-blob-size in the service's limits".into()))
}

fn vault_error(e: ClientError, name: &str) -> VaultError {
    match &e {
        ClientError::Stanza(s) => match s.other.as_ref().and_then(parse_version_mismatch) {
            Some(current) => VaultError::Conflict(name.to_owned(), current),
            None => VaultError::Client(e),
        },
        _ => VaultError::Client(e),
    }
}

async fn request(port: &Port, at: &Jid, req: VaultRequest) -> Result<Vec<VaultItem>, ClientError> {
    let type_ = if matches!(req, VaultRequest::Get { .. } | VaultRequest::List { .. }) { "get" } else { "set" };
    let reply = port.iq(at, type_, req.to_element()).await?;
    match reply {
        Some(el) => parse_vault_result(&el).map(|(items, _)| items).map_err(|e| ClientError::Malformed(e.to_string())),
        None => Ok(Vec::new()),
    }
}

/// Every blob of the vault, page by page (xep/ §Listing the Vault): each
/// page starts after the last name of the one before, until the count is
/// reached or a page is empty.
async fn list_all(port: &Port, at: &Jid) -> Result<Vec<VaultItem>, ClientError> {
    let malformed = |e: crate::protocol::ProtocolError| ClientError::Malformed(e.to_string());
    let mut all: Vec<VaultItem> = Vec::new();
    loop {
        let cursor = all.last().map_or(Cursor::First, |i| Cursor::After(i.name.clone()));
        let page = VaultRequest::List { max: None, cursor };
        let reply = port.iq(at, "get", page.to_element()).await?;
        let reply = reply.ok_or_else(|| ClientError::Malformed("empty vault listing".into()))?;
        let (items, _) = parse_vault_result(&reply).map_err(malformed)?;
        let count = parse_list_page(&reply).map_or(0, |(_, count)| count);
        if items.is_empty() {
            return Ok(all);
        }
        if all.last().is_some_and(|prev| items[0].name <= prev.name) {
            return Err(ClientError::Malformed("a vault listing page does not advance".into()));
        }
        all.extend(items);
        if all.len() >= count {
            return Ok(all);
        }
    }
}

/// A blob's current version and data (None: absent).
async fn fetch(port: &Port, at: &Jid, name: &str) -> Result<Option<(u64, Vec<u8>)>, ClientError> {
    match request(port, at, VaultRequest::Get { name: name.to_owned() }).await {
        Ok(items) => Ok(items.into_iter().next().and_then(|i| Some((i.version, i.data?)))),
        Err(ClientError::Stanza(e))
            if e.defined_condition == xmpp_parsers::stanza_error::DefinedCondition::ItemNotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl Vault {
    /// Sets the account's vault up: a first data key, wrapped under the passphrase.
    pub async fn create(port: &Port, service: &Jid, passphrase: &str, params: KdfParams) -> Result<Self, VaultError> {
        let account = port.jid().to_bare();
        let at = directory_jid(&account, service);
        let max_blob = max_blob_size(port, service).await?;
        let ring = KeyRing::new(params, rand::random(), rand::random());
        let data = ring.encode(passphrase, &account)?;
        let put = VaultRequest::Put { name: KEYS.into(), if_version: 0, data };
        request(port, &at, put).await.map_err(|e| match vault_error(e, KEYS) {
            VaultError::Conflict(..) => VaultError::Exists,
            other => other,
        })?;
        Ok(Vault { account, at, ring, keys_version: 1, max_blob })
    }

    /// Opens the vault; a wrong passphrase fails without changing anything.
    pub async fn open(port: &Port, service: &Jid, passphrase: &str) -> Result<Self, VaultError> {
        let account = port.jid().to_bare();
        let at = directory_jid(&account, service);
        let (version, data) = fetch(port, &at, KEYS).await?.ok_or(VaultError::NotInitialised)?;
        let ring = KeyRing::decode(&data, passphrase, &account)?;
        let max_blob = max_blob_size(port, service).await?;
        Ok(Vault { account, at, ring, keys_version: version, max_blob })
    }

    /// Refuses a `keys` record older than the newest `device` opened: a
    /// lower version, or a lower current data key ID (IDs only grow, and
    /// the version is the service's to state), then raises the device's
    /// mark to this one.
    pub fn check_high_water<S: super::storage::DeviceStorage>(&self, device: &super::Device<S>) -> Result<(), VaultError> {
        let storage = |e: super::DeviceError| VaultError::Device(e.to_string());
        let got = (self.keys_version, self.ring.current);
        if let Some(seen) = device.vault_high_water().map_err(storage)?.filter(|seen| got.0 < seen.0 || got.1 < seen.1) {
            return Err(VaultError::Rollback(got, seen));
        }
        device.raise_vault_high_water(got.0, got.1).map_err(storage)
    }

    /// Seals and stores `plaintext` under `name`, replacing version
    /// `if_version` (0: new); returns the new version.
    pub async fn put(&self, port: &Port, name: &str, if_version: u64, plaintext: &[u8]) -> Result<u64, VaultError> {
        let data = self.ring.seal_blob(&self.account, name, if_version + 1, plaintext);
        let put = VaultRequest::Put { name: name.to_owned(), if_version, data };
        let items = request(port, &self.at, put).await.map_err(|e| vault_error(e, name))?;
        Ok(items.first().map_or(if_version + 1, |i| i.version))
    }

    /// Stores `plaintext` under `name` whatever its current version.
    pub async fn put_latest(&self, port: &Port, name: &str, plaintext: &[u8]) -> Result<u64, VaultError> {
        let current = fetch(port, &self.at, name).await?.map_or(0, |(v, _)| v);
        self.put(port, name, current, plaintext).await
    }

    /// The blob's version and plaintext (None: absent).
    pub async fn get(&self, port: &Port, name: &str) -> Result<Option<(u64, Vec<u8>)>, VaultError> {
        let Some((version, data)) = fetch(port, &self.at, name).await? else { return Ok(None) };
        Ok(Some((version, self.ring.open_blob(&self.account, name, version, &data)?)))
    }

    /// Names and versions of the blobs (the key record excluded).
    pub async fn list(&self, port: &Port) -> Result<Vec<(String, u64)>, VaultError> {
        let items = list_all(port, &self.at).await?;
        Ok(items.into_iter().filter(|i| i.name != KEYS).map(|i| (i.name, i.version)).collect())
    }

    pub async fn delete(&self, port: &Port, name: &str, if_version: u64) -> Result<(), VaultError> {
        let delete = VaultRequest::Delete { name: name.to_owned(), if_version };
        request(port, &self.at, delete).await.map_err(|e| vault_error(e, name))?;
        Ok(())
    }

    /// Deletes `name` whatever its version; false if it was absent.
    pub async fn delete_any(&self, port: &Port, name: &str) -> Result<bool, VaultError> {
        match fetch(port, &self.at, name).await? {
            Some((version, _)) => self.delete(port, name, version).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The largest plaintext whose sealed blob the service accepts.
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
        for (name, _) in self.list(port).await? {
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
        let put = VaultRequest::Put { name: KEYS.into(), if_version: self.keys_version, data };
        let items = request(port, &self.at, put).await.map_err(|e| vault_error(e, KEYS))?;
        self.keys_version = items.first().map_or(self.keys_version + 1, |i| i.version);
        self.ring = ring;
        Ok(())
    }

    /// Data keys in the ring (1 except during a rotation).
    pub fn key_count(&self) -> usize {
        self.ring.keys.len()
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

/// Largest chunk of a device backup (smaller if the service's blob limit is).
const CHUNK: usize = 120 * 1024;

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
    let names = vault.list(port).await?;
    Ok(names
        .into_iter()
        .filter_map(|(n, _)| n.strip_prefix("device/")?.strip_suffix("/manifest").map(str::to_owned))
        .collect())
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
