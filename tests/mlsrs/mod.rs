//! A device of a second MLS implementation, AWS mls-rs, written from
//! xep/ alone: every protocol element is a raw stanza built
//! here; only the XMPP login and stream are the library's [`Session`].
//! It keeps its MLS state in memory, so it can go offline and come back
//! on a new session.

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine as _;
use minidom::Element;
use mls_rs::client_builder::{BaseConfig, WithCryptoProvider, WithIdentityProvider, WithMlsRules};
use mls_rs::extension::built_in::ExternalSendersExt;
use mls_rs::extension::recommended::LastResortKeyPackageExt;
use mls_rs::mls_rs_codec::MlsDecode as _;
use mls_rs::extension::ExtensionType;
use mls_rs::group::proposal::Proposal;
use mls_rs::group::{ProposalSender, ReceivedMessage};
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::identity::SigningIdentity;
use mls_rs::mls_rules::{CommitOptions, DefaultMlsRules};
use mls_rs::time::MlsTime;
use mls_rs::{CipherSuite, CipherSuiteProvider, Client, CryptoProvider, ExtensionList, Group, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use sha2::Digest as _;
use xmpp_mls::client::Session;

use crate::common::{Server, COMPONENT};

const NS: &str = "urn:xmpp:mls:0";
const NS_CLIENT: &str = "jabber:client";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_SID: &str = "urn:xmpp:sid:0";
const NS_SCE: &str = "urn:xmpp:sce:1";
/// The mandatory-to-implement cipher suite (RFC 9420 §17.1; xep: Wire Format).
const SUITE: CipherSuite = CipherSuite::CURVE25519_AES128;
/// Within the service's default max-key-package-lifetime (90 days).
const KEY_PACKAGE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// not_before this far in the past, as the XEP advises against clock skew.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const WAIT: Duration = Duration::from_secs(20);

type Config = WithMlsRules<DefaultMlsRules, WithIdentityProvider<BasicIdentityProvider, WithCryptoProvider<RustCryptoProvider, BaseConfig>>>;

/// The application data of a message of `account` whose body is `text`:
/// a XEP-0420 envelope as xep: Message Content profiles it, built here
/// from the XEP, not with the library's own envelope code.
pub fn encode_content(account: &str, text: &str) -> Vec<u8> {
    use rand::distr::{Alphanumeric, SampleString as _};
    let envelope = |pad: &str| {
        let mut envelope = Element::builder("envelope", NS_SCE)
            .append(Element::builder("content", NS_SCE).append(Element::builder("body", NS_CLIENT).append(text).build()).build());
        if !pad.is_empty() {
            envelope = envelope.append(Element::builder("rpad", NS_SCE).append(pad).build());
        }
        let stamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let envelope = envelope
            .append(Element::builder("time", NS_SCE).attr("stamp".try_into().unwrap(), stamp).build())
            .append(Element::builder("from", NS_SCE).attr("jid".try_into().unwrap(), account).build());
        String::from(&envelope.build()).into_bytes()
    };
    // 1 to 256 random letters and digits, as many as make the length a multiple of 256.
    let pad = Alphanumeric.sample_string(&mut rand::rng(), 256);
    (1..=256).map(|n| envelope(&pad[..n])).find(|data| data.len() % 256 == 0).expect("a padding that fits")
}

/// The body of received application data, after the receiver's checks of
/// xep: Message Content (an envelope whose `<from/>` is the MLS sender's
/// account, with `<content/>` and `<time/>`).
pub fn decode_content(data: &[u8], sender: &str) -> Result<String, String> {
    let envelope: Element = std::str::from_utf8(data).map_err(|e| e.to_string())?.parse().map_err(|e| format!("{e:?}"))?;
    if !envelope.is("envelope", NS_SCE) {
        return Err("not an envelope".into());
    }
    let from = envelope.get_child("from", NS_SCE).and_then(|f| f.attr("jid"));
    if from != Some(sender) {
        return Err(format!("<from/> {from:?} is not the MLS sender {sender}"));
    }
    envelope.get_child("time", NS_SCE).ok_or("no <time/>")?;
    let content = envelope.get_child("content", NS_SCE).ok_or("no <content/>")?;
    Ok(content.get_child("body", NS_CLIENT).map(Element::text).unwrap_or_default())
}

/// What a group item did to the device.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// An application message of another device, by its account.
    Message { account: String, text: String },
    /// The echo of this device's own message, by the 'id' it chose.
    Echo { id: String },
    /// A Commit applied; the epoch it started.
    Commit { epoch: u64 },
    /// The service's Remove proposal of a leaf (xep: Service Removals),
    /// kept for the next Commit.
    ServiceRemoval { leaf: u32 },
    /// An item already applied or of an older epoch, skipped.
    Skipped,
}

