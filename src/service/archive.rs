//! History (xep/ §Catching Up): XEP-0313 queries on a group's archive and
//! an account's inbox, the #extended metadata, and acknowledgements.

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};

use super::{IqRequest, Response, Service, ServiceError};
use crate::protocol::address::Address;
use crate::protocol::groups::{GroupMessage, Kind};
use crate::protocol::mam::{form_fields, metadata_element, result_message, Ack, Cursor, Fin, MamQuery};
use crate::protocol::{malformed, n, now, NS_SID};
use crate::store::{Filter, Item, PageStart, Source};
use crate::xmpp::namespace::CLIENT;

/// Default page size when the query names none.
pub(super) const DEFAULT_PAGE: usize = 50;

impl Service {
    /// The archive behind `address` for `requester`, with what they may see.
    pub(super) async fn archive_for(&self, address: &Address, requester: &BareJid) -> Result<(Source, Filter, String), ServiceError> {
        match address {
            Address::Group(id) => {
                if !self.store.group_exists(id.clone()).await? {
                    return Err(ServiceError::UnknownGroup);
                }
                let (after, through) = self
                    .store
                    .visible_range(id.clone(), requester.to_string())
                    .await?
                    .ok_or(ServiceError::NotAMember)?;
                let filter = Filter { after_seq: Some(after), through_seq: through, ..Filter::default() };
                Ok((Source::Group(id.clone()), filter, self.group_jid(id)))
            }
            Address::Directory(account) if account == requester => {
                Ok((Source::Inbox(account.to_string()), Filter::default(), self.directory_jid(account)))
            }
            Address::Directory(_) => Err(ServiceError::Forbidden),
            Address::Service => Err(ServiceError::Unsupported),
        }
    }

    /// The archive position of `id`, or item-not-found (with
    /// history-pruned when the group's archive was pruned: the id may be
    /// gone, and the device must recover from the latest GroupInfo).
    async fn position(&self, source: &Source, id: &str) -> Result<u64, ServiceError> {
        let found = self.store.positions(source.clone(), vec![id.to_owned()]).await?;
        if let Some(seq) = found.into_iter().next().flatten() {
            return Ok(seq);
        }
        match source {
            Source::Group(g) if self.store.pruned_through(g.clone()).await? > 0 => Err(ServiceError::HistoryPruned),
            _ => Err(ServiceError::NotFound),
        }
    }

    pub(super) async fn mam_query(&self, req: &IqRequest) -> Result<Response, ServiceError> {
        let (source, mut filter, archive) = self.archive_for(&req.address, &req.from.to_bare()).await?;
        let q = MamQuery::parse(&req.payload)?;
        filter.start = q.start;
        filter.end = q.end;
        if let Some(with) = &q.with {
            let jid = Jid::new(with).map_err(|_| malformed("with is a JID"))?;
            let device = jid.resource().filter(|_| jid.to_bare().as_str() == archive);
            filter.sender_device = Some(device.ok_or(malformed("with is a device JID of this group"))?.to_string());
        }
        filter.kinds = match q.kind.as_deref() {
            None => Vec::new(),
            Some("handshake") => vec![Kind::Commit.name(), Kind::Proposal.name()],
            Some(k) => vec![Kind::from_name(k).ok_or(malformed("unknown kind"))?.name()],
        };
        (filter.epoch_from, filter.epoch_to) = (q.epoch_from, q.epoch_to);
        if q.ids.len() > self.config.limits.max_page_size {
            return Err(malformed("ids names at most max-page-size stanza ids").into());
        }
        if !q.ids.is_empty() {
            let found = self.store.positions(source.clone(), q.ids.clone()).await?;
            if found.iter().any(Option::is_none) {
                return Err(ServiceError::NotFound);
            }
            filter.ids = q.ids.clone();
        }
        if let Some(id) = &q.after_id {
            let seq = self.position(&source, id).await?;
            filter.after_seq = Some(filter.after_seq.unwrap_or(0).max(seq));
        }
        if let Some(id) = &q.before_id {
            let seq = self.position(&source, id).await?.saturating_sub(1);
            filter.through_seq = Some(filter.through_seq.map_or(seq, |t| t.min(seq)));
        }
        let start = match &q.cursor {
            Cursor::First => PageStart::First,
            Cursor::Last => PageStart::Last,
            Cursor::After(id) => PageStart::After(self.position(&source, id).await?),
            Cursor::Before(id) => PageStart::Before(self.position(&source, id).await?),
        };
        let max = q.max.unwrap_or(DEFAULT_PAGE).min(self.config.limits.max_page_size);
        let page = self.store.archive_page(source.clone(), filter, start, max).await?;
        let to = req.from.as_str();
        let mut items = page.items;
        if q.flip_page {
            items.reverse();
        }
        let messages: Vec<Element> = items
            .iter()
            .map(|i| result_message(to, &archive, q.queryid.as_deref(), &i.stanza_id, i.created_at, archived(&source, &archive, i, self.page_octets())))
            .collect();
        let fin = Fin {
            complete: page.complete,
            first: items.first().map(|i| (i.stanza_id.clone(), page.first_index)),
            last: items.last().map(|i| i.stanza_id.clone()),
            count: page.count,
        };
        Ok(Response { payload: Some(fin.to_element()), messages, reply_last: true, ..Default::default() })
    }

