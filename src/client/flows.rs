//! Whole flows of the client core, driven by hand through [`Machine`]s
//! against a scripted service ([`service`]): real devices and real MLS
//! groups, no server, no tokio, and no time but what a test gives.

mod service;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use minidom::Element;
use openmls::prelude::{ContentType, Sender};
use xmpp_parsers::jid::{BareJid, FullJid, Jid};

use super::port::Port;
use super::session::{iq_element, ClientError};
use super::{directory_jid, Content, Done, GroupError, GroupEvent, Operation};
use crate::protocol::disco::PING;
use crate::protocol::groups::{epoch_check, Accepted, CommitBundle};
use crate::protocol::mls::public_message;
use service::{Client, Request, Service, DOMAIN};

/// The event of a commit that brought `group` to `epoch` with these devices.
fn epoch(group: &BareJid, epoch: u64, members: &[&Client]) -> GroupEvent {
    GroupEvent::Epoch { group: group.clone(), epoch, members: members.iter().map(|c| c.member()).collect() }
}

fn accepted(epoch: u64, position: u64) -> Done {
    Done::Accepted(Accepted { epoch, stanza_id: format!("s{position}"), position })
}

fn archive(group: &BareJid) -> Jid {
    group.clone().into()
}

/// Alice creates a group and adds carol (epoch 1); alice gets the echo of
/// her commit and carol its Welcome. The requests so far are forgotten.
fn alice_and_carol(service: &mut Service) -> (Client, Client, BareJid) {
    let mut alice = service.client("alice@example.org");
    let mut carol = service.client("carol@example.org");
    let Ok(Done::Group(group)) = service.run(&mut alice, Operation::Create) else { panic!("no group") };
    let added = service.run(&mut alice, Operation::Add { group: group.clone(), accounts: vec![carol.account()] });
    assert_eq!(added.expect("carol is added"), accepted(1, 1));
    service.deliver(&mut alice);
    service.deliver(&mut carol);
    let joined = GroupEvent::Joined { group: group.clone() };
    assert_eq!(alice.events(), vec![joined.clone(), epoch(&group, 1, &[&alice, &carol])]);
    assert_eq!(carol.events(), vec![joined]);
    service.requests.clear();
    (alice, carol, group)
}

#[test]
fn an_add_that_lost_its_epoch_applies_the_winner_and_submits_again() {
    let mut service = Service::new();
    let (mut alice, mut carol, group) = alice_and_carol(&mut service);
    let mut bob = service.client("bob@example.org");
    // Carol's update wins epoch 1; its copy to alice is still in flight.
    let update = service.run(&mut carol, Operation::Update { group: group.clone() });
    assert_eq!(update.expect("carol's update is accepted"), accepted(2, 2));
    assert_eq!(carol.events(), vec![epoch(&group, 2, &[&alice, &carol])]);
    service.requests.clear();

    let added = service.run(&mut alice, Operation::Add { group: group.clone(), accounts: vec![bob.account()] });

    let b = bob.account();
    assert_eq!(
        service.requests,
        vec![
            Request::Devices(b.clone()),
            Request::Info,
            Request::Claim(b.clone()),
            Request::Devices(b.clone()), // the check of the claimed KeyPackage
            Request::Commit { group: group.clone(), epoch: 1 }, // wrong-epoch: carol's won
            Request::Query { archive: archive(&group), after: Some("s1".into()) },
            Request::Ack { archive: archive(&group), id: "s2".into() },
            Request::Commit { group: group.clone(), epoch: 2 }, // accepted
            // The leaf checks follow the list of bob, a new member account.
            Request::Subscribe(b.clone()),
            Request::Devices(b),
        ]
    );
    assert_eq!(added.expect("the retried add is accepted"), accepted(3, 3));
    assert_eq!(alice.events(), vec![epoch(&group, 2, &[&alice, &carol]), epoch(&group, 3, &[&alice, &carol, &bob])]);
    // The second bundle is one the others can follow: bob joins by its
    // Welcome, carol applies the commit and agrees on its epoch check.
    service.deliver(&mut bob);
    assert_eq!(bob.events(), vec![GroupEvent::Joined { group: group.clone() }]);
    service.deliver(&mut carol);
    assert_eq!(carol.events(), vec![epoch(&group, 3, &[&alice, &carol, &bob])]);
    // What was in flight to alice (carol's commit, her own echo) is no news.
    service.deliver(&mut alice);
    assert_eq!(alice.events(), vec![]);
}