pub struct RsDevice {
    /// The XMPP stream; `None` while offline.
    session: Option<Session>,
    id: String,
    account: String,
    client: Client<Config>,
    group: Option<Group<Config>>,
    group_jid: String,
    /// The stanza ID and position of the last item applied: where
    /// catch-up resumes, and what the next copy's position must follow.
    last_applied: Option<(String, u64)>,
    /// Stanzas that arrived while the device waited for something else.
    backlog: VecDeque<Element>,
}

impl RsDevice {
    /// Logs `user@DOMAIN` in, makes a device `id` with a fresh Ed25519
    /// key, and publishes it in the account's device list.
    pub async fn new(server: &Server, user: &str, id: &str) -> Self {
        let session = online(server, user, id).await;
        let account = session.jid().to_bare().to_string();
        let provider = RustCryptoProvider::default();
        let suite = provider.cipher_suite_provider(SUITE).expect("suite 1");
        let (secret, public) = suite.signature_key_generate().unwrap();
        assert_eq!(public.as_bytes().len(), 32, "a raw Ed25519 key");
        let credential = BasicCredential::new(format!("xmpp:{account}").into_bytes()).into_credential();
        let rules = DefaultMlsRules::new().with_commit_options(
            // The GroupInfo of every Commit carries ratchet_tree and external_pub.
            CommitOptions::new().with_ratchet_tree_extension(true).with_allow_external_commit(true),
        );
        let client = Client::builder()
            .crypto_provider(provider)
            .identity_provider(BasicIdentityProvider::new())
            .mls_rules(rules)
            .extension_type(ExtensionType::LAST_RESORT_KEY_PACKAGE)
            .key_package_lifetime(KEY_PACKAGE_LIFETIME)
            .signing_identity(SigningIdentity::new(credential, public.clone()), secret, SUITE)
            .build();
        let device = Self {
            session: Some(session),
            id: id.to_owned(),
            account,
            client,
            group: None,
            group_jid: String::new(),
            last_applied: None,
            backlog: VecDeque::new(),
        };
        let key = b64(public.as_bytes());
        let item = Element::builder("item", NS_PUBSUB)
            .attr("id".try_into().unwrap(), id)
            .append(Element::builder("device", NS).attr("signature-scheme".try_into().unwrap(), "ed25519").append(key).build())
            .build();
        device.expect_result(&directory(&device.account), "set", publish("urn:xmpp:mls:0:devices", vec![item])).await;
        device
    }

    /// Closes the stream (the server takes the device off its feeds); the
    /// MLS state is kept.
    pub async fn disconnect(&mut self) {
        self.session.take().expect("online").close().await;
        self.backlog.clear();
    }

    /// Back online on a new stream.
    pub async fn reconnect(&mut self, server: &Server) {
        let user = self.account.split('@').next().unwrap().to_owned();
        self.session = Some(online(server, &user, &self.id).await);
    }

    fn session(&self) -> &Session {
        self.session.as_ref().expect("online")
    }

