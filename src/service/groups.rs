//! Groups: the Delivery Service proper (xep/ §Groups).
//!
//! Handshakes are validated with openmls' `PublicGroup` inside the store's
//! write transaction for the group ([`crate::store::Store::group_tx`]): the
//! epoch check, the validation, the merge, the archive entry and the
//! Welcomes commit together, so exactly one commit wins each epoch.

use minidom::Element;
use openmls::group::{ProposalStore, PublicGroup, StagedCommit};
use openmls::prelude::{
    ContentType, GroupId, LeafNode, LeafNodeIndex, OpenMlsSignaturePublicKey, ProcessedMessage,
    ProcessedMessageContent, ProtocolMessage, PublicMessageIn, RatchetTreeIn, Sender, ValidationError, Verifiable,
};
use openmls::prelude::Credential;
use openmls::prelude::PublicProcessMessageError;
use openmls_rust_crypto::RustCrypto;
use xmpp_parsers::jid::BareJid;

use super::{IqRequest, Response, Service, ServiceError};
use crate::config::GroupsConfig;
use crate::protocol::error::AppCondition;
use crate::protocol::groups::{
    group_info_element, Accepted, CommitBundle, Create, GroupMessage, Kind, Proposal, Welcome, WrongEpoch,
};
use crate::protocol::keypackages::{account_of, check_leaf, Rejection};
use crate::protocol::mls::{self, Invalid};
use crate::protocol::n;
use crate::store::{Acceptance, ArchiveBudget, Archived, FeedEntry, GroupState, GroupTx, Join, Member};
use crate::xmpp::namespace::CLIENT;

/// A handshake that took its place in a group's archive.
pub(super) struct Delivered {
    pub archived: Archived,
    pub epoch: u64,
    pub kind: Kind,
    pub sender_device: String,
    pub epoch_check: Option<String>,
    pub message: Vec<u8>,
    pub feed: Vec<FeedEntry>,
    /// Devices that left the group with this commit, to take off the feed.
    pub removed: Vec<FeedEntry>,
    /// The Welcome as kept in the inboxes, and (account, inbox stanza id)
    /// for each account it is for.
    pub welcome: Option<(Element, Vec<(String, String)>)>,
}

fn rejected(r: Rejection) -> ServiceError {
    ServiceError::InvalidMessage(match r {
        Rejection::ForeignIdentity => Invalid::ForeignIdentity,
        Rejection::UnknownSignatureKey => Invalid::UnknownSignatureKey,
        _ => Invalid::Invalid,
    })
}

pub(super) fn processing(e: PublicProcessMessageError) -> ServiceError {
    ServiceError::InvalidMessage(match e {
        PublicProcessMessageError::ValidationError(ValidationError::InvalidSignature) => Invalid::BadSignature,
        PublicProcessMessageError::ValidationError(ValidationError::UnknownMember) => Invalid::BadSignature,
        _ => Invalid::Invalid,
    })
}

pub(super) fn library(e: impl std::fmt::Display) -> ServiceError {
    tracing::error!(error = %e, "openmls failure");
    ServiceError::InvalidMessage(Invalid::Invalid)
}

/// The AS check on one leaf: its credential names `expected` (or any
/// account if None) and its key is a live device of that account.
fn check_group_leaf(tx: &GroupTx<'_>, leaf: &LeafNode, expected: Option<&BareJid>) -> Result<Member, ServiceError> {
    check_credential(tx, leaf.credential(), leaf.signature_key().as_slice(), expected)
}

/// [`check_group_leaf`] on a leaf's credential and signature key, which
/// needs no signature verified (the leaf may still be unverified).
fn check_credential(
    tx: &GroupTx<'_>,
    credential: &Credential,
    signature_key: &[u8],
    expected: Option<&BareJid>,
) -> Result<Member, ServiceError> {
    let account = account_of(credential).ok_or(ServiceError::InvalidMessage(Invalid::ForeignIdentity))?;
    if expected.is_some_and(|e| *e != account) {
        return Err(ServiceError::InvalidMessage(Invalid::ForeignIdentity));
    }
    let devices = tx.live_devices(account.as_str())?;
    check_leaf(credential, signature_key, &account, &devices).map_err(rejected)?;
    Ok(Member { leaf: 0, account: account.to_string(), signature_key: signature_key.to_vec() })
}

