//! The second audit's probes (issue 14): an ordinary account, through a
//! real server, making the service echo or loop over what it controls.
//! Each is refused before any work, changes nothing, and leaves the
//! component connected and the other members served.

mod common;

use std::time::Duration;

use common::{alice_and_bob, expect, member, outcome, raw, Component, Prosody};
use minidom::rxml::NcName;
use minidom::Element;
use xmpp_mls::client::{GroupEvent, Session};
use xmpp_mls::protocol::mam::{query_element, Cursor, NS_MAM};
use xmpp_mls::protocol::{n, MAX_ID};
use xmpp_mls::xmpp::tokens::MAX_TOKEN;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::stanza_error::StanzaError;

/// The MAM result messages that arrived before a query's answer.
fn results(session: &mut Session) -> Vec<Element> {
    std::iter::from_fn(|| session.try_next_event())
        .filter(|m| m.get_child("result", NS_MAM).is_some())
        .collect()
}

/// The probe: tokio-xmpp parses with rxml's defaults, which refuse a name
/// or attribute value over 8192 octets as an XML error. Prosody forwards
/// such a stanza, so one IQ with a long 'id' closed the component's stream
/// (every reply in flight lost, every device off its live traffic), and a
/// message with a long attribute from any contact closed a client's. Now
/// such tokens arrive as stand-ins of MAX_TOKEN octets: the 'id' is refused
/// as too long, other attributes are ignored, and both streams stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_or_attribute_over_the_parser_limit_closes_no_stream() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, g) = alice_and_bob(&prosody, &dir).await;
    let mallory = prosody.client("mallory", "raw").await;
    let service = common::COMPONENT;
    let long = "i".repeat(10_000);

    let before = component.db().dump();
    // Built, not parsed: our own parser has the same limit.
    let ping = |id: &str, attrs: &[(&str, &str)]| {
        let mut iq = Element::builder("iq", "jabber:client").attr(n("type"), "get").attr(n("to"), service).attr(n("id"), id);
        for (name, value) in attrs {
            iq = iq.attr(NcName::try_from(*name).unwrap(), *value);
        }
        iq.append(Element::builder("ping", "urn:xmpp:ping").build()).build()
    };
    mallory.send(ping(&long, &[])).await.unwrap();
    let refused = mallory.next_event_within(Duration::from_secs(10)).await.expect("an answer to the long id");
    assert_eq!((refused.name(), refused.attr("type")), ("iq", Some("error")));
    assert_eq!(refused.attr("id").map(str::len), Some(MAX_TOKEN), "the id arrives as its stand-in");
    assert_eq!(outcome(&refused), "modify/bad-request: an id is at most 1024 octets");
    let answered = mallory.request(ping("p2", &[(&long, "1"), ("a", &long)])).await.unwrap();
    assert_eq!(outcome(&answered), "result");
    assert!(component.db().dump() == before, "a refused stanza changed the store");

    // A contact's message with a long attribute: alice's client stays up.
    let to_alice = Element::builder("message", "jabber:client")
        .attr(n("to"), "alice@example.org/laptop")
        .attr(n("id"), "m1")
        .attr(n("x"), long.as_str())
        .build();
    mallory.send(to_alice).await.unwrap();
    bob.send_body(&g, "after").await.unwrap();
    expect(&mut alice, "bob's message", |e| matches!(e, GroupEvent::Message { content, .. } if content.body().as_deref() == Some("after"))).await;
    component.assert_never_reconnected();
}

/// The probe: every MAM result echoes the query's 'queryid', which had no
/// bound. With an archive item of max-payload-size, a queryid of 225 000
/// octets makes a result over max-stanza-out (that one closed the
/// component's stream outright: see the test above), and any queryid is
/// echoed a page's worth of times (100 results for one request). Now a
/// queryid longer than an 'id' may be is refused before the archive is
/// read, and the longest one carries the largest item whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queryid_longer_than_an_id_is_refused_and_the_longest_carries_the_largest_item() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, g) = alice_and_bob(&prosody, &dir).await;
    // A PrivateMessage of some 227 KB of base64: near max-payload-size.
    let body = "Z".repeat(170_000);
    alice.send_body(&g, &body).await.unwrap();
    expect(&mut bob, "the large message", |e| matches!(e, GroupEvent::Message { content, .. } if content.body() == Some(body.clone()))).await;
    let group = Jid::from(g.clone());
    let mut raw_alice = prosody.client("alice", "raw").await;

    let before = component.db().dump();
    for queryid in ["q".repeat(MAX_ID + 1), "q".repeat(225_000)] {
        let query = query_element(&queryid, &[], 100, &Cursor::First, false);
        let reply = raw(&raw_alice, &group, "set", query).await;
        assert_eq!(outcome(&reply), "modify/bad-request: a queryid is at most 1024 octets", "{} octets", queryid.len());
        assert_eq!(results(&mut raw_alice), Vec::<Element>::new());
    }
    assert!(component.db().dump() == before, "a refused query changed the store");

    // The longest queryid and the largest item: the whole page arrives.
    let queryid = "q".repeat(MAX_ID);
    let reply = raw(&raw_alice, &group, "set", query_element(&queryid, &[], 100, &Cursor::First, false)).await;
    assert_eq!(outcome(&reply), "result");
    let fin = reply.get_child("fin", NS_MAM).expect("a fin");
    assert_eq!(fin.attr("complete"), Some("true"));
    let items = results(&mut raw_alice);
    let echoed: Vec<_> = items.iter().map(|m| m.get_child("result", NS_MAM).unwrap().attr("queryid")).collect();
    assert_eq!(echoed.len(), 2, "the commit that added bob and the message");
    assert!(echoed.iter().all(|q| *q == Some(queryid.as_str())));
    assert!(String::from(&items[1]).len() > 220_000, "the message item is whole");

    // Bob is still served live.
    bob.send_body(&g, "still here").await.unwrap();
    expect(&mut alice, "bob's message", |e| matches!(e, GroupEvent::Message { content, .. } if content.body().as_deref() == Some("still here"))).await;
    component.assert_never_reconnected();
}

