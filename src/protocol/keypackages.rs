//! KeyPackages (node `urn:xmpp:mls:0:keypackages`): upload, owner listing,
//! claims, and the Authentication Service check that the component and
//! clients share ([`verify`], [`check_leaf`]).

use data_encoding::HEXLOWER;
use minidom::Element;
use openmls::ciphersuite::hash_ref::make_key_package_ref;
use openmls::prelude::{
    BasicCredential, Ciphersuite, Credential, KeyPackageIn, KeyPackageVerifyError, MlsMessageBodyIn, MlsMessageIn,
    ProtocolVersion,
};
use openmls::treesync::errors::LifetimeError;
use openmls_traits::crypto::OpenMlsCrypto;
use tls_codec::{Deserialize, Serialize as _};
use xmpp_parsers::jid::BareJid;

use super::devices::Device;
use super::pubsub::ItemIn;
use super::{b64_decode, b64_encode, format_time, malformed, n, parse_time, ProtocolError, NS, NS_ERRORS};

pub const NODE: &str = "urn:xmpp:mls:0:keypackages";
/// Bytes one `<item/>` of the owner's listing takes at most (tested below).
pub const MAX_INFO_ITEM: usize = 272;
/// Bytes a claimed `<key-package/>` takes at most besides its base64 (tested below).
pub const MAX_CLAIMED_OVERHEAD: usize = 256;

/// The MLS BasicCredential identity of an account: its `xmpp:` URI.
pub fn credential_identity(account: &BareJid) -> Vec<u8> {
    format!("xmpp:{account}").into_bytes()
}

/// The account a credential names: a BasicCredential whose identity is
/// `xmpp:` and a bare JID with a localpart.
pub fn account_of(credential: &Credential) -> Option<BareJid> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let uri = std::str::from_utf8(basic.identity()).ok()?;
    let jid = BareJid::new(uri.strip_prefix("xmpp:")?).ok()?;
    (jid.node().is_some() && credential_identity(&jid) == basic.identity()).then_some(jid)
}

/// Why a KeyPackage (or a leaf) is refused; the `reason` attribute on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not base64 of a TLS-encoded MLSMessage carrying a KeyPackage.
    Malformed,
    /// Larger than the service's max-key-package-size.
    TooBig,
    /// Breaks an RFC 9420 validity rule other than those below.
    Invalid,
    UnsupportedCipherSuite,
    /// Not a BasicCredential whose identity is the account's `xmpp:` URI.
    ForeignIdentity,
    /// The signature key is not a live device of the account.
    UnknownSignatureKey,
    BadSignature,
    Expired,
    NotYetValid,
    LifetimeTooLong,
    /// Already stored, or twice in one upload.
    Duplicate,
    /// More than one last-resort KeyPackage for a device in one upload.
    ExtraLastResort,
}

impl Rejection {
    pub const ALL: [Rejection; 12] = [
        Rejection::Malformed,
        Rejection::TooBig,
        Rejection::Invalid,
        Rejection::UnsupportedCipherSuite,
        Rejection::ForeignIdentity,
        Rejection::UnknownSignatureKey,
        Rejection::BadSignature,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::LifetimeTooLong,
        Rejection::Duplicate,
        Rejection::ExtraLastResort,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::TooBig => "too-big",
            Rejection::Invalid => "invalid",
            Rejection::UnsupportedCipherSuite => "unsupported-cipher-suite",
            Rejection::ForeignIdentity => "foreign-identity",
            Rejection::UnknownSignatureKey => "unknown-signature-key",
            Rejection::BadSignature => "bad-signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not-yet-valid",
            Rejection::LifetimeTooLong => "lifetime-too-long",
            Rejection::Duplicate => "duplicate",
            Rejection::ExtraLastResort => "extra-last-resort",
        }
    }

    pub fn from_reason(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.reason() == reason)
    }
}

