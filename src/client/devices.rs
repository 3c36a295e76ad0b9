//! Device lists: publish, retract, read, subscribe (xep/ §Publishing Devices).

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};

use super::port::Port;
use super::session::ClientError;
use crate::protocol::address::directory_node;
use crate::protocol::devices::{Device, NODE};
use crate::protocol::pubsub::{parse_items, publish_request, simple_request, NS_PUBSUB};

/// The directory JID of `account` at `service`.
pub fn directory_jid(account: &BareJid, service: &Jid) -> Jid {
    Jid::new(&format!("{}@{}", directory_node(account), service.domain())).expect("a valid directory JID")
}

fn malformed(why: &str) -> ClientError {
    ClientError::Malformed(why.to_owned())
}

/// The `<pubsub><items/></pubsub>` of a result, as (id, payload) pairs.
pub(super) fn result_items(result: Option<Element>) -> Result<Vec<(String, Element)>, ClientError> {
    let pubsub = result.ok_or_else(|| malformed("empty items result"))?;
    let items = pubsub.get_child("items", NS_PUBSUB).ok_or_else(|| malformed("no <items/>"))?;
    Ok(parse_items(items, NS_PUBSUB).into_iter().filter_map(|(id, p)| Some((id, p?))).collect())
}

impl Port {
    /// Publishes (or updates) the signed-in account's device.
    pub async fn publish_device(&self, service: &Jid, device: &Device) -> Result<(), ClientError> {
        let to = directory_jid(&self.jid().to_bare(), service);
        let request = publish_request(NODE, vec![(Some(device.id.clone()), device.to_element())]);
        self.iq(&to, "set", request).await.map(drop)
    }

    /// Removes one of the signed-in account's devices (and its KeyPackages).
    pub async fn retract_device(&self, service: &Jid, device_id: &str) -> Result<(), ClientError> {
        let to = directory_jid(&self.jid().to_bare(), service);
        self.iq(&to, "set", simple_request("retract", NODE, &[device_id], None)).await.map(drop)
    }

    /// The live devices of `account`.
    pub async fn devices(&self, service: &Jid, account: &BareJid) -> Result<Vec<Device>, ClientError> {
        let to = directory_jid(account, service);
        let result = self.iq(&to, "get", simple_request("items", NODE, &[], None)).await?;
        result_items(result)?
            .into_iter()
            .map(|(id, p)| Device::parse(Some(&id), &p).map_err(|e| ClientError::Malformed(e.to_string())))
            .collect()
    }

    /// Subscribes this session's full JID to `account`'s device list.
    pub async fn subscribe_devices(&self, service: &Jid, account: &BareJid) -> Result<(), ClientError> {
        let to = directory_jid(account, service);
        let me = self.jid().to_string();
        self.iq(&to, "set", simple_request("subscribe", NODE, &[], Some(&me))).await.map(drop)
    }

    pub async fn unsubscribe_devices(&self, service: &Jid, account: &BareJid) -> Result<(), ClientError> {
        let to = directory_jid(account, service);
        let me = self.jid().to_string();
        self.iq(&to, "set", simple_request("unsubscribe", NODE, &[], Some(&me))).await.map(drop)
    }
}