#[test]
fn catching_up_past_a_pruned_archive_rejoins_by_external_commit() {
    let mut service = Service::new();
    let (mut alice, mut carol, group) = alice_and_carol(&mut service);
    // Alice is offline while carol updates three times (epochs 2 to 4) and
    // retention deletes the archive through carol's second update.
    service.disconnect(&alice);
    for epoch in 2..=4 {
        assert_eq!(service.run(&mut carol, Operation::Update { group: group.clone() }).expect("carol's update is accepted"), accepted(epoch, epoch));
    }
    service.deliver(&mut carol);
    let epochs: Vec<_> = (2..=4).map(|e| epoch(&group, e, &[&alice, &carol])).collect();
    assert_eq!(carol.events(), epochs);
    service.prune(&group, 3);
    service.requests.clear();

    let caught_up = service.run(&mut alice, Operation::CatchUpAll);

    let inbox = directory_jid(&alice.account(), &Jid::new(DOMAIN).expect("the service's JID"));
    assert_eq!(
        service.requests,
        vec![
            Request::Query { archive: inbox, after: None },
            Request::Join(group.clone()),
            Request::Query { archive: archive(&group), after: Some("s1".into()) }, // history-pruned
            Request::GroupInfo(group.clone()),
            Request::Commit { group: group.clone(), epoch: 4 },
            Request::Join(group.clone()),
            Request::Ack { archive: archive(&group), id: "s5".into() },
        ]
    );
    assert_eq!(caught_up.expect("the catch-up ends"), Done::Unit);
    let bundle = service.bundles.last().expect("a bundle").clone();
    let id = service::group_id(&archive(&group));
    let commit = public_message(&bundle.commit, &id, ContentType::Commit).expect("a Commit");
    assert_eq!(commit.sender(), &Sender::NewMemberCommit, "an external commit");
    assert_eq!(bundle.welcome, None);
    let joined = GroupEvent::Joined { group: group.clone() };
    let pruned = GroupEvent::HistoryPruned { group: group.clone() };
    assert_eq!(alice.events(), vec![joined.clone(), pruned, joined, epoch(&group, 5, &[&alice, &carol])]);
    // Carol applies it (alice's old leaf replaced) and computes alice's epoch check.
    service.deliver(&mut carol);
    assert_eq!(carol.events(), vec![epoch(&group, 5, &[&alice, &carol])]);
}