/// What a directory accepts (advertised in disco).
#[derive(Debug, Clone)]
pub struct Policy {
    pub cipher_suites: Vec<u16>,
    pub max_lifetime_secs: i64,
    /// Tolerance for clocks that disagree.
    pub clock_skew_secs: i64,
}

/// A KeyPackage that passed [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKeyPackage {
    /// KeyPackageRef (RFC 9420 §5.2).
    pub kp_ref: Vec<u8>,
    pub device_id: String,
    pub cipher_suite: u16,
    pub last_resort: bool,
    pub not_after: i64,
    /// The MLSMessage as uploaded.
    pub message: Vec<u8>,
}

/// The AS check for a leaf: a BasicCredential naming `account`, and a
/// signature key that is one of the account's live `devices`.
pub fn check_leaf<'d>(
    credential: &Credential,
    signature_key: &[u8],
    account: &BareJid,
    devices: &'d [Device],
) -> Result<&'d Device, Rejection> {
    let basic = BasicCredential::try_from(credential.clone()).map_err(|_| Rejection::ForeignIdentity)?;
    if basic.identity() != credential_identity(account).as_slice() {
        return Err(Rejection::ForeignIdentity);
    }
    devices.iter().find(|d| d.signature_key == signature_key).ok_or(Rejection::UnknownSignatureKey)
}

/// Decodes an MLSMessage that must carry a KeyPackage.
fn decode(message: &[u8]) -> Result<KeyPackageIn, Rejection> {
    let msg = MlsMessageIn::tls_deserialize_exact(message).map_err(|_| Rejection::Malformed)?;
    match msg.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => Ok(kp),
        _ => Err(Rejection::Malformed),
    }
}

/// The cipher suite field, read from the wire format (RFC 9420 §6 and
/// §10): MLSMessage version (2) + wire_format (2) + KeyPackage version (2).
fn wire_cipher_suite(message: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*message.get(6)?, *message.get(7)?]))
}

/// What the checks without a signature learn of an uploaded KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// KeyPackageRef (RFC 9420 §5.2), hashed from the package as sent.
    pub kp_ref: Vec<u8>,
    pub device_id: String,
}

/// The checks that verify no signature: decoding, cipher suite, credential
/// and device (the AS check), and the KeyPackageRef.
fn precheck<'d>(
    crypto: &impl OpenMlsCrypto,
    message: &[u8],
    account: &BareJid,
    devices: &'d [Device],
    policy: &Policy,
) -> Result<(KeyPackageIn, u16, &'d Device, Vec<u8>), Rejection> {
    let kp_in = decode(message)?;
    let cipher_suite = wire_cipher_suite(message).ok_or(Rejection::Malformed)?;
    if !policy.cipher_suites.contains(&cipher_suite) {
        return Err(Rejection::UnsupportedCipherSuite);
    }
    let unverified = kp_in.unverified_credential();
    let device =
        check_leaf(&unverified.credential, unverified.signature_key.as_slice(), account, devices)?;
    let suite = Ciphersuite::try_from(cipher_suite).map_err(|_| Rejection::UnsupportedCipherSuite)?;
    let encoded = kp_in.tls_serialize_detached().map_err(|_| Rejection::Malformed)?;
    let kp_ref = make_key_package_ref(&encoded, suite, crypto).map_err(|_| Rejection::Invalid)?;
    Ok((kp_in, cipher_suite, device, kp_ref.as_slice().to_vec()))
}

/// The cheap checks of an uploaded KeyPackage (xep/ §Validation, first
/// stage): everything but signatures, RFC 9420 rules and lifetime.
pub fn inspect(
    crypto: &impl OpenMlsCrypto,
    message: &[u8],
    account: &BareJid,
    devices: &[Device],
    policy: &Policy,
) -> Result<Inspected, Rejection> {
    let (_, _, device, kp_ref) = precheck(crypto, message, account, devices, policy)?;
    Ok(Inspected { kp_ref, device_id: device.id.clone() })
}

