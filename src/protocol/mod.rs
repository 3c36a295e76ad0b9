//! Wire types of `urn:xmpp:mls:0`: what xep/ specifies, parsed from and
//! serialised to XML. Nothing here touches the store or the network.

pub mod address;
pub mod content;
pub mod devices;
pub mod disco;
pub mod error;
pub mod groups;
pub mod keypackages;
pub mod mam;
pub mod mls;
pub mod notices;
pub mod pubsub;
pub mod vault;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use minidom::rxml::NcName;

/// The protocol namespace (provisional, ProtoXEP convention).
pub const NS: &str = "urn:xmpp:mls:0";
/// Application-specific stanza error conditions.
pub const NS_ERRORS: &str = "urn:xmpp:mls:0:errors";
/// XEP-0359 stanza ids.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// Longest 'id' (and MAM 'queryid') the service answers: answers echo them,
/// so a longer one would make the size of answers unbounded (xep/ §Stanza
/// Size Limits).
pub const MAX_ID: usize = 1024;

/// Input that does not follow xep/.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the address is neither a directory nor a group JID")]
    BadAddress,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("a claim names a device more than once")]
    DuplicateDevice,
}

pub fn malformed(why: &'static str) -> ProtocolError {
    ProtocolError::Malformed(why)
}

/// An attribute name for minidom's builder.
pub fn n(name: &'static str) -> NcName {
    name.try_into().expect("a valid XML name")
}

/// Base64 (RFC 4648, padded) of XML text; whitespace is ignored, as XML
/// pretty-printing may insert it.
pub fn b64_decode(text: &str) -> Result<Vec<u8>, ProtocolError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).map_err(|_| malformed("invalid base64"))
}

pub fn b64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// XEP-0082 DateTime in UTC, second precision.
pub fn format_time(unix_secs: i64) -> String {
    chrono::DateTime::from_timestamp(unix_secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn parse_time(text: &str) -> Result<i64, ProtocolError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| malformed("invalid XEP-0082 DateTime"))
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// xep/ §General Rules: a child in `urn:xmpp:mls:0` that the XEP does not
/// define for `el` (one of `allowed`) makes a request non-conforming;
/// children in other namespaces are extensions, and ignored.
fn known_children(el: &minidom::Element, allowed: &[&str]) -> Result<(), ProtocolError> {
    match el.children().find(|c| c.ns() == NS && !allowed.contains(&c.name())) {
        Some(_) => Err(malformed("unknown element in urn:xmpp:mls:0")),
        None => Ok(()),
    }
}

/// A required attribute.
fn attr<'a>(el: &'a minidom::Element, name: &'a str, why: &'static str) -> Result<&'a str, ProtocolError> {
    el.attr(name).ok_or(malformed(why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_time_round_trip() {
        assert_eq!(b64_decode(" AQID\n BA== ").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(b64_decode("AQID!"), Err(malformed("invalid base64")));
        assert_eq!(format_time(1_800_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(parse_time("2027-01-15T09:00:00+01:00").unwrap(), 1_800_000_000);
        assert!(parse_time("tomorrow").is_err());
    }
}