#[test]
fn a_commit_without_an_answer_times_out_and_the_archive_settles_it() {
    let mut service = Service::new();
    let (mut alice, mut carol, group) = alice_and_carol(&mut service);
    // The service accepts alice's update, but its answer and her echo are lost.
    let update = alice.machine.start(Operation::Update { group: group.clone() });
    let commit = alice.machine.poll_transmit().expect("alice's commit");
    service.answers(&alice.jid, &commit);
    service.disconnect(&alice);
    let timeout = service.start + Duration::from_secs(30); // a Machine's IQ timeout
    alice.machine.tick(timeout - Duration::from_millis(1));
    assert_eq!(alice.machine.poll_done().map(|(id, _)| id), None);
    alice.machine.tick(timeout);
    let Some((done, Err(GroupError::Client(ClientError::Timeout(_))))) = alice.machine.poll_done() else {
        panic!("the update times out")
    };
    assert_eq!(done, update);
    assert_eq!(alice.events(), vec![]);

    // The next change reads the archive first: the commit won, it is merged
    // and the new update is of the epoch after it.
    let again = service.run(&mut alice, Operation::Update { group: group.clone() });

    assert_eq!(
        service.requests,
        vec![
            Request::Commit { group: group.clone(), epoch: 1 }, // accepted, answer lost
            // What the device handled live is acknowledged within seconds.
            Request::Ack { archive: archive(&group), id: "s1".into() },
            Request::Query { archive: archive(&group), after: Some("s1".into()) },
            Request::Ack { archive: archive(&group), id: "s2".into() },
            Request::Commit { group: group.clone(), epoch: 2 },
        ]
    );
    assert_eq!(again.expect("the next update is accepted"), accepted(3, 3));
    assert_eq!(alice.events(), vec![epoch(&group, 2, &[&alice, &carol]), epoch(&group, 3, &[&alice, &carol])]);
    service.deliver(&mut carol);
    assert_eq!(carol.events(), vec![epoch(&group, 2, &[&alice, &carol]), epoch(&group, 3, &[&alice, &carol])]);
}

/// `iq` with its commit bundle stating `check` as the new epoch's check.
fn restated(iq: &Element, check: String) -> Element {
    let payload = iq.children().next().expect("a payload");
    let bundle = CommitBundle { epoch_check: check, ..CommitBundle::parse(payload).expect("a bundle") };
    iq_element("set", iq.attr("id").expect("an IQ id"), iq.attr("to").expect("an IQ to"), Some(bundle.to_element()))
}

#[test]
fn a_commit_whose_epoch_check_differs_is_a_fork_and_nothing_is_sent_into_it() {
    let mut service = Service::new();
    let (mut alice, mut carol, group) = alice_and_carol(&mut service);
    // Carol commits from a history alice does not share: the epoch check
    // she states is not the one alice computes for the same commit.
    carol.machine.start(Operation::Update { group: group.clone() });
    let commit = loop {
        let stanza = carol.machine.poll_transmit().expect("carol's commit");
        if stanza.children().next().is_some_and(|p| p.is("commit", crate::protocol::NS)) {
            break stanza;
        }
        service.receive(&mut carol, stanza); // the service's limits, read once
    };
    service.receive(&mut carol, restated(&commit, epoch_check(b"a history alice never saw")));
    service.pump(&mut carol);
    assert_eq!(carol.machine.poll_done().map(|(_, done)| done.expect("carol's update is accepted")), Some(accepted(2, 2)));

    service.deliver(&mut alice);

    let fork = GroupEvent::Fork { group: group.clone(), epoch: 2 };
    assert_eq!(alice.events(), vec![fork, epoch(&group, 2, &[&alice, &carol])]);
    service.requests.clear();
    for restarted in [false, true] {
        if restarted {
            alice.restart(&mut service); // the fork is remembered with the device
        }
        let content = Content::from_body("hello").0;
        let sent = service.run(&mut alice, Operation::Send { group: group.clone(), content });
        assert!(matches!(sent, Err(GroupError::Forked(ref g)) if *g == group.to_string()), "{sent:?}");
        let update = service.run(&mut alice, Operation::Update { group: group.clone() });
        assert!(matches!(update, Err(GroupError::Forked(_))), "{update:?}");
        assert_eq!(service.requests, vec![]);
        assert_eq!(alice.machine.poll_transmit(), None);
    }
}