/// The checks of a create that need no signature, before any is verified
/// (xep/ §Creating a Group): the group's size, the creator's group quota
/// (joining it now; rolled back if the create fails), and the AS check of
/// every leaf of the still unverified tree, one of which is the creator's.
fn precheck_create(tx: &GroupTx<'_>, tree: &RatchetTreeIn, account: &BareJid, limits: &GroupsConfig) -> Result<(), ServiceError> {
    if tree.leaves().count() > limits.max_members {
        return Err(ServiceError::Limit(AppCondition::TooManyMembers));
    }
    if tx.join(account.as_str(), limits.max_groups_per_account)? != Join::Joined {
        return Err(ServiceError::Limit(AppCondition::TooManyGroups));
    }
    let mut creator = false;
    for leaf in tree.leaves() {
        creator |= check_credential(tx, leaf.credential(), leaf.signature_key().as_slice(), None)?.account == account.as_str();
    }
    creator.then_some(()).ok_or(ServiceError::NotAMember)
}

/// The group's leaves as the DS records them (checked when they joined).
fn members_of(pg: &PublicGroup) -> Vec<Member> {
    pg.members()
        .filter_map(|m| {
            Some(Member {
                leaf: m.index.u32(),
                account: account_of(&m.credential)?.to_string(),
                signature_key: m.signature_key,
            })
        })
        .collect()
}

/// The device of `account` whose key is `key`.
fn device_of(tx: &GroupTx<'_>, account: &str, key: &[u8]) -> Result<String, ServiceError> {
    tx.live_devices(account)?
        .into_iter()
        .find(|d| d.signature_key == key)
        .map(|d| d.id)
        .ok_or(ServiceError::InvalidMessage(Invalid::UnknownSignatureKey))
}

pub(super) fn encoded(v: &impl tls_codec::Serialize) -> Result<Vec<u8>, ServiceError> {
    v.tls_serialize_detached().map_err(library)
}

/// Checks that `bytes` is a GroupInfo of exactly the state `pg` is in: our
/// group context and our ratchet tree, signed by one of its leaves. The
/// tree is compared, not verified again: every change to it was validated
/// when it was merged (a second verification costs a signature per leaf).
fn check_group_info(crypto: &RustCrypto, bytes: &[u8], pg: &PublicGroup) -> Result<(), ServiceError> {
    let mismatch = || ServiceError::InvalidMessage(Invalid::GroupInfoMismatch);
    let (gi, tree) = mls::group_info(bytes, pg.group_id().as_slice()).map_err(ServiceError::InvalidMessage)?;
    if encoded(gi.group_context())? != encoded(pg.group_context())?
        || encoded(&tree)? != encoded(&pg.export_ratchet_tree())?
    {
        return Err(mismatch());
    }
    // GroupInfoTBS ends with the signer's leaf index (RFC 9420 §12.4.3).
    let tbs = gi.unsigned_payload().map_err(library)?;
    let signer = tbs.len().checked_sub(4).and_then(|at| tbs[at..].try_into().ok()).map(u32::from_be_bytes);
    let leaf = signer.and_then(|i| pg.leaf(LeafNodeIndex::new(i))).ok_or_else(mismatch)?;
    let key = OpenMlsSignaturePublicKey::new(leaf.signature_key().as_slice().into(), pg.ciphersuite().signature_algorithm())
        .map_err(|_| mismatch())?;
    gi.verify_no_out(crypto, &key).map_err(|_| mismatch())
}

