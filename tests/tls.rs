//! The CLI against a server that requires TLS: certificates verified against
//! a configured CA file or `SSL_CERT_FILE`, refused otherwise (exit code 3);
//! plain TCP refused by the server; a wrong password exits with 5.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::tls::TestCa;
use common::{wait_until, Component, Server, COMPONENT};

/// `xmpp-mls client` as `user` (password = user) with `args` after the
/// connection options; returns (exit code, stdout + stderr).
fn client(server: &Server, state: &Path, user: &str, connection: &[&str], env: &[(&str, &Path)], args: &[&str]) -> (i32, String) {
    let out = command(server, state, user, connection, args).envs(env.iter().map(|(k, v)| (*k, *v))).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn command(server: &Server, state: &Path, user: &str, connection: &[&str], args: &[&str]) -> Command {
    let port = if connection.contains(&"--direct-tls") { server.direct_tls_port } else { server.c2s_port };
    let mut command = Command::new(env!("CARGO_BIN_EXE_xmpp-mls"));
    command
        .args(["client", "--jid", &format!("{user}@example.org"), "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .args(connection)
        .args(["--service", COMPONENT, "--state"])
        .arg(state.join(format!("{user}.sqlite3")))
        .args(args)
        .env("XMPP_MLS_PASSWORD", user)
        .env_remove("SSL_CERT_FILE");
    command
}

#[test]
fn the_cli_logs_in_over_tls_only_with_a_trusted_certificate() {
    let ca = TestCa::new();
    let server = Server::start_requiring_tls(&ca);
    let component = Component::start(&server, "");
    server.register("alice", "alice");
    server.register("bob", "bob");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.ca_cert();
    let trusted = ["--ca-file", ca_file.to_str().unwrap()];
    let run = |user, args: &[&str]| client(&server, dir.path(), user, &trusted, &[], args);

    // A whole group scenario with the CA file.
    let (code, out) = run("alice", &["device", "init"]);
    assert_eq!(code, 0, "{out}\n{}{}", server.log(), std::fs::read_to_string(server.dir.path().join("prosody.err")).unwrap_or_default());
    let (code, out) = run("bob", &["device", "init"]);
    assert_eq!(code, 0, "{out}");
    let (code, group) = run("alice", &["group", "create"]);
    assert_eq!(code, 0, "{group}");
    let group = group.trim().to_owned();
    let (code, out) = run("alice", &["group", "add", &group, "bob@example.org"]);
    assert!(code == 0 && out.contains("added; epoch 1"), "{out}");
    let (code, out) = run("bob", &["group", "list"]);
    assert!(code == 0 && out.trim() == group, "{out}");
    // bob listens (over TLS too) while alice sends.
    let heard = dir.path().join("bob-listen.out");
    let mut listener = command(&server, dir.path(), "bob", &trusted, &["group", "listen", "--seconds", "60"])
        .stdout(std::fs::File::create(&heard).unwrap())
        .spawn()
        .unwrap();
    let output = || std::fs::read_to_string(&heard).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(20), || output().contains("joined ")), "{}", output());
    let (code, out) = run("alice", &["group", "send", &group, "over TLS"]);
    assert!(code == 0 && out.starts_with("delivered as "), "{out}");
    assert!(wait_until(Duration::from_secs(20), || output().contains("alice@example.org/")), "{}", output());
    listener.kill().unwrap();
    listener.wait().unwrap();
    assert!(output().contains(": over TLS\n"), "{}", output());

    // Direct TLS (XEP-0368) on the server's other port.
    let direct = ["--direct-tls", "--ca-file", ca_file.to_str().unwrap()];
    let (code, out) = client(&server, dir.path(), "alice", &direct, &[], &["group", "send", &group, "over direct TLS"]);
    assert!(code == 0 && out.starts_with("delivered as "), "{out}");

    // SSL_CERT_FILE naming the CA instead of --ca-file.
    let (code, out) = client(&server, dir.path(), "bob", &[], &[("SSL_CERT_FILE", &ca_file)], &["group", "send", &group, "via SSL_CERT_FILE"]);
    assert!(code == 0 && out.starts_with("delivered as "), "{out}");

    // Not trusted: the certificate is refused, in one line, exit code 3.
    let (code, out) = client(&server, dir.path(), "bob", &[], &[], &["group", "list"]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("the server's certificate was refused: "), "{out}");

    // Plain TCP: the server offers no way to authenticate without TLS.
    let (code, out) = client(&server, dir.path(), "bob", &["--insecure-tcp"], &[], &["group", "list"]);
    assert_eq!(code, 5, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("authentication failed: "), "{out}");

    // A wrong password over TLS: SASL fails, exit code 5.
    server.register("bob", "not bob's password");
    let (code, out) = run("bob", &["group", "list"]);
    assert_eq!(code, 5, "{out}");
    assert!(out.starts_with("authentication failed: "), "{out}");

    assert_eq!(component.count_in_log("component connected"), 1, "{}", component.log());
}

#[test]
fn the_cli_refuses_a_server_that_offers_no_tls() {
    let server = Server::start();
    let _component = Component::start(&server, "");
    server.register("alice", "alice");
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = client(&server, dir.path(), "alice", &[], &[], &["device", "init"]);
    assert_eq!(code, 4, "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("the server did not offer TLS"), "{out}");
    assert!(!dir.path().join("alice.sqlite3").exists(), "no device state is made before a login");
    let (code, out) = client(&server, dir.path(), "alice", &["--insecure-tcp"], &[], &["device", "init"]);
    assert_eq!(code, 0, "{out}");
}
