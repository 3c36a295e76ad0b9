//! The service's side of the flows, scripted. [`Service`] answers what a
//! device's [`Machine`] sends as xep/ says the service does, with the
//! protocol crate's own builders, records every request, and keeps only
//! what its answers need: device lists, one KeyPackage per device, per group
//! its epoch, latest GroupInfo, archive and feed, per account its inbox.
//! What it pushes (feed copies, Welcomes) is in flight until a test
//! delivers it with [`Service::deliver`]; IQ answers come back at once.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use minidom::Element;
use openmls::prelude::ContentType;
use openmls_rust_crypto::RustCrypto;
use xmpp_parsers::jid::{BareJid, FullJid, Jid};
use xmpp_parsers::ns::DISCO_INFO;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::client::{directory_jid, Device, Done, GroupError, GroupEvent, Machine, Operation};
use crate::protocol::address::{group_node, Address};
use crate::protocol::devices::{Device as DeviceItem, NODE as DEVICES};
use crate::protocol::disco::{service_info, AnnouncedLimits};
use crate::protocol::error::{stanza_error, AppCondition};
use crate::protocol::groups::{
    group_info_element, joined_element, Accepted, CommitBundle, Create, GroupMessage, Kind, Welcome, WrongEpoch,
};
use crate::protocol::keypackages::{claimed_element, inspect, ref_hex, Claim, ClaimOutcome, Policy};
use crate::protocol::mam::{result_message, Ack, Fin, MamQuery, NS_MAM};
use crate::protocol::mls::{public_message, welcome};
use crate::protocol::pubsub::{items_result, PubsubRequest, NS_PUBSUB};
use crate::protocol::{n, NS, NS_SID};
use crate::xmpp::namespace::CLIENT;

pub const DOMAIN: &str = "mls.example.org";
/// The only cipher suite the service takes (RFC 9420 code point 1, the client's).
const SUITE: u16 = 1;
/// The longest KeyPackage lifetime it accepts: 90 days.
const LIFETIME: u64 = 90 * 24 * 3600;

/// A request of a device, as the service read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// disco#info of the service (its limits form).
    Info,
    /// The device list of an account.
    Devices(BareJid),
    /// A subscription to the device list of an account (the leaf checks follow it).
    Subscribe(BareJid),
    /// One KeyPackage per device of an account.
    Claim(BareJid),
    Create(BareJid),
    /// A commit bundle whose Commit is of `epoch`.
    Commit { group: BareJid, epoch: u64 },
    /// A MAM query of an archive (a group's or an account's inbox).
    Query { archive: Jid, after: Option<String> },
    Ack { archive: Jid, id: String },
    GroupInfo(BareJid),
    /// Presence to the group's feed.
    Join(BareJid),
}

/// A device with its machine; its JID's resource is its device id, which
/// is how the service knows which device sent a commit.
pub struct Client {
    pub machine: Machine,
    pub jid: FullJid,
    _dir: tempfile::TempDir,
}

impl Client {
    pub fn account(&self) -> BareJid {
        self.jid.to_bare()
    }

    /// The device as a member: (account, device id).
    pub fn member(&self) -> (BareJid, String) {
        (self.account(), self.machine.device_id().to_owned())
    }

    /// The events so far.
    pub fn events(&mut self) -> Vec<GroupEvent> {
        std::iter::from_fn(|| self.machine.poll_event()).collect()
    }

    /// The device starts again from its file, on a new stream with the same JID.
    pub fn restart(&mut self, service: &mut Service) {
        let path = self._dir.path().join(DEVICE_FILE);
        let device = Device::open(&path, &self.account()).expect("the device");
        self.machine = Machine::new(device, self.jid.clone(), Jid::new(DOMAIN).expect("a JID"), service.start)
            .expect("a machine");
        service.pump(self);
    }
}

const DEVICE_FILE: &str = "device.sqlite3";

/// An archived group message.
struct Item {
    stanza_id: String,
    sender: String,
    message: GroupMessage,
}

#[derive(Default)]
struct Group {
    epoch: u64,
    group_info: Vec<u8>,
    items: Vec<Item>,
    /// Items of the archive that retention deleted, from the first.
    pruned: usize,
    feed: Vec<FullJid>,
}

type Answer = Result<Option<Element>, StanzaError>;