#[test]
fn messages_unechoed_across_restarts_are_all_resent() {
    let mut service = Service::new();
    let (mut alice, _carol, group) = alice_and_carol(&mut service);
    // Each session sends one message and ends before the message reaches
    // the service (sending one needs no request: it goes out as it is).
    let mut sent = Vec::new();
    for _ in 0..2 {
        alice.machine.start(Operation::Send { group: group.clone(), content: Content::from_body("lost").0 });
        let Some((_, Ok(Done::Sent(id)))) = alice.machine.poll_done() else { panic!("not sent") };
        let message = alice.machine.poll_transmit().expect("the message");
        assert_eq!(message.attr("id"), Some(id.as_str()));
        sent.push(message);
        alice.restart(&mut service);
    }
    assert_ne!(sent[0].attr("id"), sent[1].attr("id"), "stanza ids are unique across sessions");
    alice.machine.start(Operation::Resend);
    assert_eq!(alice.machine.poll_done().map(|(_, done)| done.expect("the resend ends")), Some(Done::Count(2)));
    let resent: Vec<Element> = std::iter::from_fn(|| alice.machine.poll_transmit()).collect();
    assert_eq!(resent, sent, "both, unchanged and in sending order");
}

fn poll<F: Future>(future: &mut Pin<Box<F>>) -> Poll<F::Output> {
    future.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn the_port_matches_answers_by_id_times_out_by_the_clock_and_fails_waiters_on_close() {
    let start = Instant::now();
    let timeout = Duration::from_secs(30);
    let jid = FullJid::new("alice@example.org/d1").expect("a full JID");
    let port = Port::manual(jid.clone(), timeout, start);
    let service = Jid::new(DOMAIN).expect("the service's JID");
    let ping = || Element::builder("ping", PING).build();
    let answer = |id: &str, text: &str| {
        let payload = Element::builder("answer", "urn:example").append(text).build();
        iq_element("result", id, jid.as_str(), Some(payload))
    };
    let sent_ids = || -> Vec<String> {
        std::iter::from_fn(|| port.poll_transmit()).map(|iq| iq.attr("id").expect("an IQ id").to_owned()).collect()
    };

    // Two IQs in flight, answered in the other order.
    let mut first = Box::pin(port.iq(&service, "get", ping()));
    let mut second = Box::pin(port.iq(&service, "get", ping()));
    assert!(poll(&mut first).is_pending() && poll(&mut second).is_pending());
    let ids = sent_ids();
    assert_eq!(ids.len(), 2);
    port.receive(answer(&ids[1], "second"));
    assert!(poll(&mut first).is_pending());
    let Poll::Ready(Ok(Some(reply))) = poll(&mut second) else { panic!("the second answer") };
    assert_eq!(reply.text(), "second");
    port.receive(answer(&ids[0], "first"));
    let Poll::Ready(Ok(Some(reply))) = poll(&mut first) else { panic!("the first answer") };
    assert_eq!(reply.text(), "first");

    // An IQ nobody answers times out when the clock reaches its deadline;
    // its late answer is then an ordinary stanza.
    let mut third = Box::pin(port.iq(&service, "get", ping()));
    assert!(poll(&mut third).is_pending());
    let ids = sent_ids();
    assert_eq!(port.next_deadline(), Some(start + timeout));
    port.tick(start + timeout - Duration::from_secs(1));
    assert!(poll(&mut third).is_pending());
    port.tick(start + timeout);
    assert!(matches!(poll(&mut third), Poll::Ready(Err(ClientError::Timeout(t))) if t == timeout));
    port.receive(answer(&ids[0], "late"));
    assert_eq!(port.try_next_event().map(|s| s.attr("id").map(str::to_owned)), Some(Some(ids[0].clone())));

    // Closing fails what waits for an answer or a stanza, and what is sent after.
    let mut fourth = Box::pin(port.iq(&service, "get", ping()));
    let mut event = Box::pin(port.next_event());
    assert!(poll(&mut fourth).is_pending() && poll(&mut event).is_pending());
    port.close();
    assert!(matches!(poll(&mut fourth), Poll::Ready(Err(ClientError::Closed))));
    assert!(matches!(poll(&mut event), Poll::Ready(None)));
    assert!(matches!(port.transmit(ping()), Err(ClientError::Closed)));
}