/// Validates one uploaded or claimed KeyPackage for `account`, cheap checks
/// first: decoding, cipher suite, credential and device (the AS check),
/// signatures and RFC 9420 rules, lifetime.
pub fn verify(
    crypto: &impl OpenMlsCrypto,
    message: &[u8],
    account: &BareJid,
    devices: &[Device],
    policy: &Policy,
    now: i64,
) -> Result<VerifiedKeyPackage, Rejection> {
    let (kp_in, cipher_suite, device, kp_ref) = precheck(crypto, message, account, devices, policy)?;
    let kp = kp_in.validate(crypto, ProtocolVersion::Mls10).map_err(|e| match e {
        KeyPackageVerifyError::InvalidSignature | KeyPackageVerifyError::InvalidLeafNodeSignature => {
            Rejection::BadSignature
        }
        KeyPackageVerifyError::LifetimeError(LifetimeError::Expired { .. }) => Rejection::Expired,
        KeyPackageVerifyError::LifetimeError(LifetimeError::NotValidYet { .. }) => Rejection::NotYetValid,
        _ => Rejection::Invalid,
    })?;
    // openmls checks that "now" is inside the lifetime, not its length.
    let life = kp.life_time();
    let (not_before, not_after) = (life.not_before() as i64, life.not_after() as i64);
    if not_after <= now {
        return Err(Rejection::Expired);
    }
    // Saturating: the lifetime comes from the package, the policy from a service.
    if not_after.saturating_sub(not_before) > policy.max_lifetime_secs.saturating_add(policy.clock_skew_secs) {
        return Err(Rejection::LifetimeTooLong);
    }
    // The reference the cheap checks used must be the verified package's.
    if kp.hash_ref(crypto).map_err(|_| Rejection::Invalid)?.as_slice() != kp_ref.as_slice() {
        return Err(Rejection::Invalid);
    }
    Ok(VerifiedKeyPackage {
        kp_ref,
        device_id: device.id.clone(),
        cipher_suite,
        last_resort: kp.last_resort(),
        not_after,
        message: message.to_vec(),
    })
}

pub fn ref_hex(kp_ref: &[u8]) -> String {
    HEXLOWER.encode(kp_ref)
}

/// The base64 texts of an upload's items (`<key-package/>` payloads).
pub fn upload_texts(items: &[ItemIn]) -> Result<Vec<String>, ProtocolError> {
    items
        .iter()
        .map(|i| {
            if i.payload.is("key-package", NS) {
                super::known_children(&i.payload, &[])?;
                Ok(i.payload.text())
            } else {
                Err(malformed("a KeyPackage item carries <key-package xmlns='urn:xmpp:mls:0'/>"))
            }
        })
        .collect()
}

/// Decodes an upload item: malformed base64, or more than `max_size`
/// bytes, is a per-package rejection.
pub fn upload_bytes(text: &str, max_size: usize) -> Result<Vec<u8>, Rejection> {
    let bytes = b64_decode(text).map_err(|_| Rejection::Malformed)?;
    if bytes.len() > max_size {
        return Err(Rejection::TooBig);
    }
    Ok(bytes)
}

/// The item payload of an upload (client side).
pub fn key_package_element(message: &[u8]) -> Element {
    Element::builder("key-package", NS).append(b64_encode(message)).build()
}

/// `<invalid-key-packages>`: the application condition of a refused upload,
/// one `<key-package index reason/>` per refused item (0-based).
pub fn rejections_element(rejections: &[(usize, Rejection)]) -> Element {
    Element::builder("invalid-key-packages", NS_ERRORS)
        .append_all(rejections.iter().map(|(i, r)| {
            Element::builder("key-package", NS_ERRORS)
                .attr(n("index"), i.to_string())
                .attr(n("reason"), r.reason())
                .build()
        }))
        .build()
}