/// The group's size limit: at most `max_members` leaves. (Groups count
/// against `max_groups_per_account` only for accounts that joined them
/// themselves: see [`GroupTx::join`].)
fn check_size(members: &[Member], limits: &GroupsConfig) -> Result<(), ServiceError> {
    match members.len() > limits.max_members {
        true => Err(ServiceError::Limit(AppCondition::TooManyMembers)),
        false => Ok(()),
    }
}

/// RFC 9420 §12.4.3.2 leaves to the application which leaves an external
/// Commit may remove: only leaves of the joiner's own account.
fn check_own_removals(staged: &StagedCommit, before: &[Member], account: &BareJid) -> Result<(), ServiceError> {
    for remove in staged.remove_proposals() {
        let leaf = remove.remove_proposal().removed().u32();
        if !before.iter().any(|m| m.leaf == leaf && m.account == account.as_str()) {
            return Err(ServiceError::InvalidMessage(Invalid::ForeignRemoval));
        }
    }
    Ok(())
}

/// Decodes a handshake and checks it is for the group's current epoch: the
/// check before any signature is verified or the PublicGroup is loaded.
fn current_epoch(
    state: &GroupState,
    bytes: &[u8],
    group_id: &[u8],
    content: ContentType,
) -> Result<PublicMessageIn, ServiceError> {
    let message = mls::public_message(bytes, group_id, content).map_err(ServiceError::InvalidMessage)?;
    if message.epoch().as_u64() != state.epoch {
        return Err(ServiceError::WrongEpoch(WrongEpoch { epoch: state.epoch, commit: state.last_commit.clone() }));
    }
    Ok(message)
}

/// The sender a handshake claims, before its signature is checked: a leaf
/// of the requester's account, or for an external Commit, an account that
/// has a leaf. A claim of another account's leaf is refused either way:
/// forged, its signature fails; genuine, it is not the requester's.
fn claimed_sender(message: &PublicMessageIn, members: &[Member], account: &BareJid) -> Result<(), ServiceError> {
    let ours = |m: &Member| m.account == account.as_str();
    let allowed = match message.sender() {
        Sender::Member(leaf) => members.iter().any(|m| m.leaf == leaf.u32() && ours(m)),
        Sender::NewMemberCommit => members.iter().any(ours),
        _ => false,
    };
    allowed.then_some(()).ok_or(ServiceError::Forbidden)
}

/// Charges an archived handshake to the committer's archive budget.
fn charge(tx: &GroupTx<'_>, account: &BareJid, kind: Kind, bytes: &[u8], budget: ArchiveBudget) -> Result<(), ServiceError> {
    match tx.charge_archive(account.as_str(), kind, bytes.len(), budget)? {
        true => Ok(()),
        false => Err(ServiceError::Limit(AppCondition::ArchiveBudgetExceeded)),
    }
}

pub(super) fn load(tx: &GroupTx<'_>, group_id: &[u8]) -> Result<PublicGroup, ServiceError> {
    PublicGroup::load(&tx.mls(), &GroupId::from_slice(group_id))
        .map_err(library)?
        .ok_or(ServiceError::UnknownGroup)
}

/// What a commit must fit: the group limits, the archive budgets and the
/// service's pending Remove proposals (this service's JID: `component`).
struct CommitLimits {
    groups: GroupsConfig,
    budget: ArchiveBudget,
    component: String,
}

/// xep/ §Service Removals: a Commit by a member carries, by reference,
/// every Remove proposal of the service pending for longer than
/// groups.proposal_grace_secs (an external Commit cannot carry proposals
/// by reference).
fn check_service_proposals(tx: &GroupTx<'_>, staged: &StagedCommit, epoch: u64, grace: u64) -> Result<(), ServiceError> {
    let due = tx.overdue_removals(epoch, tx.now().saturating_sub(grace as i64))?;
    let carried = |leaf: u32| {
        staged.remove_proposals().any(|r| {
            matches!(r.sender(), Sender::External(_)) && r.remove_proposal().removed().u32() == leaf
        })
    };
    match due.into_iter().all(carried) {
        true => Ok(()),
        false => Err(ServiceError::Refused(AppCondition::MissingProposals)),
    }
}