    /// Uploads `ordinary` KeyPackages and a last-resort one; the service
    /// names each by its KeyPackageRef, which must be the one mls-rs computes.
    pub async fn upload_key_packages(&self, ordinary: usize) {
        let suite = RustCryptoProvider::default().cipher_suite_provider(SUITE).unwrap();
        let not_before = MlsTime::now() - CLOCK_SKEW;
        let mut refs = Vec::new();
        let mut items = Vec::new();
        for n in 0..=ordinary {
            let mut extensions = ExtensionList::new();
            if n == ordinary {
                extensions.set_from(LastResortKeyPackageExt).unwrap();
            }
            let kp = self.client.generate_key_package_message(extensions, ExtensionList::new(), Some(not_before)).unwrap();
            refs.push(hex(&kp.key_package_reference(&suite).unwrap().unwrap()));
            let payload = Element::builder("key-package", NS).append(b64(&kp.to_bytes().unwrap())).build();
            items.push(Element::builder("item", NS_PUBSUB).append(payload).build());
        }
        let reply = self.expect_result(&directory(&self.account), "set", publish("urn:xmpp:mls:0:keypackages", items)).await;
        let publish = reply.get_child("pubsub", NS_PUBSUB).and_then(|p| p.get_child("publish", NS_PUBSUB)).expect("publish");
        let stored: Vec<String> = publish.children().map(|i| i.attr("id").unwrap().to_owned()).collect();
        assert_eq!(stored, refs, "the service's KeyPackageRefs are not mls-rs's");
    }

    /// Claims one KeyPackage of every device of `account`, and checks each
    /// against the account's device list (the Authentication Service check).
    pub async fn claim(&self, account: &str) -> Vec<MlsMessage> {
        let claim = Element::builder("claim", NS).attr("cipher-suite".try_into().unwrap(), "1").build();
        let claimed = self.expect_result(&directory(account), "set", claim).await;
        let keys = self.device_keys(account).await;
        let claimed = claimed.get_child("claimed", NS).expect("claimed");
        claimed
            .children()
            .map(|kp| {
                assert_eq!(kp.name(), "key-package", "{}", String::from(kp));
                let msg = MlsMessage::from_bytes(&unb64(&kp.text())).unwrap();
                let identity = msg.clone().into_key_package().unwrap().signing_identity().clone();
                assert_eq!(account_of(&identity), account);
                let device = keys.iter().find(|(_, k)| k == identity.signature_key.as_bytes()).expect("a listed key");
                assert_eq!(Some(device.0.as_str()), kp.attr("device"));
                msg
            })
            .collect()
    }

    /// The live devices of `account` as (device ID, signature key).
    async fn device_keys(&self, account: &str) -> Vec<(String, Vec<u8>)> {
        let items = Element::builder("items", NS_PUBSUB).attr("node".try_into().unwrap(), "urn:xmpp:mls:0:devices").build();
        let list = self.expect_result(&directory(account), "get", Element::builder("pubsub", NS_PUBSUB).append(items).build()).await;
        let items = list.get_child("pubsub", NS_PUBSUB).and_then(|p| p.get_child("items", NS_PUBSUB)).expect("items");
        items.children().map(|i| (i.attr("id").unwrap().to_owned(), unb64(&i.get_child("device", NS).unwrap().text()))).collect()
    }

    /// The Authentication Service check of every leaf of the group.
    async fn check_leaves(&self) {
        for member in self.group().roster().members() {
            let keys = self.device_keys(&account_of(&member.signing_identity)).await;
            assert!(keys.iter().any(|(_, k)| k == member.signing_identity.signature_key.as_bytes()), "leaf {} is no device", member.index);
        }
    }

    /// The service's `external-sender` field of its disco#info limits
    /// form (xep: Service Removals), as an mls-rs SigningIdentity (the
    /// same TLS structure as an ExternalSender).
    async fn external_sender(&self) -> SigningIdentity {
        let query = Element::builder("query", "http://jabber.org/protocol/disco#info").build();
        let reply = self.expect_result(COMPONENT, "get", query).await;
        let info = reply.get_child("query", "http://jabber.org/protocol/disco#info").unwrap();
        let form = info.get_child("x", "jabber:x:data").unwrap();
        let field = form.children().find(|f| f.attr("var") == Some("external-sender")).expect("an external-sender field");
        let value = field.get_child("value", "jabber:x:data").unwrap().text();
        SigningIdentity::mls_decode(&mut unb64(&value).as_slice()).unwrap()
    }

