//! Hostile input end to end: malformed and hostile stanzas, sent raw
//! through a real Prosody to every service of the component, each answered
//! as xep/ documents (§Error Handling, §Order of Checks,
//! §Conditions) and none changing anything in the store.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{bare, expect, member, normalise, strip_whitespace, COMPONENT, Component, Kind, Prosody};
use minidom::Element;
use xmpp_mls::client::{GroupClient, GroupEvent, Session};
use xmpp_mls::protocol::address::{group_node, Address};
use xmpp_mls::protocol::groups::Accepted;
use xmpp_mls::protocol::keypackages::key_package_element;
use xmpp_mls::protocol::mam::{Cursor, FIELD_KIND};
use xmpp_mls::protocol::pubsub::NS_PUBSUB_ERRORS;
use xmpp_mls::protocol::vault::VaultRequest;
use xmpp_mls::protocol::{b64_encode, NS, NS_ERRORS};
use xmpp_parsers::jid::{BareJid, Jid};

const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const CLIENT: &str = "jabber:client";
/// Elements nested in the deep-nesting cases: the recursive element builder
/// of xso that the component used overflowed a 2 MiB stack below 5000.
/// The cases that pass through ejabberd nest 2000 deep.
fn depth() -> usize {
    match Kind::chosen() {
        Kind::Prosody => 5_000,
        Kind::Ejabberd => 2_000,
    }
}

/// Who sends a case: alice's or bob's raw session (not on any feed).
#[derive(Clone, Copy)]
enum By {
    A,
    B,
}

/// One hostile stanza and what must come back: `none`, `unavailable`,
/// `result [<payload/>]`, or `type/condition [app-condition]` where the
/// application condition is written `name[attr=value,…]{children}`.
struct Case {
    name: &'static str,
    by: By,
    stanza: String,
    expect: &'static str,
}

fn c(name: &'static str, by: By, stanza: impl Into<String>, expect: &'static str) -> Case {
    Case { name, by, stanza: stanza.into(), expect }
}

fn iq(type_: &str, to: &str, payload: &str) -> String {
    format!("<iq xmlns='jabber:client' type='{type_}' to='{to}' id='{{ID}}'>{payload}</iq>")
}

fn set(to: &str, payload: &str) -> String {
    iq("set", to, payload)
}

fn get(to: &str, payload: &str) -> String {
    iq("get", to, payload)
}

fn groupchat(to: &str, body: &str) -> String {
    format!("<message xmlns='jabber:client' type='groupchat' to='{to}' id='{{ID}}'>{body}</message>")
}

fn presence(to: &str, attrs: &str, body: &str) -> String {
    format!("<presence xmlns='jabber:client' to='{to}' id='{{ID}}'{attrs}>{body}</presence>")
}

/// A XEP-0313 query with form fields and an RSM `<set/>` body.
fn mam(fields: &[(&str, &str)], rsm: &str) -> String {
    let fields: String =
        fields.iter().map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>")).collect();
    format!(
        "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field>{fields}</x>\
         <set xmlns='http://jabber.org/protocol/rsm'>{rsm}</set></query>"
    )
}

fn pubsub(action: &str) -> String {
    format!("<pubsub xmlns='http://jabber.org/protocol/pubsub'>{action}</pubsub>")
}

fn publish_device(id: &str, device: &str) -> String {
    pubsub(&format!("<publish node='urn:xmpp:mls:0:devices'><item id='{id}'>{device}</item></publish>"))
}

fn upload(key_packages: &[&str]) -> String {
    let items: String = key_packages
        .iter()
        .map(|kp| format!("<item><key-package xmlns='urn:xmpp:mls:0'>{kp}</key-package></item>"))
        .collect();
    pubsub(&format!("<publish node='urn:xmpp:mls:0:keypackages'>{items}</publish>"))
}

fn commit(check: &str, message: &str, group_info: &str) -> String {
    format!(
        "<commit xmlns='urn:xmpp:mls:0' epoch-check='{check}'><message>{message}</message>\
         <group-info>{group_info}</group-info></commit>"
    )
}

fn dev(key: &str, attrs: &str) -> String {
    format!("<device xmlns='urn:xmpp:mls:0' signature-scheme='ed25519'{attrs}>{key}</device>")
}

/// Base64 over max-payload-size (240 KiB by default) and under Prosody's
/// c2s stanza size limit (256 KiB), so the component sees the stanza.
fn oversized() -> String {
    "A".repeat(250_000)
}

/// [`depth`] nested elements around nothing.
fn nest() -> String {
    format!("{}{}", "<x>".repeat(depth()), "</x>".repeat(depth()))
}

fn cases() -> Vec<Case> {
    [addressing(), directory(), groups(), history(), vault(), impersonation()].into_iter().flatten().collect()
}

