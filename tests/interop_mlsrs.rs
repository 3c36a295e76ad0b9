//! A second MLS implementation in the suite: a device of AWS mls-rs,
//! speaking xep/ with raw stanzas (tests/mlsrs), in one group with devices
//! of our library (openmls): it is added and welcomed, talks both ways
//! (XEP-0420 envelopes), decrypts a burst in the sender's order,
//! commits (an empty Commit, then one that adds a device of our library),
//! has a stale Commit refused, and catches up from the archive across the
//! epochs it missed while offline; in a group it created, it processes and
//! commits the service's Remove proposal of a retracted device. Runs on Prosody and, with
//! XMPP_TEST_SERVER=ejabberd, on ejabberd.

mod common;
mod mlsrs;

use common::{bare, expect, member, Component, Server};
use mlsrs::{Item, RsDevice};
use xmpp_mls::client::{GroupClient, GroupEvent};
use xmpp_parsers::jid::BareJid;

/// The body of the next application message from `account`.
async fn message_from(client: &mut GroupClient, account: &str) -> String {
    let from = bare(account);
    let got = expect(client, "message", |e| matches!(e, GroupEvent::Message { account, .. } if *account == from)).await;
    let GroupEvent::Message { content, .. } = got else { unreachable!() };
    content.body().expect("a body")
}

/// Applies the commits that `client` receives until `epoch`.
async fn reach(client: &mut GroupClient, group: &BareJid, epoch: u64) {
    while client.epoch(group).unwrap() < epoch {
        expect(client, "commit", |e| matches!(e, GroupEvent::Epoch { .. })).await;
    }
    assert_eq!(client.epoch(group).unwrap(), epoch);
}

