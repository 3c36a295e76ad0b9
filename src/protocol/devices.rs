//! The device list (the Authentication Service): one XEP-0060 item per
//! device at node `urn:xmpp:mls:0:devices`, item id = device id.

use minidom::Element;

use super::{b64_decode, b64_encode, format_time, malformed, n, parse_time, ProtocolError, NS};

pub const NODE: &str = "urn:xmpp:mls:0:devices";
/// The only signature scheme accepted for now (RFC 9420 `ed25519`, 0x0807).
pub const SCHEME_ED25519: &str = "ed25519";
const ED25519_KEY_LEN: usize = 32;
pub const MAX_DEVICE_ID: usize = 64;
pub const MAX_LABEL: usize = 64;
/// Bytes one `<item/>` of a device list takes at most (tested below).
pub const MAX_ITEM: usize = 640;

/// A device of an account: what the directory stores and publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: String,
    /// Ed25519 public key, the MLS leaf's signature key.
    pub signature_key: Vec<u8>,
    pub label: Option<String>,
    /// Unix seconds; `None` in a publish request means "the maximum".
    pub expires: Option<i64>,
}

/// Device ids are also resourceparts of device JIDs in groups: 1 to 64 of
/// `A-Z a-z 0-9 - _ .`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Device {
    /// Parses the payload of a published item whose id is `item_id`.
    pub fn parse(item_id: Option<&str>, payload: &Element) -> Result<Self, ProtocolError> {
        if !payload.is("device", NS) {
            return Err(malformed("a device item carries <device xmlns='urn:xmpp:mls:0'/>"));
        }
        super::known_children(payload, &[])?;
        let id = item_id.ok_or(malformed("a device item needs the device id as item id"))?;
        if !valid_device_id(id) {
            return Err(malformed("invalid device id"));
        }
        if payload.attr("signature-scheme") != Some(SCHEME_ED25519) {
            return Err(malformed("unsupported signature-scheme"));
        }
        let signature_key = b64_decode(&payload.text())?;
        if signature_key.len() != ED25519_KEY_LEN {
            return Err(malformed("an ed25519 key is 32 bytes"));
        }
        let label = payload.attr("label").map(str::to_owned);
        if label.as_ref().is_some_and(|l| l.chars().count() > MAX_LABEL) {
            return Err(malformed("label longer than 64 characters"));
        }
        let expires = payload.attr("expires").map(parse_time).transpose()?;
        Ok(Device { id: id.to_owned(), signature_key, label, expires })
    }

    /// The item payload: `<device signature-scheme expires label>key</device>`.
    pub fn to_element(&self) -> Element {
        let mut b = Element::builder("device", NS).attr(n("signature-scheme"), SCHEME_ED25519);
        if let Some(expires) = self.expires {
            b = b.attr(n("expires"), format_time(expires));
        }
        if let Some(label) = &self.label {
            b = b.attr(n("label"), label.as_str());
        }
        b.append(b64_encode(&self.signature_key)).build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_item_with_the_longest_fields_fits_the_bound() {
        let d = Device {
            id: "d".repeat(MAX_DEVICE_ID),
            signature_key: vec![7; 32],
            label: Some("\"".repeat(MAX_LABEL)),
            expires: Some(253_402_300_799),
        };
        let size = |n: usize| {
            let el = super::super::pubsub::items_result(NODE, vec![(d.id.clone(), d.to_element()); n]);
            let mut out = Vec::new();
            el.write_to(&mut out).unwrap();
            out.len()
        };
        assert!(size(2) - size(1) <= MAX_ITEM, "{}", size(2) - size(1));
    }

    #[test]
    fn round_trip_and_rejections() {
        let d = Device {
            id: "laptop-5f2c".into(),
            signature_key: vec![7; 32],
            label: Some("Laptop".into()),
            expires: Some(1_800_000_000),
        };
        assert_eq!(Device::parse(Some("laptop-5f2c"), &d.to_element()).unwrap(), d);
        assert!(Device::parse(Some("bad id"), &d.to_element()).is_err());
        assert!(Device::parse(None, &d.to_element()).is_err());
        let short = Device { signature_key: vec![1; 31], ..d.clone() };
        assert!(Device::parse(Some("x"), &short.to_element()).is_err());
        let p256: Element = format!(
            "<device xmlns='urn:xmpp:mls:0' signature-scheme='ecdsa_secp256r1_sha256'>{}</device>",
            b64_encode(&[1; 32])
        )
        .parse()
        .unwrap();
        assert!(Device::parse(Some("x"), &p256).is_err());
    }
}
