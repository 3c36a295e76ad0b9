//! The live feed and group membership against hostile members, through a
//! real server: a device ID of another account, retraction and expiry,
//! leaving a group, the group quota, external Commits that remove others,
//! and unavailable presence to nothing.

mod common;

use std::time::Duration;

use common::{alice_and_bob, bare, expect, member, Component, Prosody, COMPONENT};
use minidom::Element;
use openmls::group::{MlsGroup, MlsGroupJoinConfig, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY};
use openmls::prelude::{BasicCredential, CredentialWithKey, MlsMessageBodyIn, MlsMessageIn};
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;
use tls_codec::{Deserialize, Serialize};
use xmpp_mls::client::{GroupClient, GroupEvent, Session};
use xmpp_mls::protocol::address::Address;
use xmpp_mls::protocol::groups::{epoch_check, parse_group_info, CommitBundle, GroupMessage};
use xmpp_mls::protocol::{n, NS, NS_ERRORS};
use xmpp_mls::store_params;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

const CLIENT: &str = "jabber:client";

fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

fn group_id(group: &BareJid) -> Vec<u8> {
    match Address::parse(&Jid::from(group.clone())) {
        Ok(Address::Group(id)) => id,
        other => panic!("{other:?}"),
    }
}

fn archived(component: &Component, group: &BareJid) -> i64 {
    component.db().one(&format!("SELECT count(*) FROM archive WHERE {}", common::GROUP_ROWS), store_params![group_id(group)])
}

/// (account, full JID) of every feed entry of `device` in `group`.
fn feed_rows(component: &Component, group: &BareJid, device: &str) -> Vec<(String, String)> {
    let sql = "SELECT account, full_jid FROM feed WHERE group_id = ?1 AND device_id = ?2 ORDER BY account";
    let id = group_id(group);
    component.db().with(|c| c.query_map(sql, store_params![id, device], |r| Ok((r.get(0)?, r.get(1)?))))
}

/// The next stanza on `session` that `pred` accepts, skipping others.
async fn next_matching(session: &mut Session, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match session.next_event_within(left).await {
            Some(s) if pred(&s) => return s,
            Some(_) => continue,
            None => panic!("no {what} in time"),
        }
    }
}

fn presence_to(to: &str, type_: Option<&str>) -> Element {
    let mut b = Element::builder("presence", CLIENT).attr(n("to"), to);
    if let Some(t) = type_ {
        b = b.attr(n("type"), t);
    }
    b.build()
}

/// Sends available presence to `group/<device>` and returns the answer.
async fn join_as(session: &mut Session, group: &BareJid, device: &str) -> Element {
    let to = format!("{group}/{device}");
    session.send(presence_to(&to, None)).await.unwrap();
    next_matching(session, "the feed's answer", |s| s.name() == "presence" && s.attr("from") == Some(to.as_str())).await
}

/// Waits for unavailable presence from `group/<device>`.
async fn expect_unavailable(session: &mut Session, group: &BareJid, device: &str) {
    let from = format!("{group}/{device}");
    next_matching(session, "unavailable presence", |s| {
        s.name() == "presence" && s.attr("from") == Some(from.as_str()) && s.attr("type") == Some("unavailable")
    })
    .await;
}

/// The error of an error stanza: type, defined condition, application condition.
fn error_of(stanza: &Element) -> (ErrorType, DefinedCondition, Option<String>) {
    assert_eq!(stanza.attr("type"), Some("error"), "{}", String::from(stanza));
    let e = StanzaError::try_from(stanza.get_child("error", CLIENT).expect("an <error/>").clone()).unwrap();
    let app = e.other.as_ref().map(|o| {
        assert_eq!(o.ns(), NS_ERRORS);
        match o.attr("reason") {
            Some(r) => format!("{}:{r}", o.name()),
            None => o.name().to_owned(),
        }
    });
    (e.type_, e.defined_condition, app)
}

