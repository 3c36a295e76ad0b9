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
        sent.push((i, d.send(&group, format!("hello from {i}").as_bytes()).await.unwrap()));
    }
    let mut stanza_ids: Vec<std::collections::HashMap<String, String>> = Vec::new();
    for (i, d) in devices.iter_mut().enumerate() {
        let mut seen = std::collections::HashMap::new();
        let events = collect(d, 5, |e| matches!(e, GroupEvent::Message { .. } | GroupEvent::Delivered { .. })).await;
        for e in events {
            match e {
                GroupEvent::Message { body, stanza_id, .. } => {
                    let body = String::from_utf8(body).unwrap();
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

/// Commits of one epoch per group in the archive, as (epoch, count).
fn commits_per_epoch(store: &std::path::Path) -> Vec<(i64, i64)> {
    let conn = rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = conn
        .prepare("SELECT epoch, count(*) FROM archive WHERE kind = 'commit' GROUP BY epoch ORDER BY epoch")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

/// Drains events until the group reaches `epoch`.
async fn reach(client: &mut GroupClient, group: &BareJid, epoch: u64) {
    while client.epoch(group).unwrap() < epoch {
        expect(client, "commit", |e| matches!(e, GroupEvent::Epoch { .. })).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_one_winner_per_epoch_and_everyone_converges() {
    const DEVICES: usize = 10;
    const ROUNDS: usize = 50;
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        devices.push(member(&prosody, &dir, &format!("u{i}"), "d").await);
    }
    let group = devices[0].create().await.unwrap();
    let others: Vec<BareJid> = (1..DEVICES).map(|i| bare(&format!("u{i}@example.org"))).collect();
    devices[0].add(&group, &others).await.unwrap();
    for d in devices.iter_mut().skip(1) {
        expect(d, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    }

    let mut commits = 1;
    for round in 0..ROUNDS {
        let contenders = 2 + round % (DEVICES - 1); // 2 ..= 10 at once
        let results = futures::future::join_all(devices[..contenders].iter_mut().map(|d| d.update(&group))).await;
        for r in results {
            r.expect("every contender gets its commit in, retrying after a lost epoch");
        }
        commits += contenders;
    }
    let epoch = commits as u64;
    let mut checks = std::collections::HashSet::new();
    for d in devices.iter_mut() {
        reach(d, &group, epoch).await;
        assert_eq!(d.epoch(&group).unwrap(), epoch);
        checks.insert(d.epoch_check(&group).unwrap());
    }
    assert_eq!(checks.len(), 1, "devices disagree on the epoch: {checks:?}");
    let per_epoch = commits_per_epoch(&component.store_path());
    assert_eq!(per_epoch.len(), commits, "one accepted commit per epoch");
    assert!(per_epoch.iter().all(|(_, n)| *n == 1), "two commits won one epoch: {per_epoch:?}");
}
