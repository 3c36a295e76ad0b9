//! Large groups end to end (xep/ §Fetching the Ratchet Tree, §The Tree and
//! Size of a Bundle, §Commits in Parts): a group grown to 2,000 devices
//! through a server with its default stanza limits, its additions split
//! into commits that fit, joined by Welcome and by external commit with the
//! tree fetched from the service; a tree page changed in the service's
//! store is refused. Commits larger than a stanza go in parts.

mod common;

use common::{bare, expect, member, new_device, Component, Prosody, COMPONENT};
use openmls::prelude::{BasicCredential, CredentialWithKey, KeyPackage};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use xmpp_mls::client::{GroupClient, GroupError, GroupEvent, CIPHERSUITE};
use xmpp_mls::protocol::address::Address;
use xmpp_mls::protocol::devices::Device;
use xmpp_mls::protocol::groups::{GroupMessage, TreePage, TreeRequest};
use xmpp_mls::protocol::mam::Cursor;
use xmpp_mls::store_params;
use xmpp_parsers::jid::{BareJid, Jid};

/// Devices of the generated accounts, and how many accounts hold them.
const DEVICES: usize = 2_000;
const ACCOUNTS: usize = 16;

/// Room for 125 devices an account; no rate limit for the test's bursts.
const CONFIG: &str = "[directory]\nmax_devices_per_account = 125\nclaim_burst = 125\nmax_key_package_size = 1024\n\
                      max_key_packages_per_device = 8\n[limits]\naccount_rate = 100000\naccount_burst = 100000\n";

fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

fn group_id(group: &BareJid) -> Vec<u8> {
    match Address::parse(&Jid::from(group.clone())) {
        Ok(Address::Group(id)) => id,
        other => panic!("not a group JID: {other:?}"),
    }
}

/// `devices` devices of `ACCOUNTS` accounts (`m0`…), each listed by its
/// account's own session, and a KeyPackage of each made here.
async fn generated_devices(prosody: &Prosody, devices: usize) -> Vec<KeyPackage> {
    let provider = OpenMlsRustCrypto::default();
    let mut kps = Vec::new();
    for a in 0..ACCOUNTS {
        let session = prosody.client(&format!("m{a}"), "generator").await;
        let account = session.jid().to_bare();
        for d in 0..devices / ACCOUNTS {
            let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).unwrap();
            let device = Device { id: format!("d{d}"), signature_key: signer.to_public_vec(), label: None, expires: None };
            session.publish_device(&service(), &device).await.unwrap();
            let credential = CredentialWithKey {
                credential: BasicCredential::new(format!("xmpp:{account}").into_bytes()).into(),
                signature_key: signer.to_public_vec().into(),
            };
            let bundle = KeyPackage::builder().build(CIPHERSUITE, &provider, &signer, credential).unwrap();
            kps.push(bundle.key_package().clone());
        }
    }
    kps
}

