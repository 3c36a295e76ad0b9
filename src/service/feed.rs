//! The live feed: devices join a group with presence (MUC-style) and send
//! application messages to it; the DS reads only their public header.

use minidom::Element;
use xmpp_parsers::jid::Jid;

use super::groups::{presence, Delivered};
use super::{Response, Service, ServiceError};
use crate::protocol::groups::{joined_element, GroupMessage, Kind};
use crate::protocol::mls::{self, Invalid};
use crate::protocol::error::AppCondition;
use crate::protocol::now;
use crate::store::{AppendOutcome, FeedEntry};

impl Service {
    /// Presence to `group/<device-id>`: join (available) or leave (unavailable).
    pub async fn feed_presence(
        &self,
        from: &Jid,
        group_id: &[u8],
        device_id: &str,
        unavailable: bool,
    ) -> Result<Response, ServiceError> {
        let group_jid = self.group_jid(group_id);
        let me = format!("{group_jid}/{device_id}");
        if unavailable {
            self.store.leave_feed(Some(group_id.to_vec()), from.to_string()).await?;
            return Ok(Response::messages(vec![presence(&me, from.as_str(), Some("unavailable"), None)]));
        }
        let state = self.store.group_state(group_id.to_vec()).await?.ok_or(ServiceError::UnknownGroup)?;
        let account = from.to_bare();
        let devices = self.store.live_devices(account.to_string(), now()).await?;
        let device = devices.iter().find(|d| d.id == device_id).ok_or(ServiceError::NotAMember)?;
        let members = self.store.group_members(group_id.to_vec()).await?;
        if !members.iter().any(|m| m.account == account.as_str() && m.signature_key == device.signature_key) {
            return Err(ServiceError::NotAMember);
        }
        let entry =
            FeedEntry { device_id: device_id.to_owned(), full_jid: from.to_string(), account: account.to_string() };
        self.store.join_feed(group_id.to_vec(), entry).await?;
        Ok(Response::messages(vec![presence(&me, from.as_str(), None, Some(joined_element(state.epoch)))]))
    }

    /// An application message to the group: checked on its public header
    /// (group, epoch window) and its sender's place on the feed, archived,
    /// then fanned out.
    pub async fn group_message(&self, from: &Jid, group_id: &[u8], stanza: &Element) -> Result<Response, ServiceError> {
        if let Some(payload) = stanza.get_child(GroupMessage::NAME, crate::protocol::NS) {
            self.check_size(payload)?;
        }
        let message = GroupMessage::find(stanza).ok_or(ServiceError::Unsupported)??.message;
        let epoch = mls::application_epoch(&message, group_id).map_err(ServiceError::InvalidMessage)?;
        let window = self.config.groups.past_epochs;
        let (gid, budget) = (group_id.to_vec(), self.archive_budget());
        let outcome = self.store.append_application(gid, from.to_string(), epoch, window, message.clone(), budget).await?;
        let (archived, sender_device, feed) = match outcome {
            AppendOutcome::Archived { archived, sender_device, feed } => (archived, sender_device, feed),
            AppendOutcome::UnknownGroup => return Err(ServiceError::UnknownGroup),
            AppendOutcome::NotJoined => return Err(ServiceError::NotJoined),
            AppendOutcome::StaleEpoch { current } => return Err(ServiceError::StaleEpoch { current }),
            AppendOutcome::OverBudget => return Err(ServiceError::Limit(AppCondition::ArchiveBudgetExceeded)),
        };
        let delivered = Delivered {
            archived,
            epoch,
            kind: Kind::Application,
            sender_device,
            epoch_check: None,
            message,
            feed,
            removed: Vec::new(),
            welcome: None,
        };
        let seq = delivered.archived.seq;
        let messages = super::groups::fan_out(&self.group_jid(group_id), &delivered, stanza.attr("id"));
        Ok(Response { payload: None, messages, order: Some((group_id.to_vec(), seq)), reply_last: false })
    }
}

impl From<Invalid> for ServiceError {
    fn from(i: Invalid) -> Self {
        ServiceError::InvalidMessage(i)
    }
}
