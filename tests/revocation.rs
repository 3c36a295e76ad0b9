//! Revocation end to end (xep/ §Service Removals): a device that leaves its
//! account's list (retracted or expired) leaves every group by itself,
//! through the service's Remove proposal and a member's commit; a commit
//! that ignores such a proposal past the grace is refused.

mod common;

use std::time::Duration;

use common::{bare, expect, member, new_device, Component, Prosody, COMPONENT};
use xmpp_mls::client::{ClientError, GroupClient, GroupEvent};
use xmpp_parsers::jid::{BareJid, Jid};

fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

fn alice() -> BareJid {
    bare("alice@example.org")
}

fn bob() -> BareJid {
    bare("bob@example.org")
}

/// (account, device id) of a device, as `GroupEvent::Epoch` lists members.
fn id_of(client: &GroupClient) -> (BareJid, String) {
    (client.device().account().clone(), client.device().id().to_owned())
}

fn sorted(mut members: Vec<(BareJid, String)>) -> Vec<(BareJid, String)> {
    members.sort();
    members
}

/// alice's laptop creates a group with her `other` device and bob's phone;
/// every member has read the device lists (so that events name devices).
async fn group_of_three(laptop: &mut GroupClient, other: &mut GroupClient, bob: &mut GroupClient) -> BareJid {
    let group = laptop.create().await.unwrap();
    laptop.add(&group, &[alice(), self::bob()]).await.unwrap();
    for device in [&mut *other, &mut *bob] {
        expect(device, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    }
    let everyone = sorted(vec![id_of(laptop), id_of(other), id_of(bob)]);
    for device in [&mut *laptop, &mut *other, &mut *bob] {
        assert_eq!(sorted(device.members(&group).await.unwrap()), everyone);
    }
    group
}

/// Waits for the service's Remove proposal of `gone` in `group`.
async fn removal_proposed(client: &mut GroupClient, group: &BareJid, gone: &(BareJid, String)) {
    let event = expect(client, "the service's Remove proposal", |e| matches!(e, GroupEvent::RemovalProposed { .. })).await;
    assert_eq!(event, GroupEvent::RemovalProposed { group: group.clone(), account: gone.0.clone(), device: gone.1.clone() });
}

/// Waits for `epoch` of `group` and checks its members are exactly `members`.
async fn epoch_of(client: &mut GroupClient, group: &BareJid, epoch: u64, members: &[(BareJid, String)]) {
    let event = expect(client, "the removal's epoch", |e| matches!(e, GroupEvent::Epoch { epoch: n, .. } if *n == epoch)).await;
    let GroupEvent::Epoch { group: g, members: got, .. } = event else { unreachable!() };
    assert_eq!(g, *group);
    assert_eq!(sorted(got), sorted(members.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retracted_phone_leaves_every_group_and_reads_nothing_more() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut laptop = member(&prosody, &dir, "alice", "laptop").await;
    let mut phone = member(&prosody, &dir, "alice", "phone").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let group = group_of_three(&mut laptop, &mut phone, &mut bob).await;
    let epoch = laptop.epoch(&group).unwrap();

    let gone = id_of(&phone);
    let started = std::time::Instant::now();
    laptop.session.retract_device(&service(), &gone.1).await.unwrap();

    let rest = [id_of(&laptop), id_of(&bob)];
    removal_proposed(&mut laptop, &group, &gone).await;
    removal_proposed(&mut bob, &group, &gone).await;
    // One of them commits it (the other's try finds nothing left to commit).
    epoch_of(&mut laptop, &group, epoch + 1, &rest).await;
    epoch_of(&mut bob, &group, epoch + 1, &rest).await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(sorted(laptop.members(&group).await.unwrap()), sorted(rest.to_vec()));
    assert_eq!(sorted(bob.members(&group).await.unwrap()), sorted(rest.to_vec()));

    // The phone cannot read what is said from now on: it is off the feed,
    // and the archive brings it the commit that removed it.
    laptop.send_body(&group, "after the phone left").await.unwrap();
    let got = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(got, GroupEvent::Message { content, .. } if content.body().as_deref() == Some("after the phone left")));
    // (It reads the archive as a device of a member account; only its
    // acknowledgement is refused, as it is no device of the account.)
    let _ = phone.catch_up(&group, &mut |_, _, _| {}).await;
    let mut events = Vec::new();
    while let Some(event) = phone.next_event(Duration::from_secs(2)).await.unwrap() {
        events.push(event);
    }
    assert!(events.contains(&GroupEvent::Removed { group: group.clone() }), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, GroupEvent::Message { .. })), "the retracted phone read: {events:?}");
    assert!(phone.send_body(&group, "still here?").await.is_err());
    drop(component);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_ignoring_the_service_proposal_past_the_grace_is_refused_then_recovers() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[groups]\nproposal_grace_secs = 1");
    let dir = tempfile::tempdir().unwrap();
    let mut laptop = member(&prosody, &dir, "alice", "laptop").await;
    let mut phone = member(&prosody, &dir, "alice", "phone").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut carol = member(&prosody, &dir, "carol", "pc").await;
    let group = group_of_three(&mut laptop, &mut phone, &mut bob).await;
    let epoch = bob.epoch(&group).unwrap();

    // Nobody handles what arrives: the proposal stays uncommitted.
    laptop.session.retract_device(&service(), phone.device().id()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // bob has not applied the proposal: his bundle does not carry it.
    let kps = bob.key_packages_for(&bare("carol@example.org"), vec![carol.device().id().to_owned()]).await.unwrap();
    let bundle = bob.stage_add(&group, kps).await.unwrap();
    let Err(ClientError::Stanza(e)) = bob.submit(&group, &bundle).await else { panic!("the bundle was not refused") };
    assert_eq!(xmpp_mls::client::describe(&e), "modify/not-acceptable (missing-proposals)");
    let app = e.other.as_ref().unwrap();
    assert_eq!((app.name(), app.ns().as_str()), ("missing-proposals", "urn:xmpp:mls:0:errors"));
    bob.discard_pending(&group).unwrap();

    // The client recovers: it reads the proposal from the archive and
    // carries it in its next try.
    let accepted = bob.add(&group, &[bare("carol@example.org")]).await.unwrap();
    let members = [id_of(&laptop), id_of(&bob), id_of(&carol)];
    assert_eq!(accepted.epoch, epoch + 1);
    epoch_of(&mut bob, &group, epoch + 1, &members).await;
    expect(&mut carol, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    assert_eq!(sorted(carol.members(&group).await.unwrap()), sorted(members.to_vec()));
    epoch_of(&mut laptop, &group, epoch + 1, &members).await;
    drop(component);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_leaves_every_group_and_subscribers_see_it_retracted() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[history]\nmaintenance_secs = 1");
    let dir = tempfile::tempdir().unwrap();
    let mut laptop = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    // alice's tablet is listed for a few seconds only.
    let session = prosody.client("alice", "tablet").await;
    let tablet_device = xmpp_mls::client::Device::create(&dir.path().join("tablet.sqlite3"), alice(), None).unwrap();
    let expires = xmpp_mls::protocol::now() + 8;
    session.publish_device(&service(), &tablet_device.item(Some(expires))).await.unwrap();
    tablet_device.refill(&session, &service(), 3, true).await.unwrap();
    let mut tablet = GroupClient::start(session, tablet_device, service()).await.unwrap();
    let watcher = prosody.client("dave", "watcher").await;
    watcher.subscribe_devices(&service(), &alice()).await.unwrap();

    let group = group_of_three(&mut laptop, &mut tablet, &mut bob).await;
    let epoch = bob.epoch(&group).unwrap();
    let gone = id_of(&tablet);
    let rest = [id_of(&laptop), id_of(&bob)];
    removal_proposed(&mut bob, &group, &gone).await;
    removal_proposed(&mut laptop, &group, &gone).await;
    epoch_of(&mut bob, &group, epoch + 1, &rest).await;
    epoch_of(&mut laptop, &group, epoch + 1, &rest).await;

    // The subscriber got the expiry as a retraction.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let event = loop {
        let stanza = watcher.next_event_until(Some(deadline)).await.expect("a retract event");
        if let Some(e) = stanza.get_child("event", "http://jabber.org/protocol/pubsub#event") {
            break e.clone();
        }
    };
    let items = event.get_child("items", "http://jabber.org/protocol/pubsub#event").unwrap();
    assert_eq!(items.attr("node"), Some(xmpp_mls::protocol::devices::NODE));
    let retracted: Vec<_> = items.children().map(|c| (c.name().to_owned(), c.attr("id").map(str::to_owned))).collect();
    assert_eq!(retracted, vec![("retract".to_owned(), Some(gone.1.clone()))]);
    drop(component);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_a_group_that_does_not_list_it_and_advertises_its_key() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let session = prosody.client("alice", "old").await;
    let client = new_device(session, &dir, COMPONENT).await;
    let advertised = client.session.external_sender(&service()).await.unwrap();
    assert!(advertised.is_some(), "disco#info advertises the service's external sender");

    // A GroupInfo without the service in external_senders.
    use openmls::prelude::*;
    let provider = client.device().provider();
    let config = MlsGroupCreateConfig::builder()
        .use_ratchet_tree_extension(true)
        .ciphersuite(xmpp_mls::client::CIPHERSUITE)
        .build();
    let id: [u8; 16] = rand::random();
    let g = MlsGroup::new_with_group_id(provider, client.device().signer(), &config, GroupId::from_slice(&id), client.device().credential_with_key())
        .unwrap();
    let info = g.export_group_info(provider.crypto(), client.device().signer(), true).unwrap();
    let create = xmpp_mls::protocol::groups::Create { group_info: tls_codec::Serialize::tls_serialize_detached(&info).unwrap() };
    let to = Jid::new(&format!("{}@{COMPONENT}", xmpp_mls::protocol::address::group_node(&id))).unwrap();
    let reply = common::raw(&client.session, &to, "set", create.to_element()).await;
    assert_eq!(common::outcome(&reply), "modify/not-acceptable (external-sender-required)");
    drop(component);
}

/// `xmpp-mls admin <args>` on the running component's store.
fn admin(component: &Component, args: &[&str]) {
    let config = component.dir.path().join("xmpp-mls.toml");
    let mut all = vec!["admin", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let (code, stderr) = common::run_binary(&all, component.dir.path());
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_account_leaves_every_group() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[history]\nmaintenance_secs = 1");
    let dir = tempfile::tempdir().unwrap();
    let (mut laptop, bob, group) = common::alice_and_bob(&prosody, &dir).await;
    let epoch = laptop.epoch(&group).unwrap();
    assert_eq!(sorted(laptop.members(&group).await.unwrap()), sorted(vec![id_of(&laptop), id_of(&bob)]));

    admin(&component, &["purge-account", "bob@example.org", "--yes"]);
    removal_proposed(&mut laptop, &group, &id_of(&bob)).await;
    let alone = [id_of(&laptop)];
    epoch_of(&mut laptop, &group, epoch + 1, &alone).await;
    drop(component);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_new_groups_list_the_new_key_and_old_groups_keep_the_old_one() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut laptop, mut bob, old_group) = common::alice_and_bob(&prosody, &dir).await;
    let old_key = laptop.session.external_sender(&service()).await.unwrap().unwrap();
    laptop.members(&old_group).await.unwrap();

    admin(&component, &["rotate-external-sender"]);
    let new_key = laptop.session.external_sender(&service()).await.unwrap().unwrap();
    assert_ne!(old_key, new_key);
    let new_group = laptop.create().await.unwrap();
    laptop.add(&new_group, &[self::bob()]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { group } if *group == new_group)).await;
    while laptop.poll_event().is_some() {}

    // bob's phone leaves his list: both groups get a proposal (the old one
    // signed with the old key), and alice commits both.
    let gone = id_of(&bob);
    bob.session.retract_device(&service(), &gone.1).await.unwrap();
    let mut proposed = Vec::new();
    let mut epochs = Vec::new();
    while proposed.len() < 2 || epochs.len() < 2 {
        match laptop.next_event(Duration::from_secs(20)).await.unwrap().expect("the removals in time") {
            GroupEvent::RemovalProposed { group, account, device } => {
                assert_eq!((account, device), gone.clone());
                proposed.push(group);
            }
            GroupEvent::Epoch { group, members, .. } => {
                assert_eq!(members, vec![id_of(&laptop)]);
                epochs.push(group);
            }
            _ => {}
        }
    }
    for list in [&mut proposed, &mut epochs] {
        list.sort();
        let mut both = vec![old_group.clone(), new_group.clone()];
        both.sort();
        assert_eq!(*list, both);
    }
    drop(component);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_the_directory_lists_without_notifying_is_reported_and_removed_by_the_members() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut laptop, mut bob, group) = common::alice_and_bob(&prosody, &dir).await;
    let epoch = laptop.epoch(&group).unwrap();

    // A dishonest directory: a device of bob's written into the store
    // directly (nobody is notified), with a KeyPackage of its key.
    let planted = common::mls::TestSigner::new("bob@example.org");
    let key = planted.signer.to_public_vec();
    let now = xmpp_mls::protocol::now();
    component.db().execute(
        "INSERT INTO devices (account, device_id, signature_key, label, expires_at, published_at)
         VALUES ('bob@example.org', 'planted', ?1, NULL, ?2, ?3)",
        xmpp_mls::store_params![key, now + 3600, now],
    );
    bob.session.upload_key_packages(&service(), &[planted.valid_kp()]).await.unwrap();

    // alice's client claims it (the directory answers with the planted
    // device) and adds it; the service's AS check passes.
    assert_eq!(laptop.add(&group, &[self::bob()]).await.unwrap().epoch, epoch + 1);

    // Every member's client knows bob's list from its notifications.
    let reported = GroupEvent::UnlistedLeaf {
        group: group.clone(),
        account: self::bob(),
        fingerprint: xmpp_mls::client::fingerprint(&key),
    };
    let rest = [id_of(&laptop), id_of(&bob)];
    for member in [&mut laptop, &mut bob] {
        assert_eq!(expect(member, "the unlisted leaf", |e| matches!(e, GroupEvent::UnlistedLeaf { .. })).await, reported);
    }
    for member in [&mut laptop, &mut bob] {
        epoch_of(member, &group, epoch + 2, &rest).await;
    }
    drop(component);
}