pub fn parse_rejections(el: &Element) -> Vec<(usize, Rejection)> {
    el.children()
        .filter_map(|c| Some((c.attr("index")?.parse().ok()?, Rejection::from_reason(c.attr("reason")?)?)))
        .collect()
}

/// What the owner sees of a stored KeyPackage (never the package itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    pub kp_ref: String,
    pub device_id: String,
    pub cipher_suite: u16,
    pub not_after: i64,
    pub last_resort: bool,
}

impl KeyPackageInfo {
    /// Item payload; the item id is `kp_ref`.
    pub fn to_element(&self) -> Element {
        Element::builder("key-package-info", NS)
            .attr(n("device"), self.device_id.as_str())
            .attr(n("cipher-suite"), self.cipher_suite.to_string())
            .attr(n("not-after"), format_time(self.not_after))
            .attr(n("last-resort"), bool_str(self.last_resort))
            .build()
    }

    pub fn parse(kp_ref: &str, el: &Element) -> Result<Self, ProtocolError> {
        Ok(KeyPackageInfo {
            kp_ref: kp_ref.to_owned(),
            device_id: super::attr(el, "device", "info without device")?.to_owned(),
            cipher_suite: parse_u16(super::attr(el, "cipher-suite", "info without cipher-suite")?)?,
            not_after: parse_time(super::attr(el, "not-after", "info without not-after")?)?,
            last_resort: el.attr("last-resort") == Some("true"),
        })
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

fn parse_u16(s: &str) -> Result<u16, ProtocolError> {
    s.parse().map_err(|_| malformed("cipher-suite is a number"))
}

/// A claim request: one KeyPackage per live device of the account,
/// optionally only for some devices, each named once, and one cipher suite.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claim {
    pub cipher_suite: Option<u16>,
    pub devices: Vec<String>,
}

impl Claim {
    pub fn parse(el: &Element) -> Result<Self, ProtocolError> {
        super::known_children(el, &["device"])?;
        let cipher_suite = el.attr("cipher-suite").map(parse_u16).transpose()?;
        let devices = el
            .children()
            .filter(|c| c.is("device", NS))
            .map(|d| super::attr(d, "id", "device filter without id").map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        if !devices.iter().all(|d| seen.insert(d.as_str())) {
            return Err(ProtocolError::DuplicateDevice);
        }
        Ok(Claim { cipher_suite, devices })
    }

    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("claim", NS);
        if let Some(cs) = self.cipher_suite {
            b = b.attr(n("cipher-suite"), cs.to_string());
        }
        b.append_all(self.devices.iter().map(|d| Element::builder("device", NS).attr(n("id"), d.as_str()).build()))
            .build()
    }
}

/// The outcome of a claim for one device (MIMI's per-device results).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed { device: String, kp_ref: String, last_resort: bool, message: Vec<u8> },
    /// The device has no KeyPackage left (MIMI `keyMaterialExhausted`).
    Exhausted { device: String },
    /// Only KeyPackages of other cipher suites (MIMI `nothingCompatible`).
    NothingCompatible { device: String },
    /// No live device has this id.
    UnknownDevice { device: String },
}

impl ClaimOutcome {
    fn to_element(&self) -> Element {
        let (name, device) = match self {
            ClaimOutcome::Claimed { device, kp_ref, last_resort, message } => {
                return Element::builder("key-package", NS)
                    .attr(n("device"), device.as_str())
                    .attr(n("ref"), kp_ref.as_str())
                    .attr(n("last-resort"), bool_str(*last_resort))
                    .append(b64_encode(message))
                    .build()
            }
            ClaimOutcome::Exhausted { device } => ("exhausted", device),
            ClaimOutcome::NothingCompatible { device } => ("nothing-compatible", device),
            ClaimOutcome::UnknownDevice { device } => ("unknown-device", device),
        };
        Element::builder(name, NS).attr(n("device"), device.as_str()).build()
    }