/// Validates and applies a commit bundle; runs on the store's writer.
fn apply_commit(
    tx: &GroupTx<'_>,
    crypto: &RustCrypto,
    limits: &CommitLimits,
    group_id: &[u8],
    group_jid: &str,
    account: &BareJid,
    bundle: CommitBundle,
) -> Result<(Delivered, Vec<Delivered>), ServiceError> {
    let state = tx.state()?.ok_or(ServiceError::UnknownGroup)?;
    let message = current_epoch(&state, &bundle.commit, group_id, ContentType::Commit)?;
    let mut pg = load(tx, group_id)?;
    let before = members_of(&pg);
    let processed: ProcessedMessage =
        pg.process_message(crypto, ProtocolMessage::from(message)).map_err(processing)?;
    let sender = processed.sender().clone();
    let committer = account_of(processed.credential()).ok_or(ServiceError::InvalidMessage(Invalid::ForeignIdentity))?;
    if committer != *account {
        return Err(ServiceError::Forbidden);
    }
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(ServiceError::InvalidMessage(Invalid::WrongContentType));
    };
    let committer_key = match sender {
        Sender::Member(index) => {
            check_service_proposals(tx, &staged, state.epoch, limits.groups.proposal_grace_secs)?;
            pg.leaf(index).map(|l| l.signature_key().as_slice().to_vec())
        }
        // External commit: only an account that is already a member may
        // bring in a new device of its own, replacing only its own leaves.
        Sender::NewMemberCommit if before.iter().any(|m| m.account == account.as_str()) => {
            check_own_removals(&staged, &before, account)?;
            staged.update_path_leaf_node().map(|l| l.signature_key().as_slice().to_vec())
        }
        _ => return Err(ServiceError::Forbidden),
    }
    .ok_or(ServiceError::InvalidMessage(Invalid::Invalid))?;
    let mut added = Vec::new();
    for add in staged.add_proposals() {
        added.push(check_group_leaf(tx, add.add_proposal().key_package().leaf_node(), None)?.account);
    }
    for update in staged.update_proposals() {
        let leaf = update.update_proposal().leaf_node();
        let owner = account_of(leaf.credential()).ok_or(ServiceError::InvalidMessage(Invalid::ForeignIdentity))?;
        check_group_leaf(tx, leaf, Some(&owner))?;
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        check_group_leaf(tx, leaf, Some(account))?;
    }
    added.sort();
    added.dedup();
    if !added.is_empty() && bundle.welcome.is_none() {
        return Err(ServiceError::InvalidMessage(Invalid::MissingWelcome));
    }
    let sender_device = device_of(tx, account.as_str(), &committer_key)?;
    pg.merge_commit(&tx.mls(), *staged).map_err(library)?;
    let members = members_of(&pg);
    check_size(&members, &limits.groups)?;
    check_group_info(crypto, &bundle.group_info, &pg)?;
    let epoch = pg.group_context().epoch().as_u64();
    charge(tx, account, Kind::Commit, &bundle.commit, limits.budget)?;
    let archived =
        tx.append(account.as_str(), state.epoch, Kind::Commit, &sender_device, Some(&bundle.epoch_check), &bundle.commit)?;
    tx.advance(epoch, &bundle.group_info, &archived.stanza_id)?;
    tx.set_members(&members, archived.seq)?;
    let removed = tx.prune_feed()?;
    let mut welcome = None;
    if let Some(w) = bundle.welcome.filter(|_| !added.is_empty()) {
        mls::welcome(&w).map_err(ServiceError::InvalidMessage)?;
        let payload =
            Welcome {
                group: group_jid.to_owned(),
                commit: Some(archived.stanza_id.clone()),
                position: Some(archived.seq),
                message: w.clone(),
            }
                .to_element();
        let inboxes = added.into_iter().map(|a| Ok((tx.inbox(&a, &payload)?, a))).collect::<Result<Vec<_>, ServiceError>>()?;
        welcome = Some((payload, inboxes.into_iter().map(|(id, a)| (a, id)).collect()));
    }
    let commit = Delivered {
        archived,
        epoch: state.epoch,
        kind: Kind::Commit,
        sender_device,
        epoch_check: Some(bundle.epoch_check),
        message: bundle.commit,
        feed: tx.feed()?,
        removed,
        welcome,
    };
    // Leaves still stale in the new epoch are proposed for removal again.
    let proposals = super::sender::propose_removals(tx, crypto, &limits.component, &mut pg)?;
    Ok((commit, proposals))
}

