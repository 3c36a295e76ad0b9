//! Groups on the client: create, add, remove, update, leave, send, and the
//! stream of events from the live feed and the inbox (xep/ §Groups).
//!
//! A [`Core`] is a device's protocol and MLS logic without I/O: it owns the
//! device and its MLS groups and talks through a [`Port`], which a driver
//! connects to a stream ([`super::GroupClient`] on tokio, [`super::Machine`]
//! by hand). Every change is a commit bundle; when another commit won the epoch the client
//! applies the winner from its feed and retries. After every commit it
//! compares its epoch check with the committer's and reports a fork.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use minidom::Element;
use openmls::group::{MlsGroupCreateConfig, MlsGroupJoinConfig, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY};
use openmls::prelude::{
    GroupId, KeyPackage, KeyPackageIn, LeafNodeIndex, MlsGroup, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    ProcessedMessageContent, ProcessedWelcome, ProtocolMessage, ProtocolVersion, RatchetTreeIn, Sender,
    SenderRatchetConfiguration,
};
use openmls::prelude::{Extension, Extensions, ExternalSender, GroupContext, LeafNodeParameters};
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, Serialize, Size as _};
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::StanzaError;

use super::device::Device;
use super::storage::{DeviceStorage, SqliteStorage};
use super::port::Port;
use super::session::ClientError;
use crate::protocol::address::{group_node, Address};
use crate::protocol::devices::NODE as DEVICES_NODE;
use crate::protocol::pubsub::{Event, NS_EVENT};
use crate::protocol::content::{encryption_hint, Content, ContentError, Envelope};
use crate::protocol::devices::Device as DeviceItem;
use crate::protocol::groups::{
    epoch_check, page_octets, parse_group_info, Accepted, CommitBundle, Create, GroupMessage, Kind, Part, PartRequest,
    PartUpload, Parts, Proposal, TreePage, TreeRequest, Welcome, WrongEpoch,
};
use crate::protocol::keypackages::{account_of, Claim, ClaimOutcome};
use crate::protocol::notices::Notice;
use crate::protocol::error::AppCondition;
use crate::protocol::{n, NS, NS_ERRORS, NS_SID};
use crate::xmpp::namespace::CLIENT;

/// How long a change waits for the commit that beat it to arrive.
const CATCH_UP: Duration = Duration::from_secs(10);
/// The longest a device waits before it commits a Remove proposal of the
/// service (xep/ §Service Removals).
const REMOVAL_JITTER: Duration = Duration::from_secs(2);
/// How long after handling new items a device on the feed acknowledges
/// them (xep/ History: Acknowledgements).
const ACK_DELAY: Duration = Duration::from_secs(5);
/// The largest ratchet tree this client fetches: about 80,000 leaves.
const FETCHED_MAX: usize = 64 * 1024 * 1024;
/// Attempts of one change before giving up.
const ATTEMPTS: usize = 30;
/// Past epochs whose application messages still decrypt (the service's window).
const PAST_EPOCHS: usize = 3;
/// Generations of a sender's ratchet kept for messages that arrive late, and
/// how far ahead of the last one a message may be (xep/ §Order).
const OUT_OF_ORDER_TOLERANCE: u32 = 64;
const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("MLS: {0}")]
    Mls(String),
    #[error("unknown group {0}")]
    UnknownGroup(String),
    #[error("the group {0} has forked: refusing to send into it")]
    Forked(String),
    #[error("no proposals to commit")]
    NothingPending,
    #[error("the commit bundle would be {0} octets, over the service's max-payload-size")]
    BundleTooBig(usize),
    /// The ratchet tree fetched from the service is not the group's
    /// (xep/ §Fetching the Ratchet Tree): never used.
    #[error("the ratchet tree from the service does not match the group: {0}")]
    BadTree(String),
    /// A message fetched in parts is not the one its SHA-256 names (xep/
    /// §Commits in Parts).
    #[error("the parts from the service are not the message named: {0}")]
    BadParts(String),
    #[error("{0}")]
    Other(String),
}

fn mls(e: impl std::fmt::Display) -> GroupError {
    GroupError::Mls(e.to_string())
}

/// What happened in the device's groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// The device is a member (it created the group, was welcomed or joined externally).
    Joined { group: BareJid },
    /// An application message from another device (of any account): the
    /// `<content/>` of its envelope (xep/ §Message Content).
    Message { group: BareJid, account: BareJid, device: String, content: Content, stanza_id: String },
    /// An application message from another device whose envelope this
    /// device refused (xep/ §Message Content): not shown.
    Discarded { group: BareJid, account: BareJid, device: String, stanza_id: String, reason: ContentError },
    /// This device's own message came back: its place in the order.
    Delivered { group: BareJid, id: String, stanza_id: String },
    /// A proposal by reference was received; the next commit will carry it.
    Proposed { group: BareJid, account: BareJid },
    /// The service proposed to remove a leaf whose device left its
    /// account's list (xep/ §Service Removals); this device commits it
    /// soon unless another member does first.
    RemovalProposed { group: BareJid, account: BareJid, device: String },
    /// A leaf whose signature key is not (or no longer) in its account's
    /// device list as this device has seen it (xep/ §Checking Leaves), by
    /// its key's [`fingerprint`]; this device commits its removal soon.
    UnlistedLeaf { group: BareJid, account: BareJid, fingerprint: String },
    /// A commit was applied; the members afterwards as (account, device).
    Epoch { group: BareJid, epoch: u64, members: Vec<(BareJid, String)> },
    /// This device was removed from the group.
    Removed { group: BareJid },
    /// The archive no longer held everything this device missed in the
    /// group (retention): it rejoined by external commit, and the messages
    /// in between are lost to it.
    HistoryPruned { group: BareJid },
    /// The committer's epoch check differs from ours: the group forked.
    Fork { group: BareJid, epoch: u64 },
    /// A message this device sent was not delivered: the service refused it
    /// or the XMPP server bounced it (the service was unreachable). `error`
    /// is the stanza error as `type/condition (app-condition)`.
    Refused { group: BareJid, id: String, error: String },
    /// A notice from the service said this device's KeyPackages ran low
    /// (or its last-resort package was handed out): the pool was refilled.
    Refilled(super::RefillReport),
}

/// A leaf as [`Core::leaf_keys`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafKey {
    pub account: BareJid,
    pub device: String,
    /// The signature key's [`fingerprint`].
    pub fingerprint: String,
    /// Whether the key is in the account's device list as this device has seen it.
    pub listed: bool,
}

/// A membership change.
enum Change {
    Add(Vec<KeyPackage>),
    RemoveAccount(BareJid),
    RemoveDevice(BareJid, String),
    Update,
    /// Commit the proposals received by reference.
    Pending,
    /// Commit the proposals received by reference and the removal of the
    /// leaves that are not in their account's device list.
    Revoke,
}

pub struct Core<S: DeviceStorage = SqliteStorage> {
    pub(super) port: Port,
    device: Device<S>,
    service: Jid,
    groups: HashMap<Vec<u8>, MlsGroup>,
    devices: HashMap<BareJid, Vec<DeviceItem>>,
    pub(super) events: VecDeque<GroupEvent>,
    /// Stanzas read while waiting for something else, handled next.
    stashed: VecDeque<Element>,
    /// Where epoch snapshots and sent messages go, if attached.
    pub(super) vault: Option<super::history::Keeper>,
    /// Own messages awaiting their echo: id -> (group id, epoch, plaintext).
    pub(super) unconfirmed: HashMap<String, (Vec<u8>, u64, Vec<u8>)>,
    /// Own messages sent and neither echoed nor refused, in sending order
    /// (kept in the device's storage too): what [`Self::resend`] sends again.
    outbox: VecDeque<(String, Element)>,
    /// Groups with a gap before an item received live: read from the archive.
    pub(super) behind: HashSet<Vec<u8>>,
    /// Groups with a Remove proposal of the service or an unlisted leaf
    /// to commit, and when.
    due: HashMap<Vec<u8>, Instant>,
    /// Device lists of the accounts in this device's groups as it has seen
    /// them: read once (subscribing), then changed only by the directory's
    /// notifications.
    watched: HashMap<BareJid, Vec<DeviceItem>>,
    /// (group id, signature key) of the leaves reported unlisted.
    unlisted: HashSet<(Vec<u8>, Vec<u8>)>,
    /// Archives (groups, and the inbox) with items handled and not yet
    /// acknowledged: the last one's stanza id; and when to acknowledge.
    unacked: HashMap<Jid, String>,
    ack_at: Option<Instant>,
    /// The service's max-payload-size, once read.
    max_payload: Option<usize>,
}

