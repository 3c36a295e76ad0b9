//! The vault's keys (xep/ §Encryption by the Client): random data keys seal
//! the blobs with XChaCha20-Poly1305, bound to account, name and version;
//! the key record holds them locked under the passphrase (a key derived
//! with Argon2id), under the X25519 keys of enrolled devices (HPKE), or
//! both. Every lock covers the record's header (its key IDs and current
//! key), so an edited ID opens nothing.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{HpkeAeadType, HpkeCiphertext, HpkeConfig, HpkeKdfType, HpkeKemType};
use xmpp_parsers::jid::BareJid;

use super::{VaultError, KEYS};

const RECORD_V1: &[u8; 4] = b"XMK1";
const RECORD: &[u8; 4] = b"XMK2";
const BLOB_MAGIC: &[u8; 4] = b"XMB1";
const NONCE: usize = 24;
const TAG: usize = 16;
pub(super) const KEY: usize = 32;
/// Octets that sealing adds to a blob's plaintext: magic, key id, nonce, tag.
pub(super) const SEAL_OVERHEAD: usize = BLOB_MAGIC.len() + 4 + NONCE + TAG;
/// HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
const HPKE: HpkeConfig = HpkeConfig(HpkeKemType::DhKem25519, HpkeKdfType::HkdfSha256, HpkeAeadType::ChaCha20Poly1305);
const X25519: usize = 32;
/// Bounds of a record (the place hands it back, so it is not trusted):
/// data keys, enrolled devices, octets of a device's label.
const MAX_KEYS: usize = 16;
const MAX_DEVICES: usize = 32;
const MAX_LABEL: usize = 64;

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

/// The costliest derivation a key record may ask for: a few times the
/// defaults (xep/ §Security Considerations: the place must not make the
/// client allocate or compute at will, nor reach argon2's overflow on lanes).
pub(super) const MAX_KDF: KdfParams = KdfParams { m_kib: 256 * 1024, t: 10, p: 8 };

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

/// `label`, a zero octet, the account: the start of every associated data.
fn bound(label: &[u8], account: &BareJid) -> Vec<u8> {
    [label, b"\0", account.as_str().as_bytes()].concat()
}

fn blob_aad(account: &BareJid, name: &str, version: u64) -> Vec<u8> {
    [bound(b"xmpp-mls vault blob v1", account).as_slice(), b"\0", name.as_bytes(), b"\0", &version.to_be_bytes()].concat()
}

/// An enrolled device's key pair for the vault (X25519).
#[derive(Clone)]
pub struct DeviceKey {
    public: [u8; X25519],
    private: Vec<u8>,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKey").field("public", &data_encoding::HEXLOWER.encode(&self.public)).finish_non_exhaustive()
    }
}

impl DeviceKey {
    pub fn generate() -> Result<Self, VaultError> {
        let ikm: [u8; 32] = rand::random();
        let pair = RustCrypto::default().derive_hpke_keypair(HPKE, &ikm).map_err(|e| VaultError::Kdf(format!("{e:?}")))?;
        let public = pair.public.try_into().map_err(|_| VaultError::Kdf("an X25519 public key is 32 octets".into()))?;
        Ok(DeviceKey { public, private: pair.private.to_vec() })
    }

    /// A key pair as the device stored it; None if the public half is not 32 octets.
    pub fn from_parts(public: &[u8], private: Vec<u8>) -> Option<Self> {
        Some(DeviceKey { public: public.try_into().ok()?, private })
    }

    pub fn public(&self) -> &[u8; X25519] {
        &self.public
    }

    pub fn private(&self) -> &[u8] {
        &self.private
    }
}

