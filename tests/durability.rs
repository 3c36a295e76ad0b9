//! Durability end to end: the component is SIGKILLed during sustained
//! group traffic, and Prosody is restarted under it. A message counts as
//! accepted once its sender has the echo with its stanza-id; every accepted
//! message must be in the archive and reach a catching-up device exactly
//! once, Commits must stay in epoch order, and the store must stay sound.
//! After each restart the sender resends what it saw no echo of
//! (xep/ §Resends): no message is archived twice.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bare, expect, member, reconnect, Component, Kind, Prosody};
use xmpp_mls::client::{GroupClient, GroupEvent};
use xmpp_parsers::jid::BareJid;

const CONFIG: &str = "[limits]\naccount_rate = 1000\naccount_burst = 1000";

/// A small deterministic PRNG (xorshift64*): the seed is printed so that a
/// failing schedule can be replayed with `DURABILITY_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("DURABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("DURABILITY_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// What a device saw: echoes of its own messages (id -> stanza id),
/// refusals, and messages of others (stanza id -> times received).
#[derive(Default)]
struct Seen {
    delivered: HashMap<String, String>,
    refused: BTreeMap<String, usize>,
    received: HashMap<String, usize>,
    bodies: HashMap<String, String>,
}

impl Seen {
    fn record(&mut self, event: GroupEvent) {
        match event {
            GroupEvent::Delivered { id, stanza_id, .. } => {
                self.delivered.insert(id, stanza_id);
            }
            GroupEvent::Refused { error, .. } => *self.refused.entry(error).or_default() += 1,
            GroupEvent::Message { stanza_id, content, .. } => {
                *self.received.entry(stanza_id.clone()).or_default() += 1;
                self.bodies.insert(stanza_id, content.body().unwrap_or_default());
            }
            _ => {}
        }
    }
}

/// Handles whatever `client` has received within `wait`.
async fn drain(client: &mut GroupClient, seen: &mut Seen, wait: Duration) {
    while let Ok(Some(event)) = client.next_event(wait).await {
        seen.record(event);
    }
}

/// Reads `client`'s archive of every group from where it stopped.
async fn catch_up(client: &mut GroupClient, seen: &mut Seen) {
    client.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    drain(client, seen, Duration::from_millis(300)).await;
}

/// (epoch, kind) of every archived handshake, in archive order.
fn archived_handshakes(component: &Component) -> Vec<(i64, String)> {
    let sql = "SELECT epoch, CASE kind WHEN 1 THEN 'commit' ELSE 'proposal' END FROM archive WHERE kind <> 0 ORDER BY pos";
    component.db().with(|c| c.query_map(sql, &[], |r| Ok((r.get(0)?, r.get(1)?))))
}

/// Archive items whose MLS octets another item has too.
fn duplicates(component: &Component) -> i64 {
    component.db().one("SELECT count(*) - count(DISTINCT message) FROM archive", &[])
}

