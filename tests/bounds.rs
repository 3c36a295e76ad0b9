//! Bounded answers end to end (xep/ §Stanza Size Limits): the largest
//! answer to every request fits in one stanza under max-stanza-out, lists
//! are paged, and a claim hands out at most one KeyPackage per device,
//! paid for in rate tokens per device. The component stays connected.

mod common;

use std::collections::BTreeSet;

use common::mls::{KpOptions, TestSigner};
use common::{bare, outcome, raw, COMPONENT, Component, Prosody, FAST};
use minidom::Element;
use xmpp_mls::client::{directory_jid, Session, Vault};
use xmpp_mls::protocol::keypackages::{parse_claimed, parse_rejections, Claim, ClaimOutcome, Rejection};
use xmpp_mls::protocol::mam::{Cursor, NS_RSM};
use xmpp_mls::protocol::notices::{KeyPackageClaimed, Notice};
use xmpp_mls::protocol::vault::{parse_list_page, parse_vault_result, VaultRequest};
use xmpp_parsers::jid::Jid;


fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

fn claim_of(devices: &[&str]) -> Element {
    Claim { cipher_suite: None, devices: devices.iter().map(|d| d.to_string()).collect() }.to_element()
}

/// The claimed devices of a claim result.
fn claimed(reply: &Element) -> Vec<String> {
    let outcomes = parse_claimed(reply.children().next().expect("a <claimed/>")).unwrap();
    outcomes
        .into_iter()
        .map(|o| match o {
            ClaimOutcome::Claimed { device, .. } => device,
            other => panic!("not handed out: {other:?}"),
        })
        .collect()
}

/// `user` with the devices `ids`, each holding `pool` KeyPackages and a
/// last-resort one; returns the owner's session and every reference.
async fn account(prosody: &Prosody, user: &str, ids: &[&str], pool: usize) -> (Session, BTreeSet<String>) {
    let owner = prosody.client(user, "owner").await;
    let mut refs = BTreeSet::new();
    for id in ids {
        let signer = TestSigner::new(&format!("{user}@example.org"));
        owner.publish_device(&service(), &signer.device(id, None)).await.unwrap();
        let mut kps: Vec<Vec<u8>> = (0..pool).map(|_| signer.valid_kp()).collect();
        kps.push(signer.last_resort_kp());
        refs.extend(owner.upload_key_packages(&service(), &kps).await.unwrap());
    }
    (owner, refs)
}

/// The audit's attack: one claim naming a device fifty times handed out
/// its whole pool and wrote a notice per hand-out. Now the claim is refused
/// whole before anything is written, as is one naming more devices than an
/// account may have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_naming_a_device_twice_or_too_many_devices_is_refused_unwritten() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[directory]\nmax_devices_per_account = 2\nclaim_burst = 2");
    let (alice, _) = account(&prosody, "alice", &["d1", "d2"], 2).await;
    // Available, so that notices to the bare JID reach this session.
    alice.send(Element::builder("presence", "jabber:client").build()).await.unwrap();
    let bob = prosody.client("bob", "phone").await;
    let at = directory_jid(&bare("alice@example.org"), &service());

    let before = component.db().dump();
    let fifty = raw(&bob, &at, "set", claim_of(&["d1"; 50])).await;
    assert_eq!(outcome(&fifty), "modify/bad-request (duplicate-device)");
    let three = raw(&bob, &at, "set", claim_of(&["d1", "d2", "d3"])).await;
    assert_eq!(outcome(&three), "modify/policy-violation (too-many-devices)");
    assert!(component.db().dump() == before, "a refused claim changed the store");

    // The refusals cost no rate tokens, and the owner's first notice is
    // the one of the first claim that was accepted.
    assert_eq!(claimed(&raw(&bob, &at, "set", claim_of(&["d1", "d2"])).await), ["d1", "d2"]);
    let notice = loop {
        let message = alice.next_event_within(std::time::Duration::from_secs(10)).await.expect("a notice");
        if let Some(Ok(notice)) = Notice::find(&message) {
            break notice;
        }
    };
    let Notice::KeyPackageClaimed(KeyPackageClaimed { device, by, remaining, .. }) = notice else { panic!("{notice:?}") };
    assert_eq!((device.as_str(), by.as_str(), remaining), ("d1", "bob@example.org", 1));
    component.assert_never_reconnected();
}