/// The code a user carries from a new device to an enrolled one (xep/
/// §Enrolling a Device): 80 bits of SHA-256 over the account and the new
/// device's public key, in base32, four groups of four.
pub fn enrollment_code(account: &BareJid, public: &[u8; X25519]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest([bound(b"xmpp-mls vault enrol v1", account).as_slice(), b"\0", public].concat());
    let code = data_encoding::BASE32_NOPAD.encode(&digest[..10]).to_lowercase();
    code.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

/// Whether a typed code is `code`: case, spaces and dashes aside.
pub fn same_code(typed: &str, code: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect::<String>();
    norm(typed) == norm(code)
}

/// How a key record is opened.
pub enum Unlock<'a> {
    Passphrase(&'a str),
    Device(&'a DeviceKey),
}

/// The passphrase's lock: Argon2id parameters and salt, and the locked keys
/// as read with the header they cover, written again while that holds.
#[derive(Clone)]
struct PassLock {
    params: KdfParams,
    salt: [u8; 16],
    read: Option<(Vec<u8>, Vec<u8>)>,
}

/// A device the keys are locked to: its label (the device ID) and X25519 key.
#[derive(Clone, PartialEq, Eq)]
struct DeviceLock {
    label: String,
    public: [u8; X25519],
}

/// The unlocked key ring: data keys by ID, which one seals new blobs, and
/// the locks of the record.
#[derive(Clone)]
pub(crate) struct KeyRing {
    current: u32,
    keys: Vec<(u32, [u8; KEY])>,
    pass: Option<PassLock>,
    devices: Vec<DeviceLock>,
}

/// Reads fields off a record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], VaultError> {
        let corrupt = || VaultError::Corrupt(KEYS.into());
        let (head, rest) = (self.0.get(..n).ok_or_else(corrupt)?, self.0.get(n..).ok_or_else(corrupt)?);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, VaultError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, VaultError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 octets")))
    }
    fn u32(&mut self) -> Result<u32, VaultError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 octets")))
    }
    fn params(&mut self) -> Result<KdfParams, VaultError> {
        let params = KdfParams { m_kib: self.u32()?, t: self.u32()?, p: self.u32()? };
        let bounded = params.m_kib <= MAX_KDF.m_kib && params.t <= MAX_KDF.t && params.p <= MAX_KDF.p;
        bounded.then_some(params).ok_or(VaultError::Corrupt(KEYS.into()))
    }
}

impl KeyRing {
    /// A ring of one data key, ID 1, locked under a passphrase.
    pub(crate) fn new(params: KdfParams, salt: [u8; 16], key: [u8; KEY]) -> Self {
        KeyRing { current: 1, keys: vec![(1, key)], pass: Some(PassLock { params, salt, read: None }), devices: Vec::new() }
    }