/// Waits until the component connected `times` times in all.
fn wait_connected(component: &Mutex<Component>, times: usize) {
    let connected = || component.lock().unwrap().count_in_log("component connected") >= times;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !connected() {
        assert!(Instant::now() < deadline, "the component did not reconnect");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What `xmpp-mls admin check` finds: SQLite's integrity check ("ok" when
/// sound), or on PostgreSQL, which checks its own pages, the schema.
fn integrity(component: &Component) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(["admin", "--json", "--config"])
        .arg(component.dir.path().join("xmpp-mls.toml"))
        .arg("check")
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    report["integrity"].as_str().map(str::to_owned).unwrap_or_else(|| report.to_string())
}

/// Three devices in one group: alice's laptop sends, bob's phone commits
/// and listens, bob's tablet is offline until the end.
async fn group_of_three(prosody: &Prosody, dir: &tempfile::TempDir) -> (GroupClient, GroupClient, BareJid) {
    let mut alice = member(prosody, dir, "alice", "laptop").await;
    let mut bob = member(prosody, dir, "bob", "phone").await;
    let mut tablet = member(prosody, dir, "bob", "tablet").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[bare("bob@example.org")]).await.unwrap();
    for device in [&mut bob, &mut tablet] {
        expect(device, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    }
    tablet.session.close().await;
    (alice, bob, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_messages_survive_ten_sigkills_during_traffic() {
    const KILLS: usize = 10;
    let prosody = Prosody::start();
    let component = Arc::new(Mutex::new(Component::start(&prosody, CONFIG)));
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = group_of_three(&prosody, &dir).await;

    let mut rng = Rng::new();
    let schedule: Vec<(u64, u64)> = (0..KILLS).map(|_| (300 + rng.below(1200), rng.below(400))).collect();
    let restarts = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (component, restarts) = (component.clone(), restarts.clone());
        std::thread::spawn(move || {
            for (run_ms, down_ms) in schedule {
                std::thread::sleep(Duration::from_millis(run_ms));
                component.lock().unwrap().kill();
                std::thread::sleep(Duration::from_millis(down_ms));
                component.lock().unwrap().restart();
                restarts.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let (mut from_alice, mut at_bob) = (Seen::default(), Seen::default());
    let (mut sent, mut commits_answered, mut resent, mut restarts_seen) = (0, 0, 0, 0);
    while !killer.is_finished() {
        let now = restarts.load(Ordering::SeqCst);
        if now > restarts_seen {
            // Back after a kill: alice sends again what was not echoed.
            restarts_seen = now;
            wait_connected(&component, now + 1);
            resent += alice.resend().await.unwrap();
        }
        sent += 1;
        let _ = alice.send_body(&group, &format!("message {sent}")).await;
        if sent % 10 == 0 {
            // An unanswered Commit is settled from the archive before the next one.
            commits_answered += usize::from(bob.update(&group).await.is_ok());
        }
        drain(&mut alice, &mut from_alice, Duration::from_millis(20)).await;
        drain(&mut bob, &mut at_bob, Duration::from_millis(1)).await;
        if from_alice.refused.keys().any(|e| e.contains("wrong-epoch")) {
            // A Commit's fan-out was lost in a crash: alice catches up.
            let _ = alice.catch_up_all(&mut |_, _, _| {}).await;
            from_alice.refused.retain(|e, _| !e.contains("wrong-epoch"));
        }
    }
    killer.join().unwrap();
    wait_connected(&component, KILLS + 1);
    resent += alice.resend().await.unwrap();
    drain(&mut alice, &mut from_alice, Duration::from_millis(500)).await;
    assert_eq!(alice.unechoed(), 0, "every resend was echoed (or refused)");

    // The store survived the last SIGKILL intact.
    let mut component = Arc::try_unwrap(component).ok().unwrap().into_inner().unwrap();
    component.kill();
    assert_eq!(integrity(&component), "ok");
    component.restart();

    // Commits: one per epoch, in epoch order, with no gap.
    let handshakes = archived_handshakes(&component);
    let epochs: Vec<i64> = handshakes.iter().map(|(e, _)| *e).collect();
    assert_eq!(epochs, (0..handshakes.len() as i64).collect::<Vec<_>>(), "{handshakes:?}");
    assert!(handshakes.iter().all(|(_, k)| k == "commit"));
    assert!(handshakes.len() > commits_answered, "every answered Commit (and the add) is archived");
    assert_eq!(duplicates(&component), 0, "a resent message is archived once");

    // The offline tablet and the live phone get every accepted message once.
    let mut tablet = reconnect(&prosody, &dir, "bob", "tablet").await;
    let mut at_tablet = Seen::default();
    catch_up(&mut tablet, &mut at_tablet).await;
    catch_up(&mut bob, &mut at_bob).await;
    let accepted: HashSet<&String> = from_alice.delivered.values().collect();
    eprintln!(
        "{sent} sent ({resent} resent), {} accepted, refused {:?}; {} Commits ({commits_answered} answered); kills: {KILLS}",
        accepted.len(),
        from_alice.refused,
        handshakes.len()
    );
    assert!(accepted.len() >= KILLS, "traffic flowed between the kills");
    for device in [&at_tablet, &at_bob] {
        for id in &accepted {
            assert_eq!(device.received.get(*id), Some(&1), "accepted message {id}");
        }
        assert!(device.received.values().all(|n| *n == 1), "no message twice");
    }
    let expected: HashMap<&String, String> = from_alice
        .delivered
        .iter()
        .map(|(_, sid)| (sid, at_bob.bodies[sid].clone()))
        .collect();
    for (sid, body) in expected {
        assert_eq!(at_tablet.bodies[sid], body, "both devices decrypt the same plaintext");
    }
    assert_eq!(tablet.epoch_check(&group).unwrap(), bob.epoch_check(&group).unwrap());
    // No plaintext at rest or in the log, crashes or not.
    for body in at_tablet.bodies.values() {
        assert_eq!(common::found_in(&component, body.as_bytes()), Vec::<String>::new(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_restart_bounces_with_an_error_then_traffic_resumes() {
    let mut prosody = Prosody::start();
    let mut component = Component::start(&prosody, CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, bob, group) = group_of_three(&prosody, &dir).await;
    let mut from_alice = Seen::default();

    // While the component is away, the server bounces what alice sends,
    // and the client reports it. ejabberd forgets the domain of a
    // disconnected component and treats it as a remote one, which the
    // fixture (no federation) refuses.
    // A message the server routed before it saw the connection drop is
    // lost with it (never echoed, so never accepted): send until one bounces.
    component.kill();
    let mut sent = Vec::new();
    let refused = loop {
        assert!(sent.len() < 20, "no bounce for {} messages", sent.len());
        sent.push(alice.send_body(&group, "into the void").await.unwrap());
        match alice.next_event(Duration::from_secs(1)).await.unwrap() {
            Some(GroupEvent::Refused { group: g, id, error }) => break (g, id, error),
            _ => continue,
        }
    };
    let error = match prosody.kind {
        Kind::Prosody => "wait/remote-server-timeout (not-connected): Component unavailable",
        Kind::Ejabberd => "auth/forbidden: Access denied by service policy",
    };
    assert_eq!((&refused.0, refused.2.as_str()), (&group, error));
    assert!(sent.contains(&refused.1), "the bounce names a message alice sent");
    component.restart();

    // Traffic, then Prosody dies under it and comes back.
    for i in 0..20 {
        alice.send_body(&group, &format!("before {i}")).await.unwrap();
    }
    drain(&mut alice, &mut from_alice, Duration::from_millis(5)).await;
    let connected = component.count_in_log("component connected");
    prosody.restart();
    let back = Instant::now();
    assert!(component.wait_log("component connected", connected + 1, Duration::from_secs(40)), "{}", component.log());
    eprintln!("component reconnected {:?} after Prosody restarted", back.elapsed());

    let mut alice = reconnect(&prosody, &dir, "alice", "laptop").await;
    drop(bob); // its stream died with Prosody
    let mut bob = reconnect(&prosody, &dir, "bob", "phone").await;
    alice.catch_up_all(&mut |_, _, _| {}).await.unwrap();
    drain(&mut alice, &mut from_alice, Duration::from_millis(300)).await;
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(alice.send_body(&group, &format!("after {i}")).await.unwrap());
    }
    while !after.iter().all(|id| from_alice.delivered.contains_key(id)) {
        let Ok(Some(e)) = alice.next_event(Duration::from_secs(20)).await else { panic!("no echo after the restart") };
        from_alice.record(e);
    }
    let mut at_bob = Seen::default();
    catch_up(&mut bob, &mut at_bob).await;
    for sid in from_alice.delivered.values() {
        assert_eq!(at_bob.received.get(sid), Some(&1), "accepted message {sid} reached bob once");
    }
    let bodies: HashSet<String> = at_bob.bodies.values().cloned().collect();
    assert!((0..5).all(|i| bodies.contains(&format!("after {i}"))), "traffic resumed: {bodies:?}");
    assert_eq!(alice.epoch_check(&group).unwrap(), bob.epoch_check(&group).unwrap());
}