fn group_jid(service: &Jid, group_id: &[u8]) -> BareJid {
    BareJid::new(&format!("{}@{}", group_node(group_id), service.domain())).expect("a valid group JID")
}

pub(super) fn group_id_of(group: &BareJid) -> Result<Vec<u8>, GroupError> {
    match crate::protocol::address::Address::parse(&Jid::from(group.clone())) {
        Ok(crate::protocol::address::Address::Group(id)) => Ok(id),
        _ => Err(GroupError::UnknownGroup(group.to_string())),
    }
}

fn bytes(m: &MlsMessageOut) -> Result<Vec<u8>, GroupError> {
    m.tls_serialize_detached().map_err(mls)
}

fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAXIMUM_FORWARD_DISTANCE)
}

/// How this client creates a group, with `extensions` in its context:
/// handshakes as PublicMessages (the service validates them), the tree in
/// GroupInfos and Welcomes.
pub(crate) fn create_config(extensions: Extensions<GroupContext>) -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .ciphersuite(super::device::CIPHERSUITE)
        .with_group_context_extensions(extensions)
        .build()
}

/// How this client joins a group (see [`create_config`]).
pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .build()
}

impl<S: DeviceStorage> Core<S> {
    /// Takes over the port and announces the session available, so that
    /// pushes to the account's bare JID (Welcomes, notices) reach this device.
    pub fn start(port: Port, device: Device<S>, service: Jid) -> Result<Self, GroupError> {
        port.transmit(Element::builder("presence", CLIENT).build())?;
        let outbox = device.unechoed().map_err(mls)?.into();
        Ok(Core {
            port,
            device,
            service,
            groups: HashMap::new(),
            devices: HashMap::new(),
            events: VecDeque::new(),
            stashed: VecDeque::new(),
            vault: None,
            unconfirmed: HashMap::new(),
            outbox,
            behind: HashSet::new(),
            due: HashMap::new(),
            watched: HashMap::new(),
            unlisted: HashSet::new(),
            unacked: HashMap::new(),
            ack_at: None,
            max_payload: None,
        })
    }

    pub fn device(&self) -> &Device<S> {
        &self.device
    }

    pub fn service(&self) -> &Jid {
        &self.service
    }

    /// Keeps a stanza for the event loop.
    pub(super) fn stash(&mut self, stanza: Element) {
        self.stashed.push_back(stanza);
    }

    /// The last archive item of `group` this device applied.
    pub(super) fn last_seen(&self, group: &BareJid) -> Result<Option<String>, GroupError> {
        Ok(self.device.last_seen(&group_id_of(group)?).map_err(mls)?.map(|l| l.stanza_id))
    }

    /// Applies one stanza from an archive, as if it had come live.
    pub(super) async fn apply_archived(&mut self, stanza: Element) -> Result<(), GroupError> {
        self.handle(stanza).await
    }

    /// Creates a group with this device as its only member and joins its feed.
    /// The group lists the service as its external sender if the service
    /// advertises one (xep/ §Service Removals).
    pub async fn create(&mut self) -> Result<BareJid, GroupError> {
        let senders: Vec<ExternalSender> = self.port.external_sender(&self.service).await?.into_iter().collect();
        let extensions = match senders.is_empty() {
            true => Extensions::empty(),
            false => Extensions::single(Extension::ExternalSenders(senders)).map_err(mls)?,
        };
        let provider = self.device.provider();
        let config = create_config(extensions);
        let id: [u8; 16] = rand::random();
        let group = MlsGroup::new_with_group_id(
            provider,
            self.device.signer(),
            &config,
            GroupId::from_slice(&id),
            self.device.credential_with_key(),
        )
        .map_err(mls)?;
        let info = group.export_group_info(provider.crypto(), self.device.signer(), true).map_err(mls)?;
        let jid = group_jid(&self.service, &id);
        self.port.iq(&jid.clone().into(), "set", Create { group_info: bytes(&info)? }.to_element()).await?;
        self.groups.insert(id.to_vec(), group);
        self.device.remember_group(&id, jid.as_str(), true).map_err(mls)?;
        self.snapshot(&id).await?;
        self.join_feed(&jid).await?;
        Ok(jid)
    }

    /// Publishes this device in the account's device list and fills its
    /// KeyPackage pool (with a new last-resort package).
    pub async fn publish(&mut self) -> Result<super::RefillReport, GroupError> {
        self.port.publish_device(&self.service, &self.device.item(None)).await?;
        self.device.refill(&self.port, &self.service, super::POOL_TARGET, true).await.map_err(|e| GroupError::Other(e.to_string()))
    }

    /// The groups this device is in.
    pub fn groups(&self) -> Result<Vec<BareJid>, GroupError> {
        let jids = self.device.groups().map_err(mls)?;
        Ok(jids.iter().filter_map(|j| BareJid::new(j).ok()).collect())
    }

    /// Joins the live feed of every group this device is in.
    pub async fn join_all(&mut self) -> Result<(), GroupError> {
        for group in self.groups()? {
            self.join_feed(&group).await?;
        }
        Ok(())
    }

    /// Joins the group's live feed with presence to `group/<device-id>`.
    pub async fn join_feed(&mut self, group: &BareJid) -> Result<(), GroupError> {
        let to = format!("{group}/{}", self.device.id());
        let presence = Element::builder("presence", CLIENT).attr(n("to"), to.as_str()).build();
        self.port.send(presence).await?;
        // Wait for the DS's answer, keeping everything else for later.
        let deadline = self.port.now() + CATCH_UP;
        let mut later = Vec::new();
        let result = loop {
            let Some(stanza) = self.port.next_event_until(Some(deadline)).await else {
                break Err(GroupError::Other(format!("no answer to joining {to}")));
            };
            if stanza.name() == "presence" && stanza.attr("from") == Some(to.as_str()) {
                if stanza.attr("type") == Some("error") {
                    break Err(GroupError::Other(format!("the DS refused {to}")));
                }
                self.events.push_back(GroupEvent::Joined { group: group.clone() });
                break Ok(());
            }
            later.push(stanza);
        };
        self.stashed.extend(later);
        result
    }

    /// The next stanza: stashed ones first, then the port's.
    async fn next_stanza(&mut self, deadline: Instant) -> Result<Element, GroupError> {
        if let Some(s) = self.stashed.pop_front() {
            return Ok(s);
        }
        self.port
            .next_event_until(Some(deadline))
            .await
            .ok_or_else(|| GroupError::Other("timed out waiting for the service".into()))
    }

    /// Claims, verifies and adds every device of `accounts` that is not a
    /// member yet.
    pub async fn add(&mut self, group: &BareJid, accounts: &[BareJid]) -> Result<Accepted, GroupError> {
        let id = group_id_of(group)?;
        let present: HashSet<Vec<u8>> =
            load_group(&mut self.groups, &self.device, &id)?.members().map(|m| m.signature_key).collect();
        let mut kps = Vec::new();
        for account in accounts {
            let devices = self.port.devices(&self.service, account).await?;
            let missing: Vec<String> =
                devices.iter().filter(|d| !present.contains(&d.signature_key)).map(|d| d.id.clone()).collect();
            self.devices.insert(account.clone(), devices);
            if !missing.is_empty() {
                kps.extend(self.key_packages_for(account, missing).await?);
            }
        }
        self.add_key_packages(group, kps).await
    }