/// The claim rate limit counts KeyPackages, one per device a claim asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_n_devices_costs_n_rate_tokens() {
    let prosody = Prosody::start();
    let config = "[directory]\nmax_devices_per_account = 3\nclaim_burst = 3\nclaim_refill_secs = 3600";
    let component = Component::start(&prosody, config);
    let _alice = account(&prosody, "alice", &["d1", "d2", "d3"], 3).await;
    let bob = prosody.client("bob", "phone").await;
    let carol = prosody.client("carol", "pc").await;
    let at = directory_jid(&bare("alice@example.org"), &service());

    assert_eq!(claimed(&raw(&bob, &at, "set", claim_of(&["d1", "d2"])).await), ["d1", "d2"]);
    let before = component.db().dump();
    let over = raw(&bob, &at, "set", claim_of(&["d2", "d3"])).await;
    assert_eq!(outcome(&over), "wait/resource-constraint (rate-limited)");
    assert!(component.db().dump() == before, "a claim over the rate changed the store");
    assert_eq!(claimed(&raw(&bob, &at, "set", claim_of(&["d3"])).await), ["d3"]);
    assert_eq!(outcome(&raw(&bob, &at, "set", claim_of(&["d1"])).await), "wait/resource-constraint (rate-limited)");

    // A claim without filters asks for every live device: three tokens.
    assert_eq!(claimed(&raw(&carol, &at, "set", claim_of(&[])).await), ["d1", "d2", "d3"]);
    assert_eq!(outcome(&raw(&carol, &at, "set", claim_of(&["d1"])).await), "wait/resource-constraint (rate-limited)");
    component.assert_never_reconnected();
}

/// Every listing filled to its configured maximum comes whole, or paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_legal_answers_arrive_whole_or_paged() {
    let prosody = Prosody::start();
    let config = "[limits]\nmax_page_size = 2\n[directory]\nmax_devices_per_account = 2\nmax_key_packages_per_device = 3\nclaim_burst = 2\n[vault]\nmax_blobs = 5";
    let component = Component::start(&prosody, config);
    let (alice, refs) = account(&prosody, "alice", &["d1", "d2"], 3).await;
    let bob = prosody.client("bob", "phone").await;
    let account = bare("alice@example.org");

    // The owner's pool: devices x (KeyPackages + last resort), all listed.
    let listed: BTreeSet<String> = alice.key_package_infos(&service()).await.unwrap().into_iter().map(|i| i.kp_ref).collect();
    assert_eq!((listed.len(), &listed), (8, &refs));
    // The device list and a claim of every device.
    assert_eq!(bob.devices(&service(), &account).await.unwrap().len(), 2);
    assert_eq!(claimed(&raw(&bob, &at(&account), "set", claim_of(&[])).await), ["d1", "d2"]);

    // The vault at max-blobs, listed two by two.
    let vault = Vault::create(&alice, &service(), "pass", FAST).await.unwrap();
    for name in ["a", "b", "c", "d"] {
        vault.put(&alice, name, 0, b"x").await.unwrap();
    }
    let page = list(&alice, &account, Some(100), Cursor::First).await;
    assert_eq!(page, (vec!["a".to_string(), "b".into()], 0, 5));
    assert_eq!(list(&alice, &account, None, Cursor::After("b".into())).await, (vec!["c".to_string(), "d".into()], 2, 5));
    assert_eq!(list(&alice, &account, None, Cursor::Last).await, (vec!["d".to_string(), "keys".into()], 3, 5));
    let names: Vec<String> = vault.list(&alice).await.unwrap();
    assert_eq!(names, ["a", "b", "c", "d"]);
    // A blob of max-vault-blob-size (160 KiB by default) is read back whole.
    let largest = VaultRequest::Put { name: "a".into(), if_version: 1, data: vec![7; 160 * 1024] };
    assert_eq!(outcome(&raw(&alice, &at(&account), "set", largest.to_element()).await), "result");
    let read = raw(&alice, &at(&account), "get", VaultRequest::Get { name: "a".into() }.to_element()).await;
    let (items, _) = parse_vault_result(read.children().next().expect("a vault result")).unwrap();
    assert_eq!(items[0].data.as_ref().map(Vec::len), Some(160 * 1024));

    // The service advertises the limit.
    let info = alice.iq(&service(), "get", Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build()).await;
    let info = info.unwrap().unwrap();
    let form = info.get_child("x", xmpp_parsers::ns::DATA_FORMS).expect("the limits form");
    let field = form.children().find(|f| f.attr("var") == Some("max-stanza-out")).expect("max-stanza-out");
    assert_eq!(field.children().next().map(Element::text).as_deref(), Some("458752"));
    component.assert_never_reconnected();
}

