//! The vault end to end through Prosody: compare-and-swap blobs, quotas,
//! owner-only access, passphrases, and recovery of a wiped device.

mod common;

use std::time::Duration;

use common::db::StoreDb;
use common::{bare, bump_counter, expect, member, COMPONENT, Component, Prosody, FAST};
use xmpp_mls::client::{
    backed_up_devices, backup_device, request_enrollment, restore_device, ClientError, Device, GroupClient, GroupEvent,
    Session, Unreadable, Vault, VaultError,
};
use xmpp_mls::protocol::vault::VaultRequest;
use xmpp_mls::store_params;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::stanza_error::DefinedCondition;


fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

fn condition(e: VaultError) -> (DefinedCondition, Option<String>) {
    match e {
        VaultError::Client(ClientError::Stanza(s)) => (s.defined_condition, s.other.map(|o| o.name().to_owned())),
        other => panic!("expected a stanza error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_compare_and_swap_within_quota_for_their_owner_only() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[vault]\nmax_blob_size = 1000\nquota_bytes = 3000\nmax_blobs = 4");
    let alice = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let vault = Vault::create(&alice, &service(), "correct horse", FAST).await.unwrap();
    assert!(matches!(Vault::create(&alice, &service(), "again", FAST).await, Err(VaultError::Exists)));

    assert_eq!(vault.put(&alice, "notes", 0, b"first").await.unwrap(), 1);
    assert_eq!(vault.put(&alice, "notes", 1, b"second").await.unwrap(), 2);
    match vault.put(&alice, "notes", 1, b"stale").await {
        Err(VaultError::Conflict(name, current)) => assert_eq!((name.as_str(), current), ("notes", 2)),
        other => panic!("a stale write must lose: {other:?}"),
    }
    assert_eq!(vault.get(&alice, "notes").await.unwrap(), Some((2, b"second".to_vec())));
    assert_eq!(versions(&vault, &alice).await, vec![("notes".to_string(), 2)]);

    let big = vec![7u8; 1100];
    assert_eq!(condition(vault.put(&alice, "big", 0, &big).await.unwrap_err()).1.as_deref(), Some("blob-too-big"));
    vault.put(&alice, "a", 0, &[1u8; 900]).await.unwrap();
    vault.put(&alice, "b", 0, &[1u8; 900]).await.unwrap();
    let over = condition(vault.put(&alice, "c", 0, &[1u8; 900]).await.unwrap_err());
    assert_eq!(over, (DefinedCondition::PolicyViolation, Some("quota-exceeded".into())));

    // bob cannot read, list or write alice's vault.
    let at = xmpp_mls::client::directory_jid(&bare("alice@example.org"), &service());
    for (type_, req) in [
        ("get", VaultRequest::Get { name: "notes".into() }),
        ("get", VaultRequest::List { max: None, cursor: xmpp_mls::protocol::mam::Cursor::First }),
        ("set", VaultRequest::Put { name: "notes".into(), if_version: 2, data: vec![0] }),
    ] {
        match bob.iq(&at, type_, req.to_element()).await {
            Err(ClientError::Stanza(e)) => assert_eq!(e.defined_condition, DefinedCondition::Forbidden),
            other => panic!("bob got {other:?}"),
        }
    }
    // A wrong passphrase opens nothing and changes nothing.
    let keys_before = raw_keys(&alice).await;
    assert!(matches!(Vault::open(&alice, &service(), "wrong horse").await, Err(VaultError::WrongPassphrase)));
    assert_eq!(raw_keys(&alice).await, keys_before);
    vault.delete(&alice, "notes", 2).await.unwrap();
    assert_eq!(vault.get(&alice, "notes").await.unwrap(), None);
}

/// Every blob's name and version, in name order.
async fn versions(vault: &Vault, session: &Session) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for name in vault.list(session).await.unwrap() {
        let (version, _) = vault.get(session, &name).await.unwrap().unwrap();
        out.push((name, version));
    }
    out
}