    /// Adds the devices of `kps` in as few commits as fit the service's
    /// max-payload-size (xep/ §The Tree and Size of a Bundle): while a
    /// batch's bundle is too large, batches are halved. The last commit's
    /// acceptance.
    pub async fn add_key_packages(&mut self, group: &BareJid, kps: Vec<KeyPackage>) -> Result<Accepted, GroupError> {
        let (mut rest, mut size, mut accepted) = (&kps[..], kps.len(), None);
        while !rest.is_empty() {
            let batch = &rest[..size.min(rest.len())];
            match self.change(group, Change::Add(batch.to_vec())).await {
                Err(GroupError::BundleTooBig(_)) if batch.len() > 1 => size = batch.len() / 2,
                outcome => {
                    accepted = Some(outcome?);
                    rest = &rest[batch.len()..];
                }
            }
        }
        accepted.ok_or_else(|| GroupError::Other("no KeyPackage to add".into()))
    }

    /// The service's max-payload-size (its disco#info form), read once.
    async fn max_payload(&mut self) -> Result<usize, GroupError> {
        if let Some(max) = self.max_payload {
            return Ok(max);
        }
        let form = self.port.service_limits(&self.service).await?;
        let value = form.iter().find(|(var, _)| var == "max-payload-size").and_then(|(_, v)| v.first()?.parse().ok());
        let max = value.ok_or_else(|| GroupError::Other("the service announces no max-payload-size".into()))?;
        self.max_payload = Some(max);
        Ok(max)
    }

    /// Claims one KeyPackage for each of `devices` of `account` and keeps
    /// those that pass the Authentication Service check.
    pub async fn key_packages_for(&mut self, account: &BareJid, devices: Vec<String>) -> Result<Vec<KeyPackage>, GroupError> {
        let policy = self.port.key_package_policy(&self.service).await?;
        let policy = &policy;
        let crypto = self.device.provider().crypto();
        let claim = Claim { cipher_suite: Some(super::device::CIPHERSUITE as u16), devices };
        let outcomes = self.port.claim(&self.service, account, &claim).await?;
        let checks = self.port.check_claimed(&self.service, account, &outcomes, policy, crypto).await?;
        let mut kps = Vec::new();
        let claimed = outcomes.iter().filter_map(|o| match o {
            ClaimOutcome::Claimed { device, message, .. } => Some((device, message)),
            _ => None,
        });
        for ((device, message), check) in claimed.zip(checks) {
            if let Err(reason) = check {
                tracing::warn!(%account, device, reason = reason.reason(), "claimed KeyPackage fails the check");
                continue;
            }
            let MlsMessageBodyIn::KeyPackage(kp) = MlsMessageIn::tls_deserialize_exact(message).map_err(mls)?.extract()
            else {
                continue;
            };
            let kp: KeyPackageIn = kp;
            kps.push(kp.validate(crypto, ProtocolVersion::Mls10).map_err(mls)?);
        }
        Ok(kps)
    }

    pub async fn remove_account(&mut self, group: &BareJid, account: &BareJid) -> Result<Accepted, GroupError> {
        self.change(group, Change::RemoveAccount(account.clone())).await
    }

    pub async fn remove_device(&mut self, group: &BareJid, account: &BareJid, device: &str) -> Result<Accepted, GroupError> {
        self.change(group, Change::RemoveDevice(account.clone(), device.to_owned())).await
    }

    /// A self-update by commit (fresh leaf keys, new epoch).
    pub async fn update(&mut self, group: &BareJid) -> Result<Accepted, GroupError> {
        self.change(group, Change::Update).await
    }

    /// Commits the proposals received by reference.
    pub async fn commit_pending(&mut self, group: &BareJid) -> Result<Accepted, GroupError> {
        self.change(group, Change::Pending).await
    }

    /// A self-update by proposal, for another member to commit.
    pub async fn propose_update(&mut self, group: &BareJid) -> Result<Accepted, GroupError> {
        self.propose(group, false).await
    }

    /// Leaves: a self-remove proposal, which another member's next commit
    /// carries out, and `<leave/>`, after which the service delivers the
    /// group to this account no more and stops counting it for it.
    pub async fn leave(&mut self, group: &BareJid) -> Result<Accepted, GroupError> {
        let accepted = self.propose(group, true).await?;
        self.port.iq(&group.clone().into(), "set", Element::builder("leave", NS).build()).await?;
        Ok(accepted)
    }

