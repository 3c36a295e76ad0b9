//! Groups: the Delivery Service proper (xep/ §Groups).
//!
//! A handshake is validated with openmls' `PublicGroup` outside the
//! store's writer, against the group as it was read (kept hot in
//! [`super::cache`]): signatures, tree, merge, GroupInfo. The store then
//! decides in one transaction ([`crate::store::Store::group_tx`]): the AS
//! checks against the device lists as they are, the archive entry, the
//! epoch's compare-and-swap and the Welcomes land together or not at all,
//! so exactly one commit wins each epoch, whatever runs concurrently.

use std::collections::{HashMap, HashSet};

use minidom::Element;
use openmls::group::{ProposalStore, PublicGroup, StagedCommit};
use openmls::prelude::{
    ContentType, LeafNode, LeafNodeIndex, OpenMlsSignaturePublicKey, ProcessedMessage, ProcessedMessageContent,
    ProtocolMessage, PublicMessageIn, Sender, ValidationError, Verifiable,
};
use openmls::prelude::Credential;
use openmls::prelude::PublicProcessMessageError;
use openmls_rust_crypto::RustCrypto;
use xmpp_parsers::jid::BareJid;

use super::cache::Version;
use super::{blocking, Copies, IqRequest, Response, Service, ServiceError};
use crate::config::GroupsConfig;
use crate::protocol::devices::Device;
use crate::protocol::error::AppCondition;
use crate::protocol::groups::{
    group_info_element, page_octets, Accepted, CommitBundle, Create, GroupMessage, Kind, Parts, Proposal, TreePage,
    TreeRequest, Welcome, WrongEpoch,
};
use crate::protocol::keypackages::{account_of, check_leaf, Rejection};
use crate::protocol::mls::{self, Invalid};
use crate::protocol::n;
use crate::store::state::{PublicState, StateCodec};
use crate::store::{Acceptance, ArchiveBudget, Archived, FeedEntry, GroupState, GroupTx, Join, Member, StateWrite};
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
/// A leaf the AS check must pass when its handshake is decided: its
/// credential names `expected` (any account if None) and its signature key
/// is a live device of that account.
struct LeafCheck {
    credential: Credential,
    key: Vec<u8>,
    expected: Option<BareJid>,
}

impl LeafCheck {
    fn of(leaf: &LeafNode, expected: Option<&BareJid>) -> Self {
        Self::new(leaf.credential(), leaf.signature_key().as_slice(), expected)
    }

    fn new(credential: &Credential, key: &[u8], expected: Option<&BareJid>) -> Self {
        Self { credential: credential.clone(), key: key.to_vec(), expected: expected.cloned() }
    }

    /// The account the credential names, if it is the expected one.
    fn account(&self) -> Result<BareJid, ServiceError> {
        let account = account_of(&self.credential).ok_or(ServiceError::InvalidMessage(Invalid::ForeignIdentity))?;
        match self.expected.as_ref().is_some_and(|e| *e != account) {
            true => Err(ServiceError::InvalidMessage(Invalid::ForeignIdentity)),
            false => Ok(account),
        }
    }

    /// The key is one of `devices` (the live devices of `account`).
    fn check(&self, account: &BareJid, devices: &[Device]) -> Result<(), ServiceError> {
        check_leaf(&self.credential, &self.key, account, devices).map(|_| ()).map_err(rejected)
    }

    /// The AS check, in the deciding transaction; the leaf's account.
    fn run(&self, tx: &GroupTx<'_>) -> Result<String, ServiceError> {
        let account = self.account()?;
        self.check(&account, &tx.live_devices(account.as_str())?)?;
        Ok(account.to_string())
    }
}

