//! The ProtoXEPs' examples are fixtures: well-formed, parsed and produced
//! by the protocol types, and — for every request whose answer does not
//! depend on fresh key material — exactly what the component answers
//! through a real Prosody, replayed in document order.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::xep::{examples, request_reply_pairs, stanza_with_id, XEPS};
use common::{as_received, normalise, to_string, Component, Prosody, COMPONENT};
use minidom::Element;
use xmpp_mls::client::Session;
use xmpp_mls::protocol::devices::Device;
use xmpp_mls::protocol::keypackages::{
    claimed_element, key_package_element, parse_claimed, parse_rejections, rejections_element, Claim,
    KeyPackageInfo,
};
use xmpp_mls::protocol::error::invalid_message;
use xmpp_mls::protocol::groups::{
    group_info_element, joined_element, parse_group_info, Accepted, CommitBundle, Create, GroupMessage, Part, PartRequest,
    PartUpload, Proposal, TreePage, TreeRequest, Welcome, WrongEpoch,
};
use xmpp_mls::protocol::mam::{Ack, MamQuery, NS_MAM};
use xmpp_mls::protocol::content::{encryption_hint, Envelope, NS_EME, NS_SCE, PAD_BLOCK};
use xmpp_mls::protocol::mls::Invalid;
use xmpp_mls::protocol::notices::Notice;
use xmpp_mls::protocol::vault::{
    create_private_node, list_result, location_element, parse_list_page, parse_location, parse_vault_result,
    parse_version_mismatch, private_publish, vault_result, version_mismatch, VaultItem, VaultRequest,
};
use xmpp_mls::protocol::pubsub::{Event, PubsubRequest, NS_EVENT, NS_PUBSUB};
use xmpp_mls::protocol::{b64_decode, NS, NS_ERRORS};

/// Requests whose replies carry fresh key material (KeyPackageRefs,
/// packages): checked by the round-trip test, not replayed.
const NOT_REPLAYED: &[&str] =
    &["kp-1", "kp-3", "claim-1", "grp-1", "grp-2", "grp-5", "grp-6", "mam-1", "mam-4", "ack-1", "v-3", "v-4", "v-4b", "v-5", "leave-1"];

/// A document as minidom reads it: the root given a namespace, the DOCTYPE
/// left out, and every entity reference of xep.ent (`&LEGALNOTICE;`,
/// `&xep0060;`, ...) replaced by its name, since minidom reads no DTD.
fn parse_xep(path: &str, text: &str) -> Element {
    let mut doc = text[text.find("<xep>").expect("root element")..].replacen("<xep>", "<xep xmlns='urn:xmpp:xep'>", 1);
    let mut from = 0;
    while let Some(start) = doc[from..].find('&').map(|i| from + i) {
        let end = start + doc[start..].find(';').expect("entity reference ends");
        let name = doc[start + 1..end].to_owned();
        if ["amp", "lt", "gt", "quot", "apos"].contains(&name.as_str()) || name.starts_with('#') {
            from = end;
        } else {
            doc.replace_range(start..=end, &name);
            from = start;
        }
    }
    doc.parse().unwrap_or_else(|e| panic!("{path} is not well-formed: {e}"))
}

