//! The Delivery Service's decisions without an XMPP server: real MLS
//! clients (openmls `MlsGroup`s) send handshakes straight to [`Service`]
//! on a temporary store, and each test asserts the exact answer or error
//! and what the store then holds.

#![cfg(test)]

use std::sync::Arc;

use minidom::Element;
use openmls::group::{MlsGroup, StagedWelcome};
use openmls::prelude::{
    BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::types::SignatureScheme;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize as _, Serialize as _};
use xmpp_parsers::jid::{BareJid, Jid};

use super::{IqKind, IqRequest, Service, ServiceError};
use crate::client::CIPHERSUITE;
use crate::config::Config;
use crate::protocol::address::{group_node, Address};
use crate::protocol::devices::Device;
use crate::protocol::error::AppCondition;
use crate::protocol::groups::{epoch_check, CommitBundle, Create, Proposal};
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
    let staged = if add.is_empty() {
        group.commit_builder().force_self_update(true).consume_proposal_store(true)
    } else {
        group.commit_builder().propose_adds(add.iter().map(|m| m.key_package())).consume_proposal_store(true)
    }
    .load_psks(member.provider.storage())
    .unwrap()
    .use_ratchet_tree_extension(true)
    .build(member.provider.rand(), member.provider.crypto(), &member.signer, |_| true)
    .unwrap()
    .stage_commit(&member.provider)
    .unwrap();
    let check = group.pending_commit().and_then(|c| c.epoch_authenticator()).map(|a| epoch_check(a.as_slice())).unwrap();
    let (commit, welcome, info) = staged.into_messages();
    CommitBundle { commit: bytes(&commit), welcome: welcome.as_ref().map(bytes), group_info: bytes(&info.unwrap()), epoch_check: check }
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
