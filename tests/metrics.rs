//! The metrics endpoint end to end: /metrics parses strictly as the
//! Prometheus text format and its counters move by exactly what the traffic
//! a test sends should cause; /health follows the component connection;
//! JSON logs are JSON and carry no payload.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::mls::TestSigner;
use common::scrape::{get, health, scrape};
use common::{expect, free_port, member, wait_until, Component, Prosody, COMPONENT};
use minidom::Element;
use xmpp_mls::client::GroupEvent;
use xmpp_mls::client::{describe, ClientError};
use xmpp_mls::protocol::keypackages::{parse_rejections, Claim, Rejection};
use xmpp_mls::store_params;
use xmpp_parsers::jid::{BareJid, Jid};

/// A string that only ever travels inside stanza payloads.
const MARKER: &str = "payload-marker-5c1d9e";

/// Whether a sample depends on the machine: latency histograms' buckets
/// and sums (their counts are kept) and the process's own figures.
fn timing(key: &str) -> bool {
    let latency = ["xmpp_mls_store_write_batch_seconds", "xmpp_mls_request_seconds"];
    key.starts_with("process_")
        || latency.iter().any(|h| key.starts_with(&format!("{h}_bucket")) || key.starts_with(&format!("{h}_sum")))
}

/// What moved between two scrapes, leaving out [`timing`] samples.
fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> HashMap<String, f64> {
    let keys: HashSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| !timing(k))
        .filter_map(|k| {
            let d = after.get(k).copied().unwrap_or(f64::NAN) - before.get(k).copied().unwrap_or(f64::NAN);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Scrapes; what moved since `last`, which becomes this scrape.
fn moved_since(port: u16, last: &mut HashMap<String, f64>) -> HashMap<String, f64> {
    let now = scrape(port);
    let m = moved(last, &now);
    *last = now;
    m
}

fn expected(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// `pairs` and the moves of one write batch of one request.
fn with_one_batch(pairs: &[(&str, f64)]) -> HashMap<String, f64> {
    let mut all = expected(pairs);
    for le in ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "256.0", "512.0", "1024.0", "+Inf"] {
        all.insert(format!("xmpp_mls_store_write_batch_size_bucket{{le=\"{le}\"}}"), 1.0);
    }
    for sample in ["size_sum", "size_count", "seconds_count"] {
        all.insert(format!("xmpp_mls_store_write_batch_{sample}"), 1.0);
    }
    all
}

/// Devices with directory.low_water (10) ordinary KeyPackages or fewer,
/// counted in the store file.
fn low_devices_in_store(component: &Component) -> f64 {
    let now = xmpp_mls::protocol::now();
    let pool = "SELECT count(*) FROM key_packages WHERE account = ?1 AND device_id = ?2
                  AND last_resort = 0 AND not_after > ?3";
    component.db().with(|c| {
        let live = "SELECT account, device_id FROM devices WHERE expires_at > ?1";
        let devices: Vec<(String, String)> = c.query_map(live, store_params![now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut low = 0;
        for (account, device) in devices {
            low += usize::from(c.query_row(pool, store_params![account, device, now], |r| r.get::<i64>(0))? <= 10);
        }
        Ok(low as f64)
    })
}

fn archive_rows(component: &Component) -> f64 {
    component.db().one::<i64>("SELECT count(*) FROM archive", &[]) as f64
}

fn raw_iq(session: &xmpp_mls::client::Session, to: &str, type_: &str, children: &str) -> Element {
    let xml = format!("<iq xmlns='jabber:client' type='{type_}' id='{}' to='{to}'>{children}</iq>", session.next_id());
    xml.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_exactly_with_traffic_and_health_follows_the_connection() {
    let mut prosody = Prosody::start();
    let port = free_port();
    // No keepalive pings during the test: only its own stanzas are counted.
    let extra = format!(
        "keepalive_secs = 3600\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n[log]\nformat = \"json\"\n\
         [history]\nmaintenance_secs = 3600\n"
    );
    let mut component = Component::start(&prosody, &extra);
    assert_eq!(health(port), (200, "connected\n".into()));
    assert_eq!(get(port, "/nothing").0, 404);

    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let carol = prosody.client("carol", "desk").await;
    let service = Jid::new(COMPONENT).unwrap();

    // A disco query and a malformed request (no such element).
    let mut last = scrape(port);
    let disco = raw_iq(&carol, COMPONENT, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>");
    assert_eq!(carol.request(disco).await.unwrap().attr("type"), Some("result"));
    let unknown = format!("<frob xmlns='urn:xmpp:mls:0' note='{MARKER}'/>");
    let bad = carol.request(raw_iq(&carol, COMPONENT, "get", &unknown)).await.unwrap();
    assert_eq!(bad.attr("type"), Some("error"));
    assert_eq!(
        moved_since(port, &mut last),
        expected(&[
            ("xmpp_mls_stanzas_received_total{kind=\"iq\"}", 2.0),
            ("xmpp_mls_stanzas_sent_total{kind=\"iq\"}", 2.0),
            ("xmpp_mls_stanza_errors_total{condition=\"bad-request\"}", 1.0),
            ("xmpp_mls_request_seconds_count{operation=\"disco-info\"}", 1.0),
            ("xmpp_mls_request_seconds_count{operation=\"other\"}", 1.0),
        ])
    );

    // alice uploads three KeyPackages: one write batch.
    let kps = alice.device().key_packages(3).unwrap();
    alice.session.upload_key_packages(&service, &kps).await.unwrap();
    assert_eq!(
        moved_since(port, &mut last),
        with_one_batch(&[
            ("xmpp_mls_stanzas_received_total{kind=\"iq\"}", 1.0),
            ("xmpp_mls_stanzas_sent_total{kind=\"iq\"}", 1.0),
            ("xmpp_mls_key_packages_uploaded_total", 3.0),
            ("xmpp_mls_key_package_verifications_total", 3.0),
            ("xmpp_mls_request_seconds_count{operation=\"publish\"}", 1.0),
        ])
    );

    // carol claims one of alice's: the owner gets a notice, and a warning
    // (the pool of three is below the low-water mark of 10).
    let alice_jid = BareJid::new("alice@example.org").unwrap();
    let claim = Claim { cipher_suite: None, devices: Vec::new() };
    assert_eq!(carol.claim(&service, &alice_jid, &claim).await.unwrap().len(), 1);
    assert_eq!(
        moved_since(port, &mut last),
        with_one_batch(&[
            ("xmpp_mls_stanzas_received_total{kind=\"iq\"}", 1.0),
            ("xmpp_mls_stanzas_sent_total{kind=\"iq\"}", 1.0),
            ("xmpp_mls_stanzas_sent_total{kind=\"message\"}", 2.0),
            ("xmpp_mls_key_packages_claimed_total", 1.0),
            ("xmpp_mls_request_seconds_count{operation=\"claim\"}", 1.0),
        ])
    );

    // A group: one accepted commit (the add), then a malformed one.
    let group = alice.create().await.unwrap();
    alice.add(&group, &[BareJid::new("bob@example.org").unwrap()]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    let m = moved_since(port, &mut last);
    assert_eq!(m.get("xmpp_mls_commits_total{outcome=\"accepted\"}"), Some(&1.0), "{m:?}");
    assert_eq!(m.get("xmpp_mls_key_packages_claimed_total"), Some(&1.0), "bob's package: {m:?}");
    assert!(!m.keys().any(|k| k.starts_with("xmpp_mls_stanza_errors_total") || k.contains("rejected")), "{m:?}");
    let empty = raw_iq(&alice.session, group.as_str(), "set", "<commit xmlns='urn:xmpp:mls:0'/>");
    assert_eq!(alice.session.request(empty).await.unwrap().attr("type"), Some("error"));
    assert_eq!(
        moved_since(port, &mut last),
        expected(&[
            ("xmpp_mls_stanzas_received_total{kind=\"iq\"}", 1.0),
            ("xmpp_mls_stanzas_sent_total{kind=\"iq\"}", 1.0),
            ("xmpp_mls_stanza_errors_total{condition=\"bad-request\"}", 1.0),
            ("xmpp_mls_commits_total{outcome=\"rejected\"}", 1.0),
            ("xmpp_mls_request_seconds_count{operation=\"commit\"}", 1.0),
        ])
    );
    // Two commits in all (the add, the malformed one): one observation each.
    assert_eq!(last["xmpp_mls_request_seconds_count{operation=\"commit\"}"], 2.0);
    let version = format!("xmpp_mls_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(last.get(&version), Some(&1.0), "{last:?}");
    assert!(last["process_resident_memory_bytes"] > 0.0 && last["process_open_fds"] >= 1.0);
    assert_eq!(last.keys().filter(|k| k.starts_with("xmpp_mls_rate_limited_total")).map(|k| last[k]).sum::<f64>(), 0.0);

    // The store's gauges are set at start and by the maintenance task
    // (every hour here), never by a scrape: the archive has grown, the
    // gauge has not.
    assert!(archive_rows(&component) >= 1.0);
    assert_eq!((last["xmpp_mls_archive_messages"], last["xmpp_mls_key_package_low_devices"]), (0.0, 0.0));
    assert_eq!((last["xmpp_mls_connected"], last["xmpp_mls_reconnects_total"]), (1.0, 0.0));
    assert!(!get(port, "/metrics").2.contains("example.org"), "no JID in a label");

    // The server goes away and comes back.
    prosody.kill();
    assert!(wait_until(Duration::from_secs(20), || health(port) == (503, "disconnected\n".into())));
    assert_eq!(scrape(port)["xmpp_mls_connected"], 0.0);
    prosody.restart();
    assert!(component.wait_log("component connected", 2, Duration::from_secs(30)), "{}", component.log());
    assert_eq!(health(port), (200, "connected\n".into()));
    let again = scrape(port);
    assert_eq!((again["xmpp_mls_connected"], again["xmpp_mls_reconnects_total"]), (1.0, 1.0));

    // The log is JSON, one object a line, and never carries a payload.
    let log = component.log();
    for line in log.lines() {
        let entry: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(entry["level"].is_string() && entry["fields"].is_object(), "{line}");
    }
    assert!(log.lines().any(|l| l.contains("\"message\":\"request refused\"")), "debug logs were written");
    assert!(!log.contains(MARKER), "a payload reached the log");

    // Started again, the component reads the store's figures once.
    component.terminate();
    component.restart();
    let started = scrape(port);
    assert_eq!(started["xmpp_mls_archive_messages"], archive_rows(&component));
    assert_eq!(started["xmpp_mls_key_package_low_devices"], low_devices_in_store(&component));
    // bob's claimed pool (4) was warned at once, and his device refilled it.
    assert_eq!(started["xmpp_mls_key_package_low_devices"], 1.0, "alice holds 7, bob 20");
}

/// The refusal of an upload, as text, and its application condition.
async fn refused_upload(session: &xmpp_mls::client::Session, kps: &[Vec<u8>]) -> (String, Element) {
    match session.upload_key_packages(&Jid::new(COMPONENT).unwrap(), kps).await {
        Err(ClientError::Stanza(e)) => (describe(&e), e.other.expect("an application condition")),
        other => panic!("expected a stanza error, got {other:?}"),
    }
}

/// Refused uploads cost no signature: a duplicate of a stored package and
/// an upload larger than the device's room are refused before any is
/// verified (the verification counter does not move), and the account's
/// verification budget refuses the rest with <rate-limited/>; the store is
/// unchanged by each refusal, and others are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_verify_no_signature_and_a_budget_bounds_the_verified() {
    let prosody = Prosody::start();
    let port = free_port();
    let extra = format!(
        "keepalive_secs = 3600\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\
         [directory]\nmax_key_packages_per_device = 3\nkey_package_burst = 4\nkey_package_refill_secs = 3600\n"
    );
    let component = Component::start(&prosody, &extra);
    let service = Jid::new(COMPONENT).unwrap();
    let (session, bob) = (prosody.client("alice", "laptop").await, prosody.client("bob", "phone").await);
    let alice = TestSigner::new("alice@example.org");
    session.publish_device(&service, &alice.device("laptop-1", None)).await.unwrap();
    let verified = || scrape(port)["xmpp_mls_key_package_verifications_total"];

    // Three packages fill the pool and spend three of the four units.
    let stored = alice.valid_kp();
    session.upload_key_packages(&service, &[stored.clone(), alice.valid_kp(), alice.valid_kp()]).await.unwrap();
    assert_eq!(verified(), 3.0);
    let before = component.db().dump();

    let (refusal, app) = refused_upload(&session, &[alice.valid_kp(), stored]).await;
    assert_eq!(refusal, "modify/not-acceptable (invalid-key-packages)");
    assert_eq!(parse_rejections(&app), vec![(1, Rejection::Duplicate)]);
    // Two packages where a full pool has room for its last-resort one only.
    let (refusal, _) = refused_upload(&session, &[alice.valid_kp(), alice.valid_kp()]).await;
    assert_eq!(refusal, "modify/policy-violation (too-many-key-packages)");
    assert_eq!(verified(), 3.0, "no signature was verified for either refusal");
    assert!(component.db().dump() == before, "a refused upload changed the store");

    // The last unit pays for a last-resort package; the next upload waits.
    session.upload_key_packages(&service, &[alice.last_resort_kp()]).await.unwrap();
    assert_eq!(verified(), 4.0);
    let before = component.db().dump();
    let (refusal, app) = refused_upload(&session, &[alice.last_resort_kp()]).await;
    assert_eq!(refusal, "wait/resource-constraint (rate-limited)");
    let retry: u64 = app.attr("retry-after").expect("retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry), "one unit an hour: retry after {retry} s");
    assert_eq!(verified(), 4.0);
    let refusals = scrape(port);
    for (limit, n) in [("key_package_verification", 1.0), ("claim", 0.0), ("account", 0.0), ("domain", 0.0)] {
        assert_eq!(refusals[&format!("xmpp_mls_rate_limited_total{{limit=\"{limit}\"}}")], n, "{limit}");
    }
    assert!(component.db().dump() == before, "the upload over budget changed the store");

    // bob's budget is his own; the component never lost its link.
    let bob_key = TestSigner::new("bob@example.org");
    bob.publish_device(&service, &bob_key.device("phone-1", None)).await.unwrap();
    bob.upload_key_packages(&service, &[bob_key.valid_kp(), bob_key.last_resort_kp()]).await.unwrap();
    assert_eq!(verified(), 6.0);
    assert_eq!(component.count_in_log("component connected"), 1, "{}", component.log());
    assert_eq!(scrape(port)["xmpp_mls_reconnects_total"], 0.0);
}

/// A Commit of another account's leaf, and a Commit for a past epoch, are
/// refused from the stored group, before the store's writer and before any
/// signature: no write batch moves, and the store is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_of_another_leaf_are_refused_without_a_write_and_a_resend_writes_nothing() {
    let prosody = Prosody::start();
    let port = free_port();
    let component = Component::start(&prosody, &format!("keepalive_secs = 3600\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let bob = member(&prosody, &dir, "bob", "phone").await;
    let group = alice.create().await.unwrap();
    let bob_jid = BareJid::new("bob@example.org").unwrap();
    let devices = alice.session.devices(&Jid::new(COMPONENT).unwrap(), &bob_jid).await.unwrap();
    let kps = alice.key_packages_for(&bob_jid, devices.into_iter().map(|d| d.id).collect()).await.unwrap();
    let bundle = alice.stage_add(&group, kps).await.unwrap();
    alice.discard_pending(&group).unwrap();
    let refused_without_a_write = |refusal: Result<Option<Element>, ClientError>, expect: &str, last: &mut HashMap<String, f64>| {
        let before = component.db().dump();
        match refusal {
            Err(ClientError::Stanza(e)) => assert_eq!(describe(&e), expect),
            other => panic!("expected a stanza error, got {other:?}"),
        }
        let condition = expect.split(['/', ' ']).nth(1).unwrap();
        assert_eq!(
            moved_since(port, last),
            expected(&[
                ("xmpp_mls_stanzas_received_total{kind=\"iq\"}", 1.0),
                ("xmpp_mls_stanzas_sent_total{kind=\"iq\"}", 1.0),
                (&format!("xmpp_mls_stanza_errors_total{{condition=\"{condition}\"}}"), 1.0),
                ("xmpp_mls_commits_total{outcome=\"rejected\"}", 1.0),
                ("xmpp_mls_request_seconds_count{operation=\"commit\"}", 1.0),
            ]),
            "{expect}"
        );
        assert!(component.db().dump() == before, "{expect}: the refused Commit changed the store");
    };

    // bob sends alice's Commit for the current epoch: her leaf is not his.
    let mut last = scrape(port);
    let replay = bob.session.iq(&group.clone().into(), "set", bundle.to_element()).await;
    refused_without_a_write(replay, "auth/forbidden", &mut last);
    // alice's own is accepted; sent again, it is a resend (xep/ §Resends):
    // the same acceptance, nothing written.
    let first = alice.submit(&group, &bundle).await.unwrap();
    let before = component.db().dump();
    assert_eq!(alice.submit(&group, &bundle).await.unwrap(), first);
    assert!(component.db().dump() == before, "the resent Commit changed the store");
    assert_eq!(component.count_in_log("component connected"), 1, "{}", component.log());
}

/// The maintenance task sets the store's gauges on its interval: a device
/// whose pool is low shows up without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_task_refreshes_the_store_gauges() {
    let prosody = Prosody::start();
    let port = free_port();
    let extra = format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n[history]\nmaintenance_secs = 1\n");
    let component = Component::start(&prosody, &extra);
    let low = || scrape(port)["xmpp_mls_key_package_low_devices"];
    assert_eq!(low(), 0.0);
    let service = Jid::new(COMPONENT).unwrap();
    let session = prosody.client("alice", "laptop").await;
    let alice = TestSigner::new("alice@example.org");
    session.publish_device(&service, &alice.device("laptop-1", None)).await.unwrap();
    session.upload_key_packages(&service, &[alice.valid_kp(), alice.last_resort_kp()]).await.unwrap();
    assert!(wait_until(Duration::from_secs(20), || low() == 1.0), "{}", component.log());
    assert_eq!(low_devices_in_store(&component), 1.0);
    component.assert_never_reconnected();
}