#[test]
fn every_xep_is_well_formed_xml_with_the_sections_of_a_xep() {
    for (path, text) in XEPS {
        let root = parse_xep(path, text);
        let sections: Vec<_> =
            root.children().filter(|c| c.name() == "section1").filter_map(|c| c.attr("topic")).collect();
        for required in [
            "Introduction",
            "Requirements",
            "Use Cases",
            "Business Rules",
            "Design Considerations",
            "Security Considerations",
            "IANA Considerations",
            "XMPP Registrar Considerations",
            "XML Schema",
        ] {
            assert!(sections.contains(&required), "{path} misses section {required}: {sections:?}");
        }
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

/// Parses `el` with the protocol type for its kind and serialises it
/// again; returns the kind, or None for elements of no protocol kind.
fn round_trip(el: &Element, parent: Option<&Element>) -> Option<&'static str> {
    let same = |out: Element, kind: &'static str| {
        assert_eq!(out, *el, "{kind} does not round-trip:\n{}", to_string(el));
        Some(kind)
    };
    match (el.name(), el.ns().as_str()) {
        ("device", NS) if parent.is_some_and(|p| p.name() == "claim") => None, // a claim filter
        ("device", NS) => {
            let id = parent.and_then(|p| p.attr("id"));
            same(Device::parse(id, el).expect("device parses").to_element(), "device")
        }
        ("key-package", NS) if parent.is_some_and(|p| p.name() == "item") => {
            same(key_package_element(&b64_decode(&el.text()).expect("base64")), "key-package upload")
        }
        ("key-package-info", NS) => {
            let id = parent.and_then(|p| p.attr("id")).expect("item id");
            same(KeyPackageInfo::parse(id, el).expect("info parses").to_element(), "key-package-info")
        }
        ("claim", NS) => same(Claim::parse(el).expect("claim parses").to_element(), "claim"),
        ("claimed", NS) => same(claimed_element(&parse_claimed(el).expect("claimed parses")), "claimed"),
        ("key-package-claimed" | "key-packages-low", NS) => {
            let message = parent.expect("in a message");
            same(Notice::find(message).expect("a notice").expect("parses").to_element(), "notice")
        }
        ("event", NS_EVENT) => same(Event::parse(el).expect("event parses").to_element(), "event"),
        ("invalid-key-packages", NS_ERRORS) => {
            same(rejections_element(&parse_rejections(el)), "invalid-key-packages")
        }
        ("create", NS) => same(Create::parse(el).expect("create parses").to_element(), "create"),
        ("commit", NS) => same(CommitBundle::parse(el).expect("commit parses").to_element(), "commit"),
        ("proposal", NS) => same(Proposal::parse(el).expect("proposal parses").to_element(), "proposal"),
        ("accepted", NS) => same(Accepted::parse(el).expect("accepted parses").to_element(), "accepted"),
        ("group-info", NS) if el.attr("epoch").is_some() => {
            let (epoch, info) = parse_group_info(el).expect("group-info parses");
            same(group_info_element(epoch, &info), "group-info")
        }
        ("tree", NS) if el.attr("pages").is_some() => same(TreePage::parse(el).expect("tree page parses").to_element(), "tree page"),
        ("tree", NS) => same(TreeRequest::parse(el).expect("tree request parses").to_element(), "tree request"),
        ("part", NS) if el.attr("sha256").is_some() => same(PartUpload::parse(el).expect("part upload parses").to_element(), "part upload"),
        ("part", NS) if el.attr("size").is_some() => same(Part::parse(el).expect("part parses").to_element(), "part"),
        ("part", NS) => same(PartRequest::parse(el).expect("part request parses").to_element(), "part request"),
        ("mls", NS) => same(GroupMessage::parse(el).expect("mls parses").to_element(), "mls"),
        ("welcome", NS) if parent.is_some_and(|p| p.name() == "message") => {
            let message = parent.expect("in a message");
            same(Welcome::find(message).expect("a welcome").expect("parses").to_element(), "welcome")
        }
        ("wrong-epoch", NS_ERRORS) => same(WrongEpoch::parse(el).expect("wrong-epoch parses").to_element(), "wrong-epoch"),
        ("invalid-message", NS_ERRORS) => {
            let reason = el.attr("reason").expect("a reason");
            let invalid = Invalid::ALL.into_iter().find(|i| i.reason() == reason).expect("a known reason");
            same(invalid_message(invalid), "invalid-message")
        }
        ("vault", NS) if parent.is_some_and(|p| matches!(p.attr("type"), Some("get" | "set"))) => {
            same(VaultRequest::parse(el).expect("vault request parses").to_element(), "vault request")
        }
        ("vault", NS) => {
            let (items, quota) = parse_vault_result(el).expect("vault result parses");
            match parse_list_page(el) {
                Some((index, count)) => same(list_result(&items, quota.expect("a quota"), index, count), "vault listing"),
                None => same(vault_result(&items, quota), "vault result"),
            }
        }
        ("version-mismatch", NS_ERRORS) => {
            same(version_mismatch(parse_version_mismatch(el).expect("current")), "version-mismatch")
        }
        ("ack", NS) => same(Ack::parse(el).expect("ack parses").to_element(), "ack"),
        ("query", NS_MAM) if parent.is_some_and(|p| p.attr("type") == Some("set")) => {
            MamQuery::parse(el).expect("MAM query parses");
            Some("mam query")
        }
        ("x", NS) => same(joined_element(el.attr("epoch").expect("epoch").parse().unwrap()), "joined"),
        ("pubsub", NS_PUBSUB)
            if parent.is_some_and(|p| matches!(p.attr("type"), Some("get" | "set")) && !p.attr("to").unwrap_or_default().ends_with(COMPONENT)) =>
        {
            same(pep_request(el), "PEP request")
        }
        ("vault-location", NS) => same(location_element(&parse_location(el).expect("location parses")), "vault-location"),
        ("item", NS) if parent.is_some_and(|p| p.name() == "item") => {
            same(VaultItem::parse(el).expect("blob parses").to_element(), "blob in PEP")
        }
        ("pubsub", NS_PUBSUB) if parent.is_some_and(|p| matches!(p.attr("type"), Some("get" | "set"))) => {
            PubsubRequest::try_from(el).expect("pubsub request parses");
            Some("pubsub request")
        }
        ("encryption", NS_EME) => same(encryption_hint(), "encryption hint"),
        ("envelope", NS_SCE) => {
            let text = to_string(el);
            let opened = Envelope::parse(text.as_bytes()).expect("envelope parses");
            assert!(opened.content.body().is_some(), "the example shows a body");
            assert_eq!(text.len() % PAD_BLOCK, 0, "the example's <rpad/> pads it as the XEP says:\n{text}");
            Some("envelope")
        }
        _ => None,
    }
}

