//! The device list node: publish, retract, items, subscriptions, events.

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};

use super::pubsub::{headline, own_jid, Caller};
use super::{Response, Service, ServiceError};
use crate::protocol::devices::{Device, NODE};
use crate::protocol::error::AppCondition;
use crate::protocol::pubsub::{items_result, publish_result, subscription_result, Event, ItemIn};
use crate::protocol::{keypackages, malformed, now};
use crate::store::{DevicePublish, Expired, StoreError};

const DAY: i64 = 24 * 3600;

impl Service {
    pub(super) async fn publish_device(&self, caller: &Caller<'_>, items: Vec<ItemIn>) -> Result<Response, ServiceError> {
        caller.require_owner()?;
        let [item] = <[ItemIn; 1]>::try_from(items).map_err(|_| malformed("publish one device per request"))?;
        let mut device = Device::parse(item.id.as_deref(), &item.payload)?;
        let now = now();
        let latest = now.saturating_add((self.config.directory.max_device_lifetime_days as i64).saturating_mul(DAY));
        let expires = device.expires.unwrap_or(latest);
        if expires <= now {
            return Err(malformed("expires is in the past").into());
        }
        device.expires = Some(expires.min(latest));
        let account = caller.account.to_string();
        let event = Event::Published { node: NODE.into(), items: vec![(device.id.clone(), device.to_element())] };
        let max = self.config.directory.max_devices_per_account;
        let (outcome, stanza_id, expired) = self.store.publish_device(account, device.clone(), event.to_element(), max, now).await?;
        // Devices of the account found expired on the way: as at maintenance.
        let (mut messages, mut issued) = (self.expiry_events(&expired).await?, Vec::new());
        if !expired.is_empty() {
            issued = self.issue_removals(self.store.groups_with_stale_leaves(Some(caller.account.to_string()), now).await?).await;
        }
        match outcome {
            DevicePublish::Published { .. } => {
                messages.extend(self.device_event(caller.account, event, stanza_id.as_deref()).await?);
                Ok(Response { payload: Some(publish_result(NODE, &[device.id])), messages, issued, ..Default::default() })
            }
            DevicePublish::TooManyDevices => Err(ServiceError::Limit(AppCondition::TooManyDevices)),
            DevicePublish::KeyInUse => Err(ServiceError::KeyInUse),
        }
    }

    pub(super) async fn retract_device(&self, caller: &Caller<'_>, ids: Vec<String>) -> Result<Response, ServiceError> {
        caller.require_owner()?;
        let [id] = <[String; 1]>::try_from(ids).map_err(|_| malformed("retract one device per request"))?;
        let event = Event::Retracted { node: NODE.into(), ids: vec![id.clone()] };
        let (stanza_id, departed) = self
            .store
            .retract_device(caller.account.to_string(), id, event.to_element(), now())
            .await?
            .ok_or(ServiceError::NotFound)?;
        let mut messages = self.device_event(caller.account, event, Some(&stanza_id)).await?;
        messages.extend(self.departures(&departed));
        let stale = self.store.groups_with_stale_leaves(Some(caller.account.to_string()), now()).await?;
        let issued = self.issue_removals(stale).await;
        Ok(Response { payload: None, messages, issued, ..Default::default() })
    }

    pub(super) async fn device_items(&self, caller: &Caller<'_>, ids: Vec<String>) -> Result<Response, ServiceError> {
        let devices = self.store.live_devices(caller.account.to_string(), now()).await?;
        let items = devices
            .into_iter()
            .filter(|d| ids.is_empty() || ids.contains(&d.id))
            .map(|d| (d.id.clone(), d.to_element()))
            .collect();
        Ok(Response::result(items_result(NODE, items)))
    }

    pub(super) async fn subscribe(&self, caller: &Caller<'_>, node: &str, jid: Jid) -> Result<Response, ServiceError> {
        match node {
            NODE => {}
            keypackages::NODE => return Err(ServiceError::PubsubUnsupported("subscribe")),
            _ => return Err(ServiceError::NotFound),
        }
        own_jid(caller, &jid)?;
        let d = &self.config.directory;
        let (account, by, limits) =
            (caller.account.to_string(), jid.to_bare().to_string(), (d.max_subscribers, d.max_devices_per_account));
        if !self.store.subscribe(account, NODE, jid.to_string(), by, limits).await? {
            return Err(ServiceError::Limit(AppCondition::TooManySubscribers));
        }
        Ok(Response::result(subscription_result(NODE, &jid)))
    }

    pub(super) async fn unsubscribe(&self, caller: &Caller<'_>, node: &str, jid: Jid) -> Result<Response, ServiceError> {
        if node != NODE {
            return Err(ServiceError::NotFound);
        }
        own_jid(caller, &jid)?;
        if !self.store.unsubscribe(caller.account.to_string(), NODE, jid.to_string()).await? {
            return Err(ServiceError::NotSubscribed);
        }
        Ok(Response::default())
    }

    /// The event for every subscriber, and for the owner's bare JID with the
    /// inbox entry's stanza id.
    async fn device_event(&self, account: &BareJid, event: Event, stanza_id: Option<&str>) -> Result<Vec<Element>, StoreError> {
        let from = self.directory_jid(account);
        let payload = event.to_element();
        let subscribers = self.store.subscribers(account.to_string(), NODE).await?;
        let mut messages: Vec<Element> = subscribers
            .iter()
            .filter(|s| Jid::new(s).map(|j| j.to_bare() != *account).unwrap_or(true))
            .map(|s| headline(&from, s, payload.clone(), None))
            .collect();
        messages.push(headline(&from, account.as_str(), payload, stanza_id));
        Ok(messages)
    }

    /// A retract event for each expired device, as for a retraction.
    pub(super) async fn expiry_events(&self, expired: &[Expired]) -> Result<Vec<Element>, StoreError> {
        let mut messages = Vec::new();
        for e in expired {
            let Ok(account) = BareJid::new(&e.account) else { continue };
            let event = Event::Retracted { node: NODE.into(), ids: vec![e.device_id.clone()] };
            messages.extend(self.device_event(&account, event, None).await?);
        }
        Ok(messages)
    }
}