fn not_joined() -> (ErrorType, DefinedCondition, Option<String>) {
    (ErrorType::Modify, DefinedCondition::NotAcceptable, Some("not-joined".into()))
}

fn not_a_member() -> (ErrorType, DefinedCondition, Option<String>) {
    (ErrorType::Auth, DefinedCondition::Forbidden, Some("not-a-member".into()))
}

fn too_many_groups() -> (ErrorType, DefinedCondition, Option<String>) {
    (ErrorType::Modify, DefinedCondition::PolicyViolation, Some("too-many-groups".into()))
}

/// Sends `message` (an MLSMessage) as a groupchat to `group` and returns
/// the answer carrying its id (an echo or an error).
async fn post(session: &mut Session, group: &BareJid, message: Vec<u8>) -> Element {
    let id = session.next_id();
    let stanza = Element::builder("message", CLIENT)
        .attr(n("to"), group.as_str())
        .attr(n("type"), "groupchat")
        .attr(n("id"), id.as_str())
        .append(GroupMessage::new(message).to_element())
        .build();
    session.send(stanza).await.unwrap();
    next_matching(session, "the answer to a post", |s| s.name() == "message" && s.attr("id") == Some(id.as_str())).await
}

/// `message` from `session` to the group is refused with not-joined, and
/// nothing is archived or changed in the store.
async fn assert_post_refused(session: &mut Session, component: &Component, group: &BareJid, message: Vec<u8>) {
    let before = (archived(component, group), component.db().dump());
    let refused = post(session, group, message).await;
    assert_eq!(error_of(&refused), not_joined());
    assert_eq!((archived(component, group), component.db().dump()), before);
}

/// The group's latest archived application message.
fn last_application(component: &Component, group: &BareJid) -> Vec<u8> {
    let sql = format!("SELECT message FROM archive WHERE {} AND kind = 0 ORDER BY pos DESC LIMIT 1", common::GROUP_ROWS);
    component.db().one(&sql, store_params![group_id(group)])
}

async fn message_from(client: &mut GroupClient, body: &str) {
    expect(client, "the message", |e| matches!(e, GroupEvent::Message { content, .. } if content.body().as_deref() == Some(body))).await;
}

/// alice, bob and mallory in alice's group, every Welcome applied.
async fn three(
    prosody: &Prosody,
    dir: &tempfile::TempDir,
) -> (GroupClient, GroupClient, GroupClient, BareJid) {
    let (mut alice, bob, group) = alice_and_bob(prosody, dir).await;
    let mut mallory = member(prosody, dir, "mallory", "pc").await;
    alice.add(&group, &[bare("mallory@example.org")]).await.unwrap();
    expect(&mut mallory, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    (alice, bob, mallory, group)
}

/// Finding 3: mallory publishes bob's device ID as hers and joins the feed
/// with it. bob keeps his place and his messages; once a Commit removes
/// mallory, she is off the feed and her posts are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_device_id_takes_over_nothing() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mut mallory, group) = three(&prosody, &dir).await;
    let bob_device = bob.device().id().to_owned();
    let mut item = mallory.device().item(None);
    mallory.session.retract_device(&service(), &item.id).await.unwrap();
    item.id = bob_device.clone();
    mallory.session.publish_device(&service(), &item).await.unwrap();
    let joined = join_as(&mut mallory.session, &group, &bob_device).await;
    assert_eq!(joined.attr("type"), None, "{}", String::from(&joined));
    let (bob_jid, mallory_jid) = (bob.session.jid().to_string(), mallory.session.jid().to_string());
    assert_eq!(
        feed_rows(&component, &group, &bob_device),
        [("bob@example.org".to_owned(), bob_jid.clone()), ("mallory@example.org".to_owned(), mallory_jid.clone())]
    );
    alice.send_body(&group, "to bob and mallory").await.unwrap();
    message_from(&mut bob, "to bob and mallory").await;

    alice.remove_account(&group, &bare("mallory@example.org")).await.unwrap();
    expect_unavailable(&mut mallory.session, &group, &bob_device).await;
    assert_eq!(feed_rows(&component, &group, &bob_device), [("bob@example.org".to_owned(), bob_jid)]);
    assert_post_refused(&mut mallory.session, &component, &group, last_application(&component, &group)).await;
    alice.send_body(&group, "bob only").await.unwrap();
    message_from(&mut bob, "bob only").await;
    component.assert_never_reconnected();
}

