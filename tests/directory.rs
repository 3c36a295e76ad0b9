//! Accounts' directories end to end through Prosody: device lists (the
//! Authentication Service), KeyPackage uploads, claims, notices, limits.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::mls::{KpOptions, TestSigner};
use common::{bare, COMPONENT, Component, Prosody};
use minidom::Element;
use openmls::prelude::{Ciphersuite, Lifetime};
use openmls_rust_crypto::RustCrypto;
use xmpp_mls::client::{iq_element, ClientError, Device as ClientDevice, Session};
use xmpp_mls::protocol::keypackages::{parse_rejections, Claim, ClaimOutcome, Policy, Rejection};
use xmpp_mls::protocol::notices::Notice;
use xmpp_mls::protocol::pubsub::{Event, NS_EVENT};
use xmpp_mls::protocol::{now, NS_ERRORS};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::{DefinedCondition, StanzaError};

fn service() -> Jid {
    Jid::new(COMPONENT).unwrap()
}

fn stanza_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> StanzaError {
    match r {
        Err(ClientError::Stanza(e)) => *e,
        other => panic!("expected a stanza error, got {other:?}"),
    }
}

/// Waits for the next message carrying `pred`, skipping others.
async fn next_message(session: &mut Session, pred: impl Fn(&Element) -> bool) -> Element {
    loop {
        let ev = session.next_event_within(Duration::from_secs(10)).await.expect("a message in time");
        if ev.name() == "message" && pred(&ev) {
            return ev;
        }
    }
}

fn is_event(m: &Element) -> bool {
    m.has_child("event", NS_EVENT)
}