    /// `XMK2 | current | n | IDs`: what every lock covers.
    fn header(&self) -> Vec<u8> {
        let mut out = RECORD.to_vec();
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&(self.keys.len() as u16).to_be_bytes());
        for (id, _) in &self.keys {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    fn locked(&self) -> Vec<u8> {
        self.keys.iter().flat_map(|(_, key)| *key).collect()
    }

    fn pass_aad(account: &BareJid, header: &[u8]) -> Vec<u8> {
        [bound(b"xmpp-mls vault keys v2", account).as_slice(), b"\0", header].concat()
    }

    fn device_info(account: &BareJid) -> Vec<u8> {
        bound(b"xmpp-mls vault device v2", account)
    }

    fn device_aad(header: &[u8], label: &str) -> Vec<u8> {
        [header, b"\0", label.as_bytes()].concat()
    }

    /// The record: the header, the passphrase's lock (a flag, m t p, salt,
    /// the locked keys), then each device's (label, public key, HPKE
    /// encapsulation, locked keys). The passphrase is needed to lock keys
    /// that changed; an unchanged passphrase lock is written as read.
    pub(crate) fn encode(&self, account: &BareJid, passphrase: Option<&str>) -> Result<Vec<u8>, VaultError> {
        let header = self.header();
        let mut out = header.clone();
        match &self.pass {
            None => out.push(0),
            Some(lock) => {
                out.push(1);
                for v in [lock.params.m_kib, lock.params.t, lock.params.p] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
                out.extend_from_slice(&lock.salt);
                let locked = match (passphrase, &lock.read) {
                    (Some(p), _) => seal(&kek(p, &lock.salt, lock.params)?, &Self::pass_aad(account, &header), &self.locked()),
                    (None, Some((read, covered))) if *covered == header => read.clone(),
                    _ => return Err(VaultError::PassphraseNeeded),
                };
                out.extend_from_slice(&locked);
            }
        }
        out.extend_from_slice(&(self.devices.len() as u16).to_be_bytes());
        for device in &self.devices {
            let sealed = RustCrypto::default()
                .hpke_seal(HPKE, &device.public, &Self::device_info(account), &Self::device_aad(&header, &device.label), &self.locked())
                .map_err(|e| VaultError::Kdf(format!("{e:?}")))?;
            out.push(device.label.len() as u8);
            out.extend_from_slice(device.label.as_bytes());
            out.extend_from_slice(&device.public);
            out.extend_from_slice(sealed.kem_output.as_slice());
            out.extend_from_slice(sealed.ciphertext.as_slice());
        }
        Ok(out)
    }

    /// Opens a record with `unlock`. Whatever fails (a malformed record,
    /// costs above [`MAX_KDF`], a lock that does not open) yields no key.
    pub(crate) fn decode(bytes: &[u8], account: &BareJid, unlock: Unlock) -> Result<Self, VaultError> {
        let corrupt = || VaultError::Corrupt(KEYS.into());
        if bytes.get(..4) == Some(RECORD_V1) {
            return match unlock {
                Unlock::Passphrase(p) => Self::decode_v1(bytes, p, account),
                Unlock::Device(_) => Err(VaultError::NotEnrolled),
            };
        }
        let mut r = Reader(bytes);
        if r.take(4)? != RECORD {
            return Err(corrupt());
        }
        let current = r.u32()?;
        let n = r.u16()? as usize;
        if n == 0 || n > MAX_KEYS {
            return Err(corrupt());
        }
        let ids: Vec<u32> = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
        let header = bytes[..4 + 4 + 2 + 4 * n].to_vec();
        let locked_len = KEY * n + TAG;
        let pass = match r.u8()? {
            0 => None,
            1 => {
                let params = r.params()?;
                let salt: [u8; 16] = r.take(16)?.try_into().expect("16 octets");
                let read = r.take(NONCE + locked_len)?.to_vec();
                Some(PassLock { params, salt, read: Some((read, header.clone())) })
            }
            _ => return Err(corrupt()),
        };
        let count = r.u16()? as usize;
        if count > MAX_DEVICES {
            return Err(corrupt());
        }
        let mut devices = Vec::new();
        let mut sealed_for = Vec::new();
        for _ in 0..count {
            let len = r.u8()? as usize;
            let label = std::str::from_utf8(r.take(len)?).map_err(|_| corrupt())?.to_owned();
            let public: [u8; X25519] = r.take(X25519)?.try_into().expect("32 octets");
            let kem = r.take(X25519)?.to_vec();
            let ct = r.take(locked_len)?.to_vec();
            if label.is_empty() || label.len() > MAX_LABEL {
                return Err(corrupt());
            }
            sealed_for.push(HpkeCiphertext { kem_output: kem.into(), ciphertext: ct.into() });
            devices.push(DeviceLock { label, public });
        }
        if !r.0.is_empty() || (pass.is_none() && devices.is_empty()) {
            return Err(corrupt());
        }
        let locked = match unlock {
            Unlock::Passphrase(p) => {
                let lock = pass.as_ref().ok_or(VaultError::NoPassphrase)?;
                let (read, _) = lock.read.as_ref().expect("just read");
                let key = kek(p, &lock.salt, lock.params)?;
                open(&key, &Self::pass_aad(account, &header), read).ok_or(VaultError::WrongPassphrase)?
            }
            Unlock::Device(key) => {
                let at = devices.iter().position(|d| d.public == key.public).ok_or(VaultError::NotEnrolled)?;
                let aad = Self::device_aad(&header, &devices[at].label);
                RustCrypto::default()
                    .hpke_open(HPKE, &sealed_for[at], &key.private, &Self::device_info(account), &aad)
                    .map_err(|_| corrupt())?
            }
        };
        let keys = ids.into_iter().zip(locked.chunks_exact(KEY).map(|k| k.try_into().expect("32 octets"))).collect();
        let ring = KeyRing { current, keys, pass, devices };
        ring.checked()
    }

    /// A ring whose IDs are unique and include the current one.
    fn checked(self) -> Result<Self, VaultError> {
        let mut ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.keys.len() || self.key(self.current).is_none() {
            return Err(VaultError::Corrupt(KEYS.into()));
        }
        Ok(self)
    }

    /// `XMK1 | m t p | salt | current | n | (id, sealed key)*`, each key
    /// sealed alone, its ID not covered: the record of vault 0.0.9.
    fn decode_v1(bytes: &[u8], passphrase: &str, account: &BareJid) -> Result<Self, VaultError> {
        let mut r = Reader(&bytes[4..]);
        let params = r.params()?;
        let salt: [u8; 16] = r.take(16)?.try_into().expect("16 octets");
        let current = r.u32()?;
        let n = r.u16()? as usize;
        let key = kek(passphrase, &salt, params)?;
        let aad = bound(b"xmpp-mls vault keys v1", account);
        let mut keys = Vec::new();
        if n > MAX_KEYS {
            return Err(VaultError::Corrupt(KEYS.into()));
        }
        for _ in 0..n {
            let id = r.u32()?;
            let opened = open(&key, &aad, r.take(NONCE + KEY + TAG)?).ok_or(VaultError::WrongPassphrase)?;
            keys.push((id, opened.try_into().map_err(|_| VaultError::Corrupt(KEYS.into()))?));
        }
        KeyRing { current, keys, pass: Some(PassLock { params, salt, read: None }), devices: Vec::new() }.checked()
    }

    fn key(&self, id: u32) -> Option<&[u8; KEY]> {
        self.keys.iter().find(|(i, _)| *i == id).map(|(_, k)| k)
    }

    pub(crate) fn current(&self) -> u32 {
        self.current
    }

    pub(crate) fn key_ids(&self) -> Vec<u32> {
        self.keys.iter().map(|(id, _)| *id).collect()
    }

    pub(crate) fn has_passphrase(&self) -> bool {
        self.pass.is_some()
    }

    /// The labels of the enrolled devices.
    pub(crate) fn devices(&self) -> Vec<String> {
        self.devices.iter().map(|d| d.label.clone()).collect()
    }

    /// This ring under a new passphrase (new salt, `params`).
    pub(crate) fn with_passphrase(&self, params: KdfParams) -> Self {
        KeyRing { pass: Some(PassLock { params, salt: rand::random(), read: None }), ..self.clone() }
    }

    /// This ring with `label` enrolled under `public` (replacing its former key).
    pub(crate) fn with_device(&self, label: &str, public: [u8; X25519]) -> Result<Self, VaultError> {
        let mut ring = self.clone();
        ring.devices.retain(|d| d.label != label);
        if label.is_empty() || label.len() > MAX_LABEL || ring.devices.len() >= MAX_DEVICES {
            return Err(VaultError::Corrupt(format!("enrollment of {label}")));
        }
        ring.devices.push(DeviceLock { label: label.to_owned(), public });
        Ok(ring)
    }

    /// This ring without the device `label`; None if it is not enrolled.
    pub(crate) fn without_device(&self, label: &str) -> Option<Self> {
        let mut ring = self.clone();
        ring.devices.retain(|d| d.label != label);
        (ring.devices.len() < self.devices.len()).then_some(ring)
    }

    /// This ring with a new data key, higher than all, as the current one.
    pub(crate) fn with_next_key(&self) -> Self {
        let next = self.keys.iter().map(|(i, _)| *i).max().unwrap_or(0) + 1;
        let mut ring = self.clone();
        ring.keys.push((next, rand::random()));
        ring.current = next;
        ring
    }

    /// This ring with the current data key only.
    pub(crate) fn with_current_only(&self) -> Self {
        let mut ring = self.clone();
        ring.keys.retain(|(id, _)| *id == self.current);
        ring
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

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams { m_kib: 1024, t: 1, p: 1 };

    fn alice() -> BareJid {
        BareJid::new("alice@example.org").unwrap()
    }

    fn two_keys() -> KeyRing {
        KeyRing { current: 2, keys: vec![(1, [1; 32]), (2, [2; 32])], ..KeyRing::new(FAST, [3; 16], [0; 32]) }
    }

    #[test]
    fn key_ring_round_trip_and_wrong_passphrase() {
        let ring = two_keys();
        let bytes = ring.encode(&alice(), Some("right")).unwrap();
        let back = KeyRing::decode(&bytes, &alice(), Unlock::Passphrase("right")).unwrap();
        assert_eq!((back.current, back.keys.clone()), (2, ring.keys.clone()));
        assert!(matches!(KeyRing::decode(&bytes, &alice(), Unlock::Passphrase("wrong")), Err(VaultError::WrongPassphrase)));
        let bob = BareJid::new("bob@example.org").unwrap();
        assert!(KeyRing::decode(&bytes, &bob, Unlock::Passphrase("right")).is_err(), "bound to the account");
        // Written again unchanged without the passphrase; changed keys need it.
        assert!(KeyRing::decode(&back.encode(&alice(), None).unwrap(), &alice(), Unlock::Passphrase("right")).is_ok());
        assert!(matches!(back.with_next_key().encode(&alice(), None), Err(VaultError::PassphraseNeeded)));
    }

    #[test]
    fn an_enrolled_device_opens_the_ring_and_no_other_key_does() {
        let (laptop, tablet) = (DeviceKey::generate().unwrap(), DeviceKey::generate().unwrap());
        let ring = two_keys().with_device("laptop", *laptop.public()).unwrap();
        let bytes = ring.encode(&alice(), Some("pass")).unwrap();
        let opened = KeyRing::decode(&bytes, &alice(), Unlock::Device(&laptop)).unwrap();
        assert_eq!((opened.current, opened.devices(), opened.keys), (2, vec!["laptop".to_owned()], ring.keys.clone()));
        assert!(matches!(KeyRing::decode(&bytes, &alice(), Unlock::Device(&tablet)), Err(VaultError::NotEnrolled)));
        // Device locks only: no passphrase opens it.
        let keyless = KeyRing { pass: None, ..ring };
        let bytes = keyless.encode(&alice(), None).unwrap();
        assert!(matches!(KeyRing::decode(&bytes, &alice(), Unlock::Passphrase("pass")), Err(VaultError::NoPassphrase)));
        assert!(KeyRing::decode(&bytes, &alice(), Unlock::Device(&laptop)).is_ok());
    }

    #[test]
    fn a_record_with_an_edited_header_opens_nothing() {
        let laptop = DeviceKey::generate().unwrap();
        let bytes = two_keys().with_device("laptop", *laptop.public()).unwrap().encode(&alice(), Some("pass")).unwrap();
        for at in [7, 13] {
            // The last octet of the current ID, of the first ID.
            let mut edited = bytes.clone();
            edited[at] ^= 1;
            assert!(KeyRing::decode(&edited, &alice(), Unlock::Passphrase("pass")).is_err(), "{at}");
            assert!(KeyRing::decode(&edited, &alice(), Unlock::Device(&laptop)).is_err(), "{at}");
        }
    }

    /// Found by fuzzing (fuzz/regressions/vault_record): the place hands
    /// the key record back, so its costs and contents are not trusted.
    #[test]
    fn key_records_that_must_not_open() {
        let none = KeyRing { keys: vec![], ..two_keys() };
        assert!(matches!(KeyRing::decode(&none.encode(&alice(), Some("any")).unwrap(), &alice(), Unlock::Passphrase("any")), Err(VaultError::Corrupt(k)) if k == KEYS));
        let absent = KeyRing { current: 3, ..two_keys() };
        assert!(matches!(KeyRing::decode(&absent.encode(&alice(), Some("p")).unwrap(), &alice(), Unlock::Passphrase("p")), Err(VaultError::Corrupt(_))));
        let locks_none = KeyRing { pass: None, ..two_keys() };
        assert!(matches!(KeyRing::decode(&locks_none.encode(&alice(), None).unwrap(), &alice(), Unlock::Passphrase("p")), Err(VaultError::Corrupt(_))));
        let above = [
            KdfParams { m_kib: MAX_KDF.m_kib + 1, ..FAST },
            KdfParams { t: MAX_KDF.t + 1, ..FAST },
            KdfParams { p: MAX_KDF.p + 1, ..FAST },
            KdfParams { p: 0xfb00_0000, ..FAST }, // argon2's 8 * p overflowed
        ];
        let valid = two_keys().encode(&alice(), Some("right")).unwrap();
        let params_at = 4 + 4 + 2 + 8 + 1;
        for costly in above {
            let mut bytes = valid.clone();
            for (i, v) in [costly.m_kib, costly.t, costly.p].into_iter().enumerate() {
                bytes[params_at + 4 * i..params_at + 4 * i + 4].copy_from_slice(&v.to_be_bytes());
            }
            assert!(matches!(KeyRing::decode(&bytes, &alice(), Unlock::Passphrase("right")), Err(VaultError::Corrupt(_))));
        }
    }

    #[test]
    fn blobs_are_bound_to_account_name_and_version() {
        let key = [9u8; 32];
        let sealed = seal(&key, &blob_aad(&alice(), "a", 1), b"secret");
        assert_eq!(open(&key, &blob_aad(&alice(), "a", 1), &sealed).unwrap(), b"secret");
        assert!(open(&key, &blob_aad(&alice(), "b", 1), &sealed).is_none());
        assert!(open(&key, &blob_aad(&alice(), "a", 2), &sealed).is_none());
    }

    #[test]
    fn enrollment_codes_are_four_groups_and_compare_loosely() {
        let key = DeviceKey::generate().unwrap();
        let code = enrollment_code(&alice(), key.public());
        assert_eq!(code.len(), 19, "{code}");
        assert_eq!(code.split('-').count(), 4);
        assert!(same_code(&code.to_uppercase().replace('-', " "), &code));
        assert_ne!(code, enrollment_code(&BareJid::new("bob@example.org").unwrap(), key.public()));
    }
}