/// Finding 4: a retracted device leaves every feed at once, with
/// unavailable presence, and its posts are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retracted_device_leaves_the_feed_at_once() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;
    let device = bob.device().id().to_owned();
    let message = last_application_or_own(&mut alice, &component, &group).await;
    bob.session.retract_device(&service(), &device).await.unwrap();
    expect_unavailable(&mut bob.session, &group, &device).await;
    assert_eq!(feed_rows(&component, &group, &device), []);
    assert_post_refused(&mut bob.session, &component, &group, message).await;
    let joined = join_as(&mut bob.session, &group, &device).await;
    assert_eq!(error_of(&joined), not_a_member());
    alice.send_body(&group, "still here").await.unwrap();
    expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    component.assert_never_reconnected();
}

/// Finding 4: a device that expires leaves every feed at the next
/// maintenance, with unavailable presence, and its posts are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_leaves_the_feed() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[history]\nmaintenance_secs = 1");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;
    let device = bob.device().id().to_owned();
    let message = last_application_or_own(&mut alice, &component, &group).await;
    expire_in(&mut bob, 3).await;
    expect_unavailable(&mut bob.session, &group, &device).await;
    assert_eq!(feed_rows(&component, &group, &device), []);
    assert_post_refused(&mut bob.session, &component, &group, message).await;
    component.assert_never_reconnected();
}

/// Finding 4: a device that has expired is refused at once, before the
/// maintenance (60 s by default) takes it off the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_cannot_post_before_maintenance() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;
    let device = bob.device().id().to_owned();
    let message = last_application_or_own(&mut alice, &component, &group).await;
    expire_in(&mut bob, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(feed_rows(&component, &group, &device).len(), 1, "still on the feed: no maintenance yet");
    assert_post_refused(&mut bob.session, &component, &group, message).await;
    component.assert_never_reconnected();
}

/// Publishes `client`'s device again, expiring `secs` seconds from now.
async fn expire_in(client: &mut GroupClient, secs: i64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    client.session.publish_device(&service(), &client.device().item(Some(now + secs))).await.unwrap();
}

/// An application message of the group, sent by alice.
async fn last_application_or_own(alice: &mut GroupClient, component: &Component, group: &BareJid) -> Vec<u8> {
    let id = alice.send_body(group, "an application message").await.unwrap();
    expect(alice, "echo", |e| matches!(e, GroupEvent::Delivered { id: i, .. } if *i == id)).await;
    last_application(component, group)
}

