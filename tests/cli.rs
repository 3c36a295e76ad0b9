//! The CLI a person uses, end to end: device setup, a group, a message.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{wait_until, Component, Prosody, COMPONENT};

/// `xmpp-mls client` as `user` with its state in `state`, under umask 022.
fn command(prosody: &Prosody, state: &Path, user: &str, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 022 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_xmpp-mls")])
        .args(["client", "--jid", &format!("{user}@example.org"), "--server"])
        .arg(format!("127.0.0.1:{}", prosody.c2s_port))
        .arg("--insecure-tcp")
        .args(["--service", COMPONENT, "--state"])
        .arg(state)
        .args(args)
        .env("XMPP_MLS_PASSWORD", user)
        .env("XMPP_MLS_PASSPHRASE", format!("{user}'s passphrase"));
    command
}

fn client(prosody: &Prosody, dir: &Path, user: &str, args: &[&str]) -> (bool, String) {
    client_at(prosody, &dir.join(format!("{user}.sqlite3")), user, args)
}

fn client_at(prosody: &Prosody, state: &Path, user: &str, args: &[&str]) -> (bool, String) {
    let out = command(prosody, state, user, args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn a_person_sets_up_a_device_creates_a_group_and_sends() {
    let prosody = Prosody::start();
    let component = Component::start(&prosody, "");
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
    // What alice and bob compare out of band is the same on both sides.
    let (ok, alice_sees) = client(&prosody, dir.path(), "alice", &["group", "verify", &group]);
    assert!(ok, "{alice_sees}");
    let (ok, bob_sees) = client(&prosody, dir.path(), "bob", &["group", "verify", &group]);
    assert!(ok, "{bob_sees}");
    assert_eq!(alice_sees, bob_sees);
    let lines: Vec<&str> = alice_sees.trim().lines().collect();
    assert_eq!(lines.len(), 3, "{alice_sees}");
    assert!(lines[0].starts_with("epoch 1 check ") && lines[0].len() == "epoch 1 check ".len() + 32, "{alice_sees}");
    for (line, account) in lines[1..].iter().zip(["alice@example.org/", "bob@example.org/"]) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert!(fields[0].starts_with(account) && fields[1].len() == 32 && fields[2] == "listed", "{line}");
    }
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

    // bob moves his vault to his own server: the service keeps none of it,
    // and the history still reads.
    let (ok, out) = client(&prosody, dir.path(), "bob", &["vault", "move", "--to", "pep"]);
    assert!(ok && out.contains("vault moved to PEP (the account's own server); its contents read back the same (SHA-256 "), "{out}");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["vault", "status"]);
    assert!(ok && out.starts_with("location: PEP (the account's own server)\n"), "{out}");
    // What the vault holds, by group and epoch: bob's sent copy of epoch 1
    // ("restored and back", one blob) and his device's backup.
    let group_line = out.lines().find(|l| l.starts_with(&format!("group {group}: "))).unwrap_or_default();
    assert!(group_line.ends_with(" blobs"), "{out}");
    let epoch_1 = out.lines().find(|l| l.starts_with("  epoch 1: snapshot ")).unwrap_or_default();
    assert!(epoch_1.contains("; sent copies ") && epoch_1.ends_with(" octets in 1 blob"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("backup of device ") && !l.ends_with(" in 0 blobs")), "{out}");
    let rows: i64 = component.db().one("SELECT count(*) FROM vault WHERE account = 'bob@example.org'", &[]);
    assert_eq!(rows, 0);
    let (ok, out) = client(&prosody, &new_state, "bob", &["history", &group]);
    assert!(ok && out.contains("bob@example.org: restored and back"), "{out}");

    // A tablet of bob's is enrolled by key and reads the history with no
    // passphrase at all.
    let tablet = dir.path().join("bob-tablet.sqlite3");
    let (ok, out) = client_at(&prosody, &tablet, "bob", &["device", "init"]);
    assert!(ok, "{out}");
    let without_passphrase = |args: &[&str]| {
        let out = command(&prosody, &tablet, "bob", args).env_remove("XMPP_MLS_PASSPHRASE").output().unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    let (ok, out) = without_passphrase(&["vault", "enroll-request"]);
    let code = out.split("`vault enroll ").nth(1).and_then(|rest| rest.split('`').next()).unwrap_or_default().to_owned();
    assert!(ok && code.len() == 19, "{out}");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["vault", "enroll", &code]);
    assert!(ok && out.contains("enrolled"), "{out}");
    let (ok, out) = without_passphrase(&["history", &group]);
    assert!(ok && out.contains("bob@example.org: restored and back"), "{out}");
    let (ok, out) = without_passphrase(&["vault", "status"]);
    assert!(ok && out.contains("opens with: passphrase, device "), "{out}");
}

