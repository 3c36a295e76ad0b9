//! The content of application messages (xep/ §Message Content): XEP-0420
//! envelopes whose `<content/>` reaches the other devices unchanged, whose
//! `<from/>` receivers check against the MLS sender, and the CLI on top.

mod common;

use std::path::Path;
use std::process::Command;

use common::{alice_and_bob, bare, expect, Component, Prosody, COMPONENT};
use minidom::Element;
use xmpp_mls::client::{Content, ContentError, GroupClient, GroupEvent};
use xmpp_mls::protocol::content::{encryption_hint, Envelope, NS_EME};
use xmpp_mls::protocol::mam::Cursor;
use xmpp_mls::protocol::n;

fn reply_to(stanza_id: &str) -> Element {
    Element::builder("reply", "urn:xmpp:reply:0").attr(n("to"), "bob@example.org").attr(n("id"), stanza_id).build()
}

/// The next message event of `client`; any other event before it but a
/// message is skipped, a discarded message fails the test.
async fn next_message(client: &mut GroupClient) -> GroupEvent {
    expect(client, "a message", |e| matches!(e, GroupEvent::Message { .. } | GroupEvent::Discarded { .. })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_and_a_reply_arrive_as_sent_and_every_copy_carries_the_hint() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;

    bob.send_body(&group, "Tomorrow?").await.unwrap();
    let GroupEvent::Message { stanza_id: question, content, .. } = next_message(&mut alice).await else { panic!("refused") };
    assert_eq!(content, Content::from_body("Tomorrow?"));

    let answer = vec![Content::from_body("Yes, at ten <sharp> & on time").0.remove(0), reply_to(&question)];
    alice.send(&group, answer.clone()).await.unwrap();
    let got = next_message(&mut bob).await;
    let GroupEvent::Message { account, content, .. } = got else { panic!("refused: {got:?}") };
    assert_eq!(account, bare("alice@example.org"));
    assert_eq!(content, Content(answer));
    assert_eq!(
        content.0.iter().map(String::from).collect::<Vec<_>>(),
        [
            "<body xmlns='jabber:client'>Yes, at ten &lt;sharp&gt; &amp; on time</body>".to_owned(),
            format!("<reply xmlns='urn:xmpp:reply:0' id='{question}' to='bob@example.org'/>"),
        ]
    );
    assert_eq!(content.body().as_deref(), Some("Yes, at ten <sharp> & on time"));

    // The archive's copies of application messages carry the XEP-0380 hint.
    let page = bob.archive_page(&group.clone().into(), &[("urn:xmpp:mls:0#kind", "application")], 10, &Cursor::First, false).await.unwrap();
    assert_eq!(page.stanzas.len(), 2);
    for stanza in &page.stanzas {
        assert_eq!(stanza.get_child("encryption", NS_EME), Some(&encryption_hint()), "{}", String::from(stanza));
    }
    component.assert_never_reconnected();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_from_another_account_or_no_envelope_is_refused_and_reported() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    let dir = tempfile::tempdir().unwrap();
    let (mut alice, mut bob, group) = alice_and_bob(&prosody, &dir).await;

    // alice, a member, encrypts an envelope that names bob as its sender.
    let forged = Envelope { content: Content::from_body("bob: I resign"), from: bare("bob@example.org"), time: 1_800_000_000 };
    let forged_id = alice.send_data(&group, &forged.seal()).await.unwrap();
    let plain_id = alice.send_data(&group, b"not an envelope").await.unwrap();
    alice.send_body(&group, "after").await.unwrap();
    let mut echoes = Vec::new();
    while echoes.len() < 3 {
        if let GroupEvent::Delivered { id, stanza_id, .. } = expect(&mut alice, "echo", |e| matches!(e, GroupEvent::Delivered { .. })).await {
            echoes.push((id, stanza_id));
        }
    }
    assert_eq!(echoes.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()[..2], [forged_id, plain_id]);

    // bob refuses both, reports each once, and shows only the real message.
    let mut events = Vec::new();
    loop {
        let e = next_message(&mut bob).await;
        let done = matches!(e, GroupEvent::Message { .. });
        events.push(e);
        if done {
            break;
        }
    }
    let device = |e: &GroupEvent| match e {
        GroupEvent::Message { device, .. } | GroupEvent::Discarded { device, .. } => device.clone(),
        _ => unreachable!(),
    };
    let laptop = device(&events[0]);
    assert_eq!(
        events,
        vec![
            GroupEvent::Discarded {
                group: group.clone(),
                account: bare("alice@example.org"),
                device: laptop.clone(),
                stanza_id: echoes[0].1.clone(),
                reason: ContentError::WrongSender { claimed: "bob@example.org".into(), sender: bare("alice@example.org") },
            },
            GroupEvent::Discarded {
                group: group.clone(),
                account: bare("alice@example.org"),
                device: laptop.clone(),
                stanza_id: echoes[1].1.clone(),
                reason: ContentError::NotAnEnvelope,
            },
            GroupEvent::Message {
                group: group.clone(),
                account: bare("alice@example.org"),
                device: laptop,
                content: Content::from_body("after"),
                stanza_id: echoes[2].1.clone(),
            },
        ]
    );
    assert!(bob.next_event(std::time::Duration::from_millis(300)).await.unwrap().is_none(), "nothing else for bob");
    component.assert_never_reconnected();
}

/// `xmpp-mls client` as `user`, its state in `dir`.
fn cli(prosody: &Prosody, dir: &Path, user: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(["client", "--jid", &format!("{user}@example.org"), "--server"])
        .arg(format!("127.0.0.1:{}", prosody.c2s_port))
        .args(["--insecure-tcp", "--service", COMPONENT, "--state"])
        .arg(dir.join(format!("{user}.sqlite3")))
        .args(args)
        .env("XMPP_MLS_PASSWORD", user)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn the_cli_sends_a_body_and_shows_it_or_the_content_xml() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
    prosody.register("alice", "alice");
    prosody.register("bob", "bob");
    let dir = tempfile::tempdir().unwrap();
    for user in ["alice", "bob"] {
        let (ok, out, err) = cli(&prosody, dir.path(), user, &["device", "init"]);
        assert!(ok, "{out}{err}");
    }
    let (ok, group, err) = cli(&prosody, dir.path(), "alice", &["group", "create"]);
    assert!(ok, "{err}");
    let group = group.trim().to_owned();
    let (ok, out, err) = cli(&prosody, dir.path(), "alice", &["group", "add", &group, "bob@example.org"]);
    assert!(ok, "{out}{err}");
    let node = group.split('@').next().unwrap();

    let (ok, out, err) = cli(&prosody, dir.path(), "alice", &["group", "send", &group, "hello <bob> & co"]);
    assert!(ok && out.starts_with("delivered as "), "{out}{err}");
    let (ok, out, err) = cli(&prosody, dir.path(), "bob", &["group", "listen", "--seconds", "2"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("[{node}] "))).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].starts_with(&format!("[{node}] alice@example.org/")) && lines[0].ends_with(": hello <bob> & co"), "{out}");

    let (ok, out, err) = cli(&prosody, dir.path(), "alice", &["group", "send", &group, "as XML"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&prosody, dir.path(), "bob", &["group", "listen", "--seconds", "2", "--xml"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("[{node}] "))).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].ends_with(": <body xmlns='jabber:client'>as XML</body>"), "{out}");
    assert!(!err.contains("refused"), "{err}");
    component.assert_never_reconnected();
}