    /// Creates a group with a random group_id that lists the service as
    /// its external sender, registers it with the service and joins its
    /// live feed; returns the group JID.
    pub async fn create(&mut self) -> String {
        let mut context = ExtensionList::new();
        context.set_from(ExternalSendersExt::new(vec![self.external_sender().await])).unwrap();
        let group = self.client.create_group_with_id(rand::random::<[u8; 16]>().to_vec(), context, ExtensionList::new(), None).unwrap();
        let info = group.group_info_message_allowing_ext_commit(true).unwrap();
        self.group_jid = group_jid(group.group_id());
        self.group = Some(group);
        let create = Element::builder("create", NS).append(Element::builder("group-info", NS).append(b64(&info.to_bytes().unwrap())).build());
        self.expect_result(&self.group_jid.clone(), "set", create.build()).await;
        assert_eq!(self.join_feed().await, 0);
        self.group_jid.clone()
    }

    /// Waits for the Welcome pushed from the account's directory, joins
    /// the group with it and joins its live feed; returns the group JID.
    pub async fn accept_welcome(&mut self) -> String {
        let from = directory(&self.account);
        let push = self.wait_for("a Welcome", |s| s.attr("from") == Some(from.as_str()) && s.get_child("welcome", NS).is_some()).await;
        let welcome = push.get_child("welcome", NS).unwrap();
        let msg = MlsMessage::from_bytes(&unb64(&welcome.text())).unwrap();
        let (group, _) = self.client.join_group(None, &msg, None).unwrap();
        self.group_jid = welcome.attr("group").unwrap().to_owned();
        assert_eq!(self.group_jid, group_jid(group.group_id()));
        // The joiner's part of the archive starts after the Commit that added it.
        self.last_applied = Some((welcome.attr("commit").unwrap().to_owned(), position(welcome)));
        self.group = Some(group);
        self.check_leaves().await;
        self.join_feed().await;
        self.group_jid.clone()
    }

    /// Joins the group's live feed; returns the epoch that the service confirms.
    pub async fn join_feed(&mut self) -> u64 {
        let device_jid = self.device_jid();
        let presence = Element::builder("presence", NS_CLIENT).attr("to".try_into().unwrap(), device_jid.as_str()).build();
        self.session().send(presence).await.unwrap();
        // (Not the unavailable presence that confirmed a leave of an earlier stream.)
        let answer = |s: &Element| s.name() == "presence" && s.attr("from") == Some(device_jid.as_str()) && s.attr("type") != Some("unavailable");
        let reply = self.wait_for("the feed's presence", answer).await;
        assert_eq!(reply.attr("type"), None, "{}", String::from(&reply));
        reply.get_child("x", NS).and_then(|x| x.attr("epoch")).unwrap().parse().unwrap()
    }

    pub fn epoch(&self) -> u64 {
        self.group().current_epoch()
    }

    /// The epoch check of the current epoch (xep: The Epoch Check).
    pub fn epoch_check(&self) -> String {
        epoch_check(self.group())
    }

    /// The accounts of the group's leaves, in leaf order.
    pub fn members(&self) -> Vec<String> {
        self.group().roster().members().iter().map(|m| account_of(&m.signing_identity)).collect()
    }

    /// The leaf index of the member whose signature key is `key`.
    pub fn leaf_of(&self, key: &[u8]) -> u32 {
        let members = self.group().roster().members();
        members.iter().find(|m| m.signing_identity.signature_key.as_bytes() == key).expect("a member with this key").index
    }

    /// Encrypts `text` and sends it to the group; returns the stanza 'id'.
    pub async fn send(&mut self, text: &str) -> String {
        let msg = self.group.as_mut().unwrap().encrypt_application_message(&encode_content(&self.account, text), Vec::new()).unwrap();
        let id = self.session().next_id();
        let message = Element::builder("message", NS_CLIENT)
            .attr("to".try_into().unwrap(), self.group_jid.as_str())
            .attr("type".try_into().unwrap(), "groupchat")
            .attr("id".try_into().unwrap(), id.as_str())
            .append(Element::builder("mls", NS).append(b64(&msg.to_bytes().unwrap())).build())
            .build();
        self.session().send(message).await.unwrap();
        id
    }

