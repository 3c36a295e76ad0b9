//! Limits end to end: group size, groups per account, the per-account
//! stanza rate, memory under a flood, subscribers of a device list and
//! archive budgets. Every refusal is the documented stanza error and
//! leaves the store unchanged.

mod common;

use std::time::{Duration, Instant};

use common::{bare, expect, member, COMPONENT, Component, Prosody};
use minidom::Element;
use xmpp_mls::client::{describe, iq_element, ClientError, GroupClient, GroupError, GroupEvent};
use xmpp_parsers::jid::BareJid;

/// Submits a Commit by `by` adding every device of `account` (claimed
/// first) and returns the refusal; the store must not change.
async fn refused_add(by: &mut GroupClient, group: &BareJid, account: &str, component: &Component) -> String {
    let account = bare(account);
    let devices = by.session.devices(by.service(), &account).await.unwrap();
    let kps = by.key_packages_for(&account, devices.into_iter().map(|d| d.id).collect()).await.unwrap();
    let before = component.db().dump();
    let bundle = by.stage_add(group, kps).await.unwrap();
    let refusal = match by.submit(group, &bundle).await {
        Err(ClientError::Stanza(e)) => describe(&e),
        other => panic!("expected a stanza error, got {other:?}"),
    };
    by.discard_pending(group).unwrap();
    assert!(component.db().dump() == before, "the refused Commit changed the store");
    refusal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_size_and_groups_per_account_are_policy_violations() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[groups]\nmax_members = 2\nmax_groups_per_account = 1");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut carol = member(&prosody, &dir, "carol", "pc").await;

    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    // A third leaf: the Commit is refused whole.
    assert_eq!(refused_add(&mut alice, &group, "carol@example.org", &component).await, "modify/policy-violation (too-many-members)");

    // alice is in one group already: she cannot register a second...
    let before = component.db().dump();
    let Err(GroupError::Client(ClientError::Stanza(e))) = alice.create().await else { panic!("created") };
    assert_eq!(describe(&e), "modify/policy-violation (too-many-groups)");
    assert!(component.db().dump() == before, "the refused create changed the store");

    // bob joins alice's group: that is his one. carol can still add him to
    // another (being added counts for nobody), but he cannot join it.
    bob.join_feed(&group).await.unwrap();
    let other = carol.create().await.unwrap();
    carol.add(&other, &[bare("bob@example.org")]).await.unwrap();
    let before = component.db().dump();
    let to = format!("{other}/{}", bob.device().id());
    bob.session.send(Element::builder("presence", "jabber:client").attr(xmpp_mls::protocol::n("to"), to.as_str()).build()).await.unwrap();
    let reply = loop {
        let stanza = bob.session.next_event_within(Duration::from_secs(10)).await.expect("an answer to the join");
        if stanza.name() == "presence" && stanza.attr("from") == Some(to.as_str()) {
            break stanza;
        }
    };
    let error = xmpp_parsers::stanza_error::StanzaError::try_from(reply.get_child("error", "jabber:client").expect("an error").clone());
    assert_eq!(describe(&error.unwrap()), "modify/policy-violation (too-many-groups)");
    assert!(component.db().dump() == before, "the refused join changed the store");
}

fn disco_info() -> Element {
    Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build()
}