/// (path relative to `root`, permission bits) of everything under `root`.
fn modes(root: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::metadata(&path).unwrap();
            out.push((path.strip_prefix(root).unwrap().display().to_string(), meta.permissions().mode() & 0o777));
            if meta.is_dir() {
                dirs.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_device_s_files_are_private_whatever_the_umask() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    prosody.register("alice", "alice");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("home/xmpp-mls/alice.sqlite3");
    let (ok, out) = client_at(&prosody, &state, "alice", &["device", "init"]);
    assert!(ok, "{out}");
    let (ok, out) = client_at(&prosody, &state, "alice", &["vault", "init"]);
    assert!(ok, "{out}");
    let (ok, out) = client_at(&prosody, &state, "alice", &["vault", "backup"]);
    assert!(ok && out.contains("backed up"), "{out}");

    // While a client runs, SQLite's -wal and -shm files exist beside the state.
    let mut listening = command(&prosody, &state, "alice", &["group", "listen", "--seconds", "60"]).spawn().unwrap();
    let wal = dir.path().join("home/xmpp-mls/alice.sqlite3-wal");
    let shm = dir.path().join("home/xmpp-mls/alice.sqlite3-shm");
    let open = wait_until(Duration::from_secs(20), || wal.exists() && shm.exists());
    let running = modes(dir.path());
    listening.kill().unwrap();
    listening.wait().unwrap();
    assert!(open, "no -wal and -shm files: {running:?}");
    let expected: Vec<(String, u32)> = [
        ("home", 0o700),
        ("home/xmpp-mls", 0o700),
        ("home/xmpp-mls/alice.sqlite3", 0o600),
        ("home/xmpp-mls/alice.sqlite3-shm", 0o600),
        ("home/xmpp-mls/alice.sqlite3-wal", 0o600),
    ]
    .iter()
    .map(|(p, m)| (p.to_string(), *m))
    .collect();
    assert_eq!(running, expected);

    // A device restored from the vault into a new directory: private too.
    let restored = dir.path().join("new/alice.sqlite3");
    let (ok, out) = client_at(&prosody, &restored, "alice", &["vault", "restore"]);
    assert!(ok && out.contains("restored"), "{out}");
    assert_eq!(modes(&dir.path().join("new")), vec![("alice.sqlite3".to_string(), 0o600)]);
    let new = std::fs::metadata(dir.path().join("new")).unwrap().permissions().mode() & 0o777;
    assert_eq!(new, 0o700);
}

/// A device of the CLI, listening, decrypts a burst that a library device
/// sends without waiting for its echoes, in the sender's order (xep/ §Order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_a_burst_in_the_senders_order() {
    use std::io::BufRead;
    const BURST: usize = 40;
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "[limits]\naccount_rate = 1000\naccount_burst = 1000");
    let dir = tempfile::tempdir().unwrap();
    prosody.register("bob", "bob");
    let (ok, out) = client(&prosody, dir.path(), "bob", &["device", "init"]);
    assert!(ok, "{out}");
    let mut alice = common::member(&prosody, &dir, "alice", "laptop").await;
    let group = alice.create().await.unwrap();
    alice.add(&group, &[common::bare("bob@example.org")]).await.unwrap();

    let mut listening = command(&prosody, &dir.path().join("bob.sqlite3"), "bob", &["group", "listen", "--seconds", "60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = listening.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next_line = || lines.recv_timeout(Duration::from_secs(20)).expect("a line from the CLI");
    while next_line() != format!("joined {group}") {}

    let sent: Vec<String> = (0..BURST).map(|i| format!("burst message {i}")).collect();
    for body in &sent {
        alice.send_body(&group, &body).await.unwrap();
    }
    let mut shown = Vec::new();
    while shown.len() < BURST {
        let line = next_line();
        if line.starts_with('[') {
            shown.push(line);
        }
    }
    listening.kill().unwrap();
    listening.wait().unwrap();
    let device = alice.device().id().to_owned();
    let node = group.node().unwrap().as_str().to_owned();
    let expected: Vec<String> = sent.iter().map(|b| format!("[{node}] alice@example.org/{device}: {b}")).collect();
    assert_eq!(shown, expected);
}

/// (exit code, stdout, stderr) of `command` run with stdin closed.
fn run(mut command: Command) -> (i32, String, String) {
    let out = command.stdin(std::process::Stdio::null()).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Whether the terminal of a child of `parent` (its stdin) has echo off.
fn echo_off(parent: u32) -> bool {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
    children.split_whitespace().any(|pid| {
        let Ok(tty) = std::fs::read_link(format!("/proc/{pid}/fd/0")) else { return false };
        let settings = Command::new("stty").arg("-F").arg(tty).output().unwrap();
        String::from_utf8_lossy(&settings.stdout).split_whitespace().any(|s| s == "-echo")
    })
}

/// The password comes from a file, the environment or a prompt; on the
/// command line only with --insecure-password-arg.
#[test]
fn the_password_stays_off_the_command_line() {
    let prosody = Prosody::start();
    let _component = Component::start(&prosody, "");
    prosody.register("alice", "alice");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("alice.sqlite3");
    let without_env = |args: &[&str]| {
        let mut c = command(&prosody, &state, "alice", args);
        c.env_remove("XMPP_MLS_PASSWORD");
        c
    };

    // --password alone: refused before anything is read or sent.
    let (code, out, err) = run(without_env(&["--password", "alice", "device", "init"]));
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert_eq!(
        err,
        "--password is refused: every local user can read a command line; use --password-file FILE, \
         XMPP_MLS_PASSWORD or the prompt on a terminal (or add --insecure-password-arg)\n"
    );
    assert!(!state.exists());

    // No password anywhere and no terminal to ask on.
    let (code, out, err) = run(without_env(&["device", "init"]));
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert_eq!(err, "no password: use --password-file FILE, set XMPP_MLS_PASSWORD, or run on a terminal to be asked\n");
    assert!(!state.exists());

    // --insecure-password-arg still lets --password through.
    let (code, out, err) = run(without_env(&["--password", "alice", "--insecure-password-arg", "device", "init"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("uploaded 20 KeyPackages"), "{out}");

    // A password file: its final newline is not part of the password, and
    // a wrong one is an authentication failure (exit code 5).
    let file = dir.path().join("password");
    std::fs::write(&file, "alice\n").unwrap();
    let (code, out, err) = run(without_env(&["--password-file", file.to_str().unwrap(), "keypackages", "status"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": 20 KeyPackages, last-resort present"), "{out}");
    std::fs::write(&file, "alice2\n").unwrap();
    let (code, _, err) = run(without_env(&["--password-file", file.to_str().unwrap(), "keypackages", "status"]));
    assert_eq!(code, 5, "{err}");

    // On a terminal (a pseudo-terminal from script(1)) it asks, and the
    // answer is not echoed.
    prosody.register("alice", "typed secret");
    let line = format!(
        "exec {} client --jid alice@example.org --server 127.0.0.1:{} --insecure-tcp --service {COMPONENT} --state {} \
         keypackages status",
        env!("CARGO_BIN_EXE_xmpp-mls"),
        prosody.c2s_port,
        state.display()
    );
    let mut terminal = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("XMPP_MLS_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = terminal.stdout.take().unwrap();
    let mut shown = Vec::new();
    while !String::from_utf8_lossy(&shown).contains("password: ") {
        let mut chunk = [0u8; 256];
        let n = std::io::Read::read(&mut stdout, &mut chunk).unwrap();
        assert!(n > 0, "no prompt: {}", String::from_utf8_lossy(&shown));
        shown.extend_from_slice(&chunk[..n]);
    }
    // The prompt is written before echo goes off: wait for that.
    assert!(wait_until(Duration::from_secs(20), || echo_off(terminal.id())), "echo stays on");
    std::io::Write::write_all(terminal.stdin.as_mut().unwrap(), b"typed secret\n").unwrap();
    std::io::Read::read_to_end(&mut stdout, &mut shown).unwrap();
    assert!(terminal.wait().unwrap().success());
    let shown = String::from_utf8_lossy(&shown);
    assert!(shown.contains(": 20 KeyPackages, last-resort present"), "{shown}");
    assert!(!shown.contains("typed secret"), "{shown}");
}
