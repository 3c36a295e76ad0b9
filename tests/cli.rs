//! The CLI a person uses, end to end: device setup, a group, a message.

mod common;

use std::process::Command;

use common::{Component, Prosody, COMPONENT};

fn client(prosody: &Prosody, dir: &std::path::Path, user: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xmpp-mls"))
        .args(["client", "--jid", &format!("{user}@example.org"), "--server"])
        .arg(format!("127.0.0.1:{}", prosody.c2s_port))
        .args(["--service", COMPONENT, "--state"])
        .arg(dir.join(format!("{user}.sqlite3")))
        .args(args)
        .env("XMPP_MLS_PASSWORD", user)
        .env("XMPP_MLS_PASSPHRASE", format!("{user}'s passphrase"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn a_person_sets_up_a_device_creates_a_group_and_sends() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    prosody.register("alice", "alice");
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = client(&prosody, dir.path(), "alice", &["device", "init", "--label", "Laptop"]);
    assert!(ok && out.contains("uploaded 20 KeyPackages"), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "alice", &["keypackages", "status"]);
    assert!(ok && out.contains(": 20 KeyPackages, last-resort present"), "{out}");
    let (ok, group) = client(&prosody, dir.path(), "alice", &["group", "create"]);
    assert!(ok, "{group}");
    let group = group.trim().to_owned();
    assert!(group.ends_with(&format!("@{COMPONENT}")), "{group}");
    let (ok, members) = client(&prosody, dir.path(), "alice", &["group", "members", &group]);
    assert!(ok && members.trim().starts_with("alice@example.org/"), "{members}");
    assert_eq!(members.trim().lines().count(), 1);
    let (ok, out) = client(&prosody, dir.path(), "alice", &["group", "send", &group, "hello"]);
    assert!(ok && out.starts_with("delivered as "), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "alice", &["group", "list"]);
    assert!(ok && out.trim() == group, "{out}");

    // bob, offline when added, finds the Welcome in his inbox and catches up.
    prosody.register("bob", "bob");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["device", "init"]);
    assert!(ok, "{out}");
    let (ok, out) = client(&prosody, dir.path(), "alice", &["group", "add", &group, "bob@example.org"]);
    assert!(ok && out.contains("added; epoch 1"), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["inbox"]);
    assert!(ok && out.contains(&format!("Welcome to {group}")), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["group", "list"]);
    assert!(ok && out.trim() == group, "{out}");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["group", "send", &group, "hi alice"]);
    assert!(ok && out.starts_with("delivered as "), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "alice", &["group", "members", &group]);
    assert!(ok && out.contains("bob@example.org/"), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "alice", &["history", &group]);
    assert!(ok && out.contains("(3 of 3 items, oldest reached)"), "{out}");
    assert_eq!(out.matches(" application ").count(), 2, "{out}");

    // bob backs his device up, loses it, and restores it from the vault.
    let (ok, out) = client(&prosody, dir.path(), "bob", &["vault", "init"]);
    assert!(ok, "{out}");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["vault", "backup"]);
    assert!(ok && out.contains("backed up"), "{out}");
    std::fs::remove_file(dir.path().join("bob.sqlite3")).unwrap();
    let (ok, out) = client(&prosody, dir.path(), "bob", &["vault", "restore"]);
    assert!(ok && out.contains("restored"), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["group", "send", &group, "restored and back"]);
    assert!(ok && out.starts_with("delivered as "), "{out}");

    // A brand-new device of bob's reads the history with the passphrase.
    let new_state = dir.path().join("bob-new");
    std::fs::create_dir_all(&new_state).unwrap();
    let (ok, out) = client(&prosody, &new_state, "bob", &["device", "init"]);
    assert!(ok, "{out}");
    let (ok, out) = client(&prosody, &new_state, "bob", &["history", &group]);
    assert!(ok && out.contains("bob@example.org: restored and back"), "{out}");
}