/// (accepted, refusals as text) of `n` disco#info requests sent at once,
/// as raw IQs (`Session::iq` would wait out the limit and retry).
async fn burst(session: &xmpp_mls::client::Session, n: usize) -> (usize, Vec<String>) {
    let iqs = (0..n).map(|_| iq_element("get", &session.next_id(), COMPONENT, Some(disco_info())));
    let replies = futures::future::join_all(iqs.map(|iq| session.request(iq))).await;
    let mut accepted = 0;
    let mut refused = Vec::new();
    for reply in replies {
        let reply = reply.unwrap();
        match reply.get_child("error", "jabber:client") {
            None => accepted += 1,
            Some(error) => {
                let e = xmpp_parsers::stanza_error::StanzaError::try_from(error.clone()).unwrap();
                let retry = e.other.as_ref().and_then(|o| o.attr("retry-after")).unwrap_or("-").to_owned();
                refused.push(format!("{} retry-after={retry}", describe(&e)));
            }
        }
    }
    (accepted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_over_its_stanza_rate_is_told_when_to_retry() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[limits]\naccount_rate = 1\naccount_burst = 5");
    let alice = prosody.client("alice", "laptop").await;
    let alice_phone = prosody.client("alice", "phone").await;
    let bob = prosody.client("bob", "pc").await;

    let start = Instant::now();
    let (laptop_ok, laptop_refused) = burst(&alice, 8).await;
    let (phone_ok, phone_refused) = burst(&alice_phone, 4).await;
    let elapsed = start.elapsed().as_secs() as usize;
    // The burst of 5 is the account's, not the device's: both devices
    // together got 5, plus one per second that passed.
    assert!((5..=6 + elapsed).contains(&(laptop_ok + phone_ok)), "{laptop_ok} + {phone_ok} in {elapsed} s");
    let refused: Vec<String> = laptop_refused.into_iter().chain(phone_refused).collect();
    assert_eq!(refused.len(), 12 - laptop_ok - phone_ok);
    assert!(refused.iter().all(|r| r == "wait/resource-constraint (rate-limited) retry-after=1"), "{refused:?}");

    // Another account is not slowed down by alice's flood.
    assert_eq!(burst(&bob, 5).await, (5, vec![]));
}

/// A client floods the component with group messages it may not send and
/// IQs it may: the component answers each (most with rate-limited) and its
/// peak memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_answered_and_memory_stays_bounded() {
    const FLOOD: usize = 5_000;
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let group = alice.create().await.unwrap();
    let mallory = prosody.client("mallory", "bot").await;
    let idle = component.peak_rss_kib();

    let body = "A".repeat(16 * 1024);
    let payload = format!("<mls xmlns='urn:xmpp:mls:0'>{body}</mls>");
    for i in 0..FLOOD {
        let msg = format!("<message xmlns='jabber:client' type='groupchat' id='f{i}' to='{group}'>{payload}</message>");
        mallory.send(msg.parse().unwrap()).await.unwrap();
    }
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while errors.values().sum::<usize>() < FLOOD && Instant::now() < deadline {
        let Some(reply) = mallory.next_event_within(Duration::from_secs(30)).await else { break };
        let error = reply.get_child("error", "jabber:client").expect("an error reply");
        let e = xmpp_parsers::stanza_error::StanzaError::try_from(error.clone()).unwrap();
        *errors.entry(describe(&e)).or_default() += 1;
    }
    let peak = component.peak_rss_kib();
    eprintln!("flood of {FLOOD} x 16 KiB: peak RSS {idle} KiB idle -> {peak} KiB; replies {errors:?}");
    assert_eq!(errors.values().sum::<usize>(), FLOOD, "every stanza answered: {errors:?}");
    assert!(errors.keys().all(|k| k == "wait/resource-constraint (rate-limited)" || k.contains("not-acceptable")), "{errors:?}");
    assert!(peak < idle + 64 * 1024, "peak RSS grew from {idle} to {peak} KiB");
    // The service still serves its members.
    alice.send_body(&group, "still here").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_over_the_payload_limit_is_refused_unread() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[limits]\nmax_payload_size = 16384");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let group = alice.create().await.unwrap();
    let before = component.db().dump();
    let body = "A".repeat(16 * 1024);
    let msg = format!("<message xmlns='jabber:client' type='groupchat' id='big' to='{group}'><mls xmlns='urn:xmpp:mls:0'>{body}</mls></message>");
    alice.session.send(msg.parse().unwrap()).await.unwrap();
    let refused = common::expect(&mut alice, "refusal", |e| matches!(e, xmpp_mls::client::GroupEvent::Refused { .. })).await;
    let expected = xmpp_mls::client::GroupEvent::Refused {
        group,
        id: "big".into(),
        error: "modify/policy-violation (payload-too-big)".into(),
    };
    assert_eq!(refused, expected);
    assert!(component.db().dump() == before, "the refused message changed the store");
}

/// One account cannot take every subscriber slot of another's device list
/// from many resources: it holds at most max_devices_per_account
/// subscriptions there, and max_subscribers counts accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_device_list_are_counted_per_account() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[directory]\nmax_devices_per_account = 2\nmax_subscribers = 2");
    let service = xmpp_parsers::jid::Jid::new(COMPONENT).unwrap();
    let alice = bare("alice@example.org");
    let mut mallory = Vec::new();
    for resource in ["a", "b", "c"] {
        mallory.push(prosody.client("mallory", resource).await);
    }
    let refusal = |r: Result<(), ClientError>| match r {
        Err(ClientError::Stanza(e)) => describe(&e),
        other => panic!("expected a stanza error, got {other:?}"),
    };
    mallory[0].subscribe_devices(&service, &alice).await.unwrap();
    mallory[1].subscribe_devices(&service, &alice).await.unwrap();
    let before = component.db().dump();
    let third = refusal(mallory[2].subscribe_devices(&service, &alice).await);
    assert_eq!(third, "modify/policy-violation (too-many-subscribers)");
    mallory[0].subscribe_devices(&service, &alice).await.unwrap(); // again: still one
    assert!(component.db().dump() == before, "a refused or repeated subscription changed the store");

    // bob, a second account, still finds a slot; carol, a third, does not.
    let bob = prosody.client("bob", "phone").await;
    bob.subscribe_devices(&service, &alice).await.unwrap();
    let before = component.db().dump();
    let carol = prosody.client("carol", "pc").await;
    assert_eq!(refusal(carol.subscribe_devices(&service, &alice).await), "modify/policy-violation (too-many-subscribers)");
    assert!(component.db().dump() == before, "the refused subscription changed the store");
    let listed: Vec<String> = component.db().all("SELECT subscriber FROM subscriptions ORDER BY subscriber", &[]);
    assert_eq!(listed, ["bob@example.org/phone", "mallory@example.org/a", "mallory@example.org/b"]);
    assert_eq!(component.count_in_log("component connected"), 1, "{}", component.log());
}