pub struct Service {
    /// The time every device's machine starts at.
    pub start: Instant,
    /// Every request, in the order the service received them.
    pub requests: Vec<Request>,
    /// Every commit bundle submitted, accepted or not.
    pub bundles: Vec<CommitBundle>,
    devices: HashMap<BareJid, Vec<DeviceItem>>,
    key_packages: HashMap<String, Vec<u8>>,
    /// The account of each claimed KeyPackage, by KeyPackageRef: where its Welcome goes.
    claimed: HashMap<Vec<u8>, BareJid>,
    groups: HashMap<Vec<u8>, Group>,
    inboxes: HashMap<BareJid, Vec<(String, Element)>>,
    /// Stanzas pushed to each device and not delivered yet.
    in_flight: HashMap<FullJid, VecDeque<Element>>,
}

impl Service {
    pub fn new() -> Self {
        Service {
            start: Instant::now(),
            requests: Vec::new(),
            bundles: Vec::new(),
            devices: HashMap::new(),
            key_packages: HashMap::new(),
            claimed: HashMap::new(),
            groups: HashMap::new(),
            inboxes: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

    /// A new device of `account`, in the account's device list with one
    /// KeyPackage on the service, its machine started.
    pub fn client(&mut self, account: &str) -> Client {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let account = BareJid::new(account).expect("a bare JID");
        let device = Device::create(&dir.path().join(DEVICE_FILE), account.clone(), None).expect("a device");
        let key_package = device.key_packages(1).expect("a KeyPackage").remove(0);
        self.key_packages.insert(device.id().to_owned(), key_package);
        self.devices.entry(account.clone()).or_default().push(device.item(None));
        let jid = FullJid::new(&format!("{account}/{}", device.id())).expect("a full JID");
        let machine = Machine::new(device, jid.clone(), Jid::new(DOMAIN).expect("a JID"), self.start).expect("a machine");
        self.in_flight.insert(jid.clone(), VecDeque::new());
        let mut client = Client { machine, jid, _dir: dir };
        self.pump(&mut client);
        client
    }

    /// Runs `op` to its end, answering what the device sends meanwhile.
    pub fn run(&mut self, client: &mut Client, op: Operation) -> Result<Done, GroupError> {
        let id = client.machine.start(op);
        self.pump(client);
        let (done, outcome) = client.machine.poll_done().expect("the operation finished");
        assert_eq!(done, id, "the outcome of another operation");
        outcome
    }

    /// Answers what the device sends until it sends nothing more.
    pub fn pump(&mut self, client: &mut Client) {
        while let Some(stanza) = client.machine.poll_transmit() {
            self.receive(client, stanza);
        }
    }

    /// One stanza from the device; the answer goes back at once.
    pub fn receive(&mut self, client: &mut Client, stanza: Element) {
        for answer in self.answers(&client.jid, &stanza) {
            client.machine.receive(answer);
        }
    }

    /// What the service answers to a stanza from `from` (MAM results
    /// before the IQ's result).
    pub fn answers(&mut self, from: &FullJid, stanza: &Element) -> Vec<Element> {
        match stanza.name() {
            "iq" => self.iq(stanza, from),
            "presence" => self.presence(stanza, from).into_iter().collect(),
            _ => panic!("unscripted stanza: {}", String::from(stanza)),
        }
    }

    /// Delivers what is in flight to the device, answering what follows.
    pub fn deliver(&mut self, client: &mut Client) {
        while let Some(stanza) = self.in_flight.get_mut(&client.jid).and_then(VecDeque::pop_front) {
            client.machine.receive(stanza);
            self.pump(client);
        }
    }

    /// The device went offline: what was in flight to it is lost, and it
    /// is on no feed any more.
    pub fn disconnect(&mut self, client: &Client) {
        self.in_flight.remove(&client.jid);
        for group in self.groups.values_mut() {
            group.feed.retain(|jid| *jid != client.jid);
        }
    }

    /// Retention deleted the group's archive through `position`.
    pub fn prune(&mut self, group: &BareJid, position: usize) {
        self.group(&group_id(&group.clone().into())).pruned = position;
    }

    fn group(&mut self, id: &[u8]) -> &mut Group {
        self.groups.get_mut(id).expect("a group the service knows")
    }

    fn push(&mut self, to: &FullJid, stanza: Element) {
        self.in_flight.entry(to.clone()).or_default().push_back(stanza);
    }

    fn iq(&mut self, iq: &Element, from: &FullJid) -> Vec<Element> {
        let to = Jid::new(iq.attr("to").unwrap_or(DOMAIN)).expect("a JID");
        let payload = iq.children().next().expect("an IQ with a payload");
        let mut results = Vec::new();
        let (request, answer) = match (payload.name(), payload.ns().as_str()) {
            ("query", DISCO_INFO) => (Request::Info, Ok(Some(service_info(&limits()).into()))),
            ("pubsub", NS_PUBSUB) => self.device_list(&to, payload),
            ("claim", NS) => self.claim(&to, payload),
            ("create", NS) => self.create(&to, payload),
            ("commit", NS) => self.commit(&to, payload, from),
            ("group-info", NS) => self.group_info(&to),
            ("query", NS_MAM) => self.query(&to, payload, from, &mut results),
            ("ack", NS) => {
                let ack = Ack::parse(payload).expect("a conforming ack");
                assert_eq!(ack.device, from.resource().as_str(), "an ack for another device");
                (Request::Ack { archive: to.clone(), id: ack.id }, Ok(None))
            }
            _ => panic!("unscripted request: {}", String::from(iq)),
        };
        self.requests.push(request);
        results.push(reply(iq, from, answer));
        results
    }

    /// The answer to joining a feed; none to the initial presence.
    fn presence(&mut self, presence: &Element, from: &FullJid) -> Option<Element> {
        let occupant = FullJid::new(presence.attr("to")?).expect("presence to group/device");
        let group = self.group(&group_id(&occupant.to_bare().into()));
        if !group.feed.contains(from) {
            group.feed.push(from.clone());
        }
        let joined = joined_element(group.epoch);
        self.requests.push(Request::Join(occupant.to_bare()));
        Some(
            Element::builder("presence", CLIENT)
                .attr(n("from"), occupant.as_str())
                .attr(n("to"), from.as_str())
                .append(joined)
                .build(),
        )
    }

    fn device_list(&mut self, to: &Jid, payload: &Element) -> (Request, Answer) {
        let account = directory_account(to);
        match PubsubRequest::try_from(payload) {
            Ok(PubsubRequest::Items { node, .. }) if node == DEVICES => {}
            Ok(PubsubRequest::Subscribe { node, .. }) if node == DEVICES => {
                return (Request::Subscribe(account), Ok(None));
            }
            other => panic!("unscripted pubsub request: {other:?}"),
        }
        let items = self.devices.get(&account).into_iter().flatten().map(|d| (d.id.clone(), d.to_element())).collect();
        (Request::Devices(account), Ok(Some(items_result(DEVICES, items))))
    }

    /// Hands out (and deletes) the KeyPackage of each device asked for.
    fn claim(&mut self, to: &Jid, payload: &Element) -> (Request, Answer) {
        let account = directory_account(to);
        let claim = Claim::parse(payload).expect("a conforming claim");
        assert_eq!(claim.cipher_suite, Some(SUITE));
        let devices = self.devices.get(&account).cloned().unwrap_or_default();
        let outcomes: Vec<ClaimOutcome> = devices
            .iter()
            .filter(|d| claim.devices.is_empty() || claim.devices.contains(&d.id))
            .map(|d| {
                let device = d.id.clone();
                let Some(message) = self.key_packages.remove(&device) else {
                    return ClaimOutcome::Exhausted { device };
                };
                let inspected = inspect(&RustCrypto::default(), &message, &account, &devices, &policy());
                let kp_ref = inspected.expect("a KeyPackage the service took").kp_ref;
                self.claimed.insert(kp_ref.clone(), account.clone());
                ClaimOutcome::Claimed { device, kp_ref: ref_hex(&kp_ref), last_resort: false, message }
            })
            .collect();
        (Request::Claim(account), Ok(Some(claimed_element(&outcomes))))
    }

    fn create(&mut self, to: &Jid, payload: &Element) -> (Request, Answer) {
        let id = group_id(to);
        let create = Create::parse(payload).expect("a conforming create");
        self.groups.insert(id.clone(), Group { group_info: create.group_info, ..Group::default() });
        (Request::Create(group_jid(&id)), Ok(None))
    }

    /// Exactly one commit wins an epoch: one of another epoch is refused
    /// with wrong-epoch; the winner is archived, fanned out to the feed,
    /// and its Welcome goes to the inboxes of the accounts it adds.
    fn commit(&mut self, to: &Jid, payload: &Element, from: &FullJid) -> (Request, Answer) {
        let id = group_id(to);
        let bundle = CommitBundle::parse(payload).expect("a conforming bundle");
        let epoch = public_message(&bundle.commit, &id, ContentType::Commit).expect("a Commit").epoch().as_u64();
        self.bundles.push(bundle.clone());
        let request = Request::Commit { group: group_jid(&id), epoch };
        let group = self.group(&id);
        if epoch != group.epoch {
            let last = group.items.iter().rev().find(|i| i.message.kind == Some(Kind::Commit));
            let wrong = WrongEpoch { epoch: group.epoch, commit: last.map(|i| i.stanza_id.clone()) };
            let error = stanza_error(ErrorType::Cancel, DefinedCondition::Conflict, Some(wrong.to_element()), None);
            return (request, Err(error));
        }
        group.epoch += 1;
        group.group_info = bundle.group_info;
        let message = GroupMessage {
            kind: Some(Kind::Commit),
            epoch: Some(epoch),
            epoch_check: Some(bundle.epoch_check),
            ..GroupMessage::new(bundle.commit)
        };
        let (stanza_id, position) = self.append(&id, from.resource().as_str(), message);
        if let Some(message) = bundle.welcome {
            self.welcome(&id, message, &stanza_id, position);
        }
        let accepted = Accepted { epoch: epoch + 1, stanza_id, position };
        (request, Ok(Some(accepted.to_element())))
    }

    /// Archives a group message and pushes it to every device on the feed.
    fn append(&mut self, id: &[u8], sender: &str, mut message: GroupMessage) -> (String, u64) {
        let group = self.group(id);
        let position = group.items.len() as u64 + 1;
        message.position = Some(position);
        let item = Item { stanza_id: format!("s{position}"), sender: sender.to_owned(), message };
        let jid = group_jid(id);
        let copies: Vec<_> = group.feed.iter().map(|to| (to.clone(), item_stanza(&jid, &item, Some(to)))).collect();
        let stanza_id = item.stanza_id.clone();
        group.items.push(item);
        for (to, copy) in copies {
            self.push(&to, copy);
        }
        (stanza_id, position)
    }

    fn welcome(&mut self, id: &[u8], message: Vec<u8>, commit: &str, position: u64) {
        let secrets = welcome(&message).expect("a Welcome");
        let accounts: BTreeSet<BareJid> =
            secrets.secrets().iter().filter_map(|s| self.claimed.get(s.new_member().as_slice())).cloned().collect();
        let payload = Welcome {
            group: group_jid(id).to_string(),
            commit: Some(commit.to_owned()),
            position: Some(position),
            message,
        }
        .to_element();
        for account in accounts {
            let inbox = self.inboxes.entry(account.clone()).or_default();
            let stanza_id = format!("i{}", inbox.len() + 1);
            let directory = directory_jid(&account, &Jid::new(DOMAIN).expect("a JID"));
            let stanza = Element::builder("message", CLIENT)
                .attr(n("from"), directory.as_str())
                .attr(n("to"), account.as_str())
                .attr(n("type"), "headline")
                .append(payload.clone())
                .append(stanza_id_element(directory.as_str(), &stanza_id))
                .build();
            inbox.push((stanza_id, stanza.clone()));
            let devices: Vec<FullJid> = self.in_flight.keys().filter(|j| j.to_bare() == account).cloned().collect();
            for to in devices {
                self.push(&to, stanza.clone());
            }
        }
    }

    fn group_info(&mut self, to: &Jid) -> (Request, Answer) {
        let id = group_id(to);
        let group = self.group(&id);
        (Request::GroupInfo(group_jid(&id)), Ok(Some(group_info_element(group.epoch, &group.group_info))))
    }

    /// One page holds the whole answer. An `after-id` that is not in the
    /// archive is item-not-found, with history-pruned if retention deleted
    /// part of the archive.
    fn query(&mut self, to: &Jid, payload: &Element, from: &FullJid, results: &mut Vec<Element>) -> (Request, Answer) {
        let q = MamQuery::parse(payload).expect("a conforming query");
        let request = Request::Query { archive: to.clone(), after: q.after_id.clone() };
        let (items, pruned) = match Address::parse(to) {
            Ok(Address::Group(id)) => {
                let group = self.group(&id);
                let kept = group.items.iter().skip(group.pruned);
                (kept.map(|i| (i.stanza_id.clone(), item_stanza(&group_jid(&id), i, None))).collect(), group.pruned > 0)
            }
            Ok(Address::Directory(account)) => (self.inboxes.get(&account).cloned().unwrap_or_default(), false),
            _ => panic!("a query of {to}"),
        };
        let start = match &q.after_id {
            None => 0,
            Some(after) => match items.iter().position(|(id, _)| id == after) {
                Some(at) => at + 1,
                None => return (request, Err(not_found(pruned))),
            },
        };
        let page = &items[start..];
        assert!(page.len() <= q.max.unwrap_or(usize::MAX), "a second page");
        let result = |(id, stanza): &(String, Element)| {
            result_message(from.as_str(), to.as_str(), q.queryid.as_deref(), id, 0, stanza.clone())
        };
        results.extend(page.iter().map(result));
        let fin = Fin {
            complete: true,
            first: page.first().map(|(id, _)| (id.clone(), start)),
            last: page.last().map(|(id, _)| id.clone()),
            count: items.len(),
        };
        (request, Ok(Some(fin.to_element())))
    }
}

fn not_found(pruned: bool) -> StanzaError {
    let app = pruned.then(|| AppCondition::HistoryPruned.element());
    stanza_error(ErrorType::Cancel, DefinedCondition::ItemNotFound, app, None)
}

/// The answer to `iq`, from the entity it was sent to.
fn reply(iq: &Element, to: &FullJid, answer: Answer) -> Element {
    let (type_, payload) = match answer {
        Ok(payload) => ("result", payload),
        Err(error) => ("error", Some(error.into())),
    };
    Element::builder("iq", CLIENT)
        .attr(n("type"), type_)
        .attr(n("id"), iq.attr("id").expect("an IQ with an id"))
        .attr(n("from"), iq.attr("to").unwrap_or(DOMAIN))
        .attr(n("to"), to.as_str())
        .append_all(payload)
        .build()
}

/// An archived group message as the feed carries it (`to` a device) or the archive keeps it.
fn item_stanza(group: &BareJid, item: &Item, to: Option<&FullJid>) -> Element {
    let mut b = Element::builder("message", CLIENT)
        .attr(n("from"), format!("{group}/{}", item.sender))
        .attr(n("type"), "groupchat")
        .attr(n("id"), item.stanza_id.as_str());
    if let Some(to) = to {
        b = b.attr(n("to"), to.as_str());
    }
    b.append(item.message.to_element()).append(stanza_id_element(group.as_str(), &item.stanza_id)).build()
}

fn stanza_id_element(by: &str, id: &str) -> Element {
    Element::builder("stanza-id", NS_SID).attr(n("by"), by).attr(n("id"), id).build()
}

pub fn group_id(to: &Jid) -> Vec<u8> {
    match Address::parse(to) {
        Ok(Address::Group(id)) => id,
        _ => panic!("not a group: {to}"),
    }
}

fn group_jid(id: &[u8]) -> BareJid {
    BareJid::new(&format!("{}@{DOMAIN}", group_node(id))).expect("a group JID")
}

fn directory_account(to: &Jid) -> BareJid {
    match Address::parse(to) {
        Ok(Address::Directory(account)) => account,
        _ => panic!("not a directory: {to}"),
    }
}

fn policy() -> Policy {
    Policy { cipher_suites: vec![SUITE], max_lifetime_secs: LIFETIME as i64, clock_skew_secs: 300 }
}

/// The limits form: the client reads cipher-suites and max-key-package-lifetime.
fn limits() -> AnnouncedLimits {
    AnnouncedLimits {
        max_payload_size: 240 * 1024,
        max_stanza_out: 448 * 1024,
        max_devices_per_account: 16,
        max_key_packages_per_device: 100,
        max_key_package_size: 16 * 1024,
        max_key_package_lifetime: LIFETIME,
        low_water: 10,
        cipher_suites: vec![SUITE],
        max_past_epochs: 3,
        max_page_size: 100,
        // Groups of these flows have no external sender (the service's
        // removals are tested end to end in tests/revocation.rs).
        external_sender: None,
        max_vault_blob_size: 64 * 1024,
        vault_quota: 16 * 1024 * 1024,
        max_vault_blobs: 1000,
        max_members: 1000,
        max_groups_per_account: 1000,
        claim_burst: 32,
        claim_refill: 10,
        account_rate: 50,
        account_burst: 200,
        key_package_burst: 200,
        key_package_refill: 1,
        group_archive_bytes_per_day: 64 * 1024 * 1024,
        account_archive_bytes_per_day: 16 * 1024 * 1024,
    }
}
