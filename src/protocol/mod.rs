//! Wire types of `urn:xmpp:mls:0`: what xep/ specifies, parsed from and
//! serialised to XML. Nothing here touches the store or the network.

pub mod address;
pub mod disco;
pub mod error;

/// The protocol namespace (provisional, ProtoXEP convention).
pub const NS: &str = "urn:xmpp:mls:0";
/// Application-specific stanza error conditions.
pub const NS_ERRORS: &str = "urn:xmpp:mls:0:errors";

/// Input that does not follow xep/.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the address is neither a directory nor a group JID")]
    BadAddress,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}