    /// Commits `adds` (an empty Commit, with an UpdatePath, when none) and
    /// submits the bundle. Accepted: merges it and returns the new epoch.
    /// Refused: discards it and returns the service's error element.
    pub async fn commit(&mut self, adds: Vec<MlsMessage>) -> Result<u64, Element> {
        let group = self.group.as_mut().unwrap();
        let mut builder = group.commit_builder();
        for kp in adds {
            builder = builder.add_member(kp).unwrap();
        }
        let output = builder.build().unwrap();
        // The epoch check comes from the staged Commit, before it is merged.
        let mut staged = group.clone();
        staged.apply_pending_commit().unwrap();
        let mut commit = Element::builder("commit", NS)
            .attr("epoch-check".try_into().unwrap(), epoch_check(&staged))
            .append(Element::builder("message", NS).append(b64(&output.commit_message.to_bytes().unwrap())).build());
        if let Some(welcome) = output.welcome_messages.first() {
            commit = commit.append(Element::builder("welcome", NS).append(b64(&welcome.to_bytes().unwrap())).build());
        }
        let info = output.external_commit_group_info.as_ref().expect("allow_external_commit");
        commit = commit.append(Element::builder("group-info", NS).append(b64(&info.to_bytes().unwrap())).build());
        let reply = self.iq(&self.group_jid.clone(), "set", commit.build()).await;
        let group = self.group.as_mut().unwrap();
        if reply.attr("type") != Some("result") {
            group.clear_pending_commit();
            return Err(reply.get_child("error", NS_CLIENT).expect("an error").clone());
        }
        group.apply_pending_commit().unwrap();
        let accepted = reply.get_child("accepted", NS).expect("accepted");
        self.last_applied = Some((accepted.attr("stanza-id").unwrap().to_owned(), position(accepted)));
        Ok(accepted.attr("epoch").unwrap().parse().unwrap())
    }

    /// The next item of the group's live feed that is not skipped, applied:
    /// from a device of the group, or from the group itself (the service).
    pub async fn next_item(&mut self) -> Item {
        let (group, from) = (self.group_jid.clone(), format!("{}/", self.group_jid));
        let of_group = |f: &str| f == group || f.starts_with(&from);
        loop {
            let stanza = self.wait_for("a group item", |s| s.name() == "message" && s.attr("from").is_some_and(of_group)).await;
            match self.apply(&stanza) {
                Item::Skipped => continue,
                item => return item,
            }
        }
    }

    /// Catches up from the archive after the last applied item, `page`
    /// items a page, then applies what the feed delivered meanwhile
    /// (xep: Catching Up). Returns what every item did, in archive order.
    pub async fn catch_up(&mut self, page: usize) -> Vec<Item> {
        let mut items = Vec::new();
        loop {
            let (results, complete) = self.archive_page(&self.group_jid.clone(), self.last_id(), page).await;
            items.extend(results.iter().map(|m| self.apply(m)));
            if complete {
                break;
            }
        }
        let from = format!("{}/", self.group_jid);
        let live: Vec<Element> = self.backlog.iter().filter(|s| s.attr("from").is_some_and(|f| f.starts_with(&from))).cloned().collect();
        self.backlog.retain(|s| !s.attr("from").is_some_and(|f| f.starts_with(&from)));
        items.extend(live.iter().map(|s| self.apply(s)));
        items
    }

    /// Reads the account's inbox from the start and acknowledges its last
    /// item; returns the name of each item's payload.
    pub async fn read_inbox(&mut self) -> Vec<String> {
        let inbox = directory(&self.account);
        let (mut names, mut last) = (Vec::new(), None);
        loop {
            let (results, complete) = self.archive_page(&inbox, last.clone(), 50).await;
            for message in results {
                let stanza_id = message.get_child("stanza-id", NS_SID).filter(|s| s.attr("by") == Some(inbox.as_str())).expect("stanza-id");
                last = stanza_id.attr("id").map(str::to_owned);
                names.extend(message.children().filter(|c| !c.is("stanza-id", NS_SID)).map(|c| c.name().to_owned()));
            }
            if complete {
                break;
            }
        }
        if let Some(last) = last {
            let ack = Element::builder("ack", NS).attr("device".try_into().unwrap(), self.id.as_str()).attr("id".try_into().unwrap(), last).build();
            self.expect_result(&inbox, "set", ack).await;
        }
        names
    }