fn text_message(account: &str, text: &str) -> Item {
    Item::Message { account: account.into(), text: text.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mls_rs_device_joins_talks_commits_and_catches_up() {
    let server = Server::start();
    let component = Component::start(&server, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&server, &dir, "alice", "laptop").await;
    let mut bob = member(&server, &dir, "bob", "phone").await;
    let mut carol = RsDevice::new(&server, "carol", "rs-1").await;
    carol.upload_key_packages(3).await;

    // openmls claims and adds mls-rs's KeyPackage; mls-rs joins with openmls's Welcome.
    let group = alice.create().await.unwrap();
    let added = alice.add(&group, &[bare("bob@example.org"), bare("carol@example.org")]).await.unwrap();
    assert_eq!(added.epoch, 1);
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    assert_eq!(carol.accept_welcome().await, group.to_string());
    assert_eq!(carol.epoch(), 1);
    assert_eq!(carol.epoch_check(), alice.epoch_check(&group).unwrap());
    let mut members = carol.members();
    members.sort();
    assert_eq!(members, ["alice@example.org", "bob@example.org", "carol@example.org"]);

    // Application messages both ways; the sender gets its echo.
    alice.send_body(&group, "hello carol").await.unwrap();
    assert_eq!(carol.next_item().await, text_message("alice@example.org", "hello carol"));
    let id = carol.send("hello from mls-rs").await;
    for device in [&mut alice, &mut bob] {
        assert_eq!(message_from(device, "carol@example.org").await, "hello from mls-rs");
    }
    assert_eq!(carol.next_item().await, Item::Echo { id });

    // A burst sent without waiting for echoes (xep/ §Order): mls-rs
    // decrypts every message, in the sender's order.
    let burst: Vec<String> = (0..40).map(|i| format!("burst message {i}")).collect();
    for text in &burst {
        alice.send_body(&group, text).await.unwrap();
    }
    for text in &burst {
        assert_eq!(carol.next_item().await, text_message("alice@example.org", text));
    }

    // mls-rs commits: an empty Commit (an UpdatePath), then one that adds dave's device.
    assert_eq!(carol.commit(Vec::new()).await, Ok(2));
    for device in [&mut alice, &mut bob] {
        reach(device, &group, 2).await;
        assert_eq!(device.epoch_check(&group).unwrap(), carol.epoch_check());
    }
    let mut dave = member(&server, &dir, "dave", "pc").await;
    let key_packages = carol.claim("dave@example.org").await;
    assert_eq!(key_packages.len(), 1);
    assert_eq!(carol.commit(key_packages).await, Ok(3));
    expect(&mut dave, "welcome", |e| matches!(e, GroupEvent::Joined { group: g } if *g == group)).await;
    for device in [&mut alice, &mut bob, &mut dave] {
        reach(device, &group, 3).await;
        assert_eq!(device.epoch_check(&group).unwrap(), carol.epoch_check());
    }
    dave.send_body(&group, "dave here").await.unwrap();
    assert_eq!(carol.next_item().await, text_message("dave@example.org", "dave here"));

    // Offline, carol misses three epochs and a message in each.
    carol.disconnect().await;
    let mut last_commit = String::new();
    for epoch in 4..=6 {
        last_commit = alice.update(&group).await.unwrap().stanza_id;
        reach(&mut bob, &group, epoch).await;
        bob.send_body(&group, &format!("missed in epoch {epoch}")).await.unwrap();
    }

    // Back online, her Commit for epoch 3 loses: the service names the current epoch and its Commit.
    carol.reconnect(&server).await;
    let error = carol.commit(Vec::new()).await.unwrap_err();
    assert_eq!(error.attr("type"), Some("cancel"));
    assert!(error.get_child("conflict", "urn:ietf:params:xml:ns:xmpp-stanzas").is_some(), "{}", String::from(&error));
    let wrong_epoch = error.get_child("wrong-epoch", "urn:xmpp:mls:0:errors").expect("wrong-epoch");
    assert_eq!((wrong_epoch.attr("epoch"), wrong_epoch.attr("commit")), (Some("6"), Some(last_commit.as_str())));
    assert_eq!(carol.epoch(), 3);

    // She joins the feed (which names epoch 6), reads her inbox and catches up, two items a page.
    assert_eq!(carol.join_feed().await, 6);
    // Her device's publication, alice's claim of her KeyPackage, the
    // warning that her pool (3, uploaded below low-water) is low, the
    // Welcome; acknowledged by the account's only device, they are gone.
    assert_eq!(carol.read_inbox().await, ["event", "key-package-claimed", "key-packages-low", "welcome"]);
    assert_eq!(carol.read_inbox().await, Vec::<String>::new());
    let items = carol.catch_up(2).await;
    let bob_said = |epoch| text_message("bob@example.org", &format!("missed in epoch {epoch}"));
    let expected = [Item::Commit { epoch: 4 }, bob_said(4), Item::Commit { epoch: 5 }, bob_said(5), Item::Commit { epoch: 6 }, bob_said(6)];
    assert_eq!(items, expected);
    assert_eq!(carol.epoch_check(), alice.epoch_check(&group).unwrap());
    carol.ack().await;

    // And talks in the new epoch.
    carol.send("back in epoch 6").await;
    for device in [&mut alice, &mut bob, &mut dave] {
        assert_eq!(message_from(device, "carol@example.org").await, "back in epoch 6");
    }
    component.assert_never_reconnected();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mls_rs_device_creates_a_group_and_adds_our_devices() {
    let server = Server::start();
    let component = Component::start(&server, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&server, &dir, "alice", "laptop").await;
    let mut carol = RsDevice::new(&server, "carol", "rs-1").await;

    // The service builds its view of the group from mls-rs's GroupInfo and tree.
    let group = bare(&carol.create().await);
    let key_packages = carol.claim("alice@example.org").await;
    assert_eq!(carol.commit(key_packages).await, Ok(1));
    expect(&mut alice, "welcome", |e| matches!(e, GroupEvent::Joined { group: g } if *g == group)).await;
    assert_eq!(alice.epoch(&group).unwrap(), 1);
    assert_eq!(alice.epoch_check(&group).unwrap(), carol.epoch_check());
    let mut members: Vec<String> = alice.members(&group).await.unwrap().into_iter().map(|(account, _)| account.to_string()).collect();
    members.sort();
    assert_eq!(members, ["alice@example.org", "carol@example.org"]);

    let id = carol.send("welcome, alice").await;
    assert_eq!(message_from(&mut alice, "carol@example.org").await, "welcome, alice");
    assert_eq!(carol.next_item().await, Item::Echo { id });
    alice.send_body(&group, "thanks, carol").await.unwrap();
    assert_eq!(carol.next_item().await, text_message("alice@example.org", "thanks, carol"));

    // dave's device joins, then leaves his device list: mls-rs processes
    // the service's Remove proposal (the group lists the service as its
    // external sender) and commits it.
    let mut dave = member(&server, &dir, "dave", "pc").await;
    assert_eq!(carol.commit(carol.claim("dave@example.org").await).await, Ok(2));
    expect(&mut dave, "welcome", |e| matches!(e, GroupEvent::Joined { group: g } if *g == group)).await;
    let dave_leaf = carol.leaf_of(dave.device().signer().public());
    dave.session.retract_device(&dave.service().clone(), &dave.device().id().to_owned()).await.unwrap();
    assert_eq!(carol.next_item().await, Item::ServiceRemoval { leaf: dave_leaf });
    assert_eq!(carol.commit(Vec::new()).await, Ok(3));
    let mut members = carol.members();
    members.sort();
    assert_eq!(members, ["alice@example.org", "carol@example.org"]);
    reach(&mut alice, &group, 3).await;
    assert_eq!(alice.epoch_check(&group).unwrap(), carol.epoch_check());
    let mut members = alice.members(&group).await.unwrap();
    members.sort();
    assert_eq!(members, [(bare("alice@example.org"), alice.device().id().to_owned()), (bare("carol@example.org"), "rs-1".to_owned())]);
    component.assert_never_reconnected();
}
