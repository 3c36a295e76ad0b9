//! Stanza errors (RFC 6120 §8.3) with the application-specific conditions
//! of `urn:xmpp:mls:0:errors` (xep/ §Error handling).

use minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use super::pubsub::NS_PUBSUB_ERRORS;
use super::{n, NS_ERRORS};

/// Application-specific conditions without content; each accompanies a
/// defined condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppCondition {
    /// With `policy-violation`: the payload exceeds `max-payload-size`.
    PayloadTooBig,
    /// With `item-not-found`: no group has this JID.
    UnknownGroup,
    /// With `policy-violation`: the account lists the maximum of devices.
    TooManyDevices,
    /// With `policy-violation`: the device would hold too many KeyPackages.
    TooManyKeyPackages,
    /// With `policy-violation`: the device list has the maximum of subscribers.
    TooManySubscribers,
    /// With `conflict`: another device of the account has this key.
    SignatureKeyInUse,
    /// With `conflict`: a group with this id exists already.
    GroupExists,
    /// With `forbidden`: the account (or device) is not a member of the group.
    NotAMember,
    /// With `not-acceptable`: the sender has not joined the group's feed.
    NotJoined,
    /// With `item-not-found`: the archive was pruned; recover from the
    /// latest GroupInfo with an external commit.
    HistoryPruned,
    /// With `policy-violation`: a vault blob larger than max-vault-blob-size.
    BlobTooBig,
    /// With `policy-violation`: the account's vault quota would be exceeded.
    QuotaExceeded,
    /// With `policy-violation`: the account has the maximum of vault blobs.
    TooManyBlobs,
    /// With `policy-violation`: the group would have more than max-members leaves.
    TooManyMembers,
    /// With `policy-violation`: an account would be in more than
    /// max-groups-per-account groups.
    TooManyGroups,
    /// With `forbidden`: the operator does not admit the requester's domain.
    DomainNotAllowed,
    /// With `policy-violation`: the answer would be larger than max-stanza-out.
    ReplyTooBig,
    /// With `bad-request`: a claim names a device more than once.
    DuplicateDevice,
    /// With `policy-violation`: the group's or the sender's archive bytes
    /// of the day are used up.
    ArchiveBudgetExceeded,
    /// With `not-acceptable`: a new group does not list the service in
    /// its `external_senders` extension.
    ExternalSenderRequired,
    /// With `not-acceptable`: the commit does not carry a Remove proposal
    /// of the service that is pending for longer than the grace.
    MissingProposals,
    /// With `item-not-found`: the service keeps no ratchet tree of this
    /// epoch of the group, or the tree has no such page.
    TreeUnavailable,
    /// With `item-not-found`: a bundle names a Commit by SHA-256 and size,
    /// and the requester's account has not uploaded all of it.
    PartsMissing,
    /// With `unexpected-request`: an uploaded part does not begin where the
    /// account's upload of that Commit ends.
    PartOutOfOrder,
}

impl AppCondition {
    pub fn name(self) -> &'static str {
        match self {
            AppCondition::PayloadTooBig => "payload-too-big",
            AppCondition::UnknownGroup => "unknown-group",
            AppCondition::TooManyDevices => "too-many-devices",
            AppCondition::TooManyKeyPackages => "too-many-key-packages",
            AppCondition::TooManySubscribers => "too-many-subscribers",
            AppCondition::SignatureKeyInUse => "signature-key-in-use",
            AppCondition::GroupExists => "group-exists",
            AppCondition::NotAMember => "not-a-member",
            AppCondition::NotJoined => "not-joined",
            AppCondition::HistoryPruned => "history-pruned",
            AppCondition::BlobTooBig => "blob-too-big",
            AppCondition::QuotaExceeded => "quota-exceeded",
            AppCondition::TooManyBlobs => "too-many-blobs",
            AppCondition::TooManyMembers => "too-many-members",
            AppCondition::TooManyGroups => "too-many-groups",
            AppCondition::DomainNotAllowed => "domain-not-allowed",
            AppCondition::ReplyTooBig => "reply-too-big",
            AppCondition::DuplicateDevice => "duplicate-device",
            AppCondition::ArchiveBudgetExceeded => "archive-budget-exceeded",
            AppCondition::ExternalSenderRequired => "external-sender-required",
            AppCondition::MissingProposals => "missing-proposals",
            AppCondition::TreeUnavailable => "tree-unavailable",
            AppCondition::PartsMissing => "parts-missing",
            AppCondition::PartOutOfOrder => "part-out-of-order",
        }
    }

    pub fn element(self) -> Element {
        Element::builder(self.name(), NS_ERRORS).build()
    }
}

/// `<invalid-message reason/>`, with `not-acceptable`: an MLS object failed
/// the DS's validation.
pub fn invalid_message(invalid: super::mls::Invalid) -> Element {
    Element::builder("invalid-message", NS_ERRORS).attr(n("reason"), invalid.reason()).build()
}

/// `<rate-limited retry-after='s'/>`, with `resource-constraint`.
pub fn rate_limited(retry_after_secs: u64) -> Element {
    Element::builder("rate-limited", NS_ERRORS).attr(n("retry-after"), retry_after_secs.to_string()).build()
}

/// A XEP-0060 error condition (`http://jabber.org/protocol/pubsub#errors`).
pub fn pubsub_condition(name: &'static str, feature: Option<&str>) -> Element {
    let mut b = Element::builder(name, NS_PUBSUB_ERRORS);
    if let Some(f) = feature {
        b = b.attr(n("feature"), f);
    }
    b.build()
}

/// Builds `<error/>` with its defined condition, optional application
/// condition and optional human-readable text.
pub fn stanza_error(
    type_: ErrorType,
    condition: DefinedCondition,
    app: Option<Element>,
    text: Option<&str>,
) -> StanzaError {
    let mut error = StanzaError::new(type_, condition, "en", text.unwrap_or_default());
    if text.is_none() {
        error.texts.clear();
    }
    error.other = app;
    error
}
