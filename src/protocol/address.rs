//! Addressing (xep/ §Addressing): which entity of the service a JID names.
//!
//! - the service: `mls.example.org`
//! - an account's directory: the XEP-0106-escaped bare JID as localpart,
//!   `alice\40example.org@mls.example.org`
//! - a group: lowercase unpadded base32 of the MLS group_id as localpart.
//!   Its alphabet has no backslash, so a group can never look like a directory.

use data_encoding::{Encoding, BASE32_NOPAD};
use xmpp_parsers::jid::{BareJid, Jid};

use super::ProtocolError;

/// The entity a stanza to the component is addressed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Service,
    Directory(BareJid),
    Group(Vec<u8>),
}

impl Address {
    /// Classifies `to`; the caller has already checked its domain is ours.
    pub fn parse(to: &Jid) -> Result<Self, ProtocolError> {
        let Some(node) = to.node() else { return Ok(Address::Service) };
        let node = node.as_str();
        if node.contains('\\') {
            let account = unescape(node).ok_or(ProtocolError::BadAddress)?;
            let account = BareJid::new(&account).map_err(|_| ProtocolError::BadAddress)?;
            if account.node().is_none() {
                return Err(ProtocolError::BadAddress);
            }
            return Ok(Address::Directory(account));
        }
        group_id_from_node(node).map(Address::Group).ok_or(ProtocolError::BadAddress)
    }
}

fn lower_base32() -> Encoding {
    let mut spec = BASE32_NOPAD.specification();
    spec.symbols = "abcdefghijklmnopqrstuvwxyz234567".into();
    spec.encoding().expect("valid base32 alphabet")
}

/// The group JID localpart for an MLS group_id.
pub fn group_node(group_id: &[u8]) -> String {
    lower_base32().encode(group_id)
}

/// Longest group_id whose JID fits a 1023-octet localpart (RFC 7622).
pub const MAX_GROUP_ID: usize = 639;

/// The octets a [`group_node`] spelling stands for; None unless canonical.
pub fn node_octets(node: &str) -> Option<Vec<u8>> {
    let id = lower_base32().decode(node.as_bytes()).ok()?;
    (group_node(&id) == node).then_some(id)
}

fn group_id_from_node(node: &str) -> Option<Vec<u8>> {
    // Only canonical spellings, so that one group has exactly one JID.
    node_octets(node).filter(|id| !id.is_empty() && id.len() <= MAX_GROUP_ID)
}

/// The directory localpart of an account: XEP-0106 escaping of its bare JID.
pub fn directory_node(account: &BareJid) -> String {
    let mut out = String::with_capacity(account.as_str().len() + 4);
    for c in account.as_str().chars() {
        match c {
            ' ' => out.push_str("\\20"),
            '"' => out.push_str("\\22"),
            '&' => out.push_str("\\26"),
            '\'' => out.push_str("\\27"),
            '/' => out.push_str("\\2f"),
            ':' => out.push_str("\\3a"),
            '<' => out.push_str("\\3c"),
            '>' => out.push_str("\\3e"),
            '@' => out.push_str("\\40"),
            '\\' => out.push_str("\\5c"),
            c => out.push(c),
        }
    }
    out
}

/// Strict XEP-0106 unescaping: only the ten defined escapes, nothing else
/// after a backslash.
fn unescape(node: &str) -> Option<String> {
    let mut out = String::with_capacity(node.len());
    let mut rest = node;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "20" => ' ',
            "22" => '"',
            "26" => '&',
            "27" => '\'',
            "2f" => '/',
            "3a" => ':',
            "3c" => '<',
            "3e" => '>',
            "40" => '@',
            "5c" => '\\',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    #[test]
    fn directory_round_trip() {
        let alice = BareJid::new("alice@example.org").unwrap();
        assert_eq!(directory_node(&alice), "alice\\40example.org");
        let to = jid("alice\\40example.org@mls.example.org/x");
        assert_eq!(Address::parse(&to).unwrap(), Address::Directory(alice));
    }

    #[test]
    fn group_round_trip() {
        let id = b"abcdefghij".to_vec();
        assert_eq!(group_node(&id), "mfrggzdfmztwq2lk");
        let to = jid("mfrggzdfmztwq2lk@mls.example.org");
        assert_eq!(Address::parse(&to).unwrap(), Address::Group(id.clone()));
        // RFC 7622 case mapping happens before classification.
        let upper = jid("MFRGGZDFMZTWQ2LK@mls.example.org");
        assert_eq!(Address::parse(&upper).unwrap(), Address::Group(id));
        let longest = group_node(&[7u8; MAX_GROUP_ID]);
        assert!(longest.len() <= 1023);
        assert!(Address::parse(&jid(&format!("{longest}@m"))).is_ok());
    }

    #[test]
    fn service_and_malformed() {
        assert_eq!(Address::parse(&jid("mls.example.org")).unwrap(), Address::Service);
        for bad in [
            "not-base32!@mls.example.org",
            "mfrggzdfmztwq2lk1@mls.example.org", // '1' is not in the alphabet
            "mf@mls.example.org",                // non-canonical trailing bits ("me" is canonical)
            "alice\\41x@mls.example.org",        // undefined escape
            "alice\\4@mls.example.org",          // truncated escape
            "example.org\\2fres@mls.example.org", // unescapes to a domain only
        ] {
            assert_eq!(Address::parse(&jid(bad)), Err(ProtocolError::BadAddress), "{bad}");
        }
    }
}
