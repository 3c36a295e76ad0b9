//! Groups end to end through Prosody: the Delivery Service and the client
//! group API together.

mod common;

use std::time::Duration;

use common::{Component, Prosody, COMPONENT};
use xmpp_mls::client::{Device, GroupClient, GroupEvent};
use xmpp_parsers::jid::{BareJid, Jid};

fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

fn bare(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

/// A logged-in device with a published key and a pool of KeyPackages.
async fn member(prosody: &Prosody, dir: &tempfile::TempDir, user: &str, resource: &str) -> GroupClient {
    let session = prosody.client(user, resource).await;
    let account = bare(&format!("{user}@example.org"));
    let device = Device::create(&dir.path().join(format!("{user}-{resource}.sqlite3")), account, None).unwrap();
    session.publish_device(&service(), &device.item(None)).await.unwrap();
    device.refill(&session, &service(), 5, true).await.unwrap();
    GroupClient::start(session, device, service()).await.unwrap()
}

/// Waits for the first event matching `pred`, skipping others.
async fn expect(client: &mut GroupClient, what: &str, pred: impl Fn(&GroupEvent) -> bool) -> GroupEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await.unwrap() {
            Some(e) if pred(&e) => return e,
            Some(_) => continue,
            None => panic!("no {what} in time"),
        }
    }
}

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

    let id = alice.send(&group, b"hello bob").await.unwrap();
    let got = expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    let GroupEvent::Message { account, body, stanza_id, .. } = got else { unreachable!() };
    assert_eq!(account, bare("alice@example.org"));
    assert_eq!(body, b"hello bob");
    let echo = expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    assert_eq!(echo, GroupEvent::Delivered { group: group.clone(), id, stanza_id });
    let _ = component;
}