/// Discovery, addressing, payloads nobody handles, and stanzas that are
/// never answered.
fn addressing() -> Vec<Case> {
    use By::A;
    // Every answer echoes the id: a longer one than 1024 octets is refused
    // before the request is handled.
    let long = |stanza: String| stanza.replace("{ID}", &format!("long-{}", "i".repeat(1020)));
    vec![
        c("claim with an id of 1025 octets", A, long(set("{BDIR}", "<claim xmlns='urn:xmpp:mls:0'/>")), "modify/bad-request"),
        c("vault put with an id of 1025 octets", A, long(set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='long' if-version='0'>AAAA</put></vault>")), "modify/bad-request"),
        c("application message with an id of 1025 octets", A, long(groupchat("{G}", "<mls xmlns='urn:xmpp:mls:0'>{G_APP}</mls>")), "modify/bad-request"),
        c("feed join with an id of 1025 octets", A, long(presence("{G}/{ADEV}", "", "")), "modify/bad-request"),
        c("disco of an unknown group", A, get("{U}", "<query xmlns='http://jabber.org/protocol/disco#info'/>"), "cancel/item-not-found unknown-group"),
        c("disco node on a group", A, get("{G}", "<query xmlns='http://jabber.org/protocol/disco#info' node='x'/>"), "cancel/item-not-found"),
        c("disco#items node on a directory", A, get("{ADIR}", "<query xmlns='http://jabber.org/protocol/disco#items' node='urn:xmpp:mls:0:devices'/>"), "cancel/item-not-found"),
        c("malformed group localpart", A, get("not-a-group@{SVC}", "<query xmlns='http://jabber.org/protocol/disco#info'/>"), "modify/jid-malformed"),
        c("directory localpart without a domain", A, get("alice\\40@{SVC}", "<query xmlns='http://jabber.org/protocol/disco#info'/>"), "modify/jid-malformed"),
        c("resource at a directory", A, get("{ADIR}/x", "<query xmlns='http://jabber.org/protocol/disco#info'/>"), "cancel/service-unavailable"),
        c("disco in an IQ set", A, set("{SVC}", "<query xmlns='http://jabber.org/protocol/disco#info'/>"), "cancel/service-unavailable"),
        c("unknown namespace at a group", A, set("{G}", "<query xmlns='urn:example:nope'/>"), "cancel/service-unavailable"),
        c("unknown element in urn:xmpp:mls:0", A, set("{G}", "<destroy xmlns='urn:xmpp:mls:0'/>"), "modify/bad-request"),
        c("pubsub#owner at a directory", A, set("{ADIR}", "<pubsub xmlns='http://jabber.org/protocol/pubsub#owner'><delete node='urn:xmpp:mls:0:devices'/></pubsub>"), "cancel/service-unavailable"),
        c("IQ error with a create", A, format!("<iq xmlns='jabber:client' type='error' to='{{U}}' id='{{ID}}'><create xmlns='urn:xmpp:mls:0'><group-info>{{H_GI}}</group-info></create><error type='cancel'><bad-request xmlns='{STANZAS}'/></error></iq>"), "none"),
        c("IQ result with a vault put", A, "<iq xmlns='jabber:client' type='result' to='{ADIR}' id='{ID}'><vault xmlns='urn:xmpp:mls:0'><put name='x' if-version='0'>AAAA</put></vault></iq>", "none"),
    ]
}

/// The device list, KeyPackages and claims at the directories.
fn directory() -> Vec<Case> {
    use By::{A, B};
    let deep = nest();
    let big = oversized();
    let key = b64_encode(&[9u8; 32]); // nobody's key
    vec![
        c("bob publishes a device in alice's list", B, set("{ADIR}", &publish_device("evil-1", &dev(&key, ""))), "auth/forbidden"),
        c("bob publishes garbage in alice's list", B, set("{ADIR}", &publish_device("evil-1", "<junk xmlns='urn:x'/>")), "auth/forbidden"),
        c("device key truncated base64", A, set("{ADIR}", &publish_device("new-1", &dev(&key[..30], ""))), "modify/bad-request"),
        c("device key invalid base64", A, set("{ADIR}", &publish_device("new-1", &dev("AAEC!AQID$$==", ""))), "modify/bad-request"),
        c("device key of 31 octets", A, set("{ADIR}", &publish_device("new-1", &dev(&b64_encode(&[9u8; 31]), ""))), "modify/bad-request"),
        c("device of an unknown scheme", A, set("{ADIR}", &publish_device("new-1", &format!("<device xmlns='urn:xmpp:mls:0' signature-scheme='ed448'>{key}</device>"))), "modify/bad-request"),
        c("device expired", A, set("{ADIR}", &publish_device("new-1", &dev(&key, " expires='2001-01-01T00:00:00Z'"))), "modify/bad-request"),
        c("device expires not a date", A, set("{ADIR}", &publish_device("new-1", &dev(&key, " expires='-1'"))), "modify/bad-request"),
        c("device id with a space", A, set("{ADIR}", &publish_device("new 1", &dev(&key, ""))), "modify/bad-request"),
        c("device item without id", A, set("{ADIR}", &pubsub(&format!("<publish node='urn:xmpp:mls:0:devices'><item>{}</item></publish>", dev(&key, "")))), "modify/bad-request"),
        c("two devices in one publish", A, set("{ADIR}", &pubsub(&format!("<publish node='urn:xmpp:mls:0:devices'><item id='n1'>{0}</item><item id='n2'>{0}</item></publish>", dev(&key, "")))), "modify/bad-request"),
        c("device with an unknown element", A, set("{ADIR}", &publish_device("new-1", &dev(&key, "").replace("</device>", "<revoked/></device>"))), "modify/bad-request"),
        c("device label of 65 characters", A, set("{ADIR}", &publish_device("new-1", &dev(&key, &format!(" label='{}'", "x".repeat(65))))), "modify/bad-request"),
        c("another device with alice's key", A, set("{ADIR}", &publish_device("new-1", &dev("{AKEY}", ""))), "cancel/conflict signature-key-in-use"),
        c("device publish over max-payload-size", A, set("{ADIR}", &publish_device("new-1", &dev(&big, ""))), "modify/policy-violation payload-too-big"),
        c("retract an unknown device", A, set("{ADIR}", &pubsub("<retract node='urn:xmpp:mls:0:devices'><item id='nope'/></retract>")), "cancel/item-not-found"),
        c("alice retracts bob's device", A, set("{BDIR}", &pubsub("<retract node='urn:xmpp:mls:0:devices'><item id='{BDEV}'/></retract>")), "auth/forbidden"),
        c("publish to an unknown node", A, set("{ADIR}", &pubsub(&format!("<publish node='urn:example:other'><item id='x'>{}</item></publish>", dev(&key, "")))), "cancel/item-not-found"),
        c("publish without a node", A, set("{ADIR}", &pubsub(&format!("<publish><item id='x'>{}</item></publish>", dev(&key, "")))), "modify/bad-request"),
        c("items of an unknown device", A, get("{BDIR}", &pubsub("<items node='urn:xmpp:mls:0:devices'><item id='nope'/></items>")), "result <pubsub xmlns='http://jabber.org/protocol/pubsub'><items node='urn:xmpp:mls:0:devices'/></pubsub>"),
        c("items in an IQ set", A, set("{BDIR}", &pubsub("<items node='urn:xmpp:mls:0:devices'/>")), "modify/bad-request"),
        c("pubsub without an action", A, set("{ADIR}", &pubsub("")), "modify/bad-request"),
        c("create node", A, set("{ADIR}", &pubsub("<create node='evil'/>")), "cancel/feature-not-implemented pubsub#unsupported[feature=create-nodes]"),
        c("subscribe for bob's JID", A, set("{BDIR}", &pubsub("<subscribe node='urn:xmpp:mls:0:devices' jid='bob@example.org/raw'/>")), "modify/bad-request pubsub#invalid-jid"),
        c("subscribe without a jid", A, set("{BDIR}", &pubsub("<subscribe node='urn:xmpp:mls:0:devices'/>")), "modify/bad-request"),
        c("unsubscribe when not subscribed", A, set("{BDIR}", &pubsub("<unsubscribe node='urn:xmpp:mls:0:devices' jid='alice@example.org/raw'/>")), "cancel/unexpected-request pubsub#not-subscribed"),
        c("pubsub at a group", A, set("{G}", &pubsub("<items node='urn:xmpp:mls:0:devices'/>")), "cancel/service-unavailable"),
        // KeyPackages.
        c("bob uploads to alice's pool", B, set("{ADIR}", &upload(&["{B_KP}"])), "auth/forbidden"),
        c("bob lists alice's pool", B, get("{ADIR}", &pubsub("<items node='urn:xmpp:mls:0:keypackages'/>")), "auth/forbidden"),
        c("KeyPackage truncated base64", A, set("{ADIR}", &upload(&["{A_KP_CUT}"])), "modify/not-acceptable invalid-key-packages{key-package[index=0,reason=malformed]}"),
        c("KeyPackage invalid base64", A, set("{ADIR}", &upload(&["{A_KP2}", "AAEC!AQID$$=="])), "modify/not-acceptable invalid-key-packages{key-package[index=1,reason=malformed]}"),
        c("re-uploaded KeyPackage", A, set("{ADIR}", &upload(&["{A_KP}"])), "modify/not-acceptable invalid-key-packages{key-package[index=0,reason=duplicate]}"),
        c("one KeyPackage twice in an upload", A, set("{ADIR}", &upload(&["{A_KP2}", "{A_KP2}"])), "modify/not-acceptable invalid-key-packages{key-package[index=1,reason=duplicate]}"),
        c("more KeyPackages than the device has room for", A, set("{ADIR}", &pubsub("<publish node='urn:xmpp:mls:0:keypackages'>{A_KPS_OVER}</publish>")), "modify/policy-violation too-many-key-packages"),
        c("bob's KeyPackage in alice's pool", A, set("{ADIR}", &upload(&["{B_KP}"])), "modify/not-acceptable invalid-key-packages{key-package[index=0,reason=foreign-identity]}"),
        c("KeyPackage over max-key-package-size", A, set("{ADIR}", &upload(&["{A_KP2}", &b64_encode(&[7u8; 16385])])), "modify/not-acceptable invalid-key-packages{key-package[index=1,reason=too-big]}"),
        c("a Welcome as a KeyPackage", A, set("{ADIR}", &upload(&["{H_WELCOME}"])), "modify/not-acceptable invalid-key-packages{key-package[index=0,reason=malformed]}"),
        c("a device as a KeyPackage item", A, set("{ADIR}", &pubsub(&format!("<publish node='urn:xmpp:mls:0:keypackages'><item>{}</item></publish>", dev(&key, "")))), "modify/bad-request"),
        c("retract a KeyPackage", A, set("{ADIR}", &pubsub("<retract node='urn:xmpp:mls:0:keypackages'><item id='00'/></retract>")), "cancel/feature-not-implemented pubsub#unsupported[feature=retract-items]"),
        c("subscribe to the KeyPackage node", A, set("{ADIR}", &pubsub("<subscribe node='urn:xmpp:mls:0:keypackages' jid='alice@example.org/raw'/>")), "cancel/feature-not-implemented pubsub#unsupported[feature=subscribe]"),
        c("KeyPackage nested thousands deep", A, set("{ADIR}", &pubsub(&format!("<publish node='urn:xmpp:mls:0:keypackages'><item><key-package xmlns='urn:xmpp:mls:0'>{deep}</key-package></item></publish>"))), "modify/bad-request"),
        // Claims.
        c("claim in an IQ get", A, get("{BDIR}", "<claim xmlns='urn:xmpp:mls:0'/>"), "modify/bad-request"),
        c("claim of a negative cipher suite", A, set("{BDIR}", "<claim xmlns='urn:xmpp:mls:0' cipher-suite='-1'/>"), "modify/bad-request"),
        c("claim of a cipher suite over 16 bits", A, set("{BDIR}", "<claim xmlns='urn:xmpp:mls:0' cipher-suite='65536'/>"), "modify/bad-request"),
        c("claim of a device without id", A, set("{BDIR}", "<claim xmlns='urn:xmpp:mls:0'><device/></claim>"), "modify/bad-request"),
        c("claim with an unknown element", A, set("{BDIR}", "<claim xmlns='urn:xmpp:mls:0'><everything/></claim>"), "modify/bad-request"),
        c("claim of an unknown device", A, set("{BDIR}", "<claim xmlns='urn:xmpp:mls:0'><device id='nope'/></claim>"), "result <claimed xmlns='urn:xmpp:mls:0'><unknown-device device='nope'/></claimed>"),
        c("claim of an unadvertised suite", A, set("{BDIR}", "<claim xmlns='urn:xmpp:mls:0' cipher-suite='2'/>"), "result <claimed xmlns='urn:xmpp:mls:0'><nothing-compatible device='{BDEV}'/></claimed>"),
        c("claim at a group", A, set("{G}", "<claim xmlns='urn:xmpp:mls:0'/>"), "cancel/service-unavailable"),
        c("claim of one device fifty times", A, set("{BDIR}", &format!("<claim xmlns='urn:xmpp:mls:0'>{}</claim>", "<device id='{BDEV}'/>".repeat(50))), "modify/bad-request duplicate-device"),
        c("claim of more devices than an account may have", A, set("{BDIR}", &format!("<claim xmlns='urn:xmpp:mls:0'>{}</claim>", (0..17).map(|i| format!("<device id='d{i}'/>")).collect::<String>())), "modify/policy-violation too-many-devices"),
    ]
}

/// Group requests, application messages and the live feed.
fn groups() -> Vec<Case> {
    use By::{A, B};
    let deep = nest();
    let big = oversized();
    vec![
        c("create an existing group", A, set("{G}", "<create xmlns='urn:xmpp:mls:0'><group-info>{H_GI}</group-info></create>"), "cancel/conflict group-exists"),
        c("create with another group's GroupInfo", A, set("{U}", "<create xmlns='urn:xmpp:mls:0'><group-info>{H_GI}</group-info></create>"), "modify/not-acceptable invalid-message[reason=wrong-group]"),
        c("create with a KeyPackage as GroupInfo", A, set("{U}", "<create xmlns='urn:xmpp:mls:0'><group-info>{A_KP2}</group-info></create>"), "modify/not-acceptable invalid-message[reason=malformed]"),
        c("create with truncated base64", A, set("{U}", "<create xmlns='urn:xmpp:mls:0'><group-info>{H_GI_CUT}</group-info></create>"), "modify/bad-request"),
        c("create without GroupInfo", A, set("{U}", "<create xmlns='urn:xmpp:mls:0'/>"), "modify/bad-request"),
        c("create in an IQ get", A, get("{U}", "<create xmlns='urn:xmpp:mls:0'><group-info>{H_GI}</group-info></create>"), "modify/bad-request"),
        c("create at a directory", A, set("{ADIR}", "<create xmlns='urn:xmpp:mls:0'><group-info>{H_GI}</group-info></create>"), "cancel/service-unavailable"),
        // Commit bundles.
        // A resend by its committer's account gets the original acceptance
        // (xep/ §Resends); the same bytes from another account are stale.
        c("resent commit bundle", A, set("{H}", "{H_BUNDLE}"), "result <accepted xmlns='urn:xmpp:mls:0' epoch='1' position='{H_POS}' stanza-id='{H_SID}'/>"),
        c("commit bundle replayed by another account", B, set("{H}", "{H_BUNDLE}"), "cancel/conflict wrong-epoch[commit={H_SID},epoch=1]"),
        c("commit of another group", A, set("{G}", "{H_BUNDLE}"), "modify/not-acceptable invalid-message[reason=wrong-group]"),
        c("commit to an unknown group", A, set("{U}", "{H_BUNDLE}"), "cancel/item-not-found unknown-group"),
        c("a KeyPackage as commit", A, set("{G}", &commit("{H_CHECK}", "{A_KP2}", "{H_GI}")), "modify/not-acceptable invalid-message[reason=wrong-wire-format]"),
        c("a GroupInfo as commit", A, set("{G}", &commit("{H_CHECK}", "{H_GI}", "{H_GI}")), "modify/not-acceptable invalid-message[reason=wrong-wire-format]"),
        c("an application message as commit", A, set("{G}", &commit("{H_CHECK}", "{G_APP}", "{H_GI}")), "modify/not-acceptable invalid-message[reason=wrong-wire-format]"),
        c("a proposal as commit", A, set("{G}", &commit("{H_CHECK}", "{G_PROP}", "{H_GI}")), "modify/not-acceptable invalid-message[reason=wrong-content-type]"),
        c("commit with trailing octets", A, set("{H}", &commit("{H_CHECK}", "{H_COMMIT_LONG}", "{H_GI}")), "modify/not-acceptable invalid-message[reason=malformed]"),
        c("commit of random octets", A, set("{G}", &commit("{H_CHECK}", "{GARBAGE}", "{H_GI}")), "modify/not-acceptable invalid-message[reason=malformed]"),
        c("commit with truncated base64", A, set("{H}", &commit("{H_CHECK}", "{H_COMMIT_CUT}", "{H_GI}")), "modify/bad-request"),
        c("commit with invalid base64", A, set("{H}", &commit("{H_CHECK}", "{H_COMMIT}", "AAEC!AQID$$==")), "modify/bad-request"),
        c("commit without epoch-check", A, set("{H}", "<commit xmlns='urn:xmpp:mls:0'><message>{H_COMMIT}</message><group-info>{H_GI}</group-info></commit>"), "modify/bad-request"),
        c("commit with an uppercase epoch-check", A, set("{H}", &commit("{H_CHECK_UPPER}", "{H_COMMIT}", "{H_GI}")), "modify/bad-request"),
        c("commit without message", A, set("{H}", "<commit xmlns='urn:xmpp:mls:0' epoch-check='{H_CHECK}'><group-info>{H_GI}</group-info></commit>"), "modify/bad-request"),
        c("commit in an IQ get", A, get("{H}", "{H_BUNDLE}"), "modify/bad-request"),
        c("commit over max-payload-size", A, set("{G}", &commit("{H_CHECK}", &big, "{H_GI}")), "modify/policy-violation payload-too-big"),
        c("commit with an unknown element", A, set("{H}", &commit("{H_CHECK}", "{H_COMMIT}", "{H_GI}").replace("</commit>", "<signature>AAAA</signature></commit>")), "modify/bad-request"),
        c("commit nested thousands deep", A, set("{G}", &commit("{H_CHECK}", &deep, "{H_GI}")), "modify/bad-request"),
        // Proposals.
        c("resent proposal of an ended epoch", B, set("{G}", "<proposal xmlns='urn:xmpp:mls:0'><message>{G_PROP}</message></proposal>"), "result <accepted xmlns='urn:xmpp:mls:0' epoch='1' position='{G_PROP_POS}' stanza-id='{G_PROP_SID}'/>"),
        c("proposal of an ended epoch replayed by another account", A, set("{G}", "<proposal xmlns='urn:xmpp:mls:0'><message>{G_PROP}</message></proposal>"), "cancel/conflict wrong-epoch[commit={G_SID2},epoch=2]"),
        c("a commit as proposal", A, set("{H}", "<proposal xmlns='urn:xmpp:mls:0'><message>{H_COMMIT}</message></proposal>"), "modify/not-acceptable invalid-message[reason=wrong-content-type]"),
        c("proposal without message", A, set("{G}", "<proposal xmlns='urn:xmpp:mls:0'/>"), "modify/bad-request"),
        c("proposal in an IQ get", B, get("{G}", "<proposal xmlns='urn:xmpp:mls:0'><message>{G_PROP}</message></proposal>"), "modify/bad-request"),
        c("proposal to an unknown group", B, set("{U}", "<proposal xmlns='urn:xmpp:mls:0'><message>{G_PROP}</message></proposal>"), "cancel/item-not-found unknown-group"),
        // GroupInfo.
        c("group-info in an IQ set", A, set("{G}", "<group-info xmlns='urn:xmpp:mls:0'/>"), "modify/bad-request"),
        c("group-info of a group bob is not in", B, get("{H}", "<group-info xmlns='urn:xmpp:mls:0'/>"), "auth/forbidden not-a-member"),
        c("group-info of an unknown group", A, get("{U}", "<group-info xmlns='urn:xmpp:mls:0'/>"), "cancel/item-not-found unknown-group"),
        c("group-info at a device JID", A, get("{G}/{ADEV}", "<group-info xmlns='urn:xmpp:mls:0'/>"), "cancel/service-unavailable"),
        // Leaving a group.
        c("leave in an IQ get", A, get("{G}", "<leave xmlns='urn:xmpp:mls:0'/>"), "modify/bad-request"),
        c("leave an unknown group", A, set("{U}", "<leave xmlns='urn:xmpp:mls:0'/>"), "cancel/item-not-found unknown-group"),
        c("leave a group bob is not in", B, set("{H}", "<leave xmlns='urn:xmpp:mls:0'/>"), "auth/forbidden not-a-member"),
        c("leave at a directory", A, set("{ADIR}", "<leave xmlns='urn:xmpp:mls:0'/>"), "cancel/service-unavailable"),
        // Application messages and the live feed.
        c("a Welcome as application message", A, groupchat("{H}", "<mls xmlns='urn:xmpp:mls:0'>{H_WELCOME}</mls>"), "modify/not-acceptable invalid-message[reason=wrong-wire-format]"),
        c("a commit as application message", A, groupchat("{H}", "<mls xmlns='urn:xmpp:mls:0'>{H_COMMIT}</mls>"), "modify/not-acceptable invalid-message[reason=wrong-wire-format]"),
        c("application message of another group", A, groupchat("{H}", "<mls xmlns='urn:xmpp:mls:0'>{G_APP}</mls>"), "modify/not-acceptable invalid-message[reason=wrong-group]"),
        c("application message to an unknown group", A, groupchat("{U}", "<mls xmlns='urn:xmpp:mls:0'>{U_APP}</mls>"), "cancel/item-not-found unknown-group"),
        c("application message from off the feed", A, groupchat("{G}", "<mls xmlns='urn:xmpp:mls:0'>{G_APP}</mls>"), "modify/not-acceptable not-joined"),
        c("application message over max-payload-size", A, groupchat("{G}", &format!("<mls xmlns='urn:xmpp:mls:0'>{big}</mls>")), "modify/policy-violation payload-too-big"),
        c("application message truncated base64", A, groupchat("{G}", "<mls xmlns='urn:xmpp:mls:0'>{G_APP_CUT}</mls>"), "modify/bad-request"),
        c("application message invalid base64", A, groupchat("{G}", "<mls xmlns='urn:xmpp:mls:0'>AAEC!AQID$$==</mls>"), "modify/bad-request"),
        c("application message of random octets", A, groupchat("{G}", "<mls xmlns='urn:xmpp:mls:0'>{GARBAGE}</mls>"), "modify/not-acceptable invalid-message[reason=malformed]"),
        c("application message with a negative epoch", A, groupchat("{G}", "<mls xmlns='urn:xmpp:mls:0' epoch='-1'>{G_APP}</mls>"), "modify/bad-request"),
        c("chat message with mls", A, "<message xmlns='jabber:client' type='chat' to='{G}' id='{ID}'><mls xmlns='urn:xmpp:mls:0'>{G_APP}</mls></message>", "cancel/service-unavailable"),
        c("groupchat without mls", A, groupchat("{G}", "<body>hello</body>"), "cancel/service-unavailable"),
        c("groupchat to a device JID", A, groupchat("{G}/{BDEV}", "<mls xmlns='urn:xmpp:mls:0'>{G_APP}</mls>"), "cancel/service-unavailable"),
        c("groupchat body nested thousands deep", A, groupchat("{G}", &format!("<body>{deep}</body>")), "cancel/service-unavailable"),
        c("message error with mls", A, format!("<message xmlns='jabber:client' type='error' to='{{G}}' id='{{ID}}'><mls xmlns='urn:xmpp:mls:0'>{{G_APP}}</mls><error type='cancel'><bad-request xmlns='{STANZAS}'/></error></message>"), "none"),
        c("join the feed as bob's device", A, presence("{G}/{BDEV}", "", ""), "auth/forbidden not-a-member"),
        c("join the feed as an unknown device", A, presence("{G}/nope", "", ""), "auth/forbidden not-a-member"),
        c("join the feed of an unknown group", A, presence("{U}/{ADEV}", "", ""), "cancel/item-not-found unknown-group"),
        c("join the feed of a group bob is not in", B, presence("{H}/{BDEV}", "", ""), "auth/forbidden not-a-member"),
        c("presence error to the feed", A, presence("{G}/{ADEV}", " type='error'", &format!("<error type='cancel'><bad-request xmlns='{STANZAS}'/></error>")), "none"),
        c("presence probe to the feed", A, presence("{G}/{ADEV}", " type='probe'", ""), "none"),
        c("leave a feed one is not on", A, presence("{G}/{BDEV}", " type='unavailable'", ""), "none"),
        c("leave the feed of an unknown group", A, presence("{U}/{ADEV}", " type='unavailable'", ""), "none"),
        c("join carrying thousands of nested elements", B, presence("{H}/{BDEV}", "", &format!("<x xmlns='urn:example:x'>{deep}</x>")), "auth/forbidden not-a-member"),
    ]
}

/// Archives and inboxes: XEP-0313 queries, metadata, acknowledgements.
fn history() -> Vec<Case> {
    use By::{A, B};
    let deep = nest();
    vec![
        c("query an unknown group", A, set("{U}", &mam(&[], "")), "cancel/item-not-found unknown-group"),
        c("query a group bob was never in", B, set("{H}", &mam(&[], "")), "auth/forbidden not-a-member"),
        c("query alice's inbox as bob", B, set("{ADIR}", &mam(&[], "")), "auth/forbidden"),
        c("query at the service", A, set("{SVC}", &mam(&[], "")), "cancel/service-unavailable"),
        c("query with an unknown field", A, set("{G}", &mam(&[("color", "red")], "")), "modify/bad-request"),
        c("query with a start that is no date", A, set("{G}", &mam(&[("start", "yesterday")], "")), "modify/bad-request"),
        c("query with a negative epoch", A, set("{G}", &mam(&[("urn:xmpp:mls:0#epoch-from", "-1")], "")), "modify/bad-request"),
        c("query from the largest epoch", A, set("{G}", &mam(&[("urn:xmpp:mls:0#epoch-from", "18446744073709551615")], "")), "result <fin xmlns='urn:xmpp:mam:2' complete='true'><set xmlns='http://jabber.org/protocol/rsm'><count>0</count></set></fin>"),
        c("query up to the largest epoch", A, set("{G}", &mam(&[("urn:xmpp:mls:0#epoch-to", "18446744073709551615")], "<max>0</max>")), "result <fin xmlns='urn:xmpp:mam:2'><set xmlns='http://jabber.org/protocol/rsm'><count>4</count></set></fin>"),
        c("query of an unknown kind", A, set("{G}", &mam(&[(FIELD_KIND, "everything")], "")), "modify/bad-request"),
        c("query with another group's device", A, set("{G}", &mam(&[("with", "{H}/{ADEV}")], "")), "modify/bad-request"),
        c("query after an unknown id", A, set("{G}", &mam(&[("after-id", "nope")], "")), "cancel/item-not-found"),
        c("query after another archive's id", A, set("{G}", &mam(&[("after-id", "{H_SID}")], "")), "cancel/item-not-found"),
        c("query for an unknown id", A, set("{G}", "<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field><field var='ids'><value>{G_LAST}</value><value>nope</value></field></x></query>"), "cancel/item-not-found"),
        c("query with a negative max", A, set("{G}", &mam(&[], "<max>-5</max>")), "modify/bad-request"),
        c("query with a huge max", A, set("{G}", &mam(&[("after-id", "{G_LAST}")], "<max>99999999999999999999999</max>")), "result <fin xmlns='urn:xmpp:mam:2' complete='true'><set xmlns='http://jabber.org/protocol/rsm'><count>0</count></set></fin>"),
        c("query with a queryid of 1025 octets", A, set("{G}", &format!("<query xmlns='urn:xmpp:mam:2' queryid='{}'/>", "q".repeat(1025))), "modify/bad-request"),
        c("query naming more ids than a page holds", A, set("{G}", &format!("<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' type='hidden'><value>urn:xmpp:mam:2</value></field><field var='ids'>{}</field></x></query>", "<value>{G_LAST}</value>".repeat(101))), "modify/bad-request"),
        c("query paging before an unknown id", A, set("{ADIR}", &mam(&[], "<before>nope</before>")), "cancel/item-not-found"),
        c("query field value nested thousands deep", A, set("{G}", &mam(&[("start", &deep)], "")), "modify/bad-request"),
        c("metadata in an IQ set", A, set("{G}", "<metadata xmlns='urn:xmpp:mam:2'/>"), "cancel/service-unavailable"),
        c("metadata of a group bob was never in", B, get("{H}", "<metadata xmlns='urn:xmpp:mam:2'/>"), "auth/forbidden not-a-member"),
        c("metadata of alice's inbox as bob", B, get("{ADIR}", "<metadata xmlns='urn:xmpp:mam:2'/>"), "auth/forbidden"),
        c("fields of an unknown group", A, get("{U}", "<query xmlns='urn:xmpp:mam:2'/>"), "cancel/item-not-found unknown-group"),
        c("ack for bob's device", A, set("{G}", "<ack xmlns='urn:xmpp:mls:0' device='{BDEV}' id='{G_LAST}'/>"), "auth/forbidden"),
        c("ack of an unknown id", A, set("{G}", "<ack xmlns='urn:xmpp:mls:0' device='{ADEV}' id='nope'/>"), "cancel/item-not-found"),
        c("ack with an unknown element", A, set("{ADIR}", "<ack xmlns='urn:xmpp:mls:0' device='{ADEV}' id='{G_LAST}'><all/></ack>"), "modify/bad-request"),
        c("ack without id", A, set("{G}", "<ack xmlns='urn:xmpp:mls:0' device='{ADEV}'/>"), "modify/bad-request"),
        c("ack of an unknown group", A, set("{U}", "<ack xmlns='urn:xmpp:mls:0' device='{ADEV}' id='{G_LAST}'/>"), "cancel/item-not-found unknown-group"),
        c("ack of a group bob was never in", B, set("{H}", "<ack xmlns='urn:xmpp:mls:0' device='{BDEV}' id='{H_SID}'/>"), "auth/forbidden not-a-member"),
        c("ack of bob's inbox", A, set("{BDIR}", "<ack xmlns='urn:xmpp:mls:0' device='{ADEV}' id='nope'/>"), "auth/forbidden"),
        c("ack of an unknown inbox id", A, set("{ADIR}", "<ack xmlns='urn:xmpp:mls:0' device='{ADEV}' id='{G_LAST}'/>"), "cancel/item-not-found"),
        c("ack at the service", A, set("{SVC}", "<ack xmlns='urn:xmpp:mls:0' device='nope'/>"), "cancel/service-unavailable"),
    ]
}

/// The vault.
fn vault() -> Vec<Case> {
    use By::{A, B};
    let deep = nest();
    let big = oversized();
    let blob = b64_encode(&vec![7u8; 170_000]);
    vec![
        c("bob writes alice's vault", B, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes' if-version='1'>AAAA</put></vault>"), "auth/forbidden"),
        c("bob sends alice's vault nonsense", B, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><burn/><burn/></vault>"), "auth/forbidden"),
        c("bob reads alice's vault", B, get("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><get name='notes'/></vault>"), "auth/forbidden"),
        c("put truncated base64", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes' if-version='1'>AAECAwQ</put></vault>"), "modify/bad-request"),
        c("put invalid base64", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes' if-version='1'>AAEC!AQID$$==</put></vault>"), "modify/bad-request"),
        c("put without if-version", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes'>AAAA</put></vault>"), "modify/bad-request"),
        c("put with a negative if-version", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes' if-version='-1'>AAAA</put></vault>"), "modify/bad-request"),
        c("put with the largest if-version", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes' if-version='18446744073709551615'>AAAA</put></vault>"), "cancel/conflict version-mismatch[current=1]"),
        c("put from version 0 over a blob", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes' if-version='0'>AAAA</put></vault>"), "cancel/conflict version-mismatch[current=1]"),
        c("put with an invalid name", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='../etc passwd' if-version='0'>AAAA</put></vault>"), "modify/bad-request"),
        c("put larger than max-vault-blob-size", A, set("{ADIR}", &format!("<vault xmlns='urn:xmpp:mls:0'><put name='big' if-version='0'>{blob}</put></vault>")), "modify/policy-violation blob-too-big"),
        c("put over max-payload-size", A, set("{ADIR}", &format!("<vault xmlns='urn:xmpp:mls:0'><put name='big' if-version='0'>{big}</put></vault>")), "modify/policy-violation payload-too-big"),
        c("put nested thousands deep", A, set("{ADIR}", &format!("<vault xmlns='urn:xmpp:mls:0'><put name='deep' if-version='0'>{deep}</put></vault>")), "modify/bad-request"),
        c("put with an element for data", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='empty' if-version='0'><data>AAAA</data></put></vault>"), "modify/bad-request"),
        c("put in an IQ get", A, get("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><put name='notes' if-version='1'>AAAA</put></vault>"), "modify/bad-request"),
        c("get in an IQ set", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><get name='notes'/></vault>"), "modify/bad-request"),
        c("two vault actions", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><delete name='notes' if-version='1'/><delete name='notes' if-version='1'/></vault>"), "modify/bad-request"),
        c("vault action in a foreign namespace", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><delete xmlns='urn:example:x' name='notes' if-version='1'/></vault>"), "modify/bad-request"),
        c("get an unknown blob", A, get("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><get name='nope'/></vault>"), "cancel/item-not-found"),
        c("delete an unknown blob", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><delete name='nope' if-version='1'/></vault>"), "cancel/item-not-found"),
        c("delete at a stale version", A, set("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><delete name='notes' if-version='2'/></vault>"), "cancel/conflict version-mismatch[current=1]"),
        c("vault listing after an invalid name", A, get("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><list><set xmlns='http://jabber.org/protocol/rsm'><after>a b</after></set></list></vault>"), "modify/bad-request"),
        c("vault listing with a page size that is not a number", A, get("{ADIR}", "<vault xmlns='urn:xmpp:mls:0'><list><set xmlns='http://jabber.org/protocol/rsm'><max>-1</max></set></list></vault>"), "modify/bad-request"),
        c("vault at a group", A, get("{G}", "<vault xmlns='urn:xmpp:mls:0'><list/></vault>"), "cancel/service-unavailable"),
        c("vault at a directory resource", A, get("{ADIR}/x", "<vault xmlns='urn:xmpp:mls:0'><list/></vault>"), "cancel/service-unavailable"),
    ]
}

/// The sender is the authenticated account, whatever 'from' says:
/// Prosody stamps alice's full JID over it (RFC 6120 §8.1.2.1), and the
/// component answers alice. ejabberd closes alice's stream with
/// `<invalid-from/>` instead: the stanza never reaches the component.
fn impersonation() -> Vec<Case> {
    use By::A;
    let key = b64_encode(&[9u8; 32]); // nobody's key
    vec![
        c("vault write with bob's from", A, "<iq xmlns='jabber:client' type='set' from='bob@example.org/raw' to='{BDIR}' id='{ID}'><vault xmlns='urn:xmpp:mls:0'><put name='x' if-version='0'>AAAA</put></vault></iq>", "auth/forbidden"),
        c("device publish with bob's from", A, format!("<iq xmlns='jabber:client' type='set' from='bob@example.org' to='{{BDIR}}' id='{{ID}}'>{}</iq>", publish_device("evil-2", &dev(&key, ""))), "auth/forbidden"),
        c("application message from bob's phone on the feed", A, "<message xmlns='jabber:client' type='groupchat' from='bob@example.org/phone' to='{G}' id='{ID}'><mls xmlns='urn:xmpp:mls:0'>{G_APP}</mls></message>", "modify/not-acceptable not-joined"),
        c("bob's phone leaving the feed", A, "<presence xmlns='jabber:client' type='unavailable' from='bob@example.org/phone' to='{G}/{BDEV}' id='{ID}'/>", "none"),
    ]
}

/// An expectation with its XML, if any, serialised as replies are.
fn expected(spec: &str) -> String {
    match spec.split_once(' ') {
        Some(("result", xml)) => format!("result {}", String::from(&normalise(xml))),
        _ => spec.to_owned(),
    }
}

/// `name[attr=value,…]{children}`, prefixed `pubsub#` for XEP-0060 conditions.
fn condition(el: &Element) -> String {
    let prefix = match el.ns().as_str() {
        NS_ERRORS => String::new(),
        NS_PUBSUB_ERRORS => "pubsub#".into(),
        other => format!("{other}#"),
    };
    let mut attrs: Vec<String> = el.attrs().into_iter().map(|((_, k), v)| format!("{k}={v}")).collect();
    attrs.sort();
    let attrs = if attrs.is_empty() { String::new() } else { format!("[{}]", attrs.join(",")) };
    let children: Vec<String> = el.children().map(condition).map(|c| c.trim_start_matches(&prefix).to_owned()).collect();
    let children = if children.is_empty() { String::new() } else { format!("{{{}}}", children.join(",")) };
    format!("{prefix}{}{attrs}{children}", el.name())
}

/// What came back, in the notation of [`Case::expect`].
fn outcome(reply: Option<&Element>) -> String {
    let Some(reply) = reply else { return "none".into() };
    let error = reply.get_child("error", CLIENT);
    match (reply.attr("type"), reply.children().next(), error) {
        (Some("unavailable"), None, _) => "unavailable".into(),
        (Some("result"), None, _) => "result".into(),
        (Some("result"), Some(payload), _) => format!("result {}", String::from(&strip_whitespace(payload.clone()))),
        (Some("error"), _, Some(error)) => {
            let defined = error.children().find(|c| c.ns() == STANZAS && c.name() != "text").map_or("none", |d| d.name());
            let app = error.children().find(|c| c.ns() != STANZAS).map(|a| format!(" {}", condition(a)));
            format!("{}/{defined}{}", error.attr("type").unwrap_or("none"), app.unwrap_or_default())
        }
        _ => String::from(reply),
    }
}

/// Sends `stanza` and waits for its answer; when none is expected, a ping
/// answered by the component first proves that none came.
async fn exchange(session: &mut Session, stanza: Element, expect_reply: bool) -> Option<Element> {
    let id = stanza.attr("id").unwrap_or_default().to_owned();
    let is_request = stanza.name() == "iq" && matches!(stanza.attr("type"), Some("get" | "set"));
    if is_request {
        return Some(session.request(stanza).await.expect("an answer"));
    }
    session.send(stanza).await.unwrap();
    if expect_reply {
        return session.next_event_within(Duration::from_secs(10)).await;
    }
    let ping = normalise(&format!(
        "<iq xmlns='jabber:client' type='get' to='{COMPONENT}' id='{id}-ping'><ping xmlns='urn:xmpp:ping'/></iq>"
    ));
    let pong = session.request(ping).await.unwrap();
    assert_eq!(pong.attr("type"), Some("result"), "{pong:?}");
    session.try_next_event()
}

fn substitute(template: &str, vars: &HashMap<&str, String>) -> String {
    vars.iter().fold(template.to_owned(), |s, (k, v)| s.replace(&format!("{{{k}}}"), v))
}

/// One table of a store dump ([`common::db::StoreDb::dump`]): its name and rows.
type TableRows = (String, Vec<Vec<Vec<u8>>>);

/// Names of the store's tables whose rows differ.
fn changed_tables(before: &[TableRows], after: &[TableRows]) -> Vec<String> {
    let gone = before.iter().filter(|t| !after.contains(t));
    let mut names: Vec<String> = gone.chain(after.iter().filter(|t| !before.contains(t))).map(|(name, _)| name.clone()).collect();
    names.sort();
    names.dedup();
    names
}

fn group_id(group: &BareJid) -> Vec<u8> {
    match Address::parse(&Jid::from(group.clone())) {
        Ok(Address::Group(id)) => id,
        other => panic!("{group} is no group: {other:?}"),
    }
}

/// The `<mls/>` text of the first archived item of `kind`.
async fn archived(client: &mut GroupClient, group: &BareJid, kind: &str) -> String {
    let page = client.archive_page(&group.clone().into(), &[(FIELD_KIND, kind)], 10, &Cursor::First, false).await.unwrap();
    let item = page.stanzas.first().unwrap_or_else(|| panic!("no {kind} in the archive"));
    item.get_child("mls", NS).unwrap().text()
}

/// Base64 cut short by three characters: no longer a whole number of quanta.
fn cut(b64: &str) -> String {
    b64[..b64.len() - 3].to_owned()
}

/// Two accounts with devices and KeyPackages; G, a group of both at epoch
/// 2 with a proposal, a commit and an application message in its archive;
/// H, alice's group whose first commit bundle (adding carol) is kept for
/// replaying; a blob in alice's vault. Returns the placeholders of
/// [`cases`], and the devices: they stay online, so that no feed changes
/// while the cases run.
async fn set_up(prosody: &Prosody, dir: &tempfile::TempDir) -> (HashMap<&'static str, String>, Vec<GroupClient>) {
    let mut alice = member(prosody, dir, "alice", "laptop").await;
    let mut bob = member(prosody, dir, "bob", "phone").await;
    let carol = member(prosody, dir, "carol", "pc").await;
    let service = Jid::new(COMPONENT).unwrap();

    let g = alice.create().await.unwrap();
    alice.add(&g, &[bare("bob@example.org")]).await.unwrap();
    expect(&mut bob, "welcome", |e| matches!(e, GroupEvent::Joined { .. })).await;
    let proposed = bob.propose_update(&g).await.unwrap();
    expect(&mut alice, "proposal", |e| matches!(e, GroupEvent::Proposed { .. })).await;
    let second = alice.commit_pending(&g).await.unwrap();
    alice.send_body(&g, "hello").await.unwrap();
    let last = match expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await {
        GroupEvent::Delivered { stanza_id, .. } => stanza_id,
        _ => unreachable!(),
    };
    let g_app = archived(&mut alice, &g, "application").await;
    let g_prop = archived(&mut alice, &g, "proposal").await;

    let h = alice.create().await.unwrap();
    let kps = alice.key_packages_for(&bare("carol@example.org"), vec![]).await.unwrap();
    let bundle = alice.stage_add(&h, kps).await.unwrap();
    let accepted = Accepted::parse(&alice.submit(&h, &bundle).await.unwrap().unwrap()).unwrap();
    alice.discard_pending(&h).unwrap();

    let kp = alice.device().key_packages(1).unwrap().remove(0);
    alice.session.upload_key_packages(&service, std::slice::from_ref(&kp)).await.unwrap();
    let put = VaultRequest::Put { name: "notes".into(), if_version: 0, data: vec![1, 2, 3] }.to_element();
    let adir = xmpp_mls::client::directory_jid(&bare("alice@example.org"), &service);
    alice.session.iq(&adir, "set", put).await.unwrap();

    let (gid, mut uid) = (group_id(&g), group_id(&g));
    uid[0] ^= 0xff;
    let g_app_bytes = xmpp_mls::protocol::b64_decode(&g_app).unwrap();
    let at = g_app_bytes.windows(gid.len()).position(|w| w == gid.as_slice()).expect("the group id in the header");
    let mut u_app = g_app_bytes.clone();
    u_app[at..at + gid.len()].copy_from_slice(&uid);
    let h_commit = b64_encode(&bundle.commit);
    let mut long = bundle.commit.clone();
    long.push(0);

    let mut vars = HashMap::new();
    vars.insert("SVC", COMPONENT.to_owned());
    vars.insert("ADIR", adir.to_string());
    vars.insert("BDIR", xmpp_mls::client::directory_jid(&bare("bob@example.org"), &service).to_string());
    vars.insert("ADEV", alice.device().id().to_owned());
    vars.insert("BDEV", bob.device().id().to_owned());
    vars.insert("AKEY", b64_encode(alice.device().signature_key()));
    vars.insert("G", g.to_string());
    vars.insert("H", h.to_string());
    vars.insert("U", format!("{}@{COMPONENT}", group_node(&uid)));
    vars.insert("G_APP", g_app.clone());
    vars.insert("G_APP_CUT", cut(&g_app));
    vars.insert("U_APP", b64_encode(&u_app));
    vars.insert("G_PROP", g_prop);
    vars.insert("G_PROP_POS", proposed.position.to_string());
    vars.insert("G_PROP_SID", proposed.stanza_id);
    vars.insert("G_SID2", second.stanza_id);
    vars.insert("G_LAST", last);
    vars.insert("H_BUNDLE", String::from(&bundle.to_element()));
    vars.insert("H_COMMIT", h_commit.clone());
    vars.insert("H_COMMIT_CUT", cut(&h_commit));
    vars.insert("H_COMMIT_LONG", b64_encode(&long));
    vars.insert("H_WELCOME", b64_encode(bundle.welcome.as_ref().unwrap()));
    vars.insert("H_GI", b64_encode(&bundle.group_info));
    vars.insert("H_GI_CUT", cut(&b64_encode(&bundle.group_info)));
    vars.insert("H_CHECK", bundle.epoch_check.clone());
    vars.insert("H_CHECK_UPPER", bundle.epoch_check.to_uppercase());
    vars.insert("H_POS", accepted.position.to_string());
    vars.insert("H_SID", accepted.stanza_id);
    vars.insert("A_KP", b64_encode(&kp));
    vars.insert("A_KP_CUT", cut(&b64_encode(&kp)));
    vars.insert("A_KP2", b64_encode(&alice.device().key_packages(1).unwrap()[0]));
    // One more than max_key_packages_per_device (100) plus a last-resort one.
    let over: String = alice.device().key_packages(102).unwrap().iter().map(|kp| format!("<item>{}</item>", String::from(&key_package_element(kp)))).collect();
    vars.insert("A_KPS_OVER", over);
    vars.insert("B_KP", b64_encode(&bob.device().key_packages(1).unwrap()[0]));
    vars.insert("GARBAGE", b64_encode(b"\x00\x01\x00\x07 not an MLSMessage at all"));
    (vars, vec![alice, bob, carol])
}

async fn run() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (vars, _devices) = set_up(&prosody, &dir).await;
    let users = ["alice", "bob"]; // indexed by `By`
    let mut sessions = [prosody.client(users[0], "raw").await, prosody.client(users[1], "raw").await];
    let cases = cases();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    for (i, case) in cases.iter().enumerate() {
        let session = &mut sessions[case.by as usize];
        let stanza = normalise(&substitute(&case.stanza, &vars).replace("{ID}", &format!("h{i}")));
        let to = stanza.attr("to").map(str::to_owned);
        let want = expected(&substitute(case.expect, &vars));
        let before = component.db().dump();
        if stanza.attr("from").is_some() && !prosody.stamps_spoofed_from() {
            prosody.assert_closed_for_invalid_from(session, stanza).await;
            sessions[case.by as usize] = prosody.client(users[case.by as usize], "raw").await;
        } else {
            let reply = exchange(session, stanza, want != "none").await;
            assert_eq!(outcome(reply.as_ref()), want, "case {:?}", case.name);
            if let Some(reply) = &reply {
                assert_eq!(reply.attr("from"), to.as_deref(), "case {:?}: answered by the addressed entity", case.name);
            }
            let stray = session.try_next_event();
            assert!(stray.is_none(), "case {:?}: unexpected {stray:?}", case.name);
        }
        let after = component.db().dump();
        assert!(before == after, "case {:?} changed the store: {:?}", case.name, changed_tables(&before, &after));
    }
    let ping = Element::builder("query", xmpp_parsers::ns::DISCO_INFO).build();
    let info = sessions[0].iq(&Jid::new(COMPONENT).unwrap(), "get", ping).await.unwrap().unwrap();
    assert!(info.children().any(|f| f.attr("var") == Some(NS)), "{info:?}");
    let log = component.log();
    assert!(!log.contains("panicked") && !log.contains("overflowed"), "the component crashed");
}

/// Our own side builds, sends and drops elements nested [`depth`] deep, with
/// recursive code: its threads get stacks large enough for that. The
/// component keeps its defaults.
#[test]
fn hostile_stanzas_are_refused_as_documented_and_change_nothing() {
    const STACK: usize = 64 << 20;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_stack_size(STACK).enable_all().build().unwrap();
    let test = std::thread::Builder::new().stack_size(STACK).spawn(move || runtime.block_on(run())).unwrap();
    if let Err(panic) = test.join() {
        std::panic::resume_unwind(panic);
    }
}
