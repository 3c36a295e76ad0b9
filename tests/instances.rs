//! Several instances of the component for one domain on one store.
//! ejabberd balances a component domain over every connection that
//! authenticates for it (by default at random, per stanza): three instances
//! on one PostgreSQL store decide every race once. Prosody takes one
//! connection per domain: a second instance waits as a standby and serves
//! once the first is gone.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::db::postgres;
use common::mls::TestSigner;
use common::{commits_per_epoch, member, one_group, race_commits, wait_until, Component, Kind, Server, COMPONENT};
use xmpp_mls::protocol::keypackages::{Claim, ClaimOutcome};
use xmpp_parsers::jid::Jid;

/// Whether this run has what the several-instance test needs.
fn several_instances_possible() -> bool {
    let possible = Kind::chosen() == Kind::Ejabberd && postgres().is_some();
    if !possible {
        eprintln!("skipped: several instances need ejabberd (XMPP_TEST_SERVER=ejabberd) and PostgreSQL (XMPP_TEST_POSTGRES)");
    }
    possible
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_store_decide_every_race_once() {
    if !several_instances_possible() {
        return;
    }
    let server = Server::start();
    let first = Component::start(&server, "");
    let instances = [first.another(), first.another()];
    for other in &instances {
        assert!(other.wait_log("component connected", 1, Duration::from_secs(15)), "{}", other.log());
    }

    // Devices race commits; ejabberd hands each stanza to any instance.
    const DEVICES: usize = 6;
    const ROUNDS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let (mut devices, group) = one_group(&server, &dir, DEVICES).await;
    let commits = race_commits(&mut devices, &group, ROUNDS).await;
    let per_epoch = commits_per_epoch(&first.db());
    assert_eq!(per_epoch.len(), commits, "one accepted commit per epoch");
    assert!(per_epoch.iter().all(|(_, n)| *n == 1), "two commits won one epoch: {per_epoch:?}");
    for (i, instance) in std::iter::once(&first).chain(&instances).enumerate() {
        assert!(instance.count_in_log("request refused") > 0, "instance {i} decided no lost race:\n{}", instance.log());
    }

    // Claims from many accounts at once, spread over the instances: each
    // one-time KeyPackage is handed out once, then the last-resort one.
    let service = Jid::new(COMPONENT).unwrap();
    let owner = server.client("alice", "laptop").await;
    let alice = TestSigner::new("alice@example.org");
    owner.publish_device(&service, &alice.device("laptop-1", None)).await.unwrap();
    let mut kps: Vec<Vec<u8>> = (0..12).map(|_| alice.valid_kp()).collect();
    kps.push(alice.last_resort_kp());
    let refs = owner.upload_key_packages(&service, &kps).await.unwrap();
    let mut claimers = Vec::new();
    for i in 0..30 {
        claimers.push(server.client(&format!("claimer{i}"), "c").await);
    }
    let any = Claim::default();
    let results = futures::future::join_all(claimers.iter().map(|s| s.claim(&service, &alice.account, &any))).await;
    let mut handed: HashMap<String, usize> = HashMap::new();
    for r in results {
        let outcomes = r.expect("claim answered");
        let [ClaimOutcome::Claimed { kp_ref, .. }] = outcomes.as_slice() else { panic!("one package per claim: {outcomes:?}") };
        *handed.entry(kp_ref.clone()).or_default() += 1;
    }
    for kp_ref in &refs[..12] {
        assert_eq!(handed.get(kp_ref), Some(&1), "a one-time package not handed out exactly once");
    }
    assert_eq!(handed.get(&refs[12]), Some(&18), "the last-resort package for the rest");
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
