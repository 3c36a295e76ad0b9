//! What the benchmarks that drive a `Service` directly share
//! (examples/bench_paths.rs, examples/bench_large.rs): printed figures,
//! people with their MLS devices, a service on a fresh store, requests,
//! groups created at the service, commits, and the openmls baseline.
//! Each example includes it with `#[path = "common/bench.rs"] mod bench;`
//! and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use minidom::Element;
use openmls::group::{MlsGroup, MlsGroupCreateConfig, PublicGroup, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY};
use openmls::prelude::{
    BasicCredential, Capabilities, ContentType, CredentialWithKey, ExtensionType, GroupId, KeyPackage, MlsMessageOut,
    ProcessedMessageContent, ProtocolMessage,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::SignatureScheme;
use openmls_traits::OpenMlsProvider;
use tls_codec::Serialize;
use xmpp_mls::client::CIPHERSUITE;
use xmpp_mls::config::{Config, StoreConfig};
use xmpp_mls::protocol::address::{group_node, Address};
use xmpp_mls::protocol::devices::Device;
use xmpp_mls::protocol::groups::{epoch_check, CommitBundle, Create};
use xmpp_mls::protocol::mls;
use xmpp_mls::service::{IqKind, IqRequest, Response, Service};
use xmpp_mls::store::{FeedEntry, FeedJoin, Inspector, Store};
use xmpp_parsers::jid::{BareJid, Jid};

pub const DOMAIN: &str = "mls.example.org";

/// One printed figure.
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub ratio: f64,
    pub baseline: String,
}

impl Figure {
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str, ratio: f64, baseline: impl Into<String>) -> Self {
        let f = Figure { name: name.into(), value, unit, ratio, baseline: baseline.into() };
        println!("{}: {} {} ({:.2}x {})", f.name, number(f.value), f.unit, f.ratio, f.baseline);
        f
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "value": self.value, "unit": self.unit,
            "ratio": self.ratio, "baseline": self.baseline,
        })
    }
}

/// Three significant digits or so, without noise digits on big values.
pub fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A device of its own account `<prefix><i>@example.org`, with a key and
/// an in-memory provider. Device ids differ across accounts too: the feed
/// knows a device by its id within the group.
pub struct Person {
    pub account: BareJid,
    pub device_id: String,
    pub signer: SignatureKeyPair,
    pub provider: OpenMlsRustCrypto,
}

impl Person {
    pub fn new(prefix: &str, i: usize) -> Self {
        Person {
            account: BareJid::new(&format!("{prefix}{i}@example.org")).unwrap(),
            device_id: format!("{prefix}{i}"),
            signer: SignatureKeyPair::new(SignatureScheme::ED25519).unwrap(),
            provider: OpenMlsRustCrypto::default(),
        }
    }

    pub fn jid(&self) -> Jid {
        Jid::new(&format!("{}/{}", self.account, self.device_id)).unwrap()
    }

    pub fn device(&self) -> Device {
        Device { id: self.device_id.clone(), signature_key: self.signer.to_public_vec(), label: None, expires: Some(i64::MAX / 2) }
    }

    pub fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(format!("xmpp:{}", self.account).into_bytes()).into(),
            signature_key: self.signer.to_public_vec().into(),
        }
    }

    pub fn key_package(&self) -> KeyPackage {
        let caps = Capabilities::builder().extensions(vec![ExtensionType::LastResort]).build();
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(caps)
            .build(CIPHERSUITE, &self.provider, &self.signer, self.credential())
            .unwrap();
        bundle.key_package().clone()
    }
}

pub fn bytes(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().unwrap()
}

/// A service on a fresh SQLite store in `dir`, with the default
/// configuration but for `extra` TOML.
pub fn service(dir: &Path, extra: &str) -> (Arc<Service>, Store) {
    service_on(&Backend::Sqlite.new_store(dir), extra)
}

/// A service on the store of `store` (a `[store]` section).
pub fn service_on(store: &str, extra: &str) -> (Arc<Service>, Store) {
    let text = format!("[component]\njid = \"{DOMAIN}\"\nsecret = \"bench\"\n{store}{extra}");
    let config = Config::from_toml(&text, std::iter::empty()).unwrap();
    let store = Store::open(&config.store).unwrap();
    (Arc::new(Service::new(Arc::new(config), store.clone())), store)
}

/// Where a benchmark's store is.
pub enum Backend {
    Sqlite,
    /// A PostgreSQL server's connection string (a new database per store).
    Postgres(String),
}

impl Backend {
    /// The `[store]` section of a new, empty store.
    pub fn new_store(&self, dir: &Path) -> String {
        match self {
            Backend::Sqlite => format!("[store]\npath = \"{}\"\n", dir.join("store.sqlite3").display()),
            Backend::Postgres(server) => {
                let name = format!("bench_{:08x}", rand::random::<u32>());
                let admin = StoreConfig { url: server.clone(), ..StoreConfig::default() };
                let create = format!("CREATE DATABASE {name}");
                std::thread::spawn(move || Inspector::open(&admin).and_then(|i| i.with(|c| c.execute_batch(&create))).unwrap())
                    .join()
                    .unwrap();
                format!("[store]\nurl = \"{server} dbname={name}\"\n")
            }
        }
    }
}

