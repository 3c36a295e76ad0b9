//! The component's foundation, end to end through a real Prosody:
//! connection life cycle, the router's reply rules, configuration errors.

mod common;

use std::time::Duration;

use common::{as_received, normalise, run_binary, Component, Prosody, COMPONENT};
use minidom::Element;
use xmpp_mls::client::{ClientError, Session};
use xmpp_parsers::jid::Jid;
use xmpp_parsers::ns;
use xmpp_parsers::stanza_error::DefinedCondition;

const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// The features of the service in the XEP's disco#info example.
fn documented_features() -> Vec<String> {
    let reply = common::xep::reply_with_id("disco-1");
    let query = reply.get_child("query", ns::DISCO_INFO).unwrap();
    query.children().filter(|c| c.name() == "feature").map(|f| f.attr("var").unwrap().to_owned()).collect()
}

async fn disco_features(session: &Session) -> Vec<String> {
    let query = Element::builder("query", ns::DISCO_INFO).build();
    let info = session.iq(&Jid::new(COMPONENT).unwrap(), "get", query).await.unwrap().unwrap();
    info.children().filter(|c| c.name() == "feature").map(|f| f.attr("var").unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disco_lists_exactly_the_documented_features() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let session = prosody.client("alice", "laptop").await;
    assert_eq!(disco_features(&session).await, documented_features());
    let ping = Element::builder("ping", "urn:xmpp:ping").build();
    assert_eq!(session.iq(&Jid::new(COMPONENT).unwrap(), "get", ping).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_prosody_is_killed_and_restarted() {
    let mut prosody = Prosody::start();
    let component = Component::start(&prosody, "reconnect_max_secs = 2");
    prosody.kill();
    assert!(component.wait_log("connection lost", 1, Duration::from_secs(10)), "{}", component.log());
    // Down for a while: the component retries with backoff, not in a loop.
    std::thread::sleep(Duration::from_secs(3));
    let attempts = component.count_in_log("cannot connect");
    assert!((1..=12).contains(&attempts), "{attempts} connection attempts in 3 s");
    prosody.restart();
    assert!(component.wait_log("component connected", 2, Duration::from_secs(10)), "{}", component.log());
    let session = prosody.client("alice", "laptop").await;
    assert_eq!(disco_features(&session).await, documented_features());
    assert!(!component.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_longer_than_the_read_timeout_stays_connected() {
    let prosody = Prosody::start();
    // Without keepalive pings tokio-xmpp ends a stream silent for
    // keepalive + response timeout (2 s here); we stay idle for 5 s.
    let component = Component::start(&prosody, "keepalive_secs = 1\nresponse_timeout_secs = 1");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(component.count_in_log("component connected"), 1, "{}", component.log());
    assert_eq!(component.count_in_log("connection lost"), 0);
    let session = prosody.client("alice", "laptop").await;
    assert_eq!(disco_features(&session).await, documented_features());
}

fn condition_of(result: Result<Option<Element>, ClientError>) -> DefinedCondition {
    match result {
        Err(ClientError::Stanza(e)) => e.defined_condition,
        other => panic!("expected a stanza error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_payloads_are_service_unavailable_and_malformed_iqs_bad_request() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let session = prosody.client("alice", "laptop").await;
    let service = Jid::new(COMPONENT).unwrap();
    let unknown = Element::builder("query", "urn:example:unknown").build();
    assert_eq!(condition_of(session.iq(&service, "get", unknown.clone()).await), DefinedCondition::ServiceUnavailable);
    assert_eq!(condition_of(session.iq(&service, "set", unknown).await), DefinedCondition::ServiceUnavailable);
    // disco is get-only; a set is not understood.
    let disco = Element::builder("query", ns::DISCO_INFO).build();
    assert_eq!(condition_of(session.iq(&service, "set", disco).await), DefinedCondition::ServiceUnavailable);
    // A resource at the service names nothing.
    let disco = Element::builder("query", ns::DISCO_INFO).build();
    let full = Jid::new(&format!("{COMPONENT}/x")).unwrap();
    assert_eq!(condition_of(session.iq(&full, "get", disco).await), DefinedCondition::ServiceUnavailable);

    // A payload in urn:xmpp:mls:0 that the XEP does not define does not parse.
    let iq = normalise(&format!(
        "<iq xmlns='jabber:client' type='set' id='bad-1' to='{COMPONENT}'><nonsense xmlns='urn:xmpp:mls:0'/></iq>"
    ));
    let expected = normalise(&format!(
        "<iq xmlns='jabber:client' type='error' id='bad-1' from='{COMPONENT}' to='{}'>\
         <error type='modify'><bad-request xmlns='{STANZAS}'/>\
         <text xmlns='{STANZAS}' xml:lang='en'>unknown element in urn:xmpp:mls:0</text>\
         </error></iq>",
        session.jid()
    ));
    assert_eq!(as_received(&session.request(iq).await.unwrap()), expected);

    // Not exactly one child: bad-request (Prosody refuses these itself before
    // they reach the component; the router's own check has a unit test).
    for body in ["", "<query xmlns='http://jabber.org/protocol/disco#info'/><ping xmlns='urn:xmpp:ping'/>"] {
        let iq = normalise(&format!("<iq xmlns='jabber:client' type='get' id='n' to='{COMPONENT}'>{body}</iq>"));
        let reply = session.request(iq).await.unwrap();
        let error = reply.get_child("error", "jabber:client").expect("an error reply");
        assert_eq!(error.attr("type"), Some("modify"));
        assert!(error.has_child("bad-request", STANZAS), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_stanzas_and_results_are_never_answered() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let session = prosody.client("alice", "laptop").await;
    let error = format!("<error type='cancel'><item-not-found xmlns='{STANZAS}'/></error>");
    for stanza in [
        format!("<message xmlns='jabber:client' type='error' id='m1' to='{COMPONENT}'>{error}</message>"),
        format!("<iq xmlns='jabber:client' type='error' id='i1' to='{COMPONENT}'>{error}</iq>"),
        format!("<iq xmlns='jabber:client' type='result' id='i2' to='{COMPONENT}'/>"),
        format!("<presence xmlns='jabber:client' type='error' id='p1' to='{COMPONENT}'>{error}</presence>"),
        // A normal message is bounced: proof that the component was listening.
        format!("<message xmlns='jabber:client' id='m2' to='{COMPONENT}'><body>hi</body></message>"),
    ] {
        session.send(normalise(&stanza)).await.unwrap();
    }
    let bounce = session.next_event_within(Duration::from_secs(10)).await.expect("bounce of m2");
    assert_eq!(bounce.attr("id"), Some("m2"));
    assert_eq!(bounce.attr("type"), Some("error"));
    let unexpected = session.next_event_within(Duration::from_secs(1)).await;
    assert!(unexpected.is_none(), "an error or result was answered: {unexpected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly() {
    let prosody = Prosody::start();
    let mut component = Component::start(&prosody, "");
    assert_eq!(component.terminate(), Some(0));
    assert!(component.log().contains("stopped"));
}

#[test]
fn a_bad_config_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[component]\nsecret = \"x\"\n", "component: missing field `jid`"),
        ("[component]\njid = \"a@b\"\nsecret = \"x\"\n", "component.jid:"),
        ("[component]\njid = \"m.example\"\nsecret = \"x\"\nserver = \"here\"\n", "component.server:"),
        ("[component]\njid = \"m.example\"\nsecret = \"x\"\n[limits]\nmax_payload_size = -1\n", "limits.max_payload_size:"),
        ("[component]\njid = \"m.example\"\nsecret = \"x\"\n[store]\nbatch = 3\n", "store.batch:"),
        ("[component\n", "line 1:"),
    ];
    for (text, needle) in cases {
        std::fs::write(dir.path().join("bad.toml"), text).unwrap();
        let (code, stderr) = run_binary(&["serve", "--config", "bad.toml"], dir.path());
        assert_eq!(code, Some(2), "{text:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("config error: ") && stderr.contains(needle), "{needle:?} in {stderr:?}");
    }
    let (code, stderr) = run_binary(&["serve", "--config", "missing.toml"], dir.path());
    assert_eq!(code, Some(2));
    assert!(stderr.contains("missing.toml"), "{stderr}");
}