fn is_notice(m: &Element) -> bool {
    Notice::find(m).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_device_publishes_both_land_and_a_subscriber_sees_both() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let laptop = prosody.client("alice", "laptop").await;
    let phone = prosody.client("alice", "phone").await;
    let mut bob = prosody.client("bob", "phone").await;
    let alice = bare("alice@example.org");
    bob.subscribe_devices(&service(), &alice).await.unwrap();

    let (k1, k2) = (TestSigner::new("alice@example.org"), TestSigner::new("alice@example.org"));
    let (d1, d2) = (k1.device("laptop-1", None), k2.device("phone-2", None));
    let svc = service();
    let (r1, r2) = tokio::join!(laptop.publish_device(&svc, &d1), phone.publish_device(&svc, &d2));
    r1.unwrap();
    r2.unwrap();

    let listed: HashSet<String> =
        bob.devices(&service(), &alice).await.unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(listed, HashSet::from(["laptop-1".to_string(), "phone-2".to_string()]));
    let mut seen = HashSet::new();
    for _ in 0..2 {
        let msg = next_message(&mut bob, is_event).await;
        match Event::parse(msg.get_child("event", NS_EVENT).unwrap()).unwrap() {
            Event::Published { items, .. } => seen.extend(items.into_iter().map(|(id, _)| id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_account_cannot_publish_or_retract_and_nothing_changes() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let alice_s = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let alice = bare("alice@example.org");
    let key = TestSigner::new("alice@example.org");
    alice_s.publish_device(&service(), &key.device("laptop-1", None)).await.unwrap();
    let before = component.db().dump();
    let listed = bob.devices(&service(), &alice).await.unwrap();

    // bob addresses alice's directory: publish a device of his, retract hers.
    let to = xmpp_mls::client::directory_jid(&alice, &service());
    let intruder = TestSigner::new("bob@example.org").device("evil", None);
    let publish = xmpp_mls::protocol::pubsub::publish_request(
        xmpp_mls::protocol::devices::NODE,
        vec![(Some("evil".into()), intruder.to_element())],
    );
    let e = stanza_error(bob.iq(&to, "set", publish).await);
    assert_eq!(e.defined_condition, DefinedCondition::Forbidden);
    let retract = xmpp_mls::protocol::pubsub::simple_request("retract", xmpp_mls::protocol::devices::NODE, &["laptop-1"], None);
    let e = stanza_error(bob.iq(&to, "set", retract).await);
    assert_eq!(e.defined_condition, DefinedCondition::Forbidden);

    assert_eq!(bob.devices(&service(), &alice).await.unwrap(), listed);
    assert_eq!(component.db().dump(), before);
}

/// Uploads `[valid, bad]` and expects the bad one refused with `reason`.
async fn expect_refused(session: &Session, good: &TestSigner, bad: Vec<u8>, reason: Rejection) {
    let e = stanza_error(session.upload_key_packages(&service(), &[good.valid_kp(), bad]).await);
    assert_eq!(e.defined_condition, DefinedCondition::NotAcceptable, "{reason:?}");
    let app = e.other.expect("application condition");
    assert!(app.is("invalid-key-packages", NS_ERRORS));
    assert_eq!(parse_rejections(&app), vec![(1, reason)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_upload_is_refused_with_its_reason_and_nothing_is_stored() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[directory]\ncipher_suites = [1]\nmax_key_package_lifetime_days = 85");
    let session = prosody.client("alice", "laptop").await;
    let alice = TestSigner::new("alice@example.org");
    session.publish_device(&service(), &alice.device("laptop-1", None)).await.unwrap();
    let before = component.db().dump();

    let stranger = TestSigner::new("alice@example.org"); // key not in the list
    let mut bad_signature = alice.valid_kp();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 0x01;
    let t = now() as u64;
    let cases: Vec<(Vec<u8>, Rejection)> = vec![
        (b"garbage, not an MLSMessage".to_vec(), Rejection::Malformed),
        (bad_signature, Rejection::BadSignature),
        (alice.kp(KpOptions { identity: Some("xmpp:bob@example.org".into()), ..Default::default() }), Rejection::ForeignIdentity),
        (stranger.valid_kp(), Rejection::UnknownSignatureKey),
        (alice.kp(KpOptions { lifetime: Some(Lifetime::init(t - 7200, t - 3600)), ..Default::default() }), Rejection::Expired),
        (alice.kp(KpOptions { lifetime: Some(Lifetime::new(100 * 24 * 3600)), ..Default::default() }), Rejection::LifetimeTooLong),
        (
            alice.kp(KpOptions { suite: Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519, ..Default::default() }),
            Rejection::UnsupportedCipherSuite,
        ),
    ];
    for (bad, reason) in cases {
        expect_refused(&session, &alice, bad, reason).await;
        assert_eq!(component.db().dump(), before, "{reason:?} changed the store");
    }
    // Not even base64: refused per package too.
    let to = xmpp_mls::client::directory_jid(&bare("alice@example.org"), &service());
    let items = vec![(None, Element::builder("key-package", "urn:xmpp:mls:0").append("%%%").build())];
    let request = xmpp_mls::protocol::pubsub::publish_request(xmpp_mls::protocol::keypackages::NODE, items);
    let e = stanza_error(session.iq(&to, "set", request).await);
    assert_eq!(parse_rejections(&e.other.unwrap()), vec![(0, Rejection::Malformed)]);
    // A package uploaded twice.
    let kp = alice.valid_kp();
    session.upload_key_packages(&service(), &[kp.clone()]).await.unwrap();
    expect_refused(&session, &alice, kp, Rejection::Duplicate).await;
    assert_eq!(session.key_package_infos(&service()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_claimers_share_twenty_packages_then_the_last_resort_one() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let owner = prosody.client("alice", "laptop").await;
    let alice = TestSigner::new("alice@example.org");
    owner.publish_device(&service(), &alice.device("laptop-1", None)).await.unwrap();
    let mut kps: Vec<Vec<u8>> = (0..20).map(|_| alice.valid_kp()).collect();
    kps.push(alice.last_resort_kp());
    let refs = owner.upload_key_packages(&service(), &kps).await.unwrap();
    let last_resort_ref = refs[20].clone();

    let mut claimers = Vec::new();
    for i in 0..50 {
        claimers.push(prosody.client(&format!("claimer{i}"), "c").await);
    }
    let (svc, any) = (service(), Claim::default());
    let claims = claimers.iter().map(|s| s.claim(&svc, &alice.account, &any));
    let results = futures::future::join_all(claims).await;
    let mut handed: HashMap<String, usize> = HashMap::new();
    for r in results {
        let outcomes = r.expect("claim answered");
        let [ClaimOutcome::Claimed { kp_ref, last_resort, device, .. }] = outcomes.as_slice() else {
            panic!("one package per claim: {outcomes:?}");
        };
        assert_eq!(device, "laptop-1");
        assert_eq!(*last_resort, *kp_ref == last_resort_ref);
        *handed.entry(kp_ref.clone()).or_default() += 1;
    }
    let ordinary: Vec<_> = handed.iter().filter(|(r, _)| **r != last_resort_ref).collect();
    assert_eq!(ordinary.len(), 20, "every ordinary package handed out");
    assert!(ordinary.iter().all(|(_, n)| **n == 1), "an ordinary package handed out twice");
    assert_eq!(handed.get(&last_resort_ref), Some(&30));
    let left = owner.key_package_infos(&service()).await.unwrap();
    assert_eq!(left.len(), 1);
    assert!(left[0].last_resort, "the last-resort package is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_is_told_of_each_claim_and_warned_once_at_low_water() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[directory]\nlow_water = 3");
    let mut owner = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let alice = TestSigner::new("alice@example.org");
    owner.publish_device(&service(), &alice.device("laptop-1", None)).await.unwrap();
    owner.send(presence()).await.unwrap();
    let kps: Vec<Vec<u8>> = (0..5).map(|_| alice.valid_kp()).collect();
    owner.upload_key_packages(&service(), &kps).await.unwrap();

    let mut notices = Vec::new();
    for expected_remaining in [4u32, 3, 2, 1] {
        let outcomes = bob.claim(&service(), &alice.account, &Claim::default()).await.unwrap();
        let ClaimOutcome::Claimed { kp_ref, .. } = &outcomes[0] else { panic!("{outcomes:?}") };
        let msg = next_message(&mut owner, is_notice).await;
        assert!(msg.get_child("stanza-id", "urn:xmpp:sid:0").is_some(), "kept in the inbox");
        match Notice::find(&msg).unwrap().unwrap() {
            Notice::KeyPackageClaimed(c) => {
                assert_eq!(c.device, "laptop-1");
                assert_eq!(&c.kp_ref, kp_ref);
                assert_eq!(c.by, bare("bob@example.org"));
                assert_eq!(c.remaining, expected_remaining);
                assert!(!c.last_resort);
            }
            other => panic!("expected a claim notice, got {other:?}"),
        }
        if expected_remaining == 3 {
            let low = next_message(&mut owner, is_notice).await;
            notices.push(Notice::find(&low).unwrap().unwrap());
        }
    }
    assert_eq!(
        notices,
        vec![Notice::KeyPackagesLow(xmpp_mls::protocol::notices::KeyPackagesLow { device: "laptop-1".into(), remaining: 3 })]
    );
    // No second warning on the way down.
    let extra = owner.next_event_within(Duration::from_millis(500)).await;
    assert!(extra.as_ref().map_or(true, |m| !matches!(Notice::find(m), Some(Ok(Notice::KeyPackagesLow(_))))));
}

/// A pool uploaded below the mark is warned at its first claim, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_uploaded_below_low_water_is_warned_at_its_first_claim() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[directory]\nlow_water = 3");
    let mut owner = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let alice = TestSigner::new("alice@example.org");
    owner.publish_device(&service(), &alice.device("laptop-1", None)).await.unwrap();
    owner.send(presence()).await.unwrap();
    let kps: Vec<Vec<u8>> = (0..2).map(|_| alice.valid_kp()).collect();
    owner.upload_key_packages(&service(), &kps).await.unwrap();

    let mut notices = Vec::new();
    for _ in 0..2 {
        let outcomes = bob.claim(&service(), &alice.account, &Claim::default()).await.unwrap();
        assert!(matches!(&outcomes[..], [ClaimOutcome::Claimed { last_resort: false, .. }]), "{outcomes:?}");
        notices.push(Notice::find(&next_message(&mut owner, is_notice).await).unwrap().unwrap());
    }
    notices.push(Notice::find(&next_message(&mut owner, is_notice).await).unwrap().unwrap());
    let remaining: Vec<(&str, u32)> = notices
        .iter()
        .map(|n| match n {
            Notice::KeyPackageClaimed(c) => ("claimed", c.remaining),
            Notice::KeyPackagesLow(l) => ("low", l.remaining),
        })
        .collect();
    // In order: a claim leaving 1, the warning, a claim leaving 0; no second warning.
    assert_eq!(remaining, [("claimed", 1), ("low", 1), ("claimed", 0)]);
    let extra = owner.next_event_within(Duration::from_millis(500)).await;
    assert!(extra.as_ref().map_or(true, |m| !matches!(Notice::find(m), Some(Ok(Notice::KeyPackagesLow(_))))), "{extra:?}");
    component.assert_never_reconnected();
}

fn presence() -> Element {
    Element::builder("presence", "jabber:client").build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_refused_after_the_burst_and_allowed_again_later() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[directory]\nclaim_burst = 2\nclaim_refill_secs = 2\nmax_devices_per_account = 2");
    let bob = prosody.client("bob", "phone").await;
    let carol = prosody.client("carol", "pc").await;
    let alice = bare("alice@example.org");
    for _ in 0..2 {
        bob.claim(&service(), &alice, &Claim::default()).await.unwrap();
    }
    // The raw reply (Session::iq would wait the limit out).
    let directory = xmpp_mls::client::directory_jid(&alice, &service());
    let iq = iq_element("set", "over", directory.as_str(), Some(Claim::default().to_element()));
    let reply = bob.request(iq).await.unwrap();
    let e = StanzaError::try_from(reply.get_child("error", "jabber:client").unwrap().clone()).unwrap();
    assert_eq!(e.defined_condition, DefinedCondition::ResourceConstraint);
    let app = e.other.expect("rate-limited");
    assert!(app.is("rate-limited", NS_ERRORS));
    let retry: u64 = app.attr("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // Another claimer has its own budget.
    carol.claim(&service(), &alice, &Claim::default()).await.unwrap();
    // The client library waits retry-after and is then allowed again.
    bob.claim(&service(), &alice, &Claim::default()).await.expect("allowed again after retry-after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_devices_packages_are_never_handed_out() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let owner = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let alice = TestSigner::new("alice@example.org");
    let expires = now() + 2;
    owner.publish_device(&service(), &alice.device("short", Some(expires))).await.unwrap();
    owner.upload_key_packages(&service(), &[alice.valid_kp(), alice.last_resort_kp()]).await.unwrap();
    while now() <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(bob.claim(&service(), &alice.account, &Claim::default()).await.unwrap(), vec![]);
    let only = Claim { devices: vec!["short".into()], ..Claim::default() };
    assert_eq!(
        bob.claim(&service(), &alice.account, &only).await.unwrap(),
        vec![ClaimOutcome::UnknownDevice { device: "short".into() }]
    );
    assert!(bob.devices(&service(), &alice.account).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_device_keeps_its_pool_topped_up_and_verifies_what_it_claims() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let owner = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let device = ClientDevice::create(&dir.path().join("alice.sqlite3"), bare("alice@example.org"), None).unwrap();
    owner.publish_device(&service(), &device.item(None)).await.unwrap();
    let report = device.refill(&owner, &service(), 3, false).await.unwrap();
    assert_eq!((report.uploaded, report.last_resort_replaced, report.pool), (3, true, 3));
    let again = device.refill(&owner, &service(), 3, false).await.unwrap();
    assert_eq!((again.uploaded, again.last_resort_replaced), (0, false), "nothing to do");

    // bob takes all three and the last-resort one; every package passes
    // the same check the service ran.
    let policy = Policy { cipher_suites: vec![1, 3], max_lifetime_secs: 90 * 86400, clock_skew_secs: 300 };
    let crypto = RustCrypto::default();
    let mut last = None;
    for _ in 0..4 {
        let claimed = bob
            .claim_verified(&service(), device.account(), &Claim::default(), &policy, &crypto)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].key_package.device_id, device.id());
        last = Some(claimed[0].last_resort);
    }
    assert_eq!(last, Some(true));
    let notice = xmpp_mls::protocol::notices::Notice::KeyPackageClaimed(xmpp_mls::protocol::notices::KeyPackageClaimed {
        device: device.id().to_owned(),
        kp_ref: String::new(),
        by: bare("bob@example.org"),
        remaining: 0,
        last_resort: true,
    });
    let refilled = device.on_notice(&owner, &service(), &notice).await.unwrap().expect("a refill");
    assert!(refilled.last_resort_replaced);
    assert_eq!(refilled.pool, xmpp_mls::client::POOL_TARGET);
    let infos = owner.key_package_infos(&service()).await.unwrap();
    assert_eq!(infos.iter().filter(|i| i.last_resort).count(), 1);
    assert_eq!(infos.len(), xmpp_mls::client::POOL_TARGET + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_device_refills_its_pool_at_low_water_and_ignores_forged_notices() {
    use xmpp_mls::client::{GroupEvent, RefillReport, POOL_TARGET};
    use xmpp_mls::protocol::notices::KeyPackageClaimed;
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[directory]\nlow_water = 3");
    let dir = tempfile::tempdir().unwrap();
    let mut bob = common::member(&prosody, &dir, "bob", "phone").await; // 5 KeyPackages and a last-resort one
    let phone = bob.device().id().to_owned();
    let alice = prosody.client("alice", "laptop").await;
    let mut watch = prosody.client("bob", "watch").await; // sees what bob's devices are sent
    watch.send(presence()).await.unwrap();
    watch.devices(&service(), &bare("bob@example.org")).await.unwrap(); // the presence was handled
    let last_resort = bob.device().last_resort().unwrap().unwrap().0;

    // A notice that alice sends herself is no notice: bob's client ignores it
    // (else it would replace its last-resort package).
    let notice = Notice::KeyPackageClaimed(KeyPackageClaimed {
        device: phone.clone(),
        kp_ref: last_resort.clone(),
        by: bare("alice@example.org"),
        remaining: 0,
        last_resort: true,
    });
    let forged = Element::builder("message", "jabber:client")
        .attr("to".try_into().unwrap(), "bob@example.org")
        .attr("type".try_into().unwrap(), "headline")
        .append(notice.to_element())
        .build();
    alice.send(forged).await.unwrap();
    let delivered = next_message(&mut watch, is_notice).await;
    assert_eq!(delivered.attr("from"), Some(alice.jid().to_string().as_str()), "the forged notice reaches bob");

    // alice's claims bring the pool to the low-water mark (3).
    for _ in 0..2 {
        let outcomes = alice.claim(&service(), &bare("bob@example.org"), &Claim::default()).await.unwrap();
        assert!(matches!(&outcomes[..], [ClaimOutcome::Claimed { device, last_resort: false, .. }] if *device == phone), "{outcomes:?}");
    }
    let refilled = common::expect(&mut bob, "a refill", |e| matches!(e, GroupEvent::Refilled(_))).await;
    let report = RefillReport { uploaded: POOL_TARGET - 3, last_resort_replaced: false, pool: POOL_TARGET };
    assert_eq!(refilled, GroupEvent::Refilled(report), "one refill, at the service's warning, not at the forged one");
    let infos = bob.session.key_package_infos(&service()).await.unwrap();
    let ordinary = infos.iter().filter(|i| i.device_id == phone && !i.last_resort).count();
    let last_resorts: Vec<&str> = infos.iter().filter(|i| i.last_resort).map(|i| i.kp_ref.as_str()).collect();
    assert_eq!((ordinary, last_resorts, infos.len()), (POOL_TARGET, vec![last_resort.as_str()], POOL_TARGET + 1));
}

/// One request per documented directory error, and the exact condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_errors_have_their_documented_conditions() {
    use xmpp_mls::protocol::pubsub::{publish_request, simple_request, NS_PUBSUB_ERRORS};
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[directory]\nmax_devices_per_account = 1");
    let alice_s = prosody.client("alice", "laptop").await;
    let bob = prosody.client("bob", "phone").await;
    let alice = bare("alice@example.org");
    let to = xmpp_mls::client::directory_jid(&alice, &service());
    let devices = xmpp_mls::protocol::devices::NODE;
    let key = TestSigner::new("alice@example.org");
    alice_s.publish_device(&service(), &key.device("one", None)).await.unwrap();

    let pubsub = |xml: &str| -> Element { format!("<pubsub xmlns='http://jabber.org/protocol/pubsub'>{xml}</pubsub>").parse().unwrap() };
    let cases: Vec<(&Session, &str, Element, DefinedCondition, Option<(&str, &str)>)> = vec![
        (&alice_s, "set", pubsub("<create node='x'/>"), DefinedCondition::FeatureNotImplemented, Some(("unsupported", NS_PUBSUB_ERRORS))),
        (&alice_s, "get", simple_request("items", "urn:example:nope", &[], None), DefinedCondition::ItemNotFound, None),
        (&alice_s, "get", simple_request("retract", devices, &["one"], None), DefinedCondition::BadRequest, None),
        (&bob, "set", simple_request("subscribe", devices, &[], Some("carol@example.org/x")), DefinedCondition::BadRequest, Some(("invalid-jid", NS_PUBSUB_ERRORS))),
        (&bob, "set", simple_request("unsubscribe", devices, &[], Some("bob@example.org/phone")), DefinedCondition::UnexpectedRequest, Some(("not-subscribed", NS_PUBSUB_ERRORS))),
        (&alice_s, "set", publish_request(devices, vec![(Some("two".into()), key.device("two", None).to_element())]), DefinedCondition::Conflict, Some(("signature-key-in-use", NS_ERRORS))),
        (&alice_s, "set", publish_request(devices, vec![(Some("two".into()), TestSigner::new("alice@example.org").device("two", None).to_element())]), DefinedCondition::PolicyViolation, Some(("too-many-devices", NS_ERRORS))),
        (&alice_s, "set", simple_request("retract", devices, &["nope"], None), DefinedCondition::ItemNotFound, None),
        (&alice_s, "set", publish_request(devices, vec![(None, key.device("one", None).to_element())]), DefinedCondition::BadRequest, None),
        (&alice_s, "set", Element::builder("claim", "urn:xmpp:mls:0").attr(xmpp_mls::protocol::n("cipher-suite"), "one").build(), DefinedCondition::BadRequest, None),
    ];
    for (session, type_, payload, condition, app) in cases {
        let shown = common::to_string(&payload);
        let e = stanza_error(session.iq(&to, type_, payload).await);
        assert_eq!(e.defined_condition, condition, "{shown}");
        match (app, &e.other) {
            (Some((name, ns)), Some(el)) => assert!(el.is(name, ns), "{shown}: {el:?}"),
            (None, None) => {}
            (expected, got) => panic!("{shown}: expected {expected:?}, got {got:?}"),
        }
    }
    let e = stanza_error(alice_s.iq(&to, "set", pubsub("<create node='x'/>")).await);
    assert_eq!(e.other.unwrap().attr("feature"), Some("create-nodes"));
    assert_eq!(alice_s.devices(&service(), &alice).await.unwrap().len(), 1, "nothing changed");
}
