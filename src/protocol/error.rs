//! Stanza errors (RFC 6120 §8.3) with the application-specific conditions
//! of `urn:xmpp:mls:0:errors` (xep/ §Error handling).

use minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use super::NS_ERRORS;

/// Application-specific conditions; each accompanies a defined condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppCondition {
    /// With `policy-violation`: the payload exceeds `max-payload-size`.
    PayloadTooBig,
    /// With `item-not-found`: no group has this JID.
    UnknownGroup,
}

impl AppCondition {
    pub fn name(self) -> &'static str {
        match self {
            AppCondition::PayloadTooBig => "payload-too-big",
            AppCondition::UnknownGroup => "unknown-group",
        }
    }
}

/// Builds `<error/>` with its defined condition, optional application
/// condition and optional human-readable text.
pub fn stanza_error(
    type_: ErrorType,
    condition: DefinedCondition,
    app: Option<AppCondition>,
    text: Option<&str>,
) -> StanzaError {
    let mut error = StanzaError::new(type_, condition, "en", text.unwrap_or_default());
    if text.is_none() {
        error.texts.clear();
    }
    error.other = app.map(|a| Element::builder(a.name(), NS_ERRORS).build());
    error
}
