//! Catching up (xep/ §Catching Up): a device that was offline reads its
//! inbox (Welcomes first) and every group's archive from where it stopped,
//! applies it in archive order, and acknowledges what it applied.

use minidom::Element;
use xmpp_parsers::jid::{BareJid, Jid};

use super::devices::directory_jid;
use super::groups::{Core, GroupError};
use super::storage::DeviceStorage;
use super::port::Port;
use super::session::ClientError;
use super::vault::VaultError;
use crate::protocol::content::{Content, ContentError, Envelope};
use crate::protocol::mam::{parse_rsm_result, query_element, Ack, Cursor, NS_FORWARD, NS_MAM, NS_RSM};

/// Epochs of snapshots kept by a vault opened with [`Core::open_vault`].
pub const KEEP_EPOCHS: u64 = 1000;

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

/// The archived stanza of a result of query `queryid` to `archive`; None
/// for anything else, such as a result that another entity sent.
fn unwrap_result(message: &Element, queryid: &str, archive: &Jid) -> Option<Element> {
    if message.attr("from").and_then(|f| Jid::new(f).ok()).as_ref() != Some(archive) {
        return None;
    }
    let result = message.get_child("result", NS_MAM)?;
    if result.attr("queryid") != Some(queryid) {
        return None;
    }
    result.get_child("forwarded", NS_FORWARD)?.get_child("message", crate::xmpp::namespace::CLIENT).cloned()
}

impl<S: DeviceStorage> Core<S> {
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
        let queryid = self.port.next_id();
        let query = query_element(&queryid, fields, max, cursor, flip);
        let fin = self.port.iq(archive, "set", query).await?.ok_or_else(|| GroupError::Other("no <fin/>".into()))?;
        let mut stanzas = Vec::new();
        while let Some(stanza) = self.port.try_next_event() {
            match unwrap_result(&stanza, &queryid, archive) {
                Some(inner) => stanzas.push(inner),
                None => self.stash(stanza),
            }
        }
        let set = fin.get_child("set", NS_RSM);
        Ok(ArchivePage {
            stanzas,
            complete: fin.attr("complete") == Some("true"),
            last: set.and_then(|s| s.get_child("last", NS_RSM)).map(Element::text),
            count: set.map_or(0, |s| parse_rsm_result(s).1),
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
        let gid = super::groups::group_id_of(group)?;
        let archive = Jid::from(group.clone());
        let after = self.last_seen(group)?;
        let label = group.to_string();
        let last = match self.replay(&archive, after, &mut |d, t| progress(&label, d, t)).await {
            Err(GroupError::Client(ClientError::Stanza(e))) if is_pruned(&e) => {
                tracing::warn!(%group, "history pruned past this device: rejoining by external commit");
                self.events.push_back(super::GroupEvent::HistoryPruned { group: group.clone() });
                let accepted = self.join_external(group).await?;
                Some(accepted.stanza_id)
            }
            other => other?,
        };
        // The archive was read: a gap seen while reading it is not one to chase.
        self.behind.remove(&gid);
        if let Some(id) = last {
            self.acknowledge(&archive, &id).await?;
        }
        // The state reached is what a new device will need for this epoch.
        self.snapshot(&gid).await
    }

    pub(super) async fn acknowledge(&mut self, archive: &Jid, id: &str) -> Result<(), ClientError> {
        let ack = Ack { device: self.device().id().to_owned(), id: id.to_owned() };
        self.port.iq(archive, "set", ack.to_element()).await.map(drop)
    }
}

/// Why a message of the history cannot be read here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// The vault keeps no snapshot of its epoch (retention, or the account's
    /// devices kept none then).
    NoSnapshot,
    /// The snapshot does not open it (e.g. a message of the snapshot's own leaf without a sent copy).
    Undecryptable,
    /// It decrypts, but its envelope is refused (xep/ §Message Content).
    Refused(ContentError),
}