/// Finding 5: mallory adds bob to as many groups as bob may join; they do
/// not count for bob until he joins them, he can still create his own,
/// the limit holds for his own joins, and he can leave a group unilaterally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_others_add_an_account_to_do_not_fill_its_quota() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[groups]\nmax_groups_per_account = 2");
    let dir = tempfile::tempdir().unwrap();
    let mut mallory = member(&prosody, &dir, "mallory", "pc").await;
    // bob's client is not reading: the Welcomes wait, nothing joins for him.
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut groups = Vec::new();
    for _ in 0..2 {
        let group = mallory.create().await.unwrap();
        mallory.add(&group, &[bare("bob@example.org")]).await.unwrap();
        groups.push(group);
    }
    let bob_groups: i64 = component.db().one("SELECT count(DISTINCT group_id) FROM members WHERE account = 'bob@example.org'", &[]);
    assert_eq!(bob_groups, 2);
    bob.create().await.expect("bob creates a group of his own");
    let device = bob.device().id().to_owned();
    let joined = join_as(&mut bob.session, &groups[0], &device).await;
    assert_eq!(joined.attr("type"), None, "{}", String::from(&joined));
    let before = component.db().dump();
    let refused = join_as(&mut bob.session, &groups[1], &device).await;
    assert_eq!(error_of(&refused), too_many_groups());
    assert_eq!(component.db().dump(), before);

    let leave = Element::builder("leave", NS).build();
    bob.session.iq(&Jid::from(groups[0].clone()), "set", leave.clone()).await.expect("bob leaves");
    expect_unavailable(&mut bob.session, &groups[0], &device).await;
    let joined = join_as(&mut bob.session, &groups[1], &device).await;
    assert_eq!(joined.attr("type"), None, "the group left no longer counts: {}", String::from(&joined));
    let refused = join_as(&mut bob.session, &groups[0], &device).await;
    assert_eq!(error_of(&refused), not_a_member());
    let again = bob.session.iq(&Jid::from(groups[0].clone()), "set", leave).await;
    assert!(again.is_ok(), "leaving again is harmless: {again:?}");

    // mallory's message to the group bob left is not delivered to him; the
    // one to the other group is, after it.
    mallory.send_body(&groups[0], "to the left group").await.unwrap();
    expect(&mut mallory, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    mallory.send_body(&groups[1], "to the other group").await.unwrap();
    let g0 = groups[0].to_string();
    let first = next_matching(&mut bob.session, "a group message", |s| s.name() == "message" && s.attr("type") == Some("groupchat")).await;
    assert_ne!(first.attr("from").map(|f| f.split('/').next().unwrap().to_owned()), Some(g0), "{}", String::from(&first));
    let before = (archived(&component, &groups[0]), component.db().dump());
    let refused = post(&mut bob.session, &groups[0], last_application(&component, &groups[0])).await;
    assert_eq!(error_of(&refused), not_joined());
    assert_eq!((archived(&component, &groups[0]), component.db().dump()), before);
    component.assert_never_reconnected();
}

/// Finding 7: an external Commit may remove only leaves of the joiner's own
/// account. mallory, a member, publishes bob's signature key as a device of
/// hers; openmls' external-commit builder then removes bob's leaf (it
/// removes the leaf with the joiner's key; any other RFC 9420 stack can
/// name any leaf). The service refuses it and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_commit_cannot_remove_another_account() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, mallory, group) = three(&prosody, &dir).await;
    let mut stolen = bob.device().item(None);
    stolen.id = "stolen".into();
    mallory.session.publish_device(&service(), &stolen).await.unwrap();
    let reply = mallory.session.iq(&Jid::from(group.clone()), "get", Element::builder("group-info", NS).build()).await;
    let (_, info) = parse_group_info(&reply.unwrap().unwrap()).unwrap();
    let MlsMessageBodyIn::GroupInfo(info) = MlsMessageIn::tls_deserialize_exact(&info).unwrap().extract() else {
        panic!("not a GroupInfo")
    };
    let provider = OpenMlsRustCrypto::default();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(b"xmpp:mallory@example.org".to_vec()).into(),
        signature_key: bob.device().signature_key().to_vec().into(),
    };
    let config = MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build();
    let (mut joined, bundle) = MlsGroup::external_commit_builder()
        .with_config(config)
        .build_group(&provider, info, credential)
        .unwrap()
        .load_psks(provider.storage())
        .unwrap()
        .build(provider.rand(), provider.crypto(), bob.device().signer(), |_| true)
        .unwrap()
        .finalize(&provider)
        .unwrap();
    joined.merge_pending_commit(&provider).unwrap();
    let (commit, _, group_info) = bundle.into_messages();
    let bundle = CommitBundle {
        commit: commit.tls_serialize_detached().unwrap(),
        parts: None,
        welcome: None,
        group_info: group_info.unwrap().tls_serialize_detached().unwrap(),
        epoch_check: epoch_check(joined.epoch_authenticator().as_slice()),
    };
    assert_eq!(joined.members().count(), 3, "alice, mallory and the new leaf: bob's is gone in the joiner's view");
    let before = component.db().dump();
    let id = mallory.session.next_id();
    let iq = xmpp_mls::client::iq_element("set", &id, group.as_str(), Some(bundle.to_element()));
    let reply = mallory.session.request(iq).await.unwrap();
    assert_eq!(
        error_of(&reply),
        (ErrorType::Modify, DefinedCondition::NotAcceptable, Some("invalid-message:foreign-removal".into()))
    );
    assert_eq!(component.db().dump(), before);
    alice.send_body(&group, "bob is still here").await.unwrap();
    message_from(&mut bob, "bob is still here").await;
    component.assert_never_reconnected();
}

