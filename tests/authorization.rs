//! Who may do what: every operation of the component against every kind of
//! requester, as one table, the table of xep/ §Authorization. A refused
//! request must come back with exactly the documented error and leave the
//! store as it was; an accepted one must have its effect.
//!
//! Each requester makes the request it can make itself (its own JID, its
//! own device, its own commit); the spoofer sends the owner's request with
//! the owner's full JID as 'from'. The cells share one Prosody and one
//! component: cells that change something act on items of their own (a
//! fresh device, group, blob), and the commits that change the group come
//! last.

mod common;

use std::time::Duration;

use common::db::StoreDb;
use common::{expect, member, member_on, Component, Prosody, COMPONENT, OTHER_DOMAIN};
use minidom::Element;
use openmls::group::{MlsGroupCreateConfig, MlsGroupJoinConfig, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY};
use openmls::prelude::{
    GroupEpoch, GroupId, JoinProposal, KeyPackageIn, MlsGroup, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
    ProtocolVersion,
};
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, Serialize};
use xmpp_mls::client::{directory_jid, iq_element, ClientError, GroupClient, GroupError, GroupEvent, Session};
use xmpp_mls::protocol::groups::{epoch_check, parse_group_info, Accepted, CommitBundle, Create, GroupMessage, Proposal};
use xmpp_mls::protocol::keypackages::{key_package_element, parse_claimed, Claim, ClaimOutcome};
use xmpp_mls::protocol::mam::{query_element, Ack, Cursor, NS_MAM, NS_RSM};
use xmpp_mls::protocol::pubsub::{publish_request, simple_request, NS_PUBSUB, NS_PUBSUB_ERRORS};
use xmpp_mls::protocol::vault::VaultRequest;
use xmpp_mls::protocol::{devices, keypackages, n, NS, NS_ERRORS};
use xmpp_mls::store_params;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::ns::{DISCO_INFO, DISCO_ITEMS};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

const CLIENT: &str = "jabber:client";

/// The requesters: the columns of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Actor {
    /// alice@example.org/laptop: the account whose directory it is, and a
    /// device with a leaf in the group.
    Owner,
    /// bob@example.org/phone: another account, with a leaf in the group.
    Member,
    /// alice@example.org/tablet: a live device of the owner's account
    /// without a leaf in the group.
    OtherDevice,
    /// mallory@example.org/pc: an account of the same server, not in the group.
    NonMember,
    /// eve@other.example/pc: an account of another domain, not in the group.
    OtherServer,
    /// mallory@example.org/spoof, sending the owner's request with the
    /// owner's full JID as 'from'.
    Spoofed,
}
use Actor::*;

const ACTORS: [Actor; 6] = [Owner, Member, OtherDevice, NonMember, OtherServer, Spoofed];

#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Allow,
    /// The error: its type, defined condition and application condition
    /// (namespace, element).
    Deny(ErrorType, DefinedCondition, Option<(&'static str, &'static str)>),
}
use Expect::*;

const ALLOW: Expect = Allow;
const FORBIDDEN: Expect = Deny(ErrorType::Auth, DefinedCondition::Forbidden, None);
const NOT_A_MEMBER: Expect = Deny(ErrorType::Auth, DefinedCondition::Forbidden, Some((NS_ERRORS, "not-a-member")));
const NOT_JOINED: Expect = Deny(ErrorType::Modify, DefinedCondition::NotAcceptable, Some((NS_ERRORS, "not-joined")));
const INVALID_JID: Expect = Deny(ErrorType::Modify, DefinedCondition::BadRequest, Some((NS_PUBSUB_ERRORS, "invalid-jid")));

/// The operations: the rows of the table. Directory operations address the
/// owner's directory, group operations the owner's group.
#[derive(Clone, Copy, Debug)]
enum Op {
    PublishDevice,
    RetractDevice,
    ReadDeviceList,
    Subscribe,
    Unsubscribe,
    UploadKeyPackages,
    ListKeyPackages,
    ClaimKeyPackages,
    ReadInbox,
    AckInbox,
    CreateGroup,
    FetchGroupInfo,
    JoinFeed,
    /// Joins with the owner's device ID: only the owner's account may.
    JoinFeedAsOwnerDevice,
    SendMessage,
    QueryArchive,
    ArchiveMetadata,
    AckArchive,
    Propose,
    Commit,
    VaultPut,
    VaultGet,
    VaultList,
    VaultDelete,
    DiscoService,
    DiscoDirectory,
    DiscoGroup,
    /// Last: the requester's account leaves the group.
    LeaveGroup,
}