/// Validates a proposal by reference and keeps it for the epoch.
fn apply_proposal(
    tx: &GroupTx<'_>,
    crypto: &RustCrypto,
    budget: ArchiveBudget,
    group_id: &[u8],
    account: &BareJid,
    proposal: Proposal,
) -> Result<Delivered, ServiceError> {
    let state = tx.state()?.ok_or(ServiceError::UnknownGroup)?;
    let message = current_epoch(&state, &proposal.message, group_id, ContentType::Proposal)?;
    let mut pg = load(tx, group_id)?;
    let processed = pg.process_message(crypto, ProtocolMessage::from(message)).map_err(processing)?;
    if account_of(processed.credential()).as_ref() != Some(account) {
        return Err(ServiceError::Forbidden);
    }
    let Sender::Member(index) = processed.sender().clone() else { return Err(ServiceError::Forbidden) };
    let key = pg.leaf(index).map(|l| l.signature_key().as_slice().to_vec());
    let sender_device = device_of(tx, account.as_str(), &key.unwrap_or_default())?;
    let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
        return Err(ServiceError::InvalidMessage(Invalid::WrongContentType));
    };
    match queued.proposal() {
        openmls::prelude::Proposal::Add(add) => {
            check_group_leaf(tx, add.key_package().leaf_node(), None)?;
        }
        openmls::prelude::Proposal::Update(update) => {
            check_group_leaf(tx, update.leaf_node(), Some(account))?;
        }
        _ => {}
    }
    pg.add_proposal(&tx.mls(), *queued).map_err(library)?;
    charge(tx, account, Kind::Proposal, &proposal.message, budget)?;
    let archived = tx.append(account.as_str(), state.epoch, Kind::Proposal, &sender_device, None, &proposal.message)?;
    Ok(Delivered {
        archived,
        epoch: state.epoch,
        kind: Kind::Proposal,
        sender_device,
        epoch_check: None,
        message: proposal.message,
        feed: tx.feed()?,
        removed: Vec::new(),
        welcome: None,
    })
}

impl Service {
    pub(super) fn group_jid(&self, group_id: &[u8]) -> String {
        format!("{}@{}", crate::protocol::address::group_node(group_id), self.config.component.jid)
    }

    /// A new group from its creator's GroupInfo: every leaf passes the AS
    /// check and one of them is the creator's.
    pub(super) async fn create_group(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let create = Create::parse(&req.payload)?;
        let (account, crypto, gid) = (req.from.to_bare(), self.crypto.clone(), group_id.to_vec());
        let (limits, component) = (self.config.groups.clone(), self.config.component.jid.clone());
        self.store
            .group_tx(group_id.to_vec(), move |tx| {
                if tx.state()?.is_some() {
                    return Err(ServiceError::GroupExists);
                }
                let (gi, tree) = mls::group_info(&create.group_info, &gid).map_err(ServiceError::InvalidMessage)?;
                precheck_create(tx, &tree, &account, &limits)?;
                if let Some(key) = tx.service_keys()?.first() {
                    if !super::sender::lists(gi.group_context().extensions().external_senders(), &component, key) {
                        return Err(ServiceError::Refused(AppCondition::ExternalSenderRequired));
                    }
                }
                let (pg, _) = PublicGroup::from_external(crypto.as_ref(), &tx.mls(), tree, gi, ProposalStore::new())
                    .map_err(|_| ServiceError::InvalidMessage(Invalid::Invalid))?;
                let members = members_of(&pg);
                tx.create(pg.group_context().epoch().as_u64(), &create.group_info)?;
                tx.set_members(&members, 0)?;
                Ok(())
            })
            .await?;
        Ok(Response::default())
    }