/// A group's history as a new device reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    pub entries: Vec<HistoryEntry>,
    /// (stanza id, epoch, why) of the messages that could not be read.
    pub unreadable: Vec<(String, u64, Unreadable)>,
}

/// A message of a group's history, as a device of the account reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub stanza_id: String,
    pub epoch: u64,
    /// The sender's account (verified by MLS, or this account's own vault).
    pub account: BareJid,
    /// The `<content/>` of the message's envelope.
    pub content: Content,
}

impl History {
    /// A decrypted message of `account`: an entry if its envelope is
    /// `account`'s, unreadable otherwise.
    fn push(&mut self, stanza_id: &str, epoch: u64, account: BareJid, data: &[u8]) {
        match Envelope::open(data, &account) {
            Ok(envelope) => {
                self.entries.push(HistoryEntry { stanza_id: stanza_id.to_owned(), epoch, account, content: envelope.content })
            }
            Err(reason) => self.unreadable.push((stanza_id.to_owned(), epoch, Unreadable::Refused(reason))),
        }
    }
}

fn snapshot_name(group_id: &[u8], epoch: u64) -> String {
    format!("history/{}/{epoch}", crate::protocol::address::group_node(group_id))
}

/// Where the sent copies of (group, epoch) are, one series of chunks per device.
fn sent_prefix(group_id: &[u8], epoch: u64) -> String {
    format!("sent/{}/{epoch}/", crate::protocol::address::group_node(group_id))
}

/// Where `device`'s sent copies of (group, epoch) are: one blob a copy,
/// `<n>`, until copies `<a>` to `<b>` are folded into the chunk `<a>-<b>`.
fn sent_dir(group_id: &[u8], epoch: u64, device: &str) -> String {
    format!("{}{device}/", sent_prefix(group_id, epoch))
}