    fn parse(el: &Element) -> Result<Self, ProtocolError> {
        let device = super::attr(el, "device", "claim outcome without device")?.to_owned();
        Ok(match el.name() {
            "key-package" => ClaimOutcome::Claimed {
                device,
                kp_ref: super::attr(el, "ref", "claimed package without ref")?.to_owned(),
                last_resort: el.attr("last-resort") == Some("true"),
                message: b64_decode(&el.text())?,
            },
            "exhausted" => ClaimOutcome::Exhausted { device },
            "nothing-compatible" => ClaimOutcome::NothingCompatible { device },
            "unknown-device" => ClaimOutcome::UnknownDevice { device },
            _ => return Err(malformed("unknown claim outcome")),
        })
    }
}

pub fn claimed_element(outcomes: &[ClaimOutcome]) -> Element {
    Element::builder("claimed", NS).append_all(outcomes.iter().map(ClaimOutcome::to_element)).build()
}

pub fn parse_claimed(el: &Element) -> Result<Vec<ClaimOutcome>, ProtocolError> {
    if !el.is("claimed", NS) {
        return Err(malformed("expected <claimed/>"));
    }
    el.children().map(ClaimOutcome::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip() {
        let claim = Claim { cipher_suite: Some(1), devices: vec!["a".into(), "b".into()] };
        assert_eq!(Claim::parse(&claim.to_element()).unwrap(), claim);
        let twice = Claim { cipher_suite: None, devices: vec!["a".into(), "b".into(), "a".into()] };
        assert_eq!(Claim::parse(&twice.to_element()), Err(ProtocolError::DuplicateDevice));
        let outcomes = vec![
            ClaimOutcome::Claimed { device: "a".into(), kp_ref: "00ff".into(), last_resort: true, message: vec![1, 2] },
            ClaimOutcome::Exhausted { device: "b".into() },
            ClaimOutcome::NothingCompatible { device: "c".into() },
            ClaimOutcome::UnknownDevice { device: "d".into() },
        ];
        assert_eq!(parse_claimed(&claimed_element(&outcomes)).unwrap(), outcomes);
    }

    fn size(el: &Element) -> usize {
        let mut out = Vec::new();
        el.write_to(&mut out).unwrap();
        out.len()
    }

    #[test]
    fn the_size_bounds_hold_for_the_longest_fields() {
        use super::super::devices::MAX_DEVICE_ID;
        use super::super::pubsub::items_result;
        let info = KeyPackageInfo {
            kp_ref: "f".repeat(64),
            device_id: "d".repeat(MAX_DEVICE_ID),
            cipher_suite: 3,
            not_after: 253_402_300_799,
            last_resort: false,
        };
        let listing = |n: usize| size(&items_result(NODE, vec![(info.kp_ref.clone(), info.to_element()); n]));
        assert!(listing(2) - listing(1) <= MAX_INFO_ITEM, "{}", listing(2) - listing(1));
        let claimed = |message: Vec<u8>| {
            let outcome = ClaimOutcome::Claimed { device: info.device_id.clone(), kp_ref: info.kp_ref.clone(), last_resort: false, message };
            size(&claimed_element(&[outcome.clone(), outcome]))
        };
        let b64 = claimed(vec![7; 300]) - claimed(Vec::new());
        assert!(claimed(Vec::new()) - size(&claimed_element(&[])) <= 2 * MAX_CLAIMED_OVERHEAD);
        assert_eq!(b64, 2 * 400);
    }

    #[test]
    fn reasons_round_trip() {
        for r in Rejection::ALL {
            assert_eq!(Rejection::from_reason(r.reason()), Some(r));
        }
        let list = vec![(0, Rejection::BadSignature), (3, Rejection::Expired)];
        assert_eq!(parse_rejections(&rejections_element(&list)), list);
    }
}