    /// One page of a XEP-0313 query of the archive at `to`, after `after`:
    /// the archived messages, and whether the page is the last one.
    async fn archive_page(&mut self, to: &str, after: Option<String>, page: usize) -> (Vec<Element>, bool) {
        let queryid = self.session().next_id();
        let reply = self.iq(to, "set", mam_query(&queryid, after.as_deref(), page)).await;
        assert_eq!(reply.attr("type"), Some("result"), "{}", String::from(&reply));
        // Every result precedes the IQ result, so they are all queued now.
        let mut results = Vec::new();
        while let Some(s) = self.session.as_mut().expect("online").try_next_event() {
            match s.get_child("result", NS_MAM).filter(|r| r.attr("queryid") == Some(queryid.as_str())) {
                Some(r) if s.attr("from") == Some(to) => results.push(forwarded(r)),
                _ => self.backlog.push_back(s),
            }
        }
        (results, reply.get_child("fin", NS_MAM).and_then(|f| f.attr("complete")) == Some("true"))
    }

    /// Acknowledges the last applied item of the group's archive.
    pub async fn ack(&mut self) {
        let ack = Element::builder("ack", NS)
            .attr("device".try_into().unwrap(), self.id.as_str())
            .attr("id".try_into().unwrap(), self.last_id().unwrap())
            .build();
        self.expect_result(&self.group_jid.clone(), "set", ack).await;
    }

    /// Applies one group item (a feed copy or an archived message).
    fn apply(&mut self, message: &Element) -> Item {
        let mls = message.get_child("mls", NS).expect("<mls/>");
        let stanza_id = message.get_child("stanza-id", NS_SID).filter(|s| s.attr("by") == Some(self.group_jid.as_str())).expect("stanza-id");
        let stanza_id = stanza_id.attr("id").unwrap().to_owned();
        let at = position(mls);
        let last = self.last_applied.as_ref().map_or(0, |(_, p)| *p);
        if at <= last {
            return Item::Skipped; // applied already: live and in the archive
        }
        // These scenarios lose no copy: a gap would be a service fault.
        assert_eq!(at, last + 1, "a gap in the positions before {}", String::from(message));
        let epoch: u64 = mls.attr("epoch").unwrap().parse().unwrap();
        let own = message.attr("from") == Some(self.device_jid().as_str());
        let item = match mls.attr("kind") {
            // RFC 9420 gives no key for one's own PrivateMessage: the copy is the echo.
            Some("application") if own => Item::Echo { id: message.attr("id").unwrap_or_default().to_owned() },
            Some("commit") if epoch < self.epoch() => Item::Skipped,
            kind => self.process(&unb64(&mls.text()), kind, mls.attr("epoch-check"))
                .unwrap_or_else(|e| panic!("{e:?} at epoch {}: {}", self.epoch(), String::from(message))),
        };
        self.last_applied = Some((stanza_id, at));
        item
    }

    fn process(&mut self, bytes: &[u8], kind: Option<&str>, check: Option<&str>) -> Result<Item, mls_rs::error::MlsError> {
        let group = self.group.as_mut().unwrap();
        Ok(match group.process_incoming_message(MlsMessage::from_bytes(bytes)?)? {
            ReceivedMessage::ApplicationMessage(m) => {
                assert_eq!(kind, Some("application"));
                let sender = group.member_at_index(m.sender_index).expect("a sender leaf");
                let account = account_of(&sender.signing_identity);
                let text = decode_content(m.data(), &account).unwrap_or_else(|e| panic!("refused: {e}"));
                Item::Message { account, text }
            }
            ReceivedMessage::Proposal(p) => {
                assert_eq!(kind, Some("proposal"));
                match (p.sender, p.proposal) {
                    (ProposalSender::External(0), Proposal::Remove(r)) => Item::ServiceRemoval { leaf: r.to_remove() },
                    other => panic!("unexpected proposal {other:?}"),
                }
            }
            ReceivedMessage::Commit(_) => {
                assert_eq!(kind, Some("commit"));
                assert_eq!(check, Some(epoch_check(group).as_str()), "the group forked");
                Item::Commit { epoch: group.current_epoch() }
            }
            other => panic!("unexpected {kind:?} item: {other:?}"),
        })
    }