    pub(super) async fn commit(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let bundle = CommitBundle::parse(&req.payload)?;
        if let Some(earlier) = self.resent(req, group_id, Kind::Commit, &bundle.commit).await? {
            return Ok(Response::result(accepted_as(earlier.epoch + 1, earlier.archived)));
        }
        self.precheck(req, group_id, &bundle.commit, ContentType::Commit).await?;
        let (crypto, account, gid, jid) =
            (self.crypto.clone(), req.from.to_bare(), group_id.to_vec(), self.group_jid(group_id));
        let limits = CommitLimits {
            groups: self.config.groups.clone(),
            budget: self.archive_budget(),
            component: self.config.component.jid.clone(),
        };
        let (delivered, proposals) = self
            .store
            .group_tx(group_id.to_vec(), move |tx| apply_commit(tx, &crypto, &limits, &gid, &jid, &account, bundle))
            .await?;
        let mut response = self.deliver(group_id, delivered, req);
        response.issued = self.issued(group_id, &proposals);
        Ok(response)
    }

    pub(super) async fn propose(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let proposal = Proposal::parse(&req.payload)?;
        if let Some(earlier) = self.resent(req, group_id, Kind::Proposal, &proposal.message).await? {
            return Ok(Response::result(accepted_as(earlier.epoch, earlier.archived)));
        }
        self.precheck(req, group_id, &proposal.message, ContentType::Proposal).await?;
        let (crypto, account, gid, budget) =
            (self.crypto.clone(), req.from.to_bare(), group_id.to_vec(), self.archive_budget());
        let delivered = self
            .store
            .group_tx(group_id.to_vec(), move |tx| apply_proposal(tx, &crypto, budget, &gid, &account, proposal))
            .await?;
        Ok(self.deliver(group_id, delivered, req))
    }

    /// How a handshake the requester's account sent before was accepted, if
    /// this is a resend of it (xep/ §Resends): answered as it was then,
    /// nothing archived or delivered again.
    async fn resent(&self, req: &IqRequest, group_id: &[u8], kind: Kind, message: &[u8]) -> Result<Option<Acceptance>, ServiceError> {
        let account = req.from.to_bare().to_string();
        Ok(self.store.acceptance(group_id.to_vec(), account, kind, message.to_vec()).await?)
    }

    /// The checks of a handshake that need no signature, against the
    /// stored state, outside the writer: unknown group, decoding, epoch, and
    /// the sender it claims. A handshake refused by them costs two reads;
    /// the writer checks again, deciding.
    async fn precheck(&self, req: &IqRequest, group_id: &[u8], bytes: &[u8], content: ContentType) -> Result<(), ServiceError> {
        let state = self.store.group_state(group_id.to_vec()).await?.ok_or(ServiceError::UnknownGroup)?;
        let message = current_epoch(&state, bytes, group_id, content)?;
        let members = self.store.group_members(group_id.to_vec()).await?;
        claimed_sender(&message, &members, &req.from.to_bare())
    }

    /// The latest GroupInfo, for members (and their accounts' new devices).
    pub(super) async fn group_info(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let state = self.store.group_state(group_id.to_vec()).await?.ok_or(ServiceError::UnknownGroup)?;
        self.require_member_account(group_id, &req.from.to_bare()).await?;
        Ok(Response::result(group_info_element(state.epoch, &state.group_info)))
    }

