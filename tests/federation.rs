//! Federation end to end: two real Prosody servers on loopback, the
//! component on a.test, accounts of b.test as full participants over
//! server-to-server links (xep/ §Accounts of Other Domains).

mod common;

use std::time::Duration;

use common::federation::{Federation, DENIED, HOME, REMOTE, SECRET, SERVICE};
use common::scrape::scrape;
use common::{expect, free_port, new_device, old_device, Component, FAST};
use xmpp_mls::client::{describe, directory_jid, ClientError, Device, GroupClient, GroupEvent, Vault};
use xmpp_mls::protocol::devices::NODE;
use xmpp_mls::protocol::pubsub::publish_request;
use xmpp_parsers::jid::{BareJid, Jid};


fn service() -> Jid {
    Jid::new(SERVICE).unwrap()
}

fn account(user: &str, domain: &str) -> BareJid {
    BareJid::new(&format!("{user}@{domain}")).unwrap()
}

/// A new device of `user@domain` at the service.
async fn device(fed: &Federation, dir: &tempfile::TempDir, user: &str, domain: &str, resource: &str) -> GroupClient {
    new_device(fed.client(user, domain, resource).await, dir, SERVICE).await
}

/// The same device back online from its state file.
async fn again(fed: &Federation, dir: &tempfile::TempDir, user: &str, domain: &str, resource: &str) -> GroupClient {
    old_device(fed.client(user, domain, resource).await, dir, SERVICE).await
}

/// Bodies of the messages `client` has (after catching up), in order.
async fn bodies(client: &mut GroupClient) -> Vec<String> {
    client.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    let mut out = Vec::new();
    while let Some(e) = client.next_event(Duration::from_millis(500)).await.unwrap() {
        if let GroupEvent::Message { content, .. } = e {
            out.push(content.body().unwrap());
        }
    }
    out
}

fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Stanza(e)) => describe(&e),
        other => panic!("expected a stanza error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_of_another_server_are_full_participants() {
    let mut fed = Federation::start();
    let port = free_port();
    let extra = format!("[federation]\ndeny_domains = [\"{DENIED}\"]\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let _component = Component::start_with(&fed.component_server(), SERVICE, SECRET, &extra);
    let dir = tempfile::tempdir().unwrap();
    let mut alice = device(&fed, &dir, "alice", HOME, "laptop").await;
    let mut alice_phone = device(&fed, &dir, "alice", HOME, "phone").await;
    let mut bob = device(&fed, &dir, "bob", REMOTE, "phone").await;
    let tablet = device(&fed, &dir, "bob", REMOTE, "tablet").await;
    let vault = Vault::create(&bob.session, &service(), "bob's passphrase", FAST).await.unwrap();
    bob.attach_vault(vault, 10);

    // One group, members on both servers; bob's tablet goes offline.
    let group = alice.create().await.unwrap();
    alice.add(&group, &[account("alice", HOME), account("bob", REMOTE)]).await.unwrap();
    for d in [&mut alice_phone, &mut bob] {
        expect(d, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    }
    tablet.session.close().await;

    // Messages both ways, through s2s.
    alice.send_body(&group, "hello b.test").await.unwrap();
    let got = expect(&mut bob, "alice's message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(got, GroupEvent::Message { account: from, content, .. } if from == account("alice", HOME) && content.body().as_deref() == Some("hello b.test")));
    bob.send_body(&group, "hello a.test").await.unwrap();
    expect(&mut bob, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await; // its sent copy is in the vault
    let got = expect(&mut alice, "bob's message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(got, GroupEvent::Message { account: from, content, .. } if from == account("bob", REMOTE) && content.body().as_deref() == Some("hello a.test")));

    // Identity is the 'from' the remote server delivered: bob cannot act
    // for alice, and a denied domain is refused before anything else.
    let alices = directory_jid(&account("alice", HOME), &service());
    let item = publish_request(NODE, vec![(Some(bob.device().id().to_owned()), bob.device().item(None).to_element())]);
    assert_eq!(refusal(bob.session.iq(&alices, "set", item).await), "auth/forbidden");
    let carol = fed.client("carol", DENIED, "pc").await;
    let disco = minidom::Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build();
    assert_eq!(refusal(carol.iq(&service(), "get", disco).await), "auth/forbidden (domain-not-allowed)");
    // Counted by domain: a listed one by name (the refusal, and the error
    // sent back), any other as `other`; never an account.
    let m = scrape(port);
    let denied = |metric: &str| m.get(&format!("xmpp_mls_federation_{metric}_total{{domain=\"{DENIED}\"}}")).copied();
    assert_eq!((denied("refused"), denied("sent")), (Some(1.0), Some(1.0)));
    assert!(m["xmpp_mls_federation_sent_total{domain=\"other\"}"] >= 2.0, "bob's welcome and alice's message");
    assert!(!m.contains_key("xmpp_mls_federation_refused_total{domain=\"other\"}"));
    assert!(!m.keys().any(|k| k.contains(REMOTE) || k.contains('@')), "no remote domain or JID in a label");

    // b.test goes away: a.test's members carry on; nothing is retried in memory.
    fed.stop_remote();
    for i in 0..3 {
        alice.send_body(&group, &format!("while b.test is down {i}")).await.unwrap();
        expect(&mut alice_phone, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    }
    fed.restart_remote();
    let expected: Vec<String> = ["hello b.test", "while b.test is down 0", "while b.test is down 1", "while b.test is down 2"]
        .map(String::from)
        .to_vec();
    let mut bob = again(&fed, &dir, "bob", REMOTE, "phone").await;
    assert_eq!(bodies(&mut bob).await, expected[1..], "bob's phone catches up what it missed");
    let mut tablet = again(&fed, &dir, "bob", REMOTE, "tablet").await;
    let mut everything = expected.clone();
    everything.insert(1, "hello a.test".into());
    assert_eq!(bodies(&mut tablet).await, everything, "the offline tablet catches up everything, in order");

    // A brand-new device of bob's reads the history with his passphrase.
    let session = fed.client("bob", REMOTE, "new").await;
    let vault = Vault::open(&session, &service(), "bob's passphrase").await.unwrap();
    let fresh = Device::create(&dir.path().join("bob-new.sqlite3"), account("bob", REMOTE), None).unwrap();
    let mut new = GroupClient::start(session, fresh, service()).await.unwrap();
    let history = new.read_history(&group, &vault).await.unwrap();
    let read: Vec<String> = history.entries.iter().map(|h| h.content.body().unwrap()).collect();
    assert_eq!(read, everything, "{:?}", history.unreadable);
}