/// Octets archived today for (`scope`, `owner`), read from the store.
fn archived_today(component: &Component, scope: &str, owner: &[u8]) -> usize {
    // The sum of BIGINTs is a NUMERIC on PostgreSQL: cast back.
    let sql = "SELECT CAST(coalesce(sum(bytes), 0) AS BIGINT) FROM archive_bytes WHERE scope = ?1 AND owner = ?2 AND day = ?3";
    component.db().one::<i64>(sql, xmpp_mls::store_params![scope, owner, xmpp_mls::protocol::now() / 86400]) as usize
}

/// Sends `body` from `from` and returns the refusal, which must leave the
/// store unchanged.
async fn refused_message(from: &mut GroupClient, group: &BareJid, body: &[u8], component: &Component) -> String {
    let before = component.db().dump();
    let id = from.send_data(group, body).await.unwrap();
    let ours = |e: &GroupEvent| matches!(e, GroupEvent::Refused { id: i, .. } | GroupEvent::Delivered { id: i, .. } if *i == id);
    let GroupEvent::Refused { error, .. } = expect(from, "refusal", ours).await else { panic!("the message was delivered") };
    assert!(component.db().dump() == before, "the refused message changed the store");
    error
}

/// An account cannot grow an archive by its stanza rate: messages past its
/// own archive budget of the day, or past the group's, are refused, and
/// nothing of them is archived or sent; other accounts and groups go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_budgets_bound_what_an_account_and_a_group_take_in_a_day() {
    const ACCOUNT: usize = 8000;
    const GROUP: usize = 12000;
    let prosody = Prosody::start();
    let extra = format!("[history]\naccount_archive_bytes_per_day = {ACCOUNT}\ngroup_archive_bytes_per_day = {GROUP}");
    let component = Component::start(&prosody, &extra);
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = common::alice_and_bob(&prosody, &dir).await;
    let Ok(xmpp_mls::protocol::address::Address::Group(gid)) = xmpp_mls::protocol::address::Address::parse(&group.clone().into()) else {
        panic!("{group} is a group JID")
    };
    let got = |e: &GroupEvent| matches!(e, GroupEvent::Message { .. });

    // bob uses most of his budget; one byte more than what is left is refused.
    bob.send_body(&group, &"b".repeat(5500)).await.unwrap();
    expect(&mut alice, "bob's message", got).await;
    let left = ACCOUNT - archived_today(&component, "account", b"bob@example.org");
    let error = refused_message(&mut bob, &group, &vec![b'x'; left + 1], &component).await;
    assert_eq!(error, "modify/policy-violation (archive-budget-exceeded)");
    // What fits still goes, and alice gets it next: the refused one never went out.
    bob.send_body(&group, "small").await.unwrap();
    let GroupEvent::Message { content, .. } = expect(&mut alice, "bob's next message", got).await else { unreachable!() };
    assert_eq!(content.body().as_deref(), Some("small"));

    // The group is nearly full although alice's own budget is not: hers is refused for the group's.
    let group_left = GROUP - archived_today(&component, "group", &gid);
    let alice_left = ACCOUNT - archived_today(&component, "account", b"alice@example.org");
    assert!(group_left + 1024 < alice_left, "the group's budget is the one that refuses: {group_left} {alice_left}");
    let error = refused_message(&mut alice, &group, &vec![b'a'; group_left + 1], &component).await;
    assert_eq!(error, "modify/policy-violation (archive-budget-exceeded)");

    // Another group of alice's takes messages; the component kept its link.
    let other = alice.create().await.unwrap();
    alice.send_body(&other, "elsewhere").await.unwrap();
    expect(&mut alice, "delivery", |e| matches!(e, GroupEvent::Delivered { group, .. } if *group == other)).await;
    assert_eq!(component.count_in_log("component connected"), 1, "{}", component.log());
}