/// Finding 7: unavailable presence with nothing to leave (no such group,
/// or a full JID that is not on the feed) gets no answer and changes
/// nothing, past the rate limit; a device on the feed still leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_nothing_costs_nothing() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[limits]\naccount_rate = 5\naccount_burst = 10");
    let dir = tempfile::tempdir().unwrap();
    let (_alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;
    let mallory = prosody.client("mallory", "pc").await;
    let before = component.db().dump();
    let nowhere = format!("aaaaaaaaaaaaaaaaaaaaaaaaaa@{COMPONENT}/x");
    for i in 0..60 {
        let to = if i % 2 == 0 { nowhere.clone() } else { format!("{group}/{}", bob.device().id()) };
        mallory.send(presence_to(&to, Some("unavailable"))).await.unwrap();
    }
    // A marker after them: disco#info of the service, answered in order
    // once the presences are handled (or refused for the rate: retried).
    let disco = Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build();
    tokio::time::sleep(Duration::from_secs(2)).await;
    mallory.iq(&service(), "get", disco).await.expect("disco#info");
    assert!(mallory.try_next_event().is_none(), "an answer to unavailable presence with nothing to leave");
    assert_eq!(component.db().dump(), before);
    let device = bob.device().id().to_owned();
    bob.session.send(presence_to(&format!("{group}/{device}"), Some("unavailable"))).await.unwrap();
    expect_unavailable(&mut bob.session, &group, &device).await;
    assert_eq!(feed_rows(&component, &group, &device), []);
    component.assert_never_reconnected();
}

/// The bodies of the next `n` messages `client` reports, with their stanza ids, in order.
async fn next_messages(client: &mut GroupClient, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let GroupEvent::Message { content, stanza_id, .. } =
            expect(client, "a message", |e| matches!(e, GroupEvent::Message { .. })).await
        {
            out.push((content.body().unwrap_or_default(), stanza_id));
        }
    }
    out
}

/// A copy lost on its way (here: bob's phone is off the feed while alice
/// posts, unknown to his client) shows as a gap in the positions of the
/// next copy: bob reads the missing item from the archive and applies
/// both in archive order, each once (xep/ §Delivery to the Feed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_missed_a_copy_reads_it_from_the_archive_before_the_next() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;
    let device = bob.device().id().to_owned();
    bob.session.send(presence_to(&format!("{group}/{device}"), Some("unavailable"))).await.unwrap();
    expect_unavailable(&mut bob.session, &group, &device).await;

    let mut echoes = Vec::new();
    for body in ["missed", "next"] {
        let id = alice.send_body(&group, body).await.unwrap();
        let echo = expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { id: i, .. } if *i == id)).await;
        let GroupEvent::Delivered { stanza_id, .. } = echo else { unreachable!() };
        echoes.push((body.to_owned(), stanza_id));
        if body == "missed" {
            bob.join_feed(&group).await.unwrap();
        }
    }
    assert_eq!(next_messages(&mut bob, 2).await, echoes, "both, in archive order");
    alice.send_body(&group, "after").await.unwrap();
    let after = next_messages(&mut bob, 1).await;
    assert_eq!(after[0].0, "after", "nothing applied twice: {after:?}");
}
