//! Where the vault lives (xep/ §Where the Vault Lives), end to end through
//! the test server (Prosody, or ejabberd with XMPP_TEST_SERVER=ejabberd):
//! the account's own server in private PEP nodes, moving between places,
//! and the key record's compare-and-swap in PEP.

mod common;

use common::{bare, expect, member, Component, Prosody, COMPONENT, FAST, OTHER_COMPONENT, OTHER_SECRET};
use xmpp_mls::client::{
    backup_device, location, set_location, ClientError, Device, GroupClient, GroupEvent, Location, Session, Unlock, Vault,
    VaultError,
};
use xmpp_mls::protocol::vault::{create_private_node, pep_keys_node, PEP_KEYS_NODE, PEP_NODE};
use xmpp_mls::store_params;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition;

fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

/// The rows of `account`'s vault in the component's store.
fn vault_rows(component: &Component, account: &str) -> i64 {
    component.db().one("SELECT count(*) FROM vault WHERE account = ?1", store_params![account])
}

/// alice and bob talk over three epochs (bob commits between rounds);
/// returns (account, body, epoch) of every message in order.
async fn talk(alice: &mut GroupClient, bob: &mut GroupClient, group: &BareJid) -> Vec<(String, String, u64)> {
    let mut sent = Vec::new();
    for round in 0..3 {
        for who in ["alice", "bob"] {
            let client = if who == "alice" { &mut *alice } else { &mut *bob };
            let text = format!("{who} {round}");
            client.send_body(group, &text).await.unwrap();
            expect(client, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
            sent.push((format!("{who}@example.org"), text, client.epoch(group).unwrap()));
        }
        if round < 2 {
            bob.update(group).await.unwrap();
            expect(alice, "bob's commit", |e| matches!(e, GroupEvent::Epoch { .. })).await;
        }
    }
    sent
}

/// A group of alice (keeping history in `vault`) and bob, and what they said.
async fn group_with_history(
    prosody: &Prosody,
    dir: &tempfile::TempDir,
    vault: Vault,
) -> (GroupClient, GroupClient, BareJid, Vec<(String, String, u64)>) {
    let mut alice = member(prosody, dir, "alice", "laptop").await;
    let mut bob = member(prosody, dir, "bob", "phone").await;
    alice.attach_vault(vault, 10);
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    let sent = talk(&mut alice, &mut bob, &group).await;
    (alice, bob, group, sent)
}

/// What a brand-new device of alice's reads of `group`, with her password
/// and passphrase only: the vault is wherever her location record says.
async fn new_device_reads(prosody: &Prosody, dir: &tempfile::TempDir, group: &BareJid, resource: &str) -> (Location, Vec<(String, String, u64)>) {
    let session = prosody.client("alice", resource).await;
    let vault = Vault::open(&session, &service(), "alice's passphrase").await.unwrap();
    let where_ = vault.location().clone();
    let device = Device::create(&dir.path().join(format!("alice-{resource}.sqlite3")), bare("alice@example.org"), None).unwrap();
    let mut new = GroupClient::start(session, device, service()).await.unwrap();
    let history = new.read_history(group, &vault).await.unwrap();
    assert!(history.unreadable.is_empty(), "{:?}", history.unreadable);
    let read = history.entries.iter().map(|h| (h.account.to_string(), h.content.body().unwrap(), h.epoch)).collect();
    (where_, read)
}

/// The account's PEP nodes that hold a vault (blobs or key records; not
/// the location record).
async fn vault_nodes(session: &Session) -> Vec<String> {
    let query = minidom::Element::builder("query", "http://jabber.org/protocol/disco#items").build();
    let account = Jid::from(session.jid().to_bare());
    let reply = session.iq(&account, "get", query).await.unwrap().unwrap();
    let mut nodes: Vec<String> = reply.children().filter_map(|i| i.attr("node")).filter(|n| n.starts_with(&format!("{PEP_NODE}/")) || n.starts_with(&format!("{PEP_KEYS_NODE}/"))).map(str::to_owned).collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_on_the_accounts_own_server_gives_a_new_device_the_history_and_the_service_holds_none_of_it() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let setup = prosody.client("alice", "setup").await;
    let vault = Vault::create(&setup, Location::Pep, "alice's passphrase", FAST).await.unwrap();
    set_location(&setup, &Location::Pep).await.unwrap();
    assert_eq!(location(&setup, &service()).await.unwrap(), Location::Pep);
    let (alice, _bob, group, sent) = group_with_history(&prosody, &dir, vault).await;

    // alice's laptop is lost; a brand-new device finds the vault in PEP.
    drop(alice);
    let (place, read) = new_device_reads(&prosody, &dir, &group, "new").await;
    assert_eq!(place, Location::Pep);
    assert_eq!(read, sent, "every message, alice's own included, in order");

    // Nothing of the vault at the service: no row, no passphrase, no text.
    assert_eq!(vault_rows(&component, "alice@example.org"), 0);
    for secret in [b"alice's passphrase".as_slice(), b"alice 1", b"bob 2"] {
        assert_eq!(common::found_in(&component, secret), Vec::<String>::new());
    }
    // The nodes are alice's alone: bob's requests are refused.
    let bob = prosody.client("bob", "curious").await;
    let node = vault_nodes(&setup).await.into_iter().find(|n| n.contains("/sent/")).expect("a node of sent copies");
    let items = xmpp_mls::protocol::pubsub::simple_request("items", &node, &[], None);
    // (Prosody: <forbidden/>; ejabberd: <not-allowed/> with <closed-node/>, as XEP-0060 has it.)
    match bob.iq(&Jid::from(bare("alice@example.org")), "get", items).await {
        Err(ClientError::Stanza(e)) => {
            assert!(matches!(e.defined_condition, DefinedCondition::Forbidden | DefinedCondition::NotAllowed), "{e:?}")
        }
        other => panic!("bob read alice's vault node: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_kept_by_another_mls_service_gives_a_new_device_the_history_and_the_delivery_service_holds_none_of_it() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let keeper = Component::start_with(&prosody.other_component_address(), OTHER_COMPONENT, OTHER_SECRET, "");
    let elsewhere = Location::Service(Jid::new(OTHER_COMPONENT).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let setup = prosody.client("alice", "setup").await;
    let vault = Vault::create(&setup, elsewhere.clone(), "alice's passphrase", FAST).await.unwrap();
    set_location(&setup, &elsewhere).await.unwrap();
    let (_alice, _bob, group, sent) = group_with_history(&prosody, &dir, vault).await;

    assert_eq!(new_device_reads(&prosody, &dir, &group, "new").await, (elsewhere, sent));
    assert_eq!(vault_rows(&component, "alice@example.org"), 0, "the delivery service keeps none of it");
    assert!(vault_rows(&keeper, "alice@example.org") > 3, "the key record, snapshots, sent copies and backups");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_vault_from_the_service_to_pep_and_back_loses_nothing() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let setup = prosody.client("alice", "setup").await;
    let vault = Vault::create(&setup, &service(), "alice's passphrase", FAST).await.unwrap();
    let (alice, _bob, group, sent) = group_with_history(&prosody, &dir, vault).await;
    let mut vault = Vault::open(&setup, &service(), "alice's passphrase").await.unwrap();
    backup_device(&vault, &setup, alice.device()).await.unwrap();
    let before = vault.digest(&setup).await.unwrap();
    let rows = vault_rows(&component, "alice@example.org");
    assert!(rows > 3, "keys, snapshots, sent copies and a backup: {rows}");

    // To PEP: same digest, nothing left at the service, the record says PEP.
    assert_eq!(vault.move_to(&setup, Location::Pep).await.unwrap(), before);
    assert_eq!(vault_rows(&component, "alice@example.org"), 0);
    assert_eq!(location(&setup, &service()).await.unwrap(), Location::Pep);
    let reopened = Vault::open(&setup, &service(), "alice's passphrase").await.unwrap();
    assert_eq!(reopened.location(), &Location::Pep);
    assert_eq!(reopened.digest(&setup).await.unwrap(), before);
    assert_eq!(new_device_reads(&prosody, &dir, &group, "second").await, (Location::Pep, sent.clone()));

    // And back: the same rows again, no vault node left in PEP.
    assert_eq!(vault.move_to(&setup, Location::Service(service())).await.unwrap(), before);
    assert_eq!(vault_rows(&component, "alice@example.org"), rows);
    assert_eq!(vault_nodes(&setup).await, Vec::<String>::new());
    assert_eq!(location(&setup, &service()).await.unwrap(), Location::Service(service()));
    assert_eq!(new_device_reads(&prosody, &dir, &group, "third").await, (Location::Service(service()), sent));
    // A move to where the vault is already is refused, changing nothing.
    assert!(matches!(vault.move_to(&setup, Location::Service(service())).await, Err(VaultError::Exists)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_record_in_pep_changes_by_compare_and_swap_and_outlives_an_abandoned_claim() {
    let prosody = Prosody::start();
    let laptop = prosody.client("alice", "laptop").await;
    let phone = prosody.client("alice", "phone").await;
    Vault::create(&laptop, Location::Pep, "pass", FAST).await.unwrap();
    assert!(matches!(Vault::create(&phone, Location::Pep, "other", FAST).await, Err(VaultError::Exists)));
    let mut a = Vault::open_at(&laptop, Location::Pep, Unlock::Passphrase("pass")).await.unwrap();
    let mut b = Vault::open_at(&phone, Location::Pep, Unlock::Passphrase("pass")).await.unwrap();
    a.put(&laptop, "device/laptop/0", 0, b"state").await.unwrap();

    // Two devices change the passphrase from the same version: one wins.
    let (ra, rb) = tokio::join!(a.change_passphrase(&laptop, "by laptop", FAST), b.change_passphrase(&phone, "by phone", FAST));
    let winner = match (&ra, &rb) {
        (Ok(()), Err(VaultError::Conflict(name, 2))) if name == "keys" => "by laptop",
        (Err(VaultError::Conflict(name, 2)), Ok(())) if name == "keys" => "by phone",
        other => panic!("exactly one change must win: {other:?}"),
    };
    let loser = if winner == "by laptop" { "by phone" } else { "by laptop" };
    assert!(matches!(Vault::open_at(&laptop, Location::Pep, Unlock::Passphrase(loser)).await, Err(VaultError::WrongPassphrase)));
    let mut c = Vault::open_at(&laptop, Location::Pep, Unlock::Passphrase(winner)).await.unwrap();
    assert_eq!(c.get(&laptop, "device/laptop/0").await.unwrap(), Some((1, b"state".to_vec())));

    // A writer that claimed version 3 and died: the next change waits out
    // the grace, then claims version 4; readers skip the empty claim.
    laptop.iq(&Jid::from(bare("alice@example.org")), "set", create_private_node(&pep_keys_node(3))).await.unwrap();
    let started = std::time::Instant::now();
    c.change_passphrase(&laptop, "after the claim", FAST).await.unwrap();
    assert!(started.elapsed() >= xmpp_mls::client::CLAIM_GRACE, "{:?}", started.elapsed());
    let d = Vault::open_at(&phone, Location::Pep, Unlock::Passphrase("after the claim")).await.unwrap();
    assert_eq!(d.get(&phone, "device/laptop/0").await.unwrap(), Some((1, b"state".to_vec())));
    let nodes = vault_nodes(&laptop).await;
    let claims: Vec<&str> = nodes.iter().filter_map(|n| n.strip_prefix(&format!("{PEP_KEYS_NODE}/"))).collect();
    assert_eq!(claims, vec!["1", "2", "3", "4"]);
}
