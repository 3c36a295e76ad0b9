//! The ProtoXEP's examples are fixtures: well-formed, and what the
//! component really answers (through a real Prosody).

mod common;

use common::xep::{examples, request_reply_pairs, stanza_with_id, XEP};
use common::{as_received, normalise, to_string, Component, Prosody, COMPONENT};
use minidom::Element;

#[test]
fn the_xep_is_well_formed_xml() {
    // minidom needs a namespace on the root and takes no DOCTYPE.
    let body = &XEP[XEP.find("<xep>").expect("root element")..];
    let doc = body.replacen("<xep>", "<xep xmlns='urn:xmpp:xep'>", 1);
    let root: Element = doc.parse().expect("xep/xep-mls.xml is well-formed");
    let sections: Vec<_> =
        root.children().filter(|c| c.name() == "section1").filter_map(|c| c.attr("topic")).collect();
    for required in [
        "Introduction",
        "Requirements",
        "Glossary",
        "Use Cases",
        "Business Rules",
        "Security Considerations",
        "XMPP Registrar Considerations",
        "XML Schema",
    ] {
        assert!(sections.contains(&required), "missing section {required}: {sections:?}");
    }
}

#[test]
fn every_example_is_well_formed_and_captioned() {
    let all = examples();
    assert!(all.len() >= 9, "only {} examples", all.len());
    for ex in &all {
        assert!(!ex.caption.is_empty());
        assert!(!ex.stanzas.is_empty(), "{} has no stanza", ex.caption);
    }
}

/// Sends every request example of the XEP as the client it names and
/// checks that the reply is exactly the example's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_example_gets_exactly_the_documented_reply() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    let pairs = request_reply_pairs();
    assert!(pairs.len() >= 5, "{} request/reply pairs", pairs.len());
    for (request, expected) in pairs {
        let from = request.attr("from").unwrap().to_owned();
        let (user, resource) = from.split_once('/').unwrap();
        let user = user.split('@').next().unwrap();
        let session = prosody.client(user, resource).await;
        let mut sent = request.clone();
        sent.attrs_mut().remove(&minidom::rxml::Namespace::NONE, "from");
        let reply = session.request(sent).await.expect("a reply");
        assert_eq!(
            as_received(&reply),
            expected,
            "reply to {} differs from the XEP:\n got {}\nwant {}",
            request.attr("id").unwrap(),
            to_string(&reply),
            to_string(&expected)
        );
        session.close().await;
    }
}

/// The payload-too-big example is produced by a payload just over the
/// advertised limit, and a payload at the limit is not refused for size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_the_limit_gets_the_documented_error() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[limits]\nmax_payload_size = 2000");
    let session = prosody.client("alice", "laptop").await;
    let overhead = "<x xmlns='urn:example:big'></x>".len();
    for (len, refused) in [(2000 - overhead, false), (2001 - overhead, true)] {
        let payload = format!("<x xmlns='urn:example:big'>{}</x>", "a".repeat(len));
        let iq = format!("<iq xmlns='jabber:client' type='get' to='{COMPONENT}' id='big-1'>{payload}</iq>");
        let reply = session.request(normalise(&iq)).await.unwrap();
        if refused {
            assert_eq!(as_received(&reply), stanza_with_id("big-1"));
        } else {
            // Within the limit: refused only because nobody handles it.
            let condition = reply.get_child("error", "jabber:client").unwrap();
            assert!(condition.has_child("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas"));
        }
    }
}