/// One sent copy as a blob holds it: `len16 | stanza id | len32 | plaintext`.
fn sent_entry(stanza_id: &str, body: &[u8]) -> Vec<u8> {
    let mut out = (stanza_id.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(stanza_id.as_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Most plaintext in a chunk of folded copies (less if the place's blob
/// limit is smaller).
const SENT_CHUNK: usize = 32 * 1024;
/// Most copies kept a blob each before they are folded: a PEP node keeps
/// 256 items on a stock Prosody.
const SENT_SINGLES: usize = 64;

/// The copies this device wrote in a group's epoch and has not folded yet.
struct SentTail {
    epoch: u64,
    /// The number of the next copy.
    next: u64,
    /// (number, entry) of each copy stored alone.
    singles: Vec<(u64, Vec<u8>)>,
}

impl SentTail {
    fn bytes(&self) -> usize {
        self.singles.iter().map(|(_, e)| e.len()).sum()
    }
}

/// A name in a [`sent_dir`]: (a, b, true) for the chunk `<a>-<b>`,
/// (n, n, false) for the copy `<n>`.
fn sent_part(part: &str) -> Option<(u64, u64, bool)> {
    match part.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?, true)),
        None => part.parse().ok().map(|n| (n, n, false)),
    }
}

/// What a device that keeps history needs: the vault, how many epochs to
/// keep, per group the copies this device has not folded yet, and the
/// epoch of its last snapshot.
pub(super) struct Keeper {
    vault: super::vault::Vault,
    keep_epochs: u64,
    tails: std::collections::HashMap<Vec<u8>, SentTail>,
    snapshots: std::collections::HashMap<Vec<u8>, u64>,
}

impl Keeper {
    /// This device's unfolded copies of (group, epoch), as the vault has
    /// them; copies that a fold cut short had already put in a chunk are deleted.
    async fn sent_tail(&self, port: &Port, dir: &str, epoch: u64) -> Result<SentTail, VaultError> {
        let names = self.vault.list_prefix(port, dir).await?;
        let parts: Vec<(u64, u64, bool, &String)> =
            names.iter().filter_map(|n| sent_part(&n[dir.len()..]).map(|(a, b, chunk)| (a, b, chunk, n))).collect();
        let folded = parts.iter().filter(|p| p.2).map(|p| p.1 + 1).max().unwrap_or(0);
        let mut tail = SentTail { epoch, next: parts.iter().map(|p| p.1 + 1).max().unwrap_or(0), singles: Vec::new() };
        for &(n, _, _, name) in parts.iter().filter(|p| !p.2) {
            match self.vault.get(port, name).await? {
                Some((version, _)) if n < folded => self.vault.delete(port, name, version).await?,
                Some((_, entry)) => tail.singles.push((n, entry)),
                None => {}
            }
        }
        tail.singles.sort_by_key(|(n, _)| *n);
        Ok(tail)
    }

    /// Stores `entry` among this device's sent copies of (group, epoch):
    /// in a blob of its own, written once. When the unfolded copies reach
    /// [`SENT_SINGLES`] or would outgrow a chunk, they are first written
    /// as one chunk and their blobs deleted: nothing written is rewritten.
    async fn append_sent(&mut self, port: &Port, group_id: &[u8], epoch: u64, device: &str, entry: &[u8]) -> Result<(), VaultError> {
        let dir = sent_dir(group_id, epoch, device);
        if entry.len() > self.vault.max_plaintext() {
            return Err(VaultError::TooBig(dir, self.vault.max_plaintext()));
        }
        let mut tail = match self.tails.remove(group_id) {
            Some(tail) if tail.epoch == epoch => tail,
            _ => self.sent_tail(port, &dir, epoch).await?,
        };
        let full = tail.singles.len() >= SENT_SINGLES || tail.bytes() + entry.len() > SENT_CHUNK.min(self.vault.max_plaintext());
        if !tail.singles.is_empty() && full {
            self.fold(port, &dir, &mut tail).await?;
        }
        self.vault.put(port, &format!("{dir}{}", tail.next), 0, entry).await?;
        tail.singles.push((tail.next, entry.to_vec()));
        tail.next += 1;
        self.tails.insert(group_id.to_vec(), tail);
        Ok(())
    }

    /// Writes the unfolded copies as the chunk `<first>-<last>`, then deletes their blobs.
    async fn fold(&self, port: &Port, dir: &str, tail: &mut SentTail) -> Result<(), VaultError> {
        let (first, last) = (tail.singles[0].0, tail.singles[tail.singles.len() - 1].0);
        let chunk: Vec<u8> = tail.singles.iter().flat_map(|(_, e)| e.iter().copied()).collect();
        self.vault.put(port, &format!("{dir}{first}-{last}"), 0, &chunk).await?;
        for (n, _) in tail.singles.drain(..) {
            // Written once, so at version 1 unless a rotation re-sealed it.
            let name = format!("{dir}{n}");
            match self.vault.delete(port, &name, 1).await {
                Err(VaultError::Conflict(_, version)) if version > 0 => self.vault.delete(port, &name, version).await?,
                other => other?,
            }
        }
        Ok(())
    }

    /// Stores the snapshot `name` unless it is stored already: the first
    /// one of an epoch decrypts all of it, a later one not what its device
    /// read meanwhile. One too big for the place is left out (the epoch's
    /// messages then read as having no snapshot).
    async fn put_snapshot(&self, port: &Port, name: &str, packed: &[u8]) -> Result<(), VaultError> {
        if packed.len() > self.vault.max_plaintext() {
            tracing::warn!(name, size = packed.len(), "a snapshot too big for the vault is not kept");
            return Ok(());
        }
        if self.vault.list_prefix(port, name).await?.iter().any(|n| n == name) {
            return Ok(());
        }
        match self.vault.put(port, name, 0, packed).await {
            Err(VaultError::Conflict(..)) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Deletes the sent copies of (group, epoch), every device's.
    async fn delete_sent(&self, port: &Port, group_id: &[u8], epoch: u64) -> Result<(), VaultError> {
        self.vault.delete_prefix(port, &sent_prefix(group_id, epoch)).await
    }
}

/// Every sent copy of (group, epoch), from every device's chunks.
async fn read_sent(vault: &super::vault::Vault, port: &Port, group_id: &[u8], epoch: u64) -> Result<Vec<(String, Vec<u8>)>, VaultError> {
    let mut out = Vec::new();
    for name in vault.list_prefix(port, &sent_prefix(group_id, epoch)).await? {
        if let Some((_, data)) = vault.get(port, &name).await? {
            out.extend(decode_sent(&data));
        }
    }
    Ok(out)
}

/// `n | (version, type, data)*`, lengths big-endian.
fn encode_rows(rows: &[(u16, String, Vec<u8>)]) -> Vec<u8> {
    let mut out = (rows.len() as u16).to_be_bytes().to_vec();
    for (version, kind, data) in rows {
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// A snapshot as stored (before sealing): the rows, length-prefixed, zstd.
pub fn pack_snapshot(rows: &[(u16, String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    zstd::encode_all(encode_rows(rows).as_slice(), 9)
}

/// Reads length-prefixed fields from a byte string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn decode_rows(bytes: &[u8]) -> Option<Vec<(u16, String, Vec<u8>)>> {
    let mut r = Reader(bytes);
    (0..r.u16()?)
        .map(|_| Some((r.u16()?, String::from_utf8(r.bytes16()?.to_vec()).ok()?, r.bytes32()?.to_vec())))
        .collect()
}

/// `(stanza id, plaintext)*`.
fn decode_sent(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while let (Some(id), Some(body)) = (r.bytes16(), r.bytes32()) {
        out.push((String::from_utf8_lossy(id).into_owned(), body.to_vec()));
    }
    out
}

fn vault_failure(e: super::vault::VaultError) -> GroupError {
    GroupError::Other(e.to_string())
}

impl<S: DeviceStorage> Core<S> {
    /// Keeps, from now on, a decrypt-only snapshot of each group at every
    /// epoch and a copy of every message this device sends, in the vault:
    /// what a new device of the account needs to read the history.
    /// `keep_epochs`: how many epochs of snapshots to keep (the user's
    /// choice between history and forward secrecy); older ones are deleted.
    pub fn attach_vault(&mut self, vault: super::vault::Vault, keep_epochs: u64) {
        self.vault = Some(Keeper { vault, keep_epochs: keep_epochs.max(1), tails: Default::default(), snapshots: Default::default() });
    }

    /// The vault this device keeps history in, if it keeps any.
    pub fn vault(&self) -> Option<&super::vault::Vault> {
        self.vault.as_ref().map(|k| &k.vault)
    }

    /// Opens the account's vault with the passphrase, or with this
    /// device's enrolled key if there is none, and keeps history in it
    /// from now on.
    pub async fn open_vault(&mut self, passphrase: Option<&str>) -> Result<(), GroupError> {
        let vault = match passphrase {
            Some(passphrase) => super::vault::Vault::open(&self.port, self.service(), passphrase).await,
            None => {
                let key = self.device().enrolled_key().map_err(|e| GroupError::Other(e.to_string()))?;
                let key = key.ok_or_else(|| vault_failure(VaultError::NotEnrolled))?;
                super::vault::Vault::open_with_key(&self.port, self.service(), &key).await
            }
        };
        let vault = vault.map_err(vault_failure)?;
        vault.check_high_water(self.device()).map_err(vault_failure)?;
        self.attach_vault(vault, KEEP_EPOCHS);
        Ok(())
    }

    /// [`Self::read_history`] with the vault this device keeps history in.
    pub async fn read_own_history(&mut self, group: &BareJid) -> Result<History, GroupError> {
        let keeper = self.vault.take().ok_or_else(|| GroupError::Other("no vault is open".into()))?;
        let history = self.read_history(group, &keeper.vault).await;
        self.vault = Some(keeper);
        history
    }

    /// After an epoch change: the group's state at its current epoch without
    /// the HPKE private keys (decrypt-only, for new devices), written once
    /// per epoch, and a backup of the device (for its own recovery), which
    /// uploads what changed since the last one.
    pub(super) async fn snapshot(&mut self, group_id: &[u8]) -> Result<(), GroupError> {
        if self.vault.is_none() {
            return Ok(());
        }
        let epoch = self.epoch_of(group_id)?;
        let keeper = self.vault.as_ref().expect("checked above");
        if keeper.snapshots.get(group_id) == Some(&epoch) {
            return Ok(());
        }
        let rows = self.device().group_rows(group_id).map_err(|e| GroupError::Other(e.to_string()))?;
        let packed = pack_snapshot(&rows).map_err(|e| GroupError::Other(e.to_string()))?;
        keeper.put_snapshot(&self.port, &snapshot_name(group_id, epoch), &packed).await.map_err(vault_failure)?;
        super::vault::backup_device(&keeper.vault, &self.port, self.device()).await.map_err(vault_failure)?;
        if let Some(old) = epoch.checked_sub(keeper.keep_epochs) {
            keeper.vault.delete_any(&self.port, &snapshot_name(group_id, old)).await.map_err(vault_failure)?;
            keeper.delete_sent(&self.port, group_id, old).await.map_err(vault_failure)?;
        }
        self.vault.as_mut().expect("checked above").snapshots.insert(group_id.to_vec(), epoch);
        Ok(())
    }

    /// Appends a confirmed own message to the epoch's sent copies.
    pub(super) async fn keep_sent(&mut self, id: &str, stanza_id: &str) -> Result<(), GroupError> {
        let device = self.device().id().to_owned();
        let (Some(keeper), Some((group_id, epoch, body))) = (&mut self.vault, self.unconfirmed.remove(id)) else {
            return Ok(());
        };
        let entry = sent_entry(stanza_id, &body);
        keeper.append_sent(&self.port, &group_id, epoch, &device, &entry).await.map_err(vault_failure)
    }

    /// Reads a group's history with the vault's snapshots (and the sent
    /// copies of this account's own messages), as a device that was not in
    /// the group can: every application message since the account joined,
    /// of every epoch the account's devices kept a snapshot of.
    pub async fn read_history(&mut self, group: &BareJid, vault: &super::vault::Vault) -> Result<History, GroupError> {
        use openmls::prelude::{GroupId, MlsGroup, MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent};
        use tls_codec::Deserialize;
        let group_id = match crate::protocol::address::Address::parse(&Jid::from(group.clone())) {
            Ok(crate::protocol::address::Address::Group(id)) => id,
            _ => return Err(GroupError::UnknownGroup(group.to_string())),
        };
        let archive = Jid::from(group.clone());
        let mut messages = Vec::new();
        let mut cursor = Cursor::First;
        loop {
            let page = self.archive_page(&archive, &[("urn:xmpp:mls:0#kind", "application")], PAGE, &cursor, false).await?;
            messages.extend(page.stanzas);
            match (page.complete, page.last) {
                (false, Some(last)) => cursor = Cursor::After(last),
                _ => break,
            }
        }
        let own = self.device().account().clone();
        let scratch = tempfile_dir()?;
        let mut out = History::default();
        let mut loaded: Option<(u64, super::device::DeviceProvider, MlsGroup)> = None;
        let mut sent: std::collections::HashMap<u64, Vec<(String, Vec<u8>)>> = std::collections::HashMap::new();
        for m in messages {
            let Some(Ok(mut gm)) = crate::protocol::groups::GroupMessage::find(&m) else { continue };
            let (Some(epoch), Some(stanza_id)) = (gm.epoch, m.get_child("stanza-id", crate::protocol::NS_SID).and_then(|s| s.attr("id")))
            else {
                continue;
            };
            if !sent.contains_key(&epoch) {
                let copies = read_sent(vault, &self.port, &group_id, epoch).await.map_err(vault_failure)?;
                sent.insert(epoch, copies);
            }
            if let Some((_, data)) = sent[&epoch].iter().find(|(id, _)| id == stanza_id) {
                out.push(stanza_id, epoch, own.clone(), data);
                continue;
            }
            if loaded.as_ref().map(|(e, ..)| *e) != Some(epoch) {
                let Some((_, packed)) = vault.get(&self.port, &snapshot_name(&group_id, epoch)).await.map_err(vault_failure)? else {
                    out.unreadable.push((stanza_id.to_owned(), epoch, Unreadable::NoSnapshot));
                    continue;
                };
                let rows = zstd::decode_all(packed.as_slice())
                    .ok()
                    .and_then(|b| decode_rows(&b))
                    .ok_or_else(|| GroupError::Other("a corrupt snapshot".into()))?;
                let path = scratch.join(format!("epoch-{epoch}.sqlite3"));
                let provider = super::device::DeviceProvider::scratch(&path, &group_id, &rows).map_err(|e| GroupError::Other(e.to_string()))?;
                let g = MlsGroup::load(openmls_traits::OpenMlsProvider::storage(&provider), &GroupId::from_slice(&group_id))
                    .map_err(|e| GroupError::Mls(e.to_string()))?
                    .ok_or_else(|| GroupError::Other("an empty snapshot".into()))?;
                loaded = Some((epoch, provider, g));
            }
            if let (Some(parts), Some(position)) = (gm.parts, gm.position) {
                gm.message = self.port.fetch_parts(group, position, parts).await?;
            }
            let (_, provider, g) = loaded.as_mut().expect("loaded above");
            let processed = MlsMessageIn::tls_deserialize_exact(&gm.message).ok().and_then(|parsed| match parsed.extract() {
                MlsMessageBodyIn::PrivateMessage(pm) => g.process_message(&*provider, pm).ok(),
                _ => None,
            });
            let read = processed.and_then(|p| {
                let account = crate::protocol::keypackages::account_of(p.credential())?;
                match p.into_content() {
                    ProcessedMessageContent::ApplicationMessage(app) => Some((account, app.into_bytes())),
                    _ => None,
                }
            });
            match read {
                Some((account, data)) => out.push(stanza_id, epoch, account, &data),
                None => out.unreadable.push((stanza_id.to_owned(), epoch, Unreadable::Undecryptable)),
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        Ok(out)
    }
}

/// A private scratch directory for decrypt-only copies.
fn tempfile_dir() -> Result<std::path::PathBuf, GroupError> {
    let name: [u8; 8] = rand::random();
    let dir = std::env::temp_dir().join(format!("xmpp-mls-history-{}", data_encoding::HEXLOWER.encode(&name)));
    crate::store::local::private_dir(&dir).map_err(|e| GroupError::Other(e.to_string()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmpp::namespace::CLIENT;

    #[test]
    fn only_the_queried_archive_delivers_results() {
        let archive = Jid::new("alice\\40example.org@mls.example.org").unwrap();
        let notice = Element::builder("message", CLIENT)
            .attr(crate::protocol::n("from"), archive.as_str())
            .append(Element::builder("key-packages-low", crate::protocol::NS).build())
            .build();
        let result = |from: &str, queryid: &str| {
            crate::protocol::mam::result_message("alice@example.org/d", from, Some(queryid), "s1", 0, notice.clone())
        };
        assert_eq!(unwrap_result(&result(archive.as_str(), "q1"), "q1", &archive), Some(notice.clone()));
        assert_eq!(unwrap_result(&result(archive.as_str(), "q2"), "q1", &archive), None, "another query");
        assert_eq!(unwrap_result(&result("mallory@example.org/x", "q1"), "q1", &archive), None, "forged by an account");
    }
}