/// Operation × requester → outcome, as xep/ §Authorization states it.
#[rustfmt::skip]
const MATRIX: &[(Op, [Expect; 6])] = &[
    //                          owner  member        other device  non-member    other server  spoofed from
    (Op::PublishDevice,       [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::RetractDevice,       [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::ReadDeviceList,      [ALLOW, ALLOW,        ALLOW,        ALLOW,        ALLOW,        ALLOW]),
    (Op::Subscribe,           [ALLOW, ALLOW,        ALLOW,        ALLOW,        ALLOW,        INVALID_JID]),
    (Op::Unsubscribe,         [ALLOW, ALLOW,        ALLOW,        ALLOW,        ALLOW,        INVALID_JID]),
    (Op::UploadKeyPackages,   [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::ListKeyPackages,     [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::ClaimKeyPackages,    [ALLOW, ALLOW,        ALLOW,        ALLOW,        ALLOW,        ALLOW]),
    (Op::ReadInbox,           [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::AckInbox,            [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::CreateGroup,         [ALLOW, NOT_A_MEMBER, ALLOW,        NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER]),
    (Op::FetchGroupInfo,      [ALLOW, ALLOW,        ALLOW,        NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER]),
    (Op::JoinFeed,            [ALLOW, ALLOW,        NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER]),
    (Op::JoinFeedAsOwnerDevice, [ALLOW, NOT_A_MEMBER, ALLOW,      NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER]),
    (Op::SendMessage,         [ALLOW, ALLOW,        NOT_JOINED,   NOT_JOINED,   NOT_JOINED,   NOT_JOINED]),
    (Op::QueryArchive,        [ALLOW, ALLOW,        ALLOW,        NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER]),
    (Op::ArchiveMetadata,     [ALLOW, ALLOW,        ALLOW,        NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER]),
    (Op::AckArchive,          [ALLOW, ALLOW,        ALLOW,        NOT_A_MEMBER, NOT_A_MEMBER, FORBIDDEN]),
    (Op::Propose,             [ALLOW, ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::Commit,              [ALLOW, ALLOW,        ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::VaultPut,            [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::VaultGet,            [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::VaultList,           [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::VaultDelete,         [ALLOW, FORBIDDEN,    ALLOW,        FORBIDDEN,    FORBIDDEN,    FORBIDDEN]),
    (Op::DiscoService,        [ALLOW, ALLOW,        ALLOW,        ALLOW,        ALLOW,        ALLOW]),
    (Op::DiscoDirectory,      [ALLOW, ALLOW,        ALLOW,        ALLOW,        ALLOW,        ALLOW]),
    (Op::DiscoGroup,          [ALLOW, ALLOW,        ALLOW,        ALLOW,        ALLOW,        ALLOW]),
    (Op::LeaveGroup,          [ALLOW, ALLOW,        ALLOW,        NOT_A_MEMBER, NOT_A_MEMBER, NOT_A_MEMBER]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_against_every_kind_of_requester() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut fx = Fixture::new(&prosody, &component, &dir).await;
    // The spoofed column is for servers that stamp the sender's JID over
    // a spoofed 'from'; ejabberd refuses such stanzas itself (below).
    let actors = if prosody.stamps_spoofed_from() { &ACTORS[..] } else { &ACTORS[..5] };
    for (op, row) in MATRIX {
        for (actor, expected) in actors.iter().copied().zip(row) {
            let cell = format!("{op:?} by {actor:?}");
            match (expected, fx.run(*op, actor).await) {
                (Allow, Ok(())) => {}
                (Deny(type_, condition, app), Err(e)) => {
                    let app = app.map(|(ns, name)| (ns.to_owned(), name.to_owned()));
                    let got_app = e.other.as_ref().map(|o| (o.ns(), o.name().to_owned()));
                    assert_eq!((&e.type_, &e.defined_condition, got_app), (type_, condition, app), "{cell}");
                    assert_eq!(fx.store.dump(), fx.before, "{cell} was refused, yet the store changed");
                }
                (expected, got) => panic!("{cell}: expected {expected:?}, got {got:?}"),
            }
        }
    }
    if !prosody.stamps_spoofed_from() {
        fx.spoofs_close_the_stream(&prosody).await;
    }
}

/// The accounts, the group, and the store as the last request found it.
struct Fixture {
    store: StoreDb,
    service: Jid,
    group: BareJid,
    owner: GroupClient,
    member: GroupClient,
    other_device: GroupClient,
    non_member: GroupClient,
    other_server: GroupClient,
    spoofer: Session,
    /// The store's digest when the last request went out.
    before: common::db::Dump,
    /// Numbers the items that cells create.
    serial: usize,
}

impl Fixture {
    /// alice's laptop creates a group and adds bob, and sends a message.
    async fn new(prosody: &Prosody, component: &Component, dir: &tempfile::TempDir) -> Self {
        let mut owner = member(prosody, dir, "alice", "laptop").await;
        let mut member_ = member(prosody, dir, "bob", "phone").await;
        let other_device = member(prosody, dir, "alice", "tablet").await;
        let non_member = member(prosody, dir, "mallory", "pc").await;
        let other_server = member_on(prosody, dir, OTHER_DOMAIN, "eve", "pc").await;
        let spoofer = prosody.client("mallory", "spoof").await;
        let group = owner.create().await.unwrap();
        owner.add(&group, &[BareJid::new("bob@example.org").unwrap()]).await.unwrap();
        expect(&mut member_, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
        owner.send_body(&group, "before the matrix").await.unwrap();
        expect(&mut member_, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
        let store = component.db();
        Fixture {
            before: store.dump(),
            store,
            service: Jid::new(COMPONENT).unwrap(),
            group,
            owner,
            member: member_,
            other_device,
            non_member,
            other_server,
            spoofer,
            serial: 0,
        }
    }

    /// Performs `op` as `actor`. `Ok` means the request was accepted and
    /// its effect is there; `Err` is the error it was refused with.
    async fn run(&mut self, op: Op, actor: Actor) -> Result<(), StanzaError> {
        let directory = self.directory();
        let group = Jid::from(self.group.clone());
        match op {
            Op::PublishDevice => {
                let id = self.fresh("published");
                let device = common::mls::TestSigner::new("alice@example.org").device(&id, None);
                self.iq(actor, &directory, "set", publish_request(devices::NODE, vec![(Some(id.clone()), device.to_element())]))
                    .await?;
                assert!(self.owner_devices().await.contains(&id), "{id} is not listed");
            }
            Op::RetractDevice => {
                let id = self.fresh("doomed");
                let device = common::mls::TestSigner::new("alice@example.org").device(&id, None);
                self.owner.session.publish_device(&self.service, &device).await.unwrap();
                self.iq(actor, &directory, "set", simple_request("retract", devices::NODE, &[&id], None)).await?;
                assert!(!self.owner_devices().await.contains(&id), "{id} is still listed");
            }
            Op::ReadDeviceList => {
                let items = self.iq(actor, &directory, "get", simple_request("items", devices::NODE, &[], None)).await?;
                let laptop = self.owner.device().id().to_owned();
                assert!(item_ids(items).contains(&laptop), "the list lacks the owner's {laptop}");
            }
            Op::Subscribe => {
                let jid = self.full_jid(actor.author());
                let reply = self.iq(actor, &directory, "set", simple_request("subscribe", devices::NODE, &[], Some(&jid))).await?;
                let subscription = reply.as_ref().and_then(|p| p.get_child("subscription", NS_PUBSUB)).expect("a subscription");
                assert_eq!((subscription.attr("jid"), subscription.attr("subscription")), (Some(jid.as_str()), Some("subscribed")));
                assert_eq!(self.subscriptions(&jid), 1);
            }
            Op::Unsubscribe => {
                let jid = self.full_jid(actor.author());
                let request = simple_request("subscribe", devices::NODE, &[], Some(&jid));
                self.author(actor).session.iq(&directory, "set", request).await.unwrap();
                self.iq(actor, &directory, "set", simple_request("unsubscribe", devices::NODE, &[], Some(&jid))).await?;
                assert_eq!(self.subscriptions(&jid), 0);
            }
            Op::UploadKeyPackages => {
                let kp = self.owner.device().key_packages(1).unwrap().remove(0);
                let reply = self.iq(actor, &directory, "set", publish_request(keypackages::NODE, vec![(None, key_package_element(&kp))])).await?;
                let [kp_ref] = <[String; 1]>::try_from(item_ids_in(reply, "publish")).unwrap();
                let infos = self.owner.session.key_package_infos(&self.service).await.unwrap();
                assert!(infos.iter().any(|i| i.kp_ref == kp_ref), "{kp_ref} is not in the pool");
            }
            Op::ListKeyPackages => {
                let items = self.iq(actor, &directory, "get", simple_request("items", keypackages::NODE, &[], None)).await?;
                let stored: i64 = self.store.one("SELECT count(*) FROM key_packages WHERE account = 'alice@example.org'", &[]);
                assert_eq!(item_ids(items).len() as i64, stored);
            }
            Op::ClaimKeyPackages => {
                let laptop = self.owner.device().id().to_owned();
                let claim = Claim { cipher_suite: None, devices: vec![laptop.clone()] };
                let reply = self.iq(actor, &directory, "set", claim.to_element()).await?;
                let outcomes = parse_claimed(&reply.expect("claimed")).unwrap();
                assert!(matches!(&outcomes[..], [ClaimOutcome::Claimed { device, .. }] if *device == laptop), "{outcomes:?}");
                // The notice names the account that really sent the claim.
                let sql = "SELECT payload FROM inbox WHERE account = 'alice@example.org' AND payload LIKE '%<key-package-claimed%'
                           ORDER BY seq DESC LIMIT 1";
                let notice: String = self.store.one(sql, &[]);
                let notice: Element = notice.parse().unwrap();
                assert_eq!(notice.attr("by"), Some(self.account(actor.sender()).as_str()));
            }
            Op::ReadInbox => {
                let fin = self.iq(actor, &directory, "set", query_element("inbox", &[], 100, &Cursor::First, false)).await?;
                let inbox: i64 = self.store.one("SELECT count(*) FROM inbox WHERE account = 'alice@example.org'", &[]);
                assert!(inbox > 0);
                assert_eq!(rsm_count(fin), inbox);
            }
            Op::AckInbox => {
                let (id, seq) = self.last_item(None);
                let device = self.author(actor).device().id().to_owned();
                self.iq(actor, &directory, "set", Ack { device: device.clone(), id }.to_element()).await?;
                assert_eq!(self.acked(b"alice@example.org".to_vec(), "alice@example.org", &device), Some(seq));
            }
            Op::CreateGroup => {
                let (jid, group_info) = self.owner_group_info().await;
                self.iq(actor, &jid, "set", Create { group_info }.to_element()).await?;
                let info = Element::builder("query", DISCO_INFO).build();
                self.owner.session.iq(&jid, "get", info).await.expect("the group exists");
            }
            Op::FetchGroupInfo => {
                let reply = self.iq(actor, &group, "get", Element::builder("group-info", NS).build()).await?;
                let (epoch, info) = parse_group_info(&reply.expect("group-info")).unwrap();
                assert_eq!((epoch, info), self.group_state());
            }
            Op::JoinFeed => {
                let device = self.author(actor).device().id().to_owned();
                let presence = Element::builder("presence", CLIENT)
                    .attr(n("to"), format!("{}/{device}", self.group))
                    .attr(n("id"), self.fresh("join"))
                    .build();
                let reply = self.stanza(actor, presence).await?;
                let epoch = reply.get_child("x", NS).and_then(|x| x.attr("epoch")).expect("the epoch");
                assert_eq!(epoch.parse::<u64>().unwrap(), self.group_state().0);
                let on_feed: String =
                    self.store.one("SELECT full_jid FROM feed WHERE group_id = ?1 AND device_id = ?2", store_params![self.group_id(), device]);
                assert_eq!(on_feed, self.full_jid(actor));
            }
            Op::JoinFeedAsOwnerDevice => {
                let device = self.owner.device().id().to_owned();
                let presence = Element::builder("presence", CLIENT)
                    .attr(n("to"), format!("{}/{device}", self.group))
                    .attr(n("id"), self.fresh("join"))
                    .build();
                self.stanza(actor, presence).await?;
                let sql = "SELECT full_jid FROM feed WHERE group_id = ?1 AND account = 'alice@example.org' AND device_id = ?2";
                let on_feed: String = self.store.one(sql, store_params![self.group_id(), device]);
                assert_eq!(on_feed, self.full_jid(actor));
                let feeds: i64 = self.store.one("SELECT count(*) FROM feed WHERE device_id = ?1", store_params![device]);
                assert_eq!(feeds, 1, "one entry for the laptop, of alice's account");
                // The later cells send from the laptop: it joins again.
                let group = self.group.clone();
                self.owner.join_feed(&group).await.unwrap();
            }
            Op::SendMessage => self.send_message(actor).await?,
            Op::QueryArchive => {
                let fin = self.iq(actor, &group, "set", query_element("archive", &[], 100, &Cursor::First, false)).await?;
                assert!(rsm_count(fin) > 0, "an empty archive");
            }
            Op::ArchiveMetadata => {
                let reply = self.iq(actor, &group, "get", Element::builder("metadata", NS_MAM).build()).await?;
                let (last, _) = self.last_item(Some(self.group_id()));
                let end = reply.as_ref().and_then(|m| m.get_child("end", NS_MAM)).and_then(|e| e.attr("id"));
                assert_eq!(end, Some(last.as_str()));
            }
            Op::AckArchive => {
                let (id, seq) = self.last_item(Some(self.group_id()));
                let device = self.author(actor).device().id().to_owned();
                let account = self.account(actor).to_string();
                self.iq(actor, &group, "set", Ack { device: device.clone(), id }.to_element()).await?;
                let scope = self.group_id();
                assert_eq!(self.acked(scope, &account, &device), Some(seq));
            }
            Op::Propose => {
                let accepted = self.propose(actor).await?;
                assert_eq!(self.kind_of(&accepted.stanza_id), "proposal");
            }
            Op::Commit => {
                let accepted = self.commit(actor).await?;
                assert_eq!(accepted.epoch, self.group_state().0);
                assert_eq!(self.kind_of(&accepted.stanza_id), "commit");
            }
            Op::VaultPut => {
                let name = self.fresh("put");
                let put = VaultRequest::Put { name: name.clone(), if_version: 0, data: b"sealed".to_vec() };
                self.iq(actor, &directory, "set", put.to_element()).await?;
                assert_eq!(self.blob(&name), Some((1, b"sealed".to_vec())));
            }
            Op::VaultGet => {
                let name = self.owner_blob().await;
                let reply = self.iq(actor, &directory, "get", VaultRequest::Get { name }.to_element()).await?;
                let item = reply.as_ref().and_then(|v| v.get_child("item", NS)).expect("an item");
                assert_eq!(item.text(), "c2VhbGVk", "the blob's data in base64");
            }
            Op::VaultList => {
                let name = self.owner_blob().await;
                let reply = self.iq(actor, &directory, "get", VaultRequest::List { max: None, cursor: Cursor::First }.to_element()).await?;
                let names: Vec<_> = reply.iter().flat_map(|v| v.children()).filter_map(|c| c.attr("name")).collect();
                assert!(names.contains(&name.as_str()), "{names:?}");
            }
            Op::VaultDelete => {
                let name = self.owner_blob().await;
                self.iq(actor, &directory, "set", VaultRequest::Delete { name: name.clone(), if_version: 1 }.to_element()).await?;
                assert_eq!(self.blob(&name), None);
            }
            Op::DiscoService => self.disco(actor, self.service.clone(), ("component", "mls"), 0).await?,
            Op::DiscoDirectory => self.disco(actor, directory, ("pubsub", "pep"), 2).await?,
            Op::DiscoGroup => self.disco(actor, group, ("conference", "mls"), 0).await?,
            Op::LeaveGroup => {
                self.iq(actor, &group, "set", Element::builder("leave", NS).build()).await?;
                let account = self.account(actor).to_string();
                let sql = "SELECT left_group FROM group_joins WHERE group_id = ?1 AND account = ?2";
                let left: i64 = self.store.one(sql, store_params![self.group_id(), account]);
                assert_eq!(left, 1, "{account} has not left");
                let on_feed: i64 =
                    self.store.one("SELECT count(*) FROM feed WHERE group_id = ?1 AND account = ?2", store_params![self.group_id(), account]);
                assert_eq!(on_feed, 0, "{account} is still on the feed");
            }
        }
        Ok(())
    }

    /// A device with a leaf sends its own message and awaits its echo;
    /// any other requester replays the group's latest ciphertext.
    async fn send_message(&mut self, actor: Actor) -> Result<(), StanzaError> {
        let group = self.group.clone();
        if self.in_group(actor) {
            self.note_store();
            let client = self.client(actor);
            let id = client.send_body(&group, "in the matrix").await.map_err(stanza_error)?;
            expect(client, "echo", |e| matches!(e, GroupEvent::Delivered { id: i, .. } if *i == id)).await;
            return Ok(());
        }
        let message = Element::builder("message", CLIENT)
            .attr(n("to"), group.as_str())
            .attr(n("type"), "groupchat")
            .attr(n("id"), self.fresh("replay"))
            .append(GroupMessage::new(self.last_archived("application")).to_element())
            .build();
        self.stanza(actor, message).await.map(drop)
    }

    /// A device with a leaf proposes its own update; a device without one
    /// can only make an external proposal; the spoofer replays the owner's
    /// latest proposal.
    async fn propose(&mut self, actor: Actor) -> Result<Accepted, StanzaError> {
        let group = self.group.clone();
        if self.in_group(actor) {
            self.note_store();
            return self.client(actor).propose_update(&group).await.map_err(stanza_error);
        }
        let message = match actor {
            Spoofed => self.last_archived("proposal"),
            _ => self.join_proposal(actor),
        };
        Ok(accepted(self.iq(actor, &group.into(), "set", Proposal { message }.to_element()).await?))
    }

    /// A device with a leaf commits an update of its own; a device without
    /// one commits externally from the latest GroupInfo; the spoofer sends
    /// a commit of the owner's for the current epoch.
    async fn commit(&mut self, actor: Actor) -> Result<Accepted, StanzaError> {
        let group = self.group.clone();
        if self.in_group(actor) {
            self.note_store();
            return self.client(actor).update(&group).await.map_err(stanza_error);
        }
        let bundle = match actor {
            Spoofed => self.owner_commit().await,
            _ => {
                let (_, info) = self.group_state();
                external_commit(self.client(actor), &info)
            }
        };
        Ok(accepted(self.iq(actor, &group.into(), "set", bundle.to_element()).await?))
    }

    /// disco#info (its identity) and disco#items (how many) of `jid`.
    async fn disco(&mut self, actor: Actor, jid: Jid, identity: (&str, &str), items: usize) -> Result<(), StanzaError> {
        let info = self.iq(actor, &jid, "get", Element::builder("query", DISCO_INFO).build()).await?.expect("info");
        let id = info.get_child("identity", DISCO_INFO).expect("an identity");
        assert_eq!((id.attr("category"), id.attr("type")), (Some(identity.0), Some(identity.1)));
        let list = self.iq(actor, &jid, "get", Element::builder("query", DISCO_ITEMS).build()).await?.expect("items");
        assert_eq!(list.children().count(), items);
        Ok(())
    }

    /// Notes the store, then sends an IQ as `actor` and returns the
    /// result's payload. A spoofed IQ goes out on the spoofer's stream
    /// with the owner's full JID as 'from': the server replaces it with the
    /// spoofer's own, so the answer must come back to the spoofer.
    async fn iq(&mut self, actor: Actor, to: &Jid, type_: &str, payload: Element) -> Result<Option<Element>, StanzaError> {
        if actor != Spoofed {
            self.note_store();
            return self.client(actor).session.iq(to, type_, payload).await.map_err(|e| stanza_error(e.into()));
        }
        let iq = iq_element(type_, &self.spoofer.next_id(), to.as_str(), Some(payload));
        let reply = self.spoof(iq).await;
        match reply.attr("type") {
            Some("result") => Ok(reply.children().next().cloned()),
            _ => Err(error_of(&reply)),
        }
    }

    /// Notes the store, sends a message or presence as `actor`, and waits
    /// for the answer: a stanza of the same kind from where it was sent,
    /// or with its id (an echo).
    async fn stanza(&mut self, actor: Actor, stanza: Element) -> Result<Element, StanzaError> {
        let reply = if actor == Spoofed {
            self.spoof(stanza).await
        } else {
            self.note_store();
            let session = &mut self.client(actor).session;
            session.send(stanza.clone()).await.unwrap();
            answer(session, &stanza).await
        };
        match reply.attr("type") {
            Some("error") => Err(error_of(&reply)),
            _ => Ok(reply),
        }
    }

    /// Sends `stanza` from the spoofer with 'from' set to the owner's full
    /// JID; the answer must reach the spoofer, the real sender.
    async fn spoof(&mut self, mut stanza: Element) -> Element {
        let owner = self.owner.session.jid().to_string();
        stanza.set_attr(minidom::rxml::Namespace::NONE, n("from"), owner);
        self.note_store();
        let reply = if stanza.name() == "iq" {
            self.spoofer.request(stanza).await.expect("an answer to the real sender")
        } else {
            self.spoofer.send(stanza.clone()).await.unwrap();
            answer(&mut self.spoofer, &stanza).await
        };
        assert_eq!(reply.attr("to"), Some(self.spoofer.jid().as_str()), "not answered to the real sender");
        reply
    }

    fn note_store(&mut self) {
        self.before = self.store.dump();
    }

    /// ejabberd refuses a stanza whose 'from' names another account before
    /// routing it, whatever the stanza carries: it closes the sender's
    /// stream with `<invalid-from/>`. One spoofed stanza of each kind, each
    /// on a stream of its own, and none changes the store.
    async fn spoofs_close_the_stream(&mut self, server: &Prosody) {
        let owner_device = self.owner.device().id().to_owned();
        let put = VaultRequest::Put { name: self.fresh("spoofed"), if_version: 0, data: b"sealed".to_vec() };
        let stanzas = [
            iq_element("set", &self.spoofer.next_id(), self.directory().as_str(), Some(put.to_element())),
            Element::builder("message", CLIENT)
                .attr(n("to"), self.group.as_str())
                .attr(n("type"), "groupchat")
                .append(GroupMessage::new(self.last_archived("application")).to_element())
                .build(),
            Element::builder("presence", CLIENT).attr(n("to"), format!("{}/{owner_device}", self.group)).build(),
        ];
        for mut stanza in stanzas {
            stanza.set_attr(minidom::rxml::Namespace::NONE, n("from"), self.owner.session.jid().to_string());
            let kind = stanza.name().to_owned();
            self.note_store();
            server.assert_closed_for_invalid_from(&mut self.spoofer, stanza).await;
            assert_eq!(self.store.dump(), self.before, "a spoofed {kind} changed the store");
            self.spoofer = server.client("mallory", "spoof").await;
        }
    }

    /// The client that sends as `actor` (never the spoofer).
    fn client(&mut self, actor: Actor) -> &mut GroupClient {
        match actor {
            Owner => &mut self.owner,
            Member => &mut self.member,
            OtherDevice => &mut self.other_device,
            NonMember => &mut self.non_member,
            OtherServer => &mut self.other_server,
            Spoofed => panic!("the spoofer has no client"),
        }
    }

    /// The client whose request `actor` sends: the spoofer sends the owner's.
    fn author(&mut self, actor: Actor) -> &mut GroupClient {
        self.client(actor.author())
    }

    fn full_jid(&mut self, actor: Actor) -> String {
        match actor {
            Spoofed => self.spoofer.jid().to_string(),
            a => self.client(a).session.jid().to_string(),
        }
    }

    fn account(&mut self, actor: Actor) -> BareJid {
        Jid::new(&self.full_jid(actor)).unwrap().to_bare()
    }

    fn directory(&self) -> Jid {
        directory_jid(&BareJid::new("alice@example.org").unwrap(), &self.service)
    }

    fn fresh(&mut self, what: &str) -> String {
        self.serial += 1;
        format!("{what}-{}", self.serial)
    }

    fn group_id(&self) -> Vec<u8> {
        match xmpp_mls::protocol::address::Address::parse(&Jid::from(self.group.clone())) {
            Ok(xmpp_mls::protocol::address::Address::Group(id)) => id,
            other => panic!("{other:?}"),
        }
    }

    /// The group's epoch and latest GroupInfo, as the service holds them.
    fn group_state(&self) -> (u64, Vec<u8>) {
        let sql = "SELECT epoch, group_info FROM groups WHERE group_id = ?1";
        let (epoch, info): (i64, Vec<u8>) = self.store.two(sql, store_params![self.group_id()]);
        (epoch as u64, info)
    }

    /// Whether `actor` sends from a device with a leaf in the group.
    fn in_group(&mut self, actor: Actor) -> bool {
        if actor == Spoofed {
            return false;
        }
        let key = self.client(actor).device().signature_key().to_vec();
        let n: i64 =
            self.store.one("SELECT count(*) FROM members WHERE group_id = ?1 AND signature_key = ?2", store_params![self.group_id(), key]);
        n > 0
    }

    /// The MLS message of the group's latest archived item of `kind`.
    fn last_archived(&self, kind: &str) -> Vec<u8> {
        let sql = format!("SELECT message FROM archive WHERE {} AND {KIND} = ?2 ORDER BY pos DESC LIMIT 1", common::GROUP_ROWS);
        self.store.one(&sql, store_params![self.group_id(), kind])
    }

    /// The stanza id and position of the latest item of the group's archive
    /// or, with `None`, of alice's inbox.
    fn last_item(&self, group: Option<Vec<u8>>) -> (String, i64) {
        let Some(id) = group else {
            let sql = "SELECT stanza_id, seq FROM inbox WHERE account = ?1 ORDER BY seq DESC LIMIT 1";
            return self.store.two(sql, store_params!["alice@example.org"]);
        };
        // Positions are pos's low 32 bits (a decimal mask: PostgreSQL 15 has no hex literals).
        let sql = format!("SELECT pos & 4294967295, message FROM archive WHERE {} ORDER BY pos DESC LIMIT 1", common::GROUP_ROWS);
        let (seq, message): (i64, Vec<u8>) = self.store.two(&sql, store_params![id]);
        (xmpp_mls::store::stanza_id(&id, seq as u64, &message), seq)
    }

    fn kind_of(&self, stanza_id: &str) -> String {
        let pos = common::archive_pos(&self.store, stanza_id);
        self.store.one(&format!("SELECT {KIND} FROM archive WHERE pos = ?1"), store_params![pos])
    }

    fn subscriptions(&self, jid: &str) -> i64 {
        self.store.one("SELECT count(*) FROM subscriptions WHERE account = 'alice@example.org' AND subscriber = ?1", store_params![jid])
    }

    fn acked(&self, scope: Vec<u8>, account: &str, device: &str) -> Option<i64> {
        let sql = "SELECT seq FROM acks WHERE scope = ?1 AND account = ?2 AND device_id = ?3";
        self.store.opt(sql, store_params![scope, account, device])
    }

    /// alice's blob `name` as (version, data).
    fn blob(&self, name: &str) -> Option<(i64, Vec<u8>)> {
        let sql = "SELECT version, data FROM vault WHERE account = 'alice@example.org' AND name = ?1";
        self.store.with(|c| c.query_opt(sql, store_params![name], |r| Ok((r.get(0)?, r.get(1)?))))
    }

    /// A new blob "sealed" at version 1, written by the owner.
    async fn owner_blob(&mut self) -> String {
        let name = self.fresh("blob");
        let put = VaultRequest::Put { name: name.clone(), if_version: 0, data: b"sealed".to_vec() };
        self.owner.session.iq(&self.directory(), "set", put.to_element()).await.unwrap();
        name
    }

    async fn owner_devices(&mut self) -> Vec<String> {
        let alice = BareJid::new("alice@example.org").unwrap();
        self.owner.session.devices(&self.service, &alice).await.unwrap().into_iter().map(|d| d.id).collect()
    }

    /// The GroupInfo of a new, unregistered group whose one leaf is the
    /// owner's laptop and whose external sender is the service, and the
    /// group's JID.
    async fn owner_group_info(&mut self) -> (Jid, Vec<u8>) {
        let sender = self.owner.session.external_sender(&self.service).await.unwrap().expect("advertised");
        let extensions = openmls::prelude::Extensions::single(openmls::prelude::Extension::ExternalSenders(vec![sender])).unwrap();
        let device = self.owner.device();
        let provider = device.provider();
        let id: [u8; 16] = rand::random();
        let config = MlsGroupCreateConfig::builder()
            .use_ratchet_tree_extension(true)
            .ciphersuite(xmpp_mls::client::CIPHERSUITE)
            .with_group_context_extensions(extensions)
            .build();
        let group = MlsGroup::new_with_group_id(provider, device.signer(), &config, GroupId::from_slice(&id), device.credential_with_key())
            .unwrap();
        let info = group.export_group_info(provider.crypto(), device.signer(), true).unwrap();
        let jid = format!("{}@{COMPONENT}", xmpp_mls::protocol::address::group_node(&id));
        (Jid::new(&jid).unwrap(), bytes(&info))
    }

    /// A commit of the owner's laptop for the current epoch, staged and
    /// then dropped by the laptop.
    async fn owner_commit(&mut self) -> CommitBundle {
        let group = self.group.clone();
        self.owner.catch_up(&group, &mut |_, _, _| {}).await.unwrap();
        let bundle = self.owner.stage_add(&group, Vec::new()).await.unwrap();
        self.owner.discard_pending(&group).unwrap();
        bundle
    }

    /// An external proposal (RFC 9420 new_member_proposal) to add `actor`'s
    /// device, for the group's current epoch.
    fn join_proposal(&mut self, actor: Actor) -> Vec<u8> {
        let (epoch, _) = self.group_state();
        let group_id = GroupId::from_slice(&self.group_id());
        let device = self.client(actor).device();
        let kp = device.key_packages(1).unwrap().remove(0);
        let MlsMessageBodyIn::KeyPackage(kp) = MlsMessageIn::tls_deserialize_exact(&kp).unwrap().extract() else {
            panic!("not a KeyPackage")
        };
        let kp: KeyPackageIn = kp;
        let kp = kp.validate(device.provider().crypto(), ProtocolVersion::Mls10).unwrap();
        let message = JoinProposal::new::<openmls_memory_storage::MemoryStorage>(kp, group_id, GroupEpoch::from(epoch), device.signer())
            .unwrap();
        bytes(&message)
    }
}

impl Actor {
    /// Whose request this actor sends: the spoofer sends the owner's.
    fn author(self) -> Actor {
        if self == Spoofed { Owner } else { self }
    }

    /// Who really sends it: the spoofer is mallory, whatever 'from' says.
    fn sender(self) -> Actor {
        if self == Spoofed { NonMember } else { self }
    }
}

/// An external commit by `client`'s device from the GroupInfo `info`, as
/// anyone who obtained the GroupInfo could make it.
fn external_commit(client: &GroupClient, info: &[u8]) -> CommitBundle {
    let MlsMessageBodyIn::GroupInfo(info) = MlsMessageIn::tls_deserialize_exact(info).unwrap().extract() else {
        panic!("not a GroupInfo")
    };
    let device = client.device();
    let provider = device.provider();
    let config = MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build();
    let (mut group, bundle) = MlsGroup::external_commit_builder()
        .with_config(config)
        .build_group(provider, info, device.credential_with_key())
        .unwrap()
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), device.signer(), |_| true)
        .unwrap()
        .finalize(provider)
        .unwrap();
    group.merge_pending_commit(provider).unwrap();
    let (commit, _, group_info) = bundle.into_messages();
    CommitBundle {
        commit: bytes(&commit),
        parts: None,
        welcome: None,
        group_info: bytes(&group_info.expect("a GroupInfo")),
        epoch_check: epoch_check(group.epoch_authenticator().as_slice()),
    }
}

fn bytes(message: &MlsMessageOut) -> Vec<u8> {
    message.tls_serialize_detached().unwrap()
}

/// Waits for the answer to `sent` on `session`: a stanza of the same kind
/// from the address it went to, or carrying its id.
async fn answer(session: &mut Session, sent: &Element) -> Element {
    loop {
        let stanza = session.next_event_within(Duration::from_secs(10)).await.expect("an answer");
        let from_target = stanza.attr("from") == sent.attr("to");
        let same_id = sent.attr("id").is_some() && stanza.attr("id") == sent.attr("id");
        if stanza.name() == sent.name() && (from_target || same_id) {
            return stanza;
        }
    }
}

fn error_of(reply: &Element) -> StanzaError {
    StanzaError::try_from(reply.get_child("error", CLIENT).expect("an <error/>").clone()).unwrap()
}

/// The stanza error of a refused request; anything else fails the test.
fn stanza_error(e: GroupError) -> StanzaError {
    match e {
        GroupError::Client(ClientError::Stanza(e)) => *e,
        other => panic!("expected a stanza error, got {other}"),
    }
}

fn accepted(reply: Option<Element>) -> Accepted {
    Accepted::parse(&reply.expect("accepted")).unwrap()
}

/// The ids of the items of a pubsub result's `<items/>`.
fn item_ids(reply: Option<Element>) -> Vec<String> {
    item_ids_in(reply, "items")
}

fn item_ids_in(reply: Option<Element>, container: &str) -> Vec<String> {
    let reply = reply.expect("a pubsub result");
    let container = reply.get_child(container, NS_PUBSUB).expect("the action's element");
    container.children().filter_map(|i| i.attr("id")).map(str::to_owned).collect()
}

/// The RSM count of a MAM `<fin/>`.
fn rsm_count(fin: Option<Element>) -> i64 {
    let fin = fin.expect("a <fin/>");
    let set = fin.get_child("set", NS_RSM).expect("an RSM set");
    set.get_child("count", NS_RSM).expect("a count").text().parse().unwrap()
}

/// SQL: the name of an archived item's kind (the store keeps a number).
const KIND: &str = "CASE kind WHEN 0 THEN 'application' WHEN 1 THEN 'commit' ELSE 'proposal' END";