    fn last_id(&self) -> Option<String> {
        self.last_applied.as_ref().map(|(id, _)| id.clone())
    }

    fn group(&self) -> &Group<Config> {
        self.group.as_ref().expect("a member")
    }

    fn device_jid(&self) -> String {
        format!("{}/{}", self.group_jid, self.id)
    }

    /// The first stanza (from the backlog, then the stream) that `pred`
    /// accepts; the others wait in the backlog.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        if let Some(at) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(at).unwrap();
        }
        loop {
            let stanza = self.session.as_mut().expect("online").next_event_within(WAIT).await.unwrap_or_else(|| panic!("no {what} in time"));
            if pred(&stanza) {
                return stanza;
            }
            self.backlog.push_back(stanza);
        }
    }

    /// The whole reply to an IQ.
    async fn iq(&self, to: &str, type_: &str, payload: Element) -> Element {
        let iq = xmpp_mls::client::iq_element(type_, &self.session().next_id(), to, Some(payload));
        self.session().request(iq).await.unwrap()
    }

    async fn expect_result(&self, to: &str, type_: &str, payload: Element) -> Element {
        let reply = self.iq(to, type_, payload).await;
        assert_eq!(reply.attr("type"), Some("result"), "{}", String::from(&reply));
        reply
    }
}

/// A stream of `user` with resource `id`, after initial presence: only
/// an available resource receives what is pushed to the bare JID (Welcomes).
async fn online(server: &Server, user: &str, id: &str) -> Session {
    let session = server.client(user, id).await;
    session.send(Element::builder("presence", NS_CLIENT).build()).await.unwrap();
    session
}

/// first 16 octets of SHA-256("xmpp-mls epoch check" || epoch_authenticator), in hex.
fn epoch_check(group: &Group<Config>) -> String {
    let digest = sha2::Sha256::new().chain_update(b"xmpp-mls epoch check").chain_update(&*group.epoch_authenticator().unwrap()).finalize();
    hex(&digest[..16])
}

/// The account that a leaf's BasicCredential names ("xmpp:" + bare JID).
fn account_of(identity: &SigningIdentity) -> String {
    let basic = identity.credential.as_basic().expect("a BasicCredential");
    let identity = std::str::from_utf8(basic.identifier()).unwrap();
    identity.strip_prefix("xmpp:").expect("xmpp: identity").to_owned()
}

/// The directory JID of `account` (XEP-0106: "@" becomes "\40").
fn directory(account: &str) -> String {
    format!("{}@{COMPONENT}", account.replace('@', "\\40"))
}

fn group_jid(group_id: &[u8]) -> String {
    format!("{}@{COMPONENT}", data_encoding::BASE32_NOPAD.encode(group_id).to_lowercase())
}

fn publish(node: &str, items: Vec<Element>) -> Element {
    let publish = Element::builder("publish", NS_PUBSUB).attr("node".try_into().unwrap(), node).append_all(items).build();
    Element::builder("pubsub", NS_PUBSUB).append(publish).build()
}

/// A XEP-0313 query of `page` items after `after` (the whole archive without it).
fn mam_query(queryid: &str, after: Option<&str>, page: usize) -> Element {
    let mut set = Element::builder("set", "http://jabber.org/protocol/rsm").append(Element::builder("max", "http://jabber.org/protocol/rsm").append(page.to_string()).build());
    if let Some(after) = after {
        set = set.append(Element::builder("after", "http://jabber.org/protocol/rsm").append(after).build());
    }
    Element::builder("query", NS_MAM).attr("queryid".try_into().unwrap(), queryid).append(set.build()).build()
}

/// The archived message inside a MAM result.
fn forwarded(result: &Element) -> Element {
    let forwarded = result.get_child("forwarded", "urn:xmpp:forward:0").expect("forwarded");
    forwarded.get_child("message", NS_CLIENT).expect("the archived message").clone()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text.trim()).expect("base64")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 'position' of an item, an `<accepted/>` or a Welcome (xep: Delivery to the Feed).
fn position(el: &Element) -> u64 {
    el.attr("position").expect("a position").parse().expect("a decimal position")
}