/// The probe: a query's 'ids' field had no cap, so one query made the
/// service look up thousands of stanza ids (and bind them all into one
/// SQL statement). Now a query names at most max-page-size ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_naming_more_ids_than_a_page_is_refused() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[limits]\nmax_page_size = 3");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let g = alice.create().await.unwrap();
    alice.send_body(&g, "one").await.unwrap();
    let sid = match expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await {
        GroupEvent::Delivered { stanza_id, .. } => stanza_id,
        _ => unreachable!(),
    };
    let group = Jid::from(g.clone());
    let mut raw_alice = prosody.client("alice", "raw").await;
    let query = |n: usize| {
        let values: String = (0..n).map(|_| format!("<value>{sid}</value>")).collect();
        format!(
            "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>\
             <field var='ids'>{values}</field></x></query>"
        )
        .parse::<Element>()
        .unwrap()
    };

    let before = component.db().dump();
    for n in [4, 5_000] {
        let reply = raw(&raw_alice, &group, "set", query(n)).await;
        assert_eq!(outcome(&reply), "modify/bad-request: ids names at most max-page-size stanza ids", "{n} ids");
        assert_eq!(results(&mut raw_alice), Vec::<Element>::new());
    }
    assert!(component.db().dump() == before, "a refused query changed the store");
    let reply = raw(&raw_alice, &group, "set", query(3)).await;
    assert_eq!(outcome(&reply), "result");
    assert_eq!(results(&mut raw_alice).len(), 1);
    assert!(raw_alice.next_event_within(Duration::from_millis(200)).await.is_none());
    component.assert_never_reconnected();
}