/// The largest claim: every device of an account with a KeyPackage of
/// max-key-package-size, under a max-stanza-out the configuration admits
/// only because those limits fit in it. A package one octet larger is
/// refused at upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_the_largest_packages_of_every_device_fits() {
    const MAX_KP: usize = 18_000;
    let prosody = Prosody::start();
    let config = "[limits]\nmax_stanza_out = 65536\nmax_payload_size = 49152\n[vault]\nmax_blob_size = 36000\n\
                  [directory]\nmax_devices_per_account = 2\nclaim_burst = 2\nmax_key_packages_per_device = 10\n\
                  max_key_package_size = 18000";
    let component = Component::start(&prosody, config);
    let owner = prosody.client("alice", "owner").await;
    let bob = prosody.client("bob", "phone").await;
    let account = bare("alice@example.org");
    let mut uploaded = Vec::new();
    for id in ["d1", "d2"] {
        let signer = TestSigner::new("alice@example.org");
        owner.publish_device(&service(), &signer.device(id, None)).await.unwrap();
        let (largest, over) = (sized_kp(&signer, MAX_KP), sized_kp(&signer, MAX_KP + 1));
        let refused = owner.upload_key_packages(&service(), &[over]).await.unwrap_err();
        let xmpp_mls::client::ClientError::Stanza(e) = refused else { panic!("{refused:?}") };
        assert_eq!(parse_rejections(e.other.as_ref().unwrap()), vec![(0, Rejection::TooBig)]);
        owner.upload_key_packages(&service(), std::slice::from_ref(&largest)).await.unwrap();
        uploaded.push(largest);
    }
    let reply = raw(&bob, &at(&account), "set", claim_of(&[])).await;
    let outcomes = parse_claimed(reply.children().next().unwrap_or_else(|| panic!("{}", outcome(&reply)))).unwrap();
    let messages: Vec<Vec<u8>> = outcomes
        .into_iter()
        .map(|o| match o {
            ClaimOutcome::Claimed { message, .. } => message,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(messages, uploaded);
    assert!(String::from(&reply).len() > 48_000, "the answer is near the limit: {}", String::from(&reply).len());
    component.assert_never_reconnected();
}

/// A valid KeyPackage of exactly `size` octets, padded with a private extension.
fn sized_kp(signer: &TestSigner, size: usize) -> Vec<u8> {
    let mut padding = size;
    loop {
        let kp = signer.kp(KpOptions { padding, ..KpOptions::default() });
        match kp.len().cmp(&size) {
            std::cmp::Ordering::Equal => return kp,
            std::cmp::Ordering::Greater => padding -= kp.len() - size,
            std::cmp::Ordering::Less => padding += size - kp.len(),
        }
    }
}

fn at(account: &xmpp_parsers::jid::BareJid) -> Jid {
    directory_jid(account, &service())
}

/// (names, index of the first, count) of one page of `account`'s vault.
async fn list(session: &Session, account: &xmpp_parsers::jid::BareJid, max: Option<usize>, cursor: Cursor) -> (Vec<String>, usize, usize) {
    let reply = raw(session, &at(account), "get", VaultRequest::List { max, cursor }.to_element()).await;
    let vault = reply.children().next().unwrap_or_else(|| panic!("{}", outcome(&reply)));
    let (items, _) = parse_vault_result(vault).unwrap();
    let (first, count) = parse_list_page(vault).expect("an RSM set");
    assert!(vault.get_child("set", NS_RSM).is_some());
    (items.into_iter().map(|i| i.name).collect(), first, count)
}

/// The audit's other attack: a vault of a few thousand small blobs, listed
/// in one stanza, was over Prosody's component stanza limit, which closed
/// the component's stream. Now every
/// listing is a page, and the pages reach every blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_of_thousands_of_blobs_is_listed_page_by_page() {
    // 4000 names of 120 characters: one listing of them all would be about
    // 640 KB, over Prosody's component_stanza_size_limit (512 KiB).
    const BLOBS: usize = 4000;
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[limits]\naccount_rate = 100000\naccount_burst = 100000");
    let alice = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let account = bare("alice@example.org");
    let vault = Vault::create(&alice, &service(), "pass", FAST).await.unwrap();
    let names: Vec<String> = (0..BLOBS).map(|i| format!("backup/{}-{i:05}", "x".repeat(107))).collect();
    let to = at(&account);
    for chunk in names.chunks(500) {
        let puts = chunk.iter().map(|name| {
            let put = VaultRequest::Put { name: name.clone(), if_version: 0, data: vec![1; 8] };
            raw(&alice, &to, "set", put.to_element())
        });
        for reply in futures::future::join_all(puts).await {
            assert_eq!(outcome(&reply), "result");
        }
    }

    // A listing without a page size gets the default page; a larger page
    // is capped at max-page-size (100).
    let (first, index, count) = list(&alice, &account, None, Cursor::First).await;
    assert_eq!((first.len(), index, count), (50, 0, BLOBS + 1));
    let (big, index, _) = list(&alice, &account, Some(100_000), Cursor::After(first[49].clone())).await;
    assert_eq!((big.len(), index, big[0].as_str()), (100, 50, names[50].as_str()));
    let listed: Vec<String> = vault.list(&alice).await.unwrap();
    assert_eq!(listed, names);

    // Nobody lost the service meanwhile.
    let info = bob.iq(&service(), "get", Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build()).await;
    assert!(info.unwrap().is_some());
    component.assert_never_reconnected();
}
