//! Groups end to end through Prosody: the Delivery Service and the client
//! group API together.

mod common;

use std::time::Duration;

use common::{alice_and_bob, bare, commits_per_epoch, expect, member, one_group, race_commits, reach, Component, Prosody};
use xmpp_mls::client::{GroupClient, GroupEvent};
use xmpp_mls::store::sql::{Column, Param};
use xmpp_mls::store_params;
use xmpp_parsers::jid::BareJid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_create_add_and_talk() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;

    let group = alice.create().await.unwrap();
    let accepted = alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    assert_eq!(accepted.epoch, 1);
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { group: g } if *g == group)).await;

    let id = alice.send_body(&group, "hello bob").await.unwrap();
    let got = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    let GroupEvent::Message { account, content, stanza_id, .. } = got else { unreachable!() };
    assert_eq!(account, bare("alice@example.org"));
    assert_eq!(content.body().as_deref(), Some("hello bob"));
    let echo = expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    assert_eq!(echo, GroupEvent::Delivered { group: group.clone(), id, stanza_id });

    // The group now exists for discovery, as xep/ describes.
    let query = minidom::Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build();
    let info = alice.session.iq(&group.clone().into(), "get", query).await.unwrap().unwrap();
    let identity = info.get_child("identity", xmpp_parsers::ns::DISCO_INFO).unwrap();
    assert_eq!((identity.attr("category"), identity.attr("type")), (Some("conference"), Some("mls")));
    drop(component);
}