/// Every page of the tree of `epoch` as the service sends it (the
/// `<tree/>` payloads).
async fn tree_pages(client: &GroupClient, group: &BareJid, epoch: u64) -> Vec<TreePage> {
    let (mut pages, mut page) = (Vec::new(), 0);
    loop {
        let request = TreeRequest { epoch, page }.to_element();
        let reply = client.session.iq(&group.clone().into(), "get", request).await.unwrap().unwrap();
        let got = TreePage::parse(&reply).unwrap();
        assert!(String::from(&reply).len() <= 240 * 1024, "page {page}: {} octets", String::from(&reply).len());
        page += 1;
        let last = page == got.pages;
        pages.push(got);
        if last {
            return pages;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_thousand_devices_is_joined_with_the_tree_from_the_service() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut phone = member(&prosody, &dir, "bob", "phone").await;
    let kps = generated_devices(&prosody, DEVICES).await;

    let group = alice.create().await.unwrap();
    let accepted = alice.add_key_packages(&group, kps).await.unwrap();
    let commits: i64 = component.db().one(
        &format!("SELECT count(*) FROM archive WHERE kind = 1 AND {}", common::GROUP_ROWS),
        store_params![group_id(&group)],
    );
    assert!(commits >= 4, "2,000 KeyPackages cannot fit one bundle: {commits} commits");
    assert_eq!(accepted.epoch, commits as u64, "one epoch a commit");
    assert_eq!(alice.members(&group).await.unwrap().len(), DEVICES + 1);

    // bob's phone is added: its Welcome leaves the tree out; it fetches it.
    let welcomed = alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut phone, "welcome", |e| matches!(e, GroupEvent::Joined { group: g } if *g == group)).await;
    assert_eq!(phone.epoch(&group).unwrap(), welcomed.epoch);
    let pages = tree_pages(&alice, &group, welcomed.epoch).await;
    assert!(pages.len() >= 3, "a tree of 2,002 leaves in {} pages", pages.len());

    // A page changed in the service's store: the new tablet's external
    // commit refuses the tree, and joins once the page is right again.
    let mut tablet = new_device(prosody.client("bob", "tablet").await, &dir, COMPONENT).await;
    let (epoch, page) = (welcomed.epoch as i64, 1i64);
    let sql = "SELECT nodes FROM group_trees WHERE group_id = ?1 AND epoch = ?2 AND page = ?3";
    let kept: Vec<u8> = component.db().one(sql, store_params![group_id(&group), epoch, page]);
    assert_eq!(kept, pages[1].nodes, "the page as kept");
    let mut changed = kept.clone();
    changed[kept.len() / 2] ^= 0x01;
    let update = "UPDATE group_trees SET nodes = ?4 WHERE group_id = ?1 AND epoch = ?2 AND page = ?3";
    assert_eq!(component.db().execute(update, store_params![group_id(&group), epoch, page, changed]), 1);
    let refused = tablet.join_external(&group).await;
    assert!(matches!(refused, Err(GroupError::BadTree(_))), "{refused:?}");
    assert_eq!(component.db().execute(update, store_params![group_id(&group), epoch, page, kept]), 1);
    let joined = tablet.join_external(&group).await.unwrap();
    assert_eq!(joined.epoch, welcomed.epoch + 1);
    let to = joined.epoch;
    expect(&mut alice, "the tablet's commit", |e| matches!(e, GroupEvent::Epoch { epoch, .. } if *epoch == to)).await;

    // Messages flow both ways.
    alice.send_body(&group, "to two thousand and three").await.unwrap();
    for device in [&mut phone, &mut tablet] {
        let got = expect(device, "alice's message", |e| matches!(e, GroupEvent::Message { .. })).await;
        let GroupEvent::Message { account, content, .. } = got else { unreachable!() };
        assert_eq!((account, content.body().as_deref()), (bare("alice@example.org"), Some("to two thousand and three")));
    }
    tablet.send_body(&group, "from the tablet").await.unwrap();
    let got = expect(&mut alice, "the tablet's message", |e| matches!(e, GroupEvent::Message { .. })).await;
    let GroupEvent::Message { account, content, .. } = got else { unreachable!() };
    assert_eq!((account, content.body().as_deref()), (bare("bob@example.org"), Some("from the tablet")));
    drop(component);
}

/// The octets of the archived message at `stanza_id`.
fn archived_size(component: &Component, stanza_id: &str) -> i64 {
    let pos = common::archive_pos(&component.db(), stanza_id);
    component.db().one("SELECT length(message) FROM archive WHERE pos = ?1", store_params![pos])
}

/// Commits larger than a stanza: with the component's max-payload-size at
/// 16 KiB, self-updates and external commits in a group of 500 devices are
/// uploaded in parts, and the members that apply them, live or from the
/// archive, fetch them in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_larger_than_a_stanza_go_in_parts() {
    const MAX_PAYLOAD: i64 = 16 * 1024;
    let prosody = Prosody::start();
    let component = Component::start(&prosody, &format!("{CONFIG}max_payload_size = {MAX_PAYLOAD}\n"));
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut phone = member(&prosody, &dir, "bob", "phone").await;
    let group = alice.create().await.unwrap();
    alice.add_key_packages(&group, generated_devices(&prosody, 496).await).await.unwrap();
    let welcomed = alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut phone, "welcome", |e| matches!(e, GroupEvent::Joined { group: g } if *g == group)).await;

    // alice's self-update encrypts to every member: it goes in parts, and
    // the phone applies it live.
    let updated = alice.update(&group).await.unwrap();
    assert!(archived_size(&component, &updated.stanza_id) > MAX_PAYLOAD, "a Commit larger than a payload");
    assert_eq!(updated.epoch, welcomed.epoch + 1);
    common::reach(&mut phone, &group, updated.epoch).await;

    // The archive names it: a MAM result carries no octets of it.
    let archive = group.clone().into();
    let page = alice.archive_page(&archive, &[("urn:xmpp:mls:0#kind", "commit")], 100, &Cursor::Last, false).await.unwrap();
    let last = page.stanzas.last().expect("the update");
    let named = GroupMessage::find(last).unwrap().unwrap();
    assert_eq!(named.parts.map(|p| p.size as i64), Some(archived_size(&component, &updated.stanza_id)));
    assert!(named.message.is_empty() && String::from(last).len() < 1024, "{}", String::from(last));

    // The tablet's external commit goes in parts too; the phone, offline
    // meanwhile, fetches both from the archive when it is back.
    drop(phone);
    let mut tablet = new_device(prosody.client("bob", "tablet").await, &dir, COMPONENT).await;
    let joined = tablet.join_external(&group).await.unwrap();
    assert!(archived_size(&component, &joined.stanza_id) > MAX_PAYLOAD);
    common::reach(&mut alice, &group, joined.epoch).await;
    let again = alice.update(&group).await.unwrap();
    let mut phone = common::reconnect(&prosody, &dir, "bob", "phone").await;
    phone.join_all().await.unwrap();
    phone.catch_up(&group, &mut |_, _, _| {}).await.unwrap();
    assert_eq!(phone.epoch(&group).unwrap(), again.epoch);
    common::reach(&mut tablet, &group, again.epoch).await;
    assert_eq!(phone.epoch_check(&group).unwrap(), alice.epoch_check(&group).unwrap(), "the same epoch");

    alice.send_body(&group, "after the parts").await.unwrap();
    for device in [&mut phone, &mut tablet] {
        let got = expect(device, "alice's message", |e| matches!(e, GroupEvent::Message { .. })).await;
        let GroupEvent::Message { content, .. } = got else { unreachable!() };
        assert_eq!(content.body().as_deref(), Some("after the parts"));
    }
    drop(component);
}