/// The checks of a create in its deciding transaction (xep/ §Creating a
/// Group): the creator's group quota (joining it now; rolled back if the
/// create fails) and the AS check of every leaf, one of which is the
/// creator's.
fn check_create(tx: &GroupTx<'_>, leaves: &[LeafCheck], account: &BareJid, limits: &GroupsConfig) -> Result<(), ServiceError> {
    if tx.join(account.as_str(), limits.max_groups_per_account)? != Join::Joined {
        return Err(ServiceError::Limit(AppCondition::TooManyGroups));
    }
    let mut creator = false;
    for leaf in leaves {
        creator |= leaf.run(tx)? == account.as_str();
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
/// group context (whose tree hash covers the tree) and, if it carries one,
/// our ratchet tree, signed by one of its leaves; whether it carries the
/// tree. The tree is compared, not verified again: every change to it was
/// validated when it was merged (a second verification costs a signature
/// per leaf).
fn check_group_info(crypto: &RustCrypto, bytes: &[u8], pg: &PublicGroup) -> Result<bool, ServiceError> {
    let mismatch = || ServiceError::InvalidMessage(Invalid::GroupInfoMismatch);
    let (gi, tree) = mls::group_info(bytes, pg.group_id().as_slice()).map_err(ServiceError::InvalidMessage)?;
    if encoded(gi.group_context())? != encoded(pg.group_context())? {
        return Err(mismatch());
    }
    if let Some(tree) = &tree {
        if encoded(tree)? != encoded(&pg.export_ratchet_tree())? {
            return Err(mismatch());
        }
    }
    // GroupInfoTBS ends with the signer's leaf index (RFC 9420 §12.4.3).
    let tbs = gi.unsigned_payload().map_err(library)?;
    let signer = tbs.len().checked_sub(4).and_then(|at| tbs[at..].try_into().ok()).map(u32::from_be_bytes);
    let leaf = signer.and_then(|i| pg.leaf(LeafNodeIndex::new(i))).ok_or_else(mismatch)?;
    let key = OpenMlsSignaturePublicKey::new(leaf.signature_key().as_slice().into(), pg.ciphersuite().signature_algorithm())
        .map_err(|_| mismatch())?;
    gi.verify_no_out(crypto, &key).map_err(|_| mismatch())?;
    Ok(tree.is_some())
}

/// The group's ratchet tree in pages of at most `budget` octets (xep/
/// §Fetching the Ratchet Tree).
fn tree_pages(pg: &PublicGroup, budget: usize) -> Result<Vec<Vec<u8>>, ServiceError> {
    mls::tree_pages(&encoded(&pg.export_ratchet_tree())?, budget).map_err(ServiceError::InvalidMessage)
}

/// The group's size limit: at most `max_members` leaves. (Groups count
/// against `max_groups_per_account` only for accounts that joined them
/// themselves: see [`GroupTx::join`].)
fn check_size(leaves: usize, limits: &GroupsConfig) -> Result<(), ServiceError> {
    match leaves > limits.max_members {
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
        return Err(wrong_epoch(state));
    }
    Ok(message)
}

fn wrong_epoch(state: &GroupState) -> ServiceError {
    ServiceError::WrongEpoch(WrongEpoch { epoch: state.epoch, commit: state.last_commit.clone() })
}

/// In a deciding transaction: the group is still at `epoch` (else the
/// answer is `wrong-epoch` with the winner). The decision itself is the
/// store's compare-and-swap; this picks the error a lost race gets before
/// any other check can fail for a state the group left.
fn still_at(tx: &GroupTx<'_>, epoch: u64) -> Result<(), ServiceError> {
    let state = tx.state()?.ok_or(ServiceError::UnknownGroup)?;
    match state.epoch == epoch {
        true => Ok(()),
        false => Err(wrong_epoch(&state)),
    }
}

/// The sender a handshake claims, before its signature is checked: a leaf
/// of the requester's account, or for an external Commit, an account that
/// has a leaf. A claim of another account's leaf is refused either way:
/// forged, its signature fails; genuine, it is not the requester's.
async fn claimed_sender(store: &crate::store::Store, group_id: &[u8], message: &PublicMessageIn, account: &BareJid) -> Result<(), ServiceError> {
    let allowed = match message.sender() {
        Sender::Member(leaf) => store.member_account(group_id.to_vec(), leaf.u32()).await?.as_deref() == Some(account.as_str()),
        Sender::NewMemberCommit => store.has_member_account(group_id.to_vec(), account.to_string()).await?,
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

/// What a commit must fit when decided: the archive budgets, the service's
/// pending Remove proposals (this service's JID: `component`) and their
/// grace.
struct CommitLimits {
    budget: ArchiveBudget,
    component: String,
    grace: u64,
}

/// What a staged commit leaves for the decision to check in the store.
struct Checked {
    /// By a member (not an external Commit): then it must carry the
    /// service's overdue Remove proposals; `carried` are the leaves whose
    /// removal by the service it carries.
    by_member: bool,
    carried: Vec<u32>,
    committer_key: Vec<u8>,
    leaves: Vec<LeafCheck>,
}

/// A commit bundle validated against the group at epoch `from` and merged:
/// what the deciding transaction checks against the store and writes.
struct ValidCommit {
    from: u64,
    to: u64,
    bundle: CommitBundle,
    checked: Checked,
    /// The leaves the commit removed, and those it added or changed.
    removed: Vec<u32>,
    changed: Vec<Member>,
    /// The merged group's state blob, if it is kept whole (else the commit
    /// is logged: [`keeps_whole`]).
    whole: Option<Vec<u8>>,
    /// The new epoch's tree in pages, kept for the joiners of a Welcome
    /// whose GroupInfo does not carry it.
    tree: Option<Vec<Vec<u8>>>,
}

/// Whether a commit's new state is written whole rather than the commit
/// logged after the last whole state: when it adds members (replaying it
/// later would check their KeyPackages' lifetimes again), or when the log
/// would pass half the whole state's size. A commit then costs its own
/// size, plus a whole state for every two states' worth of commits.
fn keeps_whole(state: &GroupState, commit: &[u8], adds: bool) -> bool {
    adds || (state.log_bytes + commit.len() as u64) * 2 > state.state_bytes
}

/// The leaves of `pg` (merged) whose signature keys are `keys`.
fn leaves_with_keys(pg: &PublicGroup, keys: &HashSet<Vec<u8>>) -> Vec<Member> {
    pg.treesync()
        .full_leaves()
        .filter(|(_, leaf)| keys.contains(leaf.signature_key().as_slice()))
        .filter_map(|(index, leaf)| {
            let account = account_of(leaf.credential())?.to_string();
            Some(Member { leaf: index.u32(), account, signature_key: leaf.signature_key().as_slice().to_vec() })
        })
        .collect()
}

/// A validation that failed, with the group it was given if validation did
/// not change it (to be cached again).
type Failed = (ServiceError, Option<PublicGroup>);

/// Validates a commit bundle of `account` against `pg` at epoch `from`, then
/// merges it: the MLS work (signatures, tree, GroupInfo), outside the
/// store's writer.
fn validate_commit(
    crypto: &RustCrypto,
    limits: &GroupsConfig,
    tree_page: usize,
    state: &GroupState,
    mut pg: PublicGroup,
    account: &BareJid,
    bundle: CommitBundle,
) -> Result<(ValidCommit, PublicGroup), Failed> {
    let (staged, checked) = match stage_commit(crypto, &pg, account, &bundle) {
        Ok(staged) => staged,
        Err(e) => return Err((e, Some(pg))),
    };
    let removed: Vec<u32> = staged.remove_proposals().map(|r| r.remove_proposal().removed().u32()).collect();
    let adds = staged.add_proposals().next().is_some();
    let keys: HashSet<Vec<u8>> = checked.leaves.iter().map(|l| l.key.clone()).collect();
    let merged = (|| {
        let codec = StateCodec::without_tree();
        pg.merge_commit(&codec, staged).map_err(library)?;
        check_size(pg.treesync().full_leaves().count(), limits)?;
        let inline = check_group_info(crypto, &bundle.group_info, &pg)?;
        let tree = match bundle.welcome.is_some() && !inline {
            true => Some(tree_pages(&pg, tree_page)?),
            false => None,
        };
        let whole = match keeps_whole(state, &bundle.commit, adds) {
            true => Some(codec.whole(&pg).map_err(library)?),
            false => None,
        };
        Ok((leaves_with_keys(&pg, &keys), whole, tree))
    })();
    match merged {
        Ok((changed, whole, tree)) => {
            let to = pg.group_context().epoch().as_u64();
            Ok((ValidCommit { from: state.epoch, to, bundle, checked, removed, changed, whole, tree }, pg))
        }
        Err(e) => Err((e, None)),
    }
}

/// The group as stored: kept whole at some epoch, then each logged commit
/// merged, followed by the proposals queued in the epoch it began.
fn stored_group(crypto: &RustCrypto, public: &PublicState, group_id: &[u8]) -> Result<PublicGroup, ServiceError> {
    let mut pg = StateCodec::load(public, group_id).map_err(library)?.ok_or(ServiceError::UnknownGroup)?;
    for logged in &public.log {
        let message = mls::public_message(&logged.commit, group_id, ContentType::Commit).map_err(|e| library(e.reason()))?;
        let processed = pg.process_message(crypto, ProtocolMessage::from(message)).map_err(library)?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(library("a logged handshake is not a commit"));
        };
        let codec = StateCodec::without_tree();
        pg.merge_commit(&codec, *staged).map_err(library)?;
        codec.requeue(&mut pg, &logged.proposals).map_err(library)?;
    }
    Ok(pg)
}

/// The checks of a commit that leave the group unchanged: signature,
/// proposals, who may commit what; returns the staged commit and what the
/// decision needs of it.
fn stage_commit(
    crypto: &RustCrypto,
    pg: &PublicGroup,
    account: &BareJid,
    bundle: &CommitBundle,
) -> Result<(StagedCommit, Checked), ServiceError> {
    let message = mls::public_message(&bundle.commit, pg.group_id().as_slice(), ContentType::Commit)
        .map_err(ServiceError::InvalidMessage)?;
    let processed: ProcessedMessage = pg.process_message(crypto, ProtocolMessage::from(message)).map_err(processing)?;
    let sender = processed.sender().clone();
    let committer = account_of(processed.credential()).ok_or(ServiceError::InvalidMessage(Invalid::ForeignIdentity))?;
    if committer != *account {
        return Err(ServiceError::Forbidden);
    }
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err(ServiceError::InvalidMessage(Invalid::WrongContentType));
    };
    let by_member = matches!(sender, Sender::Member(_));
    let committer_key = match sender {
        Sender::Member(index) => pg.leaf(index).map(|l| l.signature_key().as_slice().to_vec()),
        // External commit: only an account that is already a member may
        // bring in a new device of its own, replacing only its own leaves.
        Sender::NewMemberCommit if members_of(pg).iter().any(|m| m.account == account.as_str()) => {
            check_own_removals(&staged, &members_of(pg), account)?;
            staged.update_path_leaf_node().map(|l| l.signature_key().as_slice().to_vec())
        }
        _ => return Err(ServiceError::Forbidden),
    }
    .ok_or(ServiceError::InvalidMessage(Invalid::Invalid))?;
    let mut leaves: Vec<LeafCheck> =
        staged.add_proposals().map(|add| LeafCheck::of(add.add_proposal().key_package().leaf_node(), None)).collect();
    for update in staged.update_proposals() {
        let leaf = update.update_proposal().leaf_node();
        let owner = account_of(leaf.credential()).ok_or(ServiceError::InvalidMessage(Invalid::ForeignIdentity))?;
        leaves.push(LeafCheck::of(leaf, Some(&owner)));
    }
    if let Some(leaf) = staged.update_path_leaf_node() {
        leaves.push(LeafCheck::of(leaf, Some(account)));
    }
    if staged.add_proposals().next().is_some() && bundle.welcome.is_none() {
        return Err(ServiceError::InvalidMessage(Invalid::MissingWelcome));
    }
    if let Some(welcome) = &bundle.welcome {
        mls::welcome(welcome).map_err(ServiceError::InvalidMessage)?;
    }
    let carried = staged
        .remove_proposals()
        .filter(|r| matches!(r.sender(), Sender::External(_)))
        .map(|r| r.remove_proposal().removed().u32())
        .collect();
    Ok((*staged, Checked { by_member, carried, committer_key, leaves }))
}

/// xep/ §Service Removals: a Commit by a member carries, by reference,
/// every Remove proposal of the service pending for longer than
/// groups.proposal_grace_secs (an external Commit cannot carry proposals
/// by reference).
fn check_service_proposals(tx: &GroupTx<'_>, valid: &ValidCommit, grace: u64) -> Result<(), ServiceError> {
    if !valid.checked.by_member {
        return Ok(());
    }
    let due = tx.overdue_removals(valid.from, tx.now().saturating_sub(grace as i64))?;
    match due.iter().all(|leaf| valid.checked.carried.contains(leaf)) {
        true => Ok(()),
        false => Err(ServiceError::Refused(AppCondition::MissingProposals)),
    }
}

/// Decides a validated commit in the store's transaction: the AS checks
/// against the device lists as they are now, the budget, the archive
/// entry, the epoch's compare-and-swap, members, feed and Welcomes; then
/// the service's Remove proposals for leaves still stale.
fn decide_commit(
    tx: &GroupTx<'_>,
    crypto: &RustCrypto,
    limits: &CommitLimits,
    group_jid: &str,
    account: &BareJid,
    valid: ValidCommit,
    mut pg: PublicGroup,
) -> Result<(Delivered, Vec<Delivered>, PublicGroup), ServiceError> {
    still_at(tx, valid.from)?;
    check_service_proposals(tx, &valid, limits.grace)?;
    let mut added = Vec::new();
    for leaf in &valid.checked.leaves {
        let owner = leaf.run(tx)?;
        if leaf.expected.is_none() {
            added.push(owner);
        }
    }
    added.sort();
    added.dedup();
    let sender_device = device_of(tx, account.as_str(), &valid.checked.committer_key)?;
    let bundle = valid.bundle;
    charge(tx, account, Kind::Commit, &bundle.commit, limits.budget)?;
    let archived =
        tx.append(account.as_str(), valid.from, Kind::Commit, &sender_device, Some(&bundle.epoch_check), &bundle.commit)?;
    let state = match &valid.whole {
        Some(blob) => StateWrite::Whole(blob),
        None => StateWrite::Logged(&bundle.commit),
    };
    if !tx.advance(valid.from, valid.to, &bundle.group_info, &archived.stanza_id, state)? {
        return Err(wrong_epoch(&tx.state()?.ok_or(ServiceError::UnknownGroup)?));
    }
    tx.change_members(&valid.removed, &valid.changed, archived.seq)?;
    if let Some(pages) = &valid.tree {
        tx.keep_tree(valid.to, pages)?;
    }
    let removed = tx.prune_feed()?;
    let mut welcome = None;
    if let Some(w) = bundle.welcome.filter(|_| !added.is_empty()) {
        let payload =
            Welcome { group: group_jid.to_owned(), commit: Some(archived.stanza_id.clone()), position: Some(archived.seq), message: w }
                .to_element();
        let inboxes = added.into_iter().map(|a| Ok((a.clone(), tx.inbox(&a, &payload)?))).collect::<Result<Vec<_>, ServiceError>>()?;
        welcome = Some((payload, inboxes));
    }
    let commit = Delivered {
        archived,
        epoch: valid.from,
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
    Ok((commit, proposals, pg))
}

/// A proposal by reference validated against the group in `epoch`.
struct ValidProposal {
    epoch: u64,
    message: Vec<u8>,
    sender_key: Vec<u8>,
    leaf: Option<LeafCheck>,
    /// (reference, proposal) to queue.
    queued: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Validates a proposal of `account` and adds it to `pg`'s queue.
fn validate_proposal(
    crypto: &RustCrypto,
    mut pg: PublicGroup,
    account: &BareJid,
    message: Vec<u8>,
) -> Result<(ValidProposal, PublicGroup), Failed> {
    let checked = (|| {
        let public = mls::public_message(&message, pg.group_id().as_slice(), ContentType::Proposal)
            .map_err(ServiceError::InvalidMessage)?;
        let processed = pg.process_message(crypto, ProtocolMessage::from(public)).map_err(processing)?;
        if account_of(processed.credential()).as_ref() != Some(account) {
            return Err(ServiceError::Forbidden);
        }
        let Sender::Member(index) = processed.sender().clone() else { return Err(ServiceError::Forbidden) };
        let sender_key = pg.leaf(index).map(|l| l.signature_key().as_slice().to_vec()).unwrap_or_default();
        let ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else {
            return Err(ServiceError::InvalidMessage(Invalid::WrongContentType));
        };
        let leaf = match queued.proposal() {
            openmls::prelude::Proposal::Add(add) => Some(LeafCheck::of(add.key_package().leaf_node(), None)),
            openmls::prelude::Proposal::Update(update) => Some(LeafCheck::of(update.leaf_node(), Some(account))),
            _ => None,
        };
        Ok((sender_key, leaf, queued))
    })();
    let (sender_key, leaf, queued) = match checked {
        Ok(checked) => checked,
        Err(e) => return Err((e, Some(pg))),
    };
    let codec = StateCodec::default();
    if let Err(e) = pg.add_proposal(&codec, *queued) {
        return Err((library(e), None));
    }
    let epoch = pg.group_context().epoch().as_u64();
    Ok((ValidProposal { epoch, message, sender_key, leaf, queued: codec.queued() }, pg))
}

/// Decides a validated proposal: queued if the group is still in its
/// epoch (the compare-and-swap), then checked, charged and archived.
fn decide_proposal(tx: &GroupTx<'_>, budget: ArchiveBudget, account: &BareJid, valid: ValidProposal) -> Result<Delivered, ServiceError> {
    still_at(tx, valid.epoch)?;
    if !tx.queue_proposals(valid.epoch, &valid.queued)? {
        return Err(wrong_epoch(&tx.state()?.ok_or(ServiceError::UnknownGroup)?));
    }
    let sender_device = device_of(tx, account.as_str(), &valid.sender_key)?;
    if let Some(leaf) = &valid.leaf {
        leaf.run(tx)?;
    }
    charge(tx, account, Kind::Proposal, &valid.message, budget)?;
    let archived = tx.append(account.as_str(), valid.epoch, Kind::Proposal, &sender_device, None, &valid.message)?;
    Ok(Delivered {
        archived,
        epoch: valid.epoch,
        kind: Kind::Proposal,
        sender_device,
        epoch_check: None,
        message: valid.message,
        feed: tx.feed()?,
        removed: Vec::new(),
        welcome: None,
    })
}

/// Room in a tree page's payload for the `<tree/>` element around the
/// nodes' base64.

/// The version of the group's public state that `state` records.
pub(super) fn version(state: &GroupState) -> Version {
    (state.epoch, state.queued)
}

impl Service {
    pub(super) fn group_jid(&self, group_id: &[u8]) -> String {
        format!("{}@{}", crate::protocol::address::group_node(group_id), self.config.component.jid)
    }

    /// The group's PublicGroup in the epoch `state` records: the cached
    /// one, or decoded from the store (then `state` is read anew with it:
    /// `wrong-epoch` if the group has left that epoch since).
    pub(super) async fn public_group(&self, group_id: &[u8], state: GroupState) -> Result<(GroupState, PublicGroup), ServiceError> {
        if let Some(pg) = self.states.take(group_id, version(&state)) {
            return Ok((state, pg));
        }
        let epoch = state.epoch;
        let (state, public) = self.store.group_snapshot(group_id.to_vec()).await?.ok_or(ServiceError::UnknownGroup)?;
        if state.epoch != epoch {
            return Err(wrong_epoch(&state));
        }
        let (gid, crypto) = (group_id.to_vec(), self.crypto.clone());
        let pg = blocking(move || stored_group(&crypto, &public, &gid)).await?;
        Ok((state, pg))
    }

    /// A new group from its creator's GroupInfo: every leaf passes the AS
    /// check and one of them is the creator's. The checks that need no
    /// signature come first (size, quota, device lists); the tree is
    /// verified outside the writer; the store decides (a group id is
    /// created once, the quota and the device lists as they are then).
    pub(super) async fn create_group(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let create = Create::parse(&req.payload)?;
        if self.store.group_exists(group_id.to_vec()).await? {
            return Err(ServiceError::GroupExists);
        }
        let (gi, tree) = mls::group_info(&create.group_info, group_id).map_err(ServiceError::InvalidMessage)?;
        let tree = tree.ok_or(ServiceError::InvalidMessage(Invalid::MissingTree))?;
        check_size(tree.leaves().count(), &self.config.groups)?;
        let account = req.from.to_bare();
        if self.store.joined_groups(account.to_string()).await? >= self.config.groups.max_groups_per_account as u64 {
            return Err(ServiceError::Limit(AppCondition::TooManyGroups));
        }
        let leaves: Vec<LeafCheck> =
            tree.leaves().map(|l| LeafCheck::new(l.credential(), l.signature_key().as_slice(), None)).collect();
        self.precheck_leaves(&leaves, &account).await?;
        if let Some(key) = self.store.service_keys().await?.first() {
            if !super::sender::lists(gi.group_context().extensions().external_senders(), &self.config.component.jid, key) {
                return Err(ServiceError::Refused(AppCondition::ExternalSenderRequired));
            }
        }
        let crypto = self.crypto.clone();
        let (pg, state) = blocking(move || {
            let codec = StateCodec::default();
            let (pg, _) = PublicGroup::from_external(crypto.as_ref(), &codec, tree, gi, ProposalStore::new())
                .map_err(|_| ServiceError::InvalidMessage(Invalid::Invalid))?;
            Ok((pg, PublicState { blob: codec.blob().map_err(library)?, ..PublicState::default() }))
        })
        .await?;
        let (limits, members) = (self.config.groups.clone(), members_of(&pg));
        let epoch = pg.group_context().epoch().as_u64();
        self.store
            .group_tx(group_id.to_vec(), move |tx| {
                check_create(tx, &leaves, &account, &limits)?;
                if !tx.create(epoch, &create.group_info, &state)? {
                    return Err(ServiceError::GroupExists);
                }
                tx.change_members(&[], &members, 0)?;
                Ok(())
            })
            .await?;
        self.states.put(group_id, (epoch, 0), pg);
        Ok(Response::default())
    }

    /// The AS check of a create's leaves against the device lists as read
    /// now, one of them the creator's: before any signature is verified
    /// (the deciding transaction checks again).
    async fn precheck_leaves(&self, leaves: &[LeafCheck], creator: &BareJid) -> Result<(), ServiceError> {
        let now = crate::protocol::now();
        let mut devices: HashMap<BareJid, Vec<Device>> = HashMap::new();
        let mut found = false;
        for leaf in leaves {
            let account = leaf.account()?;
            if !devices.contains_key(&account) {
                devices.insert(account.clone(), self.store.live_devices(account.to_string(), now).await?);
            }
            leaf.check(&account, &devices[&account])?;
            found |= account == *creator;
        }
        found.then_some(()).ok_or(ServiceError::NotAMember)
    }

    pub(super) async fn commit(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let mut bundle = CommitBundle::parse(&req.payload)?;
        if let Some(parts) = bundle.parts {
            bundle.commit = self.uploaded_commit(group_id, &req.from.to_bare(), parts).await?;
        }
        if let Some(earlier) = self.resent(req, group_id, Kind::Commit, &bundle.commit).await? {
            return Ok(Response::result(accepted_as(earlier.epoch + 1, earlier.archived)));
        }
        let state = self.precheck(req, group_id, &bundle.commit, ContentType::Commit).await?;
        let (state, pg) = self.public_group(group_id, state).await?;
        let (crypto, account, groups) = (self.crypto.clone(), req.from.to_bare(), self.config.groups.clone());
        let (from, tree_page, read) = (state.epoch, self.page_octets(), state.clone());
        let validated =
            blocking(move || Ok(validate_commit(&crypto, &groups, tree_page, &read, pg, &account, bundle))).await?;
        let (valid, pg) = self.cached_again(group_id, &state, validated)?;
        let limits = CommitLimits {
            budget: self.archive_budget(),
            component: self.config.component.jid.clone(),
            grace: self.config.groups.proposal_grace_secs,
        };
        let (crypto, account, jid) = (self.crypto.clone(), req.from.to_bare(), self.group_jid(group_id));
        let (delivered, proposals, pg) = self
            .store
            .group_tx(group_id.to_vec(), move |tx| decide_commit(tx, &crypto, &limits, &jid, &account, valid, pg))
            .await?;
        self.states.put(group_id, (from + 1, proposals.len() as u64), pg);
        let mut response = self.deliver(group_id, delivered, req);
        response.issued = self.issued(group_id, &proposals);
        Ok(response)
    }

    pub(super) async fn propose(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let proposal = Proposal::parse(&req.payload)?;
        if let Some(earlier) = self.resent(req, group_id, Kind::Proposal, &proposal.message).await? {
            return Ok(Response::result(accepted_as(earlier.epoch, earlier.archived)));
        }
        let state = self.precheck(req, group_id, &proposal.message, ContentType::Proposal).await?;
        let (state, pg) = self.public_group(group_id, state).await?;
        let (crypto, account) = (self.crypto.clone(), req.from.to_bare());
        let validated = blocking(move || Ok(validate_proposal(&crypto, pg, &account, proposal.message))).await?;
        let (valid, pg) = self.cached_again(group_id, &state, validated)?;
        let (account, budget) = (req.from.to_bare(), self.archive_budget());
        let delivered =
            self.store.group_tx(group_id.to_vec(), move |tx| decide_proposal(tx, budget, &account, valid)).await?;
        self.states.put(group_id, (state.epoch, state.queued + 1), pg);
        Ok(self.deliver(group_id, delivered, req))
    }

    /// A validation's outcome; a failed one gives its group back to the
    /// cache if it left it unchanged.
    fn cached_again<T>(&self, group_id: &[u8], state: &GroupState, outcome: Result<T, Failed>) -> Result<T, ServiceError> {
        outcome.map_err(|(e, pg)| {
            if let Some(pg) = pg {
                self.states.put(group_id, version(state), pg);
            }
            e
        })
    }

    /// How a handshake the requester's account sent before was accepted, if
    /// this is a resend of it (xep/ §Resends): answered as it was then,
    /// nothing archived or delivered again.
    async fn resent(&self, req: &IqRequest, group_id: &[u8], kind: Kind, message: &[u8]) -> Result<Option<Acceptance>, ServiceError> {
        let account = req.from.to_bare().to_string();
        Ok(self.store.acceptance(group_id.to_vec(), account, kind, message.to_vec()).await?)
    }

    /// The checks of a handshake that need no signature, against the
    /// stored state: unknown group, decoding, epoch, and the sender it
    /// claims. A handshake refused by them costs two point reads. Returns the
    /// state checked against.
    async fn precheck(&self, req: &IqRequest, group_id: &[u8], bytes: &[u8], content: ContentType) -> Result<GroupState, ServiceError> {
        let state = self.store.group_state(group_id.to_vec()).await?.ok_or(ServiceError::UnknownGroup)?;
        let message = current_epoch(&state, bytes, group_id, content)?;
        claimed_sender(&self.store, group_id, &message, &req.from.to_bare()).await?;
        Ok(state)
    }

    /// The latest GroupInfo, for members (and their accounts' new devices).
    pub(super) async fn group_info(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let state = self.store.group_state(group_id.to_vec()).await?.ok_or(ServiceError::UnknownGroup)?;
        self.require_member_account(group_id, &req.from.to_bare()).await?;
        Ok(Response::result(group_info_element(state.epoch, &state.group_info)))
    }

    pub(super) async fn require_member_account(&self, group_id: &[u8], account: &BareJid) -> Result<(), ServiceError> {
        match self.store.has_member_account(group_id.to_vec(), account.to_string()).await? {
            true => Ok(()),
            false => Err(ServiceError::NotAMember),
        }
    }

    /// A page of the group's ratchet tree of an epoch, for member accounts
    /// (and so for the joiners of a Welcome): a kept one, or the current
    /// epoch's, kept at its first request.
    pub(super) async fn tree(&self, req: &IqRequest, group_id: &[u8]) -> Result<Response, ServiceError> {
        let request = TreeRequest::parse(&req.payload)?;
        let state = self.store.group_state(group_id.to_vec()).await?.ok_or(ServiceError::UnknownGroup)?;
        self.require_member_account(group_id, &req.from.to_bare()).await?;
        let (pages, nodes) = match self.store.tree_page(group_id.to_vec(), request.epoch, request.page).await? {
            Some(page) => page,
            None if request.epoch == state.epoch => self.keep_current_tree(group_id, state, request.page).await?,
            None => return Err(ServiceError::TreeUnavailable),
        };
        let page = TreePage { epoch: request.epoch, page: request.page, pages, nodes };
        Ok(Response::result(page.to_element()))
    }

    /// Keeps the tree of the group's current epoch (`state`); its page
    /// `page` and how many pages it has.
    async fn keep_current_tree(&self, group_id: &[u8], state: GroupState, page: u64) -> Result<(u64, Vec<u8>), ServiceError> {
        let (state, pg) = self.public_group(group_id, state).await?;
        let budget = self.page_octets();
        let (pages, pg) = blocking(move || Ok((tree_pages(&pg, budget)?, pg))).await?;
        self.states.put(group_id, version(&state), pg);
        self.store.keep_tree(group_id.to_vec(), state.epoch, pages.clone()).await?;
        let count = pages.len() as u64;
        pages.into_iter().nth(page as usize).map(|p| (count, p)).ok_or(ServiceError::TreeUnavailable)
    }

    /// The octets of a page (of a tree or a message in parts): its base64
    /// within max-payload-size.
    pub(super) fn page_octets(&self) -> usize {
        page_octets(self.config.limits.max_payload_size)
    }

    /// The archived message, to every device on the feed (the sender's own
    /// echo included), with its stanza id.
    pub(super) fn fan_out(&self, group_id: &[u8], d: &Delivered, id: Option<&str>) -> Copies {
        let group_jid = self.group_jid(group_id);
        let (message, parts) = carried(&d.message, self.page_octets());
        let payload = GroupMessage {
            message,
            parts,
            kind: Some(d.kind),
            epoch: Some(d.epoch),
            epoch_check: d.epoch_check.clone(),
            position: Some(d.archived.seq),
        }
        .to_element();
        let from = sender_jid(&group_jid, &d.sender_device);
        let stanza_id = Element::builder("stanza-id", crate::protocol::NS_SID)
            .attr(n("by"), group_jid.as_str())
            .attr(n("id"), d.archived.stanza_id.as_str())
            .build();
        let stanza = Element::builder("message", CLIENT)
            .attr(n("from"), from.as_str())
            .attr(n("type"), "groupchat")
            .attr(n("id"), id.unwrap_or(&d.archived.stanza_id))
            .append(payload)
            .append_all(copy_hint(d.kind))
            .append(stanza_id)
            .build();
        Copies::new(stanza, d.feed.iter().map(|f| f.full_jid.clone()).collect())
    }

    /// The IQ result, the fan-out in archive order, Welcomes and the
    /// presences of devices that left.
    fn deliver(&self, group_id: &[u8], d: Delivered, req: &IqRequest) -> Response {
        let group_jid = self.group_jid(group_id);
        let new_epoch = if d.kind == Kind::Commit { d.epoch + 1 } else { d.epoch };
        let copies = self.fan_out(group_id, &d, Some(&req.id));
        let mut messages = Vec::new();
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
            copies: Some(copies),
            messages,
            order: Some((group_id.to_vec(), d.archived.seq)),
            reply_last: false,
            issued: Vec::new(),
        }
    }

}

fn accepted_as(epoch: u64, archived: Archived) -> Element {
    Accepted { epoch, stanza_id: archived.stanza_id, position: archived.seq }.to_element()
}

/// How an archived MLSMessage travels in a stanza: itself, or named by its
/// SHA-256 and size when it is larger than a page (xep/ §Commits in Parts).
pub(super) fn carried(message: &[u8], page: usize) -> (Vec<u8>, Option<Parts>) {
    match message.len() > page {
        true => (Vec::new(), Some(Parts::of(message))),
        false => (message.to_vec(), None),
    }
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

#[cfg(test)]
mod tests {
    //! The Delivery Service's decisions without an XMPP server: real MLS
    //! clients (openmls `MlsGroup`s) send handshakes straight to [`Service`]
    //! on a temporary store, and each test asserts the exact answer or error
    //! and what the store then holds.

    use std::sync::Arc;

    use minidom::Element;
    use openmls::group::{MlsGroup, ProcessedWelcome, StagedWelcome};
    use openmls::prelude::{
        BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use openmls_traits::types::SignatureScheme;
    use openmls_traits::OpenMlsProvider;
    use tls_codec::{Deserialize as _, Serialize as _};
    use xmpp_parsers::jid::{BareJid, Jid};

    use super::*;
    use crate::service::{IqKind, IqRequest, Service, ServiceError};
    use crate::client::CIPHERSUITE;
    use crate::config::Config;
    use crate::protocol::address::{group_node, Address};
    use crate::protocol::devices::Device;
    use crate::protocol::error::AppCondition;
    use crate::protocol::groups::{epoch_check, CommitBundle, Create, Part, PartRequest, PartUpload, Proposal};
    use crate::protocol::mls::Invalid;
    use crate::store::{Source, Store};

    const DOMAIN: &str = "mls.example.org";

    /// One device of its own account, `<name>@example.org`.
    pub(super) struct Member {
        pub account: BareJid,
        signer: SignatureKeyPair,
        provider: OpenMlsRustCrypto,
    }

    impl Member {
        pub(super) fn new(name: &str) -> Self {
            Self {
                account: BareJid::new(&format!("{name}@example.org")).unwrap(),
                signer: SignatureKeyPair::new(SignatureScheme::ED25519).unwrap(),
                provider: OpenMlsRustCrypto::default(),
            }
        }

        fn jid(&self) -> Jid {
            Jid::new(&format!("{}/dev", self.account)).unwrap()
        }

        fn credential(&self) -> CredentialWithKey {
            CredentialWithKey {
                credential: BasicCredential::new(format!("xmpp:{}", self.account).into_bytes()).into(),
                signature_key: self.signer.to_public_vec().into(),
            }
        }

        fn key_package(&self) -> KeyPackage {
            KeyPackage::builder().build(CIPHERSUITE, &self.provider, &self.signer, self.credential()).unwrap().key_package().clone()
        }
    }

    fn bytes(m: &MlsMessageOut) -> Vec<u8> {
        m.tls_serialize_detached().unwrap()
    }

    /// A service on a fresh store (`extra`: TOML added to the configuration).
    pub(super) struct Ds {
        _scratch: crate::store::tests::Scratch,
        pub store: Store,
        service: Arc<Service>,
        config: Arc<Config>,
        pub id: [u8; 16],
    }

    impl Ds {
        pub(super) async fn new(members: &[&Member], extra: &str) -> Self {
            let scratch = crate::store::tests::Scratch::new();
            let text = format!("[component]\njid = \"{DOMAIN}\"\nsecret = \"t\"\n{extra}");
            let mut config = Config::from_toml(&text, std::iter::empty()).unwrap();
            config.store = scratch.config.clone();
            let config = Arc::new(config);
            let store = Store::open(&config.store).unwrap();
            let now = crate::protocol::now();
            for m in members {
                let device = Device { id: "dev".into(), signature_key: m.signer.to_public_vec(), label: None, expires: Some(i64::MAX / 2) };
                store.publish_device(m.account.to_string(), device, Element::bare("event", "urn:x"), 16, now).await.unwrap();
            }
            let service = Arc::new(Service::new(config.clone(), store.clone()));
            Self { _scratch: scratch, store, service, config, id: rand::random() }
        }

        /// Another service process on the same store (its own cache).
        fn second(&self) -> Arc<Service> {
            Arc::new(Service::new(self.config.clone(), self.store.clone()))
        }

        fn request(&self, from: &Member, payload: Element) -> IqRequest {
            let to = Jid::new(&format!("{}@{DOMAIN}", group_node(&self.id))).unwrap();
            IqRequest { id: "t".into(), from: from.jid(), address: Address::parse(&to).unwrap(), to, kind: IqKind::Set, payload }
        }

        async fn send(&self, service: &Service, from: &Member, payload: Element) -> Result<Element, ServiceError> {
            Ok(service.handle_iq(&self.request(from, payload)).await?.payload.unwrap_or_else(|| Element::bare("none", "urn:x")))
        }

        /// `owner` creates the group with the other `members` in it; returns
        /// every member's group, the owner's first.
        pub(super) async fn create(&self, owner: &Member, members: &[&Member]) -> Vec<MlsGroup> {
            let config = crate::client::groups::create_config(Default::default());
            let mut group =
                MlsGroup::new_with_group_id(&owner.provider, &owner.signer, &config, GroupId::from_slice(&self.id), owner.credential())
                    .unwrap();
            let mut others = Vec::new();
            if !members.is_empty() {
                let kps: Vec<KeyPackage> = members.iter().map(|m| m.key_package()).collect();
                let (_, welcome, _) = group.add_members(&owner.provider, &owner.signer, &kps).unwrap();
                group.merge_pending_commit(&owner.provider).unwrap();
                others = members.iter().map(|m| join(m, &welcome)).collect();
            }
            let info = group.export_group_info(owner.provider.crypto(), &owner.signer, true).unwrap();
            self.send(&self.service, owner, Create { group_info: bytes(&info) }.to_element()).await.unwrap();
            std::iter::once(group).chain(others).collect()
        }

        pub(super) async fn archived(&self) -> Vec<(String, u64)> {
            let page = self
                .store
                .archive_page(Source::Group(self.id.to_vec()), Default::default(), crate::store::PageStart::First, 100)
                .await
                .unwrap();
            page.items.iter().map(|i| (i.kind.clone(), i.epoch)).collect()
        }

        async fn epoch(&self) -> u64 {
            self.store.group_state(self.id.to_vec()).await.unwrap().unwrap().epoch
        }
    }

    /// `member`'s group from a Welcome (the tree is in its GroupInfo).
    fn join(member: &Member, welcome: &MlsMessageOut) -> MlsGroup {
        let MlsMessageBodyIn::Welcome(welcome) = MlsMessageIn::tls_deserialize_exact(bytes(welcome)).unwrap().extract() else {
            panic!("not a Welcome")
        };
        StagedWelcome::new_from_welcome(&member.provider, &crate::client::groups::join_config(), welcome, None).unwrap().into_group(&member.provider).unwrap()
    }

    /// `member`'s commit (pending in `group`) as a bundle.
    pub(super) fn bundle(group: &mut MlsGroup, member: &Member, add: &[&Member]) -> CommitBundle {
        bundle_with_tree(group, member, add, true)
    }

    /// As [`bundle`], the tree in its GroupInfo and Welcome if `inline`.
    fn bundle_with_tree(group: &mut MlsGroup, member: &Member, add: &[&Member], inline: bool) -> CommitBundle {
        let staged = if add.is_empty() {
            group.commit_builder().force_self_update(true).consume_proposal_store(true)
        } else {
            group.commit_builder().propose_adds(add.iter().map(|m| m.key_package())).consume_proposal_store(true)
        }
        .load_psks(member.provider.storage())
        .unwrap()
        .use_ratchet_tree_extension(inline)
        .build(member.provider.rand(), member.provider.crypto(), &member.signer, |_| true)
        .unwrap()
        .stage_commit(&member.provider)
        .unwrap();
        let check = group.pending_commit().and_then(|c| c.epoch_authenticator()).map(|a| epoch_check(a.as_slice())).unwrap();
        let (commit, welcome, info) = staged.into_messages();
        CommitBundle { commit: bytes(&commit), parts: None, welcome: welcome.as_ref().map(bytes), group_info: bytes(&info.unwrap()), epoch_check: check }
    }

    /// `<accepted epoch='…'/>`'s epoch.
    fn accepted_epoch(answer: &Element) -> u64 {
        assert_eq!(answer.name(), "accepted", "{answer:?}");
        answer.attr("epoch").unwrap().parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_valid_commit_is_accepted_and_archived_in_its_epoch() {
        let (alice, bob) = (Member::new("alice"), Member::new("bob"));
        let ds = Ds::new(&[&alice, &bob], "").await;
        let mut groups = ds.create(&alice, &[&bob]).await;
        assert_eq!(ds.epoch().await, 1, "the group starts in the epoch of its GroupInfo");
        let b = bundle(&mut groups[0], &alice, &[]);
        assert_eq!(accepted_epoch(&ds.send(&ds.service, &alice, b.to_element()).await.unwrap()), 2);
        assert_eq!(ds.epoch().await, 2);
        assert_eq!(ds.archived().await, [("commit".to_string(), 1)]);
    }

    /// Two members' commits of one epoch, validated concurrently: exactly one
    /// wins; the other gets `wrong-epoch` naming the winner, and the archive
    /// holds one commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_commits_of_one_epoch_exactly_one_wins() {
        for _ in 0..4 {
            let (alice, bob) = (Member::new("alice"), Member::new("bob"));
            let ds = Ds::new(&[&alice, &bob], "").await;
            let mut groups = ds.create(&alice, &[&bob]).await;
            let a = bundle(&mut groups[0], &alice, &[]);
            let b = bundle(&mut groups[1], &bob, &[]);
            let (first, second) =
                tokio::join!(ds.send(&ds.service, &alice, a.to_element()), ds.send(&ds.service, &bob, b.to_element()));
            let (won, lost) = match (first, second) {
                (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
                other => panic!("exactly one must win: {other:?}"),
            };
            assert_eq!(accepted_epoch(&won), 2);
            let ServiceError::WrongEpoch(w) = lost else { panic!("{lost:?}") };
            assert_eq!((w.epoch, w.commit.as_deref()), (2, won.attr("stanza-id")));
            assert_eq!(ds.archived().await, [("commit".to_string(), 1)], "one commit in the epoch");
        }
    }

    /// A proposal is queued in its epoch; a commit carrying it by reference is
    /// accepted; the same proposal's epoch is then over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_proposal_is_queued_for_its_epoch_and_committed_by_reference() {
        let (alice, bob) = (Member::new("alice"), Member::new("bob"));
        let ds = Ds::new(&[&alice, &bob], "").await;
        let mut groups = ds.create(&alice, &[&bob]).await;
        let (update, _) = groups[1].propose_self_update(&bob.provider, &bob.signer, Default::default()).unwrap();
        let proposal = Proposal { message: bytes(&update) };
        assert_eq!(accepted_epoch(&ds.send(&ds.service, &bob, proposal.to_element()).await.unwrap()), 1);
        assert_eq!(ds.store.group_state(ds.id.to_vec()).await.unwrap().unwrap().queued, 1);
        let received = MlsMessageIn::tls_deserialize_exact(bytes(&update)).unwrap().try_into_protocol_message().unwrap();
        let processed = groups[0].process_message(&alice.provider, received).unwrap();
        let openmls::prelude::ProcessedMessageContent::ProposalMessage(queued) = processed.into_content() else { panic!() };
        groups[0].store_pending_proposal(alice.provider.storage(), *queued).unwrap();
        let commit = bundle(&mut groups[0], &alice, &[]);
        assert_eq!(accepted_epoch(&ds.send(&ds.service, &alice, commit.to_element()).await.unwrap()), 2);
        assert_eq!(ds.store.group_state(ds.id.to_vec()).await.unwrap().unwrap().queued, 0, "the epoch's queue is gone");
        let resent = ds.send(&ds.service, &bob, Proposal { message: bytes(&update) }.to_element()).await.unwrap();
        assert_eq!((accepted_epoch(&resent), resent.attr("position")), (1, Some("1")), "a resend is answered as before");
        let (late, _) = groups[1].propose_self_update(&bob.provider, &bob.signer, Default::default()).unwrap();
        let late = ds.send(&ds.service, &bob, Proposal { message: bytes(&late) }.to_element()).await;
        assert!(matches!(late, Err(ServiceError::WrongEpoch(ref w)) if w.epoch == 2), "{late:?}");
        assert_eq!(ds.archived().await, [("proposal".to_string(), 1), ("commit".to_string(), 1)]);
    }

    /// A bundle whose GroupInfo is not of the state the commit leads to is
    /// refused and changes nothing; the group's next valid commit is accepted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_info_of_another_state_is_refused_and_changes_nothing() {
        let (alice, bob) = (Member::new("alice"), Member::new("bob"));
        let ds = Ds::new(&[&alice, &bob], "").await;
        let mut groups = ds.create(&alice, &[&bob]).await;
        let mut b = bundle(&mut groups[0], &alice, &[]);
        let stale_info = groups[0].export_group_info(alice.provider.crypto(), &alice.signer, true).unwrap();
        let good_info = std::mem::replace(&mut b.group_info, bytes(&stale_info));
        let refused = ds.send(&ds.service, &alice, b.to_element()).await;
        assert!(matches!(refused, Err(ServiceError::InvalidMessage(Invalid::GroupInfoMismatch))), "{refused:?}");
        assert_eq!((ds.epoch().await, ds.archived().await.len()), (1, 0));
        b.group_info = good_info;
        assert_eq!(accepted_epoch(&ds.send(&ds.service, &alice, b.to_element()).await.unwrap()), 2);
    }

    /// groups.max_members: a commit growing the group past it is refused with
    /// too-many-members and archives nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_past_the_member_limit_is_refused() {
        let (alice, bob, carol) = (Member::new("alice"), Member::new("bob"), Member::new("carol"));
        let ds = Ds::new(&[&alice, &bob, &carol], "[groups]\nmax_members = 2\n").await;
        let mut groups = ds.create(&alice, &[&bob]).await;
        let add = bundle(&mut groups[0], &alice, &[&carol]);
        let refused = ds.send(&ds.service, &alice, add.to_element()).await;
        assert!(matches!(refused, Err(ServiceError::Limit(AppCondition::TooManyMembers))), "{refused:?}");
        assert_eq!((ds.epoch().await, ds.archived().await.len()), (1, 0));
    }

    /// In a group whose tree is full, a self-update is small beside the
    /// group's state: it is logged, not written whole; another process,
    /// reading the group from the store, replays it and accepts the next
    /// commit; the next whole state replaces the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_logged_commit_is_replayed_by_a_process_that_reads_the_group() {
        let people: Vec<Member> = (0..8).map(|i| Member::new(&format!("m{i}"))).collect();
        let refs: Vec<&Member> = people.iter().collect();
        let ds = Ds::new(&refs, "").await;
        let mut groups = ds.create(refs[0], &refs[1..]).await;
        // Every member updates once: the tree's parent nodes fill.
        for (i, who) in people.iter().enumerate() {
            let b = bundle(&mut groups[i], who, &[]);
            accepted_epoch(&ds.send(&ds.service, who, b.to_element()).await.unwrap());
            groups[i].merge_pending_commit(&who.provider).unwrap();
            let commit = MlsMessageIn::tls_deserialize_exact(&b.commit).unwrap();
            for (j, (other, group)) in people.iter().zip(groups.iter_mut()).enumerate().filter(|(j, _)| *j != i) {
                let processed = group.process_message(&other.provider, commit.clone().try_into_protocol_message().unwrap()).unwrap();
                let openmls::prelude::ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else { panic!("{j}") };
                group.merge_staged_commit(&other.provider, *staged).unwrap();
            }
        }
        let b = bundle(&mut groups[0], &people[0], &[]);
        let epoch = accepted_epoch(&ds.send(&ds.service, &people[0], b.to_element()).await.unwrap());
        groups[0].merge_pending_commit(&people[0].provider).unwrap();
        let state = ds.store.group_state(ds.id.to_vec()).await.unwrap().unwrap();
        assert_eq!(state.log_bytes, b.commit.len() as u64, "a small commit is logged (whole state: {} octets)", state.state_bytes);
        let b = bundle(&mut groups[0], &people[0], &[]);
        assert_eq!(accepted_epoch(&ds.send(&ds.second(), &people[0], b.to_element()).await.unwrap()), epoch + 1, "replayed");
        groups[0].merge_pending_commit(&people[0].provider).unwrap();
        let (_, public) = ds.store.group_snapshot(ds.id.to_vec()).await.unwrap().unwrap();
        let replayed = stored_group(&RustCrypto::default(), &public, &ds.id).unwrap();
        assert_eq!(bytes_of(&replayed.export_ratchet_tree()), bytes_of(&groups[0].export_ratchet_tree()));
        assert_eq!(replayed.group_context().epoch().as_u64(), epoch + 1);
    }

    /// Two service processes on one store, each with its cache: each commit
    /// moves the group under the other's cached state, which must then be
    /// read anew, never trusted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_state_another_process_moved_past_is_read_anew() {
        let (alice, bob) = (Member::new("alice"), Member::new("bob"));
        let ds = Ds::new(&[&alice, &bob], "").await;
        let other = ds.second();
        let mut groups = ds.create(&alice, &[&bob]).await;
        for epoch in 2..=5u64 {
            let service = if epoch % 2 == 0 { &ds.service } else { &other };
            let b = bundle(&mut groups[0], &alice, &[]);
            assert_eq!(accepted_epoch(&ds.send(service, &alice, b.to_element()).await.unwrap()), epoch);
            groups[0].merge_pending_commit(&alice.provider).unwrap();
        }
        let epochs: Vec<u64> = ds.archived().await.iter().map(|(_, e)| *e).collect();
        assert_eq!(epochs, [1, 2, 3, 4], "one commit in each epoch");
    }

    /// Two commits of one epoch validated against the same snapshot: the
    /// first decided wins; the second, decided after it, gets `wrong-epoch`
    /// naming the winner, and nothing of it is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_validated_commits_of_one_epoch_the_first_decided_wins() {
        let (alice, bob) = (Member::new("alice"), Member::new("bob"));
        let ds = Ds::new(&[&alice, &bob], "").await;
        let mut groups = ds.create(&alice, &[&bob]).await;
        let (a, b) = (bundle(&mut groups[0], &alice, &[]), bundle(&mut groups[1], &bob, &[]));
        let (crypto, groups_config) = (RustCrypto::default(), GroupsConfig::default());
        let mut validated = Vec::new();
        for (who, commit) in [(&alice, a), (&bob, b)] {
            let (state, public) = ds.store.group_snapshot(ds.id.to_vec()).await.unwrap().unwrap();
            let pg = stored_group(&crypto, &public, &ds.id).unwrap();
            let Ok(valid) = validate_commit(&crypto, &groups_config, 96 * 1024, &state, pg, &who.account, commit) else {
                panic!("a valid commit")
            };
            validated.push((who.account.clone(), valid));
        }
        let mut decided = Vec::new();
        for (account, (valid, pg)) in validated {
            let budget = ArchiveBudget { group_bytes_per_day: u64::MAX, account_bytes_per_day: u64::MAX };
            let limits = CommitLimits { budget, component: "mls.example.org".into(), grace: 60 };
            let outcome = ds.store.group_tx(ds.id.to_vec(), move |tx| {
                decide_commit(tx, &RustCrypto::default(), &limits, "g@mls.example.org", &account, valid, pg)
                    .map(|(delivered, _, _)| delivered.archived)
            });
            decided.push(outcome.await);
        }
        let won = decided[0].as_ref().expect("the first decided wins");
        assert!(
            matches!(&decided[1], Err(ServiceError::WrongEpoch(w)) if w.epoch == 2 && w.commit.as_ref() == Some(&won.stanza_id)),
            "{:?}",
            decided[1]
        );
        assert_eq!(ds.archived().await, [("commit".to_string(), 1)]);
    }

    /// `who`'s IQ of type get with `payload`.
    fn get(ds: &Ds, who: &Member, payload: Element) -> IqRequest {
        IqRequest { kind: IqKind::Get, ..ds.request(who, payload) }
    }

    /// A Commit larger than a page (a service with a small max-payload-size)
    /// is uploaded in parts, named in its bundle, accepted, delivered by
    /// name and fetched in parts; parts out of order, a name of octets not
    /// uploaded and other accounts are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_in_parts_is_accepted_delivered_by_name_and_fetched() {
        let [alice, bob, carol, dave, erin] = ["alice", "bob", "carol", "dave", "erin"].map(Member::new);
        let ds = Ds::new(&[&alice, &bob, &carol, &dave, &erin], "").await;
        let mut groups = ds.create(&alice, &[&bob, &carol, &dave]).await;
        let mut config = (*ds.config).clone();
        config.limits.max_payload_size = 1024;
        let small = Service::new(Arc::new(config), ds.store.clone());
        let page = small.page_octets();
        small.join_feed(&bob.jid(), &ds.id, "dev").await.unwrap();
        let mut update = bundle_with_tree(&mut groups[0], &alice, &[], false);
        let commit = std::mem::take(&mut update.commit);
        assert!(commit.len() > page, "{} octets: more than a page of {page}", commit.len());
        let parts = Parts::of(&commit);
        update.parts = Some(parts);
        let upload = |offset: usize, end: usize| PartUpload { parts, offset: offset as u64, octets: commit[offset..end].to_vec() };
        let out_of_order = small.handle_iq(&ds.request(&alice, upload(page, commit.len()).to_element())).await;
        assert!(matches!(out_of_order, Err(ServiceError::PartOutOfOrder)), "{out_of_order:?}");
        let stranger = small.handle_iq(&ds.request(&erin, upload(0, page).to_element())).await;
        assert!(matches!(stranger, Err(ServiceError::NotAMember)), "{stranger:?}");
        small.handle_iq(&ds.request(&alice, upload(0, page).to_element())).await.unwrap();
        let early = small.handle_iq(&ds.request(&alice, update.to_element())).await;
        assert!(matches!(early, Err(ServiceError::PartsMissing)), "half uploaded: {early:?}");
        small.handle_iq(&ds.request(&alice, upload(page, commit.len()).to_element())).await.unwrap();
        let accepted = small.handle_iq(&ds.request(&alice, update.to_element())).await.unwrap();
        assert_eq!(accepted_epoch(accepted.payload.as_ref().unwrap()), 2);
        let copies = accepted.copies.as_ref().expect("copies");
        assert_eq!(copies.to(), [bob.jid().to_string()], "bob's device on the feed");
        let named = GroupMessage::find(&copies.copy_to("x")).unwrap().unwrap();
        assert_eq!((named.parts, named.message.len(), named.kind, named.position), (Some(parts), 0, Some(Kind::Commit), Some(1)));
        let mut fetched = Vec::new();
        while fetched.len() < commit.len() {
            let request = PartRequest { position: 1, offset: fetched.len() as u64 }.to_element();
            let part = Part::parse(&small.handle_iq(&get(&ds, &bob, request)).await.unwrap().payload.unwrap()).unwrap();
            assert_eq!((part.position, part.offset, part.size), (1, fetched.len() as u64, commit.len() as u64));
            assert!(part.octets.len() <= page);
            fetched.extend(part.octets);
        }
        assert_eq!(fetched, commit, "the archived Commit, octet for octet");
        let outsider = small.handle_iq(&get(&ds, &erin, PartRequest { position: 1, offset: 0 }.to_element())).await;
        assert!(matches!(outsider, Err(ServiceError::NotAMember)), "{outsider:?}");
        let beyond = small.handle_iq(&get(&ds, &bob, PartRequest { position: 2, offset: 0 }.to_element())).await;
        assert!(matches!(beyond, Err(ServiceError::NotFound)), "{beyond:?}");
        let again = small.handle_iq(&ds.request(&alice, update.to_element())).await.unwrap();
        assert_eq!(again.payload, accepted.payload, "a resend is answered as before");
        assert!(again.copies.is_none() && again.messages.is_empty(), "and delivered once");
        let message = MlsMessageIn::tls_deserialize_exact(&fetched).unwrap().try_into_protocol_message().unwrap();
        groups[1].process_message(&bob.provider, message).unwrap();
    }

    /// The tree of every page of epoch `epoch`, fetched as `who`.
    async fn fetch_tree(ds: &Ds, who: &Member, epoch: u64) -> Result<Vec<Vec<u8>>, ServiceError> {
        let (mut pages, mut page) = (Vec::new(), 0);
        loop {
            let mut req = ds.request(who, TreeRequest { epoch, page }.to_element());
            req.kind = IqKind::Get;
            let got = TreePage::parse(&ds.service.handle_iq(&req).await?.payload.unwrap()).unwrap();
            assert_eq!((got.epoch, got.page), (epoch, page));
            pages.push(got.nodes);
            page += 1;
            if page == got.pages {
                return Ok(pages);
            }
        }
    }

    /// A Welcome whose bundle leaves the tree out: the service keeps the
    /// new epoch's tree, the joiner fetches it and joins with it; a changed
    /// octet makes the join fail; other epochs and other accounts get no tree.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_joiner_fetches_the_tree_its_welcome_leaves_out() {
        let (alice, bob, carol, dave) = (Member::new("alice"), Member::new("bob"), Member::new("carol"), Member::new("dave"));
        let ds = Ds::new(&[&alice, &bob, &carol, &dave], "").await;
        let mut groups = ds.create(&alice, &[&bob]).await;
        let add = bundle_with_tree(&mut groups[0], &alice, &[&carol], false);
        assert!(mls::group_info(&add.group_info, &ds.id).unwrap().1.is_none(), "no tree inline");
        assert_eq!(accepted_epoch(&ds.send(&ds.service, &alice, add.to_element()).await.unwrap()), 2);
        groups[0].merge_pending_commit(&alice.provider).unwrap();
        let pages = fetch_tree(&ds, &carol, 2).await.unwrap();
        assert_eq!(bytes_of(&mls::tree_from_pages(&pages).unwrap()), bytes_of(&groups[0].export_ratchet_tree()), "the new epoch's");
        let mut tampered = pages.clone();
        let last = tampered[0].len() - 1;
        tampered[0][last] ^= 1;
        let (info, _) = mls::group_info(&add.group_info, &ds.id).unwrap();
        let bad = mls::tree_from_pages(&tampered)
            .map(|tree| PublicGroup::from_external(alice.provider.crypto(), &StateCodec::default(), tree, info, ProposalStore::new()));
        assert!(matches!(bad, Err(_) | Ok(Err(_))), "a changed octet is detected");
        let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(add.welcome.as_ref().unwrap()).unwrap().extract() else {
            panic!("not a Welcome")
        };
        let welcome = ProcessedWelcome::new_from_welcome(&carol.provider, &crate::client::groups::join_config(), w).unwrap();
        let tree = mls::tree_from_pages(&pages).unwrap();
        let joined = welcome.into_staged_welcome(&carol.provider, Some(tree)).unwrap().into_group(&carol.provider).unwrap();
        assert_eq!(joined.epoch_authenticator().as_slice(), groups[0].epoch_authenticator().as_slice());
        assert!(matches!(fetch_tree(&ds, &carol, 1).await, Err(ServiceError::TreeUnavailable)), "epoch 1 is not kept");
        assert!(matches!(fetch_tree(&ds, &dave, 2).await, Err(ServiceError::NotAMember)));
        let mut beyond = ds.request(&carol, TreeRequest { epoch: 2, page: 1 }.to_element());
        beyond.kind = IqKind::Get;
        assert!(matches!(ds.service.handle_iq(&beyond).await, Err(ServiceError::TreeUnavailable)));
        let update = bundle_with_tree(&mut groups[0], &alice, &[], false);
        assert_eq!(accepted_epoch(&ds.send(&ds.service, &alice, update.to_element()).await.unwrap()), 3);
        groups[0].merge_pending_commit(&alice.provider).unwrap();
        let current = fetch_tree(&ds, &bob, 3).await.unwrap();
        assert_eq!(bytes_of(&mls::tree_from_pages(&current).unwrap()), bytes_of(&groups[0].export_ratchet_tree()), "the current epoch's");
        assert_eq!(fetch_tree(&ds, &carol, 2).await.unwrap(), pages, "a Welcome's epoch stays kept");
    }

    fn bytes_of(v: &impl tls_codec::Serialize) -> Vec<u8> {
        v.tls_serialize_detached().unwrap()
    }
}
