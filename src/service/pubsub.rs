//! XEP-0060 requests at an account's directory, dispatched by node.

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};

use super::{IqKind, IqRequest, Response, Service, ServiceError};
use crate::protocol::address::directory_node;
use crate::protocol::pubsub::{feature_of, PubsubRequest};
use crate::protocol::{devices, keypackages, n, ProtocolError, NS_SID};
use crate::xmpp::namespace::CLIENT;

/// Who asks and whose directory it is.
pub(super) struct Caller<'a> {
    pub requester: BareJid,
    pub account: &'a BareJid,
}

impl Caller<'_> {
    pub fn is_owner(&self) -> bool {
        self.requester == *self.account
    }

    pub fn require_owner(&self) -> Result<(), ServiceError> {
        self.is_owner().then_some(()).ok_or(ServiceError::Forbidden)
    }
}

impl Service {
    pub(super) async fn pubsub(&self, req: &IqRequest, account: &BareJid) -> Result<Response, ServiceError> {
        let request = PubsubRequest::try_from(&req.payload)?;
        let expected = match request {
            PubsubRequest::Items { .. } => IqKind::Get,
            _ => IqKind::Set,
        };
        if req.kind != expected {
            return Err(ProtocolError::Malformed("wrong IQ type for this pubsub action").into());
        }
        let caller = Caller { requester: req.from.to_bare(), account };
        match request {
            PubsubRequest::Unsupported(action) => Err(ServiceError::PubsubUnsupported(feature_of(&action))),
            PubsubRequest::Publish { node, items } => match node.as_str() {
                devices::NODE => self.publish_device(&caller, items).await,
                keypackages::NODE => self.upload_key_packages(&caller, items).await,
                _ => Err(ServiceError::NotFound),
            },
            PubsubRequest::Retract { node, ids } => match node.as_str() {
                devices::NODE => self.retract_device(&caller, ids).await,
                keypackages::NODE => Err(ServiceError::PubsubUnsupported("retract-items")),
                _ => Err(ServiceError::NotFound),
            },
            PubsubRequest::Items { node, ids } => match node.as_str() {
                devices::NODE => self.device_items(&caller, ids).await,
                keypackages::NODE => self.key_package_items(&caller).await,
                _ => Err(ServiceError::NotFound),
            },
            PubsubRequest::Subscribe { node, jid } => self.subscribe(&caller, &node, jid).await,
            PubsubRequest::Unsubscribe { node, jid } => self.unsubscribe(&caller, &node, jid).await,
        }
    }

    /// The JID of `account`'s directory at this service.
    pub(super) fn directory_jid(&self, account: &BareJid) -> String {
        format!("{}@{}", directory_node(account), self.config.component.jid)
    }
}

/// A headline message from the directory; `stanza_id` marks inbox entries.
pub(super) fn headline(from: &str, to: &str, payload: Element, stanza_id: Option<&str>) -> Element {
    let mut b = Element::builder("message", CLIENT)
        .attr(n("from"), from)
        .attr(n("to"), to)
        .attr(n("type"), "headline")
        .attr(n("id"), crate::store::new_stanza_id())
        .append(payload);
    if let Some(id) = stanza_id {
        b = b.append(Element::builder("stanza-id", NS_SID).attr(n("by"), from).attr(n("id"), id).build());
    }
    b.build()
}

/// A subscription JID must be the requester's own (XEP-0060 §6.1.3.1).
pub(super) fn own_jid(caller: &Caller<'_>, jid: &Jid) -> Result<(), ServiceError> {
    (jid.to_bare() == caller.requester).then_some(()).ok_or(ServiceError::InvalidJid)
}
