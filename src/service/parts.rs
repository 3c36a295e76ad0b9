//! Commits in parts (xep/ §Commits in Parts): a Commit too large for one
//! stanza is uploaded to the group JID in parts before the bundle that
//! names it, and any archived message larger than a page is fetched in
//! parts by its position.

use xmpp_parsers::jid::BareJid;

use super::{IqRequest, Response, Service, ServiceError};
use crate::protocol::address::Address;
use crate::protocol::groups::{Part, PartRequest, PartUpload, Parts};
use crate::protocol::{malformed, now};
use crate::store::{PageStart, Upload};

impl Service {
    /// Stores one part of a Commit a member account uploads, in order.
    pub(super) async fn upload_part(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let part = PartUpload::parse(&req.payload)?;
        if part.parts.size > self.config.groups.max_commit_size as u64 {
            return Err(ServiceError::PayloadTooBig);
        }
        if !self.store.group_exists(group_id.to_vec()).await? {
            return Err(ServiceError::UnknownGroup);
        }
        let account = req.from.to_bare();
        self.require_member_account(group_id, &account).await?;
        let upload = Upload { account: account.to_string(), group_id: group_id.to_vec(), parts: part.parts };
        match self.store.add_part(upload, part.offset, part.octets, now()).await? {
            true => Ok(Response::default()),
            false => Err(ServiceError::PartOutOfOrder),
        }
    }

    /// The Commit `parts` names, as the requester's account uploaded it.
    pub(super) async fn uploaded_commit(&self, group_id: &[u8], account: &BareJid, parts: Parts) -> Result<Vec<u8>, ServiceError> {
        let upload = Upload { account: account.to_string(), group_id: group_id.to_vec(), parts };
        let octets = self.store.uploaded(upload).await?;
        match parts.names(&octets) {
            true => Ok(octets),
            false => Err(ServiceError::PartsMissing),
        }
    }

    /// A page of the archived message at a position, for those who may
    /// read it in the group's archive.
    pub(super) async fn part(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let request = PartRequest::parse(&req.payload)?;
        let address = Address::Group(group_id.to_vec());
        let (source, mut filter, _) = self.archive_for(&address, &req.from.to_bare()).await?;
        let before = request.position.checked_sub(1).ok_or(ServiceError::NotFound)?;
        filter.after_seq = Some(filter.after_seq.unwrap_or(0).max(before));
        filter.through_seq = Some(filter.through_seq.map_or(request.position, |t| t.min(request.position)));
        let page = self.store.archive_page(source, filter, PageStart::First, 1).await?;
        let item = page.items.into_iter().find(|i| i.seq == request.position).ok_or(ServiceError::NotFound)?;
        let size = item.message.len() as u64;
        if request.offset >= size {
            return Err(malformed("offset is within the message").into());
        }
        let (from, to) = (request.offset as usize, (request.offset as usize).saturating_add(self.page_octets()).min(item.message.len()));
        let part = Part { position: request.position, offset: request.offset, size, octets: item.message[from..to].to_vec() };
        Ok(Response::result(part.to_element()))
    }
}