    /// The query form: the fields this archive supports.
    pub(super) async fn mam_form(&self, req: &IqRequest) -> Result<Response, ServiceError> {
        self.archive_for(&req.address, &req.from.to_bare()).await?;
        Ok(Response::result(form_fields()))
    }

    /// XEP-0313 #extended: the first and last item the requester may see.
    pub(super) async fn mam_metadata(&self, req: &IqRequest) -> Result<Response, ServiceError> {
        let (source, filter, _) = self.archive_for(&req.address, &req.from.to_bare()).await?;
        let ends = self.store.archive_ends(source, filter).await?;
        let ends = ends.map(|(f, l)| ((f.stanza_id, f.created_at), (l.stanza_id, l.created_at)));
        Ok(Response::result(metadata_element(ends)))
    }

    /// A device has applied everything up to an id (group) or handled it
    /// (inbox); inbox entries go once every live device has.
    pub(super) async fn ack(&self, req: &IqRequest) -> Result<Response, ServiceError> {
        let ack = Ack::parse(&req.payload)?;
        let account = req.from.to_bare();
        let devices = self.store.live_devices(account.to_string(), now()).await?;
        if !devices.iter().any(|d| d.id == ack.device) {
            return Err(ServiceError::Forbidden);
        }
        let (source, ..) = self.archive_for(&req.address, &account).await?;
        let seq = self.position(&source, &ack.id).await?;
        self.store.acknowledge(source, account.to_string(), ack.device, seq, now()).await?;
        Ok(Response::default())
    }
}

/// An archived item as the stanza that was delivered (a message larger
/// than `page` octets named by its parts).
fn archived(source: &Source, archive: &str, item: &Item, page: usize) -> Element {
    let stanza_id =
        Element::builder("stanza-id", NS_SID).attr(n("by"), archive).attr(n("id"), item.stanza_id.as_str()).build();
    match source {
        Source::Group(_) => {
            let kind = Kind::from_name(&item.kind);
            let (message, parts) = super::groups::carried(&item.message, page);
            let payload = GroupMessage {
                message,
                parts,
                kind,
                epoch: Some(item.epoch),
                epoch_check: item.epoch_check.clone(),
                position: Some(item.seq),
            };
            Element::builder("message", CLIENT)
                .attr(n("from"), super::groups::sender_jid(archive, &item.sender_device))
                .attr(n("type"), "groupchat")
                .append(payload.to_element())
                .append_all(kind.and_then(super::groups::copy_hint))
                .append(stanza_id)
                .build()
        }
        Source::Inbox(account) => {
            let payload: Element = item.payload.parse().unwrap_or_else(|_| Element::bare("invalid", crate::protocol::NS));
            Element::builder("message", CLIENT)
                .attr(n("from"), archive)
                .attr(n("to"), account.as_str())
                .attr(n("type"), "headline")
                .append(payload)
                .append(stanza_id)
                .build()
        }
    }
}