    pub(super) async fn require_member_account(&self, group_id: &[u8], account: &BareJid) -> Result<(), ServiceError> {
        let members = self.store.group_members(group_id.to_vec()).await?;
        members.iter().any(|m| m.account == account.as_str()).then_some(()).ok_or(ServiceError::NotAMember)
    }

    /// The IQ result, the fan-out in archive order, Welcomes and the
    /// presences of devices that left.
    fn deliver(&self, group_id: &[u8], d: Delivered, req: &IqRequest) -> Response {
        let group_jid = self.group_jid(group_id);
        let new_epoch = if d.kind == Kind::Commit { d.epoch + 1 } else { d.epoch };
        let mut messages = fan_out(&group_jid, &d, Some(&req.id));
        if let Some((payload, inboxes)) = &d.welcome {
            for (account, stanza_id) in inboxes {
                let Ok(account) = BareJid::new(account) else { continue };
                let from = self.directory_jid(&account);
                messages.push(super::pubsub::headline(&from, account.as_str(), payload.clone(), Some(stanza_id)));
            }
        }
        for gone in &d.removed {
            messages.push(presence(&format!("{group_jid}/{}", gone.device_id), &gone.full_jid, Some("unavailable"), None));
        }
        Response {
            payload: Some(accepted_as(new_epoch, d.archived.clone())),
            messages,
            order: Some((group_id.to_vec(), d.archived.seq)),
            reply_last: false,
            issued: Vec::new(),
        }
    }

}

/// `<accepted/>` for a handshake archived as `archived`, the group then at `epoch`.
fn accepted_as(epoch: u64, archived: Archived) -> Element {
    Accepted { epoch, stanza_id: archived.stanza_id, position: archived.seq }.to_element()
}

/// The archived message, to every device on the feed (the sender's own
/// echo included), with its stanza id.
pub(super) fn fan_out(group_jid: &str, d: &Delivered, id: Option<&str>) -> Vec<Element> {
    let payload = GroupMessage {
        message: d.message.clone(),
        kind: Some(d.kind),
        epoch: Some(d.epoch),
        epoch_check: d.epoch_check.clone(),
        position: Some(d.archived.seq),
    }
    .to_element();
    let from = sender_jid(group_jid, &d.sender_device);
    let stanza_id = Element::builder("stanza-id", crate::protocol::NS_SID)
        .attr(n("by"), group_jid)
        .attr(n("id"), d.archived.stanza_id.as_str())
        .build();
    let hint = copy_hint(d.kind);
    d.feed
        .iter()
        .map(|f| {
            Element::builder("message", CLIENT)
                .attr(n("from"), from.as_str())
                .attr(n("to"), f.full_jid.as_str())
                .attr(n("type"), "groupchat")
                .attr(n("id"), id.unwrap_or(&d.archived.stanza_id))
                .append(payload.clone())
                .append_all(hint.clone())
                .append(stanza_id.clone())
                .build()
        })
        .collect()
}

/// The JID a group message is from: the sending device's in the group, or
/// the group's own for the service's proposals.
pub(super) fn sender_jid(group_jid: &str, sender_device: &str) -> String {
    match sender_device {
        super::sender::SERVICE_SENDER => group_jid.to_owned(),
        device => format!("{group_jid}/{device}"),
    }
}

/// The XEP-0380 hint that every copy of an application message carries.
pub(super) fn copy_hint(kind: Kind) -> Option<Element> {
    (kind == Kind::Application).then(crate::protocol::content::encryption_hint)
}

pub(super) fn presence(from: &str, to: &str, type_: Option<&str>, child: Option<Element>) -> Element {
    let mut b = Element::builder("presence", CLIENT).attr(n("from"), from).attr(n("to"), to);
    if let Some(t) = type_ {
        b = b.attr(n("type"), t);
    }
    if let Some(c) = child {
        b = b.append(c);
    }
    b.build()
}
