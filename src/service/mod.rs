//! The services behind the component's addresses. Each feature lives in
//! its own module; the router calls [`Service::handle_iq`] and maps
//! [`ServiceError`] to a stanza error.

mod disco;

use std::sync::Arc;

use minidom::Element;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;

use crate::config::Config;
use crate::protocol::address::Address;
use crate::protocol::{disco::PING, ProtocolError, NS};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IqKind {
    Get,
    Set,
}

/// An IQ get/set as the XMPP server delivered it: `from` is the
/// server-authenticated sender.
pub struct IqRequest {
    pub from: Jid,
    pub to: Jid,
    /// What `to` names, classified by the router.
    pub address: Address,
    pub kind: IqKind,
    pub payload: Element,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("no such group")]
    UnknownGroup,
    #[error("no such node")]
    UnknownNode,
    #[error("payload larger than limits.max_payload_size")]
    PayloadTooBig,
    #[error("request not supported by this entity")]
    Unsupported,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Service {
    config: Arc<Config>,
    store: Store,
}

impl Service {
    pub fn new(config: Arc<Config>, store: Store) -> Self {
        Self { config, store }
    }

    /// Answers one IQ get/set: `Ok(None)` is an empty result. The checks run
    /// in the order xep/ §Order of Checks fixes (the router did the first).
    pub async fn handle_iq(&self, req: &IqRequest) -> Result<Option<Element>, ServiceError> {
        let p = &req.payload;
        if serialized_size(p) > self.config.limits.max_payload_size {
            return Err(ServiceError::PayloadTooBig);
        }
        if req.to.resource().is_some() {
            return Err(ServiceError::Unsupported);
        }
        let address = &req.address;
        match (req.kind, p.name(), p.ns().as_str()) {
            (IqKind::Get, "query", ns::DISCO_INFO) => self.disco_info(address, p).await.map(Some),
            (IqKind::Get, "query", ns::DISCO_ITEMS) => self.disco_items(address, p).await.map(Some),
            (IqKind::Get, "ping", PING) if *address == Address::Service => Ok(None),
            // Our namespace, but no element we define: it does not parse.
            (_, _, NS) => Err(ProtocolError::Malformed("unknown element in urn:xmpp:mls:0").into()),
            _ => Err(ServiceError::Unsupported),
        }
    }
}

/// Bytes of `el` as XML, counted without building the string.
fn serialized_size(el: &Element) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail.
    let _ = el.write_to(&mut count);
    count.0
}