pub fn iq(from: &Jid, to: String, kind: IqKind, payload: Element) -> IqRequest {
    let to = Jid::new(&to).unwrap();
    IqRequest { id: "bench".into(), from: from.clone(), address: Address::parse(&to).unwrap(), to, kind, payload }
}

pub async fn handle(service: &Service, req: IqRequest) -> Response {
    match service.handle_iq(&req).await {
        Ok(r) => r,
        Err(e) => panic!("{} refused: {e}", req.payload.name()),
    }
}

pub fn group_jid(id: &[u8]) -> String {
    format!("{}@{DOMAIN}", group_node(id))
}

/// Lists every person's device in the store (the AS check needs it).
pub async fn publish(store: &Store, people: &[Person]) {
    let now = xmpp_mls::protocol::now();
    for chunk in people.chunks(512) {
        join_all(chunk.iter().map(|p| {
            store.publish_device(p.account.to_string(), p.device(), Element::bare("event", "urn:x"), 16, now)
        }))
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    }
}

pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .ciphersuite(CIPHERSUITE)
        .build()
}

/// A group of `people`, created at the service by the first of them.
pub async fn create_group(service: &Service, people: &[Person], id: [u8; 16]) -> MlsGroup {
    let (group, request) = create_request(people, id);
    handle(service, request).await;
    group
}

/// The group of `people` as its first one creates it, and the `<create/>`
/// request for the service (its GroupInfo with the ratchet tree).
pub fn create_request(people: &[Person], id: [u8; 16]) -> (MlsGroup, IqRequest) {
    let owner = &people[0];
    let mut group =
        MlsGroup::new_with_group_id(&owner.provider, &owner.signer, &create_config(), GroupId::from_slice(&id), owner.credential())
            .unwrap();
    if people.len() > 1 {
        let kps: Vec<KeyPackage> = people[1..].iter().map(Person::key_package).collect();
        group.add_members(&owner.provider, &owner.signer, &kps).unwrap();
        group.merge_pending_commit(&owner.provider).unwrap();
    }
    let info = group.export_group_info(owner.provider.crypto(), &owner.signer, true).unwrap();
    let request = iq(&owner.jid(), group_jid(&id), IqKind::Set, Create { group_info: bytes(&info) }.to_element());
    (group, request)
}

/// The owner's next self-update, as a client would send it: its GroupInfo
/// with the ratchet tree if `inline_tree`.
pub fn self_update(group: &mut MlsGroup, owner: &Person, inline_tree: bool) -> CommitBundle {
    commit_bundle(group, owner, &[], inline_tree)
}

/// The owner's next commit (pending in `group`), as a client would send
/// it: the adds of `add`, or a self-update if there are none; its GroupInfo
/// with the ratchet tree if `inline_tree`.
pub fn commit_bundle(group: &mut MlsGroup, owner: &Person, add: &[KeyPackage], inline_tree: bool) -> CommitBundle {
    let builder = match add {
        [] => group.commit_builder().force_self_update(true),
        _ => group.commit_builder().propose_adds(add.iter().cloned()),
    };
    let staged = builder
        .consume_proposal_store(true)
        .load_psks(owner.provider.storage())
        .unwrap()
        .use_ratchet_tree_extension(inline_tree)
        .build(owner.provider.rand(), owner.provider.crypto(), &owner.signer, |_| true)
        .unwrap()
        .stage_commit(&owner.provider)
        .unwrap();
    let check = group.pending_commit().and_then(|c| c.epoch_authenticator()).map(|a| epoch_check(a.as_slice())).unwrap();
    let (commit, welcome, info) = staged.into_messages();
    CommitBundle {
        commit: bytes(&commit),
        parts: None,
        welcome: welcome.as_ref().map(bytes),
        group_info: bytes(&info.unwrap()),
        epoch_check: check,
    }
}

/// openmls alone: the commit processed and merged by an in-memory PublicGroup.
pub fn public_group_apply(pg: &mut PublicGroup, crypto: &impl OpenMlsCrypto, storage: &MemoryStorage, commit: &[u8], id: &[u8]) {
    let message = mls::public_message(commit, id, ContentType::Commit).unwrap();
    let processed = pg.process_message(crypto, ProtocolMessage::from(message)).unwrap();
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else { panic!("not a commit") };
    pg.merge_commit(storage, *staged).unwrap();
}

/// Puts a device on a group's feed (no group quota in benchmarks).
pub async fn joined(store: &Store, id: &[u8], entry: FeedEntry) {
    let join = store.join_feed(id.to_vec(), entry, usize::MAX).await.unwrap();
    assert!(matches!(join, FeedJoin::Joined { .. }), "{join:?}");
}

/// The command line every benchmark takes: `--quick`, `--json PATH`, and
/// its own arguments.
pub struct Args {
    pub args: Vec<String>,
    pub quick: bool,
    pub json: Option<PathBuf>,
}

impl Args {
    pub fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let json = args.iter().position(|a| a == "--json").map(|i| PathBuf::from(args.get(i + 1).expect("--json PATH")));
        Args { args, quick, json }
    }

    /// Writes `figures` as `{"bench", "quick", "figures": [...]}` to the
    /// `--json` path, if one was given.
    pub fn write_json(&self, bench: &str, figures: &[Figure]) {
        let Some(path) = &self.json else { return };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let all = serde_json::json!({
            "bench": bench,
            "quick": self.quick,
            "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    }
}