/// A request to the account's own server (xep-mls-vault §The Vault in PEP),
/// as the client builds it: a claim (create and configure) or a publish.
fn pep_request(el: &Element) -> Element {
    if let Some(create) = el.get_child("create", NS_PUBSUB) {
        return create_private_node(create.attr("node").expect("a node"));
    }
    let publish = el.get_child("publish", NS_PUBSUB).expect("a claim or a publish");
    let item = publish.get_child("item", NS_PUBSUB).expect("an item");
    let payload = item.children().next().expect("a payload").clone();
    private_publish(publish.attr("node").expect("a node"), item.attr("id").expect("an item id"), payload)
}

fn walk(el: &Element, parent: Option<&Element>, seen: &mut BTreeMap<&'static str, usize>) {
    if let Some(kind) = round_trip(el, parent) {
        *seen.entry(kind).or_default() += 1;
    }
    for child in el.children() {
        walk(child, Some(el), seen);
    }
}

#[test]
fn every_protocol_payload_in_the_xep_parses_and_serialises_back() {
    let mut seen = BTreeMap::new();
    for stanza in examples().iter().flat_map(|e| e.stanzas.iter()) {
        walk(stanza, None, &mut seen);
    }
    for kind in [
        "device",
        "key-package upload",
        "key-package-info",
        "claim",
        "claimed",
        "notice",
        "event",
        "invalid-key-packages",
        "pubsub request",
        "create",
        "commit",
        "proposal",
        "accepted",
        "group-info",
        "tree request",
        "tree page",
        "part upload",
        "part request",
        "part",
        "mls",
        "welcome",
        "wrong-epoch",
        "invalid-message",
        "joined",
        "ack",
        "mam query",
        "vault request",
        "vault result",
        "version-mismatch",
        "PEP request",
        "vault-location",
        "blob in PEP",
        "encryption hint",
        "envelope",
    ] {
        assert!(seen.contains_key(kind), "no XEP has an example of {kind}: {seen:?}");
    }
}

/// Sends every replayable request example of the XEPs, in their order,
/// as the client it names (one session per full JID, kept for the run),
/// and checks that the reply is exactly the example's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_example_gets_exactly_the_documented_reply() {
    let prosody = Prosody::start();
    // The examples' devices expire in 2099.
    let _component = Component::start(&prosody, "[directory]\nmax_device_lifetime_days = 36500");
    let pairs = request_reply_pairs();
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut replayed = 0;
    for (request, expected) in pairs {
        let id = request.attr("id").unwrap().to_owned();
        if NOT_REPLAYED.contains(&id.as_str()) {
            continue;
        }
        let from = request.attr("from").unwrap().to_owned();
        if !sessions.contains_key(&from) {
            let (user, resource) = from.split_once('/').unwrap();
            let user = user.split('@').next().unwrap();
            sessions.insert(from.clone(), prosody.client(user, resource).await);
        }
        let mut sent = request.clone();
        sent.attrs_mut().remove(&minidom::rxml::Namespace::NONE, "from");
        let reply = with_documented_key(sessions[&from].request(sent).await.expect("a reply"), &expected);
        assert_eq!(
            as_received(&reply),
            expected,
            "reply to {id} differs from the XEPs:\n got {}\nwant {}",
            to_string(&reply),
            to_string(&expected)
        );
        replayed += 1;
    }
    assert!(replayed >= 12, "only {replayed} examples replayed");
}

/// The value of the limits form's external-sender field in `el`, if any.
fn external_sender_value(el: &mut Element) -> Option<&mut Element> {
    let query = el.get_child_mut("query", xmpp_parsers::ns::DISCO_INFO)?;
    let form = query.get_child_mut("x", xmpp_parsers::ns::DATA_FORMS)?;
    let field = form.children_mut().find(|f| f.attr("var") == Some("external-sender"))?;
    field.get_child_mut("value", xmpp_parsers::ns::DATA_FORMS)
}

/// The service's external-sender key is its own, fresh in every store:
/// a reply that advertises one gets the documented key instead, once its
/// ExternalSender is checked to be the documented one but for the key
/// (an Ed25519 key and the credential xmpp:<service>).
fn with_documented_key(mut reply: Element, expected: &Element) -> Element {
    let Some(documented) = external_sender_value(&mut expected.clone()).map(|v| v.text()) else { return reply };
    let value = external_sender_value(&mut reply).expect("the reply advertises an external sender");
    let (got, want) = (b64_decode(&value.text()).unwrap(), b64_decode(&documented).unwrap());
    <openmls::prelude::ExternalSender as tls_codec::Deserialize>::tls_deserialize_exact(&got).expect("an ExternalSender");
    // signature_key<V>: one length octet, 32 key octets; then the credential.
    assert_eq!((got.len(), got[0], &got[33..]), (want.len(), 32, &want[33..]), "the external sender differs from the XEPs");
    *value = Element::builder("value", xmpp_parsers::ns::DATA_FORMS).append(documented).build();
    reply
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