/// Collects `n` events matching `pred`.
async fn collect(client: &mut GroupClient, n: usize, pred: impl Fn(&GroupEvent) -> bool) -> Vec<GroupEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(expect(client, "event", &pred).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accounts_five_devices_every_message_reaches_every_device() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut devices = vec![
        member(&prosody, &dir, "alice", "laptop").await,
        member(&prosody, &dir, "alice", "phone").await,
        member(&prosody, &dir, "bob", "phone").await,
        member(&prosody, &dir, "bob", "tablet").await,
        member(&prosody, &dir, "carol", "pc").await,
    ];
    let group = devices[0].create().await.unwrap();
    let everyone: Vec<BareJid> = ["alice", "bob", "carol"].iter().map(|u| bare(&format!("{u}@example.org"))).collect();
    devices[0].add(&group, &everyone).await.unwrap();
    for d in devices.iter_mut().skip(1) {
        expect(d, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    }
    assert_eq!(devices[0].members(&group).await.unwrap().len(), 5);

    // Everyone speaks once; every other device gets it, the sender its echo.
    let mut sent = Vec::new();
    for (i, d) in devices.iter_mut().enumerate() {
        sent.push((i, d.send_body(&group, &format!("hello from {i}")).await.unwrap()));
    }
    let mut stanza_ids: Vec<std::collections::HashMap<String, String>> = Vec::new();
    for (i, d) in devices.iter_mut().enumerate() {
        let mut seen = std::collections::HashMap::new();
        let events = collect(d, 5, |e| matches!(e, GroupEvent::Message { .. } | GroupEvent::Delivered { .. })).await;
        for e in events {
            match e {
                GroupEvent::Message { content, stanza_id, .. } => {
                    let body = content.body().unwrap();
                    assert_ne!(body, format!("hello from {i}"), "a device decrypted its own message");
                    seen.insert(body, stanza_id);
                }
                GroupEvent::Delivered { stanza_id, .. } => {
                    seen.insert(format!("hello from {i}"), stanza_id);
                }
                _ => unreachable!(),
            }
        }
        assert_eq!(seen.len(), 5, "device {i} saw {seen:?}");
        stanza_ids.push(seen);
    }
    // One stanza id per message, the same on every device (echo included).
    for body in (0..5).map(|i| format!("hello from {i}")) {
        let ids: std::collections::HashSet<_> = stanza_ids.iter().map(|m| m[&body].clone()).collect();
        assert_eq!(ids.len(), 1, "{body}: {ids:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_one_winner_per_epoch_and_everyone_converges() {
    const DEVICES: usize = 10;
    const ROUNDS: usize = 50;
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut devices, group) = one_group(&prosody, &dir, DEVICES).await;
    let commits = race_commits(&mut devices, &group, ROUNDS).await;
    let per_epoch = commits_per_epoch(&component.db());
    assert_eq!(per_epoch.len(), commits, "one accepted commit per epoch");
    assert!(per_epoch.iter().all(|(_, n)| *n == 1), "two commits won one epoch: {per_epoch:?}");
}

fn error_of(r: Result<Option<minidom::Element>, xmpp_mls::client::ClientError>) -> xmpp_parsers::stanza_error::StanzaError {
    match r {
        Err(xmpp_mls::client::ClientError::Stanza(e)) => *e,
        other => panic!("expected a stanza error, got {other:?}"),
    }
}

fn invalid_reason(e: &xmpp_parsers::stanza_error::StanzaError) -> String {
    let app = e.other.as_ref().expect("an application condition");
    assert!(app.is("invalid-message", xmpp_mls::protocol::NS_ERRORS), "{app:?}");
    app.attr("reason").unwrap().to_owned()
}

/// `group_info` (an MLSMessage) with its external_pub extension (type 4)
/// removed from the GroupInfo's extensions, the rest untouched.
fn without_external_pub(group_info: &[u8]) -> Vec<u8> {
    use tls_codec::{Deserialize, Serialize, VLBytes};
    let skip_vl = |rest: &mut &[u8]| VLBytes::tls_deserialize(rest).unwrap();
    // MLSMessage header (4), GroupContext: version, suite (4), group_id,
    // epoch (8), tree_hash, confirmed_transcript_hash, extensions.
    let mut rest = &group_info[8..];
    skip_vl(&mut rest);
    rest = &rest[8..];
    for _ in 0..3 {
        skip_vl(&mut rest);
    }
    let head = &group_info[..group_info.len() - rest.len()];
    let extensions = skip_vl(&mut rest);
    let mut list = extensions.as_slice();
    let mut kept = Vec::new();
    while !list.is_empty() {
        let kind = u16::from_be_bytes([list[0], list[1]]);
        let start = list;
        list = &list[2..];
        skip_vl(&mut list);
        if kind != 4 {
            kept.extend_from_slice(&start[..start.len() - list.len()]);
        }
    }
    assert!(kept.len() < extensions.as_slice().len(), "the GroupInfo had no external_pub");
    let stripped = [head, &VLBytes::new(kept).tls_serialize_detached().unwrap(), rest].concat();
    // Still a well-formed GroupInfo, with its ratchet tree.
    let openmls::prelude::MlsMessageBodyIn::GroupInfo(gi) =
        openmls::prelude::MlsMessageIn::tls_deserialize_exact(&stripped).unwrap().extract()
    else {
        panic!("not a GroupInfo")
    };
    assert!(gi.extensions().ratchet_tree().is_some() && gi.extensions().external_pub().is_none());
    stripped
}

/// A KeyPackage (openmls) built by a test signer.
fn key_package(signer: &common::mls::TestSigner, identity: Option<&str>) -> openmls::prelude::KeyPackage {
    use openmls::prelude::{KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, ProtocolVersion};
    use openmls_traits::OpenMlsProvider;
    use tls_codec::Deserialize;
    let bytes = signer.kp(common::mls::KpOptions { identity: identity.map(str::to_owned), ..Default::default() });
    let MlsMessageBodyIn::KeyPackage(kp) = MlsMessageIn::tls_deserialize_exact(&bytes).unwrap().extract() else {
        panic!()
    };
    let kp: KeyPackageIn = kp;
    kp.validate(signer.provider.crypto(), ProtocolVersion::Mls10).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commits_are_refused_and_the_group_carries_on() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let _dave = member(&prosody, &dir, "dave", "pc").await;
    let group = alice.create().await.unwrap();
    let other_group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;

    // A key that is no listed device, under dave's and under bob's name,
    // and a credential that names no account.
    let stranger = common::mls::TestSigner::new("dave@example.org");
    let cases = [
        (key_package(&stranger, None), "unknown-signature-key"),
        (key_package(&stranger, Some("xmpp:bob@example.org")), "unknown-signature-key"),
        (key_package(&stranger, Some("mallory")), "foreign-identity"),
    ];
    let mut foreign_info = Vec::new();
    for (kp, reason) in cases {
        let bundle = alice.stage_add(&group, vec![kp]).await.unwrap();
        foreign_info = bundle.group_info.clone();
        let e = error_of(alice.submit(&group, &bundle).await);
        assert_eq!(e.defined_condition, xmpp_parsers::stanza_error::DefinedCondition::NotAcceptable);
        assert_eq!(invalid_reason(&e), reason);
        alice.discard_pending(&group).unwrap();
    }

    // A valid add of dave, tampered with: one signature byte flipped...
    let kps = alice.key_packages_for(&bare("dave@example.org"), vec![]).await.unwrap();
    let mut bundle = alice.stage_add(&group, kps).await.unwrap();
    alice.discard_pending(&group).unwrap();
    let mut tampered = bundle.clone();
    let at = tampered.commit.len() - 100; // inside the signature (64 bytes before two 32-byte MACs)
    tampered.commit[at] ^= 1;
    assert_eq!(invalid_reason(&error_of(alice.submit(&group, &tampered).await)), "bad-signature");
    // ...and the untouched bundle sent to another group.
    assert_eq!(invalid_reason(&error_of(alice.submit(&other_group, &bundle).await)), "wrong-group");
    // With the GroupInfo of another commit's epoch, and with its own
    // GroupInfo's signature (its last bytes) broken.
    let mismatched = xmpp_mls::protocol::groups::CommitBundle { group_info: foreign_info, ..bundle.clone() };
    assert_eq!(invalid_reason(&error_of(alice.submit(&group, &mismatched).await)), "group-info-mismatch");
    let mut unsigned = bundle.clone();
    *unsigned.group_info.last_mut().unwrap() ^= 1;
    assert_eq!(invalid_reason(&error_of(alice.submit(&group, &unsigned).await)), "group-info-mismatch");
    // Without external_pub: refused as it is decoded, before its (now
    // broken) signature is looked at.
    let no_external_pub =
        xmpp_mls::protocol::groups::CommitBundle { group_info: without_external_pub(&bundle.group_info), ..bundle.clone() };
    assert_eq!(invalid_reason(&error_of(alice.submit(&group, &no_external_pub).await)), "malformed");
    // With a second Welcome: a bundle carries one for all joiners.
    let mut two_welcomes = bundle.to_element();
    two_welcomes.append_child(two_welcomes.get_child("welcome", xmpp_mls::protocol::NS).unwrap().clone());
    let e = error_of(alice.session.iq(&group.clone().into(), "set", two_welcomes).await);
    assert_eq!(e.defined_condition, xmpp_parsers::stanza_error::DefinedCondition::BadRequest);
    // Without its Welcome.
    bundle.welcome = None;
    assert_eq!(invalid_reason(&error_of(alice.submit(&group, &bundle).await)), "missing-welcome");

    // The group carries on at the same epoch.
    assert_eq!(alice.epoch(&group).unwrap(), 1);
    alice.send_body(&group, "still here").await.unwrap();
    let got = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(got, GroupEvent::Message { content, .. } if content.body().as_deref() == Some("still here")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_removed_devices_stay_out() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut tablet = member(&prosody, &dir, "bob", "tablet").await;
    let mut dave = member(&prosody, &dir, "dave", "pc").await;
    let mallory = prosody.client("mallory", "pc").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    expect(&mut tablet, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;

    // mallory: no device in the group, not on the feed.
    let msg = minidom::Element::builder("message", "jabber:client")
        .attr(xmpp_mls::protocol::n("to"), group.as_str())
        .attr(xmpp_mls::protocol::n("type"), "groupchat")
        .attr(xmpp_mls::protocol::n("id"), "m-1")
        .append(xmpp_mls::protocol::groups::GroupMessage::new(vec![0, 1, 0, 2]).to_element())
        .build();
    let mallory = mallory;
    mallory.send(msg).await.unwrap();
    let bounce = mallory.next_event_within(Duration::from_secs(10)).await.expect("an error back");
    assert_eq!(bounce.attr("type"), Some("error"));
    let presence = minidom::Element::builder("presence", "jabber:client")
        .attr(xmpp_mls::protocol::n("to"), format!("{group}/pc-0001"))
        .build();
    mallory.send(presence).await.unwrap();
    let refused = mallory.next_event_within(Duration::from_secs(10)).await.expect("a presence error");
    assert_eq!(refused.attr("type"), Some("error"));
    assert!(refused.get_child("error", "jabber:client").unwrap().has_child("not-a-member", xmpp_mls::protocol::NS_ERRORS));

    // bob's tablet is removed: told at once, and cannot come back.
    alice.remove_device(&group, &bare("bob@example.org"), tablet.device().id()).await.unwrap();
    expect(&mut tablet, "removal", |e| matches!(e, GroupEvent::Removed { .. })).await;
    assert!(tablet.join_feed(&group).await.is_err(), "a removed device rejoined the feed");
    alice.send_body(&group, "after the removal").await.unwrap();
    expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;

    // The Welcome of a losing commit never reaches anyone: bob stages an
    // add of dave, alice's commit wins the epoch first.
    let kps = bob.key_packages_for(&bare("dave@example.org"), vec![]).await.unwrap();
    let losing = bob.stage_add(&group, kps).await.unwrap();
    alice.update(&group).await.unwrap();
    let e = error_of(bob.submit(&group, &losing).await);
    assert!(e.other.as_ref().is_some_and(|a| a.is("wrong-epoch", xmpp_mls::protocol::NS_ERRORS)));
    bob.discard_pending(&group).unwrap();
    let welcome = dave.next_event(Duration::from_secs(2)).await.unwrap();
    assert!(!matches!(welcome, Some(GroupEvent::Joined { .. })), "the losing Welcome was delivered");
    let sql = "SELECT count(*) FROM inbox WHERE account = 'dave@example.org' AND payload LIKE '%welcome%'";
    let kept: i64 = component.db().one(sql, &[]);
    assert_eq!(kept, 0, "the losing Welcome reached dave's inbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_leaving_and_a_new_device_by_external_commit() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut carol = member(&prosody, &dir, "carol", "pc").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org"), bare("carol@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    expect(&mut carol, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;

    // bob proposes a self-update; alice commits it.
    bob.propose_update(&group).await.unwrap();
    expect(&mut alice, "proposal", |e| matches!(e, GroupEvent::Proposed { .. })).await;
    let accepted = alice.commit_pending(&group).await.unwrap();
    assert_eq!(accepted.epoch, 2);
    reach(&mut bob, &group, 2).await;

    // carol leaves; alice's next message commits the removal first.
    carol.leave(&group).await.unwrap();
    expect(&mut alice, "proposal", |e| matches!(e, GroupEvent::Proposed { .. })).await;
    alice.send_body(&group, "bye carol").await.unwrap();
    expect(&mut carol, "removal", |e| matches!(e, GroupEvent::Removed { .. })).await;
    let members = alice.members(&group).await.unwrap();
    assert!(members.iter().all(|(a, _)| *a != bare("carol@example.org")), "{members:?}");

    // alice's new phone joins by external commit and hears bob.
    let mut phone = member(&prosody, &dir, "alice", "phone").await;
    phone.join_external(&group).await.unwrap();
    reach(&mut bob, &group, phone.epoch(&group).unwrap()).await;
    bob.send_body(&group, "hi alice's phone").await.unwrap();
    let got = expect(&mut phone, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    let GroupEvent::Message { account, content, .. } = got else { unreachable!() };
    assert_eq!((account, content.body()), (bare("bob@example.org"), Some("hi alice's phone".to_owned())));
    reach(&mut alice, &group, phone.epoch(&group).unwrap()).await;
    assert_eq!(alice.epoch_check(&group).unwrap(), phone.epoch_check(&group).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_is_reported_and_nothing_is_sent_into_it() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;

    // A commit whose published epoch check is not what its epoch yields:
    // what members see when they do not share the epoch (a partition).
    let mut bundle = alice.stage_add(&group, Vec::new()).await.unwrap();
    bundle.epoch_check = "00".repeat(16);
    alice.submit(&group, &bundle).await.unwrap();
    let fork = expect(&mut bob, "fork", |e| matches!(e, GroupEvent::Fork { .. })).await;
    assert_eq!(fork, GroupEvent::Fork { group: group.clone(), epoch: 2 });
    let refused = bob.send_body(&group, "into the fork?").await;
    assert!(matches!(refused, Err(xmpp_mls::client::GroupError::Forked(_))), "{refused:?}");
}

/// bob's phone misses a Commit live (it was off the feed); the next message,
/// of the new epoch, makes it read the gap from the archive, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_missed_a_commit_live_reads_the_gap_from_the_archive() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;

    let off = format!("<presence xmlns='jabber:client' type='unavailable' to='{group}/{}'/>", bob.device().id());
    bob.session.send(off.parse().unwrap()).await.unwrap();
    while bob.next_event(Duration::from_millis(300)).await.unwrap().is_some() {}
    alice.update(&group).await.unwrap();
    bob.join_feed(&group).await.unwrap();
    alice.send_body(&group, "after the gap").await.unwrap();

    let got = expect(&mut bob, "the message after the gap", |e| matches!(e, GroupEvent::Message { .. })).await;
    let GroupEvent::Message { content, .. } = got else { unreachable!() };
    assert_eq!(content.body().as_deref(), Some("after the gap"));
    assert_eq!((bob.epoch(&group).unwrap(), bob.epoch_check(&group).unwrap()), (2, alice.epoch_check(&group).unwrap()));
}

/// Bodies of the messages from others the device decrypts (up to `n`, until
/// none comes for 10 s), in the order it decrypted them.
async fn bodies_in_order(client: &mut GroupClient, n: usize) -> Vec<String> {
    let mut bodies = Vec::new();
    while bodies.len() < n {
        match client.next_event(Duration::from_secs(10)).await.unwrap() {
            Some(GroupEvent::Message { content, .. }) => bodies.push(content.body().unwrap()),
            Some(_) => continue,
            None => break,
        }
    }
    bodies
}

/// A device sends bursts without waiting for its echoes (xep/ §Order):
/// every other device decrypts every message, in the sender's order, and
/// the archive holds them in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_keep_the_senders_order_for_every_device() {
    const BURSTS: usize = 3;
    const BURST: usize = 40;
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[limits]\naccount_rate = 1000\naccount_burst = 1000");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut phone = member(&prosody, &dir, "alice", "phone").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("alice@example.org"), bare("bob@example.org")]).await.unwrap();
    for d in [&mut phone, &mut bob] {
        expect(d, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    }

    let mut sent = Vec::new();
    let mut ids = Vec::new();
    for b in 0..BURSTS {
        for i in 0..BURST {
            let body = format!("burst {b} message {i}");
            ids.push(alice.send_body(&group, &body).await.unwrap());
            sent.push(body);
        }
    }
    for d in [&mut phone, &mut bob] {
        assert_eq!(bodies_in_order(d, sent.len()).await, sent);
    }
    let echoes = collect(&mut alice, sent.len(), |e| matches!(e, GroupEvent::Delivered { .. })).await;
    let echoed: Vec<String> = echoes
        .into_iter()
        .map(|e| match e {
            GroupEvent::Delivered { id, .. } => id,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(echoed, ids, "the echoes come back in the sender's order");
    let archived: i64 = component.db().one("SELECT count(*) FROM archive WHERE kind = 0", &[]);
    assert_eq!(archived as usize, sent.len(), "each message archived once");
}

/// One column of the component's store, for the row `key` names.
fn stored<T: Column + Send>(component: &Component, sql: &str, key: impl Param) -> T {
    component.db().one(sql, store_params![key])
}

/// A resend (xep/ §Resends) of an archived application message gets its
/// echo again with the original stanza-id and position (the copies to
/// other devices, which have it, are dropped by its position); a resent
/// Commit that won gets its original acceptance, not wrong-epoch, and a
/// resent Proposal its original acceptance. Nothing
/// is archived again: the store is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_is_answered_as_the_original_and_archived_once() {
    use xmpp_mls::protocol::groups::{Accepted, CommitBundle, GroupMessage, Kind, Proposal};
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;

    let id = alice.send_body(&group, "once").await.unwrap();
    let echo = expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    let GroupEvent::Delivered { stanza_id, .. } = echo else { unreachable!() };
    let got = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(got, GroupEvent::Message { stanza_id: ref s, ref content, .. } if *s == stanza_id && content.body().as_deref() == Some("once")));
    assert_eq!(alice.unechoed(), 0, "{id} was echoed");

    let before = component.db().dump();
    let message: Vec<u8> = stored(&component, "SELECT message FROM archive WHERE pos = ?1", common::archive_pos(&component.db(), &stanza_id));
    let resend = minidom::Element::builder("message", "jabber:client")
        .attr("to".try_into().unwrap(), group.as_str())
        .attr("type".try_into().unwrap(), "groupchat")
        .attr("id".try_into().unwrap(), "resend-1")
        .append(GroupMessage::new(message.clone()).to_element())
        .build();
    alice.session.send(resend).await.unwrap();
    let again = alice.session.next_event_within(Duration::from_secs(20)).await.expect("the echo of the resend");
    // Its original position: after the Commit that added bob (1).
    let payload =
        GroupMessage { kind: Some(Kind::Application), epoch: Some(1), position: Some(2), ..GroupMessage::new(message) };
    let expected = minidom::Element::builder("message", "jabber:client")
        .attr("from".try_into().unwrap(), format!("{group}/{}", alice.device().id()))
        .attr("to".try_into().unwrap(), alice.session.jid().to_string())
        .attr("type".try_into().unwrap(), "groupchat")
        .attr("id".try_into().unwrap(), "resend-1")
        .append(payload.to_element())
        .append(xmpp_mls::protocol::content::encryption_hint())
        .append(
            minidom::Element::builder("stanza-id", "urn:xmpp:sid:0")
                .attr("by".try_into().unwrap(), group.as_str())
                .attr("id".try_into().unwrap(), stanza_id.as_str())
                .build(),
        )
        .build();
    assert_eq!(common::as_received(&again), expected);
    assert_eq!(component.db().dump(), before, "nothing archived again");
    // bob applies the message once: his next message is the next one.
    alice.send_body(&group, "next").await.unwrap();
    let next = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(next, GroupEvent::Message { ref content, .. } if content.body().as_deref() == Some("next")), "{next:?}");

    // A Commit resent after it won: its original acceptance.
    let accepted = bob.update(&group).await.unwrap();
    expect(&mut alice, "commit", |e| matches!(e, GroupEvent::Epoch { epoch: 2, .. })).await;
    let before = component.db().dump();
    let bundle = CommitBundle {
        commit: stored(&component, "SELECT message FROM archive WHERE pos = ?1", common::archive_pos(&component.db(), &accepted.stanza_id)),
        parts: None,
        welcome: None,
        group_info: stored(&component, "SELECT group_info FROM groups WHERE last_commit = ?1", &accepted.stanza_id),
        epoch_check: stored(&component, "SELECT epoch_check FROM archive WHERE pos = ?1", common::archive_pos(&component.db(), &accepted.stanza_id)),
    };
    let reply = bob.submit(&group, &bundle).await.unwrap().unwrap();
    assert_eq!(Accepted::parse(&reply).unwrap(), accepted.clone());
    assert_eq!(component.db().dump(), before, "nothing archived again");
    // From another account the same bytes are no resend: refused as stale.
    let error = alice.submit(&group, &bundle).await.unwrap_err();
    assert!(error.to_string().contains("wrong-epoch"), "{error}");
    assert_eq!(component.db().dump(), before);

    // A resent Proposal: its original acceptance.
    let proposed = alice.propose_update(&group).await.unwrap();
    let before = component.db().dump();
    let message = stored(&component, "SELECT message FROM archive WHERE pos = ?1", common::archive_pos(&component.db(), &proposed.stanza_id));
    let reply = alice.session.iq(&group.clone().into(), "set", Proposal { message }.to_element()).await.unwrap();
    assert_eq!(Accepted::parse(&reply.unwrap()).unwrap(), proposed);
    assert_eq!(component.db().dump(), before, "nothing archived again");
    assert_eq!(component.count_in_log("component connected"), 1, "{}", component.log());
}

/// A device that went away before the echo of its message arrived keeps
/// the message in its storage and resends it once back (xep/ §Resends):
/// the service had archived it, so the echo carries the original stanza-id
/// and the message is archived and delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_unechoed_at_a_disconnect_is_resent_after_and_archived_once() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;
    let id = alice.send_body(&group, "sent before going away").await.unwrap();
    let got = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    let GroupEvent::Message { stanza_id, .. } = got else { unreachable!() };
    drop(alice); // its echo is never read

    let mut alice = common::reconnect(&prosody, &dir, "alice", "laptop").await;
    assert_eq!(alice.unechoed(), 1);
    alice.join_all().await.unwrap();
    assert_eq!(alice.resend().await.unwrap(), 1);
    let echo = expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    assert_eq!(echo, GroupEvent::Delivered { group: group.clone(), id, stanza_id });
    assert_eq!(alice.unechoed(), 0);
    let archived: i64 = component.db().one("SELECT count(*) FROM archive WHERE kind = 0", &[]);
    assert_eq!(archived, 1);
    alice.send_body(&group, "next").await.unwrap();
    let next = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(next, GroupEvent::Message { ref content, .. } if content.body().as_deref() == Some("next")), "{next:?}");
}