    /// Submits a proposal of this epoch; after losing the epoch, catches up
    /// and proposes again.
    async fn propose(&mut self, group: &BareJid, leave: bool) -> Result<Accepted, GroupError> {
        // Leaving a forked group is allowed; updating keys in it is not.
        let id = if leave { group_id_of(group)? } else { self.unforked(group)? };
        for _ in 0..ATTEMPTS {
            let provider = self.device.provider();
            let signer = self.device.signer();
            let g = load_group(&mut self.groups, &self.device, &id)?;
            let msg = if leave {
                g.leave_group(provider, signer).map_err(mls)?
            } else {
                g.propose_self_update(provider, signer, LeafNodeParameters::default()).map_err(mls)?.0
            };
            let request = Proposal { message: bytes(&msg)? }.to_element();
            match self.port.iq(&group.clone().into(), "set", request).await {
                Ok(reply) => return accepted(reply),
                Err(ClientError::Stanza(e)) => {
                    let Some(wrong) = e.other.as_ref().and_then(WrongEpoch::parse) else {
                        return Err(ClientError::Stanza(e).into());
                    };
                    self.await_epoch(group, wrong.epoch).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(GroupError::Other(format!("gave up after {ATTEMPTS} lost epochs")))
    }


    /// The id of `group`, unless the group forked: then nothing is sent into it.
    fn unforked(&self, group: &BareJid) -> Result<Vec<u8>, GroupError> {
        let id = group_id_of(group)?;
        if self.device.is_forked(&id).map_err(mls)? {
            return Err(GroupError::Forked(group.to_string()));
        }
        Ok(id)
    }

    /// Builds, submits and merges one commit; after losing an epoch, applies
    /// the winner from the feed and tries again.
    async fn change(&mut self, group: &BareJid, change: Change) -> Result<Accepted, GroupError> {
        let id = self.unforked(group)?;
        self.settle(group).await?;
        let max_payload = self.max_payload().await?;
        for _ in 0..ATTEMPTS {
            let bundle = self.stage(&id, &change).await?;
            let bundle = match self.port.within_limit(group, bundle, max_payload).await {
                Ok(bundle) => bundle,
                Err(e) => {
                    let storage = self.device.provider().storage();
                    load_group(&mut self.groups, &self.device, &id)?.clear_pending_commit(storage).map_err(mls)?;
                    return Err(e);
                }
            };
            let reply = self.port.iq(&group.clone().into(), "set", bundle).await;
            match reply {
                Ok(payload) => {
                    let accepted = accepted(payload)?;
                    let provider = self.device.provider();
                    load_group(&mut self.groups, &self.device, &id)?.merge_pending_commit(provider).map_err(mls)?;
                    self.after_commit(&id, group).await?;
                    return Ok(accepted);
                }
                Err(ClientError::Stanza(e)) => {
                    let provider = self.device.provider();
                    load_group(&mut self.groups, &self.device, &id)?.clear_pending_commit(provider.storage()).map_err(mls)?;
                    if e.other.as_ref().is_some_and(|o| o.is(AppCondition::MissingProposals.name(), NS_ERRORS)) {
                        // A service proposal this device has not applied
                        // yet: the archive has it; the next try carries it.
                        self.catch_up(group, &mut |_, _, _| {}).await?;
                        continue;
                    }
                    let Some(wrong) = e.other.as_ref().and_then(WrongEpoch::parse) else {
                        return Err(ClientError::Stanza(e).into());
                    };
                    self.await_epoch(group, wrong.epoch).await?;
                }
                // No answer: the Commit may have won. It stays pending
                // until [`Self::settle`] finds out from the archive.
                Err(e) => return Err(e.into()),
            }
        }
        Err(GroupError::Other(format!("gave up after {ATTEMPTS} lost epochs")))
    }

    /// Resolves a Commit left pending by a submission that got no answer
    /// (the service or the connection went away): the archive shows whether
    /// it won its epoch (it is merged when met there) or not (it is dropped).
    async fn settle(&mut self, group: &BareJid) -> Result<(), GroupError> {
        let id = group_id_of(group)?;
        if load_group(&mut self.groups, &self.device, &id)?.pending_commit().is_none() {
            return Ok(());
        }
        self.catch_up(group, &mut |_, _, _| {}).await?;
        let g = load_group(&mut self.groups, &self.device, &id)?;
        if g.pending_commit().is_some() {
            tracing::info!(%group, "an unanswered Commit did not win its epoch: dropped");
            g.clear_pending_commit(self.device.provider().storage()).map_err(mls)?;
        }
        Ok(())
    }

    /// The commit bundle for `change` at the group's current epoch.
    async fn stage(&mut self, id: &[u8], change: &Change) -> Result<CommitBundle, GroupError> {
        let inline_max = inline_max(self.max_payload().await?);
        let leaves = match change {
            Change::RemoveAccount(a) => self.leaves(id, |acct, _| acct == a).await?,
            Change::RemoveDevice(a, d) => self.leaves(id, |acct, dev| acct == a && dev == d).await?,
            Change::Revoke => self.revocable(id).await?,
            _ => Vec::new(),
        };
        let provider = self.device.provider();
        let signer = self.device.signer();
        let g = load_group(&mut self.groups, &self.device, id)?;
        if matches!(change, Change::Pending | Change::Revoke) && leaves.is_empty() && g.pending_proposals().next().is_none() {
            return Err(GroupError::NothingPending);
        }
        let inline = g.export_ratchet_tree().tls_serialized_len() <= inline_max;
        let mut b = g.commit_builder();
        match change {
            Change::Add(kps) => b = b.propose_adds(kps.iter().cloned()),
            Change::RemoveAccount(_) | Change::RemoveDevice(..) => {
                if leaves.is_empty() {
                    return Err(GroupError::Other("no such member".into()));
                }
                b = b.propose_removals(leaves)
            }
            Change::Update => b = b.force_self_update(true),
            Change::Pending => {}
            Change::Revoke => b = b.propose_removals(leaves),
        }
        let staged = b
            .consume_proposal_store(true)
            .load_psks(provider.storage())
            .map_err(mls)?
            .use_ratchet_tree_extension(inline)
            .build(provider.rand(), provider.crypto(), signer, |_| true)
            .map_err(mls)?
            .stage_commit(provider)
            .map_err(mls)?;
        let new_epoch_check = g
            .pending_commit()
            .and_then(|c| c.epoch_authenticator())
            .map(|a| epoch_check(a.as_slice()))
            .ok_or_else(|| GroupError::Mls("no epoch authenticator for the pending commit".into()))?;
        let (commit, welcome, group_info) = staged.into_messages();
        Ok(CommitBundle {
            commit: bytes(&commit)?,
            parts: None,
            welcome: welcome.as_ref().map(bytes).transpose()?,
            group_info: bytes(&group_info.ok_or_else(|| GroupError::Mls("commit without GroupInfo".into()))?)?,
            epoch_check: new_epoch_check,
        })
    }

    /// Leaf indices of members matching (account, device id).
    async fn leaves(&mut self, id: &[u8], pred: impl Fn(&BareJid, &str) -> bool) -> Result<Vec<LeafNodeIndex>, GroupError> {
        let members: Vec<_> = load_group(&mut self.groups, &self.device, id)?.members().collect();
        let mut out = Vec::new();
        for m in members {
            let Some(account) = account_of(&m.credential) else { continue };
            let device = self.device_name(&account, &m.signature_key).await;
            if pred(&account, &device) {
                out.push(m.index);
            }
        }
        Ok(out)
    }

    /// The id of `account`'s device with `key` (from its device list, cached).
    async fn device_name(&mut self, account: &BareJid, key: &[u8]) -> String {
        let find = |list: &[DeviceItem]| list.iter().find(|d| d.signature_key == key).map(|d| d.id.clone());
        if let Some(id) = self.devices.get(account).and_then(|l| find(l)) {
            return id;
        }
        if let Ok(list) = self.port.devices(&self.service, account).await {
            self.devices.insert(account.clone(), list);
        }
        self.devices.get(account).and_then(|l| find(l)).unwrap_or_else(|| "unknown-device".into())
    }

    /// Stages adding `key_packages` without submitting: the bundle as it
    /// would be sent (the pending commit stays until [`Self::discard_pending`]).
    pub async fn stage_add(&mut self, group: &BareJid, key_packages: Vec<KeyPackage>) -> Result<CommitBundle, GroupError> {
        let id = group_id_of(group)?;
        self.stage(&id, &Change::Add(key_packages)).await
    }

    /// Submits a staged bundle as it is; the raw reply.
    pub async fn submit(&mut self, group: &BareJid, bundle: &CommitBundle) -> Result<Option<Element>, ClientError> {
        self.port.iq(&group.clone().into(), "set", bundle.to_element()).await
    }

    /// Drops a staged, unsubmitted commit.
    pub fn discard_pending(&mut self, group: &BareJid) -> Result<(), GroupError> {
        let id = group_id_of(group)?;
        let storage = self.device.provider().storage();
        load_group(&mut self.groups, &self.device, &id)?.clear_pending_commit(storage).map_err(mls)
    }

    /// This device's epoch check of the group's current epoch.
    pub fn epoch_check(&mut self, group: &BareJid) -> Result<String, GroupError> {
        let id = group_id_of(group)?;
        Ok(epoch_check(load_group(&mut self.groups, &self.device, &id)?.epoch_authenticator().as_slice()))
    }

    /// Each leaf as users compare them out of band (xep/ §Checking Leaves),
    /// in leaf order.
    pub async fn leaf_keys(&mut self, group: &BareJid) -> Result<Vec<LeafKey>, GroupError> {
        let id = group_id_of(group)?;
        let members: Vec<_> = load_group(&mut self.groups, &self.device, &id)?.members().collect();
        let mut out = Vec::new();
        for m in members {
            let Some(account) = account_of(&m.credential) else { continue };
            let device = self.device_name(&account, &m.signature_key).await;
            let listed = self.watched_devices(&account).await?.iter().any(|d| d.signature_key == m.signature_key);
            out.push(LeafKey { account, device, fingerprint: fingerprint(&m.signature_key), listed });
        }
        Ok(out)
    }

    /// Members as (account, device id).
    pub async fn members(&mut self, group: &BareJid) -> Result<Vec<(BareJid, String)>, GroupError> {
        let id = group_id_of(group)?;
        let members: Vec<_> = load_group(&mut self.groups, &self.device, &id)?.members().collect();
        let mut out = Vec::new();
        for m in members {
            if let Some(account) = account_of(&m.credential) {
                let device = self.device_name(&account, &m.signature_key).await;
                out.push((account, device));
            }
        }
        Ok(out)
    }

    pub(super) fn epoch_of(&mut self, id: &[u8]) -> Result<u64, GroupError> {
        Ok(load_group(&mut self.groups, &self.device, id)?.epoch().as_u64())
    }

    pub fn epoch(&mut self, group: &BareJid) -> Result<u64, GroupError> {
        let id = group_id_of(group)?;
        Ok(load_group(&mut self.groups, &self.device, &id)?.epoch().as_u64())
    }

    async fn after_commit(&mut self, id: &[u8], group: &BareJid) -> Result<(), GroupError> {
        self.snapshot(id).await?;
        let epoch = load_group(&mut self.groups, &self.device, id)?.epoch().as_u64();
        let members = self.members(group).await?;
        self.events.push_back(GroupEvent::Epoch { group: group.clone(), epoch, members });
        self.check_leaves(id, group).await
    }

    /// Brings the group to `epoch` after losing it: the winning commit is
    /// in the archive already (it was committed before we were refused).
    async fn await_epoch(&mut self, group: &BareJid, epoch: u64) -> Result<(), GroupError> {
        self.catch_up(group, &mut |_, _, _| {}).await?;
        let id = group_id_of(group)?;
        let now = load_group(&mut self.groups, &self.device, &id)?.epoch().as_u64();
        if now < epoch {
            return Err(GroupError::Other(format!("still at epoch {now} after catching up to {epoch}")));
        }
        Ok(())
    }

    /// Sends `content` (stanza elements such as `<body/>` or a XEP-0461
    /// `<reply/>`) in an envelope from this account (xep/ §Message Content);
    /// the echo arrives as [`GroupEvent::Delivered`].
    pub async fn send(&mut self, group: &BareJid, content: Vec<Element>) -> Result<String, GroupError> {
        let envelope = Envelope { content: Content(content), from: self.device.account().clone(), time: crate::protocol::now() };
        self.send_data(group, &envelope.seal()).await
    }

    /// Sends a message of one `<body/>`.
    pub async fn send_body(&mut self, group: &BareJid, text: &str) -> Result<String, GroupError> {
        self.send(group, Content::from_body(text).0).await
    }

    /// Encrypts `data` as the application data of a message, as it is:
    /// [`Self::send`] gives it an envelope, which is what receivers accept.
    /// Proposals received by reference are committed first (MLS forbids
    /// sending while they are pending).
    pub async fn send_data(&mut self, group: &BareJid, data: &[u8]) -> Result<String, GroupError> {
        let id = self.unforked(group)?;
        self.settle(group).await?;
        if load_group(&mut self.groups, &self.device, &id)?.pending_proposals().next().is_some() {
            self.commit_pending(group).await?;
        }
        self.make_room().await?;
        let provider = self.device.provider();
        let msg = load_group(&mut self.groups, &self.device, &id)?.create_message(provider, self.device.signer(), data).map_err(mls)?;
        let stanza_id = self.port.next_id();
        let epoch = load_group(&mut self.groups, &self.device, &id)?.epoch().as_u64();
        if self.vault.is_some() {
            self.unconfirmed.insert(stanza_id.clone(), (id.clone(), epoch, data.to_vec()));
        }
        let stanza = Element::builder("message", CLIENT)
            .attr(n("to"), group.as_str())
            .attr(n("type"), "groupchat")
            .attr(n("id"), stanza_id.as_str())
            .append(GroupMessage::new(bytes(&msg)?).to_element())
            .append(encryption_hint())
            .build();
        self.device.keep_unechoed(&stanza_id, &stanza).map_err(mls)?;
        self.outbox.push_back((stanza_id.clone(), stanza.clone()));
        self.port.send(stanza).await?;
        Ok(stanza_id)
    }

    /// Sends again, unchanged and in order, every message of this device
    /// not echoed nor refused yet, also those of an earlier session; returns
    /// how many. Call it after the session or the service came back and
    /// the device joined its feeds again: the service archives a message
    /// once and answers a resend of an archived one with its echo
    /// (xep/ §Resends).
    pub async fn resend(&mut self) -> Result<usize, GroupError> {
        for (_, stanza) in &self.outbox {
            self.port.send(stanza.clone()).await?;
        }
        Ok(self.outbox.len())
    }

    /// Waits until fewer own messages than receivers tolerate out of
    /// order are unechoed (xep/ §Order), handling what arrives meanwhile.
    async fn make_room(&mut self) -> Result<(), GroupError> {
        let deadline = self.port.now() + CATCH_UP;
        while self.outbox.len() >= OUT_OF_ORDER_TOLERANCE as usize {
            let stanza = self.next_stanza(deadline).await?;
            self.handle(stanza).await?;
        }
        Ok(())
    }

    /// Own messages not echoed nor refused yet.
    pub fn unechoed(&self) -> usize {
        self.outbox.len()
    }

    /// Forgets a message of the outbox: it was echoed or refused.
    fn sent_out(&mut self, id: &str) -> Result<(), GroupError> {
        let Some(at) = self.outbox.iter().position(|(sent, _)| sent == id) else { return Ok(()) };
        self.outbox.remove(at);
        self.device.echoed(id).map_err(mls)
    }

    /// The next event, waiting at most `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<GroupEvent>, GroupError> {
        let deadline = self.port.now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.catch_up_behind().await? || self.commit_due().await? || self.acknowledge_due().await? {
                continue;
            }
            let wake = self.next_due().map_or(deadline, |d| d.min(deadline));
            match self.next_stanza(wake).await {
                Ok(stanza) => self.handle(stanza).await?,
                Err(_) if wake < deadline => {}
                Err(_) => return Ok(None),
            }
        }
    }

    /// Commits the service's Remove proposals of one group whose time has
    /// come, unless another member's commit carried them already; whether
    /// there was such a group. A failure is logged: the proposals stay
    /// pending and the next commit in the group carries them.
    async fn commit_due(&mut self) -> Result<bool, GroupError> {
        let now = self.port.now();
        let Some(gid) = self.due.iter().find(|(_, at)| **at <= now).map(|(g, _)| g.clone()) else { return Ok(false) };
        self.due.remove(&gid);
        let group = group_jid(&self.service, &gid);
        match self.change(&group, Change::Revoke).await {
            Ok(_) | Err(GroupError::NothingPending) => {}
            Err(e) => tracing::warn!(error = %e, %group, "cannot commit the removal of unlisted leaves"),
        }
        Ok(true)
    }

    /// An event that happened already, without waiting.
    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    /// When removals are next to be committed or items acknowledged (by
    /// [`Self::next_event`] or [`Self::handle_received`]).
    pub fn next_due(&self) -> Option<Instant> {
        self.due.values().copied().chain(self.ack_at).min()
    }

    /// Whether removals are to be committed or items acknowledged now.
    pub fn is_due(&self) -> bool {
        self.next_due().is_some_and(|at| at <= self.port.now())
    }

    /// An item of `archive` was handled: it is acknowledged within [`ACK_DELAY`].
    fn handled(&mut self, archive: Jid, stanza_id: String) {
        self.unacked.insert(archive, stanza_id);
        self.ack_at.get_or_insert(self.port.now() + ACK_DELAY);
    }

    /// Acknowledges what was handled, if it is time; whether it was. A
    /// failure is logged: the next acknowledgement covers it.
    async fn acknowledge_due(&mut self) -> Result<bool, GroupError> {
        if !self.ack_at.is_some_and(|at| at <= self.port.now()) {
            return Ok(false);
        }
        self.ack_at = None;
        for (archive, id) in std::mem::take(&mut self.unacked) {
            if let Err(e) = self.acknowledge(&archive, &id).await {
                tracing::warn!(error = %e, %archive, "cannot acknowledge");
            }
        }
        Ok(true)
    }

    /// Whether something received waits to be handled.
    pub fn has_received(&self) -> bool {
        !self.stashed.is_empty() || !self.behind.is_empty() || self.port.has_event()
    }

    /// Handles everything received so far, reading the archive of a group
    /// found behind, without waiting for more; the events queue up.
    pub async fn handle_received(&mut self) -> Result<(), GroupError> {
        loop {
            if self.catch_up_behind().await? || self.commit_due().await? || self.acknowledge_due().await? {
                continue;
            }
            let Some(stanza) = self.stashed.pop_front().or_else(|| self.port.try_next_event()) else {
                return Ok(());
            };
            self.handle(stanza).await?;
        }
    }

    /// Reads the archive of one group that a gap showed this device is
    /// behind in; whether there was one.
    async fn catch_up_behind(&mut self) -> Result<bool, GroupError> {
        let Some(gid) = self.behind.iter().next().cloned() else { return Ok(false) };
        self.behind.remove(&gid);
        let group = group_jid(&self.service, &gid);
        if let Err(e) = self.catch_up(&group, &mut |_, _, _| {}).await {
            self.behind.insert(gid);
            return Err(e);
        }
        Ok(true)
    }

    /// One stanza from the server: feed messages, Welcomes, presences.
    pub(super) async fn handle(&mut self, stanza: Element) -> Result<(), GroupError> {
        // Only the service speaks for groups and directories: a stanza
        // whose server-stamped 'from' is of another domain is not ours,
        // whatever its localpart looks like.
        let from = stanza.attr("from").and_then(|f| Jid::new(f).ok());
        if from.as_ref().map(Jid::domain) != Some(self.service.domain()) {
            return Ok(());
        }
        if stanza.name() == "presence" {
            return self.handle_presence(&stanza);
        }
        // An inbox item (pushed with its stanza id by the directory).
        let directory = super::devices::directory_jid(self.device.account(), &self.service);
        if from.as_ref() == Some(&directory) {
            let by = directory.to_string();
            let id = stanza.get_child("stanza-id", NS_SID).filter(|s| s.attr("by") == Some(by.as_str())).and_then(|s| s.attr("id"));
            if let Some(id) = id.map(str::to_owned) {
                self.handled(directory, id);
            }
        }
        if stanza.name() != "message" {
            return Ok(());
        }
        if stanza.attr("type") == Some("error") {
            return self.handle_refusal(&stanza);
        }
        if let Some(Ok(welcome)) = Welcome::find(&stanza) {
            // Only for a Commit the service accepted, from this account's directory.
            if from != Some(super::devices::directory_jid(self.device.account(), &self.service)) {
                return Ok(());
            }
            return self.handle_welcome(welcome).await;
        }
        if let Some(event) = stanza.get_child("event", NS_EVENT) {
            self.handle_device_event(from.as_ref(), event);
            return Ok(());
        }
        if let Some(Ok(notice)) = Notice::find(&stanza) {
            self.handle_notice(stanza.attr("from"), &notice).await;
            return Ok(());
        }
        let Some(Ok(msg)) = GroupMessage::find(&stanza) else { return Ok(()) };
        let Some(from) = stanza.attr("from").and_then(|f| Jid::new(f).ok()) else { return Ok(()) };
        let stanza_id = stanza
            .get_child("stanza-id", NS_SID)
            .and_then(|s| s.attr("id"))
            .unwrap_or_default()
            .to_owned();
        self.handle_group_message(from, msg, stanza.attr("id").unwrap_or_default(), stanza_id).await
    }

    /// A message of ours that came back as an error, from a group we are in.
    fn handle_refusal(&mut self, stanza: &Element) -> Result<(), GroupError> {
        let group = stanza.attr("from").and_then(|f| BareJid::new(f).ok());
        let Some(group) = group.filter(|g| group_id_of(g).is_ok_and(|id| self.groups.contains_key(&id))) else {
            return Ok(());
        };
        let id = stanza.attr("id").unwrap_or_default().to_owned();
        self.unconfirmed.remove(&id);
        self.sent_out(&id)?;
        let error = match stanza.get_child("error", CLIENT).map(|e| StanzaError::try_from(e.clone())) {
            Some(Ok(e)) => super::describe(&e),
            _ => "malformed error".to_owned(),
        };
        self.events.push_back(GroupEvent::Refused { group, id, error });
        Ok(())
    }

    fn handle_presence(&mut self, stanza: &Element) -> Result<(), GroupError> {
        let from = stanza.attr("from").and_then(|f| Jid::new(f).ok());
        let Some(from) = from else { return Ok(()) };
        let ours = from.resource().map(|r| r.as_str()) == Some(self.device.id());
        if ours && stanza.attr("type") == Some("unavailable") {
            if let Ok(id) = group_id_of(&from.to_bare()) {
                if self.groups.contains_key(&id) {
                    self.events.push_back(GroupEvent::Removed { group: from.to_bare() });
                }
            }
        }
        Ok(())
    }

    /// A notice about the account's KeyPackages, live or from the inbox:
    /// refills this device's pool if the notice is about it and asks for it
    /// ([`Device::on_notice`]). Only the account's directory sends notices.
    /// A failed refill is logged, not fatal: the next notice tries again.
    async fn handle_notice(&mut self, from: Option<&str>, notice: &Notice) {
        let directory = super::devices::directory_jid(self.device.account(), &self.service);
        if from.and_then(|f| Jid::new(f).ok()) != Some(directory) {
            return;
        }
        match self.device.on_notice(&self.port, &self.service, notice).await {
            Ok(Some(report)) => self.events.push_back(GroupEvent::Refilled(report)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot refill this device's KeyPackages"),
        }
    }

    async fn handle_welcome(&mut self, welcome: Welcome) -> Result<(), GroupError> {
        let MlsMessageBodyIn::Welcome(w) = MlsMessageIn::tls_deserialize_exact(&welcome.message).map_err(mls)?.extract()
        else {
            return Ok(());
        };
        let provider = self.device.provider();
        // A Welcome for another device of this account carries none of our
        // KeyPackages: not an error, just not for us.
        let processed = match ProcessedWelcome::new_from_welcome(provider, &join_config(), w) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "Welcome not for this device");
                return Ok(());
            }
        };
        let info = processed.unverified_group_info();
        if load_group(&mut self.groups, &self.device, info.group_id().as_slice()).is_ok() {
            tracing::debug!("Welcome to a group this device is in already");
            return Ok(());
        }
        let tree = match info.extensions().ratchet_tree() {
            Some(_) => None,
            None => {
                let group = group_jid(&self.service, info.group_id().as_slice());
                Some(self.port.tree(&group, info.group_context().epoch().as_u64()).await?)
            }
        };
        let provider = self.device.provider();
        let staged = processed.into_staged_welcome(provider, tree).map_err(|e| GroupError::BadTree(e.to_string()))?;
        let g = staged.into_group(provider).map_err(mls)?;
        let id = g.group_id().to_vec();
        self.groups.insert(id.clone(), g);
        let group = group_jid(&self.service, &id);
        self.device.remember_group(&id, group.as_str(), true).map_err(mls)?;
        if let Some(commit) = &welcome.commit {
            self.device.set_last_seen(&id, commit, welcome.position).map_err(mls)?;
        }
        self.snapshot(&id).await?;
        self.check_leaves(&id, &group).await?;
        self.join_feed(&group).await
    }

    async fn handle_group_message(
        &mut self,
        from: Jid,
        msg: GroupMessage,
        id: &str,
        stanza_id: String,
    ) -> Result<(), GroupError> {
        let group = from.to_bare();
        let Ok(gid) = group_id_of(&group) else { return Ok(()) };
        if !self.groups.contains_key(&gid) && load_group(&mut self.groups, &self.device, &gid).is_err() {
            return Ok(());
        }
        let own = from.resource().map(|r| r.as_str()) == Some(self.device.id());
        if own {
            self.sent_out(id)?; // echoed (a resend's echo repeats the stanza-id)
        }
        let Some(position) = msg.position else {
            tracing::warn!(%group, "a group message without its archive position: ignored");
            return Ok(());
        };
        if !self.is_next(&gid, position)? {
            return Ok(());
        }
        // An item of a later epoch: a Commit before it has not reached us.
        // The archive has both, from where this device stopped, which this
        // item must not move.
        let current = load_group(&mut self.groups, &self.device, &gid)?.epoch().as_u64();
        if msg.epoch.is_some_and(|e| e > current) {
            tracing::info!(%group, current, "missed a Commit: catching up from the archive");
            self.behind.insert(gid);
            return Ok(());
        }
        self.device.set_last_seen(&gid, &stanza_id, Some(position)).map_err(mls)?;
        self.handled(group.clone().into(), stanza_id.clone());
        if own {
            match msg.kind {
                Some(Kind::Application) => {
                    self.keep_sent(id, &stanza_id).await?;
                    self.events.push_back(GroupEvent::Delivered { group, id: id.to_owned(), stanza_id });
                }
                Some(Kind::Commit) => self.merge_own_commit(&gid, &group, msg.epoch).await?,
                _ => {}
            }
            return Ok(()); // our own handshakes were merged when accepted
        }
        if msg.kind == Some(Kind::Commit) && msg.epoch.is_some_and(|e| e < current) {
            return Ok(()); // already applied
        }
        let message = match msg.parts {
            Some(parts) => self.port.fetch_parts(&group, position, parts).await?,
            None => msg.message,
        };
        let parsed = MlsMessageIn::tls_deserialize_exact(&message).map_err(mls)?;
        let protocol: ProtocolMessage = match parsed.extract() {
            MlsMessageBodyIn::PublicMessage(m) => m.into(),
            MlsMessageBodyIn::PrivateMessage(m) => m.into(),
            _ => return Ok(()),
        };
        let provider = self.device.provider();
        let processed = match load_group(&mut self.groups, &self.device, &gid)?.process_message(provider, protocol) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, %group, "cannot process a group message");
                return Ok(());
            }
        };
        let sender = account_of(processed.credential());
        // The sender's leaf, as MLS authenticated it (not the DS's resource).
        let sender_key = match processed.sender() {
            Sender::Member(index) => load_group(&mut self.groups, &self.device, &gid)?
                .members()
                .find(|m| m.index == *index)
                .map(|m| m.signature_key),
            _ => None,
        };
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let (Some(account), Some(key)) = (sender, sender_key) else { return Ok(()) };
                let device = self.device_name(&account, &key).await;
                let event = match Envelope::open(&app.into_bytes(), &account) {
                    Ok(envelope) => GroupEvent::Message { group, account, device, content: envelope.content, stanza_id },
                    Err(reason) => {
                        tracing::warn!(%group, %account, device, %reason, "application message refused");
                        GroupEvent::Discarded { group, account, device, stanza_id, reason }
                    }
                };
                self.events.push_back(event);
            }
            ProcessedMessageContent::ProposalMessage(p) => {
                let removal = match (p.sender(), p.proposal()) {
                    (Sender::External(_), openmls::prelude::Proposal::Remove(r)) => Some(r.removed()),
                    _ => None,
                };
                load_group(&mut self.groups, &self.device, &gid)?
                    .store_pending_proposal(provider.storage(), *p)
                    .map_err(mls)?;
                match (removal, sender) {
                    (Some(leaf), _) => self.removal_proposed(&gid, group, leaf).await?,
                    (None, Some(account)) => self.events.push_back(GroupEvent::Proposed { group, account }),
                    (None, None) => {}
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let ours = staged.epoch_authenticator().map(|a| epoch_check(a.as_slice()));
                let removed = staged.self_removed();
                load_group(&mut self.groups, &self.device, &gid)?.merge_staged_commit(provider, *staged).map_err(mls)?;
                if removed {
                    self.device.remember_group(&gid, group.as_str(), false).map_err(mls)?;
                    self.events.push_back(GroupEvent::Removed { group });
                    return Ok(());
                }
                if ours.is_some() && ours != msg.epoch_check {
                    let epoch = load_group(&mut self.groups, &self.device, &gid)?.epoch().as_u64();
                    tracing::error!(%group, epoch, "epoch check mismatch: the group has forked");
                    self.device.mark_forked(&gid).map_err(mls)?;
                    self.events.push_back(GroupEvent::Fork { group: group.clone(), epoch });
                }
                self.after_commit(&gid, &group).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A Remove proposal of the service for `leaf`: reported, and committed
    /// by this device after a random delay of up to [`REMOVAL_JITTER`]
    /// (so that members do not all commit at once), unless the leaf is
    /// this device's own (a member cannot commit its own removal).
    async fn removal_proposed(&mut self, gid: &[u8], group: BareJid, leaf: LeafNodeIndex) -> Result<(), GroupError> {
        let g = load_group(&mut self.groups, &self.device, gid)?;
        let own = g.own_leaf_index() == leaf;
        let member = g.members().find(|m| m.index == leaf);
        if let Some(account) = member.as_ref().and_then(|m| account_of(&m.credential)) {
            let device = self.device_name(&account, &member.expect("a member").signature_key).await;
            self.events.push_back(GroupEvent::RemovalProposed { group, account, device });
        }
        if !own {
            self.schedule_removal(gid);
        }
        Ok(())
    }

    /// Commits the removals of `gid` after a random delay of up to
    /// [`REMOVAL_JITTER`], so that members do not all commit at once.
    fn schedule_removal(&mut self, gid: &[u8]) {
        let delay = REMOVAL_JITTER.mul_f64(rand::random::<f64>());
        self.due.entry(gid.to_vec()).or_insert(self.port.now() + delay);
    }

    /// `account`'s device list as this device has seen it: read (and
    /// subscribed to) on first use, then changed only by notifications.
    async fn watched_devices(&mut self, account: &BareJid) -> Result<&[DeviceItem], GroupError> {
        if !self.watched.contains_key(account) {
            if let Err(e) = self.port.subscribe_devices(&self.service, account).await {
                tracing::warn!(error = %e, %account, "cannot subscribe to a device list");
            }
            let list = self.port.devices(&self.service, account).await?;
            self.watched.insert(account.clone(), list);
        }
        Ok(&self.watched[account])
    }

    /// A notification of a device list from its directory: the watched
    /// list follows it.
    fn handle_device_event(&mut self, from: Option<&Jid>, event: &Element) {
        let Some(Ok(Address::Directory(account))) = from.map(Address::parse) else { return };
        let (Some(list), Ok(event)) = (self.watched.get_mut(&account), Event::parse(event)) else { return };
        match event {
            Event::Published { node, items } if node == DEVICES_NODE => {
                for device in items.iter().filter_map(|(id, p)| DeviceItem::parse(Some(id), p).ok()) {
                    list.retain(|d| d.id != device.id);
                    list.push(device);
                }
            }
            Event::Retracted { node, ids } if node == DEVICES_NODE => list.retain(|d| !ids.contains(&d.id)),
            _ => {}
        }
    }

    /// Leaves of the group whose key is not in their account's watched
    /// device list (a leaf without an account's credential counts too).
    async fn unlisted_leaves(&mut self, gid: &[u8]) -> Result<Vec<(LeafNodeIndex, Option<BareJid>, Vec<u8>)>, GroupError> {
        let members: Vec<_> = load_group(&mut self.groups, &self.device, gid)?.members().collect();
        let mut out = Vec::new();
        for m in members {
            let account = account_of(&m.credential);
            let listed = match &account {
                Some(a) => self.watched_devices(a).await?.iter().any(|d| d.signature_key == m.signature_key),
                None => false,
            };
            if !listed {
                out.push((m.index, account, m.signature_key));
            }
        }
        Ok(out)
    }

    /// xep/ §Checking Leaves: reports each leaf found unlisted (once) and
    /// schedules the removal of those of other devices.
    async fn check_leaves(&mut self, gid: &[u8], group: &BareJid) -> Result<(), GroupError> {
        let own = load_group(&mut self.groups, &self.device, gid)?.own_leaf_index();
        for (leaf, account, key) in self.unlisted_leaves(gid).await? {
            if self.unlisted.insert((gid.to_vec(), key.clone())) {
                let account = account.unwrap_or_else(|| self.service.to_bare());
                tracing::warn!(%group, %account, "a leaf is not in its account's device list");
                self.events.push_back(GroupEvent::UnlistedLeaf { group: group.clone(), account, fingerprint: fingerprint(&key) });
            }
            if leaf != own {
                self.schedule_removal(gid);
            }
        }
        Ok(())
    }

    /// The unlisted leaves of other devices that no pending proposal removes.
    async fn revocable(&mut self, gid: &[u8]) -> Result<Vec<LeafNodeIndex>, GroupError> {
        let unlisted = self.unlisted_leaves(gid).await?;
        let g = load_group(&mut self.groups, &self.device, gid)?;
        let own = g.own_leaf_index();
        let proposed: HashSet<LeafNodeIndex> = g
            .pending_proposals()
            .filter_map(|p| match p.proposal() {
                openmls::prelude::Proposal::Remove(r) => Some(r.removed()),
                _ => None,
            })
            .collect();
        Ok(unlisted.into_iter().map(|(leaf, ..)| leaf).filter(|l| *l != own && !proposed.contains(l)).collect())
    }

    /// Whether the group's item at archive `position` is the next one this
    /// device has to apply. An earlier one was applied already (it came
    /// again with a resend, or both live and from the archive); after a
    /// later one, items are missing (their delivery was lost): the archive
    /// has them, from where this device stopped (xep/ §Delivery to the Feed).
    fn is_next(&mut self, gid: &[u8], position: u64) -> Result<bool, GroupError> {
        let last = self.device.last_seen(gid).map_err(mls)?.and_then(|l| l.position);
        match last {
            Some(last) if position <= last => Ok(false),
            Some(last) if position > last + 1 => {
                tracing::info!(position, last, "missed group messages: catching up from the archive");
                self.behind.insert(gid.to_vec());
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// Our Commit of `epoch` won although its answer was lost: the pending
    /// Commit is that one (only this device signs with this leaf).
    async fn merge_own_commit(&mut self, gid: &[u8], group: &BareJid, epoch: Option<u64>) -> Result<(), GroupError> {
        let g = load_group(&mut self.groups, &self.device, gid)?;
        if g.pending_commit().is_none() || epoch != Some(g.epoch().as_u64()) {
            return Ok(()); // merged when it was accepted
        }
        g.merge_pending_commit(self.device.provider()).map_err(mls)?;
        self.after_commit(gid, group).await
    }

    /// Joins `group` with a new device of a member account: fetches the
    /// latest GroupInfo and commits externally.
    pub async fn join_external(&mut self, group: &BareJid) -> Result<Accepted, GroupError> {
        let reply = self
            .port
            .iq(&group.clone().into(), "get", Element::builder("group-info", NS).build())
            .await?
            .ok_or_else(|| GroupError::Other("empty group-info".into()))?;
        let (_, info) = parse_group_info(&reply).map_err(|e| GroupError::Other(e.to_string()))?;
        let MlsMessageBodyIn::GroupInfo(vgi) = MlsMessageIn::tls_deserialize_exact(&info).map_err(mls)?.extract()
        else {
            return Err(GroupError::Mls("not a GroupInfo".into()));
        };
        let mut builder = MlsGroup::external_commit_builder().with_config(join_config());
        let max_payload = self.max_payload().await?;
        let inline = match vgi.extensions().ratchet_tree() {
            Some(tree) => tree.ratchet_tree().tls_serialized_len() <= inline_max(max_payload),
            None => {
                let tree = self.port.tree(group, vgi.group_context().epoch().as_u64()).await?;
                let inline = tree.tls_serialized_len() <= inline_max(max_payload);
                builder = builder.with_ratchet_tree(tree);
                inline
            }
        };
        let provider = self.device.provider();
        let (mut g, bundle) = builder
            .build_group(provider, vgi, self.device.credential_with_key())
            .map_err(|e| GroupError::BadTree(e.to_string()))?
            .load_psks(provider.storage())
            .map_err(mls)?
            .use_ratchet_tree_extension(inline)
            .build(provider.rand(), provider.crypto(), self.device.signer(), |_| true)
            .map_err(mls)?
            .finalize(provider)
            .map_err(mls)?;
        // The joiner's group is new and only ours: merge before submitting
        // to learn the new epoch's check; if the DS refuses, it is dropped.
        g.merge_pending_commit(provider).map_err(mls)?;
        let check = epoch_check(g.epoch_authenticator().as_slice());
        let (commit, _, group_info) = bundle.into_messages();
        let bundle = CommitBundle {
            commit: bytes(&commit)?,
            parts: None,
            welcome: None,
            group_info: bytes(&group_info.ok_or_else(|| GroupError::Mls("no GroupInfo".into()))?)?,
            epoch_check: check,
        };
        let bundle = self.port.within_limit(group, bundle, max_payload).await?;
        let reply = self.port.iq(&group.clone().into(), "set", bundle).await?;
        let accepted = accepted(reply)?;
        let id = g.group_id().to_vec();
        self.groups.insert(id.clone(), g);
        self.device.remember_group(&id, group.as_str(), true).map_err(mls)?;
        // Nothing before our own commit is ours to apply.
        self.device.set_last_seen(&id, &accepted.stanza_id, Some(accepted.position)).map_err(mls)?;
        self.join_feed(group).await?;
        self.after_commit(&id, group).await?;
        Ok(accepted)
    }
}

/// The device's MLS group `id`, loaded from its storage on first use.
fn load_group<'a, S: DeviceStorage>(
    groups: &'a mut HashMap<Vec<u8>, MlsGroup>,
    device: &Device<S>,
    id: &[u8],
) -> Result<&'a mut MlsGroup, GroupError> {
    if !groups.contains_key(id) {
        let g = MlsGroup::load(device.provider().storage(), &GroupId::from_slice(id))
            .map_err(mls)?
            .ok_or_else(|| GroupError::UnknownGroup(group_node(id)))?;
        groups.insert(id.to_vec(), g);
    }
    Ok(groups.get_mut(id).expect("just inserted"))
}

/// The largest ratchet tree (its encoding) that GroupInfos and Welcomes
/// carry when payloads are at most `max_payload` octets: an eighth, as the
/// tree is in both, as base64 (xep/ §The Tree and Size of a Bundle);
/// joiners of larger groups fetch it.
fn inline_max(max_payload: usize) -> usize {
    max_payload / 8
}

impl Port {
    /// `bundle` as it is sent within `max_payload` octets: itself, or with
    /// its Commit uploaded in parts and named (xep/ §Commits in Parts).
    /// [`GroupError::BundleTooBig`] if even that is too large.
    pub async fn within_limit(&self, group: &BareJid, bundle: CommitBundle, max_payload: usize) -> Result<Element, GroupError> {
        let inline = bundle.to_element();
        if String::from(&inline).len() <= max_payload {
            return Ok(inline);
        }
        let named = CommitBundle { parts: Some(Parts::of(&bundle.commit)), ..bundle.clone() }.to_element();
        let size = String::from(&named).len();
        if size > max_payload {
            return Err(GroupError::BundleTooBig(size));
        }
        self.upload_parts(group, &bundle.commit, page_octets(max_payload)).await?;
        Ok(named)
    }

    /// Uploads `commit` to `group` in parts of at most `page` octets.
    async fn upload_parts(&self, group: &BareJid, commit: &[u8], page: usize) -> Result<(), GroupError> {
        let parts = Parts::of(commit);
        for (i, octets) in commit.chunks(page.max(1)).enumerate() {
            let upload = PartUpload { parts, offset: (i * page) as u64, octets: octets.to_vec() };
            self.iq(&group.clone().into(), "set", upload.to_element()).await?;
        }
        Ok(())
    }

    /// The message at `position` in `group`'s archive that `parts` names,
    /// fetched page by page and checked against its SHA-256.
    pub async fn fetch_parts(&self, group: &BareJid, position: u64, parts: Parts) -> Result<Vec<u8>, GroupError> {
        if parts.size > FETCHED_MAX as u64 {
            return Err(GroupError::BadParts(format!("larger than {FETCHED_MAX} octets")));
        }
        let mut message = Vec::with_capacity(parts.size as usize);
        while (message.len() as u64) < parts.size {
            let request = PartRequest { position, offset: message.len() as u64 };
            let reply = self.iq(&group.clone().into(), "get", request.to_element()).await?;
            let part = reply.as_ref().map(Part::parse).transpose().map_err(|e| GroupError::BadParts(e.to_string()))?;
            let asked = |p: &Part| p.position == position && p.offset == request.offset && p.size == parts.size;
            let part = part.filter(|p| asked(p) && !p.octets.is_empty()).ok_or_else(|| GroupError::BadParts("not the part asked for".into()))?;
            message.extend_from_slice(&part.octets);
        }
        parts.names(&message).then_some(message).ok_or_else(|| GroupError::BadParts("another SHA-256".into()))
    }

    /// The ratchet tree of `group` at `epoch`, fetched page by page from the
    /// service (xep/ §Fetching the Ratchet Tree). Only decoded here: MLS
    /// verifies it against the GroupContext it is used with.
    pub async fn tree(&self, group: &BareJid, epoch: u64) -> Result<RatchetTreeIn, GroupError> {
        let (mut pages, mut octets, mut page) = (Vec::new(), 0, 0);
        loop {
            let request = TreeRequest { epoch, page };
            let reply = self.iq(&group.clone().into(), "get", request.to_element()).await?;
            let got = reply.as_ref().map(TreePage::parse).transpose().map_err(|e| GroupError::BadTree(e.to_string()))?;
            let got = got.filter(|p| p.epoch == epoch && p.page == page).ok_or_else(|| GroupError::BadTree("not the page asked for".into()))?;
            octets += got.nodes.len();
            if octets > FETCHED_MAX {
                return Err(GroupError::BadTree(format!("larger than {FETCHED_MAX} octets")));
            }
            pages.push(got.nodes);
            page += 1;
            if page >= got.pages {
                break;
            }
        }
        crate::protocol::mls::tree_from_pages(&pages).map_err(|e| GroupError::BadTree(e.reason().into()))
    }
}

/// How a signature key is shown to users: the first 16 octets of its
/// SHA-256, in hexadecimal (xep/ §Checking Leaves).
pub fn fingerprint(key: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(key)[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn accepted(payload: Option<Element>) -> Result<Accepted, GroupError> {
    let el = payload.ok_or_else(|| GroupError::Other("empty reply".into()))?;
    Accepted::parse(&el).map_err(|e| GroupError::Other(e.to_string()))
}
