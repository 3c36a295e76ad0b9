//! The live feed: devices join a group with presence (MUC-style) and send
//! application messages to it; the DS reads only their public header.

use minidom::Element;
use xmpp_parsers::jid::Jid;

use super::groups::{presence, Delivered};
use super::{IqRequest, Response, Service, ServiceError};
use crate::protocol::groups::{joined_element, GroupMessage, Kind};
use crate::protocol::mls::{self, Invalid};
use crate::protocol::error::AppCondition;
use crate::store::{Acceptance, AppendOutcome, Departed, FeedEntry, FeedJoin, GroupLeave};

impl Service {
    /// Available presence to `group/<device-id>`: the device joins the feed.
    pub async fn join_feed(&self, from: &Jid, group_id: &[u8], device_id: &str) -> Result<Response, ServiceError> {
        let entry =
            FeedEntry { device_id: device_id.to_owned(), full_jid: from.to_string(), account: from.to_bare().to_string() };
        let max = self.config.groups.max_groups_per_account;
        let epoch = match self.store.join_feed(group_id.to_vec(), entry, max).await? {
            FeedJoin::Joined { epoch } => epoch,
            FeedJoin::UnknownGroup => return Err(ServiceError::UnknownGroup),
            FeedJoin::NotAMember => return Err(ServiceError::NotAMember),
            FeedJoin::TooManyGroups => return Err(ServiceError::Limit(AppCondition::TooManyGroups)),
        };
        let me = format!("{}/{device_id}", self.group_jid(group_id));
        Ok(Response::messages(vec![presence(&me, from.as_str(), None, Some(joined_element(epoch)))]))
    }

    /// Unavailable presence to `group/<device-id>`: `from` leaves the feed.
    /// A full JID that is not on the feed costs a read and gets no answer.
    pub async fn leave_feed(&self, from: &Jid, group_id: &[u8], device_id: &str) -> Result<Response, ServiceError> {
        if !self.store.on_feed(group_id.to_vec(), from.to_string()).await? {
            // Nothing to leave: no write and no answer, but it costs the
            // sender's stanza rate like any other stanza (a flood of such
            // presences exhausts the sender's own budget, no one else's).
            let _ = self.admit(from).await;
            return Ok(Response::default());
        }
        self.store.leave_feed(Some(group_id.to_vec()), from.to_string()).await?;
        let me = format!("{}/{device_id}", self.group_jid(group_id));
        Ok(Response::messages(vec![presence(&me, from.as_str(), Some("unavailable"), None)]))
    }

    /// `<leave/>`: the requester's account leaves the group. Its devices
    /// leave the feed at once; the removal of its leaves is a member's Commit.
    pub(super) async fn leave_group(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let account = req.from.to_bare().to_string();
        let gone = match self.store.leave_group(group_id.to_vec(), account).await? {
            GroupLeave::Left(gone) => gone,
            GroupLeave::UnknownGroup => return Err(ServiceError::UnknownGroup),
            GroupLeave::NotAMember => return Err(ServiceError::NotAMember),
        };
        let departed: Vec<Departed> = gone.into_iter().map(|entry| Departed { group_id: group_id.to_vec(), entry }).collect();
        Ok(Response::messages(self.departures(&departed)))
    }

    /// Unavailable presence from its device JID to each device taken off a feed.
    pub(super) fn departures(&self, departed: &[Departed]) -> Vec<Element> {
        departed
            .iter()
            .map(|d| {
                let from = format!("{}/{}", self.group_jid(&d.group_id), d.entry.device_id);
                presence(&from, &d.entry.full_jid, Some("unavailable"), None)
            })
            .collect()
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
            AppendOutcome::Resent { earlier, feed } => return Ok(self.deliver_again(group_id, earlier, message, feed, stanza)),
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
        let copies = Some(self.fan_out(group_id, &delivered, stanza.attr("id")));
        Ok(Response { copies, order: Some((group_id.to_vec(), seq)), ..Default::default() })
    }

    /// A resend of an archived application message (xep/ §Resends): its
    /// copies again, with its original stanza-id and epoch, the echo
    /// included. Devices that have it drop it by its stanza-id; those that
    /// missed it (its delivery was lost with the service) get it now.
    fn deliver_again(&self, group_id: &[u8], earlier: Acceptance, message: Vec<u8>, feed: Vec<FeedEntry>, stanza: &Element) -> Response {
        let delivered = Delivered {
            archived: earlier.archived,
            epoch: earlier.epoch,
            kind: Kind::Application,
            sender_device: earlier.sender_device,
            epoch_check: None,
            message,
            feed,
            removed: Vec::new(),
            welcome: None,
        };
        Response { copies: Some(self.fan_out(group_id, &delivered, stanza.attr("id"))), ..Default::default() }
    }
}

impl From<Invalid> for ServiceError {
    fn from(i: Invalid) -> Self {
        ServiceError::InvalidMessage(i)
    }
}