async fn raw_keys(session: &Session) -> minidom::Element {
    let at = xmpp_mls::client::directory_jid(&session.jid().to_bare(), &service());
    session.iq(&at, "get", VaultRequest::Get { name: "keys".into() }.to_element()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_passphrase_rewraps_and_rotation_reseals() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let alice = prosody.client("alice", "laptop").await;
    let mut vault = Vault::create(&alice, &service(), "old pass", FAST).await.unwrap();
    for i in 0..3 {
        vault.put(&alice, &format!("blob{i}"), 0, format!("secret {i}").as_bytes()).await.unwrap();
    }
    let versions_before = versions(&vault, &alice).await;
    vault.change_passphrase(&alice, "new pass", FAST).await.unwrap();
    assert_eq!(versions(&vault, &alice).await, versions_before, "only the keys were rewritten");
    assert!(matches!(Vault::open(&alice, &service(), "old pass").await, Err(VaultError::WrongPassphrase)));
    let mut reopened = Vault::open(&alice, &service(), "new pass").await.unwrap();
    assert_eq!(reopened.get(&alice, "blob1").await.unwrap().unwrap().1, b"secret 1");

    reopened.rotate(&alice, Some("new pass")).await.unwrap();
    assert_eq!(reopened.key_count(), 1);
    let after = Vault::open(&alice, &service(), "new pass").await.unwrap();
    for (i, (name, version)) in versions(&after, &alice).await.into_iter().enumerate() {
        assert_eq!(version, 2, "{name} re-sealed under the new key");
        assert_eq!(after.get(&alice, &name).await.unwrap().unwrap().1, format!("secret {i}").as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_device_restores_from_the_vault_and_catches_up() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "d").await;
    let mut bob = member(&prosody, &dir, "bob", "d").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    alice.send_body(&group, "before the backup").await.unwrap();
    expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;

    let vault = Vault::create(&bob.session, &service(), "bob's passphrase", FAST).await.unwrap();
    let first = backup_device(&vault, &bob.session, bob.device()).await.unwrap();
    assert_eq!((first.new_pieces, first.size), (first.pieces, bob.device().snapshot().unwrap().len()), "{first:?}");
    let again = backup_device(&vault, &bob.session, bob.device()).await.unwrap();
    assert_eq!((again.pieces, again.new_pieces), (first.pieces, 0), "nothing changed, nothing but the manifest written");
    // A message changes some of bob's state: the backup uploads those pieces
    // only. Where the pieces are cut depends on the keys in the state, and a
    // row that changes near the start of a table moves every page after it:
    // a third of the pieces were new in most runs here, once all of them. So
    // over three messages, each backing up at least one new piece, fewer
    // than all pieces and octets are written.
    let (mut next, mut new, mut pieces, mut written) = (first, 0, 0, 0);
    for round in 0..3 {
        alice.send_body(&group, &format!("between two backups, {round}")).await.unwrap();
        expect(&mut bob, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
        next = backup_device(&vault, &bob.session, bob.device()).await.unwrap();
        eprintln!("backups: {first:?}, then {next:?}");
        assert!(next.new_pieces >= 1, "{next:?}");
        (new, pieces, written) = (new + next.new_pieces, pieces + next.pieces, written + next.written);
    }
    assert!(new < pieces, "{new} new pieces of {pieces}");
    assert!(written < 3 * first.written, "{written} octets written after {first:?}");
    let device_id = bob.device().id().to_owned();

    // bob's device loses its state; alice goes on, with a new epoch.
    bob.session.close().await;
    std::fs::remove_file(dir.path().join("bob-d.sqlite3")).unwrap();
    alice.send_body(&group, "while bob is gone").await.unwrap();
    alice.update(&group).await.unwrap();
    alice.send_body(&group, "after a new epoch").await.unwrap();

    // With only his password and passphrase, bob restores and catches up.
    let session = prosody.client("bob", "d").await;
    let vault = Vault::open(&session, &service(), "bob's passphrase").await.unwrap();
    assert_eq!(backed_up_devices(&vault, &session).await.unwrap(), vec![device_id.clone()]);
    let path = dir.path().join("bob-restored.sqlite3");
    restore_device(&vault, &session, &device_id, &path).await.unwrap();
    let device = Device::open(&path, &bare("bob@example.org")).unwrap();
    assert_eq!(device.id(), device_id);
    let mut bob = GroupClient::start(session, device, service()).await.unwrap();
    bob.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    let mut got = Vec::new();
    while let Some(e) = bob.next_event(Duration::from_millis(500)).await.unwrap() {
        if let GroupEvent::Message { content, .. } = e {
            got.push(content.body().unwrap());
        }
    }
    assert_eq!(got, vec!["while bob is gone", "after a new epoch"]);
    let names = vault.list_prefix(&bob.session, &format!("device/{device_id}/")).await.unwrap();
    assert_eq!(names.len(), next.pieces + 1, "the pieces of the last backup and its manifest, no stale piece: {names:?}");
    assert_eq!(bob.epoch_check(&group).unwrap(), alice.epoch_check(&group).unwrap());
    bob.send_body(&group, "I'm back").await.unwrap();
    let back = expect(&mut alice, "message", |e| matches!(e, GroupEvent::Message { .. })).await;
    assert!(matches!(back, GroupEvent::Message { content, .. } if content.body().as_deref() == Some("I'm back")));
}

/// alice (who keeps `keep` epochs of snapshots) and bob talk over three
/// epochs; then a brand-new device of alice's reads the history.
async fn new_device_reads_history(keep: u64) -> (Vec<(String, String, u64)>, xmpp_mls::client::History) {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "d").await;
    let mut bob = member(&prosody, &dir, "bob", "d").await;
    let vault = Vault::create(&alice.session, &service(), "alice's passphrase", FAST).await.unwrap();
    alice.attach_vault(vault, keep);
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    let mut sent = Vec::new();
    for round in 0..3u64 {
        for who in ["alice", "bob"] {
            let text = format!("{who} {round}");
            let client = if who == "alice" { &mut alice } else { &mut bob };
            client.send_body(&group, &text).await.unwrap();
            expect(client, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
            sent.push((format!("{who}@example.org"), text, round + 1));
        }
        if round < 2 {
            bob.update(&group).await.unwrap(); // a new epoch between rounds
            expect(&mut alice, "bob's commit", |e| matches!(e, GroupEvent::Epoch { .. })).await;
        }
    }
    // A new device of alice's, never in the group: her password and passphrase only.
    let session = prosody.client("alice", "new").await;
    let vault = Vault::open(&session, &service(), "alice's passphrase").await.unwrap();
    let device = Device::create(&dir.path().join("alice-new.sqlite3"), bare("alice@example.org"), None).unwrap();
    let mut new = GroupClient::start(session, device, service()).await.unwrap();
    let history = new.read_history(&group, &vault).await.unwrap();
    // At rest and in the log: public keys yes (the scan works), but no
    // plaintext, passphrase or private key.
    assert!(!common::found_in(&component, alice.device().signature_key()).is_empty());
    let mut secrets: Vec<(String, Vec<u8>)> = sent.iter().map(|(_, text, _)| (text.clone(), text.clone().into_bytes())).collect();
    secrets.push(("passphrase".into(), b"alice's passphrase".to_vec()));
    for client in [&alice, &bob] {
        let pair = serde_json::to_value(client.device().signer()).unwrap();
        let private: Vec<u8> = serde_json::from_value(pair["private"].clone()).unwrap();
        assert_eq!(private.len(), 32, "an Ed25519 private key");
        secrets.push((format!("{} private key", client.device().account()), private));
    }
    for (name, secret) in secrets {
        assert_eq!(common::found_in(&component, &secret), Vec::<String>::new(), "{name}");
    }
    (sent, history)
}

/// A brand-new device of alice's reads `group`'s history from `vault`:
/// exactly `expected`, nothing unreadable.
async fn a_new_device_reads(dir: &tempfile::TempDir, session: Session, vault: &Vault, group: &BareJid, expected: &[(String, String, u64)]) {
    let device = Device::create(&dir.path().join("alice-new.sqlite3"), bare("alice@example.org"), None).unwrap();
    let mut new = GroupClient::start(session, device, service()).await.unwrap();
    let history = new.read_history(group, vault).await.unwrap();
    assert_eq!(read(&history), expected);
    assert!(history.unreadable.is_empty(), "{:?}", history.unreadable);
}

fn read(history: &xmpp_mls::client::History) -> Vec<(String, String, u64)> {
    history.entries.iter().map(|h| (h.account.to_string(), h.content.body().unwrap(), h.epoch)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_new_device_reads_three_epochs_of_history_own_messages_included() {
    let (sent, history) = new_device_reads_history(10).await;
    assert_eq!(read(&history), sent, "every message since alice joined, hers included, in order");
    assert!(history.unreadable.is_empty(), "{:?}", history.unreadable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_epoch_kept_a_new_device_reads_that_epoch_and_is_told_why_not_the_rest() {
    let (sent, history) = new_device_reads_history(1).await;
    let last_epoch: Vec<_> = sent.iter().filter(|(_, _, e)| *e == 3).cloned().collect();
    assert_eq!(read(&history), last_epoch);
    let why: Vec<_> = history.unreadable.iter().map(|(_, epoch, why)| (*epoch, why.clone())).collect();
    assert_eq!(why, vec![(1, Unreadable::NoSnapshot), (1, Unreadable::NoSnapshot), (2, Unreadable::NoSnapshot), (2, Unreadable::NoSnapshot)]);
}

/// The `data` of the vault row `name` in the component's store.
fn blob_data(store: &StoreDb, name: &str) -> Vec<u8> {
    store.one("SELECT data FROM vault WHERE name = ?1", store_params![name])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_and_the_passphrase_change_rewrites_one_blob() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let alice = prosody.client("alice", "laptop").await;
    let mut vault = Vault::create(&alice, &service(), "old", FAST).await.unwrap();
    vault.put(&alice, "a", 0, b"alpha v1").await.unwrap();
    vault.put(&alice, "b", 0, b"beta").await.unwrap();
    let store = component.db();
    let v1 = blob_data(&store, "a");
    vault.put(&alice, "a", 1, b"alpha v2").await.unwrap();

    // An old version replayed under the current version number.
    store.execute("UPDATE vault SET data = ?1 WHERE name = 'a'", store_params![v1]);
    assert!(matches!(vault.get(&alice, "a").await, Err(VaultError::Corrupt(_))), "replay detected");
    // A blob moved to another name.
    store.execute("UPDATE vault SET data = (SELECT data FROM vault WHERE name = 'b') WHERE name = 'a'", &[]);
    assert!(matches!(vault.get(&alice, "a").await, Err(VaultError::Corrupt(_))), "move detected");
    // A flipped byte.
    let mut b = blob_data(&store, "b");
    let last = b.len() - 1;
    b[last] ^= 1;
    store.execute("UPDATE vault SET data = ?1 WHERE name = 'b'", store_params![b]);
    assert!(matches!(vault.get(&alice, "b").await, Err(VaultError::Corrupt(_))), "flip detected");

    // A passphrase change writes exactly one blob: the keys.
    let versions = |s: &StoreDb| -> Vec<(String, i64)> {
        s.with(|c| c.query_map("SELECT name, version FROM vault ORDER BY name", &[], |r| Ok((r.get(0)?, r.get(1)?))))
    };
    let before = versions(&store);
    vault.change_passphrase(&alice, "new", FAST).await.unwrap();
    let after = versions(&store);
    let changed: Vec<_> = before.iter().zip(&after).filter(|(x, y)| x != y).map(|(x, _)| x.0.clone()).collect();
    assert_eq!(changed, vec!["keys".to_string()]);
    assert!(matches!(Vault::open(&alice, &service(), "old").await, Err(VaultError::WrongPassphrase)));
    assert!(Vault::open(&alice, &service(), "new").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_updating_concurrently_lose_no_update() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let laptop = prosody.client("alice", "laptop").await;
    let phone = prosody.client("alice", "phone").await;
    let vault = Vault::create(&laptop, &service(), "pass", FAST).await.unwrap();
    vault.put(&laptop, "counter", 0, &0u64.to_be_bytes()).await.unwrap();
    let other = Vault::open(&phone, &service(), "pass").await.unwrap();
    let (c1, c2) = tokio::join!(bump_counter(&vault, &laptop, 100), bump_counter(&other, &phone, 100));
    let (_, data) = vault.get(&laptop, "counter").await.unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(data.try_into().unwrap()), 200, "no update lost ({} conflicts retried)", c1 + c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_blob_is_overwritten_on_disk() {
    let prosody = Prosody::start();
    let mut component = Component::start(&prosody, "");
    let alice = prosody.client("alice", "laptop").await;
    let at = xmpp_mls::client::directory_jid(&bare("alice@example.org"), &service());
    let put = |name: &str, data: &[u8]| VaultRequest::Put { name: name.into(), if_version: 0, data: data.to_vec() }.to_element();
    let (kept, erased) = (b"KEPT-BLOB-0123456789".repeat(8), b"ERASED-BLOB-9876543210".repeat(8));
    alice.iq(&at, "set", put("kept", &kept)).await.unwrap();
    alice.iq(&at, "set", put("erased", &erased)).await.unwrap();
    alice.iq(&at, "set", VaultRequest::Delete { name: "erased".into(), if_version: 1 }.to_element()).await.unwrap();
    // A clean stop checkpoints the WAL into the database file.
    assert_eq!(component.terminate(), Some(0));
    if component.db().is_postgres() {
        return; // PostgreSQL: its files are the server's; secure_delete is SQLite's.
    }
    let file = std::fs::read(component.store_path()).unwrap();
    let has = |n: &[u8]| file.windows(n.len()).any(|w| w == n);
    assert!(has(&kept), "the live blob is in the file (the scan works)");
    assert!(!has(&erased[..22]), "secure_delete overwrote the deleted blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_copies_are_written_once_and_folded_into_chunks_within_the_blob_limit() {
    let max_blob = 8192;
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, &format!("[vault]\nmax_blob_size = {max_blob}"));
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "d").await;
    let vault = Vault::create(&alice.session, &service(), "alice's passphrase", FAST).await.unwrap();
    alice.attach_vault(vault, 10);
    let group = alice.create().await.unwrap();
    let epoch = alice.epoch(&group).unwrap();
    // 30 messages of 1000 octets in one epoch: several blobs' worth.
    let sent: Vec<String> = (0..30).map(|i| format!("{i:04}{}", "x".repeat(996))).collect();
    for body in &sent {
        alice.send_body(&group, &body).await.unwrap();
        expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
    }

    // Each copy was written once as sent/<group>/<epoch>/<device>/<n>;
    // whenever the next would not fit in a chunk with the unfolded ones,
    // those were written once as the chunk <first>-<last> and deleted.
    // A copy (the envelope of 1,000 octets of body) takes about 1,300
    // octets, a blob 8,144 of plaintext: 6 copies a chunk.
    let session = prosody.client("alice", "new").await;
    let vault = Vault::open(&session, &service(), "alice's passphrase").await.unwrap();
    let prefix = format!("sent/{}/{epoch}/{}/", group.node().unwrap(), alice.device().id());
    let mut blobs = versions(&vault, &session).await;
    blobs.retain(|(n, _)| n.starts_with(&prefix));
    let mut expected: Vec<(String, u64)> =
        ["0-5", "6-11", "12-17", "18-23", "24", "25", "26", "27", "28", "29"].iter().map(|p| (format!("{prefix}{p}"), 1)).collect();
    expected.sort();
    assert_eq!(blobs, expected, "every blob written once");
    for (name, _) in &blobs {
        let (_, plaintext) = vault.get(&session, name).await.unwrap().unwrap();
        assert!(plaintext.len() + 48 <= max_blob, "{name}: {} octets", plaintext.len());
    }

    // A brand-new device of alice's reads every one of them.
    let own: Vec<(String, String, u64)> = sent.iter().map(|b| ("alice@example.org".to_string(), b.clone(), epoch)).collect();
    a_new_device_reads(&dir, session, &vault, &group, &own).await;
}

/// The measure of "backups that cost what changed": 5,000 own
/// messages in one epoch. Each costs its copy twice (alone, then in a
/// chunk) plus seals: the octets written grow linearly, no blob is over
/// the limit, and a new device reads all 5,000 back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_own_messages_in_one_epoch_cost_linear_octets_and_all_read_back() {
    const N: usize = 5000;
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[limits]\naccount_rate = 100000\naccount_burst = 100000");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "d").await;
    let vault = Vault::create(&alice.session, &service(), "alice's passphrase", FAST).await.unwrap();
    let max_blob = vault.max_plaintext() + 48;
    alice.attach_vault(vault, 10);
    let group = alice.create().await.unwrap();
    let epoch = alice.epoch(&group).unwrap();
    let mut marks = vec![alice.vault().unwrap().written()];
    let sent: Vec<String> = (0..N).map(|i| format!("own message {i:04}")).collect();
    for (i, body) in sent.iter().enumerate() {
        alice.send_body(&group, body).await.unwrap();
        expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
        if (i + 1) % 1000 == 0 {
            marks.push(alice.vault().unwrap().written());
        }
    }
    assert_eq!(alice.epoch(&group).unwrap(), epoch, "one epoch");

    let session = prosody.client("alice", "new").await;
    let vault = Vault::open(&session, &service(), "alice's passphrase").await.unwrap();
    let prefix = format!("sent/{}/{epoch}/{}/", group.node().unwrap(), alice.device().id());
    // (octets of plaintext, blobs) of the chunks and of the copies alone.
    let (mut chunks, mut singles) = ((0, 0), (0, 0));
    for name in vault.list(&session).await.unwrap() {
        let (version, plaintext) = vault.get(&session, &name).await.unwrap().unwrap();
        assert!(plaintext.len() + 48 <= max_blob, "{name}: {} octets", plaintext.len());
        if let Some(part) = name.strip_prefix(&prefix) {
            assert_eq!(version, 1, "{name} written once");
            let kind = if part.contains('-') { &mut chunks } else { &mut singles };
            *kind = (kind.0 + plaintext.len() as u64, kind.1 + 1);
        }
    }
    // Folded 64 at a time: 78 chunks, and the last 8 copies alone.
    assert_eq!((chunks.1, singles.1), (78, 8));
    // Every copy written once alone, every chunk once; 48 octets of seal each.
    let copies = chunks.0 + singles.0;
    let written = marks[5] - marks[0];
    assert_eq!(written, copies + 48 * N as u64 + chunks.0 + 48 * 78);
    let per_thousand: Vec<u64> = marks.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "5,000 own messages: a copy {} octets, {:.1} octets written per message; per thousand: {per_thousand:?}",
        copies / N as u64,
        written as f64 / N as f64
    );
    // Linear: each thousand costs the same, give or take the one chunk that falls in it or not.
    let (low, high) = (per_thousand.iter().min().unwrap(), per_thousand.iter().max().unwrap());
    assert!(high - low <= chunks.0 / 78 + 48 + 64, "{per_thousand:?}");

    let own: Vec<(String, String, u64)> = sent.iter().map(|b| ("alice@example.org".to_string(), b.clone(), epoch)).collect();
    a_new_device_reads(&dir, session, &vault, &group, &own).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_of_an_account_keep_their_own_sent_copies_and_a_new_device_reads_both() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut laptop = member(&prosody, &dir, "alice", "laptop").await;
    let mut phone = member(&prosody, &dir, "alice", "phone").await;
    let vault = Vault::create(&laptop.session, &service(), "pass", FAST).await.unwrap();
    laptop.attach_vault(vault, 10);
    let vault = Vault::open(&phone.session, &service(), "pass").await.unwrap();
    phone.attach_vault(vault, 10);
    let group = laptop.create().await.unwrap();
    laptop.add(&group, &[bare("alice@example.org")]).await.unwrap(); // the phone
    expect(&mut phone, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    let epoch = laptop.epoch(&group).unwrap();

    // Turn by turn: each device writes its own copies, one blob each.
    let mut sent = Vec::new();
    for i in 0..10 {
        for (name, client) in [("laptop", &mut laptop), ("phone", &mut phone)] {
            let body = format!("{name} {i}");
            client.send_body(&group, &body).await.unwrap();
            expect(client, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
            sent.push(("alice@example.org".to_string(), body, epoch));
        }
    }
    let session = prosody.client("alice", "new").await;
    let vault = Vault::open(&session, &service(), "pass").await.unwrap();
    let prefix = format!("sent/{}/{epoch}/", group.node().unwrap());
    let mut chunks = versions(&vault, &session).await;
    chunks.retain(|(n, _)| n.starts_with(&prefix));
    let mut expected: Vec<(String, u64)> =
        [&laptop, &phone].iter().flat_map(|c| (0..10).map(|n| (format!("{prefix}{}/{n}", c.device().id()), 1))).collect();
    expected.sort();
    assert_eq!(chunks, expected, "one blob per message and device, each written once");
    let snapshot = format!("history/{}/{epoch}", group.node().unwrap());
    assert_eq!(vault.get(&session, &snapshot).await.unwrap().unwrap().0, 1, "written once, though both devices reached the epoch");
    assert_eq!(vault.list_prefix(&session, &snapshot).await.unwrap(), vec![snapshot.clone()], "a whole name as prefix lists it");
    a_new_device_reads(&dir, session, &vault, &group, &sent).await;
}

/// The `keys` row of `account`'s vault in the component's store: (version, data).
fn stored_keys(component: &Component, account: &str) -> (i64, Vec<u8>) {
    component.db().two("SELECT version, data FROM vault WHERE account = ?1 AND name = 'keys'", store_params![account])
}

/// The service (here: the test writing its store) serves `keys` as `version` with `data`.
fn serve_keys(component: &Component, account: &str, version: i64, data: &[u8]) {
    let sql = "UPDATE vault SET version = ?2, data = ?3 WHERE account = ?1 AND name = 'keys'";
    component.db().execute(sql, store_params![account, version, data]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_refuses_a_rolled_back_keys_record() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut vault = Vault::create(&alice.session, &service(), "pass", FAST).await.unwrap();
    alice.open_vault(Some("pass")).await.unwrap();
    let (first_version, first_keys) = stored_keys(&component, "alice@example.org");
    vault.rotate(&alice.session, Some("pass")).await.unwrap();
    alice.open_vault(Some("pass")).await.unwrap();
    let (rotated, rotated_keys) = stored_keys(&component, "alice@example.org");
    assert!(rotated > first_version);

    // The record from before the rotation, as it was then, and under a
    // forged higher version: refused (an older version; an older key).
    serve_keys(&component, "alice@example.org", first_version, &first_keys);
    let refused = alice.open_vault(Some("pass")).await.unwrap_err().to_string();
    assert_eq!(refused, format!("the vault's keys record went back to version {first_version} (key 1) after version {rotated} (key 2)"));
    serve_keys(&component, "alice@example.org", rotated + 5, &first_keys);
    let refused = alice.open_vault(Some("pass")).await.unwrap_err().to_string();
    assert_eq!(refused, format!("the vault's keys record went back to version {} (key 1) after version {rotated} (key 2)", rotated + 5));
    // The mark stays: the current record opens, and then the old one is
    // still refused.
    serve_keys(&component, "alice@example.org", rotated, &rotated_keys);
    alice.open_vault(Some("pass")).await.unwrap();
    serve_keys(&component, "alice@example.org", first_version, &first_keys);
    assert!(alice.open_vault(Some("pass")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolled_by_key_reads_the_history_without_the_passphrase_until_its_key_is_removed() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "d").await;
    let vault = Vault::create(&alice.session, &service(), "alice's passphrase", FAST).await.unwrap();
    alice.attach_vault(vault, 10);
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    let mut sent = Vec::new();
    for who in ["alice", "bob"] {
        let client = if who == "alice" { &mut alice } else { &mut bob };
        client.send_body(&group, &format!("{who} writes")).await.unwrap();
        expect(client, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await;
        sent.push((format!("{who}@example.org"), format!("{who} writes"), 1));
    }

    // A new tablet asks to be enrolled; the laptop, given the code, enrolls
    // it (a mistyped code enrolls nothing). No passphrase is typed.
    let session = prosody.client("alice", "tablet").await;
    let device = Device::create(&dir.path().join("alice-tablet.sqlite3"), bare("alice@example.org"), None).unwrap();
    let (tablet_id, key) = (device.id().to_owned(), device.vault_key().unwrap());
    let code = request_enrollment(&session, &service(), &tablet_id, &key).await.unwrap();
    assert!(matches!(Vault::open_with_key(&session, &service(), &key).await, Err(VaultError::NotEnrolled)));
    let mut laptop = Vault::open(&alice.session, &service(), "alice's passphrase").await.unwrap();
    let keys_before = raw_keys(&alice.session).await;
    assert!(matches!(laptop.enroll(&alice.session, "aaaa-bbbb-cccc-dddd").await, Err(VaultError::NoSuchEnrollment)));
    assert_eq!(raw_keys(&alice.session).await, keys_before, "a wrong code changes nothing");
    assert_eq!(laptop.enroll(&alice.session, &code.to_uppercase().replace('-', " ")).await.unwrap(), tablet_id);
    assert_eq!(laptop.enrolled(), vec![tablet_id.clone()]);
    assert_eq!(laptop.list(&alice.session).await.unwrap().iter().filter(|n| n.starts_with("enroll/")).count(), 0);

    // The tablet opens the vault with its own key and reads the history.
    let kept = Vault::open_with_key(&session, &service(), &key).await.unwrap();
    let mut tablet = GroupClient::start(session, device, service()).await.unwrap();
    let history = tablet.read_history(&group, &kept).await.unwrap();
    assert_eq!(read(&history), sent);
    assert!(history.unreadable.is_empty(), "{:?}", history.unreadable);

    // Its key removed (the data key replaced, every blob re-sealed), the
    // tablet opens nothing: not the key record, not a blob with what it kept.
    laptop.remove_device(&alice.session, &tablet_id, Some("alice's passphrase")).await.unwrap();
    assert!(matches!(Vault::open_with_key(&tablet.session, &service(), &key).await, Err(VaultError::NotEnrolled)));
    let names = kept.list(&tablet.session).await.unwrap();
    assert!(!names.is_empty());
    for name in names {
        assert!(matches!(kept.get(&tablet.session, &name).await, Err(VaultError::Corrupt(_))), "{name}");
    }
    let reopened = Vault::open(&alice.session, &service(), "alice's passphrase").await.unwrap();
    assert_eq!((reopened.key_count(), reopened.enrolled()), (1, Vec::<String>::new()));
    let history = tablet.read_history(&group, &reopened).await.unwrap();
    assert_eq!(read(&history), sent, "the passphrase still opens everything");
}
