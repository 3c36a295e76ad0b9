//! History end to end through Prosody: catch-up after being offline,
//! XEP-0313 paging, access, inbox acknowledgements.

mod common;

use std::time::Duration;

use common::{bare, expect, member, reconnect, COMPONENT, Component, Prosody};
use xmpp_mls::client::GroupEvent;
use xmpp_mls::protocol::mam::Cursor;
use xmpp_parsers::jid::Jid;

fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_catches_up_across_epochs_and_decrypts_everything_in_order() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut carol = member(&prosody, &dir, "carol", "pc").await;
    let mut tablet = member(&prosody, &dir, "bob", "tablet").await;
    let _dave = member(&prosody, &dir, "dave", "pc").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org"), bare("carol@example.org")]).await.unwrap();
    for d in [&mut bob, &mut carol, &mut tablet] {
        expect(d, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    }
    let start_epoch = alice.epoch(&group).unwrap();

    // bob's tablet goes offline.
    tablet.session.close().await;

    // 5 epochs (an add, a removal, self-updates) among 200 messages.
    let mut sent = Vec::new();
    let senders = ["alice", "bob", "carol"];
    for i in 0..200 {
        let who = i % 3;
        let body = format!("{} #{i}", senders[who]);
        let client = match who {
            0 => &mut alice,
            1 => &mut bob,
            _ => &mut carol,
        };
        client.send_body(&group, &body).await.unwrap();
        expect(client, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
        sent.push(body);
        match i {
            40 => drop(alice.add(&group, &[bare("dave@example.org")]).await.unwrap()),
            80 => drop(bob.update(&group).await.unwrap()),
            120 => drop(alice.remove_account(&group, &bare("dave@example.org")).await.unwrap()),
            150 => drop(carol.update(&group).await.unwrap()),
            180 => drop(alice.update(&group).await.unwrap()),
            _ => {}
        }
    }
    let final_epoch = alice.epoch(&group).unwrap();
    assert_eq!(final_epoch, start_epoch + 5);

    // The tablet comes back and catches up from the archive.
    let mut tablet = reconnect(&prosody, &dir, "bob", "tablet").await;
    let mut pages = 0;
    tablet.catch_up_all(&mut |_, _, _| pages += 1).await.unwrap();
    assert!(pages >= 3, "200+ items come in pages of 100");
    let mut got = Vec::new();
    while let Some(e) = tablet.next_event(Duration::from_millis(500)).await.unwrap() {
        if let GroupEvent::Message { content, .. } = e {
            got.push(content.body().unwrap());
        }
    }
    // bob's own messages reach his tablet like everyone else's.
    assert_eq!(got, sent, "every message, once, in order");
    assert_eq!(tablet.epoch(&group).unwrap(), final_epoch);
    assert_eq!(tablet.epoch_check(&group).unwrap(), alice.epoch_check(&group).unwrap());
}

/// A client that knows only XEP-0313: raw queries on the archive.
fn ids(page: &xmpp_mls::client::ArchivePage) -> Vec<String> {
    page.stanzas
        .iter()
        .map(|m| m.get_child("stanza-id", "urn:xmpp:sid:0").unwrap().attr("id").unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_follows_xep_0313_on_every_edge() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let group = alice.create().await.unwrap();
    let archive = Jid::from(group.clone());
    for i in 0..25 {
        alice.send_body(&group, &format!("m{i}")).await.unwrap();
        expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    }
    let all = alice.archive_page(&archive, &[], 100, &Cursor::First, false).await.unwrap();
    assert_eq!((all.stanzas.len(), all.complete, all.count), (25, true, 25));
    let all_ids = ids(&all);

    // Forward pages of 10: complete on the last one only, no gaps.
    let mut seen = Vec::new();
    let mut cursor = Cursor::First;
    let mut completes = Vec::new();
    loop {
        let page = alice.archive_page(&archive, &[], 10, &cursor, false).await.unwrap();
        assert_eq!(page.count, 25);
        completes.push(page.complete);
        seen.extend(ids(&page));
        if page.complete {
            break;
        }
        cursor = Cursor::After(page.last.clone().unwrap());
    }
    assert_eq!(seen, all_ids);
    assert_eq!(completes, vec![false, false, true]);

    // Empty <before/>: the last page; flip-page reverses it.
    let last = alice.archive_page(&archive, &[], 10, &Cursor::Last, false).await.unwrap();
    assert_eq!(ids(&last), all_ids[15..].to_vec());
    assert!(!last.complete, "earlier items remain");
    let flipped = alice.archive_page(&archive, &[], 10, &Cursor::Last, true).await.unwrap();
    let mut reversed = all_ids[15..].to_vec();
    reversed.reverse();
    assert_eq!(ids(&flipped), reversed);
    // Before an id; after-id and before-id form fields; ids.
    let before = alice.archive_page(&archive, &[], 10, &Cursor::Before(all_ids[5].clone()), false).await.unwrap();
    assert_eq!((ids(&before), before.complete), (all_ids[..5].to_vec(), true));
    let window = alice
        .archive_page(&archive, &[("after-id", &all_ids[2]), ("before-id", &all_ids[6])], 10, &Cursor::First, false)
        .await
        .unwrap();
    assert_eq!((ids(&window), window.count), (all_ids[3..6].to_vec(), 3));

    // Unknown ids are item-not-found, not an empty page.
    for cursor in [Cursor::After("nope".into()), Cursor::Before("nope".into())] {
        let e = alice.archive_page(&archive, &[], 10, &cursor, false).await.err().expect("an error");
        assert!(format!("{e}").contains("item-not-found"), "{e}");
    }
    let e = alice.archive_page(&archive, &[("after-id", "nope")], 10, &Cursor::First, false).await.err().unwrap();
    assert!(format!("{e}").contains("item-not-found"), "{e}");

    // Resuming while messages keep arriving: no gap, no duplicate.
    let first = alice.archive_page(&archive, &[], 10, &Cursor::First, false).await.unwrap();
    for i in 25..30 {
        alice.send_body(&group, &format!("m{i}")).await.unwrap();
        expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    }
    let mut resumed = ids(&first);
    let mut cursor = Cursor::After(first.last.unwrap());
    loop {
        let page = alice.archive_page(&archive, &[], 10, &cursor, false).await.unwrap();
        resumed.extend(ids(&page));
        if page.complete {
            break;
        }
        cursor = Cursor::After(page.last.unwrap());
    }
    assert_eq!(resumed.len(), 30);
    assert_eq!(resumed[..25].to_vec(), all_ids);
    let unique: std::collections::HashSet<_> = resumed.iter().collect();
    assert_eq!(unique.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_read_and_removed_members_see_nothing_after_their_removal() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut mallory = member(&prosody, &dir, "mallory", "pc").await;
    let group = alice.create().await.unwrap();
    let archive = Jid::from(group.clone());
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    alice.send_body(&group, "before").await.unwrap();
    expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;

    let e = mallory.archive_page(&archive, &[], 10, &Cursor::First, false).await.err().unwrap();
    assert!(format!("{e}").contains("forbidden"), "{e}");
    let inbox = xmpp_mls::client::directory_jid(&bare("alice@example.org"), &service());
    let e = mallory.archive_page(&inbox, &[], 10, &Cursor::First, false).await.err().unwrap();
    assert!(format!("{e}").contains("forbidden"), "{e}");

    let seen_before = bob.archive_page(&archive, &[], 100, &Cursor::First, false).await.unwrap().count;
    alice.remove_account(&group, &bare("bob@example.org")).await.unwrap();
    alice.send_body(&group, "after").await.unwrap();
    let after = bob.archive_page(&archive, &[], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(after.count, seen_before + 1, "bob sees his removal, nothing after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_entry_stays_until_every_live_device_acknowledged_it() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let phone = member(&prosody, &dir, "alice", "phone").await;
    let claimer = prosody.client("bob", "phone").await;
    claimer
        .claim(&service(), &bare("alice@example.org"), &xmpp_mls::protocol::keypackages::Claim::default())
        .await
        .unwrap();
    let inbox = xmpp_mls::client::directory_jid(&bare("alice@example.org"), &service());
    let entries = |p: &xmpp_mls::client::ArchivePage| p.count;
    let page = alice.archive_page(&inbox, &[], 100, &Cursor::First, false).await.unwrap();
    let n = entries(&page);
    assert!(n >= 2, "device-list events and claim notices are kept");
    let again = alice.archive_page(&inbox, &[], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(entries(&again), n, "fetching deletes nothing");
    let last = page.last.clone().unwrap();
    let ack = |device: &str| {
        xmpp_mls::protocol::mam::Ack { device: device.to_owned(), id: last.clone() }.to_element()
    };
    let laptop_id = alice.device().id().to_owned();
    alice.session.iq(&inbox, "set", ack(&laptop_id)).await.unwrap();
    assert_eq!(entries(&alice.archive_page(&inbox, &[], 100, &Cursor::First, false).await.unwrap()), n, "one device acked");
    let phone_id = phone.device().id().to_owned();
    phone.session.iq(&inbox, "set", ack(&phone_id)).await.unwrap();
    assert_eq!(entries(&alice.archive_page(&inbox, &[], 100, &Cursor::First, false).await.unwrap()), 0, "all acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_from_the_oldest_end_and_a_device_behind_it_recovers() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[history]\nretention_secs = 1\nmaintenance_secs = 1");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let group = alice.create().await.unwrap();
    let archive = Jid::from(group.clone());
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    alice.send_body(&group, "one").await.unwrap();
    expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    // Both devices acknowledge what they applied; bob goes offline.
    alice.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    bob.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    bob.session.close().await;

    // A commit nobody offline has acknowledged holds everything after it.
    alice.update(&group).await.unwrap();
    for i in 0..3 {
        alice.send_body(&group, &format!("while bob is away {i}")).await.unwrap();
    }
    // Positions are pos's low 32 bits (a decimal mask: PostgreSQL 15 has no hex literals).
    let held = |c: &Component| c.db().all::<i64>("SELECT pos & 4294967295 FROM archive ORDER BY pos", &[]);
    assert!(common::wait_until(Duration::from_secs(10), || held(&component).first() == Some(&3)), "{:?}", held(&component));
    let kept = held(&component);
    assert_eq!(kept, (3..=kept[kept.len() - 1]).collect::<Vec<_>>(), "pruned from the oldest end, no hole");

    // The commit bob has not acknowledged is the oldest item kept.
    let page = alice.archive_page(&archive, &[], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(page.stanzas[0].get_child("mls", "urn:xmpp:mls:0").unwrap().attr("kind"), Some("commit"));

    // bob's position (the first message) is gone: he is told, and rejoins
    // from the latest GroupInfo by external commit.
    // alice, online, has applied everything the feed brought her.
    while alice.next_event(Duration::from_millis(300)).await.unwrap().is_some() {}
    let mut bob = reconnect(&prosody, &dir, "bob", "phone").await;
    bob.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    // bob's recovery is one external commit: one epoch more than alice had.
    assert_eq!(bob.epoch(&group).unwrap(), alice.epoch(&group).unwrap() + 1);
    alice.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    assert_eq!(alice.epoch(&group).unwrap(), bob.epoch(&group).unwrap(), "alice applied bob's external commit");
    assert_eq!(bob.epoch_check(&group).unwrap(), alice.epoch_check(&group).unwrap());
    alice.send_body(&group, "welcome back").await.unwrap();
    let got = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(got, GroupEvent::Message { content, .. } if content.body().as_deref() == Some("welcome back")));
}

/// slixmpp, installed by scripts/test into target/py (a venv).
fn slixmpp_python() -> std::path::PathBuf {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    assert!(python.exists(), "slixmpp is not installed: run scripts/test, which installs it from PyPI");
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_xmpp_library_pages_through_a_group_archive() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let group = alice.create().await.unwrap();
    for i in 0..23 {
        alice.send_body(&group, &format!("m{i}")).await.unwrap();
        expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    }
    let archive = Jid::from(group.clone());
    let ours = alice.archive_page(&archive, &[], 100, &Cursor::First, false).await.unwrap();
    let expected: Vec<String> = ours
        .stanzas
        .iter()
        .map(|m| m.get_child("stanza-id", "urn:xmpp:sid:0").unwrap().attr("id").unwrap().to_owned())
        .collect();
    let out = std::process::Command::new(slixmpp_python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/slixmpp_mam.py"))
        .args(["alice@example.org", "alice", "127.0.0.1", &prosody.c2s_port.to_string(), group.as_str(), "7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("23"), "{stdout}");
    let got: Vec<String> = lines.map(str::to_owned).collect();
    assert_eq!(got, expected, "slixmpp paged (7 per page) through every item, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_metadata_and_the_exact_shape_of_results() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let group = alice.create().await.unwrap();
    let archive = Jid::from(group.clone());
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap(); // commit, epoch 0
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    alice.send_body(&group, "a1").await.unwrap(); // epoch 1
    expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    bob.send_body(&group, "b1").await.unwrap(); // epoch 1
    expect(&mut alice, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    bob.update(&group).await.unwrap(); // commit, epoch 1
    expect(&mut alice, "bob's commit", |e| matches!(e, GroupEvent::Epoch { epoch: 2, .. })).await;
    alice.send_body(&group, "a2").await.unwrap(); // epoch 2
    expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;

    let all = alice.archive_page(&archive, &[], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(all.count, 5);
    let id = |m: &minidom::Element| m.get_child("stanza-id", "urn:xmpp:sid:0").unwrap().attr("id").unwrap().to_owned();
    let kinds = |p: &xmpp_mls::client::ArchivePage| {
        p.stanzas.iter().map(|m| m.get_child("mls", "urn:xmpp:mls:0").unwrap().attr("kind").unwrap().to_owned()).collect::<Vec<_>>()
    };
    // Each result: from group/<device>, groupchat, exactly one stanza-id.
    for m in &all.stanzas {
        assert!(m.attr("from").unwrap().starts_with(&format!("{group}/")));
        assert_eq!(m.attr("type"), Some("groupchat"));
        assert_eq!(m.children().filter(|c| c.is("stanza-id", "urn:xmpp:sid:0")).count(), 1);
    }
    let handshakes = alice.archive_page(&archive, &[("urn:xmpp:mls:0#kind", "handshake")], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(kinds(&handshakes), ["commit", "commit"]);
    let epoch1 = alice
        .archive_page(&archive, &[("urn:xmpp:mls:0#epoch-from", "1"), ("urn:xmpp:mls:0#epoch-to", "1")], 100, &Cursor::First, false)
        .await
        .unwrap();
    assert_eq!(kinds(&epoch1), ["application", "application", "commit"]);
    let bob_device = format!("{group}/{}", bob.device().id());
    let from_bob = alice.archive_page(&archive, &[("with", &bob_device)], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(kinds(&from_bob), ["application", "commit"]);
    let picked = alice.archive_page(&archive, &[("ids", &id(&all.stanzas[3]))], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(picked.stanzas.iter().map(id).collect::<Vec<_>>(), vec![id(&all.stanzas[3])]);
    let future = alice.archive_page(&archive, &[("start", "2099-01-01T00:00:00Z")], 100, &Cursor::First, false).await.unwrap();
    assert_eq!((future.count, future.complete), (0, true));
    let past = alice.archive_page(&archive, &[("end", "2000-01-01T00:00:00Z")], 100, &Cursor::First, false).await.unwrap();
    assert_eq!(past.count, 0);
    let unknown = alice.archive_page(&archive, &[("colour", "blue")], 100, &Cursor::First, false).await.err().unwrap();
    assert!(format!("{unknown}").contains("bad-request"), "{unknown}");

    // #extended metadata: first and last item.
    let meta = alice
        .session
        .iq(&archive, "get", minidom::Element::builder("metadata", "urn:xmpp:mam:2").build())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(meta.get_child("start", "urn:xmpp:mam:2").unwrap().attr("id"), Some(id(&all.stanzas[0]).as_str()));
    assert_eq!(meta.get_child("end", "urn:xmpp:mam:2").unwrap().attr("id"), Some(id(&all.stanzas[4]).as_str()));
}

/// `SELECT count(*)` (or another one-number query) on the component's store.
fn store_number(component: &Component, sql: &str, account: &str) -> i64 {
    component.db().one(sql, xmpp_mls::store_params![account])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_the_feed_acknowledges_without_catching_up() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = common::alice_and_bob(&prosody, &dir).await;
    alice.send_body(&group, "one").await.unwrap();
    alice.send_body(&group, "two").await.unwrap();
    let mut last = String::new();
    for _ in 0..2 {
        let GroupEvent::Message { stanza_id, .. } = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await
        else { unreachable!() };
        last = stanza_id;
    }
    // Handling what arrives (nothing more) for a while acknowledges it.
    assert_eq!(bob.next_event(Duration::from_secs(7)).await.unwrap(), None);
    let position = common::archive_pos(&component.db(), &last) & 0xffff_ffff;
    // The acknowledgement of his inbox has his account's octets as its scope.
    let sql = "SELECT max(seq) FROM acks WHERE account = ?1 AND scope <> ?2";
    let acked: i64 = component.db().one(sql, xmpp_mls::store_params!["bob@example.org", b"bob@example.org".as_slice()]);
    assert_eq!(acked, position);
    // His Welcome, handled live, is acknowledged too: his inbox is empty.
    assert_eq!(store_number(&component, "SELECT count(*) FROM inbox WHERE account = ?1", "bob@example.org"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_items_no_device_will_acknowledge_go_at_maintenance() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[history]\nretention_secs = 2\nmaintenance_secs = 1");
    let dir = tempfile::tempdir().unwrap();
    // alice's laptop acknowledges her inbox; her phone never does.
    let laptop = member(&prosody, &dir, "alice", "laptop").await;
    let phone = member(&prosody, &dir, "alice", "phone").await;
    let inbox = |c: &Component| store_number(c, "SELECT count(*) FROM inbox WHERE account = ?1", "alice@example.org");
    assert!(inbox(&component) >= 2, "the two publications are in alice's inbox");
    let mut laptop = laptop;
    laptop.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    assert!(inbox(&component) >= 2, "the phone holds them back");

    // The phone leaves her list: what the laptop acknowledged goes at the
    // next maintenance (the retraction's own event stays, unacknowledged).
    laptop.session.retract_device(&Jid::new(COMPONENT).unwrap(), phone.device().id()).await.unwrap();
    assert!(common::wait_until(Duration::from_secs(5), || inbox(&component) == 1), "{}", inbox(&component));

    // bob's only device leaves: nothing of his inbox outlives the retention.
    let bob = member(&prosody, &dir, "bob", "phone").await;
    bob.session.retract_device(&Jid::new(COMPONENT).unwrap(), bob.device().id()).await.unwrap();
    let bobs = |c: &Component| store_number(c, "SELECT count(*) FROM inbox WHERE account = ?1", "bob@example.org");
    assert!(bobs(&component) >= 1);
    assert!(common::wait_until(Duration::from_secs(8), || bobs(&component) == 0), "{}", bobs(&component));
}