/// The next XEP-0060 event `session` receives: (item ids published,
/// item ids retracted).
async fn next_device_event(session: &xmpp_mls::client::Session) -> (Vec<String>, Vec<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stanza = session.next_event_until(Some(deadline)).await.expect("a device list event");
        let Some(event) = stanza.get_child("event", "http://jabber.org/protocol/pubsub#event") else { continue };
        let items = event.get_child("items", "http://jabber.org/protocol/pubsub#event").unwrap();
        let ids = |name: &str| items.children().filter(|c| c.name() == name).filter_map(|c| c.attr("id").map(str::to_owned)).collect();
        return (ids("item"), ids("retract"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_found_expired_at_a_publication_is_notified_as_retracted() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let alice = prosody.client("alice", "laptop").await;
    let watcher = prosody.client("dave", "watcher").await;
    watcher.subscribe_devices(&service(), &self::alice()).await.unwrap();
    let short = common::mls::TestSigner::new("alice@example.org");
    alice.publish_device(&service(), &short.device("short", Some(xmpp_mls::protocol::now() + 2))).await.unwrap();
    assert_eq!(next_device_event(&watcher).await, (vec!["short".to_owned()], vec![]));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Maintenance has not run (its default interval): the next publication
    // finds the device expired, removes it and says so.
    let other = common::mls::TestSigner::new("alice@example.org");
    alice.publish_device(&service(), &other.device("other", None)).await.unwrap();
    assert_eq!(next_device_event(&watcher).await, (vec![], vec!["short".to_owned()]));
    assert_eq!(next_device_event(&watcher).await, (vec!["other".to_owned()], vec![]));
    drop(component);
}
