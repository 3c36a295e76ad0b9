//! Catching up (xep/ §Catching Up): a device that was offline reads its
//! inbox (Welcomes first) and every group's archive from where it stopped,
//! applies it in archive order, and acknowledges what it applied.

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};

use super::devices::directory_jid;
use super::groups::{GroupClient, GroupError};
use super::session::ClientError;
use crate::protocol::mam::{query_element, Ack, Cursor, NS_FORWARD, NS_MAM, NS_RSM};

/// Items per page when catching up.
const PAGE: usize = 100;

/// One page of an archive: the archived stanzas and the `<fin/>`.
pub struct ArchivePage {
    pub stanzas: Vec<Element>,
    pub complete: bool,
    pub last: Option<String>,
    pub count: usize,
}

fn is_pruned(e: &xmpp_parsers::stanza_error::StanzaError) -> bool {
    e.other.as_ref().is_some_and(|a| a.is("history-pruned", crate::protocol::NS_ERRORS))
}

fn unwrap_result(message: &Element, queryid: &str) -> Option<Element> {
    let result = message.get_child("result", NS_MAM)?;
    if result.attr("queryid") != Some(queryid) {
        return None;
    }
    result.get_child("forwarded", NS_FORWARD)?.get_child("message", crate::xmpp::namespace::CLIENT).cloned()
}

impl GroupClient {
    /// One page of the archive at `archive`: results arrive before the
    /// IQ's `<fin/>`, so they are all queued when it returns.
    pub async fn archive_page(
        &mut self,
        archive: &Jid,
        fields: &[(&str, &str)],
        max: usize,
        cursor: &Cursor,
        flip: bool,
    ) -> Result<ArchivePage, GroupError> {
        let queryid = self.session.next_id();
        let query = query_element(&queryid, fields, max, cursor, flip);
        let fin = self.session.iq(archive, "set", query).await?.ok_or_else(|| GroupError::Other("no <fin/>".into()))?;
        let mut stanzas = Vec::new();
        while let Some(stanza) = self.session.try_next_event() {
            match unwrap_result(&stanza, &queryid) {
                Some(inner) => stanzas.push(inner),
                None => self.stash(stanza),
            }
        }
        let set = fin.get_child("set", NS_RSM);
        Ok(ArchivePage {
            stanzas,
            complete: fin.attr("complete") == Some("true"),
            last: set.and_then(|s| s.get_child("last", NS_RSM)).map(Element::text),
            count: set
                .and_then(|s| s.get_child("count", NS_RSM))
                .and_then(|c| c.text().parse().ok())
                .unwrap_or_default(),
        })
    }

    /// Applies every item of `archive` after `after`, page by page;
    /// returns the last id applied. `progress(done, total)` after each page.
    async fn replay(
        &mut self,
        archive: &Jid,
        after: Option<String>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Option<String>, GroupError> {
        let fields: Vec<(&str, String)> = after.iter().map(|id| ("after-id", id.clone())).collect();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (mut cursor, mut done, mut last) = (Cursor::First, 0, after);
        loop {
            let page = self.archive_page(archive, &fields, PAGE, &cursor, false).await?;
            done += page.stanzas.len();
            for stanza in page.stanzas {
                self.apply_archived(stanza).await?;
            }
            progress(done, page.count);
            if let Some(l) = page.last {
                cursor = Cursor::After(l.clone());
                last = Some(l);
            }
            if page.complete {
                return Ok(last);
            }
        }
    }

    /// Reads the inbox (Welcomes join their groups), then every group's
    /// archive from where this device stopped, and acknowledges both.
    pub async fn catch_up_all(&mut self, progress: &mut dyn FnMut(&str, usize, usize)) -> Result<(), GroupError> {
        let account = self.device().account().clone();
        let inbox = directory_jid(&account, self.service());
        let last = self.replay(&inbox, None, &mut |d, t| progress("inbox", d, t)).await?;
        if let Some(id) = last {
            self.acknowledge(&inbox, &id).await?;
        }
        for group in self.groups()? {
            self.join_feed(&group).await?;
            self.catch_up(&group, progress).await?;
        }
        Ok(())
    }

    /// Applies `group`'s archive after the last item this device applied.
    /// If retention pruned that item, the device rejoins from the latest
    /// GroupInfo with an external commit (its old leaf is replaced).
    pub async fn catch_up(&mut self, group: &BareJid, progress: &mut dyn FnMut(&str, usize, usize)) -> Result<(), GroupError> {
        let archive = Jid::from(group.clone());
        let after = self.last_seen(group)?;
        let label = group.to_string();
        let last = match self.replay(&archive, after, &mut |d, t| progress(&label, d, t)).await {
            Err(GroupError::Client(ClientError::Stanza(e))) if is_pruned(&e) => {
                tracing::warn!(%group, "history pruned past this device: rejoining by external commit");
                let accepted = self.join_external(group).await?;
                Some(accepted.stanza_id)
            }
            other => other?,
        };
        if let Some(id) = last {
            self.acknowledge(&archive, &id).await?;
        }
        Ok(())
    }

    async fn acknowledge(&mut self, archive: &Jid, id: &str) -> Result<(), ClientError> {
        let ack = Ack { device: self.device().id().to_owned(), id: id.to_owned() };
        self.session.iq(archive, "set", ack.to_element()).await.map(drop)
    }
}
