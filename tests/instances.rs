//! Several instances of the component for one domain on one store.
//! ejabberd balances a component domain over every connection that
//! authenticates for it (by default at random, per stanza): three instances
//! on one PostgreSQL store decide every race once, share their rate limits
//! and vault compare-and-swaps, run maintenance one at a time, and lose
//! nothing acknowledged when one is killed. Prosody takes one connection
//! per domain: a second instance waits as a standby and serves once the
//! first is gone.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{
    bare, bump_counter, member, one_group, outcome, race_claims, race_commits_over, several_instances_possible, wait_until,
    Component, Kind, Server, COMPONENT, FAST,
};
use xmpp_mls::client::{iq_element, GroupClient, GroupEvent, Vault};
use xmpp_mls::protocol::keypackages::Claim;
use xmpp_parsers::jid::{BareJid, Jid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_store_decide_every_race_once() {
    if !several_instances_possible() {
        return;
    }
    let server = Server::start();
    let instances = three_instances(&server, "");

    // Devices race commits; ejabberd hands each stanza to any instance.
    let dir = tempfile::tempdir().unwrap();
    let (mut devices, group) = one_group(&server, &dir, 6).await;
    race_commits_over(&instances.iter().collect::<Vec<_>>(), &mut devices, &group, 12).await;

    // Claims from many accounts at once, spread over the instances: each
    // one-time KeyPackage is handed out once, then the last-resort one.
    race_claims(&[&server], 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_prosody_a_second_instance_is_a_standby_that_takes_over() {
    let server = Server::start();
    if server.kind != Kind::Prosody {
        eprintln!("skipped: a standby is Prosody's case (ejabberd takes every instance)");
        return;
    }
    let mut first = Component::start(&server, "reconnect_max_secs = 1");
    let standby = first.another();
    assert!(standby.wait_log("reconnecting", 1, Duration::from_secs(15)), "{}", standby.log());
    assert_eq!(standby.count_in_log("component connected"), 0, "Prosody took a second connection:\n{}", standby.log());

    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&server, &dir, "alice", "laptop").await;
    let group = alice.create().await.unwrap();
    first.kill();
    assert!(standby.wait_log("component connected", 1, Duration::from_secs(15)), "{}", standby.log());
    alice.send_body(&group, "after the takeover").await.expect("the standby serves the group from the shared store");
    let archived = || standby.db().one::<i64>("SELECT count(*) FROM archive WHERE kind = 0", &[]);
    assert!(wait_until(Duration::from_secs(10), || archived() == 1), "{}", standby.log());
}

/// Three instances on one store, the first started with `extra`; returns
/// once all three are connected.
fn three_instances(server: &Server, extra: &str) -> Vec<Component> {
    let first = Component::start(server, extra);
    let others = [first.another(), first.another()];
    for other in &others {
        assert!(other.wait_log("component connected", 1, Duration::from_secs(15)), "{}", other.log());
    }
    std::iter::once(first).chain(others).collect()
}

/// A claimer's bucket is one across the instances: with a burst of 3 and
/// no refill within the test, 3 of 20 claims spread over three instances
/// pass (one bucket per process would pass up to 9), and the vault's
/// compare-and-swap loses no update of three devices on three instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_vault_versions_hold_across_instances() {
    if !several_instances_possible() {
        return;
    }
    let server = Server::start();
    let instances = three_instances(&server, "[directory]\nclaim_burst = 3\nclaim_refill_secs = 3600\nmax_devices_per_account = 3\n");
    let service = Jid::new(COMPONENT).unwrap();
    let bob = server.client("bob", "phone").await;
    let directory = xmpp_mls::client::directory_jid(&bare("alice@example.org"), &service);
    let claims = (0..20).map(|_| iq_element("set", &bob.next_id(), directory.as_str(), Some(Claim::default().to_element())));
    let replies = futures::future::join_all(claims.map(|iq| bob.request(iq))).await;
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for reply in replies {
        *outcomes.entry(outcome(&reply.unwrap())).or_default() += 1;
    }
    let expected = HashMap::from([("result".to_owned(), 3), ("wait/resource-constraint (rate-limited)".to_owned(), 17)]);
    assert_eq!(outcomes, expected);
    let refusing = instances.iter().filter(|i| i.count_in_log("request refused") > 0).count();
    assert!(refusing >= 2, "the claims did not spread over the instances");

    let devices = [server.client("alice", "a").await, server.client("alice", "b").await, server.client("alice", "c").await];
    let vault = Vault::create(&devices[0], &service, "pass", FAST).await.unwrap();
    vault.put(&devices[0], "counter", 0, &0u64.to_be_bytes()).await.unwrap();
    let mut vaults = vec![vault];
    for d in &devices[1..] {
        vaults.push(Vault::open(d, &service, "pass").await.unwrap());
    }
    let conflicts = futures::future::join_all(vaults.iter().zip(&devices).map(|(v, d)| bump_counter(v, d, 30))).await;
    let (_, data) = vaults[0].get(&devices[0], "counter").await.unwrap().unwrap();
    let conflicts: usize = conflicts.iter().sum();
    assert_eq!(u64::from_be_bytes(data.try_into().unwrap()), 90, "an update was lost ({conflicts} conflicts retried)");
}

/// What one device saw of the group: the stanza ids of its own messages
/// echoed, and of the others' messages received.
#[derive(Default)]
struct Seen {
    echoed: HashSet<String>,
    received: HashSet<String>,
}

impl Seen {
    /// Takes events until none came for `quiet`.
    async fn drain(&mut self, device: &mut GroupClient, quiet: Duration) {
        while let Some(event) = device.next_event(quiet).await.unwrap() {
            match event {
                GroupEvent::Delivered { stanza_id, .. } => self.echoed.insert(stanza_id),
                GroupEvent::Message { stanza_id, .. } => self.received.insert(stanza_id),
                GroupEvent::Refused { error, .. } => panic!("a message was refused: {error}"),
                _ => false,
            };
        }
    }

    /// Until every message of `device` is echoed: what arrives, then after
    /// a silence the resend of what is left (the stanzas that went to an
    /// instance as it died). Returns how many messages were resent.
    async fn settle(&mut self, device: &mut GroupClient) -> usize {
        let mut resent = 0;
        for _ in 0..5 {
            self.drain(device, Duration::from_secs(3)).await;
            if device.unechoed() == 0 {
                return resent;
            }
            resent += device.resend().await.unwrap();
        }
        panic!("{} messages never echoed", device.unechoed());
    }

    /// Reads the group's archive for what an instance archived and died
    /// before it delivered, then what is left to receive.
    async fn catch_up(&mut self, device: &mut GroupClient, group: &BareJid) {
        device.catch_up(group, &mut |_, _, _| {}).await.unwrap();
        self.drain(device, Duration::from_secs(1)).await;
    }
}

/// The holders of the maintenance turn so far, by instance.
fn turn_takers(instances: &[Component]) -> Vec<usize> {
    instances.iter().map(|i| i.count_in_log("took the maintenance turn")).collect()
}

/// Devices send while the instance that has the maintenance turn is
/// SIGKILLed and later restarted: one instance at a time maintains (another
/// takes the turn once the dead one's lapses); every message is archived
/// exactly once, echoed to its sender (resent if its stanza died with the
/// instance) and received by every other device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_during_traffic_loses_nothing_acknowledged() {
    if !several_instances_possible() {
        return;
    }
    const DEVICES: usize = 3;
    const ROUNDS: usize = 12;
    /// Messages a device sends at once in a round.
    const BURST: usize = 4;
    let server = Server::start();
    // A lease of two 3 s intervals leaves room for a slow pass on a loaded machine.
    let mut instances = three_instances(&server, "[history]\nmaintenance_secs = 3\n");
    let dir = tempfile::tempdir().unwrap();
    let (mut devices, group) = one_group(&server, &dir, DEVICES).await;
    assert_eq!(turn_takers(&instances).iter().sum::<usize>(), 1, "one instance maintains");
    let holder = turn_takers(&instances).iter().position(|n| *n == 1).unwrap();

    let mut seen: Vec<Seen> = devices.iter().map(|_| Seen::default()).collect();
    for round in 0..ROUNDS {
        for device in devices.iter_mut() {
            for i in 0..BURST {
                device.send_body(&group, &format!("round {round}, {i}")).await.unwrap();
            }
        }
        // Killed while the round's messages are on their way.
        if round == ROUNDS / 3 {
            instances[holder].kill();
        }
        if round == 2 * ROUNDS / 3 {
            let next = || turn_takers(&instances).iter().sum::<usize>() == 2;
            assert!(wait_until(Duration::from_secs(20), next), "no instance took the dead one's turn");
            instances[holder].restart();
        }
        for (device, seen) in devices.iter_mut().zip(&mut seen) {
            seen.drain(device, Duration::from_millis(50)).await;
        }
    }
    let mut resent = 0;
    for (device, seen) in devices.iter_mut().zip(&mut seen) {
        resent += seen.settle(device).await;
    }
    // Once every device's resends are out.
    for (device, seen) in devices.iter_mut().zip(&mut seen) {
        seen.catch_up(device, &group).await;
    }
    eprintln!("{resent} messages resent after the kill");

    let archived = instances[0].db().one::<i64>("SELECT count(*) FROM archive WHERE kind = 0", &[]);
    assert_eq!(archived as usize, DEVICES * ROUNDS * BURST, "every message archived once");
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.echoed.len(), ROUNDS * BURST, "device {i}'s messages echoed");
        let others: HashSet<String> = seen.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, o)| o.echoed.clone()).collect();
        let (missed, extra): (Vec<_>, Vec<_>) = (others.difference(&s.received).collect(), s.received.difference(&others).collect());
        assert!(missed.is_empty() && extra.is_empty(), "device {i} missed {missed:?}, and received unknown {extra:?}");
    }
    assert_eq!(turn_takers(&instances).iter().sum::<usize>(), 2, "the restarted instance waits for its turn");
}