/// The probe, on the client library: it took a Welcome from any JID, and
/// group traffic from any JID whose localpart reads as a group's, whatever
/// its domain. Mallory claimed one of bob's KeyPackages, staged an add
/// without submitting it and sent the Welcome straight to bob, whose client
/// joined a group the service never admitted him to (and would have
/// replaced the state of a group of the same id); an account registered
/// under a group's localpart told bob he was removed from it. Now the
/// client listens only to the service's domain, and to Welcomes only from
/// its own account's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_takes_group_traffic_and_welcomes_only_from_the_service() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let mut alice = member(&prosody, &dir, "alice", "laptop").await;
    let mut bob = member(&prosody, &dir, "bob", "phone").await;
    let mut mallory = member(&prosody, &dir, "mallory", "pc").await;
    let g = alice.create().await.unwrap();
    alice.add(&g, &[common::bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;

    // A Welcome from mallory's own JID, of an add the service never saw.
    let h = mallory.create().await.unwrap();
    let kps = mallory.key_packages_for(&common::bare("bob@example.org"), vec![]).await.unwrap();
    let bundle = mallory.stage_add(&h, kps).await.unwrap();
    let welcome = Element::builder("welcome", xmpp_mls::protocol::NS)
        .attr(n("group"), h.as_str())
        .append(xmpp_mls::protocol::b64_encode(bundle.welcome.as_ref().unwrap()))
        .build();
    let to_bob = Element::builder("message", "jabber:client").attr(n("to"), "bob@example.org/phone").append(welcome).build();
    mallory.session.send(to_bob).await.unwrap();
    // An unavailable presence "from bob's device JID" of g, at another domain.
    let g_node = g.node().unwrap().to_string();
    let impostor = prosody.client(&g_node, bob.device().id()).await;
    let gone = Element::builder("presence", "jabber:client")
        .attr(n("to"), "bob@example.org/phone")
        .attr(n("type"), "unavailable")
        .build();
    impostor.send(gone).await.unwrap();

    let before = component.db().dump();
    alice.send_body(&g, "after").await.unwrap();
    let mut seen = Vec::new();
    loop {
        let event = bob.next_event(Duration::from_secs(20)).await.unwrap().expect("alice's message");
        if matches!(&event, GroupEvent::Message { content, .. } if content.body().as_deref() == Some("after")) {
            break;
        }
        seen.push(event);
    }
    assert_eq!(seen, Vec::new(), "bob's client acted on stanzas that did not come from the service");
    assert_eq!(bob.groups().unwrap(), vec![g.clone()]);
    assert!(component.db().dump() != before, "alice's message was archived");
    component.assert_never_reconnected();
}

/// The defined condition and the application condition of an error,
/// with its 'reason' if any: "not-acceptable invalid-message/invalid".
fn refusal(reply: &Element) -> String {
    let error = reply.get_child("error", "jabber:client").unwrap_or_else(|| panic!("no error: {}", String::from(reply)));
    let e = StanzaError::try_from(error.clone()).unwrap();
    let defined = Element::from(e.defined_condition).name().to_owned();
    match e.other {
        Some(app) => match app.attr("reason") {
            Some(reason) => format!("{defined} {}/{reason}", app.name()),
            None => format!("{defined} {}", app.name()),
        },
        None => defined,
    }
}

/// The GroupInfo, with its ratchet tree, of a group of `leaves` leaves
/// made locally by mallory with keys that she never published, its
/// signature broken by one bit: only a verification finds that.
fn forged_group_info(group_id: &[u8], leaves: usize) -> Vec<u8> {
    use openmls::prelude::{
        BasicCredential, CredentialWithKey, GroupId, KeyPackage, MlsGroup, MlsGroupCreateConfig, OpenMlsProvider,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use tls_codec::Serialize as _;
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let key = || SignatureKeyPair::new(openmls_traits::types::SignatureScheme::ED25519).unwrap();
    let with_key = |s: &SignatureKeyPair| CredentialWithKey {
        credential: BasicCredential::new(b"xmpp:mallory@example.org".to_vec()).into(),
        signature_key: s.to_public_vec().into(),
    };
    let creator = key();
    let config = MlsGroupCreateConfig::builder().ciphersuite(common::mls::SUITE).use_ratchet_tree_extension(true).build();
    let mut group =
        MlsGroup::new_with_group_id(&provider, &creator, &config, GroupId::from_slice(group_id), with_key(&creator)).unwrap();
    let others: Vec<KeyPackage> = (1..leaves)
        .map(|_| {
            let s = key();
            KeyPackage::builder().build(common::mls::SUITE, &provider, &s, with_key(&s)).unwrap().key_package().clone()
        })
        .collect();
    if !others.is_empty() {
        group.add_members(&provider, &creator, &others).unwrap();
        group.merge_pending_commit(&provider).unwrap();
    }
    let mut bytes = group.export_group_info(provider.crypto(), &creator, true).unwrap().tls_serialize_detached().unwrap();
    *bytes.last_mut().unwrap() ^= 1; // the last octet of the signature
    bytes
}

/// The probe: a create verified the GroupInfo and every leaf signature of
/// its tree (inside the store's write transaction, which every write of
/// every account waits for) before it checked the group's size, the
/// creator's quota and the Authentication Service check, which need no
/// signature. A GroupInfo of many leaves with keys that no device list
/// holds therefore cost a signature per leaf to refuse, at the requester's
/// stanza rate. Now those checks come first: each of these forgeries, whose
/// signature is broken, is refused for what a lookup finds, not as invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_refused_by_size_quota_and_keys_before_any_signature_is_verified() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "[groups]\nmax_members = 8\nmax_groups_per_account = 2");
    let dir = tempfile::tempdir().unwrap();
    let mut mallory = member(&prosody, &dir, "mallory", "pc").await;
    let create = |group_id: &[u8], leaves: usize| {
        let group = Jid::new(&format!("{}@{}", xmpp_mls::protocol::address::group_node(group_id), common::COMPONENT)).unwrap();
        let gi = forged_group_info(group_id, leaves);
        let payload = Element::builder("create", xmpp_mls::protocol::NS)
            .append(Element::builder("group-info", xmpp_mls::protocol::NS).append(xmpp_mls::protocol::b64_encode(&gi)).build())
            .build();
        (group, payload)
    };

    let before = component.db().dump();
    let (group, too_big) = create(&[1; 16], 9);
    assert_eq!(refusal(&raw(&mallory.session, &group, "set", too_big).await), "policy-violation too-many-members");
    let (group, unknown_keys) = create(&[2; 16], 8);
    let reply = raw(&mallory.session, &group, "set", unknown_keys).await;
    assert_eq!(refusal(&reply), "not-acceptable invalid-message/unknown-signature-key");
    assert!(component.db().dump() == before, "a refused create changed the store");

    // At its quota, the account is refused before its leaves are looked at.
    mallory.create().await.unwrap();
    mallory.create().await.unwrap();
    let before = component.db().dump();
    let (group, over_quota) = create(&[3; 16], 2);
    assert_eq!(refusal(&raw(&mallory.session, &group, "set", over_quota).await), "policy-violation too-many-groups");
    assert!(component.db().dump() == before, "a refused create changed the store");
    component.assert_never_reconnected();
}
